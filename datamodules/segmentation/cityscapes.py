"""Cityscapes fine annotations: the 19 evaluation classes (trainIds), every other labelId ignored."""

import numpy as np
from torchvision.datasets import Cityscapes

from datamodules.datasets import Sample
from datamodules.errors import DatasetError
from datamodules.files import LabelMap, make_label_map, pair_files
from datamodules.segmentation.base import SegmentationDataModule

# torchvision's table marks the classes left out of evaluation with trainId 255 (or -1)
EVAL_CLASSES = sorted((c for c in Cityscapes.classes if 0 <= c.train_id < 255), key=lambda c: c.train_id)


def label_ids_map(ignore_index: int) -> LabelMap:
    """*_gtFine_labelIds.png: each evaluated labelId -> its trainId 0..18, every other labelId -> ignore_index."""
    mapping = {c.id: c.train_id if 0 <= c.train_id < 255 else ignore_index for c in Cityscapes.classes if c.id >= 0}
    return make_label_map(mapping, "labelIds 0..33")


def train_ids_map(ignore_index: int) -> LabelMap:
    """*_gtFine_labelTrainIds.png: trainIds 0..18 as they are, the files' 255 (not evaluated) -> ignore_index."""
    return make_label_map({v: v for v in range(len(EVAL_CLASSES))} | {255: ignore_index}, "trainIds 0..18 and 255")


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes under root/{leftImg8bit,gtFine}; uses *_gtFine_labelTrainIds.png where present, else labelIds."""

    name = "Cityscapes"
    class_names = tuple(c.name for c in EVAL_CLASSES)
    palette = np.array([c.color for c in EVAL_CLASSES], dtype=np.uint8)
    dirname = "leftImg8bit"
    layout = (
        "  leftImg8bit/{train,val}/CITY/*_leftImg8bit.png\n"
        "  gtFine/{train,val}/CITY/*_gtFine_labelIds.png   (or *_gtFine_labelTrainIds.png)"
    )
    how_to_get = (
        "Cityscapes needs a login: sign in at https://www.cityscapes-dataset.com/downloads/, fetch "
        "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, and unzip both into data.root."
    )

    def _samples(self, split: str) -> list[Sample]:
        images, labels = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        self._require(images, labels)
        samples, by_label_id, by_train_id = [], label_ids_map(self.ignore_index), train_ids_map(self.ignore_index)
        for image, label in pair_files(images, "_leftImg8bit.png", labels, "_gtFine_labelIds.png"):
            train_id_file = label.with_name(label.name.replace("_labelIds", "_labelTrainIds"))
            if train_id_file.is_file():
                samples.append((image, train_id_file, by_train_id))
            else:
                samples.append((image, label, by_label_id))
        return samples

    def _download(self) -> None:
        raise DatasetError(f"data.download=true cannot fetch Cityscapes. {self.how_to_get}")

"""Cityscapes fine annotations: the 19 evaluation classes (trainIds), every other labelId ignored."""

import numpy as np
from torchvision.datasets import Cityscapes

from .base import SegmentationDataModule
from .datasets import Sample
from .errors import DatasetError
from .files import make_label_map, pair_files

EVAL_CLASSES = sorted((c for c in Cityscapes.classes if 0 <= c.train_id < 255), key=lambda c: c.train_id)
LABEL_IDS = make_label_map(
    {c.id: c.train_id if 0 <= c.train_id < 255 else 255 for c in Cityscapes.classes if c.id >= 0}, "labelIds 0..33"
)
TRAIN_IDS = make_label_map({v: v for v in range(19)} | {255: 255}, "trainIds 0..18 and 255")


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
        samples = []
        for image, label in pair_files(images, "_leftImg8bit.png", labels, "_gtFine_labelIds.png"):
            train_ids = label.with_name(label.name.replace("_labelIds", "_labelTrainIds"))
            samples.append((image, train_ids, TRAIN_IDS) if train_ids.is_file() else (image, label, LABEL_IDS))
        return samples

    def _download(self) -> None:
        raise DatasetError(f"data.download=true cannot fetch Cityscapes. {self.how_to_get}")

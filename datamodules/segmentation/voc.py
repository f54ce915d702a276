"""Pascal VOC 2012 segmentation: 21 classes (background + 20); the files' 255 (object border) is ignored."""

import numpy as np
from torchvision.datasets.voc import DATASET_YEAR_DICT

from datamodules.datasets import Sample
from datamodules.download import fetch_archive
from datamodules.errors import DatasetError
from datamodules.files import LabelMap, make_label_map
from datamodules.segmentation.base import SegmentationDataModule

DIRNAME = "VOCdevkit/VOC2012"
CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def label_map(ignore_index: int) -> LabelMap:
    """Class ids 0..20 as they are, the object border 255 -> ignore_index."""
    return make_label_map({v: v for v in range(21)} | {255: ignore_index}, "0..20 and 255 (border)")


def voc_palette(n: int) -> np.ndarray:
    """(n, 3) uint8: the VOC devkit colour map, where bit j of class id k goes to bit 7 - j // 3 of channel j % 3."""
    # the devkit defines its colours by this bit rule rather than by a table
    ids = np.arange(n)
    palette = np.zeros((n, 3), dtype=np.uint8)
    for bit in range(24):
        palette[:, bit % 3] |= (((ids >> bit) & 1) << (7 - bit // 3)).astype(np.uint8)
    return palette


class VOC2012DataModule(SegmentationDataModule):
    """VOC 2012 under root/VOCdevkit/VOC2012, split lists ImageSets/Segmentation/{train,val}.txt."""

    name = "Pascal VOC 2012"
    class_names = CLASS_NAMES
    palette = voc_palette(len(CLASS_NAMES))
    dirname = DIRNAME
    layout = (
        "  VOCdevkit/VOC2012/JPEGImages/*.jpg\n"
        "  VOCdevkit/VOC2012/SegmentationClass/*.png   (palette PNGs: the index is the class id)\n"
        "  VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt"
    )
    how_to_get = "Set data.download=true to fetch VOCtrainval_11-May-2012.tar (2 GB)."

    def _samples(self, split: str) -> list[Sample]:
        base = self.root / DIRNAME
        self._require(base / "JPEGImages", base / "SegmentationClass")
        split_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetError(
                f"Split list {split_file} is missing; expected under data.root={self.root}:\n{self.layout}"
            )
        samples, mapping = [], label_map(self.ignore_index)
        for stem in split_file.read_text().split():
            image, label = base / "JPEGImages" / f"{stem}.jpg", base / "SegmentationClass" / f"{stem}.png"
            for path in (image, label):
                if not path.is_file():
                    raise DatasetError(
                        f"{path} is missing, but {split_file} lists {stem!r}: restore the file or remove the line."
                    )
            samples.append((image, label, mapping))
        return samples

    def _download(self) -> None:
        archive = DATASET_YEAR_DICT["2012"]
        fetch_archive(self.name, archive["url"], self.root, archive["filename"], DIRNAME, archive["md5"])

"""LightningDataModules for semantic segmentation on ADE20k, Pascal VOC 2012 and Cityscapes."""

import os

# albumentations asks PyPI for a newer version at import: up to 2 s of waiting and a warning on every offline run,
# from a data pipeline that should touch no network. Its documented switch turns that off (a user's setting wins).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from .ade20k import ADE20kDataModule
from .base import SegmentationDataModule
from .cityscapes import CityscapesDataModule
from .errors import DatasetError
from .voc import VOC2012DataModule

__all__ = [
    "ADE20kDataModule",
    "CityscapesDataModule",
    "DatasetError",
    "SegmentationDataModule",
    "VOC2012DataModule",
]

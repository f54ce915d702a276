"""LightningDataModules for semantic segmentation on ADE20k, Pascal VOC 2012 and Cityscapes."""

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

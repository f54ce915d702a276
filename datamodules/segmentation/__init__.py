"""Semantic segmentation: ADE20k, Pascal VOC 2012 and Cityscapes, and their shared datamodule."""

from datamodules.segmentation.ade20k import ADE20kDataModule
from datamodules.segmentation.base import SegmentationDataModule
from datamodules.segmentation.cityscapes import CityscapesDataModule
from datamodules.segmentation.voc import VOC2012DataModule

__all__ = ["ADE20kDataModule", "CityscapesDataModule", "SegmentationDataModule", "VOC2012DataModule"]

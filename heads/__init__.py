"""Task heads trained on frozen DINOv2 features."""

from backbones.weights import CheckpointError
from heads.linear_seg import LinearSegHead, load_official_head
from heads.segmentation import SegmentationProbe

__all__ = ["CheckpointError", "LinearSegHead", "SegmentationProbe", "load_official_head"]

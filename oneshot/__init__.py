"""One-shot segmentation without training: DINOv2 patch matches become SAM prompts (`OneShotSegmenter`)."""

from oneshot.matching import OneShotInputError
from oneshot.segmenter import OneShotSegmenter, Options, Reference, Segmentation

__all__ = ["OneShotInputError", "OneShotSegmenter", "Options", "Reference", "Segmentation"]

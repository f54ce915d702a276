"""Segment Anything as a frozen model of its own: it reads no DINOv2 features.

`load_sam` builds an official size from its checkpoint, `SamBoxPredictor` turns box or point prompts into masks,
`sam.evaluation.SamBoxEvaluation` is the zero-shot COCO / LVIS mask-AP protocol as a Lightning test loop.
"""

from sam.model import build_sam, load_sam
from sam.predictor import SamBoxPredictor, check_boxes, check_points, clip_boxes

__all__ = ["SamBoxPredictor", "build_sam", "check_boxes", "check_points", "clip_boxes", "load_sam"]

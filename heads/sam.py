"""`from heads.sam import SamBoxPredictor, load_sam` keeps working: SAM lives in its own package, `sam`."""

from sam import SamBoxPredictor, build_sam, load_sam

__all__ = ["SamBoxPredictor", "build_sam", "load_sam"]

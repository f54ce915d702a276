"""`from heads.losses import upsample_cross_entropy` keeps working: the loss lives in `ops.losses`."""

from ops.losses import upsample_cross_entropy

__all__ = ["upsample_cross_entropy"]

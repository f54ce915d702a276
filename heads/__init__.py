"""Task heads as plain `nn.Module`s: what is trained on frozen backbone features, and the released heads' loaders.

The Lightning probes that train and evaluate them live in `probes/`; their losses, kernels and schedules in `ops/`.
"""

from backbones.weights import CheckpointError
from heads.linear_seg import LinearSegHead, load_official_head

__all__ = ["CheckpointError", "LinearSegHead", "load_official_head"]

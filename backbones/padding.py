"""Centre padding to a multiple of the patch size, as the official DINOv2 heads apply it."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def center_pad(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad ``(B, C, H, W)`` to ``(B, C, ceil(H/m)*m, ceil(W/m)*m)``; the extra row/column goes last."""
    height, width = x.shape[-2:]
    pad_h = math.ceil(height / multiple) * multiple - height
    pad_w = math.ceil(width / multiple) * multiple - width
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))

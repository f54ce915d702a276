"""The PyTorch path of the fused upsample + cross-entropy (`ops.losses`), and the bilinear taps both paths share.

Its own module so that `ops.losses` (which picks a path) and `ops.upsample_ce_triton` (which falls back to this
path for strong downsampling) both import it without importing each other.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}
"""Logits per band of output rows in the PyTorch path: small enough for the CPU's caches, large on a GPU."""


def bilinear_taps(size_in: int, size_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For each output index, the two source indices and their weights, as `F.interpolate` (bilinear,
    align_corners=False) computes them: `i0, i1` int64 `(size_out,)` and `w0, w1` float32 `(size_out,)`."""
    scale = size_in / size_out
    source = ((torch.arange(size_out, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = source.long().clamp_(max=size_in - 1)
    i1 = (i0 + 1).clamp_(max=size_in - 1)
    w1 = source - i0
    return i0, i1, 1.0 - w1, w1


def upsample_cross_entropy_torch(
    logits: Tensor, labels: Tensor, ignore_index: int, need_grad: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The summed loss `()`, its gradient `(B, K, h, w)` float32 (None unless `need_grad`), the labelled-pixel count `()`.

    One band of output rows at a time: columns are interpolated once for all rows (`(B, K, h, W)`, h/H of the full
    size), each band's rows are blended from it, scored, and its gradient is pulled back with `index_add_`.
    """
    batch, classes, height_in, width_in = logits.shape
    height, width = labels.shape[-2:]
    device = logits.device
    x0, x1, wx0, wx1 = bilinear_taps(width_in, width, device)
    y0, y1, wy0, wy1 = bilinear_taps(height_in, height, device)
    logits = logits.detach().float()
    columns = logits[..., x0] * wx0 + logits[..., x1] * wx1
    grad_columns = torch.zeros_like(columns) if need_grad else None

    rows_per_band = max(
        1,
        CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cuda"]) // (batch * classes * width),
    )
    total = torch.zeros((), device=device)
    for start in range(0, height, rows_per_band):
        rows = slice(start, start + rows_per_band)
        a, b = wy0[rows, None], wy1[rows, None]
        z = columns[:, :, y0[rows]] * a + columns[:, :, y1[rows]] * b
        band_labels = labels[:, rows].long()
        valid = band_labels != ignore_index
        target = torch.where(valid, band_labels, 0).unsqueeze(1)
        log_norm = torch.logsumexp(z, dim=1, keepdim=True)
        total += ((log_norm - z.gather(1, target)).squeeze(1) * valid).sum()
        if need_grad:
            z.sub_(log_norm).exp_()
            z.scatter_add_(1, target, -torch.ones_like(z[:, :1]))
            z.mul_(valid.unsqueeze(1))
            grad_columns.index_add_(2, y0[rows], z * a)
            grad_columns.index_add_(2, y1[rows], z * b)

    count = (labels != ignore_index).sum().float()
    if not need_grad:
        return total, None, count
    grad = torch.zeros_like(logits)
    grad.index_add_(3, x0, grad_columns * wx0)
    grad.index_add_(3, x1, grad_columns * wx1)
    return total, grad, count

"""Training losses of the official DINOv2 depth evaluation (AdaBins' SigLoss and MegaDepth's gradient loss).

Inputs are `pred`, `target` `(B, 1, H, W)` in metres at the same size; target pixels <= 0 are invalid.

Both losses are non-linear functions of the whole batch (a variance, a ratio of sums). Given `total`, a
differentiable sum over the processes of a DDP job, they are the loss of the batch of every process together, from
each process's sums: P processes with B/P images each train as one process with B (DDP's gradient averaging undoes
the sum's gradient, which every process receives). Without it, the loss of this process's batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Total = Callable[[Tensor], Tensor]
"""A differentiable sum of a tensor over the processes (`utils.distributed.sum_over_processes`)."""

EPS = 1e-3
"""Added to both depths before the log, as the official losses do, to keep gradients finite."""


def sig_loss(
    pred: Tensor, target: Tensor, warm_up: bool = False, variance_focus: float = 0.15, total: Total | None = None
) -> Tensor:
    """Scale-invariant log loss over all valid pixels of the batch: sqrt(Var(g) + 0.15 mean(g)^2), g = log ratio.

    With `warm_up` only the mean term is used, sqrt(0.15 mean(g)^2), as the official loss does for its
    first 100 iterations. Var is the unbiased variance (torch's default, as the official loss).

    Degenerate batches stay finite: with one valid pixel the unbiased variance is undefined (0 / 0) and the
    population variance, 0, is used; with no valid pixel the loss is 0 (no gradient). At a loss of exactly 0 the
    gradient is 0 rather than the square root's 0 * inf = NaN. With `total`, the mean and the (two-pass) variance are
    those of every process's pixels, from float64 sums.
    """
    valid = target > 0
    g = torch.log(pred[valid] + EPS) - torch.log(target[valid] + EPS)
    if total is not None:
        return _sig_loss_over_processes(g, warm_up, variance_focus, total).to(pred.dtype)
    if g.numel() == 0:
        return pred.sum() * 0.0
    mean_term = variance_focus * g.mean() ** 2
    squared = mean_term if warm_up else g.var(correction=1 if g.numel() > 1 else 0) + mean_term
    return squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt()


def _sig_loss_over_processes(g: Tensor, warm_up: bool, variance_focus: float, total: Total) -> Tensor:
    """`sig_loss` of the log ratios `g` of every process (this process's are `g`); the same value on each."""
    wide = g.double()
    sums = total(torch.stack([wide.sum(), wide.new_tensor(float(g.numel()))]))
    count = sums[1]
    if count == 0:  # the same on every process: none calls the second sum
        return wide.sum() * 0.0
    mean = sums[0] / count
    squared = variance_focus * mean**2
    if not warm_up:
        squared = squared + total(((wide - mean) ** 2).sum()) / (count - 1).clamp(min=1)
    return squared.clamp_min(torch.finfo(g.dtype).tiny).sqrt()


def gradient_loss(
    pred: Tensor, target: Tensor, strides: tuple[int, ...] = (1, 2, 4, 6), total: Total | None = None
) -> Tensor:
    """Multi-scale gradient matching of the log depth difference, summed over scales.

    At each scale (every `stride`-th pixel), the absolute differences of `log(pred) - log(target)` between
    pixels two apart vertically and horizontally, over pairs of valid pixels, divided by the number of
    valid pixels. The official loss slices the first two dimensions of its `(B, 1, H, W)` inputs (batch
    and channel instead of height and width); here the slices go over height and width as intended. With `total`, the
    differences and the valid pixels are those of every process.
    """
    differences, counts = [], []
    for stride in strides:
        p, t = pred[..., ::stride, ::stride], target[..., ::stride, ::stride]
        valid = (t > 0).to(p.dtype)
        diff = (torch.log(p + EPS) - torch.log(t + EPS)) * valid
        v = (diff[..., :-2, :] - diff[..., 2:, :]).abs() * valid[..., :-2, :] * valid[..., 2:, :]
        h = (diff[..., :, :-2] - diff[..., :, 2:]).abs() * valid[..., :, :-2] * valid[..., :, 2:]
        differences.append(v.sum() + h.sum())
        counts.append(valid.sum())
    if total is not None:
        summed = total(torch.stack(differences + counts))
        differences, counts = list(summed[: len(strides)]), list(summed[len(strides) :])
    loss = pred.new_zeros(())
    for difference, count in zip(differences, counts):
        loss = loss + difference / count.clamp(min=1)
    return loss

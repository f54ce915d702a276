"""Cross-entropy of bilinearly upsampled logits, without the full-resolution logits in memory.

The segmentation probes predict logits on the patch grid `(B, K, h, w)` (h = H/14) and score them against
labels `(B, H, W)`. Upsampling first holds `B*K*H*W` values (16 x 150 x 512 x 512 floats = 2.5 GB for the
official ADE20k step) several times over (the upsampled logits, their log-softmax, both gradients), and
`upsample_bilinear2d`'s backward scatters with atomics. That step, not the backbone, is what made training slow.

Why our own code: neither torch nor timm fuses a resize into a loss. Bilinear resizing is separable, so the
upsampled logits are `z = Wy @ l @ Wx^T`, with two weights per output row `Wy (H, h)` and per column `Wx (W, w)`.
The loss's gradient with respect to `z` is known in closed form (softmax minus one-hot), so we compute it
during the forward pass, one block of output pixels at a time, and pull it straight back to `(B, K, h, w)`:
    - on CUDA, a Triton kernel (`heads.upsample_ce_triton`) does all of it in one launch;
    - elsewhere (or without Triton, or under `torch.use_deterministic_algorithms`), the same maths in
      PyTorch, a band of output rows at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}
"""Logits per band of output rows in the PyTorch path: small enough for the CPU's caches, large on a GPU."""


def upsample_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    ignore_index: int = 255,
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    """Cross-entropy of `logits` `(B, K, h, w)` upsampled bilinearly (align_corners=False) to `labels` `(B, H, W)`.

    Equals `F.cross_entropy(F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False), labels,
    ignore_index=ignore_index, reduction=reduction)`, value and gradient, for reduction "mean" (over the labelled
    pixels; NaN when there are none, as torch) or "sum". Arithmetic is float32 whatever the logits' dtype; the
    gradient comes back in the logits' dtype. `backend`: "auto" (Triton when `use_triton`), "triton" or "torch".
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} is not supported: use 'mean' or 'sum'.")
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend={backend!r} is not supported: use 'auto', 'triton' or 'torch'.")
    if backend == "triton" and not use_triton(logits):
        raise ValueError("backend='triton' needs CUDA logits, Triton installed and deterministic algorithms off.")
    if logits.ndim != 4 or labels.ndim != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"Expected logits (B, K, h, w) and labels (B, H, W) with the same B; got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}."
        )
    if labels.dtype.is_floating_point:
        raise ValueError(f"labels must hold integer class ids, not {labels.dtype}: pass labels.long().")
    _check_label_range(labels, logits.shape[1], ignore_index)
    on_triton = backend == "triton" or (backend == "auto" and use_triton(logits))
    need_grad = logits.requires_grad and torch.is_grad_enabled()
    return _UpsampleCrossEntropy.apply(logits, labels, ignore_index, reduction == "mean", on_triton, need_grad)


def _check_label_range(labels: Tensor, num_classes: int, ignore_index: int) -> None:
    """Class ids must lie in [0, K) or equal `ignore_index`; on CUDA checked asynchronously, as torch does."""
    outside = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
    message = f"labels hold ids outside [0, {num_classes}) other than ignore_index={ignore_index}"
    if labels.is_cuda:
        torch._assert_async(~outside.any(), message)
    elif outside.any():
        bad = labels[outside][0].item()
        raise ValueError(f"{message} (e.g. {bad}): map them to a class or to {ignore_index}.")


def use_triton(logits: Tensor) -> bool:
    """Whether the fused Triton kernel runs for these logits (CUDA, Triton importable, not in deterministic mode)."""
    if not logits.is_cuda or torch.are_deterministic_algorithms_enabled():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class _UpsampleCrossEntropy(torch.autograd.Function):
    """The loss and, when the logits need one, its gradient, both computed in `forward`; `backward` scales it."""

    @staticmethod
    def forward(
        ctx,
        logits: Tensor,
        labels: Tensor,
        ignore_index: int,
        mean: bool,
        on_triton: bool,
        need_grad: bool,
    ) -> Tensor:
        if on_triton:
            from heads.upsample_ce_triton import upsample_cross_entropy_triton as fused
        else:
            fused = upsample_cross_entropy_torch
        total, grad, count = fused(logits, labels, ignore_index, need_grad)
        scale = 1.0 / count if mean else torch.ones_like(count)
        ctx.save_for_backward(grad * scale if grad is not None else None)
        ctx.logits_dtype = logits.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, None, None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.logits_dtype), None, None, None, None, None


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

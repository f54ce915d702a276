"""Cross-entropy of bilinearly upsampled logits, without the full-resolution logits in memory.

The segmentation probes predict logits on the patch grid `(B, K, h, w)` (h = H/14) and score them against
labels `(B, H, W)`. Upsampling first holds `B*K*H*W` values (16 x 150 x 512 x 512 floats = 2.5 GB for the
official ADE20k step) several times over (the upsampled logits, their log-softmax, both gradients), and
`upsample_bilinear2d`'s backward scatters with atomics. That step, not the backbone, is what made training slow.

Why our own code: neither torch nor timm fuses a resize into a loss. Bilinear resizing is separable, so the
upsampled logits are `z = Wy @ l @ Wx^T`, with two weights per output row `Wy (H, h)` and per column `Wx (W, w)`.
The loss's gradient with respect to `z` is known in closed form (softmax minus one-hot), so we compute it
during the forward pass, one block of output pixels at a time, and pull it straight back to `(B, K, h, w)`:
    - on CUDA, a Triton kernel (`ops.upsample_ce_triton`) does all of it in one launch;
    - elsewhere (or without Triton, or under `torch.use_deterministic_algorithms`), the same maths in
      PyTorch (`ops.upsample_ce_torch`), a band of output rows at a time.
The Triton kernel is guarded: on its first use on a device in a process it runs a small case and is compared with
the PyTorch path; a compile error, a crash or a mismatch warns once and the PyTorch path is used from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from ops.upsample_ce_torch import CHUNK_ELEMENTS, bilinear_taps, upsample_cross_entropy_torch

__all__ = [
    "CHUNK_ELEMENTS",
    "bilinear_taps",
    "triton_passes_self_check",
    "upsample_cross_entropy",
    "upsample_cross_entropy_torch",
    "use_triton",
]

Fused = Callable[[Tensor, Tensor, int, bool], tuple[Tensor, Tensor | None, Tensor]]
"""(logits, labels, ignore_index, need_grad) -> (summed loss, float32 gradient or None, labelled-pixel count)."""

SELF_CHECK_SHAPE = (2, 37, 5, 7, 19, 70)
"""(B, K, h, w, H, W) of the Triton kernel's self-check: at the default tile, two tiles of rows and of columns with
ragged edges and two blocks of classes, upsampled by non-integer factors (so the kernel runs: it hands strong
downsampling to the PyTorch path itself)."""
SELF_CHECK_TOLERANCE = 1e-4
"""Largest relative difference (loss; gradient in norm) from the PyTorch path that passes. Both paths compute in
float32 (the kernel's products in tf32x3, float32-accurate) and agree to about 1e-6; a wrong kernel is off by far more."""

_triton_verdicts: dict[str, bool] = {}
"""Per device (`"cuda:0"`): whether the Triton kernel passed its self-check in this process."""


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
    gradient comes back in the logits' dtype. `backend`: "auto" (Triton when `use_triton` and the kernel passed its
    self-check on this device, see `triton_passes_self_check`), "triton" (the kernel unguarded, for tests and
    benchmarks) or "torch".
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} is not supported: use 'mean' or 'sum'.")
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend={backend!r} is not supported: use 'auto', 'triton' or 'torch'.")
    if backend == "triton" and not use_triton(logits):
        raise ValueError("backend='triton' needs CUDA logits, Triton installed and deterministic algorithms off.")
    if not isinstance(logits, Tensor) or not isinstance(labels, Tensor):
        raise ValueError(  # noqa: TRY004 (the API raises ValueError)
            f"logits and labels must be torch Tensors, not {type(logits).__name__} and {type(labels).__name__}."
        )
    if logits.ndim != 4 or labels.ndim != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"Expected logits (B, K, h, w) and labels (B, H, W) with the same B; got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}."
        )
    if 0 in logits.shape or 0 in labels.shape:
        raise ValueError(
            f"Empty input: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}; every size (batch, classes, "
            "height, width) must be at least 1."
        )
    if labels.dtype.is_floating_point:
        raise ValueError(f"labels must hold integer class ids, not {labels.dtype}: pass labels.long().")
    _check_label_range(labels, logits.shape[1], ignore_index)
    if backend == "triton" or (backend == "auto" and use_triton(logits) and triton_passes_self_check(logits.device)):
        fused = triton_kernel()
    else:
        fused = upsample_cross_entropy_torch
    need_grad = logits.requires_grad and torch.is_grad_enabled()
    return _UpsampleCrossEntropy.apply(logits, labels, ignore_index, reduction == "mean", fused, need_grad)


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


def triton_kernel() -> Fused:
    """The Triton kernel's entry point, imported on demand (Triton is an optional, CUDA-only dependency)."""
    from ops.upsample_ce_triton import upsample_cross_entropy_triton

    return upsample_cross_entropy_triton


def triton_passes_self_check(device: torch.device) -> bool:
    """Whether the Triton kernel may run on `device`: checked once per device and process (`self_check_problem`).

    A failure warns once, saying what happened, and the PyTorch path is used for the rest of the process: a kernel
    that has never run on this GPU, Triton or driver must not crash training or silently train on a wrong loss.
    """
    key = str(device)
    if key not in _triton_verdicts:
        problem = self_check_problem(device)
        _triton_verdicts[key] = problem is None
        if problem is not None:
            warnings.warn(
                f"The fused Triton upsample + cross-entropy kernel failed its self-check on {key}: {problem}. "
                "The PyTorch path (same loss, slower, more memory) is used instead for the rest of this process.",
                RuntimeWarning,
                stacklevel=3,
            )
    return _triton_verdicts[key]


def self_check_problem(device: torch.device) -> str | None:
    """Run the Triton kernel on a small case (`SELF_CHECK_SHAPE`) on `device` and compare its loss, gradient and
    count with the PyTorch path's; None when they agree, else what went wrong (an exception or the differences)."""
    generator = torch.Generator().manual_seed(0)
    batch, classes, height_in, width_in, height, width = SELF_CHECK_SHAPE
    logits = (3 * torch.randn(batch, classes, height_in, width_in, generator=generator)).to(device)
    labels = torch.randint(0, classes, (batch, height, width), generator=generator)
    labels[torch.rand(batch, height, width, generator=generator) < 0.2] = 255
    labels = labels.to(device)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        expected_total, expected_grad, expected_count = upsample_cross_entropy_torch(logits, labels, 255, True)
        try:
            total, grad, count = triton_kernel()(logits, labels, 255, True)
            loss_error = float((total - expected_total).abs() / expected_total.abs())
            grad_error = float((grad - expected_grad).norm() / expected_grad.norm())
            same_count = bool(count == expected_count)
        except Exception as err:  # noqa: BLE001 - whatever breaks (compilation, launch, a wrong output), fall back
            first_line = str(err).strip().splitlines()[0][:300] if str(err).strip() else "no message"
            return f"it raised {type(err).__name__} ({first_line})"
    # Written so that NaN fails: a comparison with NaN is False.
    if not (loss_error <= SELF_CHECK_TOLERANCE and grad_error <= SELF_CHECK_TOLERANCE and same_count):
        return (
            f"its loss differs from the PyTorch path's by {loss_error:.1e} (relative), its gradient by "
            f"{grad_error:.1e}{'' if same_count else ', and it counts the labelled pixels differently'}"
        )
    return None


class _UpsampleCrossEntropy(torch.autograd.Function):
    """The loss and, when the logits need one, its gradient, both computed in `forward`; `backward` scales it."""

    @staticmethod
    def forward(
        ctx,
        logits: Tensor,
        labels: Tensor,
        ignore_index: int,
        mean: bool,
        fused: Fused,
        need_grad: bool,
    ) -> Tensor:
        total, grad, count = fused(logits, labels, ignore_index, need_grad)
        scale = 1.0 / count if mean else torch.ones_like(count)
        ctx.save_for_backward(grad * scale if grad is not None else None)
        ctx.logits_dtype = logits.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, None, None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.logits_dtype), None, None, None, None, None

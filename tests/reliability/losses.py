"""The fused GPU loss and the DINOv3 loader: faults that gave silent wrong results."""

from __future__ import annotations

from pathlib import Path

from tests.fixture_paths import TINY_DINOV3
from tests.reliability import Case


def load_dinov3_with_wrong_heads(tmp: Path) -> None:
    """No weight shape depends on num_heads: before, the file loaded and every feature was silently wrong."""
    import backbones

    backbones.load_backbone("dinov3_vits16", checkpoint=TINY_DINOV3, embed_dim=64, depth=4, num_heads=2)


def triton_kernel_that_is_wrong(tmp: Path) -> None:
    """A Triton kernel that compiles but computes a wrong loss (a new GPU, Triton or driver): before, the default CUDA
    loss used it unchecked and training silently followed a wrong loss. Now its first-use self-check catches it, warns
    once, and the PyTorch path gives the right loss. Simulated on the CPU: the device looks Triton-capable."""
    import warnings
    from unittest import mock

    import torch

    from ops import losses

    def off_by_one_percent(*args):
        total, grad, count = losses.upsample_cross_entropy_torch(*args)
        return total * 1.01, grad, count

    logits = torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 5, (2, 30, 30), generator=torch.Generator().manual_seed(1))
    with (
        mock.patch.object(losses, "use_triton", lambda logits: True),
        mock.patch.object(losses, "triton_kernel", lambda: off_by_one_percent),
        mock.patch.object(losses, "_triton_verdicts", {}),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        loss = losses.upsample_cross_entropy(logits, labels)
    expected = losses.upsample_cross_entropy(logits, labels, backend="torch")
    fallbacks = [w for w in caught if "PyTorch path" in str(w.message)]
    assert torch.equal(loss, expected) and len(fallbacks) == 1, (loss, expected, [str(w.message) for w in caught])


CASES = [
    Case("loss-triton-kernel-wrong", "silent", call=triton_kernel_that_is_wrong, exit_code=0),
    Case(
        "loss-dinov3-wrong-num-heads",
        "silent",
        call=load_dinov3_with_wrong_heads,
        names=("num_heads=4", str(TINY_DINOV3)),
    ),
]

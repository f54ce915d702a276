"""The fused upsample + cross-entropy equals interpolate-then-cross-entropy, in value and in gradient."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from heads import losses
from heads.losses import upsample_cross_entropy

ROOT = Path(__file__).resolve().parents[1]
# (B, K, h, w, H, W): odd sizes, non-square, upsampling by non-integer factors, downsampling, 1x1 sources.
SHAPES = [
    (2, 5, 3, 4, 17, 23),
    (3, 150, 37, 37, 64, 80),
    (1, 3, 10, 12, 5, 7),
    (2, 4, 1, 1, 6, 6),
    (2, 7, 9, 5, 9, 5),
]


def naive(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(up, labels, ignore_index=255, reduction=reduction)


def random_case(shape: tuple[int, ...], generator: torch.Generator, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """Logits (B, K, h, w) in float64, labels (B, H, W) with 20% ignored pixels and the first two rows all ignored."""
    batch, classes, h, w, height, width = shape
    logits = 3 * torch.randn(batch, classes, h, w, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch, height, width), generator=generator)
    labels[torch.rand(batch, height, width, generator=generator) < 0.2] = 255
    labels[:, :2] = 255
    return logits.to(device), labels.to(device)


def value_and_grad(fn, logits: torch.Tensor, labels: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.detach().requires_grad_()
    loss = fn(logits, labels, **kwargs)
    loss.backward()
    return loss.detach(), logits.grad


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_float32_equals_naive(shape: tuple[int, ...], reduction: str) -> None:
    logits, labels = random_case(shape, torch.Generator().manual_seed(sum(shape)))
    reference = value_and_grad(naive, logits, labels, reduction=reduction)  # float64
    fused = value_and_grad(upsample_cross_entropy, logits.float(), labels, reduction=reduction)
    assert relative(fused[0], reference[0]) < 1e-5
    assert relative(fused[1], reference[1]) < 1e-5
    assert fused[1].dtype == torch.float32


def test_bfloat16_within_1e3() -> None:
    logits, labels = random_case((2, 150, 37, 37, 96, 128), torch.Generator().manual_seed(0))
    logits = logits.to(torch.bfloat16)
    reference = value_and_grad(naive, logits.double(), labels)
    fused = value_and_grad(upsample_cross_entropy, logits, labels)
    assert fused[1].dtype == torch.bfloat16
    assert relative(fused[0], reference[0]) < 1e-3
    assert relative(fused[1], reference[1]) < 1e-2  # the gradient itself is rounded to bf16 (8 bits)
    assert relative(fused[1].float(), reference[1].bfloat16().float()) < 1e-3


def test_many_bands_equal_one(monkeypatch: pytest.MonkeyPatch) -> None:
    logits, labels = random_case((2, 6, 5, 7, 33, 29), torch.Generator().manual_seed(1))
    whole = value_and_grad(upsample_cross_entropy, logits.float(), labels)
    monkeypatch.setitem(losses.CHUNK_ELEMENTS, "cpu", 1)  # one output row per band
    banded = value_and_grad(upsample_cross_entropy, logits.float(), labels)
    assert relative(banded[0], whole[0]) < 1e-6
    assert relative(banded[1], whole[1]) < 1e-6


def test_all_ignored_gives_what_torch_gives() -> None:
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    labels = torch.full((2, 10, 10), 255)
    assert torch.isnan(upsample_cross_entropy(logits, labels)) and torch.isnan(naive(logits, labels))
    total = upsample_cross_entropy(logits, labels, reduction="sum")
    total.backward()
    assert total.item() == 0 and torch.count_nonzero(logits.grad) == 0


def test_uint8_labels_and_no_grad() -> None:
    logits, labels = random_case((2, 5, 4, 4, 16, 16), torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = upsample_cross_entropy(logits.float(), labels.to(torch.uint8))
    assert relative(loss, naive(logits, labels)) < 1e-5


def test_bad_inputs_are_named() -> None:
    logits = torch.randn(1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"outside \[0, 3\).*e\.g\. 7"):
        upsample_cross_entropy(logits, torch.full((1, 4, 4), 7))
    with pytest.raises(ValueError, match="integer class ids"):
        upsample_cross_entropy(logits, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, K, h, w\)"):
        upsample_cross_entropy(logits[0], torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        upsample_cross_entropy(logits, torch.zeros(1, 4, 4, dtype=torch.long), reduction="none")


TRITON_CHECK = """
import torch
from heads.losses import upsample_cross_entropy_torch
from heads.upsample_ce_triton import upsample_cross_entropy_triton
generator = torch.Generator().manual_seed(0)
for shape in [(2, 5, 3, 4, 17, 23), (1, 21, 6, 7, 40, 45), (2, 20, 1, 1, 6, 6)]:
    b, k, h, w, H, W = shape
    logits = 3 * torch.randn(b, k, h, w, generator=generator)
    labels = torch.randint(0, k, (b, H, W), generator=generator)
    labels[torch.rand(b, H, W, generator=generator) < 0.2] = 255
    labels[:, :2] = 255
    fused = upsample_cross_entropy_triton(logits, labels, 255, True, tile=(4, 16, 16, 4))
    plain = upsample_cross_entropy_torch(logits, labels, 255, True)
    assert abs(fused[0] - plain[0]) <= 1e-5 * abs(plain[0]), (shape, fused[0], plain[0])
    assert ((fused[1] - plain[1]).norm() <= 1e-5 * plain[1].norm()), shape
    assert fused[2] == plain[2]
print("ok")
"""


def test_triton_kernel_in_interpreter() -> None:
    """The kernel's logic, run by Triton's CPU interpreter (the GPU run is `test_cuda_*` and bench/probe_step.py)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TRITON_CHECK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("shape", [(16, 150, 37, 37, 512, 512), *SHAPES])
def test_cuda_triton_equals_naive(shape: tuple[int, ...]) -> None:
    logits, labels = random_case(shape, torch.Generator().manual_seed(3), device="cuda")
    assert losses.use_triton(logits.float())
    reference = value_and_grad(naive, logits, labels)
    fused = value_and_grad(upsample_cross_entropy, logits.float(), labels)
    assert relative(fused[0], reference[0]) < 1e-5
    assert relative(fused[1], reference[1]) < 1e-5
    half = value_and_grad(upsample_cross_entropy, logits.bfloat16(), labels)
    bf16_reference = value_and_grad(naive, logits.bfloat16().double(), labels)
    assert relative(half[0], bf16_reference[0]) < 1e-3
    assert relative(half[1].float(), bf16_reference[1].bfloat16().float()) < 1e-3

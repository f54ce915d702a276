"""The fused upsample + cross-entropy equals interpolate-then-cross-entropy, in value and in gradient.

Longer than 300 lines: the fused loss against its references (forward, gradients, edge cases, the Triton self-check), one short test each.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ops import losses
from ops.losses import upsample_cross_entropy

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


@pytest.fixture
def pretend_triton(monkeypatch: pytest.MonkeyPatch):
    """Make the CPU look like a device the Triton kernel runs on, with no verdict yet; returns a function that installs
    a stand-in kernel and returns the list its calls are counted in."""
    monkeypatch.setattr(losses, "use_triton", lambda logits: True)
    monkeypatch.setattr(losses, "_triton_verdicts", {})

    def install(kernel) -> list[int]:
        calls: list[int] = []

        def counted(*args):
            calls.append(1)
            return kernel(*args)

        monkeypatch.setattr(losses, "triton_kernel", lambda: counted)
        return calls

    return install


def raises(*args):
    raise RuntimeError("PTX assembly aborted due to errors")


def wrong_value(*args):
    total, grad, count = losses.upsample_cross_entropy_torch(*args)
    return total * 1.01, grad, count


def wrong_gradient(*args):
    total, grad, count = losses.upsample_cross_entropy_torch(*args)
    return total, grad.roll(1, dims=-1), count


def nan_everywhere(*args):
    total, grad, count = losses.upsample_cross_entropy_torch(*args)
    return total * float("nan"), grad * float("nan"), count


def wrong_count(*args):
    total, grad, count = losses.upsample_cross_entropy_torch(*args)
    return total, grad, count + 1


@pytest.mark.parametrize(
    ("kernel", "reason"),
    [
        (raises, "raised RuntimeError \\(PTX assembly aborted"),
        (wrong_value, "loss differs"),
        (wrong_gradient, "gradient by"),
        (nan_everywhere, "nan"),
        (wrong_count, "counts the labelled pixels differently"),
    ],
)
def test_failing_kernel_warns_once_and_falls_back(pretend_triton, kernel, reason: str) -> None:
    calls = pretend_triton(kernel)
    logits, labels = random_case((2, 6, 4, 5, 30, 33), torch.Generator().manual_seed(4))
    logits = logits.float()
    expected = [value_and_grad(upsample_cross_entropy, logits, labels, backend="torch") for _ in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [value_and_grad(upsample_cross_entropy, logits, labels) for _ in range(2)]
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert re.search(reason, messages[0]) and "PyTorch path" in messages[0] and "cpu" in messages[0], messages[0]
    assert len(calls) == 1  # the self-check only: never again in this process
    for (value, grad), (expected_value, expected_grad) in zip(got, expected):
        assert torch.equal(value, expected_value) and torch.equal(grad, expected_grad)


def test_passing_kernel_is_used_without_warning(pretend_triton) -> None:
    calls = pretend_triton(losses.upsample_cross_entropy_torch)
    logits, labels = random_case((2, 6, 4, 5, 30, 33), torch.Generator().manual_seed(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            upsample_cross_entropy(logits.float(), labels)
    assert len(calls) == 3  # the self-check once, then both losses


def test_explicit_triton_backend_is_not_guarded(pretend_triton) -> None:
    """backend="triton" (tests, benchmarks) runs the kernel itself, whatever a self-check would say."""
    calls = pretend_triton(wrong_value)
    logits, labels = random_case((1, 3, 2, 2, 8, 8), torch.Generator().manual_seed(6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upsample_cross_entropy(logits.float(), labels, backend="triton")
    assert len(calls) == 1 and losses._triton_verdicts == {}


class FeaturesOnly(torch.nn.Module):
    """What SegmentationProbe needs of a backbone when batches carry cached features."""

    embed_dim = 8
    n_blocks = 4


def test_segmentation_loss_averages_over_all_pixels() -> None:
    """mmseg 0.x (avg_non_ignore=False): the summed loss over labelled pixels divided by ALL pixels of the batch."""
    from probes.segmentation import SegmentationProbe

    generator = torch.Generator().manual_seed(7)
    probe = SegmentationProbe(FeaturesOnly(), num_classes=5, blocks=1, warmup_steps=1, max_steps=2)
    probe.log = lambda *args, **kwargs: None  # no Trainer here
    maps = torch.randn(2, 8, 3, 4, generator=generator)
    labels = torch.randint(0, 5, (2, 40, 54), generator=generator)
    labels[torch.rand(2, 40, 54, generator=generator) < 0.3] = 255
    loss = probe.training_step({"tokens": {3: maps}, "label": labels}, 0)

    # By hand in float64: upsample, log-softmax, pick each labelled pixel's class, sum, divide by B * H * W.
    logits = probe.head([maps]).detach().double()
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    log_probs = up - up.exp().sum(1, keepdim=True).log()
    valid = labels != 255
    picked = log_probs.gather(1, torch.where(valid, labels, 0).unsqueeze(1)).squeeze(1)
    expected = -(picked * valid).sum() / labels.numel()
    assert abs(loss.item() - expected.item()) <= 1e-6 * expected.item()
    over_labelled = -(picked * valid).sum() / valid.sum()  # what avg_non_ignore=True would give: not this
    assert abs(loss.item() - over_labelled.item()) > 0.1 * expected.item()


# Runs under TRITON_INTERPRET=1 (set before Triton is imported, hence a subprocess): the kernel on each case of the
# file argv[1], at the case's tile, noting whether it handed the case to the PyTorch path; and the self-check.
INTERPRETER_SCRIPT = """
import sys
import torch
import ops.upsample_ce_triton as kernel
from ops import losses

self_check = losses.self_check_problem(torch.device("cpu")) or ""
plain, handed_over = kernel.upsample_cross_entropy_torch, []
kernel.upsample_cross_entropy_torch = lambda *args: handed_over.append(1) or plain(*args)
results = []
for case in torch.load(sys.argv[1], weights_only=True):
    handed_over.clear()
    tile = tuple(case["tile"]) if case["tile"] else kernel.DEFAULT_TILE
    total, grad, count = kernel.upsample_cross_entropy_triton(case["logits"], case["labels"], 255, True, tile=tile)
    results.append({"total": total, "grad": grad, "count": count, "kernel_ran": not handed_over})
torch.save({"results": results, "self_check": self_check}, sys.argv[2])
"""

# (B, K, h, w, H, W), label dtype, tile (None: the default (16, 64, 32, 4)), whether the kernel itself runs.
# The self-check's case (losses.SELF_CHECK_SHAPE: ragged tiles of rows and columns) runs too, against the PyTorch path.
INTERPRETER_CASES = [
    ((2, 5, 3, 4, 42, 56), torch.int64, None, True),  # 14x, as the probes upsample
    ((1, 40, 3, 3, 37, 41), torch.uint8, None, True),  # odd sizes, non-integer factors, two blocks of classes
    ((2, 4, 1, 1, 17, 17), torch.uint8, None, True),  # a 1x1 source
    ((1, 6, 20, 30, 9, 13), torch.uint8, None, False),  # downsampling: too wide a window, the PyTorch path
    ((1, 5, 3, 40, 33, 20), torch.int64, None, False),  # rows up, columns down: the PyTorch path
    ((1, 6, 12, 18, 9, 13), torch.uint8, (4, 16, 16, 4), True),  # downsampling that a small tile does itself
]


def test_triton_kernel_in_interpreter_equals_float64(tmp_path: Path) -> None:
    """The kernel (default tile) in Triton's CPU interpreter against float64 interpolate + cross_entropy, value and
    gradient; and the self-check the GPU runs first passes. (The GPU itself: `test_cuda_*`, bench/probe_step.py.)"""
    pytest.importorskip("triton")
    generator = torch.Generator().manual_seed(5)
    cases = []
    for shape, label_dtype, tile, _ in INTERPRETER_CASES:
        logits, labels = random_case(shape, generator)
        cases.append({"logits": logits.float(), "labels": labels.to(label_dtype), "tile": list(tile or ())})
    torch.save(cases, tmp_path / "cases.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(INTERPRETER_SCRIPT),
            str(tmp_path / "cases.pt"),
            str(tmp_path / "out.pt"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["self_check"] == ""
    for case, got, (shape, _, _, kernel_ran) in zip(cases, out["results"], INTERPRETER_CASES):
        labels = case["labels"].long()
        total, grad = value_and_grad(naive, case["logits"].double(), labels, reduction="sum")
        assert got["kernel_ran"] == kernel_ran, shape
        assert relative(got["total"], total) < 1e-5, shape
        assert relative(got["grad"], grad) < 1e-5, shape
        assert got["count"] == (labels != 255).sum(), shape


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


@cuda
def test_cuda_self_check_passes() -> None:
    """The guard's own verdict on this GPU: the default tile compiles and agrees with the PyTorch path."""
    assert losses.self_check_problem(torch.device("cuda")) is None

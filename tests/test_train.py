"""train.py end to end on a generated ADE20k-layout set with the tiny fixture backbone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from tests.helpers import tiny_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("head", ["linear_seg", "linear_seg_ms"])
def test_fit_then_test_best_checkpoint(tmp_path: Path, tiny_checkpoint: Path, head: str) -> None:
    cfg = tiny_run(tmp_path, tiny_checkpoint, f"head={head}")
    metrics = train.run(cfg)
    assert 0.0 <= metrics["test/mIoU"] <= 1.0 and 0.0 <= metrics["test/aAcc"] <= 1.0
    run_dir = Path(cfg.paths.output_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert list(run_dir.glob("csv/*/metrics.csv")) and list(run_dir.glob("tensorboard/**/events.out.tfevents.*"))
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.json").is_file()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert not any(k.startswith("backbone.") for k in saved)


def test_resume_continues_from_the_checkpoint(tmp_path: Path, tiny_checkpoint: Path) -> None:
    first = tiny_run(tmp_path / "a", tiny_checkpoint, "test=false")
    train.run(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    second = tiny_run(tmp_path / "b", tiny_checkpoint, "test=false", "trainer.max_steps=6", f"ckpt_path={last}")
    second.data.root = first.data.root
    train.run(second)
    resumed = torch.load(Path(second.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == 6
    csv = next(Path(second.paths.output_dir).glob("csv/*/metrics.csv")).read_text().splitlines()
    steps = {int(line.split(",")[header_index(csv[0], "step")]) for line in csv[1:]}
    assert min(steps) >= 4


def header_index(header: str, name: str) -> int:
    return header.split(",").index(name)


def write_released_head(path: Path, channels: int, num_classes: int) -> None:
    """A head in the layout of the released dinov2_*_ade20k_linear_head.pth files (an mmseg checkpoint)."""
    g = torch.Generator().manual_seed(0)
    state = {
        "decode_head.bn.weight": torch.rand(channels, generator=g) + 0.5,
        "decode_head.bn.bias": torch.randn(channels, generator=g),
        "decode_head.bn.running_mean": torch.randn(channels, generator=g),
        "decode_head.bn.running_var": torch.rand(channels, generator=g) + 0.5,
        "decode_head.bn.num_batches_tracked": torch.tensor(40000),
        "decode_head.conv_seg.weight": torch.randn(num_classes, channels, 1, 1, generator=g),
        "decode_head.conv_seg.bias": torch.randn(num_classes, generator=g),
    }
    torch.save({"meta": {"iter": 40000}, "state_dict": state}, path)


def test_released_head_evaluates_and_predicts_without_training(tmp_path: Path, tiny_checkpoint: Path) -> None:
    head_file = tmp_path / "dinov2_tiny_ade20k_linear_head.pth"
    write_released_head(head_file, channels=64, num_classes=150)
    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.jpg": (61, 90), "b.png": (80, 45)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / name)
    cfg = tiny_run(
        tmp_path, tiny_checkpoint, "train=false", f"head.checkpoint={head_file}", f"data.predict_dir={images}"
    )
    metrics = train.run(cfg)
    assert set(metrics) >= {"test/mIoU", "test/aAcc"}
    out = Path(cfg.head.predict_dir_out)
    for name, size in {"a.png": (90, 61), "b.png": (45, 80)}.items():
        label = Image.open(out / name)
        assert label.mode == "P" and label.size == size
        assert np.asarray(label).max() < 150


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_cli_missing_dataset_is_one_clear_message(tmp_path: Path) -> None:
    result = run_cli(
        "data=ade20k", f"data.root={tmp_path / 'nowhere'}", "backbone.random_fallback=true", f"paths.log_dir={tmp_path}"
    )
    assert result.returncode == 2, result.stderr
    assert "ADEChallengeData2016" in result.stderr and "data.download=true" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_unknown_option_is_refused(tmp_path: Path) -> None:
    result = run_cli("backbone.embeddim=64", f"paths.log_dir={tmp_path}")
    assert result.returncode != 0 and "embeddim" in result.stderr


def test_cli_target_of_the_old_layout_is_one_clear_message(tmp_path: Path) -> None:
    """A user's config written before datamodules/ was grouped by task names a module that no longer exists."""
    result = run_cli("data._target_=datamodules.ade20k.ADE20kDataModule", f"paths.log_dir={tmp_path}")
    assert result.returncode == 2, result.stderr
    assert "data._target_ is datamodules.ade20k.ADE20kDataModule" in result.stderr
    assert "datamodules.segmentation.ade20k.ADE20kDataModule" in result.stderr and "Traceback" not in result.stderr

"""Value tests of the depth losses and the LR schedules against hand-written float64 references, and the guards
that keep NaN out of weights, checkpoints and results files."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

import train
from metrics.depth import AbsRel, depth_metrics
from ops.classifiers import mean_confidence_interval
from ops.depth_losses import EPS, gradient_loss, sig_loss
from ops.finite import NonFiniteLossError
from ops.schedules import warmup_poly
from probes.depth import DepthProbe
from probes.fewshot import format_fewshot_row
from probes.segmentation import SegmentationProbe
from tests.helpers import NUM_CLASSES, DictDataset, StubBackbone, random_label
from utils.results import strict_json, write_json


def depth_pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """pred, target `(2, 1, 7, 9)` in metres; about a third of the target pixels invalid (0)."""
    g = torch.Generator().manual_seed(seed)
    pred = 0.5 + 4 * torch.rand(2, 1, 7, 9, generator=g)
    target = 0.5 + 4 * torch.rand(2, 1, 7, 9, generator=g)
    target[torch.rand(2, 1, 7, 9, generator=g) < 0.35] = 0
    return pred, target


def log_ratios(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    """g = log(pred + eps) - log(target + eps) over the valid pixels, in float64 (Python floats)."""
    return [
        math.log(p + EPS) - math.log(t + EPS)
        for p, t in zip(pred.flatten().tolist(), target.flatten().tolist())
        if t > 0
    ]


@pytest.mark.parametrize("warm_up", [False, True])
def test_sig_loss_is_the_scale_invariant_log_loss(warm_up: bool) -> None:
    pred, target = depth_pair()
    g = log_ratios(pred, target)
    n = len(g)
    mean = sum(g) / n
    unbiased_var = sum((x - mean) ** 2 for x in g) / (n - 1)
    expected = math.sqrt(0.15 * mean**2 + (0 if warm_up else unbiased_var))
    assert sig_loss(pred, target, warm_up=warm_up).item() == pytest.approx(expected, rel=1e-5)


def test_sig_loss_is_finite_for_degenerate_batches() -> None:
    pred = torch.full((2, 1, 3, 3), 2.0, requires_grad=True)
    target = torch.zeros(2, 1, 3, 3)
    loss = sig_loss(pred, target)
    loss.backward()
    assert loss.item() == 0 and torch.equal(pred.grad, torch.zeros_like(pred))  # no valid pixel: nothing to learn

    target[0, 0, 1, 1] = 3.0  # one valid pixel: the population variance (0) replaces the undefined unbiased one
    pred.grad = None
    loss = sig_loss(pred, target)
    loss.backward()
    g = math.log(2.0 + EPS) - math.log(3.0 + EPS)
    assert loss.item() == pytest.approx(math.sqrt(0.15) * abs(g), rel=1e-6) and pred.grad.isfinite().all()

    exact = target.clone().requires_grad_(True)  # a perfect prediction: loss 0, gradient 0 (not sqrt's 0 * inf)
    loss = sig_loss(exact, target)
    loss.backward()
    assert loss.item() == pytest.approx(0, abs=1e-15) and exact.grad.isfinite().all()


def test_gradient_loss_matches_hand_written_loops() -> None:
    pred, target = depth_pair(1)
    expected = 0.0
    for stride in (1, 2, 4, 6):
        p, t = pred[..., ::stride, ::stride].double(), target[..., ::stride, ::stride].double()
        valid = t > 0
        d = torch.where(valid, (p + EPS).log() - (t + EPS).log(), torch.zeros_like(p))
        total = 0.0
        for b in range(p.shape[0]):
            rows, cols = p.shape[-2:]
            for i in range(rows):
                for j in range(cols):
                    if i + 2 < rows and valid[b, 0, i, j] and valid[b, 0, i + 2, j]:
                        total += abs(d[b, 0, i, j].item() - d[b, 0, i + 2, j].item())
                    if j + 2 < cols and valid[b, 0, i, j] and valid[b, 0, i, j + 2]:
                        total += abs(d[b, 0, i, j].item() - d[b, 0, i, j + 2].item())
        expected += total / max(int(valid.sum()), 1)
    assert gradient_loss(pred, target).item() == pytest.approx(expected, rel=1e-5)


def mmcv_poly_with_linear_warmup(step: int, warmup: int, max_steps: int, power: float, ratio: float) -> float:
    """mmcv's PolyLrUpdaterHook (min_lr 0) with warmup='linear', as its code computes the factor of the base lr."""
    regular = (1 - step / max_steps) ** power if step <= max_steps else 0.0
    if step >= warmup:
        return regular
    k = (1 - step / warmup) * (1 - ratio)
    return regular * (1 - k)


@pytest.mark.parametrize("power", [1.0, 0.9])
def test_warmup_poly_is_mmcvs_schedule(power: float) -> None:
    warmup, max_steps, ratio = 5, 20, 1e-6
    factors = [warmup_poly(s, warmup, max_steps, power, ratio) for s in range(max_steps + 3)]
    expected = [mmcv_poly_with_linear_warmup(s, warmup, max_steps, power, ratio) for s in range(max_steps + 3)]
    assert factors == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert factors[0] == pytest.approx(ratio) and factors[max_steps] == 0 and factors[-1] == 0
    # as a LambdaLR on the probe's optimiser: the lr of step s is base * factor(s)
    probe = SegmentationProbe(StubBackbone(), num_classes=NUM_CLASSES, warmup_steps=warmup, max_steps=max_steps)
    probe.hparams.poly_power = power
    config = probe.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(max_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1e-3 * f for f in expected[:max_steps]], rel=1e-9, abs=1e-18)


def test_depth_schedule_is_linear_warmup_then_cosine() -> None:
    base, warmup, max_steps = 1e-2, 4, 14
    probe = DepthProbe(StubBackbone(), kind="linear", lr=base, warmup_steps=warmup, max_steps=max_steps)
    config = probe.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(max_steps + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # linear from base / 1000 to base over the warm-up, then half a cosine period down to 0 at max_steps
    expected = [
        base * (1e-3 + (1 - 1e-3) * s / warmup)
        if s < warmup
        else base * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (max_steps - warmup)))
        for s in range(max_steps + 1)
    ]
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_depth_metrics_without_evaluated_pixels_are_nan_not_a_number() -> None:
    metric = AbsRel(min_depth=1e-3, max_depth=10.0)
    metric.update(torch.full((1, 1, 4, 4), 5.0), torch.full((1, 1, 4, 4), 20.0))  # every pixel beyond max_depth
    assert math.isnan(metric.compute())
    metrics = depth_metrics(1e-3, 10.0, None)
    target = torch.full((1, 1, 4, 4), 20.0)
    target[0, 0, 0, 0] = 2.0  # one evaluated pixel is enough: a number again
    metrics.update(torch.full((1, 1, 4, 4), 2.5), target)
    assert metrics.compute()["AbsRel"].item() == pytest.approx(0.25)


def test_strict_json_writes_null_and_logs_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text, replaced = strict_json({"a": 1.0, "b": [math.inf, {"c": math.nan}], "d": "x"})
    assert json.loads(text) == {"a": 1.0, "b": [None, {"c": None}], "d": "x"}
    assert list(replaced) == ["b[0]", "b[1].c"]
    with caplog.at_level(logging.WARNING):
        write_json(tmp_path / "m.json", {"test/RMSE": math.nan, "test/d1": 0.5}, {"test/RMSE": "no pixel"})
    assert json.loads((tmp_path / "m.json").read_text()) == {"test/RMSE": None, "test/d1": 0.5}
    assert "test/RMSE is not a finite number, written as null: no pixel" in caplog.text


def test_metrics_table_prints_n_a_for_non_finite_values() -> None:
    table = train.format_metrics({"test/RMSE": math.nan, "test/d1": 0.5})
    assert "test/RMSE  n/a" in table and "test/d1    0.5000" in table


def test_one_episode_has_no_confidence_interval() -> None:
    mean, ci95 = mean_confidence_interval([0.4])
    assert mean == 0.4 and math.isnan(ci95)
    row = {"method": "knn", "n_way": 5, "k_shot": 1, "accuracy": 40.0, "ci95": ci95, "episodes": 1}
    assert "40.00 +- n/a %" in format_fewshot_row({**row, "constant_episodes": 0})


def nan_second_batch(nan_samples: tuple[int, ...] = (2,)) -> DataLoader:
    """Four 28x28 training samples in batches of two, the images of `nan_samples` NaN (by default in the 2nd batch)."""
    g = torch.Generator().manual_seed(0)
    samples = [{"image": torch.randn(3, 28, 28, generator=g), "label": random_label(28, 28, g)} for _ in range(4)]
    for index in nan_samples:
        samples[index]["image"][:] = math.nan
    return DataLoader(DictDataset(samples), batch_size=2)


def fit(tmp_path: Path, probe: SegmentationProbe, nan_samples: tuple[int, ...] = (2,)) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=4,
        max_epochs=1,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)],
    )
    trainer.fit(probe, train_dataloaders=nan_second_batch(nan_samples))
    return trainer


def test_nan_loss_stops_training_before_any_weight_or_checkpoint_is_nan(tmp_path: Path) -> None:
    probe = SegmentationProbe(StubBackbone(), num_classes=NUM_CLASSES, warmup_steps=1, max_steps=4)
    with pytest.raises(NonFiniteLossError, match=r"step 1 \(batch 1 of epoch 0\).*the images hold NaN or inf"):
        fit(tmp_path, probe)
    assert all(v.isfinite().all() for v in probe.head.state_dict().values() if v.is_floating_point())
    for path in (tmp_path / "ckpt").glob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(v.isfinite().all() for v in state.values() if v.is_floating_point()), path


def test_skip_nonfinite_skips_and_counts_the_batch(tmp_path: Path) -> None:
    probe = SegmentationProbe(StubBackbone(), num_classes=NUM_CLASSES, warmup_steps=1, max_steps=4, skip_nonfinite=True)
    with pytest.warns(UserWarning, match="Skipped a training batch at step 1"):
        trainer = fit(tmp_path, probe)
    assert trainer.callback_metrics["train/skipped_nonfinite"] == 1
    assert all(v.isfinite().all() for v in probe.head.state_dict().values() if v.is_floating_point())

    # a skipped batch changes no weight: with every batch NaN the head stays as it was built
    probe = SegmentationProbe(StubBackbone(), num_classes=NUM_CLASSES, warmup_steps=1, max_steps=4, skip_nonfinite=True)
    before = {k: v.clone() for k, v in probe.head.state_dict().items()}
    with pytest.warns(UserWarning, match="Skipped"):
        trainer = fit(tmp_path / "all", probe, nan_samples=(0, 1, 2, 3))
    assert trainer.callback_metrics["train/skipped_nonfinite"] == 2
    assert all(torch.equal(before[k], v) for k, v in probe.head.state_dict().items())  # BatchNorm statistics too


def test_nonfinite_gradient_stops_or_skips_the_optimiser_step() -> None:
    for skip in (False, True):
        probe = SegmentationProbe(StubBackbone(), num_classes=NUM_CLASSES, skip_nonfinite=skip)
        optimizer = probe.configure_optimizers()["optimizer"]
        for param in probe.head.parameters():
            param.grad = torch.full_like(param, math.nan)
        if not skip:
            with pytest.raises(NonFiniteLossError, match="training gradient is nan"):
                probe.on_before_optimizer_step(optimizer)
        else:
            with pytest.warns(UserWarning, match="Skipped a training batch"):
                probe.on_before_optimizer_step(optimizer)
            assert all(p.grad is None for p in probe.head.parameters())


def test_skipping_nonfinite_batches_is_refused_under_ddp() -> None:
    """A batch skipped on one process would leave the others waiting for its gradients."""
    from types import SimpleNamespace

    from utils.errors import UserError

    probe = SegmentationProbe(StubBackbone(), num_classes=NUM_CLASSES, warmup_steps=1, max_steps=4, skip_nonfinite=True)
    probe._trainer = SimpleNamespace(world_size=2, num_devices=2)
    with pytest.raises(UserError, match="skip_nonfinite=True works in a single process only"):
        probe.on_fit_start()
    probe._trainer = SimpleNamespace(world_size=1, num_devices=1)
    probe.on_fit_start()

"""No silent NaN: non-finite training losses, degenerate depth batches and splits, strict results JSON, few-shot
protocols that cannot measure anything, and collapsed features."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.reliability import TINY_TRAIN, Case, Result

DEPTH_TINY = (
    "experiment=depth_quickstart",
    "backbone.checkpoint={tiny}",
    "backbone.embed_dim=64",
    "backbone.depth=4",
    "backbone.num_heads=4",
    "data.root={tmp}/nyu",
    "data.generate_n_train=4",
    "data.generate_n_test=2",
    "data.generate_size=[42,56]",
    "data.crop_size=[28,42]",
    "data.batch_size=2",
    "data.num_workers=0",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "head.warmup_steps=1",
    "head.sigloss_warmup_steps=1",
    "paths.output_dir={tmp}/run",
)


def strict_load(path: Path) -> object:
    """`path` parsed as strict JSON: NaN / Infinity are refused."""

    def refuse(word: str) -> None:
        raise AssertionError(f"{path} holds {word}: not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def no_nan_checkpoint(tmp: Path, result: Result) -> None:
    for path in (tmp / "run").rglob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(v.isfinite().all() for v in state.values() if v.is_floating_point()), path


def depth_metrics_null(tmp: Path, result: Result) -> None:
    metrics = strict_load(tmp / "run" / "metrics.json")
    assert metrics["test/RMSE"] is None and metrics["val/AbsRel"] is None, metrics
    assert "n/a" in result.text and "data.max_depth" in result.text, result.text


class NoBackbone(nn.Module):
    """What a probe trained on cached tokens reads of its backbone: the width and the number of blocks."""

    embed_dim, n_blocks, patch_size = 8, 2, 14


def nan_cached_tokens(tmp: Path) -> None:
    from probes.segmentation import SegmentationProbe

    probe = SegmentationProbe(NoBackbone(), num_classes=3, blocks=1)
    tokens = torch.full((2, 8, 2, 2), math.nan)
    probe.training_step({"tokens": {1: tokens}, "label": torch.zeros(2, 28, 28, dtype=torch.long)}, 0)


def one_valid_pixel(tmp: Path) -> None:
    from ops.depth_losses import sig_loss

    pred = torch.full((2, 1, 4, 4), 1.5, requires_grad=True)
    target = torch.zeros(2, 1, 4, 4)
    target[1, 0, 2, 3] = 2.0
    loss = sig_loss(pred, target)
    loss.backward()
    assert loss.isfinite() and pred.grad.isfinite().all(), (loss, pred.grad)
    expected = math.sqrt(0.15) * abs(math.log(1.5 + 1e-3) - math.log(2.0 + 1e-3))
    assert math.isclose(loss.item(), expected, rel_tol=1e-6), (loss.item(), expected)


def strict_results_json(tmp: Path) -> None:
    from writers.tables import write_rows

    write_rows([{"head": "a", "val/RMSE": math.nan}, {"head": "b", "val/RMSE": 0.5}], tmp / "head_grid")
    rows = strict_load(tmp / "head_grid.json")
    assert rows[0]["val/RMSE"] is None and rows[1]["val/RMSE"] == 0.5, rows


def imagefolder(tmp: Path, **options: object) -> None:
    from datamodules.classification.imagefolder import ImageFolderDataModule

    ImageFolderDataModule(str(tmp / "images"), **options)


def episodes_file(text: str):
    def load(tmp: Path) -> None:
        from datamodules.classification.episodes import load_episodes

        (tmp / "episodes.json").write_text(text)
        load_episodes(tmp / "episodes.json", ["a/0.png", "a/1.png", "b/0.png", "b/1.png"], np.array([0, 0, 1, 1]))

    return load


def collapsed_features(tmp: Path) -> None:
    import warnings

    from datamodules.classification.episodes import sample_episodes
    from ops.classifiers import DEGENERATE_SPREAD, collapsed_features_warning, feature_spread, logistic_regression
    from probes.fewshot import evaluate_episodes, format_fewshot_row

    # random ViT-S/14 class tokens differ by about 2e-5 after L2 normalisation
    g = torch.Generator().manual_seed(0)
    features = torch.randn(384, generator=g) + 2e-5 * torch.randn(50, 384, generator=g)
    labels = np.repeat(np.arange(5), 10)
    episodes = sample_episodes(labels, 5, 1, 5, 10, seed=0)
    constant: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accs = evaluate_episodes(features, episodes, {"logistic_regression": logistic_regression}, constant)
    assert np.allclose(accs["logistic_regression"], 1 / 5) and constant == {"logistic_regression": 10}
    spread = feature_spread(features)
    assert spread < DEGENERATE_SPREAD and "random backbone weights" in collapsed_features_warning(spread, 5)
    row = {"method": "logistic_regression", "n_way": 5, "k_shot": 1, "accuracy": 20.0, "ci95": 0.0}
    assert "one class predicted for every query in 10/10" in format_fewshot_row(
        {**row, "episodes": 10, "constant_episodes": 10}
    )


CASES = [
    Case(
        "nan-training-loss-stops-run",
        "silent",
        argv=("train.py", *TINY_TRAIN, "head.lr=1e38", "paths.output_dir={tmp}/run"),
        names=("step 1", "head.lr", "head.skip_nonfinite=true"),
        absent=("run/checkpoints/*.ckpt", "run/metrics.json"),
    ),
    Case(
        "nan-training-loss-skipped-when-asked",
        "silent",
        argv=("train.py", *TINY_TRAIN, "head.lr=1e38", "head.skip_nonfinite=true", "paths.output_dir={tmp}/run"),
        names=("train/skipped_nonfinite",),
        check=no_nan_checkpoint,
        exit_code=0,
    ),
    Case("nan-cached-tokens", "silent", call=nan_cached_tokens, names=("cached features", "step 0", "feature_cache")),
    Case("nan-sigloss-one-valid-pixel", "silent", call=one_valid_pixel, exit_code=0),
    Case(
        "nan-depth-all-beyond-max-depth",
        "silent",
        argv=("train.py", *DEPTH_TINY, "data.max_depth=0.002"),
        check=depth_metrics_null,
        exit_code=0,
    ),
    Case("nan-results-json-strict", "silent", call=strict_results_json, exit_code=0),
    Case("nan-fewshot-k-shot-zero", "silent", call=lambda tmp: imagefolder(tmp, k_shot=0), names=("k_shot=0",)),
    Case(
        "nan-fewshot-k-shot-zero-train",
        "silent",
        argv=("train.py", "head=fewshot", "data=imagefolder", "data.root={tmp}/images", "data.k_shot=[0,5]"),
        names=("data.k_shot=0",),
    ),
    Case("nan-fewshot-no-query", "silent", call=lambda tmp: imagefolder(tmp, n_queries=0), names=("n_queries=0",)),
    Case("nan-fewshot-n-way-zero", "traceback", call=lambda tmp: imagefolder(tmp, n_way=0), names=("n_way=0",)),
    Case("nan-fewshot-no-episode", "silent", call=lambda tmp: imagefolder(tmp, n_episodes=0), names=("n_episodes=0",)),
    Case(
        "nan-episodes-file-not-a-list",
        "traceback",
        call=episodes_file('{"episodes": 5}'),
        names=("{tmp}/episodes.json", '"episodes" list'),
    ),
    Case(
        "nan-episodes-file-no-query",
        "traceback",
        call=episodes_file('{"episodes": [{"support": [["a/0.png"], ["b/0.png"]]}]}'),
        names=("Episode 0", "{tmp}/episodes.json", "'query'"),
    ),
    Case(
        "nan-episodes-file-empty-query",
        "silent",
        call=episodes_file('{"episodes": [{"support": [["a/0.png"], ["b/0.png"]], "query": [[], []]}]}'),
        names=("Episode 0", "{tmp}/episodes.json", "n_queries=0"),
    ),
    Case(
        "nan-episodes-file-bad-json",
        "clear",
        call=episodes_file('{"episodes": [\n{"support": }]}'),
        names=("{tmp}/episodes.json", "line 2"),
    ),
    Case("nan-fewshot-collapsed-features-explained", "silent", call=collapsed_features, exit_code=0),
]

"""Depth: parity with the official heads, metrics against numpy, bad inputs, train/test/predict through train.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from backbones import CheckpointError, load_backbone
from backbones.dinov2 import build_dinov2
from datamodules.depth.files import load_depth, read_split
from datamodules.errors import DatasetError
from datamodules.synthetic.nyu import write_nyu_like
from heads.depth import DepthModel
from metrics.depth import depth_metrics, eval_mask
from tests.conftest import TINY
from tests.helpers import tiny_depth_run

KINDS = ("linear", "linear4", "dpt")


@pytest.fixture(scope="module")
def tiny_backbone(tiny_checkpoint: Path) -> torch.nn.Module:
    return load_backbone("dinov2_vits14", checkpoint=tiny_checkpoint, **TINY)


@pytest.mark.parametrize("kind", KINDS)
def test_released_heads_reproduce_the_official_depther(
    fixtures_dir: Path, tiny_backbone: torch.nn.Module, kind: str
) -> None:
    ref = torch.load(fixtures_dir / f"tiny_vit14_depth_{kind}_ref.pt", weights_only=True)
    model = DepthModel.from_official(
        tiny_backbone,
        fixtures_dir / f"tiny_vit14_depth_{kind}_head.pth",
        kind,
        ref["min_depth"],
        ref["max_depth"],
        ref["out_index"],
    )
    assert set(ref["inputs"]) == {"224x224", "150x200"}
    for key, images in ref["inputs"].items():
        with torch.no_grad():
            depth = model(images)
        assert depth.shape == ref["depth"][key].shape
        assert (depth - ref["depth"][key]).abs().max().item() <= 1e-4, key


@pytest.mark.parametrize(("file_kind", "kind"), [("linear", "linear4"), ("linear4", "dpt"), ("dpt", "linear")])
def test_a_head_of_another_kind_is_refused(
    fixtures_dir: Path, tiny_backbone: torch.nn.Module, file_kind: str, kind: str
) -> None:
    path = fixtures_dir / f"tiny_vit14_depth_{file_kind}_head.pth"
    with pytest.raises(CheckpointError, match=rf"{path.name}.*expected a '{kind}' head for a backbone of width 64"):
        DepthModel.from_official(tiny_backbone, path, kind)


def test_a_head_for_another_backbone_is_refused(fixtures_dir: Path) -> None:
    wider = build_dinov2("dinov2_vits14", embed_dim=128, depth=4, num_heads=4)
    with pytest.raises(
        CheckpointError,
        match="holds a 'dpt' head for a backbone of width 64; expected a 'dpt' head for a backbone of width 128",
    ):
        DepthModel.from_official(wider, fixtures_dir / "tiny_vit14_depth_dpt_head.pth", "dpt")


def test_a_released_name_not_in_the_cache_says_how_to_get_it(
    tiny_backbone: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_nyu_linear4_head.pth"
    with pytest.raises(CheckpointError, match=url):
        DepthModel.from_official(tiny_backbone, "dinov2_vits14_nyu_linear4_head.pth", "linear4")


def numpy_metrics(pred: np.ndarray, gt: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Per image over its masked pixels, then the mean over images: the toolbox's definitions."""
    per_image = []
    for p, g, m in zip(pred, gt, masks):
        p, g = p[m], g[m]
        ratio = np.maximum(p / g, g / p)
        per_image.append(
            {
                "AbsRel": np.mean(np.abs(p - g) / g),
                "SqRel": np.mean((p - g) ** 2 / g),
                "RMSE": np.sqrt(np.mean((p - g) ** 2)),
                "RMSE_log": np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)),
                **{f"d{k}": np.mean(ratio < 1.25**k) for k in (1, 2, 3)},
            }
        )
    return {name: float(np.mean([m[name] for m in per_image])) for name in per_image[0]}


@pytest.mark.parametrize(("crop", "max_depth"), [("eigen", 10.0), ("garg", 80.0), (None, 10.0)])
def test_metrics_match_numpy_over_the_split(crop: str | None, max_depth: float) -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(5, 1, 48, 64, generator=g) * max_depth * 1.2
    gt[gt < 0.1 * max_depth] = 0  # invalid pixels, and some beyond max_depth
    gt[4] = 0  # an image without ground truth is left out
    pred = (gt + torch.randn(gt.shape, generator=g) * 0.1 * max_depth).clamp(1e-3, max_depth)
    metrics = depth_metrics(1e-3, max_depth, crop)
    for batch in ((0, 2), (2, 5)):  # accumulated over several updates
        metrics.update(pred[slice(*batch)], gt[slice(*batch)])
    got = {name: value.item() for name, value in metrics.compute().items()}
    mask = eval_mask(gt, 1e-3, max_depth, crop).numpy()[:4, 0]
    want = numpy_metrics(pred.double().numpy()[:4, 0], gt.double().numpy()[:4, 0], mask)
    assert got == pytest.approx(want, rel=1e-5)


def test_eval_crops_are_the_official_boxes() -> None:
    gt = torch.ones(1, 1, 480, 640)
    rows, cols = np.nonzero(eval_mask(gt, 1e-3, 10, "eigen")[0, 0].numpy())
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (45, 471, 41, 601)
    kitti = torch.ones(1, 1, 375, 1242)
    rows, cols = np.nonzero(eval_mask(kitti, 1e-3, 80, "garg")[0, 0].numpy())
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (
        int(0.40810811 * 375),
        int(0.99189189 * 375),
        int(0.03594771 * 1242),
        int(0.96405229 * 1242),
    )


def test_bad_depth_files_name_the_file_and_the_fix(tmp_path: Path) -> None:
    image = tmp_path / "rgb.jpg"
    eight_bit, small = tmp_path / "d8.png", tmp_path / "small.png"
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(eight_bit)
    Image.fromarray(np.zeros((3, 6), np.uint16)).save(small)
    with pytest.raises(DatasetError, match=r"d8\.png is a 'L' image, expected a single-channel 16-bit PNG"):
        load_depth(eight_bit, 1000, image, (4, 6))
    with pytest.raises(DatasetError, match=r"small\.png is 6x3 \(WxH\) but its image .*rgb\.jpg is 6x4"):
        load_depth(small, 1000, image, (4, 6))
    root = write_nyu_like(tmp_path, n_train=2, n_test=1, size=(28, 28))
    (root / "train_01" / "sync_depth_00000.png").unlink()
    with pytest.raises(
        DatasetError, match=r"train_01/sync_depth_00000\.png is missing, but .*nyu_train\.txt \(line 2\) lists it"
    ):
        read_split(root / "nyu_train.txt", root, root, "layout")


@pytest.mark.parametrize("head", ["depth_linear", "depth_linear4", "depth_dpt"])
def test_train_then_test_each_head(tmp_path: Path, tiny_checkpoint: Path, head: str) -> None:
    cfg = tiny_depth_run(
        tmp_path, tiny_checkpoint, f"head={head}", *(["head.channels=16"] if head == "depth_dpt" else [])
    )
    metrics = train.run(cfg)
    assert {"test/AbsRel", "test/SqRel", "test/RMSE", "test/RMSE_log", "test/d1", "test/d2", "test/d3"} <= set(metrics)
    assert 0 <= metrics["test/d1"] <= metrics["test/d2"] <= metrics["test/d3"] <= 1 and metrics["test/RMSE"] > 0
    run_dir = Path(cfg.paths.output_dir)
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert saved and not any(k.startswith("model.backbone.") for k in saved)


def test_released_head_evaluates_and_predicts_a_folder(
    tmp_path: Path, fixtures_dir: Path, tiny_checkpoint: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(photos / "room.jpg")
    cfg = tiny_depth_run(
        tmp_path,
        tiny_checkpoint,
        "head=depth_linear4",
        f"head.checkpoint={fixtures_dir / 'tiny_vit14_depth_linear4_head.pth'}",
        "head.out_index=[0,1,2,3]",
        "head.colorbar=true",
        "train=false",
        f"data.predict_dir={photos}",
        "data.predict_short_side=42",
    )
    metrics = train.run(cfg)
    assert 0 <= metrics["test/d1"] <= 1
    out = Path(cfg.head.predict_dir_out)
    with Image.open(out / "room_depth.png") as png:
        assert png.mode == "I;16" and png.size == (70, 50)
        millimetres = np.asarray(png)
    assert 1 <= millimetres.min() and millimetres.max() <= 10_000
    with Image.open(out / "room_depth_color.png") as colour:
        assert colour.mode in ("RGB", "RGBA") and colour.size[1] == 50
    assert not list(out.glob(".*tmp*"))


def test_all_invalid_depth_maps_are_skipped_and_counted(tmp_path: Path, tiny_checkpoint: Path) -> None:
    cfg = tiny_depth_run(tmp_path, tiny_checkpoint, "head=depth_linear", "train=false")
    root = write_nyu_like(cfg.data.root, n_train=1, n_test=2, size=(42, 56))
    Image.fromarray(np.zeros((42, 56), np.uint16)).save(root / "test_01" / "sync_depth_00000.png")
    with pytest.warns(UserWarning, match=r"test_01/rgb_00000\.jpg has no valid pixel"):
        metrics = train.run(cfg)
    assert metrics["test/skipped_maps"] == 1 and metrics["test/RMSE"] > 0


@pytest.mark.parametrize("experiment", ["depth_quickstart", "cached_depth_quickstart"])
def test_trains_in_float64(tmp_path: Path, tiny_checkpoint: Path, experiment: str) -> None:
    """`trainer.precision=64-true` (how bench/ddp_equivalence.py keeps rounding out of its training rows): the
    backbone computes and answers in float64, cached float16 features are widened to the head's float64."""
    cache = [f"feature_cache.root={tmp_path / 'cache'}"] if experiment.startswith("cached") else []
    cfg = tiny_depth_run(tmp_path, tiny_checkpoint, "trainer.precision=64-true", *cache, experiment=experiment)
    metrics = train.run(cfg)
    assert metrics["test/RMSE"] > 0 and 0 <= metrics["test/d1"] <= 1
    saved = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert {tensor.dtype for tensor in saved.values() if tensor.is_floating_point()} == {torch.float64}

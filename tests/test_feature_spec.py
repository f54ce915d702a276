"""Heads declare the features they read (`backbones.features.FeatureSpec`); the feature cache takes them from the head.

Every trained head - segmentation, depth lin. 1 / lin. 4 / DPT, grids - trains from a cache built from its own spec
with no restated setting, and a cache holding other features is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

import train
from backbones import FrozenBackbone, load_backbone
from backbones.features import FeatureSpec, parse_blocks, read_features
from datamodules.depth.nyu import NYUDataModule
from datamodules.feature_cache import CachedFeatures
from datamodules.feature_cache.extraction import ImageViews, fixed_view_transform
from heads.depth import default_out_index
from probes.depth import DepthProbe
from tests.conftest import TINY
from tests.helpers import CacheFor, compose_train, extraction_trainer, tiny_depth_run, tiny_run
from utils.errors import UserError


@pytest.fixture(scope="module")
def backbone(tiny_checkpoint: Path) -> FrozenBackbone:
    return load_backbone("dinov2_vits14", tiny_checkpoint, **TINY)


def test_one_parser_reads_a_block_choice_everywhere(backbone: FrozenBackbone) -> None:
    assert parse_blocks(1, 4) == (3,) and parse_blocks(4, 4) == (0, 1, 2, 3) and parse_blocks([3, 0], 4) == (3, 0)
    for bad in (0, 5, [], [4], [-1], "1", True, [1.0]):
        with pytest.raises(ValueError, match="is not a block choice for a backbone with 4 blocks"):
            parse_blocks(bad, 4)
    images = torch.randn(1, 3, 28, 28)
    # the backbone's own get_intermediate_layers and a head grid read the same choice the same way
    by_count = backbone.get_intermediate_layers(images, n=2)
    by_index = backbone.get_intermediate_layers(images, n=list(parse_blocks(2, backbone.n_blocks)))
    assert all(torch.equal(a, b) for a, b in zip(by_count, by_index))
    with pytest.raises(ValueError, match="n=5 is not a block choice"):
        backbone.get_intermediate_layers(images, n=5)


def test_a_spec_says_what_it_covers() -> None:
    wide = FeatureSpec.of([3, 1, 3], norm=False, class_tokens=True)
    assert wide.blocks == (1, 3)
    assert wide.covers(FeatureSpec.of([3], norm=False)) and wide.covers(wide)
    assert not wide.covers(FeatureSpec.of([3], norm=True))  # normed tokens are other numbers
    assert not wide.covers(FeatureSpec.of([2], norm=False))
    assert not FeatureSpec.of([3], norm=False).covers(wide)  # no class tokens, one block fewer


def test_read_features_is_the_official_call(backbone: FrozenBackbone) -> None:
    images = torch.randn(2, 3, 42, 28)
    spec = FeatureSpec.of([1, 3], norm=False, class_tokens=True)
    features = read_features(backbone, images, spec)
    official = backbone.get_intermediate_layers(images, n=[1, 3], reshape=True, return_class_token=True, norm=False)
    for block, (patches, cls) in zip([1, 3], official):
        assert torch.equal(features["tokens"][block], patches) and torch.equal(features["class_tokens"][block], cls)
    assert read_features(backbone, images, FeatureSpec.of([3]))["class_tokens"] == {}


def cached_key(cfg) -> dict:
    root = Path(cfg.feature_cache.root)
    (directory,) = [p for p in root.iterdir() if p.is_dir()]
    return json.loads((directory / "key.json").read_text()) | {"directory": str(directory)}


@pytest.mark.parametrize("head", ["depth_linear", "depth_linear4", "depth_dpt"])
def test_a_depth_head_trains_from_a_cache_of_its_own_spec(tmp_path: Path, tiny_checkpoint: Path, head: str) -> None:
    cfg = tiny_depth_run(tmp_path, tiny_checkpoint, f"head={head}", experiment="cached_depth_quickstart")
    metrics = train.run(cfg)
    assert all(torch.isfinite(torch.tensor(metrics[name])) for name in ("test/RMSE", "test/AbsRel")), metrics
    key = cached_key(cfg)
    kind = cfg.head.kind
    assert key["blocks"] == default_out_index(kind, TINY["depth"])  # the head's own blocks, never restated
    assert key["norm"] is False and key["class_tokens"] is True  # as the official depther reads them
    item = CachedFeatures(key["directory"])[0]
    assert sorted(item["tokens"]) == sorted(item["class_tokens"]) == key["blocks"]


def test_a_segmentation_grid_trains_from_a_cache_of_its_own_spec(tmp_path: Path, tiny_checkpoint: Path) -> None:
    cfg = tiny_run(
        tmp_path,
        tiny_checkpoint,
        "head=linear_seg_grid",
        "head.lr=[1e-3,1e-2]",
        "head.block_choices=[1,[0,2]]",
        "data.generate_n_train=4",
        "data.generate_n_val=2",
        experiment="cached_quickstart",
    )
    metrics = train.run(cfg)
    assert 0.0 <= metrics["test/mIoU"] <= 1.0
    key = cached_key(cfg)
    assert key["blocks"] == [0, 2, 3] and key["norm"] is True and key["class_tokens"] is False
    assert set(CachedFeatures(key["directory"])[0]["tokens"]) == {0, 2, 3}


def small_nyu(tmp_path: Path, batch_size: int) -> NYUDataModule:
    """A generated NYU-layout set of 2 training images, 40x50, cropped to 28x42."""
    options = {"generate_n_train": 2, "generate_n_test": 1, "generate_size": (40, 50), "crop_size": (28, 42)}
    return NYUDataModule(str(tmp_path / "nyu"), generate=True, batch_size=batch_size, num_workers=0, **options)


def test_the_cache_holds_exactly_what_the_head_reads(tmp_path: Path, backbone: FrozenBackbone) -> None:
    data = small_nyu(tmp_path, batch_size=1)
    probe = DepthProbe(backbone, kind="linear4", max_steps=2, warmup_steps=1)
    cached = CacheFor(tmp_path / "cache", batch_size=1).cache.prepare(data, probe, extraction_trainer)
    assert cached.feature_spec == probe.feature_spec
    data.setup("fit")
    data.train_set.transform = fixed_view_transform(data)
    view = ImageViews(data.train_set, views=0, seed=0)[0]
    expected = read_features(backbone, view["image"][None], probe.feature_spec)
    item = CachedFeatures(cached.directory)[0]
    for kind in ("tokens", "class_tokens"):
        for block, values in expected[kind].items():
            assert torch.equal(item[kind][block], values[0].half())


def test_a_cache_of_other_features_is_refused(tmp_path: Path, backbone: FrozenBackbone) -> None:
    data = small_nyu(tmp_path, batch_size=2)
    probe = DepthProbe(backbone, kind="linear4", max_steps=2, warmup_steps=1)
    normed = FeatureSpec.of(probe.feature_spec.blocks, norm=True, class_tokens=True)
    cached = CacheFor(tmp_path / "cache").cache.prepare(data, probe, extraction_trainer)
    cached.feature_spec = normed  # as if the cache on disk held normed tokens
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(UserError, match="The feature cache holds blocks .* final norm, .* but DepthProbe reads"):
        trainer.fit(probe, datamodule=cached)


def test_a_head_without_features_cannot_use_the_cache(tmp_path: Path, tiny_checkpoint: Path) -> None:
    cfg = compose_train(
        [
            "head=fewshot",
            "data=imagefolder",
            "experiment=cached_features",
            "train=true",
            f"backbone.checkpoint={tiny_checkpoint}",
            *(f"backbone.{key}={value}" for key, value in TINY.items()),
        ],
        tmp_path,
    )
    with open_dict(cfg):
        cfg.data.root = str(tmp_path / "none")
    with pytest.raises(UserError, match="FewShotEvaluation does not train a head on backbone features"):
        train.run(cfg)

"""The feature cache: resumes with other settings or numerics, two runs at once, damaged files, non-finite tokens."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch

from tests.helpers import extraction_trainer
from tests.reliability import TINY_CHECKPOINT, TINY_TRAIN, Case, Result, run_cli

CACHED_TRAIN = ("train.py", "experiment=cached_quickstart", *TINY_TRAIN[1:], "feature_cache.samples_per_shard=4")
TINY = {"embed_dim": 64, "depth": 4, "num_heads": 4}


def _write_images(tmp: Path) -> None:
    from datamodules.synthetic.ade20k import write_ade20k_like

    if not (tmp / "ade").is_dir():
        write_ade20k_like(tmp / "ade", n_train=8, n_val=2, size_range=((40, 60), (50, 70)))


def _extract(tmp: Path, die_after: int | None = None, precision: str = "32-true", **options: Any) -> Path:
    """Extract a 2-view cache of 8 tiny images (16 samples) under ``tmp/cache``; optionally die mid-way."""
    import lightning as L

    from backbones import load_backbone
    from datamodules.feature_cache import FeatureCache
    from datamodules.feature_cache.extraction import _OpenShard
    from datamodules.segmentation import ADE20kDataModule
    from tests.helpers import SpecProbe

    _write_images(tmp)
    backbone = load_backbone("dinov2_vits14", TINY_CHECKPOINT, **TINY)
    data = ADE20kDataModule(str(tmp / "ade"), batch_size=2, num_workers=0, crop_size=42, short_side=42)
    settings = {"backbone": "dinov2_vits14", "views": 2, "batch_size": 2, "num_workers": 0} | options
    commit, done = _OpenShard.commit, []

    def commit_then_die(self: _OpenShard) -> None:
        commit(self)
        done.append(self.shard)
        if len(done) == die_after:
            raise RuntimeError("killed")

    def make_trainer(**kwargs: Any) -> L.Trainer:
        return extraction_trainer(precision=precision, **kwargs)

    if die_after is None:
        return FeatureCache(str(tmp / "cache"), **settings).prepare(data, SpecProbe(backbone), make_trainer).directory
    _OpenShard.commit = commit_then_die  # type: ignore[method-assign]
    try:
        return FeatureCache(str(tmp / "cache"), **settings).prepare(data, SpecProbe(backbone), make_trainer).directory
    finally:
        _OpenShard.commit = commit  # type: ignore[method-assign]


def _tokens(directory: Path) -> list[torch.Tensor]:
    from datamodules.feature_cache import CachedFeatures

    cached = CachedFeatures(directory)
    return [cached[i]["tokens"][3] for i in range(len(cached))]


def resume_with_shard_size(size: int) -> Any:
    def call(tmp: Path) -> None:
        try:
            _extract(tmp, die_after=2, samples_per_shard=4)
        except RuntimeError:
            pass
        _extract(tmp, samples_per_shard=size)

    return call


def same_samples_as_a_whole_extraction(tmp: Path, result: Result) -> None:
    (resumed,) = [d for d in (tmp / "cache").iterdir() if d.is_dir() and (d / "manifest.json").is_file()]
    reference = _tokens(_extract(tmp / "reference", samples_per_shard=4))
    got = _tokens(resumed)
    assert len(got) == len(reference) == 16
    assert all(torch.equal(a, b) for a, b in zip(got, reference)), "samples duplicated or dropped"


def fp32_then_bf16(tmp: Path) -> None:
    _extract(tmp, samples_per_shard=8)
    _extract(tmp, samples_per_shard=8, precision="bf16-mixed")


def two_caches_by_precision(tmp: Path, result: Result) -> None:
    keys = [json.loads((d / "key.json").read_text()) for d in (tmp / "cache").iterdir() if d.is_dir()]
    assert sorted(k["numerics"]["trainer_precision"] for k in keys) == ["32-true", "bf16-mixed"], keys


def two_at_once(tmp: Path) -> None:
    _write_images(tmp)  # before the threads: both must see the same files
    results: list[Path | BaseException] = []

    def run() -> None:
        try:
            results.append(_extract(tmp, samples_per_shard=4))
        except BaseException as err:  # noqa: BLE001 - re-raised below, in the caller's thread
            results.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for outcome in results:
        if isinstance(outcome, BaseException):
            raise outcome
    assert len(set(results)) == 1, results


def one_complete_cache(tmp: Path, result: Result) -> None:
    (directory,) = [d for d in (tmp / "cache").iterdir() if d.is_dir()]
    assert len(_tokens(directory)) == 16


def tokens_beyond_float16(tmp: Path) -> None:
    """A checkpoint whose final norm scales tokens past float16's 65504: finite weights, inf in a float16 cache."""
    state = torch.load(TINY_CHECKPOINT, weights_only=True)
    state["norm.weight"] = state["norm.weight"] * 1e6
    torch.save(state, tmp / "loud.pth")


def cached_run_with_a_damaged_manifest(tmp: Path) -> None:
    """Train once from a cache (extracting it), then cut its manifest short."""
    first = run_cli(CACHED_TRAIN, tmp, {}, 240)
    assert first.exit_code == 0, first.text
    (directory,) = [d for d in (tmp / "data" / "feature_cache").iterdir() if d.is_dir()]
    (directory / "manifest.json").write_text('{"n_samples": 6')


def read_a_truncated_shard(tmp: Path) -> None:
    from datamodules.feature_cache import CachedFeatures

    directory = _extract(tmp, samples_per_shard=8)
    shard = directory / "tokens_3_00001.npy"
    shard.write_bytes(shard.read_bytes()[:-64])
    CachedFeatures(directory)[15]


CASES = [
    Case(
        "cache-resume-with-smaller-shards",
        "lost",
        call=resume_with_shard_size(2),
        check=same_samples_as_a_whole_extraction,
        exit_code=0,
    ),
    Case(
        "cache-resume-with-larger-shards",
        "traceback",
        call=resume_with_shard_size(8),
        check=same_samples_as_a_whole_extraction,
        exit_code=0,
    ),
    Case(
        "cache-fp32-cpu-cache-reused-by-bf16",
        "silent",
        call=fp32_then_bf16,
        check=two_caches_by_precision,
        exit_code=0,
    ),
    Case(
        "cache-two-extractions-at-once",
        "traceback",
        call=two_at_once,
        check=one_complete_cache,
        exit_code=0,
    ),
    Case(
        "cache-non-finite-tokens",
        "silent",
        argv=(*CACHED_TRAIN, "backbone.checkpoint={tmp}/loud.pth"),
        setup=tokens_beyond_float16,
        names=("non-finite tokens", "ADE_train_00000001.jpg", "tokens_3_00000.npy", "backbone.checkpoint=PATH"),
        absent=("data/feature_cache/*/tokens_*.npy", "data/feature_cache/*/.*", "**/metrics.json", "**/best-*.ckpt"),
    ),
    Case(
        "cache-damaged-manifest",
        "traceback",
        argv=CACHED_TRAIN,
        setup=cached_run_with_a_damaged_manifest,
        names=("manifest.json", "feature_cache.root=PATH", "Delete"),
    ),
    Case(
        "cache-truncated-shard",
        "clear",
        call=read_a_truncated_shard,
        names=("tokens_3_00001.npy", "root=PATH", "Delete"),
    ),
]

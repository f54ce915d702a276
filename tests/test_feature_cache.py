"""Feature cache: exact round trip, resumption after a kill, keys that change with their inputs, training from it.

Longer than 300 lines: the feature cache's whole life (extract, reuse, resume, key, lock, train from it), one short test each, sharing module-scoped fixtures.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

import train
from backbones import FrozenBackbone, load_backbone
from backbones.extraction import token_numerics
from datamodules.depth.nyu import NYUDataModule
from datamodules.feature_cache import CachedFeatures, CacheError, FeatureCache, ShardLayout
from datamodules.feature_cache.extraction import ExtractionData, ImageViews, _OpenShard, fixed_view_transform
from datamodules.segmentation import ADE20kDataModule
from datamodules.synthetic.ade20k import write_ade20k_like
from tests.conftest import TINY
from tests.helpers import CacheFor, extraction_trainer, tiny_run

CROP = 42


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ade")
    write_ade20k_like(root, n_train=5, n_val=2, size_range=((40, 60), (50, 70)))
    return root


@pytest.fixture(scope="module")
def backbone(tiny_checkpoint: Path) -> FrozenBackbone:
    return load_backbone("dinov2_vits14", tiny_checkpoint, **TINY)


def datamodule(root: Path, crop: int = CROP) -> ADE20kDataModule:
    return ADE20kDataModule(str(root), batch_size=2, num_workers=0, crop_size=crop, short_side=crop)


def cache(root: Path, **kwargs: object) -> CacheFor:
    return CacheFor(root, **kwargs)


def build(settings: CacheFor, root: Path, backbone: FrozenBackbone) -> Path:
    return settings.prepare(datamodule(root), backbone, extraction_trainer).directory


def dead_pid() -> int:
    """The id of a process that has ended (the writer of a killed extraction's temporary files)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def killed_after(monkeypatch: pytest.MonkeyPatch, n_shards: int) -> list[int]:
    """Make the extraction die (an exception, as a kill would stop it) right after its n-th finished shard."""
    commit, commits = _OpenShard.commit, []

    def commit_then_die(self: _OpenShard) -> None:
        commit(self)
        commits.append(self.shard)
        if len(commits) == n_shards:
            raise RuntimeError(f"killed after {n_shards} shards")

    monkeypatch.setattr(_OpenShard, "commit", commit_then_die)
    return commits


def all_tokens(directory: Path) -> list[torch.Tensor]:
    cached = CachedFeatures(directory)
    return [cached[i]["tokens"][3] for i in range(len(cached))]


def test_cached_tokens_equal_the_backbone_tokens_in_fp16(
    tmp_path: Path, ade_root: Path, backbone: FrozenBackbone
) -> None:
    # one image per batch: the reference below runs one image at a time, and CPU kernels may round differently
    # for other batch sizes
    settings = cache(tmp_path, blocks=[1, 3], class_tokens=True, batch_size=1)
    directory = build(settings, ade_root, backbone)
    data = datamodule(ade_root)
    data.setup("fit")
    cached = CachedFeatures(directory)
    data.train_set.transform = fixed_view_transform(data)  # the one view of views=0
    source = ImageViews(data.train_set, views=0, seed=0)
    assert len(cached) == len(source) == 5
    for index in range(len(cached)):
        item, expected = cached[index], source[index]
        outputs = backbone.get_intermediate_layers(
            expected["image"][None], n=[1, 3], reshape=True, return_class_token=True, norm=True
        )
        for block, (patches, cls) in zip([1, 3], outputs):
            assert item["tokens"][block].dtype == torch.float16
            assert torch.equal(item["tokens"][block], patches[0].half())
            assert torch.equal(item["class_tokens"][block], cls[0].half())
        assert torch.equal(item["label"], expected["label"]) and item["path"] == expected["path"]
    assert item["tokens"][1].shape == (64, CROP // 14, CROP // 14) and item["label"].shape == (CROP, CROP)


def test_augmented_views_are_seeded_per_sample_and_view(ade_root: Path) -> None:
    data = datamodule(ade_root)
    data.setup("fit")
    views = ImageViews(data.train_set, views=2, seed=7)
    assert len(views) == 10
    first, again = views[3], ImageViews(data.train_set, views=2, seed=7)[3]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    assert first["path"] == views[2]["path"] and not torch.equal(views[2]["image"], first["image"])
    assert not torch.equal(ImageViews(data.train_set, views=2, seed=8)[3]["image"], first["image"])


def test_a_killed_extraction_resumes_to_the_same_bytes(
    tmp_path: Path, ade_root: Path, backbone: FrozenBackbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = build(cache(tmp_path / "whole", views=2), ade_root, backbone)
    commit, commits = _OpenShard.commit, []

    def commit_then_die(self: _OpenShard) -> None:
        commit(self)
        commits.append(self.shard)
        if len(commits) == 2:
            raise RuntimeError("killed after two shards")

    monkeypatch.setattr(_OpenShard, "commit", commit_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        build(cache(tmp_path / "killed", views=2), ade_root, backbone)
    resumed_dir = tmp_path / "killed" / whole.name
    assert not (resumed_dir / "manifest.json").exists()
    stale = resumed_dir / f".tokens_3_00002.npy.tmp-{dead_pid()}-shard.npy"  # what a SIGKILL leaves
    stale.write_bytes(b"half a shard")
    done = {p.name: p.stat().st_mtime_ns for p in resumed_dir.glob("*_0000[01].npy")}

    def commit_and_count(self: _OpenShard) -> None:
        commit(self)
        commits.append(self.shard)

    commits.clear()
    monkeypatch.setattr(_OpenShard, "commit", commit_and_count)
    assert build(cache(tmp_path / "killed", views=2), ade_root, backbone) == resumed_dir
    assert commits == [2, 3]  # 10 samples in shards of 3: the two finished ones were skipped
    assert {p.name: p.stat().st_mtime_ns for p in resumed_dir.glob("*_0000[01].npy")} == done
    assert not stale.exists() and not list(resumed_dir.glob(".*"))
    names = sorted(p.name for p in whole.glob("*.npy"))
    assert names == sorted(p.name for p in resumed_dir.glob("*.npy")) and len(names) == 8
    for name in names:
        assert (whole / name).read_bytes() == (resumed_dir / name).read_bytes(), name


def test_a_complete_cache_is_reused_without_extracting(
    tmp_path: Path, ade_root: Path, backbone: FrozenBackbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build(cache(tmp_path), ade_root, backbone)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    # every rank still runs the predict loop (rank 0 decides there, under the lock), with no batch in it
    monkeypatch.setattr(_OpenShard, "write", lambda *args: pytest.fail("a complete cache was extracted again"))
    again = cache(tmp_path).prepare(datamodule(ade_root), backbone, extraction_trainer).directory
    assert again == first and (first / "manifest.json").stat().st_mtime_ns == stamp


def key_of(settings: CacheFor, root: Path, backbone: FrozenBackbone, crop: int = CROP) -> str:
    data = datamodule(root, crop)
    data.setup("fit")
    return settings.key(backbone, data.train_set, data.crop_size).digest()


def test_every_input_of_the_key_changes_it(
    tmp_path: Path, ade_root: Path, backbone: FrozenBackbone, tiny_checkpoint: Path
) -> None:
    base = key_of(cache(tmp_path), ade_root, backbone)
    assert key_of(cache(tmp_path), ade_root, backbone) == base
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["cls_token"] = state["cls_token"] + 1
    torch.save(state, tmp_path / "changed.pth")
    changed_weights = load_backbone("dinov2_vits14", tmp_path / "changed.pth", **TINY)
    files = tmp_path / "ade_copy"
    shutil.copytree(ade_root, files)
    image = min((files / "ADEChallengeData2016" / "images" / "training").glob("*.jpg"))
    image.unlink()
    (files / "ADEChallengeData2016" / "annotations" / "training" / f"{image.stem}.png").unlink()
    variants = {
        "checkpoint": key_of(cache(tmp_path), ade_root, changed_weights),
        "resolution": key_of(cache(tmp_path), ade_root, backbone, crop=56),
        "blocks": key_of(cache(tmp_path, blocks=2), ade_root, backbone),
        "norm": key_of(cache(tmp_path, norm=False), ade_root, backbone),
        "views": key_of(cache(tmp_path, views=1), ade_root, backbone),
        "file list": key_of(cache(tmp_path), files, backbone),
    }
    assert len({base, *variants.values()}) == len(variants) + 1, variants
    assert key_of(cache(tmp_path, blocks=[3]), ade_root, backbone) == base  # the last block, named two ways


def test_a_changed_resolution_extracts_into_its_own_folder(
    tmp_path: Path, ade_root: Path, backbone: FrozenBackbone
) -> None:
    first = build(cache(tmp_path), ade_root, backbone)
    second = cache(tmp_path).prepare(datamodule(ade_root, crop=28), backbone, extraction_trainer).directory
    assert second != first and (second / "manifest.json").is_file()
    assert CachedFeatures(second)[0]["tokens"][3].shape[-2:] == (2, 2)
    assert CachedFeatures(first)[0]["tokens"][3].shape[-2:] == (3, 3)


def test_a_damaged_or_foreign_key_file_is_an_error(tmp_path: Path, ade_root: Path, backbone: FrozenBackbone) -> None:
    directory = build(cache(tmp_path), ade_root, backbone)
    key_file = directory / "key.json"
    stored = json.loads(key_file.read_text())
    key_file.write_text(json.dumps(stored | {"blocks": [0]}))
    with pytest.raises(CacheError, match="differing: blocks"):
        build(cache(tmp_path), ade_root, backbone)
    key_file.write_text("{not json")
    with pytest.raises(CacheError, match="damaged"):
        build(cache(tmp_path), ade_root, backbone)
    key_file.unlink()
    with pytest.raises(CacheError, match="no key.json"):
        build(cache(tmp_path), ade_root, backbone)


def test_an_incomplete_cache_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "partial").mkdir()
    with pytest.raises(CacheError, match="run again to resume"):
        CachedFeatures(tmp_path / "partial")


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_the_pending_shards_without_overlap(tmp_path: Path, ade_root: Path, world_size: int) -> None:
    data = datamodule(ade_root)
    data.setup("fit")
    views = ImageViews(data.train_set, views=3, seed=0)  # 15 samples, shards of 4: 0-3, 4-7, 8-11, 12-14
    layout = ShardLayout(tmp_path, len(views), samples_per_shard=4, key="0123456789abcdef")
    layout.mark_done(1, arrays={})  # shard 1 is done
    seen = []
    for rank in range(world_size):
        # every stand-in rank computes rank 0's list itself: a broadcast of it
        strategy = SimpleNamespace(broadcast=lambda obj, src: obj, is_global_zero=True)
        extraction = ExtractionData(views, layout, batch_size=3, num_workers=0)
        extraction.trainer = SimpleNamespace(strategy=strategy, global_rank=rank, world_size=world_size)
        batches = list(extraction.predict_dataloader().batch_sampler)
        assert all(len({i // 4 for i in batch}) == 1 for batch in batches)
        seen += [i for batch in batches for i in batch]
    assert sorted(seen) == [*range(4), *range(8, 15)]


def cached_run(tmp_path: Path, checkpoint: Path) -> DictConfig:
    """The tiny quickstart of tests/helpers.py (`tiny_run`), trained from a feature cache."""
    return tiny_run(
        tmp_path,
        checkpoint,
        "data.generate_n_train=6",
        "data.generate_n_val=2",
        "feature_cache.samples_per_shard=4",
        experiment="cached_quickstart",
    )


def test_train_a_segmentation_head_from_the_cache(tmp_path: Path, tiny_checkpoint: Path) -> None:
    cfg = cached_run(tmp_path, tiny_checkpoint)
    metrics = train.run(cfg)
    assert 0.0 <= metrics["test/mIoU"] <= 1.0
    root = Path(cfg.feature_cache.root)
    (directory,) = [p for p in root.iterdir() if p.is_dir()]
    assert (root / f"{directory.name}.lock").is_file()  # beside its folder: one extraction of a key at a time
    assert json.loads((directory / "key.json").read_text())["blocks"] == [3]
    assert CachedFeatures(directory)[0]["tokens"][3].shape == (64, 4, 4)
    assert np.load(directory / "label_00000.npy", mmap_mode="r").dtype == np.uint8
    again = train.run(cached_run(tmp_path, tiny_checkpoint))
    assert set(again) == set(metrics) and [p for p in root.iterdir() if p.is_dir()] == [directory]


def test_depth_views_cache_class_tokens_and_depth_maps(tmp_path: Path, backbone: FrozenBackbone) -> None:
    def nyu() -> NYUDataModule:
        options = {"generate_n_train": 3, "generate_n_test": 1, "generate_size": (40, 50), "crop_size": (28, 42)}
        return NYUDataModule(str(tmp_path / "nyu"), generate=True, batch_size=2, num_workers=0, **options)

    for views in (0, 2):
        settings = cache(tmp_path / "cache", blocks=[0, 3], norm=False, class_tokens=True, views=views)
        item = CachedFeatures(settings.prepare(nyu(), backbone, extraction_trainer).directory)[views]
        assert item["tokens"][0].shape == (64, 2, 3) and item["class_tokens"][3].shape == (64,)
        assert item["depth"].shape == (1, 28, 42) and item["depth"].dtype == torch.float32
    data = nyu()
    data.setup("fit")
    depth = ImageViews(data.train_set, views=2, seed=0)[2]["depth"]
    assert torch.equal(item["depth"], depth.half().float())


@pytest.mark.parametrize("new_size", [2, 8])
def test_a_resume_with_another_shard_size_extracts_its_own_layout(
    tmp_path: Path, ade_root: Path, backbone: FrozenBackbone, monkeypatch: pytest.MonkeyPatch, new_size: int
) -> None:
    reference = all_tokens(build(cache(tmp_path / "whole", views=2, samples_per_shard=4), ade_root, backbone))
    commit = _OpenShard.commit
    killed_after(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="killed"):
        build(cache(tmp_path / "cache", views=2, samples_per_shard=4), ade_root, backbone)
    monkeypatch.setattr(_OpenShard, "commit", commit)
    (old,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    directory = build(cache(tmp_path / "cache", views=2, samples_per_shard=new_size), ade_root, backbone)
    assert directory != old and json.loads((directory / "manifest.json").read_text())["samples_per_shard"] == new_size
    resized = all_tokens(directory)
    assert len(resized) == len(reference) == 10
    assert all(torch.equal(a, b) for a, b in zip(resized, reference))  # none duplicated, none dropped
    resumed = build(cache(tmp_path / "cache", views=2, samples_per_shard=4), ade_root, backbone)
    assert resumed == old and all(torch.equal(a, b) for a, b in zip(all_tokens(resumed), reference))


def test_a_shard_that_is_not_what_its_marker_says_is_refused_or_extracted_again(
    tmp_path: Path, ade_root: Path, backbone: FrozenBackbone
) -> None:
    directory = build(cache(tmp_path), ade_root, backbone)  # 5 samples in shards of 3
    reference = all_tokens(directory)
    marker = directory / "shard_00001.json"
    honest = json.loads(marker.read_text())
    marker.write_text(json.dumps(honest | {"samples": 3}))
    with pytest.raises(CacheError, match=r"shard_00001.json does not describe .* \(differing: samples\).* Delete"):
        CachedFeatures(directory)
    marker.write_text(json.dumps(honest))
    shard = directory / "tokens_3_00001.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CacheError, match=f"{re.escape(str(shard))} .*Delete .* or set root=PATH"):
        CachedFeatures(directory)
    (directory / "manifest.json").unlink()  # as if killed before sealing: the resume redoes the damaged shard only
    assert build(cache(tmp_path), ade_root, backbone) == directory
    assert all(torch.equal(a, b) for a, b in zip(all_tokens(directory), reference))
    (directory / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="manifest.json is damaged"):
        build(cache(tmp_path), ade_root, backbone)


def test_non_finite_tokens_are_refused_when_extracted_and_when_read(
    tmp_path: Path, ade_root: Path, backbone: FrozenBackbone, tiny_checkpoint: Path
) -> None:
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["blocks.2.ls1.gamma"] = torch.full_like(state["blocks.2.ls1.gamma"], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    broken = load_backbone("dinov2_vits14", tmp_path / "nan.pth", **TINY)
    with pytest.raises(CacheError, match=r"non-finite tokens of block 3 .* for .*\.jpg \(sample 0, shard tokens_3_"):
        build(cache(tmp_path / "nan"), ade_root, broken)
    (directory,) = [p for p in (tmp_path / "nan").iterdir() if p.is_dir()]
    assert not list(directory.glob("*.npy")) and not list(directory.glob(".*"))  # no NaN shard, no temp left
    good = build(cache(tmp_path / "good"), ade_root, backbone)
    tokens = np.load(good / "tokens_3_00001.npy", mmap_mode="r+")
    tokens[1, 0, 0, 0] = np.inf
    tokens.flush()
    del tokens
    cached = CachedFeatures(good)
    assert torch.isfinite(cached[3]["tokens"][3]).all()
    with pytest.raises(CacheError, match=r"tokens_3_00001.npy holds non-finite tokens .* in row 1"):
        cached[4]


def test_the_key_holds_the_device_and_precision(
    tmp_path: Path, ade_root: Path, backbone: FrozenBackbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, data = cache(tmp_path), datamodule(ade_root)
    data.setup("fit")

    def digest(device: str, precision: str, settings: FeatureCache = settings) -> str:
        return settings.key(backbone, data.train_set, data.crop_size, token_numerics(backbone, device, precision))

    keys = {
        "cpu fp32": digest("cpu", "32-true"),
        "cuda fp32 (bf16 autocast)": digest("cuda", "32-true"),
        "cpu bf16-mixed": digest("cpu", "bf16-mixed"),
        "shard size": digest("cpu", "32-true", cache(tmp_path, samples_per_shard=4)),
    }
    assert len({k.digest() for k in keys.values()}) == len(keys)
    assert (
        keys["cpu fp32"].numerics["device"] == "cpu" and keys["cuda fp32 (bf16 autocast)"].numerics["device"] == "cuda"
    )
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", not torch.backends.cudnn.allow_tf32)
    assert digest("cuda", "32-true").digest() != keys["cuda fp32 (bf16 autocast)"].digest()
    fp32 = build(settings, ade_root, backbone)
    bf16 = settings.prepare(
        datamodule(ade_root), backbone, lambda **kw: extraction_trainer(precision="bf16-mixed", **kw)
    )
    assert bf16.directory != fp32
    assert json.loads((bf16.directory / "key.json").read_text())["numerics"]["trainer_precision"] == "bf16-mixed"
    assert not all(torch.equal(a, b) for a, b in zip(all_tokens(bf16.directory), all_tokens(fp32)))


def test_two_extractions_of_one_key_at_once_wait_and_share(
    tmp_path: Path,
    ade_root: Path,
    backbone: FrozenBackbone,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    commit, started, extracted = _OpenShard.commit, threading.Event(), []

    def slow_commit(self: _OpenShard) -> None:
        commit(self)
        extracted.append((threading.current_thread().name, self.shard))
        started.set()
        time.sleep(0.5)  # the other run reaches the lock while this one is mid-way

    monkeypatch.setattr(_OpenShard, "commit", slow_commit)
    results: dict[str, Path | BaseException] = {}

    def run(name: str) -> None:
        try:
            results[name] = build(cache(tmp_path / "root"), ade_root, backbone)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            results[name] = err

    first = threading.Thread(target=run, args=("first",), name="first")
    second = threading.Thread(target=run, args=("second",), name="second")
    first.start()
    assert started.wait(60)
    second.start()
    first.join(120)
    second.join(120)
    assert results["first"] == results["second"] and isinstance(results["first"], Path), results
    assert {name for name, _ in extracted} == {"first"} and len(extracted) == 2  # the second one reused
    assert "another run is extracting into" in caplog.text
    other = build(cache(tmp_path / "root", norm=False), ade_root, backbone)  # another key beside it
    assert other != results["first"]
    reference = build(cache(tmp_path / "alone"), ade_root, backbone)
    for path in sorted(reference.glob("*.npy")):
        assert (results["first"] / path.name).read_bytes() == path.read_bytes(), path.name

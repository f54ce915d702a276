"""Weight files and downloads: random weights recorded, hashes recorded and checked, dataset archives fetched whole."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

import backbones
import datamodules.download
from backbones.weights import sha256_of, sha256_record
from datamodules import DatasetError
from datamodules.download import PARTIAL, fetch_archive
from tests.conftest import TINY
from visualize.args import BACKBONE_CHOICES
from visualize.cli import backbone_label


def test_random_weights_are_recorded_on_the_backbone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        random = backbones.load_backbone("dinov2_vits14", random_fallback=True, **TINY)
    loaded = backbones.load_backbone("dinov2_vits14", checkpoint=tiny_checkpoint, **TINY)
    assert random.random_weights is True and loaded.random_weights is False
    args = argparse.Namespace(checkpoint=None, backbone="dinov2_vits14")
    assert "RANDOM WEIGHTS" in backbone_label(args, random) and backbone_label(args, loaded) == "dinov2_vits14"


def test_random_weights_are_seeded_and_leave_the_callers_random_state_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same architecture has the same random weights whatever the global random state (an index built with
    them can be queried with them); `random_seed=None` draws them from the global state, as train.py's seed did."""
    from datamodules.feature_cache.hashing import weights_sha256

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    digests, states = [], []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
            digests.append(weights_sha256(backbones.load_backbone("dinov2_vits14", random_fallback=True, **TINY)))
        states.append(torch.equal(torch.get_rng_state(), state))
    assert digests[0] == digests[1] and all(states)
    with pytest.warns(UserWarning):
        other_seed = backbones.load_backbone("dinov2_vits14", random_fallback=True, random_seed=1, **TINY)
    assert weights_sha256(other_seed) != digests[0]
    from_global = []
    for _ in range(2):
        torch.manual_seed(3)
        with pytest.warns(UserWarning):
            backbone = backbones.load_backbone("dinov2_vits14", random_fallback=True, random_seed=None, **TINY)
        from_global.append(weights_sha256(backbone))
    torch.manual_seed(3)
    unseeded_build = weights_sha256(backbones.build_dinov2("dinov2_vits14", **TINY))
    assert from_global == [unseeded_build, unseeded_build] != [digests[0]] * 2
    with pytest.raises(ValueError, match="random_seed=a is not a seed"):
        backbones.load_backbone("dinov2_vits14", random_fallback=True, random_seed="a", **TINY)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_an_unwritable_hub_cache_is_named_with_the_fix(
    code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path
) -> None:
    """A read-only or forbidden cache folder (refusing the download's temporary file), and a cache path under a
    regular file: one CheckpointError naming the folder and TORCH_HOME, before anything is fetched."""
    from backbones.weights import download_to_cache

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code), str(kwargs["dir"]))

    fetched = []
    monkeypatch.setattr("torch.hub.download_url_to_file", lambda *args, **kwargs: fetched.append(args))
    with monkeypatch.context() as patch:
        patch.setattr("utils.atomic.tempfile.mkstemp", refuse)
        with pytest.raises(backbones.CheckpointError) as err:
            download_to_cache(tiny_checkpoint.as_uri())
    folder = tmp_path / "home" / "hub" / "checkpoints"
    assert str(folder) in str(err.value) and os.strerror(code) in str(err.value) and "TORCH_HOME" in str(err.value)
    assert not (tmp_path / "home").exists() and not fetched
    (tmp_path / "home").write_text("a file, not a folder")
    with pytest.raises(backbones.CheckpointError, match="Not a directory.*download=True.*checkpoint=PATH"):
        download_to_cache(tiny_checkpoint.as_uri())
    assert not fetched


def test_a_cached_file_is_trusted_on_first_use_then_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tiny_checkpoint.read_bytes())
    backbones.load_backbone("dinov2_vits14", **TINY)
    digest = sha256_of(tiny_checkpoint)
    assert sha256_record(cached).read_text() == f"{digest}  {cached.name}\n" and digest in capsys.readouterr().out
    backbones.load_backbone("dinov2_vits14", **TINY)  # unchanged: accepted
    cached.write_bytes(cached.read_bytes() + b"\0")
    with pytest.raises(backbones.CheckpointError, match=f"has SHA-256 {sha256_of(cached)}.*expects {digest}"):
        backbones.load_backbone("dinov2_vits14", **TINY)


def test_a_pinned_local_file_is_accepted(tiny_checkpoint: Path) -> None:
    digest = sha256_of(tiny_checkpoint)
    model = backbones.load_backbone("dinov2_vits14", checkpoint=tiny_checkpoint, sha256=digest.upper(), **TINY)
    assert model.random_weights is False


def test_cli_backbone_choices_are_the_backbones() -> None:
    assert BACKBONE_CHOICES == backbones.BACKBONE_NAMES


@pytest.fixture
def local_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's download_url takes http(s) only: copy file:// URLs instead (an unreadable one is an OSError)."""

    def copy(url: str, root: str, filename: str, md5: str | None = None) -> None:
        shutil.copy(url.removeprefix("file://"), Path(root) / filename)

    monkeypatch.setattr(datamodules.download, "download_url", copy)


def make_archive(tmp_path: Path, files: int) -> Path:
    source = tmp_path / "source" / "Data" / "images"
    source.mkdir(parents=True)
    for i in range(files):
        (source / f"{i}.txt").write_text(str(i))
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "source" / "Data", arcname="Data")
    return archive


def check_three(folder: Path) -> None:
    if len(list((folder / "images").iterdir())) != 3:
        raise DatasetError(f"{folder} is incomplete")


def test_an_archive_is_fetched_unpacked_and_moved_into_place(tmp_path: Path, local_urls: None) -> None:
    url = make_archive(tmp_path, 3).as_uri()
    root = tmp_path / "root"
    (root / PARTIAL / "Data").mkdir(parents=True)  # a killed unpacking's leftovers
    data = fetch_archive("Test", url, root, "data.tar", "Data", check=check_three)
    assert sorted(p.name for p in (data / "images").iterdir()) == ["0.txt", "1.txt", "2.txt"]
    assert sorted(p.name for p in root.iterdir()) == ["Data", "data.tar"]


def test_an_incomplete_archive_leaves_no_dataset_folder(tmp_path: Path, local_urls: None) -> None:
    url = make_archive(tmp_path, 2).as_uri()
    root = tmp_path / "root"
    with pytest.raises(DatasetError, match="incomplete"):
        fetch_archive("Test", url, root, "data.tar", "Data", check=check_three)
    assert sorted(p.name for p in root.iterdir()) == ["data.tar"]


def test_a_failed_download_leaves_no_folder(tmp_path: Path, local_urls: None) -> None:
    url = (tmp_path / "missing.tar").as_uri()
    with pytest.raises(DatasetError, match=f"Cannot download Test from {url}"):
        fetch_archive("Test", url, tmp_path / "a" / "root", "data.tar", "Data")
    assert not (tmp_path / "a").exists()


def test_a_state_dict_must_hold_tensors(tmp_path: Path) -> None:
    torch.save({}, tmp_path / "empty.pth")
    with pytest.raises(backbones.CheckpointError, match="an empty dict"):
        backbones.load_backbone("dinov2_vits14", checkpoint=tmp_path / "empty.pth", **TINY)

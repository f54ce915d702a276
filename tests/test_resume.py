"""Resuming, piece by piece: the training loader's state, random states, checkpoint IO and run directories.

The end-to-end check (a SIGKILLed run resumed and compared with an uninterrupted one) is the reliability case
``resume-killed-run-best-and-losses`` in tests/reliability/resume.py.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from datamodules.loaders import ResumableLoader, ResumableSampler, SeededSamples
from utils.checkpoints import SafeCheckpointIO, random_states, set_random_states
from utils.errors import UserError
from utils.run_dirs import run_dir, unique_name


class Draws:
    """A stand-in albumentations Compose: reseedable, and its output depends on its random state."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def set_random_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)


class Items(Dataset):
    """Item i = (i, a random draw of the transform)."""

    def __init__(self, n: int):
        self.n, self.transform = n, Draws()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[int, float]:
        return index, float(self.transform.rng.random())


def loader(seed: int = 3, batch_size: int = 2) -> ResumableLoader:
    data = Items(10)
    return ResumableLoader(
        SeededSamples(data), batch_size=batch_size, sampler=ResumableSampler(data, seed), drop_last=True
    )


def batches(loader: ResumableLoader, epoch: int | None = None) -> list[list[tuple[int, float]]]:
    if epoch is not None:
        loader.sampler.set_epoch(epoch)
    return [list(zip(index.tolist(), draw.tolist())) for index, draw in loader]


def test_an_epoch_is_fixed_by_seed_and_epoch() -> None:
    first = batches(loader(), epoch=1)
    assert first == batches(loader(), epoch=1)
    assert first != batches(loader(), epoch=2) and first != batches(loader(seed=4), epoch=1)
    order = [i for batch in first for i, _ in batch]
    assert sorted(order) == list(range(10)) and order != list(range(10))  # every sample once, shuffled
    assert len(first) == 5


def test_a_resumed_epoch_continues_where_training_was() -> None:
    uninterrupted = batches(loader(), epoch=1)
    resumed = loader()
    resumed.load_state_dict({"epoch": 1, "batches": 2})
    assert batches(resumed) == uninterrupted[2:]  # same samples, same augmentation draws
    assert batches(resumed, epoch=1) == uninterrupted  # the skip applies once


def test_a_state_saved_after_the_last_batch_starts_the_next_epoch() -> None:
    resumed = loader()
    resumed.load_state_dict({"epoch": 1, "batches": 5})
    assert batches(resumed) == batches(loader(), epoch=2)


def test_the_state_counts_the_trainers_batches_not_the_loaders() -> None:
    counted = loader()
    counted.batches_done = lambda: 3
    counted.sampler.set_epoch(4)
    next(iter(counted))  # the loader runs ahead of training; its own count does not matter
    assert counted.state_dict() == {"epoch": 4, "batches": 3}


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    torch.save(random_states(), tmp_path / "states.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    set_random_states(torch.load(tmp_path / "states.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_checkpoint_io_reads_data_only(tmp_path: Path) -> None:
    io = SafeCheckpointIO()
    torch.save({"x": RunsCode(tmp_path / "ran")}, tmp_path / "crafted.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint(tmp_path / "crafted.ckpt", weights_only=False)  # Lightning's argument is overruled
    assert not (tmp_path / "ran").exists()
    with pytest.raises(UserError, match="is a URL"):
        io.load_checkpoint("http://127.0.0.1:9/last.ckpt")


def test_checkpoint_io_writes_through_a_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io, path = SafeCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(
        os, "replace", lambda src, dst: renames.append((Path(src), Path(dst))) or real_replace(src, dst)
    )
    io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert [dst for _, dst in renames] == [path] and renames[0][0].parent == path.parent
    assert io.load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_run_dirs_are_unique_and_a_resume_reuses_its_own(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert unique_name() != unique_name()
    fresh = Path(run_dir(None, str(runs)))
    assert fresh.parent == runs and fresh != Path(run_dir(None, str(runs)))
    checkpoint = runs / "old" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    assert Path(run_dir(str(checkpoint), str(runs))).parent == runs  # not a run directory: no .hydra next to it
    (runs / "old" / ".hydra").mkdir()
    assert run_dir(str(checkpoint), str(runs)) == str(runs / "old")
    assert Path(run_dir(str(tmp_path / "copied.ckpt"), str(runs))).parent == runs

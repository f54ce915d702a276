"""Faults across processes, with real processes and real signals (utils/faults.py).

Each case starts `python train.py`, `python -m retrieval index` or `python -m reproduce` in a session of its own and
sends a real signal: from outside, as a scheduler or `timeout` does, or from a callback at a given step
(`tests.fault_helpers`). It checks the exit code, that the run said what happened in one paragraph (no traceback),
what was kept, that every process of the run ended (no hang: each wait has a limit), and that the same command goes
on from where it stopped. DDP runs are two gloo processes on the CPU. Longer than 300 lines: one case per fault of
the issue, each a few lines of process handling.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY
from tests.fixture_paths import TINY_CHECKPOINT
from tests.reliability import offline_env

ROOT = Path(__file__).resolve().parents[1]
DDP = (
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.sync_batchnorm=false",  # SyncBatchNorm needs GPUs
    "trainer.precision=32-true",
)
HELPERS = "tests.fault_helpers"


def train_argv(tmp: Path, *overrides: str, run: str = "run", experiment: str = "quickstart") -> list[str]:
    """The quickstart shrunk to seconds on the tiny fixture backbone: 8 steps of batch 2, last.ckpt every 2 steps."""
    return [
        sys.executable,
        "train.py",
        f"experiment={experiment}",
        f"backbone.checkpoint={TINY_CHECKPOINT}",
        *(f"backbone.{key}={value}" for key, value in TINY.items()),
        f"data.root={tmp / 'ade'}",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.crop_size=56",
        "data.short_side=56",
        "head.stride=28",
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        "trainer.log_every_n_steps=1",
        "last_every_n_steps=2",
        "+trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp / run}",
        *overrides,
    ]


def callback(name: str, cls: str, **options: object) -> list[str]:
    return [f"+callbacks.{name}._target_={HELPERS}.{cls}", *(f"+callbacks.{name}.{k}={v}" for k, v in options.items())]


@dataclass
class Ended:
    code: int
    out: str
    err: str
    seconds: float  # from the signal sent from outside (or the start) to the end of the run's last process

    def paragraphs(self, start: str) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith(start)]


class Command:
    """A command in a session of its own (so that a signal can go to all its processes, as `timeout` sends it)."""

    def __init__(self, argv: list[str], tmp: Path):
        self.start = time.monotonic()
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=offline_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip

    def ranks(self) -> list[int]:
        """The process ids of rank 0 (the command) and of the ranks it started (not its loader workers)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        started = [int(c) for c in children if "train.py" in Path(f"/proc/{c}/cmdline").read_text()]
        return [pid, *started]

    def when(self, pattern: str, timeout: float = 180) -> None:
        """Wait for a file matching ``pattern``; fail if the command ends or the time runs out first."""
        deadline = time.monotonic() + timeout
        while not glob.glob(pattern):
            assert self.process.poll() is None, f"the command ended before {pattern} appeared"
            assert time.monotonic() < deadline, f"no {pattern} after {timeout} s"
            time.sleep(0.02)

    def send(self, signum: int, to: str = "group") -> None:
        self.start = time.monotonic()
        if to == "group":
            os.killpg(self.process.pid, signum)
        else:
            os.kill(self.ranks()[int(to.removeprefix("rank"))], signum)

    def wait(self, timeout: float = 240) -> Ended:
        """How the command ended, once every process holding its output (its ranks, their workers) has ended."""
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            out, err = self.process.communicate()
            pytest.fail(f"a process of the run still ran after {timeout} s (a hang):\n{err[-3000:]}")
        return Ended(self.process.returncode, out, err, time.monotonic() - self.start)


def run_train(tmp: Path, *overrides: str, run: str = "run", timeout: float = 240) -> Ended:
    return Command(train_argv(tmp, *overrides, run=run), tmp).wait(timeout)


def no_traceback(ended: Ended) -> None:
    assert "Traceback" not in ended.err and "Exception ignored" not in ended.err, ended.err[-3000:]


def test_sigterm_to_one_rank_stops_both_at_the_same_step_after_saving_last_ckpt(tmp_path: Path) -> None:
    ended = run_train(tmp_path, *DDP, *callback("term", "SignalAt", step=3, signal="SIGTERM", rank=1))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ended.code == 128 + signal.SIGTERM, ended.err[-3000:]
    (stop,) = ended.paragraphs("Stopped by")
    assert stop == (
        f"Stopped by SIGTERM at step 3 (last.ckpt saved), before the command finished. Resume with the same command "
        f"and ckpt_path={last}."
    )
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
    assert not (tmp_path / "run" / "metrics.json").exists()
    no_traceback(ended)


def test_a_bad_image_only_rank_1_reads_stops_both_ranks_with_one_paragraph_and_exit_2(tmp_path: Path) -> None:
    from datamodules.synthetic.ade20k import write_ade20k_like

    images = write_ade20k_like(tmp_path / "ade", 32, 8) / "images" / "validation"
    bad = sorted(images.glob("*.jpg"))[1]  # the evaluation sampler gives rank 1 the odd images, unshuffled
    bad.write_bytes(b"not a JPEG")
    ended = run_train(tmp_path, *DDP, "trainer.val_check_interval=2")
    assert ended.code == 2, ended.err[-3000:]
    (error,) = ended.paragraphs("Error:")
    assert str(bad) in error
    no_traceback(ended)


def write_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def index_argv(images: Path, out: Path, workers: int) -> list[str]:
    tiny = ["--checkpoint", str(TINY_CHECKPOINT), "--embed-dim", "64", "--depth", "4", "--num-heads", "4"]
    loader = ["--num-workers", str(workers), "--batch-size", "2", "--samples-per-shard", "4"]
    return [sys.executable, "-m", "retrieval", "index", str(images), "--out", str(out), *tiny, "--size", "28", *loader]


def index_vectors(index: Path) -> tuple[list[str], np.ndarray]:
    import faiss

    loaded = faiss.read_index(str(index / "index.faiss"))
    return json.loads((index / "paths.json").read_text()), loaded.reconstruct_n(0, loaded.ntotal)


def test_kill_term_stops_retrieval_index_at_a_batch_end_and_the_same_command_goes_on(tmp_path: Path) -> None:
    """The issue's case: `kill -TERM` of `python -m retrieval index` (its loader workers are not signalled)."""
    pytest.importorskip("faiss")
    images, out = tmp_path / "images", tmp_path / "index"
    write_images(images, 40)
    command = Command(index_argv(images, out, workers=2), tmp_path)
    command.when(f"{out}/parts/*/shard_*.json")
    command.send(signal.SIGTERM, to="rank0")
    ended = command.wait(120)
    assert ended.code == 128 + signal.SIGTERM, ended.err[-3000:]
    (stop,) = ended.paragraphs("Stopped by")
    assert stop == (
        f"Stopped by SIGTERM in the prediction loop, before the command finished. The images embedded so far are kept "
        f"in {out}: run the same command again to go on."
    )
    no_traceback(ended)
    kept = len(glob.glob(f"{out}/parts/*/shard_*.json"))
    assert 1 <= kept < 10 and not (out / "index.faiss").exists()

    resumed = Command(index_argv(images, out, workers=2), tmp_path).wait(120)
    assert resumed.code == 0, resumed.err[-3000:]
    assert f"Indexed 40 images in {out} ({40 - 4 * kept} embedded now" in resumed.out
    whole = Command(index_argv(images, tmp_path / "whole", workers=0), tmp_path).wait(120)
    assert whole.code == 0, whole.err[-3000:]
    (paths, vectors), (whole_paths, whole_vectors) = index_vectors(out), index_vectors(tmp_path / "whole")
    assert paths == whole_paths and np.array_equal(vectors, whole_vectors)


def test_sigterm_during_an_evaluation_stops_it_with_exit_143(tmp_path: Path) -> None:
    ended = run_train(tmp_path, "train=false", *callback("term", "SignalAt", step=2, signal="SIGTERM", loop="test"))
    assert ended.code == 128 + signal.SIGTERM, ended.err[-3000:]
    (stop,) = ended.paragraphs("Stopped by")
    assert stop == (
        "Stopped by SIGTERM in the test, before the command finished. Run the same command again: an evaluation "
        "starts over."
    )
    no_traceback(ended)


# The resume comparison of tests/reliability/resume.py on two processes: 8 steps of batch 4 per process over the
# 32 generated images (two epochs), validation at 4 and 8, last.ckpt every 3 steps; rank 1 is SIGKILLed at the end
# of step 7, after last.ckpt of step 6 (mid-epoch, between validations).
RESUME = (
    *DDP,
    "data.batch_size=4",
    "head.lr=0.3",
    "last_every_n_steps=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
)


def logged(run: Path, version: int, column: str) -> dict[int, float]:
    rows = csv.DictReader((run / "csv" / f"version_{version}" / "metrics.csv").open())
    return {int(row["step"]): float(row[column]) for row in rows if row[column]}


@pytest.mark.slow
def test_sigkill_of_one_rank_ends_the_run_naming_last_ckpt_and_resuming_gives_the_same_metrics(tmp_path: Path) -> None:
    full = run_train(tmp_path, *RESUME, run="full")
    assert full.code == 0, full.err[-3000:]
    killed = run_train(tmp_path, *RESUME, *callback("kill", "SignalAt", step=7, signal="SIGKILL", rank=1), run="killed")
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert killed.code == 1, killed.err[-3000:]
    (error,) = killed.paragraphs("Error:")
    assert error.startswith("Error: The process of rank 1 (pid ") and "was killed by SIGKILL" in error
    assert error.endswith(f"Resume with the same command and ckpt_path={last}.")
    no_traceback(killed)
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6

    resumed = run_train(tmp_path, *RESUME, f"ckpt_path={last}", run="killed")
    assert resumed.code == 0, resumed.err[-3000:]
    full_loss, resumed_loss = logged(tmp_path / "full", 0, "train/loss"), logged(tmp_path / "killed", 1, "train/loss")
    assert sorted(resumed_loss) == [6, 7]
    for step, loss in resumed_loss.items():
        assert abs(loss - full_loss[step]) <= 1e-5, (step, loss, full_loss[step])
    full_metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    resumed_metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert resumed_metrics.keys() == full_metrics.keys()
    for name, value in full_metrics.items():
        assert abs(resumed_metrics[name] - value) <= 1e-6, (name, resumed_metrics[name], value)


@pytest.mark.slow
def test_sigkill_of_rank_0_ends_rank_1_with_one_paragraph(tmp_path: Path) -> None:
    ended = run_train(tmp_path, *DDP, *callback("kill", "SignalAt", step=3, signal="SIGKILL", rank=0))
    assert ended.code == -signal.SIGKILL
    (error,) = ended.paragraphs("Error:")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert error.startswith("Error: The process of rank 0 is gone")
    assert error.endswith(f"Resume with the same command and ckpt_path={last}.")
    no_traceback(ended)


@pytest.mark.slow
def test_a_rank_that_waits_on_a_dead_rank_is_ended_by_the_watcher(tmp_path: Path) -> None:
    """Rank 0 makes no progress after rank 1 died (as in an NCCL collective, which waits for the timeout): rank 0's
    watcher ends it with the paragraph well before its 600 s stall would."""
    kill = callback("kill", "SignalAt", step=3, signal="SIGKILL", rank=1)
    ended = run_train(tmp_path, *DDP, *kill, *callback("stall", "StallAt", step=3, rank=0, seconds=600), timeout=150)
    assert ended.code == 1, ended.err[-3000:]
    (error,) = ended.paragraphs("Error:")
    assert error.startswith("Error: The process of rank 1 (pid ") and "was killed by SIGKILL" in error
    no_traceback(ended)


@pytest.mark.slow
def test_sigterm_to_one_rank_during_feature_cache_extraction_keeps_its_shards(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    options = (f"feature_cache.root={cache}", "feature_cache.samples_per_shard=4")
    argv = train_argv(tmp_path, *DDP, *options, experiment="cached_quickstart")
    command = Command(argv, tmp_path)
    command.when(f"{cache}/*/shard_*.json")
    command.send(signal.SIGTERM, to="rank1")
    ended = command.wait()
    assert ended.code == 128 + signal.SIGTERM, ended.err[-3000:]
    (stop,) = ended.paragraphs("Stopped by")
    assert stop.startswith("Stopped by SIGTERM in the prediction loop") and "keeps the shards it finished" in stop
    no_traceback(ended)
    kept = len(glob.glob(f"{cache}/*/shard_*.json"))
    assert 1 <= kept < 8 and not glob.glob(f"{cache}/*/manifest.json")

    resumed = Command(argv, tmp_path).wait()
    assert resumed.code == 0, resumed.err[-3000:]
    assert len(glob.glob(f"{cache}/*/shard_*.json")) == 8 and glob.glob(f"{cache}/*/manifest.json")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_every_process_with_loader_workers_stops_ddp_training(tmp_path: Path, signum: int) -> None:
    """`timeout` and SLURM signal every process of the job, Ctrl-C the terminal's foreground group: loader workers
    included."""
    command = Command(train_argv(tmp_path, *DDP, "data.num_workers=2", "trainer.max_steps=40"), tmp_path)
    command.when(f"{tmp_path}/run/checkpoints/last.ckpt")
    command.send(signum)
    ended = command.wait()
    assert ended.code == 128 + signum, ended.err[-3000:]
    (stop,) = ended.paragraphs("Stopped by")
    assert stop.endswith(f"Resume with the same command and ckpt_path={tmp_path}/run/checkpoints/last.ckpt.")
    no_traceback(ended)


@pytest.mark.slow
def test_sigterm_stops_reproduce_and_keeps_the_finished_rows(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = ["dinov2-ade20k-lin-vits14", "dinov2-nyu-lin1-vits14"]
    argv = [
        sys.executable,
        "-m",
        "reproduce",
        *rows,
        "--pipeline",
        "--checkpoint",
        str(TINY_CHECKPOINT),
        "--out",
        str(out),
    ]
    command = Command(argv, tmp_path)
    command.when(f"{out}/reproduce.json")
    command.send(signal.SIGTERM, to="rank0")
    ended = command.wait()
    assert ended.code == 128 + signal.SIGTERM, ended.err[-3000:]
    (stop,) = ended.paragraphs("Stopped by")
    assert stop.endswith(
        f"The rows that finished are kept in {out / 'reproduce.json'}: the same command runs the others (finished rows "
        "are skipped; the row that was stopped starts over)."
    )
    no_traceback(ended)
    assert list(json.loads((out / "reproduce.json").read_text())["rows"]) == rows[:1]

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
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fault_helpers import DDP, Command, callback, no_traceback, report, run_train, train_argv
from tests.fixture_paths import TINY_CHECKPOINT


def test_sigterm_to_one_rank_stops_both_at_the_same_step_after_saving_last_ckpt(tmp_path: Path) -> None:
    ended = run_train(tmp_path, *DDP, *callback("term", "SignalAt", step=3, signal="SIGTERM", rank=1))
    report("SIGTERM to rank 1, DDP training", ended)
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


def test_kill_term_stops_retrieval_index_at_a_batch_end_and_the_same_command_goes_on(tmp_path: Path) -> None:
    """The issue's case: `kill -TERM` of `python -m retrieval index` (its loader workers are not signalled)."""
    pytest.importorskip("faiss")
    images, out = tmp_path / "images", tmp_path / "index"
    write_images(images, 40)
    command = Command(index_argv(images, out, workers=2), tmp_path)
    command.when(f"{out}/parts/*/shard_*.json")
    command.send(signal.SIGTERM, to="rank0")
    ended = command.wait(120)
    report("kill -TERM of retrieval index", ended)
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
    # the vectors of a resumed build are those of an uninterrupted one: test_retrieval_cli's interrupted build
    assert json.loads((out / "paths.json").read_text()) == [str(path) for path in sorted(images.iterdir())]


def test_sigterm_during_an_evaluation_stops_it_with_exit_143(tmp_path: Path) -> None:
    ended = run_train(tmp_path, "train=false", *callback("term", "SignalAt", step=2, signal="SIGTERM", loop="test"))
    report("SIGTERM in an evaluation", ended)
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
    report("SIGKILL of rank 1, DDP training", killed)
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
    report("SIGKILL of rank 0, DDP training", ended)
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
    report("SIGKILL of rank 1 with rank 0 stalled (the watcher)", ended)
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
    report("SIGTERM to rank 1, DDP feature-cache extraction", ended)
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
    report(f"{signal.Signals(signum).name} to every process, DDP training with loader workers", ended)
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
    report("SIGTERM to reproduce", ended)
    assert ended.code == 128 + signal.SIGTERM, ended.err[-3000:]
    (stop,) = ended.paragraphs("Stopped by")
    assert stop.endswith(
        f"The rows that finished are kept in {out / 'reproduce.json'}: the same command runs the others (finished rows "
        "are skipped; the row that was stopped starts over)."
    )
    no_traceback(ended)
    assert list(json.loads((out / "reproduce.json").read_text())["rows"]) == rows[:1]

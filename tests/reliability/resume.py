"""Checkpoints and run directories: ckpt_path files, run directories shared by two runs, resuming a killed run."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from tests.reliability import REPO, TINY_TRAIN, Case, Result, run_cli, substitute
from utils.checkpoints import resume_checkpoint

MARKER = "unpickled-code-ran"


class RunsCode:
    """Unpickling it creates ``MARKER`` next to it: the payload of a crafted checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def write_crafted(tmp: Path) -> None:
    torch.save({"state_dict": {}, "loops": RunsCode(tmp / MARKER)}, tmp / "crafted.ckpt")


def write_other_files(tmp: Path) -> None:
    """A torch file of plain weights (not a training checkpoint) and 4 KiB of random bytes."""
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp / "weights.pth")
    (tmp / "random.ckpt").write_bytes(random.Random(0).randbytes(4096))


def write_truncated(tmp: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "loops": {}}, tmp / "full.ckpt")
    data = (tmp / "full.ckpt").read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 2])


# The resume comparison: 8 steps of batch 8 over the 32 generated images (two epochs), validation at 4 and 8,
# last.ckpt every 3 steps; the killed run dies at step 7, after last.ckpt of step 6 (mid-epoch, between
# validations). With lr 0.3 the best validation is step 4's, before the kill.
RESUME_TRAIN = (
    *TINY_TRAIN,
    "trainer.max_steps=8",
    "trainer.val_check_interval=4",
    "data.batch_size=8",
    "head.lr=0.3",
    "last_every_n_steps=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
)
KILL_STEP = 7


class KillAtStep(Callback):
    """SIGKILLs its own process at the end of training step ``step``, before that step's checkpoints are written."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def train_runs(tmp: Path) -> None:
    """An uninterrupted run in {tmp}/full and the same run killed at `KILL_STEP` in {tmp}/killed."""
    full = run_cli(("train.py", *RESUME_TRAIN, "hydra.run.dir={tmp}/full"), tmp, {}, 240)
    assert full.exit_code == 0, full.text
    kill = (f"+callbacks.kill._target_={__name__}.KillAtStep", f"+callbacks.kill.step={KILL_STEP}")
    killed = run_cli(("train.py", *RESUME_TRAIN, "hydra.run.dir={tmp}/killed", *kill), tmp, {}, 240)
    assert killed.exit_code == -signal.SIGKILL, killed.text


def logged(run: Path, version: int, column: str) -> dict[int, float]:
    rows = csv.DictReader((run / "csv" / f"version_{version}" / "metrics.csv").open())
    return {int(row["step"]): float(row[column]) for row in rows if row[column]}


def check_resumed(tmp: Path, result: Result) -> None:
    """The resumed run continued in the killed run's folder and matches the uninterrupted run."""
    full, killed = tmp / "full", tmp / "killed"
    assert f"Run directory: {killed}" in result.text
    full_losses, resumed_losses = logged(full, 0, "train/loss"), logged(killed, 1, "train/loss")
    assert sorted(resumed_losses) == [6, 7]  # logged steps count from 0: the 7th and 8th steps
    for step, loss in resumed_losses.items():
        assert abs(loss - full_losses[step]) <= 1e-5, (step, loss, full_losses[step])
    full_val = logged(full, 0, "val/mIoU")
    assert logged(killed, 1, "val/mIoU") == {step: full_val[step] for step in full_val if step >= 6}
    best_step = max(full_val, key=full_val.__getitem__)
    assert best_step < 6, f"the best validation ({full_val}) should come before the kill, to test best tracking"
    full_metrics = json.loads((full / "metrics.json").read_text())
    resumed_metrics = json.loads((killed / "metrics.json").read_text())
    assert resumed_metrics.keys() == full_metrics.keys()
    for name, value in full_metrics.items():
        assert abs(resumed_metrics[name] - value) <= 1e-6, (name, resumed_metrics[name], value)
    assert abs(resumed_metrics["test/mIoU"] - full_val[best_step]) <= 1e-6  # tested: the best of the whole run
    last = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 8


# Two runs started together (in the same second), told apart by their seeds; each generates its own data set.
TWO_RUNS = """
import subprocess, sys
argv = [sys.executable, {train!r}, *{overrides!r}, "test=false", "+trainer.limit_val_batches=1"]
runs = [subprocess.Popen([*argv, f"seed={{seed}}", f"data.root={{sys.argv[1]}}/ade{{seed}}"]) for seed in (1, 2)]
sys.exit(max(run.wait() for run in runs))
"""


def two_runs_script(tmp: Path) -> None:
    overrides = [substitute(arg, tmp) for arg in TINY_TRAIN]
    (tmp / "two_runs.py").write_text(TWO_RUNS.format(train=str(REPO / "train.py"), overrides=overrides))


def check_two_run_dirs(tmp: Path, result: Result) -> None:
    runs = sorted((tmp / "logs" / "quickstart" / "runs").iterdir())
    assert len(runs) == 2, runs
    seeds = sorted(
        int(line.split(":")[1])
        for run in runs
        for line in (run / "config.yaml").read_text().splitlines()
        if line.startswith("seed:")
    )
    assert seeds == [1, 2]
    assert all((run / "metrics.json").is_file() for run in runs)


def check_one_sweep_dir(tmp: Path, result: Result) -> None:
    [sweep] = (tmp / "logs" / "quickstart" / "multiruns").iterdir()
    configs = [(sweep / job / "config.yaml").read_text().splitlines() for job in ("0", "1")]
    assert [next(line for line in lines if line.startswith("seed:")) for lines in configs] == ["seed: 1", "seed: 2"]


CASES = [
    Case(
        "resume-ckpt-url",
        "code",
        argv=("train.py", *TINY_TRAIN, "ckpt_path=http://127.0.0.1:9/last.ckpt"),
        names=("ckpt_path=http://127.0.0.1:9/last.ckpt", "local file"),
    ),
    Case(
        "resume-ckpt-crafted-pickle",
        "traceback",
        argv=("train.py", *TINY_TRAIN, "ckpt_path={tmp}/crafted.ckpt"),
        setup=write_crafted,
        names=("{tmp}/crafted.ckpt", "could run code"),
        absent=(MARKER, "logs/*/runs/*/checkpoints"),
    ),
    Case(
        "resume-ckpt-missing",
        "traceback",
        argv=("train.py", *TINY_TRAIN, "ckpt_path={tmp}/nowhere/last.ckpt"),
        names=("{tmp}/nowhere/last.ckpt", "does not exist", "ckpt_path=RUN_DIR/checkpoints/last.ckpt"),
    ),
    Case(
        "resume-ckpt-truncated",
        "traceback",
        argv=("train.py", *TINY_TRAIN, "ckpt_path={tmp}/truncated.ckpt"),
        setup=write_truncated,
        names=("{tmp}/truncated.ckpt", "truncated"),
    ),
    Case(
        "resume-ckpt-random-bytes",
        "traceback",
        call=lambda tmp: resume_checkpoint(tmp / "random.ckpt"),
        setup=write_other_files,
        names=("{tmp}/random.ckpt", "not a readable PyTorch checkpoint"),
    ),
    Case(
        "resume-ckpt-not-lightning",
        "traceback",
        call=lambda tmp: resume_checkpoint(tmp / "weights.pth"),
        setup=write_other_files,
        names=("{tmp}/weights.pth", "not a Lightning training checkpoint", "head.checkpoint=PATH"),
    ),
    Case(
        "resume-run-dirs-same-second",
        "lost",
        argv=("{tmp}/two_runs.py", "{tmp}"),
        setup=two_runs_script,
        check=check_two_run_dirs,
        exit_code=0,
    ),
    Case(
        "resume-multirun-sweep-dir",
        "traceback",
        argv=("train.py", "-m", *TINY_TRAIN, "train=false", "test=false", "seed=1,2"),
        check=check_one_sweep_dir,
        exit_code=0,
    ),
    Case(
        "resume-killed-run-best-and-losses",
        "silent",
        argv=("train.py", *RESUME_TRAIN, "ckpt_path={tmp}/killed/checkpoints/last.ckpt"),
        setup=train_runs,
        check=check_resumed,
        exit_code=0,
    ),
]

"""What tests/test_faults.py runs faults with: commands in sessions of their own (`Command`: signals from outside, to
one rank or to every process, as a scheduler sends them), and callbacks that make a fault happen at a given step of
a real `python train.py` run (`+callbacks.x._target_=...`), on one rank of a DDP run or on every rank: a real signal
sent to the process itself, a stall. The runs import the callbacks by name, hence a module of their own."""

from __future__ import annotations

import contextlib
import glob
import os
import signal as signal_module
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

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
HELPERS = __name__
SENT_AT = "fault sent at"


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
    seconds: float  # from the fault (a signal from outside, or `SignalAt`'s) to the end of the last process

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
        """Wait for a file matching ``pattern``; fail (ending every process of the command) if the command ends or
        the time runs out first."""
        deadline = time.monotonic() + timeout
        while not glob.glob(pattern):
            if self.process.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal_module.SIGKILL)
                _, err = self.process.communicate()
                raise AssertionError(f"no {pattern} (exit code {self.process.returncode}):\n{err[-3000:]}")
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
            os.killpg(self.process.pid, signal_module.SIGKILL)
            out, err = self.process.communicate()
            raise AssertionError(f"a process of the run still ran after {timeout} s (a hang):\n{err[-3000:]}")
        sent = [float(line.split()[-1]) for line in err.splitlines() if line.startswith(SENT_AT)]
        return Ended(self.process.returncode, out, err, time.monotonic() - (sent[0] if sent else self.start))


def run_train(tmp: Path, *overrides: str, run: str = "run", timeout: float = 240) -> Ended:
    return Command(train_argv(tmp, *overrides, run=run), tmp).wait(timeout)


def report(case: str, ended: Ended) -> None:
    """Print how long the run took to end after the fault (`pytest -s` shows it; docs/faults.md lists them)."""
    print(f"\n{case}: every process ended {ended.seconds:.1f} s after the fault")


def no_traceback(ended: Ended) -> None:
    assert "Traceback" not in ended.err and "Exception ignored" not in ended.err, ended.err[-3000:]


class SignalAt(Callback):
    """Sends ``signal`` to its own process on rank ``rank`` (-1: every rank) at the end of training step ``step``
    (``loop="train"``) or of test batch ``step`` (``loop="test"``, counted from 1)."""

    def __init__(self, step: int, signal: str, rank: int = -1, loop: str = "train"):
        self.step, self.signum, self.rank, self.loop = step, getattr(signal_module, signal), rank, loop

    def _send(self, trainer: L.Trainer, count: int) -> None:
        if count == self.step and self.rank in (-1, trainer.global_rank):
            print(f"{SENT_AT} {time.monotonic():.3f}", file=sys.stderr, flush=True)  # the machine's monotonic clock
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.loop == "train":
            self._send(trainer, trainer.global_step)

    def on_test_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, index: int, *rest: Any
    ) -> None:
        if self.loop == "test":
            self._send(trainer, index + 1)


class StallAt(Callback):
    """Rank ``rank`` stops making progress at the end of training step ``step`` for ``seconds`` (a rank stuck in a
    collective with a dead peer, as NCCL waits for its timeout)."""

    def __init__(self, step: int, rank: int, seconds: float):
        self.step, self.rank, self.seconds = step, rank, seconds

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            time.sleep(self.seconds)

"""Callbacks that make a fault happen at a given step in a real `python train.py` run (`+callbacks.x._target_=...`),
on one rank of a DDP run or on every rank: a real signal sent to the process itself, a stall. The processes import
them by name, so they live in a module of their own (tests/test_faults.py uses them)."""

from __future__ import annotations

import os
import signal as signal_module
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    """Sends ``signal`` to its own process on rank ``rank`` (-1: every rank) at the end of training step ``step``
    (``loop="train"``) or of test batch ``step`` (``loop="test"``, counted from 1)."""

    def __init__(self, step: int, signal: str, rank: int = -1, loop: str = "train"):
        self.step, self.signum, self.rank, self.loop = step, getattr(signal_module, signal), rank, loop

    def _send(self, trainer: L.Trainer, count: int) -> None:
        if count == self.step and self.rank in (-1, trainer.global_rank):
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

"""`GracefulStop`: a Lightning callback that stops every rank at a batch end after SIGTERM or Ctrl-C (`utils.faults`).

Lightning's own SIGTERM handling does not do it:
- its prediction loop never reads ``trainer.received_sigterm`` (feature extraction, `retrieval index` ran on);
- under DDP it broadcasts rank 0's flag only, so a SIGTERM to another rank stops that rank alone and the others wait
  for it, and its signal handler itself runs a collective, which pairs with whatever collective the other ranks are in;
- Ctrl-C raises KeyboardInterrupt in the middle of a batch, and Lightning then exits with 1.

So once a loop starts (after Lightning has put its handler in place) the command's own handler is put back
(`utils.faults.take_signals`), which only notes the signal, and this callback decides at each batch end:
- training steps, where the ranks are in step: one all-reduce (max) of the signal, so every rank stops at the same
  step; last.ckpt is saved there first unless a validation is due at that step (a checkpoint written before a
  validation makes a resumed run skip it; the rule of `utils.checkpoints.PeriodicLastCheckpoint`). The stop itself
  is raised at the next hook (the next batch's start, the validation's start, the epoch's or the fit's end): Lightning
  hands the step's logged values to the loggers after `on_train_batch_end`, so a stop raised there lost that step's
  loss from the logs while the checkpoint resumed after it;
- validation, test and prediction batches, whose ranks may run different numbers of batches (no collective may be
  added there): the rank that caught the signal records the stop in the process group's store and stops; the others
  find the record at their next batch end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from utils import faults, ranks


class GracefulStop(Callback):
    """Stop at the next batch end after SIGTERM or Ctrl-C, on every rank; `utils.faults.Stopped` says where."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: faults.Stopped | None = None  # a training stop decided at a batch end, raised at the next hook

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        faults.attach(trainer)

    def _take_signals(self, *args: Any) -> None:
        faults.take_signals()

    on_sanity_check_start = on_train_start = on_test_start = on_predict_start = _take_signals

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_pending()
        faults.take_signals()

    def _raise_pending(self, *args: Any) -> None:
        stop, self._pending = self._pending, None
        if stop is not None:
            raise stop

    on_train_batch_start = on_train_epoch_end = on_train_end = _raise_pending

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        ranks.mark_ending()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        signum = faults.signal_received() or 0
        if trainer.world_size > 1:
            flag = torch.tensor([signum], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
        if signum:
            saved = self._save_last(trainer)
            self._pending = faults.Stopped(
                signum, f"at step {trainer.global_step}{' (last.ckpt saved)' if saved else ''}"
            )

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._stop_unsynced(trainer, f"in the validation at step {trainer.global_step}")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._stop_unsynced(trainer, "in the test")

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._stop_unsynced(trainer, "in the prediction loop")

    @staticmethod
    def _stop_unsynced(trainer: L.Trainer, where: str) -> None:
        signum = faults.signal_received()
        if signum is not None:
            ranks.publish(128 + signum)
            raise faults.Stopped(signum, where)
        ranks.peer_stop()  # another rank's stop or fault

    @staticmethod
    def _save_last(trainer: L.Trainer) -> bool:
        """Save last.ckpt at this step, as the checkpoint callback would; whether it was saved."""
        checkpoint = trainer.checkpoint_callback
        if not isinstance(checkpoint, ModelCheckpoint) or not checkpoint.save_last or checkpoint.dirpath is None:
            return False
        loop = trainer.fit_loop
        if loop.epoch_loop._should_check_val_fx(loop._data_fetcher):  # Lightning's own test; no public one exists
            return False
        name = f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(Path(checkpoint.dirpath) / name)
        return True

"""SLURM's requeue signal for trainers that only predict into resumable outputs (feature cache shards, index parts).

Lightning's own requeue (`SLURMEnvironment(auto_requeue=True)`, the default under srun) saves the trainer's module
as ``hpc_ckpt_<n>.ckpt`` in ``default_root_dir`` before it calls ``scontrol requeue``, and every later fit, test or
predict under SLURM with no ``ckpt_path`` loads the newest such file. That suits the training run; a predict-only
trainer would save a whole frozen backbone for nothing, and load the training run's checkpoint into the wrong module.
`predict_plugins` turns Lightning's requeue off for such a trainer and `RequeueOnSignal` requeues without saving:
what the extraction wrote so far is kept shard by shard and resumed by the requeued job.
"""

from __future__ import annotations

import os
import signal
import subprocess
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn


def predict_plugins() -> list[Any]:
    """The ``plugins`` of a predict-only trainer: under SLURM, its environment without Lightning's requeue."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def slurm_job_id() -> str:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for an array task, else ``SLURM_JOB_ID``."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]


class RequeueOnSignal(Callback):
    """Under SLURM, SIGUSR1 (``#SBATCH --signal=USR1@90``) makes global rank 0 call ``scontrol requeue``; nothing is
    saved. Outside SLURM it does nothing."""

    def __init__(self) -> None:
        self._previous: Any = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if SLURMEnvironment.detect():
            self._previous = signal.signal(signal.SIGUSR1, lambda signum, frame: self._requeue(trainer, frame))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None

    def _requeue(self, trainer: L.Trainer, frame: FrameType | None) -> None:
        if not trainer.is_global_zero:
            return
        job = slurm_job_id()
        rank_zero_info(f"SLURM's requeue signal: requeueing job {job}; the next run resumes what is written so far.")
        result = subprocess.call(["scontrol", "requeue", job])
        if result != 0:
            rank_zero_warn(f"`scontrol requeue {job}` failed (exit code {result}): the job is not requeued.")

"""Training checkpoints: read as data only, written atomically and often, resumed exactly.

- `resume_checkpoint` checks ``ckpt_path`` before anything is built: a URL, a missing or unreadable file, one that
  holds Python objects, or a file that is not a Lightning checkpoint is a `UserError` naming the file.
- `SafeCheckpointIO` is the trainer's checkpoint IO: every load is ``torch.load(weights_only=True)`` of a local
  file (Lightning's default unpickles URL checkpoints with ``weights_only=False``, which runs code from the file),
  and every save goes through a temporary file and a rename (`utils.atomic`).
- `PeriodicLastCheckpoint` writes ``last.ckpt`` every N training steps between validations.
- `RandomStates` keeps the processes' random states in checkpoints, which Lightning does not save.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from utils.atomic import atomic_write
from utils.errors import UserError, load_failure_reason

# What train.py needs from a checkpoint to resume; Lightning writes all of them.
RESUME_KEYS = ("state_dict", "optimizer_states", "loops", "global_step", "pytorch-lightning_version")
RESUME_FIX = (
    "Resume from a checkpoint that train.py wrote (ckpt_path=RUN_DIR/checkpoints/last.ckpt), "
    "or leave ckpt_path out to start a new run."
)


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a remote file (``http://``, ``s3://``, ...); a Windows drive letter is not a scheme."""
    return len(urlparse(str(path)).scheme) > 1


def _refuse_url(path: str | os.PathLike) -> None:
    if is_url(path):
        raise UserError(
            f"ckpt_path={path} is a URL; train.py only resumes from a local file, since a checkpoint from elsewhere "
            "could run code when it is loaded. Download it, check where it comes from, and pass ckpt_path=PATH."
        )


def resume_checkpoint(ckpt_path: str | os.PathLike | None) -> str | None:
    """``ckpt_path`` as an absolute path once it is known to be a readable Lightning checkpoint; None stays None.

    Raises `UserError` for a URL, a missing file, a file torch cannot read (truncated, not a torch file), one that
    holds Python objects (refused unread: unpickling them could run code), or a torch file that is not a Lightning
    training checkpoint.
    """
    if ckpt_path is None:
        return None
    _refuse_url(ckpt_path)
    path = Path(ckpt_path).expanduser().absolute()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"ckpt_path={path} {what}. {RESUME_FIX}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged, foreign or code-holding file
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is not None:  # the weights_only unpickler met a Python object it does not allow
            raise UserError(
                f"ckpt_path={path} holds Python objects besides tensors and plain containers ({found.group(1)}), so "
                f"it was not loaded: unpickling them could run code. train.py's own checkpoints hold none. {RESUME_FIX}"
            ) from None
        raise UserError(
            f"ckpt_path={path} is not a readable PyTorch checkpoint (truncated, corrupt or another format; "
            f"{load_failure_reason(err)}). {RESUME_FIX}"
        ) from None
    missing = [key for key in RESUME_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise UserError(
            f"ckpt_path={path} is a PyTorch file but not a Lightning training checkpoint (it has no "
            f"{', '.join(missing)}). {RESUME_FIX} To start from a head's released weights, use head.checkpoint=PATH."
        )
    return str(path)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, with loads restricted to local files read as data and atomic saves.

    Lightning's own save writes the file in place (or, through fsspec, via a temporary file in the system temporary
    folder, which is not an atomic rename across file systems); a kill mid-save would leave a torn ``last.ckpt``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        _refuse_url(path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class PeriodicLastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps, so that a crash loses at most that many.

    Steps followed by a validation are left to the best-model checkpoint (``save_last=True``), which writes
    ``last.ckpt`` after the validation: a checkpoint written before it would make a resumed run skip it (Lightning
    fast-forwards a validation that follows the step a checkpoint was written at), and so miss a possible best.
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_train_steps: int):
        super().__init__(
            dirpath=dirpath,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
        )

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        loop = trainer.fit_loop
        if loop.epoch_loop._should_check_val_fx(loop._data_fetcher):  # Lightning's own test; no public one exists
            return
        super().on_train_batch_end(trainer, *args, **kwargs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: epoch ends and validations are the best-model checkpoint's."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: epoch ends and validations are the best-model checkpoint's."""


def random_states() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) random states, as tensors and plain values (loadable weights-only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    """Put back what `random_states` returned (CUDA's only where as many devices are visible)."""
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RandomStates(Callback):
    """Saves the random states in every checkpoint; a resumed run gets them back just before its first step.

    Lightning saves none of them. They are put back at the first training batch rather than on loading, because
    a fresh process draws from them while it starts (each loader iterator takes a seed) where the uninterrupted run
    did not. Under DDP every rank gets rank 0's states: ranks seeded alike hold the same ones.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return random_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            set_random_states(self._pending)
            self._pending = None

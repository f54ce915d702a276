"""Loaders shared by the dense-prediction datamodules (segmentation, depth), and the checks of every datamodule's
loader options (batch size, workers, image sizes)."""

import os
from collections.abc import Sequence
from numbers import Integral

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, get_worker_info

from utils.errors import option

from .errors import DatasetError

# What each checked option counts, and the least value that makes sense (every other option: 1).
OPTION_MEANINGS = {
    "batch_size": "images per batch",
    "num_workers": "loader worker processes; 0 loads in the main process",
    "crop_size": "the side(s) of the training crop in pixels",
    "short_side": "the image side images are scaled to, in pixels",
    "resize_size": "the side images are resized to before the centre crop, in pixels",
    "predict_short_side": "the short side prediction images are resized to, in pixels",
    "max_detections": "detector boxes kept per image",
    "generate_n": "images of the generated set",
}
MINIMUMS = {"num_workers": 0}


def check_loader_options(**options: int | Sequence[int]) -> None:
    """Refuse a loader option that is not a whole number at least its minimum (0 for ``num_workers``, else 1).

    Every datamodule calls this when it is built, so that ``data.batch_size=0`` is one DatasetError naming it
    rather than a traceback from torch's DataLoader (or albumentations) at the first batch. Sequence values
    (``crop_size=[H, W]``) are checked element by element.
    """
    for name, value in options.items():
        minimum = MINIMUMS.get(name, 1)
        items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        if items and all(isinstance(v, Integral) and not isinstance(v, bool) and v >= minimum for v in items):
            continue
        raise DatasetError(
            f"{option('data', name, value)} is not a valid {name}: it must be a whole number of at least {minimum} "
            f"({OPTION_MEANINGS.get(name, name)}). Set {option('data', name)} to such a number."
        )


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def usable_workers(num_workers: int) -> int:
    """``num_workers``, at most `available_cpus`: more loader processes than CPUs only compete for them (and
    torch warns about it at every loader), so a config's value is an upper bound, lowered here with a note."""
    cpus = available_cpus()
    if num_workers > cpus:
        rank_zero_info(
            f"{option('data', 'num_workers', num_workers)} but this process may use {cpus} CPU(s): using {cpus} "
            "loader worker(s)."
        )
    return min(num_workers, cpus)


class DenseDataModule(L.LightningDataModule):
    """Shuffled training batches; validation, test and prediction one image at a time, since sizes differ.

    Subclasses set ``batch_size`` and ``num_workers``, and ``train_set``, ``eval_set``, ``predict_set`` in ``setup``.
    """

    batch_size: int
    num_workers: int
    train_set: Dataset
    eval_set: Dataset
    predict_set: Dataset

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set, 1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set, 1)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, 1)

    def _loader(self, dataset: Dataset, batch_size: int, train: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_seed_worker,
        )


def _seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream (each would otherwise copy the same albumentations RNG)."""
    info = get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)

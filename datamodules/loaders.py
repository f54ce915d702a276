"""Loaders shared by the dense-prediction datamodules (segmentation, depth), and the checks of every datamodule's
loader options (batch size, workers, image sizes).

The training loader resumes exactly: the order of an epoch and each sample's augmentation depend only on the seed,
the epoch and the sample, never on how many processes, workers or interruptions came before. A checkpoint stores
the epoch and the batches it has trained on; a resumed loader skips those and draws what the uninterrupted run would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from numbers import Integral
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamodules.errors import DatasetError
from utils.errors import option


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in epoch ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ResumableSampler(DistributedSampler):
    """Shuffled ``(index, augmentation seed)`` pairs, fixed by (seed, epoch), that can start mid-epoch.

    A DistributedSampler (with one replica outside DDP) for its seeded per-epoch permutation, and so that Lightning
    keeps it under DDP instead of wrapping it in one. Lightning sets the epoch (``set_epoch``) as each one starts.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0  # samples of this epoch already trained on, skipped once by the next iteration

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.skip :]
        self.skip = 0
        return iter([(index, sample_seed(self.seed, self.epoch, index)) for index in indices])


class SeededSamples(Dataset):
    """Item ``(index, seed)`` = ``dataset[index]`` with ``dataset.transform`` (if any) reseeded with ``seed`` first.

    Reseeding per sample (rather than per worker) makes an augmentation independent of which worker drew it and of
    the samples before it, so that a resumed epoch augments as the uninterrupted one did.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        transform = getattr(self.dataset, "transform", None)
        if transform is not None:
            transform.set_random_seed(seed)
        return self.dataset[index]


class ResumableLoader(DataLoader):
    """A DataLoader over a `ResumableSampler` that Lightning saves in checkpoints and restores on resume.

    ``batches_done()`` is how many batches of the current epoch the trainer has trained on: the loader itself runs
    ahead of training (workers and Lightning prefetch), so its own count would skip batches that were never used.
    Lightning calls ``load_state_dict`` before it starts iterating, so the first iteration starts where training was.
    """

    def __init__(self, *args: Any, batches_done: Callable[[], int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        done = self.batches_done() if self.batches_done is not None else 0
        return {"epoch": self.sampler.epoch, "batches": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = state["epoch"], state["batches"]
        if batches >= len(self):  # saved after an epoch's last batch: the next epoch starts afresh
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip = batches * self.batch_size


def resumable_loader(
    datamodule: L.LightningDataModule, dataset: Dataset, batch_size: int, **options: Any
) -> ResumableLoader:
    """The training loader of ``datamodule`` over ``dataset``: shuffled by the run's seed, resumable mid-epoch.

    ``options`` go to the DataLoader (``num_workers``, ...). Under DDP each rank draws its share of every epoch.
    """
    trainer = datamodule.trainer
    replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    # the seed that seed_everything set, so that `seed=` decides the order and the augmentations
    sampler = ResumableSampler(dataset, torch.initial_seed(), replicas, rank)

    def batches_done() -> int:  # Lightning's count of this epoch's batches fetched and trained on
        return datamodule.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    check_full_batch(len(sampler), batch_size, replicas)
    return ResumableLoader(
        SeededSamples(dataset),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        batches_done=None if trainer is None else batches_done,
        **options,
    )


def eval_sampler(
    trainer: L.Trainer | None, dataset: Dataset, unit: str = "image"
) -> UnrepeatedDistributedSampler | None:
    """Under DDP, this process's share of an evaluation split, every item once, in dataset order; None outside DDP.
    `unit` names the split's items in the message for too small a split ("image", "episode").

    Lightning's default (torch's DistributedSampler) pads the split with repeated items to equal shares, which the
    metrics would then count twice; Lightning's unrepeated sampler gives shares that differ by one instead
    (rank r: items r, r + P, r + 2P, ...). A split with fewer items than processes is refused: a process with
    nothing to evaluate would hold no metric state to synchronise.
    """
    if trainer is None or trainer.world_size == 1:
        return None
    if len(dataset) < trainer.world_size:  # type: ignore[arg-type]
        raise DatasetError(
            f"The evaluation split has {len(dataset)} {unit}(s), fewer than the {trainer.world_size} processes of this "  # type: ignore[arg-type]
            f"run: evaluate on fewer devices ({option('trainer', 'devices', len(dataset))})."  # type: ignore[arg-type]
        )
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )


def check_full_batch(samples: int, batch_size: int, replicas: int = 1) -> None:
    """DatasetError when ``samples`` (one rank's share) make no full training batch: the loader drops the partial
    one, so Lightning would stop with "No training batches" and the run test an untrained head, exit 0."""
    if samples < batch_size:
        share = f" ({samples} per process of {replicas})" if replicas > 1 else ""
        raise DatasetError(
            f"{option('data', 'batch_size', batch_size)} but the training set has {samples * replicas} "
            f"sample(s){share}: not one full batch to train on (the partial last batch is dropped). Fix: "
            f"{option('data', 'batch_size', max(samples, 1))} or less, or more training images."
        )


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
    """Refuse a loader option that is not a whole number at least its minimum (0 for ``num_workers``, else 1), or a
    pair ``[H, W]`` of them.

    Every datamodule calls this when it is built, so that ``data.batch_size=0`` is one DatasetError naming it
    rather than a traceback from torch's DataLoader (or albumentations) at the first batch. Sequence values
    (``crop_size=[H, W]``) are checked element by element.
    """
    for name, value in options.items():
        minimum = MINIMUMS.get(name, 1)
        pair = isinstance(value, Sequence) and not isinstance(value, str)
        items = list(value) if pair else [value]
        if (not pair or len(items) == 2) and all(
            isinstance(v, Integral) and not isinstance(v, bool) and v >= minimum for v in items
        ):
            continue
        raise DatasetError(
            f"{option('data', name, value)} is not a valid {name}: it must be a whole number of at least {minimum} "
            f"({OPTION_MEANINGS.get(name, name)}){' or a pair [H, W] of them' if pair else ''}. Set "
            f"{option('data', name)} to such a number."
        )


def one_item(batch: list[Any]) -> Any:
    """A loader batch of one item, left as it is (images of any size, as numpy): what SAM's loops read."""
    return batch[0]


def item_list(batch: list[Any]) -> list[Any]:
    """A loader batch of several items, as their list (images of any size, as numpy)."""
    return batch


def image_items(batch_size: int) -> Callable[[list[Any]], Any]:
    """The collate of SAM's loops: one item when `batch_size` is 1, else the list of items (SAM encodes a list of
    images of any sizes in one call, `sam.batched.encode_images`)."""
    return one_item if batch_size == 1 else item_list


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
    The training set's ``transform`` is an albumentations Compose (reseeded per sample, see `SeededSamples`).
    """

    batch_size: int
    num_workers: int
    train_set: Dataset
    eval_set: Dataset
    predict_set: Dataset

    def train_dataloader(self) -> DataLoader:
        return resumable_loader(self, self.train_set, self.batch_size, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set)

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=1, sampler=eval_sampler(self.trainer, dataset), **self._loader_options())

    def _loader_options(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": self.num_workers > 0,
        }

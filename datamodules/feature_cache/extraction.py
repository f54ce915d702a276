"""Writing a feature cache: the views to extract, batches that never cross a shard, and the shard writer.

Sample ``j`` of a cache is view ``j % V`` of source sample ``j // V`` (V = max(views, 1)). ``views=0`` is one
fixed view per image (resize + centre crop, no randomness); ``views=V`` are V draws of the datamodule's own
training augmentation, view v of sample i seeded by (seed, i, v), so that a resumed or repeated extraction
writes the same bytes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from utils.atomic import temp_prefix
from utils.errors import option

from ..depth.base import DepthDataModule
from ..segmentation.base import SegmentationDataModule
from ..transforms import IMAGENET_MEAN, IMAGENET_STD, RescaleToBox
from .locking import ExtractionLock, decided_by_rank_zero
from .store import CacheError, ShardLayout

TARGET_DTYPES = {"label": np.uint8, "depth": np.float16}  # the per-pixel targets a cache stores, and how

# ShardBatches yields every index of its shards: Lightning's warning that it cannot check this is noise here
warnings.filterwarnings("ignore", message="You are using a custom batch sampler `ShardBatches`")


def fixed_view_transform(datamodule: L.LightningDataModule) -> A.Compose:
    """The one view per image of ``views=0``: resize as at evaluation, centre crop to the training crop.

    Segmentation: fit in the (4 * short_side, short_side) box, centre crop ``crop_size`` (padded with 0 / ignore).
    Depth: centre crop ``crop_size`` (H, W) at the file's scale (padded with 0 = no depth), as the random crop does.
    """
    normalise = [A.Normalize(IMAGENET_MEAN, IMAGENET_STD), ToTensorV2()]
    if isinstance(datamodule, SegmentationDataModule):
        side, crop = datamodule.short_side, datamodule.crop_size
        resize = RescaleToBox(4 * side, side)
        return A.Compose(
            [resize, A.CenterCrop(crop, crop, pad_if_needed=True, fill_mask=datamodule.ignore_index), *normalise]
        )
    if isinstance(datamodule, DepthDataModule):
        return A.Compose([A.CenterCrop(*datamodule.crop_size, pad_if_needed=True, fill_mask=0), *normalise])
    raise CacheError(
        f"{option('feature_cache', 'views', 0)} has no fixed view for {type(datamodule).__name__}: set "
        f"{option('feature_cache', 'views', 'V')} to the number of augmented views per image (1 or more)."
    )


def view_seed(seed: int, index: int, view: int) -> int:
    """The augmentation seed of view ``view`` of sample ``index``."""
    return int(np.random.SeedSequence([seed, index, view]).generate_state(1)[0])


class ImageViews(Dataset):
    """Sample ``j`` = view ``j % V`` of source sample ``j // V``: the source item plus ``index`` = j.

    The source dataset's ``transform`` is reseeded before every item, so a view is the same whichever
    worker, run or rank draws it.
    """

    def __init__(self, source: Dataset, views: int, seed: int):
        self.source, self.views, self.seed = source, max(views, 1), seed

    def __len__(self) -> int:
        return len(self.source) * self.views

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample, view = divmod(index, self.views)
        self.source.transform.set_random_seed(view_seed(self.seed, sample, view))
        return self.source[sample] | {"index": index}


class ShardBatches(Sampler[list[int]]):
    """Batches of consecutive indices that never cross a shard, over the given shards only."""

    def __init__(self, shards: Sequence[int], n_samples: int, samples_per_shard: int, batch_size: int):
        self.shards, self.n_samples = list(shards), n_samples
        self.per_shard, self.batch_size = samples_per_shard, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for shard in self.shards:
            start, stop = shard * self.per_shard, min((shard + 1) * self.per_shard, self.n_samples)
            for first in range(start, stop, self.batch_size):
                yield list(range(first, min(first + self.batch_size, stop)))

    def __len__(self) -> int:
        return sum(len(range(0, self._size(shard), self.batch_size)) for shard in self.shards)

    def _size(self, shard: int) -> int:
        return min(self.per_shard, self.n_samples - shard * self.per_shard)


class _OpenShard:
    """One shard being written: every array memory-mapped to a temporary file named after this process (so that
    `remove_stale_temps` clears a killed writer's), renamed when all rows are in; the marker is written last."""

    def __init__(self, layout: ShardLayout, shard: int):
        self.layout, self.shard, self.size, self.filled = layout, shard, layout.size(shard), 0
        self.arrays: dict[str, np.memmap] = {}

    def temp(self, name: str) -> Path:
        final = self.layout.file(name, self.shard)
        return final.with_name(f"{temp_prefix(final)}shard.npy")

    def write(self, offset: int, rows: dict[str, np.ndarray]) -> None:
        for name, values in rows.items():
            if name not in self.arrays:
                shape = (self.size, *values.shape[1:])
                self.arrays[name] = np.lib.format.open_memmap(self.temp(name), "w+", values.dtype, shape)
            self.arrays[name][offset : offset + len(values)] = values
        self.filled += len(next(iter(rows.values())))

    def commit(self) -> None:
        meta = {}
        for name, array in self.arrays.items():
            array.flush()
            meta[name] = {"dtype": str(array.dtype), "shape": list(array.shape[1:])}
        self.arrays.clear()
        for name in meta:
            os.replace(self.temp(name), self.layout.file(name, self.shard))
        self.layout.mark_done(self.shard, meta)

    def discard(self) -> None:
        """Drop the rows written so far (an error stopped the extraction)."""
        names = list(self.arrays)
        self.arrays.clear()  # closes the memory maps before their files go
        for name in names:
            self.temp(name).unlink(missing_ok=True)


class ShardWriter(BasePredictionWriter):
    """Writes the extractor's tokens and the batch's targets into shards; batches must not cross shards.

    ``layout`` is set once the key is known (the key holds the trainer's device and precision, so the trainer,
    hence this callback, comes first).
    """

    def __init__(self, layout: ShardLayout | None = None):
        super().__init__(write_interval="batch")
        self.layout = layout
        self.open: _OpenShard | None = None

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, dict[int, Tensor]],
        batch_indices: Sequence[int] | None,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        assert self.layout is not None, "ShardWriter.layout is set before the extraction starts"
        shard, offset = divmod(int(batch["index"][0]), self.layout.samples_per_shard)
        if self.open is None or self.open.shard != shard:
            self.open = _OpenShard(self.layout, shard)
        self.open.write(offset, self.rows(prediction, batch, shard))
        if self.open.filled == self.open.size:
            self.open.commit()
            self.open = None

    def rows(self, prediction: dict[str, Any], batch: dict[str, Any], shard: int) -> dict[str, np.ndarray]:
        """The named arrays of one batch's rows, each ``(B, ...)``: here the tokens and the targets. A subclass
        stores other arrays of its own predictions (`retrieval` stores one descriptor per image)."""
        rows = {
            f"{kind}_{block}": t.numpy() for kind in ("tokens", "class_tokens") for block, t in prediction[kind].items()
        }
        self._check_finite(rows, batch, shard)
        rows.update({name: target_array(name, batch[name], batch["path"]) for name in TARGET_DTYPES if name in batch})
        return rows

    def _check_finite(self, rows: dict[str, np.ndarray], batch: dict[str, Any], shard: int) -> None:
        """Refuse non-finite tokens before they reach a shard: a NaN would train a NaN head."""
        for name, values in rows.items():
            finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
            if not finite.all():
                row, (kind, _, block) = int(np.flatnonzero(~finite)[0]), name.rpartition("_")
                self.on_exception()
                raise CacheError(
                    f"The backbone gives non-finite {kind.replace('_', ' ')} of block {block} (NaN or inf) for "
                    f"{batch['path'][row]} (sample {int(batch['index'][row])}, shard "
                    f"{self.layout.file(name, shard).name}); nothing of that shard was kept. Check the weights "
                    f"({option('backbone', 'checkpoint', 'PATH')}) and that image; a token beyond float16's range "
                    "(65504) is inf in the cache: train without the feature cache then."
                )

    def on_exception(self, *args: Any) -> None:
        if self.open is not None:
            self.open.discard()
            self.open = None


def target_array(name: str, values: Tensor, paths: Sequence[str]) -> np.ndarray:
    """A batch's labels or depth maps as the cache's dtype; labels must fit uint8 (class ids and 255 = ignore)."""
    array = values.cpu().numpy()
    if name == "label" and (array.min() < 0 or array.max() > 255):
        raise CacheError(
            f"A label in {list(paths)} holds {array.min()}..{array.max()}; the feature cache stores labels as uint8 "
            "(0..255). Train this dataset without feature_cache."
        )
    return array.astype(TARGET_DTYPES[name])


class ExtractionData(L.LightningDataModule):
    """The predict loader of an extraction: the pending shards, split between the ranks shard by shard.

    ``views``: any dataset whose items hold their ``index`` (`ImageViews` for the feature cache). ``lock``: taken
    by global rank 0 for the whole job before anything is decided (`ExtractionLock`; released by the caller after
    the manifest). ``plan``: run on global rank 0 alone, it prepares the folder and returns the shards to extract
    (default: ``layout.pending()``); every rank extracts its share of that one list, ``pending`` once the loader is
    made.
    """

    def __init__(
        self,
        views: Dataset,
        layout: ShardLayout,
        batch_size: int,
        num_workers: int,
        lock: ExtractionLock | None = None,
        plan: Callable[[], list[int]] | None = None,
    ):
        super().__init__()
        self.views, self.layout, self.lock, self.plan = views, layout, lock, plan or layout.pending
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pending: list[int] = []

    def predict_dataloader(self) -> DataLoader:
        strategy = self.trainer.strategy
        if self.lock is not None:
            self.lock.acquire(strategy)
        # rank 0's view of the disk decides, so that the ranks split one list even if one of them lags behind
        self.pending = decided_by_rank_zero(strategy, self.plan)
        mine = self.pending[self.trainer.global_rank :: self.trainer.world_size]
        return DataLoader(
            self.views,
            batch_sampler=ShardBatches(mine, len(self.views), self.layout.samples_per_shard, self.batch_size),
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

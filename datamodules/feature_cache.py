"""Feature cache: extract a frozen backbone's tokens once, then train heads from them many times.

One cache lives in ``root / <backbone>-<first 16 hex digits of the key's SHA-256>`` (layout and checks:
`datamodules.cache_store`), beside its lock ``<backbone>-<digest>.lock``:

    key.json               the CacheKey; checked on every open, a mismatch is an error, never a reuse
    paths.json             the image path of every source sample
    {array}_{k:05d}.npy    shard k of each array, ``samples_per_shard`` rows (the last shard fewer):
                           tokens_{block} (n, C, h, w) float16, class_tokens_{block} (n, C) float16,
                           label (n, H, W) uint8 or depth (n, 1, H, W) float16
    shard_{k:05d}.json     written last, atomically: shard k is complete, and what it holds (key, rows, arrays)
    manifest.json          written once every shard is: the cache is complete and readable

Sample ``j`` of a cache is view ``j % V`` of source sample ``j // V`` (V = max(views, 1)). ``views=0`` is one
fixed view per image (resize + centre crop, no randomness); ``views=V`` are V draws of the datamodule's own
training augmentation, view v of sample i seeded by (seed, i, v), so that a resumed or repeated extraction
writes the same bytes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
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
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from backbones.base import FrozenBackbone
from backbones.extraction import FeatureExtractor, token_numerics
from utils.atomic import remove_stale_temps, temp_prefix, write_text
from utils.errors import option

from .base import SegmentationDataModule
from .cache_store import (
    FORMAT_VERSION,
    KEY_FILE,
    MANIFEST_FILE,
    PATHS_FILE,
    CacheError,
    CacheKey,
    ShardLayout,
    cache_directory,
    delete_hint,
    extraction_lock,
    open_cache_dir,
    read_manifest,
    write_manifest,
)
from .depth import DepthDataModule
from .files import LabelMap
from .loaders import check_full_batch, usable_workers
from .transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, RescaleToBox

__all__ = [
    "FORMAT_VERSION",
    "KEY_FILE",
    "MANIFEST_FILE",
    "PATHS_FILE",
    "CacheError",
    "CacheKey",
    "CachedFeatureDataModule",
    "CachedFeatures",
    "FeatureCache",
    "ShardLayout",
    "find_backbone",
]

TARGET_DTYPES = {"label": np.uint8, "depth": np.float16}  # the per-pixel targets a cache stores, and how

# ShardBatches yields every index of its shards: Lightning's warning that it cannot check this is noise here
warnings.filterwarnings("ignore", message="You are using a custom batch sampler `ShardBatches`")


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's state_dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def files_sha256(samples: Sequence[Sequence[Any]]) -> str:
    """SHA-256 of an ordered sample list: each file's absolute path, size and mtime, and each label map."""
    digest = hashlib.sha256()
    for sample in samples:
        for part in sample:
            if isinstance(part, Path):
                stat = part.stat()
                digest.update(f"{os.path.abspath(part)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
            elif isinstance(part, LabelMap):
                digest.update(part.lut.tobytes())
            else:
                digest.update(f"{part!r}\n".encode())
    return digest.hexdigest()


def absolute_blocks(blocks: int | Sequence[int], n_blocks: int) -> tuple[int, ...]:
    """The last ``blocks`` blocks (an int) or the given indices, as sorted absolute indices."""
    indices = range(n_blocks - blocks, n_blocks) if isinstance(blocks, int) else blocks
    found = tuple(sorted({int(i) for i in indices}))
    if not found or found[0] < 0 or found[-1] >= n_blocks:
        raise CacheError(
            f"{option('feature_cache', 'blocks', blocks)} does not fit a backbone with {n_blocks} blocks: give the "
            f"last n as an int (1..{n_blocks}) or indices in 0..{n_blocks - 1}."
        )
    return found


def fixed_view_transform(datamodule: L.LightningDataModule) -> A.Compose:
    """The one view per image of ``views=0``: resize as at evaluation, centre crop to the training crop.

    Segmentation: fit in the (4 * short_side, short_side) box, centre crop ``crop_size`` (padded with 0 / ignore).
    Depth: centre crop ``crop_size`` (H, W) at the file's scale (padded with 0 = no depth), as the random crop does.
    """
    normalise = [A.Normalize(IMAGENET_MEAN, IMAGENET_STD), ToTensorV2()]
    if isinstance(datamodule, SegmentationDataModule):
        side, crop = datamodule.short_side, datamodule.crop_size
        resize = RescaleToBox(4 * side, side)
        return A.Compose([resize, A.CenterCrop(crop, crop, pad_if_needed=True, fill_mask=IGNORE_INDEX), *normalise])
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
        rows = {
            f"{kind}_{block}": t.numpy() for kind in ("tokens", "class_tokens") for block, t in prediction[kind].items()
        }
        self._check_finite(rows, batch, shard)
        rows.update({name: target_array(name, batch[name], batch["path"]) for name in TARGET_DTYPES if name in batch})
        self.open.write(offset, rows)
        if self.open.filled == self.open.size:
            self.open.commit()
            self.open = None

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
    """The predict loader of an extraction: the pending shards, split between the ranks shard by shard."""

    def __init__(self, views: ImageViews, layout: ShardLayout, batch_size: int, num_workers: int):
        super().__init__()
        self.views, self.layout = views, layout
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        # rank 0's view of the disk decides, so that the ranks split one list even if one of them lags behind
        pending = self.trainer.strategy.broadcast(self.layout.pending(), src=0)
        mine = pending[self.trainer.global_rank :: self.trainer.world_size]
        return DataLoader(
            self.views,
            batch_sampler=ShardBatches(mine, len(self.views), self.layout.samples_per_shard, self.batch_size),
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )


class CachedFeatures(Dataset):
    """A complete cache, memory-mapped shard by shard ->
    ``{"tokens": {block: (C, h, w) float16}, "class_tokens": {block: (C,) float16}`` (when stored),
    ``"label": (H, W) int64`` or ``"depth": (1, H, W) float32``, ``"path": str}``.

    Opening checks the manifest, the key and every shard's marker and array headers; reading checks that the
    tokens are finite (a damaged file can hold anything).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        manifest, self.layout = read_manifest(self.directory)
        self.n_samples, self.per_shard = manifest["n_samples"], manifest["samples_per_shard"]
        self.views, self.names = max(manifest["views"], 1), list(manifest["arrays"])
        paths = self.directory / PATHS_FILE
        try:
            self.paths = json.loads(paths.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CacheError(f"{paths} is damaged ({err}). {delete_hint(self.directory)}") from None
        if not isinstance(self.paths, list) or len(self.paths) * self.views != self.n_samples:
            raise CacheError(f"{paths} does not list this cache's images. {delete_hint(self.directory)}")
        self.mapped: dict[tuple[str, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.n_samples

    def __getstate__(self) -> dict[str, Any]:
        # loader workers map the files themselves: pickling a memmap would copy its whole shard
        return self.__dict__ | {"mapped": {}}

    def _array(self, name: str, shard: int) -> np.ndarray:
        if (name, shard) not in self.mapped:
            path = self.layout.file(name, shard)
            try:
                self.mapped[name, shard] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as err:
                raise CacheError(f"Cannot read {path} ({err}). {delete_hint(self.directory)}") from None
        return self.mapped[name, shard]

    def __getitem__(self, index: int) -> dict[str, Any]:
        shard, row = divmod(index, self.per_shard)
        item: dict[str, Any] = {"path": self.paths[index // self.views]}
        for name in self.names:
            value = torch.from_numpy(np.array(self._array(name, shard)[row]))
            kind, _, block = name.rpartition("_")
            if kind:
                if not torch.isfinite(value).all():
                    raise CacheError(
                        f"{self.layout.file(name, shard)} holds non-finite tokens (NaN or inf) in row {row} "
                        f"({item['path']}): the file is damaged. {delete_hint(self.directory)}"
                    )
                item.setdefault(kind, {})[int(block)] = value
            else:
                item[name] = value.long() if name == "label" else value.float()
        return item


class CachedFeatureDataModule(L.LightningDataModule):
    """Training batches from a feature cache; validation, test and prediction from the wrapped datamodule.

    Train batches: ``{"tokens": {block: (B, C, h, w)}, "class_tokens": {block: (B, C)}`` (when stored),
    ``"label": (B, H, W)`` or ``"depth": (B, 1, H, W)``, ``"path": [str] * B}``; tokens travel as float16 and
    become float32 on the device. Other attributes (``palette``, ``num_classes``...) are the wrapped module's.
    """

    def __init__(self, datamodule: L.LightningDataModule, directory: Path, batch_size: int, num_workers: int):
        super().__init__()
        self.datamodule, self.directory, self.batch_size, self.num_workers = (
            datamodule,
            directory,
            batch_size,
            num_workers,
        )

    def __getattr__(self, name: str) -> Any:
        if name == "datamodule":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.datamodule, name)

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        self.datamodule.setup(stage)
        if stage == "fit":
            self.train_set = CachedFeatures(self.directory)

    def train_dataloader(self) -> DataLoader:
        check_full_batch(len(self.train_set), self.batch_size)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> Any:
        return self.datamodule.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.datamodule.test_dataloader()

    def predict_dataloader(self) -> Any:
        return self.datamodule.predict_dataloader()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        for kind in ("tokens", "class_tokens"):
            if isinstance(batch, dict) and kind in batch:
                batch[kind] = {block: t.float() for block, t in batch[kind].items()}
        return batch


def find_backbone(model: nn.Module) -> FrozenBackbone:
    """The frozen backbone a head is built on."""
    found = [m for m in model.modules() if isinstance(m, FrozenBackbone)]
    if len(found) != 1:
        raise CacheError(
            f"feature_cache needs a head with one frozen backbone; {type(model).__name__} has {len(found)}."
        )
    return found[0]


class FeatureCache:
    """Settings of a feature cache (the ``feature_cache`` config node) and the step that builds or reuses one.

    Args:
        root: the folder that holds caches, one sub-folder per key.
        backbone: the backbone's hub name (folder names and key.json).
        blocks: the last n blocks (int) or block indices the head reads.
        views: 0 = one fixed view per image (``fixed_view_transform``); V >= 1 = V seeded draws of the training
            augmentation per image (N * V cached samples, N * V backbone passes, V times the disk).
        norm: apply the backbone's final norm (segmentation probes: yes; the depth heads: no).
        class_tokens: store each block's class token too (the depth heads read it).
        seed: the views' seed.
        backbone_options: the backbone's settings that change its outputs' bytes (dtype, compile, attention kernel).
        samples_per_shard: rows per shard file: the unit of atomic writes, of resumption and of the split
            between ranks.
        batch_size, num_workers: of the extraction loader (per rank).
    """

    def __init__(
        self,
        root: str,
        backbone: str,
        blocks: int | Sequence[int],
        views: int = 0,
        norm: bool = True,
        class_tokens: bool = False,
        seed: int = 0,
        samples_per_shard: int = 256,
        batch_size: int = 16,
        num_workers: int = 4,
        backbone_options: dict[str, Any] | None = None,
    ):
        minimums = {"views": 0, "num_workers": 0, "samples_per_shard": 1, "batch_size": 1}
        numbers = {"views": views, "num_workers": num_workers, "samples_per_shard": samples_per_shard}
        numbers["batch_size"] = batch_size
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimums[k] for k, v in numbers.items()):
            given = ", ".join(option("feature_cache", name, value) for name, value in numbers.items())
            raise CacheError(
                f"{given}: views and num_workers must be whole numbers 0 or more, the other two 1 or more."
            )
        self.root, self.backbone_name, self.blocks, self.views = root, backbone, blocks, views
        self.norm, self.class_tokens, self.seed = norm, class_tokens, seed
        self.backbone_options = json.loads(json.dumps(dict(backbone_options or {})))
        self.samples_per_shard, self.batch_size = samples_per_shard, batch_size
        self.num_workers = usable_workers(num_workers)  # more loader processes than CPUs only compete for them

    def key(
        self,
        backbone: FrozenBackbone,
        source: Dataset,
        crop_size: int | Sequence[int],
        numerics: dict[str, Any] | None = None,
    ) -> CacheKey:
        """The key of ``source`` (a dataset with ``samples`` and ``transform``) seen through ``backbone``.

        ``numerics``: what rounds the tokens, `backbones.extraction.token_numerics` (default: a float32 CPU run).
        """
        options = {k: v for k, v in vars(source).items() if k not in ("samples", "transform")}
        return CacheKey(
            backbone=self.backbone_name,
            architecture=(
                f"{type(backbone).__name__}(embed_dim={backbone.embed_dim}, n_blocks={backbone.n_blocks}, "
                f"patch_size={backbone.patch_size}, registers={backbone.num_register_tokens})"
            ),
            backbone_options=self.backbone_options,
            numerics=numerics if numerics is not None else token_numerics(backbone, "cpu", "32-true"),
            weights_sha256=weights_sha256(backbone),
            blocks=absolute_blocks(self.blocks, backbone.n_blocks),
            norm=self.norm,
            class_tokens=self.class_tokens,
            crop_size=tuple(int(s) for s in np.broadcast_to(crop_size, 2)),
            preprocessing=f"{type(source).__name__}({options!r}) {source.transform!r}",
            views=self.views,
            seed=self.seed if self.views else None,
            n_source_samples=len(source),
            files_sha256=files_sha256(source.samples),
            samples_per_shard=self.samples_per_shard,
        )

    def prepare(
        self, datamodule: L.LightningDataModule, backbone: FrozenBackbone, make_trainer: Callable[..., L.Trainer]
    ) -> CachedFeatureDataModule:
        """Build the cache of ``datamodule``'s training split (or resume it, or reuse it), and wrap the datamodule.

        ``make_trainer(callbacks=[...])`` builds the extraction trainer: any devices and strategy, with
        ``use_distributed_sampler=False`` (the ranks split the shards themselves). Its device type and precision
        are part of the key. One extraction of a key runs at a time (a file lock); a second one waits for it and
        then reuses its cache.
        """
        datamodule.prepare_data()
        datamodule.setup("fit")
        source = datamodule.train_set
        if not self.views:
            source = copy.copy(source)
            source.transform = fixed_view_transform(datamodule)
        writer = ShardWriter()
        trainer = make_trainer(callbacks=[writer])
        numerics = token_numerics(backbone, trainer.strategy.root_device.type, str(trainer.precision))
        key = self.key(backbone, source, datamodule.crop_size, numerics)
        directory = cache_directory(self.root, key)
        views = ImageViews(source, self.views, self.seed)
        # rank_zero_only.rank comes from the launcher's environment: the other ranks of a DDP job run under their
        # rank 0's lock (they start inside its trainer.predict)
        with extraction_lock(directory, exclusive=rank_zero_only.rank == 0):
            open_cache_dir(directory, key)
            writer.layout = ShardLayout(directory, len(views), self.samples_per_shard, key.digest())
            if (directory / MANIFEST_FILE).is_file():
                read_manifest(directory)
                rank_zero_info(f"Feature cache: reusing {directory} ({_size(directory)}).")
            else:
                self._extract(trainer, backbone, key, views, writer.layout)
        return CachedFeatureDataModule(datamodule, directory, datamodule.batch_size, datamodule.num_workers)

    def _extract(
        self, trainer: L.Trainer, backbone: FrozenBackbone, key: CacheKey, views: ImageViews, layout: ShardLayout
    ) -> None:
        start, directory = time.perf_counter(), layout.directory
        if trainer.is_global_zero:
            for stale in remove_stale_temps(directory):
                rank_zero_info(f"Feature cache: removed {stale.name}, left by a killed extraction.")
            write_text(directory / PATHS_FILE, json.dumps([str(sample[0]) for sample in views.source.samples]))
        extractor = FeatureExtractor(backbone, key.blocks, self.norm, self.class_tokens)
        data = ExtractionData(views, layout, self.batch_size, self.num_workers)
        trainer.predict(extractor, datamodule=data, return_predictions=False)
        trainer.strategy.barrier("feature_cache_shards")
        if trainer.is_global_zero:
            write_manifest(layout, self.views)
        trainer.strategy.barrier("feature_cache_manifest")
        rank_zero_info(
            f"Feature cache: {len(views)} samples ({len(views.source)} images x {views.views} view(s)) in "
            f"{directory}: {_size(directory)}, extracted in {time.perf_counter() - start:.1f} s."
        )


def _size(directory: Path) -> str:
    return f"{sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) / 2**30:.3f} GiB"

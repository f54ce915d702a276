"""Reading a complete feature cache: a memory-mapped dataset, and the datamodule that trains from it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from backbones.features import FeatureSpec, widened

from ..loaders import resumable_loader
from .store import PATHS_FILE, CacheError, delete_hint, read_manifest


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
    become float32 on the device. ``feature_spec`` says what the cache holds (a probe checks that it covers what it
    reads, `probes.base.HeadGridProbe.on_fit_start`). Other attributes (``palette``, ``num_classes``...) are the wrapped module's.
    """

    def __init__(
        self,
        datamodule: L.LightningDataModule,
        directory: Path,
        feature_spec: FeatureSpec,
        batch_size: int,
        num_workers: int,
    ):
        super().__init__()
        self.datamodule, self.directory, self.feature_spec = datamodule, directory, feature_spec
        self.batch_size, self.num_workers = batch_size, num_workers

    def __getattr__(self, name: str) -> Any:
        if name == "datamodule":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.datamodule, name)

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        self.datamodule.trainer = self.trainer  # under DDP its evaluation loaders give each process its share
        self.datamodule.setup(stage)
        if stage == "fit":
            self.train_set = CachedFeatures(self.directory)

    def train_dataloader(self) -> DataLoader:
        # the images' loader: the order fixed by the seed and the epoch whatever the number of processes (under DDP
        # each process its share of the same order), resumable mid-epoch
        return resumable_loader(
            self,
            self.train_set,
            self.batch_size,
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
                batch[kind] = {block: widened(t) for block, t in batch[kind].items()}
        return batch

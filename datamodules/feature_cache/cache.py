"""`FeatureCache`: the ``feature_cache`` config node, and the step that builds, resumes or reuses a cache."""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import Dataset

from backbones.base import FrozenBackbone
from backbones.extraction import FeatureExtractor, token_numerics
from backbones.features import FeatureSpec
from utils.atomic import remove_stale_temps, write_text
from utils.errors import option
from utils.slurm import RequeueOnSignal, predict_plugins

from ..loaders import usable_workers
from .extraction import ExtractionData, ImageViews, ShardWriter, fixed_view_transform
from .hashing import files_sha256, weights_sha256
from .locking import ExtractionLock, decided_by_rank_zero
from .reading import CachedFeatureDataModule
from .store import (
    MANIFEST_FILE,
    PATHS_FILE,
    CacheError,
    CacheKey,
    ShardLayout,
    cache_directory,
    open_cache_dir,
    read_manifest,
    write_manifest,
)


class FeatureCache:
    """Settings of a feature cache (the ``feature_cache`` config node) and the step that builds or reuses one.

    What is extracted (blocks, final norm, class tokens) is not a setting here: it is the head's
    `backbones.features.FeatureSpec`, which `prepare` takes from the probe.

    Args:
        root: the folder that holds caches, one sub-folder per key.
        backbone: the backbone's hub name (folder names and key.json).
        views: 0 = one fixed view per image (``fixed_view_transform``); V >= 1 = V seeded draws of the training
            augmentation per image (N * V cached samples, N * V backbone passes, V times the disk).
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
        views: int = 0,
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
        self.root, self.backbone_name, self.views, self.seed = root, backbone, views, seed
        self.backbone_options = json.loads(json.dumps(dict(backbone_options or {})))
        self.samples_per_shard, self.batch_size = samples_per_shard, batch_size
        self.num_workers = usable_workers(num_workers)  # more loader processes than CPUs only compete for them

    def key(
        self,
        backbone: FrozenBackbone,
        spec: FeatureSpec,
        source: Dataset,
        crop_size: int | Sequence[int],
        numerics: dict[str, Any] | None = None,
    ) -> CacheKey:
        """The key of ``source`` (a dataset with ``samples`` and ``transform``) read through ``backbone`` as ``spec``.

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
            blocks=spec.blocks,
            norm=spec.norm,
            class_tokens=spec.class_tokens,
            crop_size=tuple(int(s) for s in np.broadcast_to(crop_size, 2)),
            preprocessing=f"{type(source).__name__}({options!r}) {source.transform!r}",
            views=self.views,
            seed=self.seed if self.views else None,
            n_source_samples=len(source),
            files_sha256=files_sha256(source.samples),
            samples_per_shard=self.samples_per_shard,
        )

    def prepare(
        self, datamodule: L.LightningDataModule, probe: L.LightningModule, make_trainer: Callable[..., L.Trainer]
    ) -> CachedFeatureDataModule:
        """Build the cache of ``datamodule``'s training split for ``probe`` (or resume it, or reuse it), and wrap
        the datamodule.

        What is extracted is the probe's ``feature_spec`` (`backbones.features.FeatureSpec`), through the one frozen
        backbone it holds.

        ``make_trainer(callbacks=[...], default_root_dir=..., plugins=[...])`` builds the extraction trainer: any
        devices and strategy, with ``use_distributed_sampler=False`` (the ranks split the shards themselves). Its
        device type and precision are part of the key. One extraction of a key runs at a time, whichever job runs it
        (a file lock held by global rank 0, `locking.ExtractionLock`); a second one waits for it and then reuses its
        cache.
        """
        backbone, spec = find_backbone(probe), probe_spec(probe)
        datamodule.prepare_data()
        datamodule.setup("fit")
        source = datamodule.train_set
        if not self.views:
            source = copy.copy(source)
            source.transform = fixed_view_transform(datamodule)
        writer = ShardWriter()
        # away from the run folder, where Lightning under SLURM would load the run's requeue checkpoint into it
        trainer = make_trainer(
            callbacks=[writer, RequeueOnSignal()], default_root_dir=self.root, plugins=predict_plugins()
        )
        numerics = token_numerics(backbone, trainer.strategy.root_device.type, str(trainer.precision))
        key = self.key(backbone, spec, source, datamodule.crop_size, numerics)
        directory = cache_directory(self.root, key)
        views = ImageViews(source, self.views, self.seed)
        writer.layout = ShardLayout(directory, len(views), self.samples_per_shard, key.digest())
        lock = ExtractionLock(directory)
        try:
            self._extract(trainer, FeatureExtractor(backbone, spec), views, writer.layout, key, lock)
        finally:
            lock.release()
        return CachedFeatureDataModule(datamodule, directory, spec, datamodule.batch_size, datamodule.num_workers)

    def _extract(
        self,
        trainer: L.Trainer,
        extractor: FeatureExtractor,
        views: ImageViews,
        layout: ShardLayout,
        key: CacheKey,
        lock: ExtractionLock,
    ) -> None:
        """Every rank runs the extraction's predict loop, even over a complete cache (then with nothing to do):
        whether there is anything to extract is global rank 0's decision, under the lock (`locking`)."""
        start, directory, complete = time.perf_counter(), layout.directory, []

        def plan() -> list[int]:  # global rank 0 alone, holding the lock
            open_cache_dir(directory, key)
            if (directory / MANIFEST_FILE).is_file():
                read_manifest(directory)
                complete.append(True)
                return []
            # no other job writes here while this one holds the lock: any temporary file is a dead writer's
            for stale in remove_stale_temps(directory, any_writer=True):
                rank_zero_info(f"Feature cache: removed {stale.name}, left by a killed extraction.")
            write_text(directory / PATHS_FILE, json.dumps([str(sample[0]) for sample in views.source.samples]))
            return layout.pending()

        data = ExtractionData(views, layout, self.batch_size, self.num_workers, lock, plan)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Total length of .* across ranks is zero")  # a complete cache
            trainer.predict(extractor, datamodule=data, return_predictions=False)
        trainer.strategy.barrier("feature_cache_shards")

        def seal() -> None:  # global rank 0 alone, still holding the lock
            if complete:
                rank_zero_info(f"Feature cache: reusing {directory} ({_size(directory)}).")
                return
            write_manifest(layout, self.views)
            rank_zero_info(
                f"Feature cache: {len(views)} samples ({len(views.source)} images x {views.views} view(s)) in "
                f"{directory}: {_size(directory)}, extracted in {time.perf_counter() - start:.1f} s."
            )

        decided_by_rank_zero(trainer.strategy, seal)  # every rank waits for the manifest, or gets rank 0's error


def find_backbone(model: nn.Module) -> FrozenBackbone:
    """The frozen backbone a probe is built on."""
    found = [m for m in model.modules() if isinstance(m, FrozenBackbone)]
    if len(found) != 1:
        raise CacheError(
            f"feature_cache needs a head with one frozen backbone; {type(model).__name__} has {len(found)}."
        )
    return found[0]


def probe_spec(probe: nn.Module) -> FeatureSpec:
    """What ``probe`` reads from its backbone; CacheError for a probe that trains on no backbone features."""
    spec = getattr(probe, "feature_spec", None)
    if not isinstance(spec, FeatureSpec):
        raise CacheError(
            f"{type(probe).__name__} does not train a head on backbone features, so there is nothing to cache: "
            "drop experiment=cached_features (or feature_cache=null)."
        )
    return spec


def _size(directory: Path) -> str:
    return f"{sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) / 2**30:.3f} GiB"

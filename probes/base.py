"""The one shape of every trained probe: a grid of heads on the features a frozen backbone gives.

`HeadGridProbe` holds what the segmentation and the depth probe share, so that each states only what differs (its
heads, its loss, its metrics, its evaluation): the feature spec it reads (`feature_spec`, from every head's blocks and
the probe's `feature_norm` / `feature_class_tokens`), the features of a batch (live from the backbone, or cached),
the head grid (per-head validation, the choice of the best head, per-head optimiser groups and gradient clipping,
the grid table), the non-finite guard (`probes.guard`) and the frozen modules kept out of checkpoints
(`probes.frozen`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MetricCollection

from backbones.features import Features, FeatureSpec, batch_features, read_features
from probes.frozen import FrozenModulesMixin
from probes.grid import GridHead, best_index, clip_each_group, union_blocks
from probes.guard import NonFiniteGuard
from utils.errors import UserError
from writers.tables import write_rows


class HeadGridProbe(FrozenModulesMixin, NonFiniteGuard):
    """A grid of heads (`probes.grid`) trained on the features of one frozen backbone pass.

    Subclasses set `grid` (list of GridHead), `grid_heads` (the heads, in grid order), `monitor` ("val/<metric>"),
    `monitor_mode`, `feature_norm` and `feature_class_tokens`; they call `init_grid_metrics` once and update
    `val_metrics[g]` with head g's predictions in `validation_step`. With more than one head, the buffer `grid_val`
    `(N, M)` (saved in checkpoints) holds every head's validation metrics of the last validation, and `best_head`
    is read from it. The first of `frozen_modules` is the backbone.

    Batches are dicts with `image` `(B, 3, H, W)`, or, from a feature cache, the features themselves
    (`backbones.features.Features`: `tokens` and `class_tokens` by block) instead of `image`.
    """

    grid: list[GridHead]
    monitor: str
    monitor_mode: str
    feature_norm: bool = True
    """Whether the heads read the backbone's final norm of every block."""
    feature_class_tokens: bool = False
    """Whether the heads read each block's class token beside its patch map."""

    @property
    def backbone_module(self) -> nn.Module:
        """The frozen backbone the heads read."""
        return self.get_submodule(self.frozen_modules[0])

    @property
    def feature_spec(self) -> FeatureSpec:
        """What the whole grid reads from the backbone: every head's blocks, as this probe reads them."""
        return self.spec_of(union_blocks(self.grid))

    def spec_of(self, blocks: Sequence[int]) -> FeatureSpec:
        """The features of `blocks`, as this probe reads them."""
        return FeatureSpec.of(blocks, self.feature_norm, self.feature_class_tokens)

    def features(self, batch: Mapping[str, Any], keep: Tensor | None = None) -> Features:
        """The float32 features of `feature_spec` for the samples `keep` (bool `(B,)`; default all): the batch's
        cached ones when it has them, else one backbone pass over its `image`."""
        if "tokens" in batch:
            features = batch_features(batch, self.feature_spec, type(self).__name__)
            if keep is None:
                return features
            return {kind: {block: t[keep] for block, t in by_block.items()} for kind, by_block in features.items()}
        images = batch["image"] if keep is None else batch["image"][keep]
        return read_features(self.backbone_module, images, self.feature_spec)

    def head_inputs(self, features: Features, index: int) -> list[Tensor] | list[tuple[Tensor, Tensor]]:
        """What head `index` takes: the patch maps of its blocks, paired with their class tokens when read."""
        blocks = self.grid[index].blocks
        if self.feature_class_tokens:
            return [(features["tokens"][i], features["class_tokens"][i]) for i in blocks]
        return [features["tokens"][i] for i in blocks]

    def one_released_head(self, checkpoint: str | None, n_heads: int, fix: str) -> None:
        """ValueError when a released head file (one head) is given to a grid of several."""
        if checkpoint is not None and n_heads > 1:
            raise ValueError(
                f"{type(self).__name__}: checkpoint={checkpoint} is one released head, but the grid has {n_heads} "
                f"heads. Fix: {fix}"
            )

    def summed_loss(self, losses: list[Tensor], batch_idx: int, inputs: Mapping[str, Any], size: int) -> Tensor | None:
        """The training loss: the heads' losses summed (each head's own gradients), through the non-finite guard;
        logged as `train/loss`. `inputs` names the batch's tensors for the guard's message."""
        loss = self.finite_loss(torch.stack(losses).sum(), batch_idx, inputs)
        if loss is not None:
            self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    @staticmethod
    def original_size(batch: Mapping[str, Any]) -> tuple[int, int]:
        """A predict batch's `size` `(H, W)` of its one image."""
        # `size` collates to a (1, 2) tensor or to two (1,) tensors, depending on the dataset's type for it.
        height, width = torch.cat([torch.as_tensor(side).reshape(-1) for side in batch["size"]]).tolist()
        return height, width

    def on_fit_start(self) -> None:
        super().on_fit_start()
        cached = getattr(getattr(self.trainer, "datamodule", None), "feature_spec", None)
        if isinstance(cached, FeatureSpec) and not cached.covers(self.feature_spec):
            raise UserError(
                f"The feature cache holds {cached.describe()}, but {type(self).__name__} reads "
                f"{self.feature_spec.describe()}. Fix: let the run build the cache for this head (the cache takes "
                "what it extracts from the head), or train on images (feature_cache=null)."
            )

    def init_grid_metrics(self, metrics: MetricCollection) -> None:
        """One copy of `metrics` (unprefixed names) per head in `val_metrics`, and the `grid_val` buffer for a grid."""
        self.val_metrics = nn.ModuleList(metrics.clone() for _ in self.grid)
        self.grid_metric_names = sorted(metrics.keys())
        if len(self.grid) > 1:
            self.register_buffer("grid_val", torch.full((len(self.grid), len(self.grid_metric_names)), math.nan))

    @property
    def best_head(self) -> int:
        """The index of the head with the best monitored metric at the last validation (0 before any)."""
        if len(self.grid) == 1:
            return 0
        return best_index(self.grid_val[:, self.grid_metric_names.index(self._monitored)], self.monitor_mode)

    @property
    def _monitored(self) -> str:
        return self.monitor.removeprefix("val/")

    def head_key(self, key: str, index: int) -> str:
        """A per-head log key: `key` for a single head, `key/<head name>` in a grid."""
        return key if len(self.grid) == 1 else f"{key}/{self.grid[index].name}"

    def param_groups(self) -> list[dict[str, Any]]:
        """One optimiser param group per head, with its learning rate."""
        return [{"params": head.parameters(), "lr": spec.lr} for head, spec in zip(self.grid_heads, self.grid)]

    def configure_gradient_clipping(
        self, optimizer: Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        # Each head on its own: a norm over the whole grid would let one head's large gradients shrink the others' steps.
        # The trainer's gradient_clip_val wins; else the probe's own (its protocol's, e.g. 35 for the depth heads).
        clip = gradient_clip_val or self.hparams.get("gradient_clip")
        if clip:
            clip_each_group(optimizer, clip, gradient_clip_algorithm or "norm")

    def on_validation_epoch_end(self) -> None:
        results = []
        for metrics in self.val_metrics:
            results.append(metrics.compute())
            metrics.reset()
        values = torch.tensor([[float(result[name]) for name in self.grid_metric_names] for result in results])
        best = best_index(values[:, self.grid_metric_names.index(self._monitored)], self.monitor_mode)
        for index, result in enumerate(results):
            for name in self.grid_metric_names:
                if len(self.grid) > 1:
                    self.log(f"val/{name}/{self.grid[index].name}", result[name], sync_dist=True)
                if index == best:
                    self.log(f"val/{name}", result[name], sync_dist=True)
        if len(self.grid) > 1 and not self.trainer.sanity_checking:
            self.grid_val.copy_(values)
            self.write_grid_table()

    def on_test_epoch_start(self) -> None:
        if len(self.grid) == 1:
            return
        if self.grid_val.isnan().all():
            rank_zero_warn(f"The head grid was never validated: testing its first head, {self.grid[0].name}.")
            return
        chosen = self.grid[self.best_head]
        rank_zero_info(
            f"Head grid: testing {chosen.name}, the best of {len(self.grid)} heads on {self.monitor} "
            f"({self.monitor_mode}).\n{self.format_grid_table()}"
        )
        self.write_grid_table()

    def grid_rows(self) -> list[dict[str, Any]]:
        """One row per head: name, blocks, lr, its validation metrics, and whether it is the chosen one."""
        best = self.best_head
        return [
            {
                "head": spec.name,
                "blocks": "-".join(map(str, spec.blocks)),
                "lr": spec.lr,
                **{f"val/{name}": value for name, value in zip(self.grid_metric_names, self.grid_val[index].tolist())},
                "chosen": index == best,
            }
            for index, spec in enumerate(self.grid)
        ]

    def format_grid_table(self) -> str:
        """The grid's rows as a text table, the chosen head marked with `*`."""
        rows = self.grid_rows()
        width = max(len(row["head"]) for row in rows)
        header = f"  {'head':<{width}}  " + "  ".join(f"{f'val/{name}':>12}" for name in self.grid_metric_names)
        lines = [
            f"{'*' if row['chosen'] else ' '} {row['head']:<{width}}  "
            + "  ".join(f"{row[f'val/{name}']:>12.4f}" for name in self.grid_metric_names)
            for row in rows
        ]
        return "\n".join([header, *lines])

    def write_grid_table(self) -> None:
        """`<results_dir>/head_grid.csv` and `.json` (rank 0) when the probe has a `results_dir`."""
        results_dir = self.hparams.get("results_dir")
        if results_dir is not None and self.trainer.is_global_zero:
            write_rows(self.grid_rows(), Path(results_dir) / "head_grid")

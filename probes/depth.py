"""Lightning module of the DINOv2 depth probes ("lin. 1", "lin. 4" and DPT) on a frozen backbone."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from backbones.features import Features, read_features
from heads.depth import DepthModel, build_depth_head, check_out_index, default_out_index
from metrics.depth import depth_metrics, empty_split_reason
from ops.depth_losses import gradient_loss, sig_loss
from probes.base import HeadGridProbe
from probes.grid import block_choice, lr_choices, make_grid, to_plain
from utils.distributed import sum_over_processes, world_size
from writers.depth_png import save_depth_color, save_depth_png


class DepthProbe(HeadGridProbe):
    """A depth head trained on the features of a frozen DINOv2 backbone, as the official depth evaluation, or a
    grid of heads (`probes.grid`).

    Batches (dicts; depth in metres, 0 = no ground truth):
        train: `image` `(B, 3, h, w)`, `depth` `(B, 1, h, w)`, `path` `[str]`; or, from a feature cache,
            `tokens` {block index: un-normed patch map `(B, C, h/14, w/14)`} and `class_tokens` {block index:
            `(B, C)`} instead of `image` (any float dtype). What it reads is its `feature_spec`: every head's
            blocks, no final norm, with class tokens (the official depther's inputs).
        val / test: `image` `(1, 3, H, W)`, `depth` `(1, 1, H, W)`, `path` `[str]`.
        predict: `image` `(1, 3, h, w)`, `size` the original `(H, W)`, `path` `[str]`.
    Maps without any valid depth are skipped, named in a warning and counted (`*/skipped_maps`).

    A grid (`lr` a list and/or `out_index_choices`) trains one head per (blocks, lr) pair on one backbone pass,
    logs `val/<metric>/<head name>` per head and `val/<metric>` of the best head on `val/RMSE`, and tests and
    predicts with that head (remembered in checkpoints). Gradients are clipped per head.

    Args:
        backbone: frozen DINOv2 (`embed_dim`, `n_blocks`, `get_intermediate_layers`).
        kind: "linear" (last block), "linear4" (4 blocks) or "dpt".
        out_index: blocks fed to the head; default the official ones (`heads.depth.default_out_index`).
        out_index_choices: several `out_index` lists, one head each; replaces `out_index`.
        checkpoint: a released head (`dinov2_*_{nyu,kitti}_{kind}_head.pth`: a path, or the bare file
            name to look up in the torch.hub cache and, with `download`, at its official URL).
        sha256: the head file's expected SHA-256 (else a `<file>.sha256` beside it is checked).
        min_depth, max_depth: the dataset's depth range: the linear heads' bins, the output clamp and
            the evaluated pixels (NYU 0.001-10 m, KITTI 0.001-80 m).
        eval_crop: "eigen" (NYU), "garg" (KITTI) or None.
        channels: DPT width (the released heads: 256).
        lr, weight_decay: AdamW over the head; a list of lrs trains one head per lr.
        warmup_steps, max_steps: linear warm-up from lr / 1000, then cosine decay to 0 at `max_steps`.
        sigloss_warmup_steps: steps that train on the SigLoss mean term only (official: 100).
        gradient_loss_weight: weight of the multi-scale gradient loss (official: 0.5 for the linear heads, 0 for DPT).
        flip_test: average the prediction with that of the mirrored image at evaluation and prediction.
        predict_dir_out: where `predict` writes `<stem>_depth.png` (uint16 mm) and `<stem>_depth_color.png`.
        colormap, colorbar: the matplotlib colormap of the colour PNG, and whether to draw a colour bar.
        results_dir: where a grid writes `head_grid.csv` / `.json` (every head's val metrics); None writes none.
        skip_nonfinite: skip (and count) a batch whose loss or gradient is NaN or inf instead of stopping the run.
        gradient_clip: each head's gradient norm is clipped to this (official: 35); a trainer.gradient_clip_val wins.
    """

    frozen_modules = ("model.backbone",)
    monitor = "val/RMSE"  # the metric that picks the best checkpoint
    monitor_mode = "min"
    feature_norm = False  # the official depther reads get_intermediate_layers(..., norm=False)
    feature_class_tokens = True

    def __init__(
        self,
        backbone: nn.Module,
        kind: str = "linear4",
        out_index: Sequence[int] | None = None,
        out_index_choices: Sequence[Sequence[int]] | None = None,
        checkpoint: str | None = None,
        download: bool = False,
        sha256: str | None = None,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        eval_crop: str | None = "eigen",
        channels: int = 256,
        lr: float | Sequence[float] = 5e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 1500,
        max_steps: int = 40000,
        sigloss_warmup_steps: int = 100,
        gradient_loss_weight: float = 0.5,
        flip_test: bool = True,
        predict_dir_out: str | None = None,
        colormap: str = "magma_r",
        colorbar: bool = False,
        results_dir: str | None = None,
        skip_nonfinite: bool = False,
        gradient_clip: float | None = 35.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        # Plain lists (not OmegaConf), so that checkpoints load with torch.load(weights_only=True).
        self.hparams.update({key: to_plain(self.hparams[key]) for key in ("out_index", "out_index_choices", "lr")})
        backbone = backbone.eval().requires_grad_(False)
        owner = type(self).__name__
        lrs = lr_choices(self.hparams.lr, owner)
        if out_index_choices is None:
            choices = [("", self.hparams.out_index or default_out_index(kind, backbone.n_blocks))]
        else:
            choices = [block_choice(choice, backbone.n_blocks, owner) for choice in self.hparams.out_index_choices]
        if not choices:
            raise ValueError(
                f"{owner}: out_index_choices is empty. Fix: list at least one list of block indices, or drop it."
            )
        for _, blocks in choices:
            check_out_index(list(blocks), kind, backbone.n_blocks)
        self.grid = make_grid(choices, lrs, owner)
        self.one_released_head(
            checkpoint, len(self.grid), "give a single lr and out_index (no out_index_choices) with a checkpoint."
        )
        if len(self.grid) == 1:
            if checkpoint is None:
                head = build_depth_head(kind, backbone.embed_dim, min_depth, max_depth, channels)
                self.model = DepthModel(backbone, head, self.grid[0].blocks, min_depth, max_depth)
            else:
                self.model = DepthModel.from_official(
                    backbone, checkpoint, kind, min_depth, max_depth, self.hparams.out_index, download, sha256
                )
        else:
            heads = [build_depth_head(kind, backbone.embed_dim, min_depth, max_depth, channels) for _ in self.grid]
            self.model = nn.ModuleDict({"backbone": backbone, "heads": nn.ModuleList(heads)})
        metrics = depth_metrics(min_depth, max_depth, eval_crop)
        self.init_grid_metrics(metrics)
        self.test_metrics = metrics.clone(prefix="test/")
        self.metric_notes: dict[str, str] = {}
        """Why a logged metric is NaN (train.py writes it as null with this reason), by metric name."""

    @property
    def grid_heads(self) -> list[nn.Module]:
        """The heads, in grid order."""
        return [self.model.head] if len(self.grid) == 1 else list(self.model.heads)

    def _decode(self, index: int, features: Features) -> Tensor:
        """Head `index`'s raw depth `(B, 1, h', w')` (unclamped: for losses) from the features of its blocks."""
        return self.grid_heads[index](self.head_inputs(features, index))

    def depths(self, images: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Images `(B, 3, H, W)` -> depth `(B, 1, H, W)` metres of each head in `indices`, clamped to the depth range
        and averaged with the mirrored view when `flip_test`; one backbone pass per view for all of them."""
        spec = self.spec_of([i for index in indices for i in self.grid[index].blocks])
        views = [images, images.flip(-1)] if self.hparams.flip_test else [images]
        per_view = []
        for flipped, view in enumerate(views):
            features = read_features(self.model.backbone, view, spec)
            depths = []
            for index in indices:
                depth = self._decode(index, features).clamp(self.hparams.min_depth, self.hparams.max_depth)
                depth = F.interpolate(depth, size=images.shape[-2:], mode="bilinear", align_corners=False)
                depths.append(depth.flip(-1) if flipped else depth)
            per_view.append(depths)
        return [sum(view_depths) / len(views) for view_depths in zip(*per_view)]

    def forward(self, images: Tensor) -> Tensor:
        """Images `(B, 3, H, W)` -> the chosen head's depth `(B, 1, H, W)` metres, averaged with the mirrored view
        when `flip_test`."""
        return self.depths(images, [self.best_head])[0]

    def _keep_valid(self, batch: dict[str, Any], stage: str) -> Tensor:
        """Bool `(B,)`: the maps with some ground truth; warn about and count the others."""
        valid = (batch["depth"] > 0).flatten(1).any(1)
        skipped = [path for path, ok in zip(batch["path"], valid.tolist()) if not ok]
        for path in skipped:  # by the process that read the map (under DDP each map is read by one process)
            warnings.warn(f"The depth map of {path} has no valid pixel (all 0): skipped.", stacklevel=1)
        self.log(
            f"{stage}/skipped_maps",
            float(len(skipped)),
            reduce_fx="sum",
            on_step=False,
            on_epoch=True,
            batch_size=1,
            sync_dist=True,  # summed over the processes, not each process's own count
        )
        return valid

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        valid = self._keep_valid(batch, "train")
        # Under DDP the losses are those of every process's batch together (the same numbers as one process with
        # the whole batch), so every process takes part in each step, even one whose maps are all without ground
        # truth (they add no pixel to the losses' sums).
        total = sum_over_processes if world_size() > 1 else None
        if not valid.any():
            if total is None:
                return None
            valid = torch.ones_like(valid)
        depth = batch["depth"][valid]
        features = self.features(batch, valid)
        warm_up = self.global_step < self.hparams.sigloss_warmup_steps
        losses = []
        for index in range(len(self.grid)):
            pred = F.interpolate(
                self._decode(index, features), size=depth.shape[-2:], mode="bilinear", align_corners=False
            )
            loss = sig_loss(pred, depth, warm_up=warm_up, total=total)
            self.log(self.head_key("train/sigloss", index), loss, batch_size=len(depth))
            if self.hparams.gradient_loss_weight:
                grad = gradient_loss(pred, depth, total=total)
                self.log(self.head_key("train/gradient_loss", index), grad, batch_size=len(depth))
                loss = loss + self.hparams.gradient_loss_weight * grad
            if len(self.grid) > 1:
                self.log(self.head_key("train/loss", index), loss, batch_size=len(depth))
            losses.append(loss)
        inputs = {
            "cached features" if "tokens" in batch else "features": features,
            "images": batch.get("image"),
            "ground truth": depth,
        }
        return self.summed_loss(losses, batch_idx, inputs, len(depth))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        valid = self._keep_valid(batch, "val")
        if valid.any():
            depth = batch["depth"][valid]
            for metrics, pred in zip(self.val_metrics, self.depths(batch["image"][valid], range(len(self.grid)))):
                metrics.update(pred, depth)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        valid = self._keep_valid(batch, "test")
        if valid.any():
            self.test_metrics.update(self(batch["image"][valid]), batch["depth"][valid])
            self.log_dict(self.test_metrics, batch_size=int(valid.sum()))

    def on_test_epoch_end(self) -> None:
        if self.test_metrics["AbsRel"].images == 0:
            hp = self.hparams
            reason = empty_split_reason("test", hp.min_depth, hp.max_depth, hp.eval_crop)
            rank_zero_warn(f"The test metrics are null: {reason}")
            self.metric_notes.update(dict.fromkeys(self.test_metrics.keys(), reason))
            if self.test_metrics["AbsRel"].update_count == 0:
                # no map had any ground truth, so test_step never logged the metrics: log them as not computable
                for name in self.test_metrics:
                    self.log(name, math.nan)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and all(m["AbsRel"].images == 0 for m in self.val_metrics):
            hp = self.hparams
            reason = empty_split_reason("validation", hp.min_depth, hp.max_depth, hp.eval_crop)
            rank_zero_warn(f"The validation metrics are NaN, so no checkpoint can be chosen as best: {reason}")
            self.metric_notes.update({f"val/{name}": reason for name in self.grid_metric_names})
        super().on_validation_epoch_end()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Depth `(H, W)` metres at the original size; written as PNGs when `predict_dir_out` is set."""
        height, width = self.original_size(batch)
        depth = F.interpolate(self(batch["image"]), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        if self.hparams.predict_dir_out is not None:
            out_dir, stem = Path(self.hparams.predict_dir_out), Path(batch["path"][0]).stem
            save_depth_png(depth, out_dir / f"{stem}_depth.png")
            save_depth_color(depth, out_dir / f"{stem}_depth_color.png", self.hparams.colormap, self.hparams.colorbar)
        return depth.cpu()

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.param_groups(), lr=self.grid[0].lr, weight_decay=hp.weight_decay)
        warmup = max(hp.warmup_steps, 1)
        schedule = SequentialLR(
            optimizer,
            [
                LinearLR(optimizer, 1e-3, 1.0, total_iters=warmup),
                CosineAnnealingLR(optimizer, max(hp.max_steps - warmup, 1)),
            ],
            milestones=[warmup],
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

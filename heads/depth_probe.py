"""Lightning module of the DINOv2 depth probes ("lin. 1", "lin. 4" and DPT) on a frozen backbone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from heads.depth import DepthModel, build_depth_head, default_out_index
from heads.depth_losses import gradient_loss, sig_loss
from heads.depth_metrics import depth_metrics
from heads.depth_png import save_depth_color, save_depth_png
from heads.frozen import FrozenModulesMixin


class DepthProbe(FrozenModulesMixin, L.LightningModule):
    """A depth head trained on the features of a frozen DINOv2 backbone, as the official depth evaluation.

    Batches (dicts; depth in metres, 0 = no ground truth):
        train: `image` `(B, 3, h, w)`, `depth` `(B, 1, h, w)`, `path` `[str]`.
        val / test: `image` `(1, 3, H, W)`, `depth` `(1, 1, H, W)`, `path` `[str]`.
        predict: `image` `(1, 3, h, w)`, `size` the original `(H, W)`, `path` `[str]`.
    Maps without any valid depth are skipped, named in a warning and counted (`*/skipped_maps`).

    Args:
        backbone: frozen DINOv2 (`embed_dim`, `n_blocks`, `get_intermediate_layers`).
        kind: "linear" (last block), "linear4" (4 blocks) or "dpt".
        out_index: blocks fed to the head; default the official ones (`heads.depth.default_out_index`).
        checkpoint: a released head (`dinov2_*_{nyu,kitti}_{kind}_head.pth`: a path, or the bare file
            name to look up in the torch.hub cache and, with `download`, at its official URL).
        min_depth, max_depth: the dataset's depth range: the linear heads' bins, the output clamp and
            the evaluated pixels (NYU 0.001-10 m, KITTI 0.001-80 m).
        eval_crop: "eigen" (NYU), "garg" (KITTI) or None.
        channels: DPT width (the released heads: 256).
        lr, weight_decay: AdamW over the head.
        warmup_steps, max_steps: linear warm-up from lr / 1000, then cosine decay to 0 at `max_steps`.
        sigloss_warmup_steps: steps that train on the SigLoss mean term only (official: 100).
        gradient_loss_weight: weight of the multi-scale gradient loss (official: 0.5 for the linear heads, 0 for DPT).
        flip_test: average the prediction with that of the mirrored image at evaluation and prediction.
        predict_dir_out: where `predict` writes `<stem>_depth.png` (uint16 mm) and `<stem>_depth_color.png`.
        colormap, colorbar: the matplotlib colormap of the colour PNG, and whether to draw a colour bar.
    """

    frozen_modules = ("model.backbone",)
    monitor = "val/RMSE"  # the metric that picks the best checkpoint
    monitor_mode = "min"

    def __init__(
        self,
        backbone: nn.Module,
        kind: str = "linear4",
        out_index: Sequence[int] | None = None,
        checkpoint: str | None = None,
        download: bool = False,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        eval_crop: str | None = "eigen",
        channels: int = 256,
        lr: float = 5e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 1500,
        max_steps: int = 40000,
        sigloss_warmup_steps: int = 100,
        gradient_loss_weight: float = 0.5,
        flip_test: bool = True,
        predict_dir_out: str | None = None,
        colormap: str = "magma_r",
        colorbar: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        if out_index is not None:
            # a plain list (not OmegaConf), so that checkpoints load with torch.load(weights_only=True)
            self.hparams.out_index = np.asarray(out_index).tolist()
        backbone = backbone.eval().requires_grad_(False)
        if checkpoint is None:
            head = build_depth_head(kind, backbone.embed_dim, min_depth, max_depth, channels)
            blocks = self.hparams.out_index or default_out_index(kind, backbone.n_blocks)
            self.model = DepthModel(backbone, head, blocks, min_depth, max_depth)
        else:
            self.model = DepthModel.from_official(
                backbone, checkpoint, kind, min_depth, max_depth, self.hparams.out_index, download
            )
        metrics = depth_metrics(min_depth, max_depth, eval_crop)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, images: Tensor) -> Tensor:
        """Images `(B, 3, H, W)` -> depth `(B, 1, H, W)` metres, averaged with the mirrored view when `flip_test`."""
        depth = self.model(images)
        if self.hparams.flip_test:
            depth = (depth + self.model(images.flip(-1)).flip(-1)) / 2
        return depth

    def _keep_valid(self, batch: dict[str, Any], stage: str) -> Tensor:
        """Bool `(B,)`: the maps with some ground truth; warn about and count the others."""
        valid = (batch["depth"] > 0).flatten(1).any(1)
        skipped = [path for path, ok in zip(batch["path"], valid.tolist()) if not ok]
        for path in skipped:
            rank_zero_warn(f"The depth map of {path} has no valid pixel (all 0): skipped.")
        self.log(f"{stage}/skipped_maps", float(len(skipped)), reduce_fx="sum", on_step=False, on_epoch=True, batch_size=1)
        return valid

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        valid = self._keep_valid(batch, "train")
        if not valid.any():
            return None
        images, depth = batch["image"][valid], batch["depth"][valid]
        pred = F.interpolate(self.model.decode(images), size=depth.shape[-2:], mode="bilinear", align_corners=False)
        loss = sig_loss(pred, depth, warm_up=self.global_step < self.hparams.sigloss_warmup_steps)
        self.log("train/sigloss", loss, batch_size=len(images))
        if self.hparams.gradient_loss_weight:
            grad = gradient_loss(pred, depth)
            self.log("train/gradient_loss", grad, batch_size=len(images))
            loss = loss + self.hparams.gradient_loss_weight * grad
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def _evaluate(self, batch: dict[str, Any], metrics: Any, stage: str) -> None:
        valid = self._keep_valid(batch, stage)
        if valid.any():
            metrics.update(self(batch["image"][valid]), batch["depth"][valid])
            self.log_dict(metrics, batch_size=int(valid.sum()))

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Depth `(H, W)` metres at the original size; written as PNGs when `predict_dir_out` is set."""
        # `size` collates to a (1, 2) tensor or to two (1,) tensors, depending on the dataset's type for it.
        height, width = torch.cat([torch.as_tensor(side).reshape(-1) for side in batch["size"]]).tolist()
        depth = F.interpolate(self(batch["image"]), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        if self.hparams.predict_dir_out is not None:
            out_dir, stem = Path(self.hparams.predict_dir_out), Path(batch["path"][0]).stem
            save_depth_png(depth, out_dir / f"{stem}_depth.png")
            save_depth_color(depth, out_dir / f"{stem}_depth_color.png", self.hparams.colormap, self.hparams.colorbar)
        return depth.cpu()

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.model.head.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        warmup = max(hp.warmup_steps, 1)
        schedule = SequentialLR(
            optimizer,
            [LinearLR(optimizer, 1e-3, 1.0, total_iters=warmup), CosineAnnealingLR(optimizer, max(hp.max_steps - warmup, 1))],
            milestones=[warmup],
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

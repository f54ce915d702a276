"""Lightning module of DINOv2's linear segmentation probe ("lin." and "+ms" of the DINOv2 paper)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from heads.frozen import FrozenModulesMixin
from heads.inference import multiscale_flip_probs
from heads.label_png import save_label_png
from heads.linear_seg import LinearSegHead, load_official_head
from heads.schedule import warmup_poly


class SegmentationProbe(FrozenModulesMixin, L.LightningModule):
    """A `LinearSegHead` trained on the features of a frozen DINOv2 backbone.

    Batches (dicts; labels are class ids with `ignore_index` for unlabelled pixels):
        train: `image` `(B, 3, H, W)`, `label` `(B, H, W)`.
        val / test: `image` `(1, 3, h, w)` at eval size, `label` `(1, H, W)` at the original size.
        predict: `image` `(1, 3, h, w)`, `size` the original `(H, W)`, `path` `[str]`.

    Args:
        backbone: frozen DINOv2 with `embed_dim` and `get_intermediate_layers`.
        num_classes: K (ADE20K 150, VOC2012 21).
        blocks: last n blocks (1: "linear" probe, 4: "ms" probe) or a list of block indices.
        checkpoint: a released head (`dinov2_*_{linear,ms}_head.pth`) to start from.
        lr, weight_decay: AdamW over the head.
        warmup_steps, max_steps, poly_power: per-step linear warm-up then poly decay to 0.
        ignore_index: label value left out of the loss and the metrics.
        crop_size, stride: slide inference windows at evaluation.
        tta_scales, tta_flip: evaluation views ("+ms": (1.0, 1.32, 1.73, 2.28, 3.0) and flip).
        predict_dir_out: where `predict` writes `<image stem>.png` label maps; None writes nothing.
    """

    monitor = "val/mIoU"  # the metric that picks the best checkpoint
    monitor_mode = "max"

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        blocks: int | Sequence[int] = 1,
        checkpoint: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_steps: int = 1500,
        max_steps: int = 40000,
        poly_power: float = 1.0,
        ignore_index: int = 255,
        crop_size: int = 512,
        stride: int = 341,
        tta_scales: Sequence[float] = (1.0,),
        tta_flip: bool = False,
        predict_dir_out: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        # Plain lists (not OmegaConf or numpy), so that checkpoints load with torch.load(weights_only=True).
        self.hparams.update({key: np.asarray(self.hparams[key]).tolist() for key in ("blocks", "tta_scales")})
        self.backbone = backbone.eval().requires_grad_(False)
        blocks = self.hparams.blocks
        self.head = LinearSegHead(backbone.embed_dim * (blocks if isinstance(blocks, int) else len(blocks)), num_classes)
        if checkpoint is not None:
            load_official_head(checkpoint, self.head)
        # Macro Jaccard skips classes absent from both predictions and labels over the split: mmseg's nanmean.
        metrics = MetricCollection(
            {
                "mIoU": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index),
                "aAcc": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_class_iou = MulticlassJaccardIndex(
            num_classes, average="none", ignore_index=ignore_index, zero_division="nan"
        )
        self.per_class_iou: Tensor | None = None
        """IoU per class `(K,)` of the last test run, NaN for classes absent from the split."""

    def extract(self, images: Tensor) -> tuple[Tensor, ...]:
        """Images `(B, 3, H, W)` -> the chosen blocks' normed patch maps, each `(B, C, H/14, W/14)`."""
        with torch.no_grad():
            return self.backbone.get_intermediate_layers(images, n=self.hparams.blocks, reshape=True, norm=True)

    def forward(self, images: Tensor) -> Tensor:
        """Images `(B, 3, H, W)` -> logits `(B, K, H/14, W/14)`."""
        return self.head(self.extract(images))

    def window_logits(self, windows: Tensor) -> Tensor:
        """Slide-inference windows `(N, 3, h, w)` -> logits `(N, K, h, w)` at the window size."""
        return F.interpolate(self(windows), size=windows.shape[-2:], mode="bilinear", align_corners=False)

    def segment(self, images: Tensor, size: Sequence[int]) -> Tensor:
        """Images `(B, 3, h, w)` -> class probabilities `(B, K, *size)`: slide inference, plus the TTA views."""
        return multiscale_flip_probs(
            self.window_logits,
            images,
            self.hparams.num_classes,
            size,
            scales=self.hparams.tta_scales,
            flip=self.hparams.tta_flip,
            crop_size=self.hparams.crop_size,
            stride=self.hparams.stride,
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        labels = batch["label"].long()
        logits = F.interpolate(self(batch["image"]), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        # Mean over all pixels, ignored ones included, as mmseg 0.x's default (avg_non_ignore=False).
        loss = F.cross_entropy(logits, labels, ignore_index=self.hparams.ignore_index, reduction="none").mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        preds = self._evaluate(batch, self.test_metrics)
        self.test_class_iou.update(preds, batch["label"])

    def on_test_epoch_end(self) -> None:
        self.per_class_iou = self.test_class_iou.compute().cpu()
        self.test_class_iou.reset()

    def _evaluate(self, batch: dict[str, Tensor], metrics: MetricCollection) -> Tensor:
        """Update `metrics` with the batch's predictions `(B, H, W)` at the label size, and return them."""
        labels = batch["label"]
        preds = self.segment(batch["image"], labels.shape[-2:]).argmax(1)
        metrics.update(preds, labels)
        self.log_dict(metrics, batch_size=labels.shape[0])
        return preds

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Label map `(H, W)` at the original size (uint8 when K <= 256); written as PNG if `predict_dir_out`.

        The PNG is colour-coded with the datamodule's `palette` `(K, 3)` when it has one.
        """
        # `size` collates to a (1, 2) tensor or to two (1,) tensors, depending on the dataset's type for it.
        height, width = torch.cat([torch.as_tensor(side).reshape(-1) for side in batch["size"]]).tolist()
        dtype = torch.uint8 if self.hparams.num_classes <= 256 else torch.int64
        labels = self.segment(batch["image"], (height, width))[0].argmax(0).to(dtype).cpu()
        if self.hparams.predict_dir_out is not None:
            out_dir = Path(self.hparams.predict_dir_out)
            out_dir.mkdir(parents=True, exist_ok=True)
            palette = getattr(self.trainer.datamodule, "palette", None)
            save_label_png(labels, out_dir / f"{Path(batch['path'][0]).stem}.png", palette)
        return labels

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.head.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        schedule = partial(
            warmup_poly,
            warmup_steps=self.hparams.warmup_steps,
            max_steps=self.hparams.max_steps,
            power=self.hparams.poly_power,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"}}

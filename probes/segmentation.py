"""Lightning module of DINOv2's linear segmentation probe ("lin." and "+ms" of the DINOv2 paper)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MetricCollection

from backbones.features import read_features
from heads.linear_seg import LinearSegHead, load_official_head
from metrics.segmentation import class_iou, segmentation_metrics
from ops.inference import check_windows, multiscale_flip_labels, multiscale_flip_probs
from ops.losses import upsample_cross_entropy
from ops.schedules import warmup_poly
from probes.base import HeadGridProbe
from probes.grid import block_choice, lr_choices, make_grid, shared_windows, to_plain
from writers.label_png import save_label_png


class SegmentationProbe(HeadGridProbe):
    """A `LinearSegHead` trained on the features of a frozen DINOv2 backbone, or a grid of them (`probes.grid`).

    Batches (dicts; labels are class ids with `ignore_index` for unlabelled pixels):
        train: `image` `(B, 3, H, W)`, `label` `(B, H, W)`; or, from a feature cache, `tokens` instead of
            `image`: {block index: normed patch map `(B, C, H/14, W/14)`} (any float dtype). What it reads is
            its `feature_spec`: every head's blocks, final norm, no class tokens.
        val / test: `image` `(1, 3, h, w)` at eval size, `label` `(1, H, W)` at the original size.
        predict: `image` `(1, 3, h, w)`, `size` the original `(H, W)`, `path` `[str]`.

    A grid (`lr` a list and/or `block_choices`) trains one head per (block choice, lr) pair on one backbone pass,
    logs `val/<metric>/<head name>` per head and `val/<metric>` of the best head on `val/mIoU`, and tests and
    predicts with that head (remembered in checkpoints).

    Args:
        backbone: frozen DINOv2 with `embed_dim`, `n_blocks` and `get_intermediate_layers`.
        num_classes: K (ADE20K 150, VOC2012 21): the data's (`${data.num_classes}`).
        blocks: last n blocks (1: "linear" probe, 4: "ms" probe) or a list of block indices.
        block_choices: several `blocks` values (each an int or a list of indices), one head each; replaces `blocks`.
        checkpoint: a released head (`dinov2_*_{linear,ms}_head.pth`) to start from (a single head only).
        sha256: the checkpoint's expected SHA-256 (else a `<file>.sha256` beside it is checked).
        lr, weight_decay: AdamW over the head; a list of lrs trains one head per lr.
        warmup_steps, max_steps, poly_power: per-step linear warm-up then poly decay to 0.
        ignore_index: label value left out of the loss and the metrics: the data's (`${data.ignore_index}`).
        crop_size, stride: slide inference windows at evaluation.
        tta_scales, tta_flip: evaluation views ("+ms": (1.0, 1.32, 1.73, 2.28, 3.0) and flip).
        predict_dir_out: where `predict` writes `<image stem>.png` label maps; None writes nothing.
        results_dir: where a grid writes `head_grid.csv` / `.json` (every head's val metrics); None writes none.
        skip_nonfinite: skip (and count) a batch whose loss or gradient is NaN or inf instead of stopping the run.
    """

    monitor = "val/mIoU"  # the metric that picks the best checkpoint
    monitor_mode = "max"
    feature_norm = True  # mmseg's BNHead reads the final-normed patch tokens
    feature_class_tokens = False

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        blocks: int | Sequence[int] = 1,
        block_choices: Sequence[int | Sequence[int]] | None = None,
        checkpoint: str | None = None,
        sha256: str | None = None,
        lr: float | Sequence[float] = 1e-3,
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
        results_dir: str | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        # Plain lists (not OmegaConf or numpy), so that checkpoints load with torch.load(weights_only=True).
        self.hparams.update(
            {key: to_plain(self.hparams[key]) for key in ("blocks", "block_choices", "lr", "tta_scales")}
        )
        self.backbone = backbone.eval().requires_grad_(False)
        owner = type(self).__name__
        check_windows(crop_size, stride, owner)  # used first at the first validation, after training steps
        choices = [self.hparams.blocks] if block_choices is None else self.hparams.block_choices
        if not choices:
            raise ValueError(f"{owner}: block_choices is empty. Fix: list at least one block choice, or drop it.")
        blocks = [block_choice(choice, backbone.n_blocks, owner) for choice in choices]
        self.grid = make_grid(blocks, lr_choices(self.hparams.lr, owner), owner)
        heads = [LinearSegHead(backbone.embed_dim * len(spec.blocks), num_classes) for spec in self.grid]
        self.one_released_head(
            checkpoint, len(heads), "give a single lr and blocks (no block_choices) with a checkpoint."
        )
        if len(heads) == 1:
            self.head = heads[0]
            if checkpoint is not None:
                load_official_head(checkpoint, self.head, sha256)
        else:
            self.heads = nn.ModuleList(heads)
        metrics = segmentation_metrics(num_classes, ignore_index)
        self.init_grid_metrics(metrics)
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_class_iou = class_iou(num_classes, ignore_index)
        self.per_class_iou: Tensor | None = None
        """IoU per class `(K,)` of the last test run, NaN for classes absent from the split."""

    @property
    def grid_heads(self) -> list[nn.Module]:
        """The heads, in grid order."""
        return [self.head] if len(self.grid) == 1 else list(self.heads)

    def extract(self, images: Tensor) -> tuple[Tensor, ...]:
        """Images `(B, 3, H, W)` -> the chosen head's blocks' normed patch maps, each `(B, C, H/14, W/14)`."""
        blocks = self.grid[self.best_head].blocks
        maps = read_features(self.backbone, images, self.spec_of(blocks))["tokens"]
        return tuple(maps[index] for index in blocks)

    def forward(self, images: Tensor) -> Tensor:
        """Images `(B, 3, H, W)` -> the chosen head's logits `(B, K, H/14, W/14)`."""
        return self.grid_heads[self.best_head](self.extract(images))

    def window_logits(self, windows: Tensor) -> Tensor:
        """Slide-inference windows `(N, 3, h, w)` -> logits `(N, K, h, w)` at the window size."""
        return F.interpolate(self(windows), size=windows.shape[-2:], mode="bilinear", align_corners=False)

    def grid_window_logits(self, windows: Tensor) -> list[Tensor]:
        """Slide-inference windows `(N, 3, h, w)` -> every head's logits `(N, K, h, w)`, from one backbone pass."""
        features = read_features(self.backbone, windows, self.feature_spec)
        return [
            F.interpolate(
                head(self.head_inputs(features, index)), size=windows.shape[-2:], mode="bilinear", align_corners=False
            )
            for index, head in enumerate(self.grid_heads)
        ]

    def segment(self, images: Tensor, size: Sequence[int]) -> Tensor:
        """Images `(B, 3, h, w)` -> class probabilities `(B, K, *size)` of the chosen head: slide inference, plus TTA."""
        return self._slide(self.window_logits, images, size)

    def segment_grid(self, images: Tensor, size: Sequence[int]) -> list[Tensor]:
        """Images `(B, 3, h, w)` -> every head's class probabilities `(B, K, *size)`, one backbone pass per window."""
        copies = len(self.grid)
        predict = shared_windows(self.grid_window_logits, copies, images.shape[0])
        return list(self._slide(predict, images.repeat(copies, 1, 1, 1), size).chunk(copies))

    def segment_labels(self, images: Tensor, size: Sequence[int]) -> Tensor:
        """Images `(B, 3, h, w)` -> the chosen head's labels `(B, *size)`: `segment`'s argmax, in bounded memory at any
        `size` (`ops.inference.multiscale_flip_labels`: a photograph of many megapixels, predicted at its own size)."""
        return self._slide(self.window_logits, images, size, multiscale_flip_labels)

    def _slide(
        self,
        predict_fn: Callable[[Tensor], Tensor],
        images: Tensor,
        size: Sequence[int],
        inference: Callable[..., Tensor] = multiscale_flip_probs,
    ) -> Tensor:
        return inference(
            predict_fn,
            images,
            self.hparams.num_classes,
            size,
            scales=self.hparams.tta_scales,
            flip=self.hparams.tta_flip,
            crop_size=self.hparams.crop_size,
            stride=self.hparams.stride,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        labels = batch["label"]
        features = self.features(batch)
        losses = []
        for index, head in enumerate(self.grid_heads):
            logits = head(self.head_inputs(features, index))
            # Mean over all pixels, ignored ones included, as mmseg 0.x's default (avg_non_ignore=False).
            loss = upsample_cross_entropy(logits, labels, self.hparams.ignore_index, reduction="sum") / labels.numel()
            if len(self.grid) > 1:
                self.log(self.head_key("train/loss", index), loss, batch_size=labels.shape[0])
            losses.append(loss)
        inputs = {"cached features" if "tokens" in batch else "features": features, "images": batch.get("image")}
        return self.summed_loss(losses, batch_idx, inputs, labels.shape[0])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        labels = batch["label"]
        for metrics, probs in zip(self.val_metrics, self.segment_grid(batch["image"], labels.shape[-2:])):
            metrics.update(probs.argmax(1), labels)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        preds = self._evaluate(batch, self.test_metrics)
        self.test_class_iou.update(preds, batch["label"])

    def on_test_epoch_end(self) -> None:
        self.per_class_iou = self.test_class_iou.compute().cpu()
        self.test_class_iou.reset()

    def _evaluate(self, batch: dict[str, Tensor], metrics: MetricCollection) -> Tensor:
        """Update `metrics` with the chosen head's predictions `(B, H, W)` at the label size, and return them."""
        labels = batch["label"]
        preds = self.segment(batch["image"], labels.shape[-2:]).argmax(1)
        metrics.update(preds, labels)
        self.log_dict(metrics, batch_size=labels.shape[0])
        return preds

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Label map `(H, W)` at the original size (uint8 when K <= 256); written as PNG if `predict_dir_out`.

        The PNG is colour-coded with the datamodule's `palette` `(K, 3)` when it has one.
        """
        height, width = self.original_size(batch)
        dtype = torch.uint8 if self.hparams.num_classes <= 256 else torch.int64
        labels = self.segment_labels(batch["image"], (height, width))[0].to(dtype).cpu()
        if self.hparams.predict_dir_out is not None:
            out_dir = Path(self.hparams.predict_dir_out)
            out_dir.mkdir(parents=True, exist_ok=True)
            palette = getattr(self.trainer.datamodule, "palette", None)
            save_label_png(labels, out_dir / f"{Path(batch['path'][0]).stem}.png", palette)
        return labels

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.param_groups(), lr=self.grid[0].lr, weight_decay=self.hparams.weight_decay)
        schedule = partial(
            warmup_poly,
            warmup_steps=self.hparams.warmup_steps,
            max_steps=self.hparams.max_steps,
            power=self.hparams.poly_power,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"},
        }

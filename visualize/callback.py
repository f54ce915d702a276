"""A Lightning callback that logs PCA maps of validation images to TensorBoard.

Use it from train.py with `+callbacks=pca_maps` (configs/callbacks/pca_maps.yaml).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from utils.errors import option
from visualize.features import block_index, patch_maps
from visualize.images import IMAGENET_MEAN, IMAGENET_STD, InputError
from visualize.pca_maps import SIGNS, pca_rgb

OWNER = "callbacks.pca_maps"  # the options' config node under train.py


def _check_options(max_images: int, block: int, threshold: float | None, sign: str) -> None:
    """InputError naming the first option that is not of its kind (they are used only at the first validation)."""
    whole = [("max_images", max_images, 1), ("block", block, None)]
    for name, value, minimum in whole:
        if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
            kind = f"a whole number of at least {minimum}" if minimum is not None else "a whole number"
            raise InputError(
                f"{option(OWNER, name, value)} is not {kind}; e.g. {option(OWNER, name, 4 if minimum else -1)}."
            )
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise InputError(
            f"{option(OWNER, 'threshold', threshold)} is not a number; e.g. {option(OWNER, 'threshold', 0.0)}, or "
            f"{option(OWNER, 'threshold', None)} to keep every patch."
        )
    if sign not in SIGNS:
        raise InputError(
            f"{option(OWNER, 'sign', sign)} is not one of {', '.join(SIGNS)}; e.g. {option(OWNER, 'sign', 'auto')}."
        )


class PCAMapCallback(L.Callback):
    """After each validation run, logs ``pca/<k>``: a validation image beside the PCA map of its patch features
    (``pca_RANDOM_WEIGHTS/<k>`` when the backbone has random weights).

    The PCA is fitted jointly over the first ``max_images`` validation images, so colours agree between them.

    Args:
        max_images: how many validation images to show (taken from the first batches).
        block: backbone block whose normed patch tokens are used; -1 is the last.
        threshold, sign: background removal, as ``visualize.pca_rgb``; ``threshold=None`` keeps every patch.
        backbone_attr: the LightningModule attribute holding the frozen backbone.
        image_key: the batch entry holding the normalised images ``(B, 3, H, W)`` (tuple batches: element 0).
        mean, std: the normalisation to undo for display.
    """

    def __init__(
        self,
        max_images: int = 4,
        block: int = -1,
        threshold: float | None = 0.0,
        sign: str = "auto",
        backbone_attr: str = "backbone",
        image_key: str = "image",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        _check_options(max_images, block, threshold, sign)
        self.max_images, self.block, self.threshold, self.sign = max_images, block, threshold, sign
        self.backbone_attr, self.image_key = backbone_attr, image_key
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.images: list[Tensor] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        backbone = getattr(pl_module, self.backbone_attr)
        try:  # checked before training, not at the first validation hours later
            block_index(backbone, self.block)
        except ValueError as err:
            raise InputError(
                f"{option(OWNER, 'block', self.block)}: {err} Fix: {option(OWNER, 'block', -1)}."
            ) from None
        if not any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers):
            rank_zero_warn("PCAMapCallback logs images to TensorBoard only, and the trainer has no TensorBoardLogger.")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or len(self.images) >= self.max_images:
            return
        images = batch[self.image_key] if isinstance(batch, dict) else batch[0]
        self.images.extend(image.detach() for image in images[: self.max_images - len(self.images)])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not (self.images and loggers and trainer.is_global_zero):
            return
        backbone = getattr(pl_module, self.backbone_attr)
        try:
            maps = pca_rgb(patch_maps(backbone, self.images, self.block), self.threshold, self.sign)
        except ValueError as err:  # e.g. no patch above the threshold: a missing figure must not end the training
            rank_zero_warn(f"PCAMapCallback: no PCA maps at step {trainer.global_step}: {err}")
            self.images = []
            return
        # a reader of TensorBoard must not take random-weight maps for DINOv2's
        tag = "pca_RANDOM_WEIGHTS" if getattr(backbone, "random_weights", False) else "pca"
        for k, (image, rgb) in enumerate(zip(self.images, maps.rgb)):
            shown = (image.float().cpu() * self.std + self.mean).clamp(0, 1)
            pca = F.interpolate(rgb.permute(2, 0, 1)[None], size=shown.shape[-2:], mode="nearest")[0]
            for logger in loggers:
                logger.experiment.add_image(f"{tag}/{k}", torch.cat([shown, pca], 2), global_step=trainer.global_step)
        self.images = []

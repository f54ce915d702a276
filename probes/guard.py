"""The guard every trained probe runs: no NaN or inf loss or gradient ever changes a head's weights.

A non-finite training loss stops the run (`ops.finite.NonFiniteLossError`, naming the step and the input that was
not finite) before its backward pass, and a non-finite gradient before the optimiser step, so no weight ever becomes
NaN and no NaN checkpoint is saved. With the head option `skip_nonfinite: true` such a batch is skipped instead (no
optimiser step) and counted in the logged `train/skipped_nonfinite`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer

from ops.finite import is_finite, loss_error, nonfinite_gradients, nonfinite_inputs
from utils.errors import UserError, option

NONFINITE_CAUSES = {
    "images": "the input images are not finite (a corrupt image file or a transform that divides by zero)",
    "features": "the frozen backbone's features are not finite (weights holding NaN, or float16 overflow). "
    "Fix: check the backbone checkpoint, or train in float32",
    "cached features": "the feature cache holds NaN or inf tokens (written from a corrupt or diverged backbone, or "
    "its files are damaged). Fix: delete that cache's folder under feature_cache.root so that it is extracted again",
    "ground truth": "the training labels or depth maps hold NaN or inf. Fix: check the dataset's files",
}
"""Why each input of a training batch would not be finite, and the fix: the guard's message names the likely cause."""


class NonFiniteGuard(L.LightningModule):
    """Mixin of the probes: see the module. Subclasses give `grid_heads` (the trained modules, whose buffers a
    skipped batch puts back) and call `finite_loss` on their summed training loss."""

    @property
    def grid_heads(self) -> list[nn.Module]:
        """The trained heads (each subclass says where it keeps them)."""
        raise NotImplementedError

    def on_fit_start(self) -> None:
        # A skipped batch (training_step returning None) on one process of several would leave the others waiting
        # for its gradients: under DDP the guard stops the run instead, as it does by default.
        if self.hparams.get("skip_nonfinite", False) and self.trainer.world_size > 1:
            raise UserError(
                f"{option('head', 'skip_nonfinite', True)} works in a single process only; this run has "
                f"{self.trainer.world_size} ({option('trainer', 'devices', self.trainer.num_devices)}). Drop "
                f"{option('head', 'skip_nonfinite', True)} (non-finite batches then stop the run) or train on one device."
            )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The forward pass of a batch updates the heads' buffers (BatchNorm statistics) before its loss is known;
        # a non-finite batch is undone with this copy (a few vectors per head).
        self._buffers_before = [buffer.detach().clone() for head in self.grid_heads for buffer in head.buffers()]

    def finite_loss(self, loss: Tensor, batch_idx: int, inputs: Mapping[str, Any]) -> Tensor | None:
        """`loss` if it is finite; else stop (or, with `skip_nonfinite`, skip the batch: None) - see the module.

        `inputs` names the batch's tensors (keys of `NONFINITE_CAUSES`), to tell the likely cause.
        """
        if is_finite(loss):
            return loss
        self._nonfinite("loss", float(loss.detach()), batch_idx, inputs)
        return None

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # A finite loss can still have a non-finite gradient (e.g. sqrt at 0); it would make the weights NaN.
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if nonfinite_gradients(params):
            self._nonfinite("gradient", math.nan, None, {})
            for param in params:
                param.grad = None  # torch optimisers leave parameters without a gradient untouched

    def _nonfinite(self, what: str, value: float, batch_idx: int | None, inputs: Mapping[str, Any]) -> None:
        """Raise for a non-finite `what`, or with `skip_nonfinite` warn (the first time) and count it; either way the
        heads' buffers are put back as they were before the batch."""
        saved = getattr(self, "_buffers_before", None)
        if saved is not None:
            with torch.no_grad():
                for buffer, before in zip((b for head in self.grid_heads for b in head.buffers()), saved):
                    buffer.copy_(before)
        where = f"step {self.global_step}" + (
            f" (batch {batch_idx} of epoch {self.current_epoch})" if batch_idx is not None else ""
        )
        skip = bool(self.hparams.get("skip_nonfinite", False))
        if not skip:
            raise loss_error(what, value, where, inputs, NONFINITE_CAUSES, skip_option=True)
        self._skipped_nonfinite = getattr(self, "_skipped_nonfinite", 0) + 1
        if self._skipped_nonfinite == 1:
            bad = ", ".join(nonfinite_inputs(inputs)) or "none of its inputs"
            rank_zero_warn(
                f"Skipped a training batch at {where}: its {what} is {value} (non-finite inputs: {bad}). With "
                "skip_nonfinite such batches are skipped and counted in train/skipped_nonfinite."
            )
        self.log("train/skipped_nonfinite", float(self._skipped_nonfinite), on_step=True, on_epoch=False)

    def on_train_end(self) -> None:
        skipped = getattr(self, "_skipped_nonfinite", 0)
        if skipped:
            rank_zero_warn(f"Skipped {skipped} training batch(es) with a non-finite loss or gradient (skip_nonfinite).")

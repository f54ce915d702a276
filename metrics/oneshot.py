"""One-shot segmentation metrics as HSNet defines them (juhongm999/hsnet, common/utils.py `AverageMeter` and
common/evaluation.py), as a torchmetrics `Metric`.

Over the episodes, each class c accumulates the foreground intersection I_c and union U_c of the predicted and
ground-truth query masks, and the same for the background. Then

- mIoU = mean over the classes that had an episode of I_c / max(U_c, 1) (HSNet's guard: a class whose episodes all
  had empty masks scores 0); a class with no episode is left out;
- FB-IoU = mean of the foreground IoU and the background IoU, each summed over all episodes (sum_c I / sum_c U).

Both are fractions in [0, 1] (HSNet prints them x 100). An episode whose masks are both empty adds nothing to the
foreground counts and its whole image to the background counts, as in HSNet. With no episode at all, both are NaN
(nothing was measured), which the caller reports as null with the reason.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric


def as_mask(mask: np.ndarray | Tensor, name: str) -> Tensor:
    """An `(H, W)` mask of bools or 0/1 numbers as a bool tensor; a ValueError naming `name` for anything else."""
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be one (H, W) mask; got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must hold bools or 0/1; got values {mask.unique()[:5].tolist()}")
        mask = mask != 0
    return mask


class OneShotIoU(Metric):
    """mIoU and FB-IoU of one-shot episodes (see the module docstring); states are per-class pixel counts, summed
    across processes under DDP.

    Args:
        num_classes: the protocol's class count; ``class_id`` in `update` indexes it (COCO-20i: 80).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a whole number >= 1; got {num_classes!r}")
        self.num_classes = num_classes
        for name in ("fg_inter", "fg_union", "bg_inter", "bg_union", "episodes"):
            self.add_state(name, torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred_mask: np.ndarray | Tensor, gt_mask: np.ndarray | Tensor, class_id: int) -> None:
        """Add one episode: predicted and ground-truth query masks `(H, W)` (bool or 0/1) of class `class_id`."""
        pred, gt = as_mask(pred_mask, "pred_mask").to(self.device), as_mask(gt_mask, "gt_mask").to(self.device)
        if pred.shape != gt.shape:
            raise ValueError(f"pred_mask {tuple(pred.shape)} and gt_mask {tuple(gt.shape)} differ in size")
        class_id = int(class_id)
        if not 0 <= class_id < self.num_classes:
            raise ValueError(f"class_id {class_id} is outside 0..{self.num_classes - 1}")
        self.fg_inter[class_id] += (pred & gt).sum()
        self.fg_union[class_id] += (pred | gt).sum()
        self.bg_inter[class_id] += (~pred & ~gt).sum()
        self.bg_union[class_id] += (~pred | ~gt).sum()
        self.episodes[class_id] += 1

    def class_iou(self) -> Tensor:
        """Foreground IoU per class `(num_classes,)` float64, NaN for a class with no episode (over all processes)."""
        with self.sync_context():
            return self._class_iou()

    def _class_iou(self) -> Tensor:
        iou = self.fg_inter.double() / self.fg_union.clamp(min=1).double()
        return torch.where(self.episodes > 0, iou, torch.full_like(iou, float("nan")))

    def compute(self) -> dict[str, Tensor]:
        seen = self.episodes > 0
        if not bool(seen.any()):
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.device)
            return {"mIoU": nan, "FB-IoU": nan.clone()}
        fg = self.fg_inter[seen].sum().double() / self.fg_union[seen].sum().clamp(min=1).double()
        bg = self.bg_inter[seen].sum().double() / self.bg_union[seen].sum().clamp(min=1).double()
        return {"mIoU": self._class_iou()[seen].mean(), "FB-IoU": (fg + bg) / 2}

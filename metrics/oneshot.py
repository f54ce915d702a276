"""One-shot segmentation metrics as HSNet defines them (juhongm999/hsnet, common/logger.py `AverageMeter` and
common/evaluation.py `Evaluator`), as a torchmetrics `Metric`.

Over the episodes, each class c accumulates the foreground intersection I_c and union U_c of the predicted and
ground-truth query masks, and the same for the background. Then, over the protocol's evaluated classes (a COCO-20i
fold's 20, FSS-1000's test classes):

- mIoU = mean over ALL the evaluated classes of I_c / max(U_c, 1) (HSNet's guard): a class with no episode, or
  whose episodes all had empty masks, counts as IoU 0, as in HSNet;
- FB-IoU = mean of the foreground IoU and the background IoU, each summed over the evaluated classes
  (sum_c I / sum_c U); with no foreground pixel anywhere (sum_c U = 0), HSNet's 0 / 0 is NaN, and so is FB-IoU.

Both are fractions in [0, 1] (HSNet prints them x 100). An episode whose masks are both empty adds nothing to the
foreground counts and its whole image to the background counts, as in HSNet. With no episode at all, both are NaN
(nothing was measured; HSNet would print an mIoU of 0). The caller reports NaN as null with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

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
        class_ids: the evaluated classes, over which mIoU and FB-IoU average (a COCO-20i fold's 20); None: all.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, class_ids: Sequence[int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a whole number >= 1; got {num_classes!r}")
        self.num_classes = num_classes
        self.class_ids = list(range(num_classes)) if class_ids is None else [int(c) for c in class_ids]
        if not self.class_ids or not all(0 <= c < num_classes for c in self.class_ids):
            raise ValueError(f"class_ids must be some of 0..{num_classes - 1}; got {class_ids!r}")
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

    def unseen(self) -> list[int]:
        """The evaluated classes that had no episode (over all processes); they count as IoU 0 in mIoU."""
        with self.sync_context():
            return [c for c in self.class_ids if not int(self.episodes[c])]

    def compute(self) -> dict[str, Tensor]:
        ids = torch.tensor(self.class_ids, device=self.device)
        if not int(self.episodes[ids].sum()):
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.device)
            return {"mIoU": nan, "FB-IoU": nan.clone()}
        miou = (self.fg_inter[ids].double() / self.fg_union[ids].clamp(min=1).double()).mean()
        # no guard here, as in HSNet: no foreground pixel at all is 0 / 0 = NaN, not an FB-IoU of 0.5
        fg = self.fg_inter[ids].sum().double() / self.fg_union[ids].sum().double()
        bg = self.bg_inter[ids].sum().double() / self.bg_union[ids].sum().double()
        return {"mIoU": miou, "FB-IoU": (fg + bg) / 2}

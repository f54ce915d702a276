"""Monocular depth metrics as torchmetrics `Metric`s: AbsRel, SqRel, RMSE, RMSE-log and delta accuracies.

Each is computed per image over its evaluated pixels and averaged over all images of the split, as the
depth toolbox the DINOv2 evaluation builds on does (images without evaluated pixels are left out). A split
without any evaluated pixel has nothing to average: its metrics are NaN, which train.py reports as null with
the reason (`empty_split_reason`), never as a number.
Evaluated pixels: ground truth in `(min_depth, max_depth)` (so 0 = invalid is ignored) and inside the
dataset's crop: "eigen" (NYU, rows 45:471 and columns 41:601 of 480x640) or "garg" (KITTI, rows
0.408-0.992 and columns 0.036-0.964 of the height and width); other sizes scale the crop.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

CROPS = {
    "eigen": (45 / 480, 471 / 480, 41 / 640, 601 / 640),
    "garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
}
"""(top, bottom, left, right) of each evaluation crop as fractions of the height and width."""


def eval_mask(target: Tensor, min_depth: float, max_depth: float, crop: str | None = None) -> Tensor:
    """Ground truth `(B, 1, H, W)` -> bool mask of the pixels to evaluate, same shape."""
    mask = (target > min_depth) & (target < max_depth)
    if crop is not None:
        height, width = target.shape[-2:]
        top, bottom, left, right = CROPS[crop]
        # Garg's crop truncates (int), Eigen's fractions are exact at 480x640: round covers both there
        rows = slice(int(top * height), round(bottom * height) if crop == "eigen" else int(bottom * height))
        cols = slice(int(left * width), round(right * width) if crop == "eigen" else int(right * width))
        inside = torch.zeros_like(mask)
        inside[..., rows, cols] = True
        mask &= inside
    return mask


class DepthMetric(Metric):
    """The mean over images of a per-image error; subclasses define `per_pixel` or `reduce`."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, crop: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if crop is not None and crop not in CROPS:
            raise ValueError(f"Unknown evaluation crop {crop!r}; choose one of {', '.join(CROPS)} or None.")
        self.min_depth, self.max_depth, self.crop = min_depth, max_depth, crop
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0), dist_reduce_fx="sum")

    def per_pixel(self, pred: Tensor, target: Tensor) -> Tensor:
        """Evaluated pixels of one image, `(N,)` each -> the per-pixel terms averaged by `reduce`."""
        raise NotImplementedError

    def reduce(self, terms: Tensor) -> Tensor:
        return terms.mean()

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add predictions and ground truth `(B, 1, H, W)` (or `(B, H, W)`) in metres."""
        mask = eval_mask(target, self.min_depth, self.max_depth, self.crop)
        for p, t, m in zip(preds.double(), target.double(), mask):
            if m.any():
                self.total += self.reduce(self.per_pixel(p[m], t[m]))
                self.images += 1

    def compute(self) -> Tensor:
        """The mean over images with evaluated pixels; NaN when there was none (nothing to average)."""
        if self.images == 0:
            return torch.tensor(math.nan)
        return (self.total / self.images).float()


class AbsRel(DepthMetric):
    """mean |pred - gt| / gt."""

    higher_is_better = False

    def per_pixel(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).abs() / target


class SqRel(DepthMetric):
    """mean (pred - gt)^2 / gt."""

    higher_is_better = False

    def per_pixel(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target) ** 2 / target


class RMSE(DepthMetric):
    """sqrt(mean (pred - gt)^2), in metres."""

    higher_is_better = False

    def per_pixel(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target) ** 2

    def reduce(self, terms: Tensor) -> Tensor:
        return terms.mean().sqrt()


class RMSELog(RMSE):
    """sqrt(mean (log pred - log gt)^2)."""

    def per_pixel(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred.log() - target.log()) ** 2


class DeltaAccuracy(DepthMetric):
    """Fraction of pixels with max(pred / gt, gt / pred) < 1.25 ** power (delta_1, delta_2, delta_3)."""

    higher_is_better = True

    def __init__(self, power: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = 1.25**power

    def per_pixel(self, pred: Tensor, target: Tensor) -> Tensor:
        return (torch.maximum(pred / target, target / pred) < self.threshold).double()


def depth_metrics(min_depth: float, max_depth: float, crop: str | None) -> MetricCollection:
    """All seven metrics, named as in the DINOv2 paper's tables: AbsRel, SqRel, RMSE, RMSE_log, d1, d2, d3."""
    kwargs = {"min_depth": min_depth, "max_depth": max_depth, "crop": crop}
    return MetricCollection(
        {
            "AbsRel": AbsRel(**kwargs),
            "SqRel": SqRel(**kwargs),
            "RMSE": RMSE(**kwargs),
            "RMSE_log": RMSELog(**kwargs),
            **{f"d{power}": DeltaAccuracy(power, **kwargs) for power in (1, 2, 3)},
        },
        compute_groups=False,
    )


def empty_split_reason(stage: str, min_depth: float, max_depth: float, crop: str | None) -> str:
    """Why the `stage` split's depth metrics could not be computed, and the likely fix."""
    region = f" inside the {crop!r} crop" if crop is not None else ""
    return (
        f"no {stage} image has a ground-truth pixel in (min_depth, max_depth) = ({min_depth}, {max_depth}) m{region}, "
        "so its depth metrics have nothing to average. Fix: set data.max_depth / data.min_depth to the dataset's "
        "range (NYU 10 m, KITTI 80 m) and check the depth files' units and data.eval_crop."
    )

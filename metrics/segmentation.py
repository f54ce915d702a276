"""Semantic segmentation metrics as mmseg computes them: mIoU and aAcc over a split (torchmetrics)."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex


def segmentation_metrics(num_classes: int, ignore_index: int) -> MetricCollection:
    """`mIoU` and `aAcc` of predicted class maps `(B, H, W)` against labels `(B, H, W)`, `ignore_index` left out.

    Macro Jaccard skips classes absent from both predictions and labels over the split: mmseg's nanmean.
    """
    return MetricCollection(
        {
            "mIoU": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index),
            "aAcc": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
        }
    )


def class_iou(num_classes: int, ignore_index: int) -> MulticlassJaccardIndex:
    """IoU per class `(K,)` over a split, NaN for a class absent from both predictions and labels."""
    return MulticlassJaccardIndex(num_classes, average="none", ignore_index=ignore_index, zero_division="nan")

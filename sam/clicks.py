"""Simulated clicks of the interactive protocol (RITM's, as the SAM paper uses it) and its metrics, in numpy.

Every click follows RITM's clicker (isegm/inference/clicker.py, `Clicker._get_next_click`): the missed pixels (in
the ground truth, not predicted) and the false pixels (predicted, not in the ground truth), both outside the ignored
ones, are each padded by one pixel of background (so the image border counts as boundary) and get OpenCV's exact
Euclidean distance transform (`cv2.DIST_L2`, `cv2.DIST_MASK_PRECISE`, float32, as RITM calls it), the padding is
cut off again and the pixels clicked before are zeroed (RITM's `not_clicked_map`: no pixel is clicked twice while
another error pixel is left). The click is positive when the largest missed distance is strictly larger than the
largest false one (a tie goes negative), at the pixel of that largest distance, the first in row-major order among
equal maxima (RITM's `np.where(...)[0]`). The first click is the same rule on an empty prediction: a positive click
at the object's centre, the pixel farthest from its boundary.

One difference from RITM: a prediction with no error left gets no click (RITM would still click the top-left pixel
as a negative; its evaluation stops at IoU 0.90 before that happens).

The distance transform is OpenCV's, as RITM's is, rather than scipy's: scipy's exact transform, cast to float32,
differs from OpenCV's by one float32 step at some pixels, and only OpenCV's gives RITM's maps bit for bit. OpenCV is
there through albumentations (datamodules/transforms.py uses it too).

Metrics over objects, each with its IoU after every click: mIoU@k (the mean IoU after k clicks) and NoC@t (RITM's
`compute_noc_metric`: the first click count whose IoU is >= t, counted as 20 when t is never reached in 20 clicks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

NOC_MAX_CLICKS = 20
"""RITM's NoC cap (`compute_noc_metric(max_clicks=20)`, `evaluate_model.py --n-clicks 20`)."""


class Click(NamedTuple):
    """One click at pixel column `x`, row `y`; `positive`: on the object (1), else on the background (0)."""

    x: int
    y: int
    positive: bool


def error_masks(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Missed `(H, W)` (in `gt`, not in `pred`) and false `(H, W)` (in `pred`, not in `gt`) pixels, both bool,
    leaving out the `ignore` pixels (e.g. GrabCut's unlabelled band along the object boundary)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or gt.ndim != 2:
        raise ValueError(f"The prediction is {pred.shape} but the ground truth {gt.shape}: give two (H, W) masks.")
    keep = np.ones_like(gt) if ignore is None else ~np.asarray(ignore, dtype=bool)
    return gt & ~pred & keep, pred & ~gt & keep


def boundary_distance(mask: np.ndarray) -> np.ndarray:
    """`(H, W)` float32: each pixel of `mask` `(H, W)` bool's Euclidean distance to the nearest pixel outside it,
    the image border counting as outside (one pixel of padding), 0 outside the mask; OpenCV's exact transform."""
    padded = np.pad(mask, 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def next_click(
    pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None, clicked: Sequence[Click] = ()
) -> Click | None:
    """RITM's next click (see the module docstring) for the prediction `pred` `(H, W)` bool of the object `gt`
    `(H, W)` bool, the pixels of the `clicked` clicks left out. None when `pred` has no error outside `ignore`."""
    missed, false = error_masks(pred, gt, ignore)
    if not missed.any() and not false.any():
        return None
    not_clicked = np.ones(gt.shape, dtype=np.float32)
    for click in clicked:
        not_clicked[click.y, click.x] = 0.0
    missed_distance = boundary_distance(missed) * not_clicked
    false_distance = boundary_distance(false) * not_clicked
    positive = bool(missed_distance.max() > false_distance.max())
    distance = missed_distance if positive else false_distance
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)  # argmax: the first maximum in row-major order
    return Click(int(x), int(y), positive)


def first_click(gt: np.ndarray, ignore: np.ndarray | None = None) -> Click | None:
    """The first click: RITM's rule on an empty prediction, a positive click at the centre of the object `gt`
    `(H, W)` bool (outside `ignore`); None for an empty mask."""
    return next_click(np.zeros_like(gt, dtype=bool), gt, ignore)


def mask_iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of `pred` and `gt` `(H, W)` bool over the pixels not in `ignore` (RITM's ignore label); 1.0 when both are
    empty there."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        pred, gt = pred & keep, gt & keep
    union = int((pred | gt).sum())
    return 1.0 if union == 0 else int((pred & gt).sum()) / union


def _check_ious(ious: np.ndarray) -> np.ndarray:
    ious = np.asarray(ious, dtype=np.float64)
    if ious.ndim != 2:
        raise ValueError(f"Per-click IoUs must be an (objects, clicks) array, got shape {ious.shape}.")
    return ious


def miou_at(ious: np.ndarray) -> np.ndarray:
    """mIoU@1..@N `(N,)`: the mean over objects of the IoU after k clicks, from per-click IoUs `(M, N)`."""
    return _check_ious(ious).mean(0)


def clicks_to_reach(ious: Sequence[Sequence[float]], threshold: float, max_clicks: int = NOC_MAX_CLICKS) -> np.ndarray:
    """NoC per object `(M,)` int, as RITM's `compute_noc_metric`: the first click count k (1..`max_clicks`) whose
    IoU is >= `threshold`, `max_clicks` when none is, from each object's IoU after each click (M sequences, any
    lengths: RITM stops clicking at its target IoU). NoC@t is its mean."""
    noc = []
    for row in ious:
        reached = np.asarray(row, dtype=np.float64)[:max_clicks] >= threshold
        noc.append(int(reached.argmax()) + 1 if reached.any() else max_clicks)
    return np.array(noc, dtype=np.int64)

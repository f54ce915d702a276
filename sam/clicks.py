"""Simulated clicks of the interactive protocol (RITM's, as the SAM paper uses it) and its metrics, in numpy.

The first click is the object's centre: the mask pixel farthest from the mask boundary, the maximum of the
Euclidean distance transform of the mask padded by one background pixel (so the image border counts as boundary),
ties broken by the first pixel in row-major order. Each next click is the same kind of centre of the largest error
region: a positive click in a missed region (ground truth not predicted), a negative click in a false one (predicted,
not ground truth). Regions are 4-connected components; the largest has the most pixels (ties: a missed region before
a false one, then the first found in row-major order). RITM itself compares the two distance-transform maxima of
all missed and all false pixels; a region's pixel count is the rule issue 14 asks for.

Metrics over objects with per-click IoUs `(M, N)`: mIoU@k (the mean IoU after k clicks) and NoC@t (the clicks
needed to reach IoU t, N when never reached).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.ndimage import distance_transform_edt, label


class Click(NamedTuple):
    """One click at pixel column `x`, row `y`; `positive`: on the object (1), else on the background (0)."""

    x: int
    y: int
    positive: bool


def mask_centre(mask: np.ndarray) -> tuple[int, int] | None:
    """`(x, y)` of the pixel of `mask` `(H, W)` bool farthest from its boundary (image border included); ties go to
    the first pixel in row-major order (numpy's argmax). None for an empty mask: it has no centre."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask_centre takes one (H, W) mask, got shape {mask.shape}.")
    if not mask.any():
        return None
    distance = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    return int(x), int(y)


def error_masks(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Missed `(H, W)` (in `gt`, not in `pred`) and false `(H, W)` (in `pred`, not in `gt`) pixels, both bool,
    leaving out the `ignore` pixels (e.g. GrabCut's unlabelled band along the object boundary)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"The prediction is {pred.shape} but the ground truth {gt.shape}: give masks of one size.")
    keep = np.ones_like(gt) if ignore is None else ~np.asarray(ignore, dtype=bool)
    return gt & ~pred & keep, pred & ~gt & keep


def _largest_region(errors: np.ndarray) -> tuple[int, np.ndarray | None]:
    """The pixel count and mask of the largest 4-connected region of `errors` (the first in row-major order on
    ties; scipy numbers regions in that order), or (0, None) when there is no error."""
    regions, count = label(errors)
    if count == 0:
        return 0, None
    sizes = np.bincount(regions.ravel())[1:]
    best = int(sizes.argmax())
    return int(sizes[best]), regions == best + 1


def next_click(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> Click | None:
    """The next simulated click for the prediction `pred` `(H, W)` bool of the object `gt` `(H, W)` bool: the centre
    of the largest error region (see the module docstring), positive when it is a missed region. None when the
    prediction has no error outside `ignore`."""
    missed, false = error_masks(pred, gt, ignore)
    missed_size, missed_region = _largest_region(missed)
    false_size, false_region = _largest_region(false)
    if missed_region is None and false_region is None:
        return None
    positive = missed_size >= false_size
    x, y = mask_centre(missed_region if positive else false_region)
    return Click(x, y, positive)


def first_click(gt: np.ndarray) -> Click | None:
    """The first click: a positive click at the centre of the object `gt` `(H, W)` bool; None for an empty mask."""
    centre = mask_centre(gt)
    return None if centre is None else Click(*centre, True)


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


def clicks_to_reach(ious: np.ndarray, threshold: float) -> np.ndarray:
    """NoC per object `(M,)` int: the first click count k (1..N) whose IoU is >= `threshold`, N when none is, from
    per-click IoUs `(M, N)` (RITM's NoC capped at the N clicks made). NoC@t is its mean."""
    ious = _check_ious(ious)
    reached = ious >= threshold
    return np.where(reached.any(1), reached.argmax(1) + 1, ious.shape[1])

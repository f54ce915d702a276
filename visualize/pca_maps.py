"""PCA of dense patch features as RGB maps, the DINOv2 paper's way.

One PCA is fitted jointly over the patches of all maps, so a part gets the same colour in every image.
The first component of all patches separates foreground from background; the three first components
of the foreground patches, each min-max scaled over all foreground patches, give the colours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import Tensor

Sign = Literal["auto", "positive", "negative"]
SIGNS: tuple[Sign, ...] = get_args(Sign)


@dataclass
class PCAMaps:
    """The PCA maps of a list of feature maps, one entry per map, all on the CPU.

    rgb: ``(h, w, 3)`` floats in [0, 1]; background patches are 0 (black).
    foreground: ``(h, w)`` bool, the patches kept by the first-component threshold.
    components: ``(h, w, 3)`` the foreground PCA scores before scaling; NaN on background patches.
    """

    rgb: list[Tensor]
    foreground: list[Tensor]
    components: list[Tensor]


def _flatten(features: Sequence[Tensor]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Maps ``(C, h_i, w_i)`` -> all patches ``(sum h_i*w_i, C)`` as float64 numpy, and the grids ``(h_i, w_i)``."""
    if len(features) == 0 or any(f.ndim != 3 for f in features):
        raise ValueError("features must be a (B, C, h, w) tensor or a non-empty sequence of (C, h, w) maps.")
    patches = torch.cat([f.detach().float().flatten(1).T.cpu() for f in features])
    return patches.double().numpy(), [tuple(f.shape[1:]) for f in features]


def _split(values: np.ndarray, grids: list[tuple[int, int]]) -> list[Tensor]:
    """Per-patch rows ``(N, ...)`` -> one tensor ``(h, w, ...)`` per grid."""
    sizes = [h * w for h, w in grids]
    parts = np.split(values, np.cumsum(sizes)[:-1])
    return [torch.from_numpy(p.reshape(h, w, *values.shape[1:])).float() for p, (h, w) in zip(parts, grids)]


def _border(grids: list[tuple[int, int]]) -> np.ndarray:
    """``(N,)`` bool: whether each patch lies on the outer ring of its map."""
    rings = []
    for h, w in grids:
        ring = np.ones((h, w), dtype=bool)
        ring[1:-1, 1:-1] = False
        rings.append(ring.ravel())
    return np.concatenate(rings)


def check_threshold_sign(threshold: float, sign: str) -> None:
    """ValueError unless ``threshold`` is a finite number and ``sign`` one of ``Sign``'s values (any other sign
    was read as "positive", and a NaN threshold keeps no patch)."""
    if sign not in SIGNS:
        raise ValueError(f"sign={sign!r} is not an orientation: use one of {', '.join(map(repr, SIGNS))}.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold={threshold!r}: give a finite number (the paper's is 0).")


def foreground_masks(features: Sequence[Tensor], threshold: float = 0.0, sign: Sign = "auto") -> list[Tensor]:
    """The foreground patches of each map by the first PCA component, fitted jointly over all maps.

    Args:
        features: ``(B, C, h, w)`` or a sequence of ``(C, h_i, w_i)`` maps.
        threshold: keep the patches whose oriented first-component score is above it (the paper: 0).
        sign: orientation of the first component (its sign is arbitrary): ``"positive"`` keeps high scores,
            ``"negative"`` low ones, ``"auto"`` picks the one that makes the border patches background on average.

    Returns:
        One ``(h, w)`` bool mask per map.
    """
    check_threshold_sign(threshold, sign)
    patches, grids = _flatten(features)
    score = PCA(n_components=1, random_state=0).fit_transform(patches)[:, 0]
    if sign == "negative" or (sign == "auto" and score[_border(grids)].mean() > 0):
        score = -score
    return [m.bool() for m in _split(score > threshold, grids)]


def pca_rgb(
    features: Sequence[Tensor],
    threshold: float | None = 0.0,
    sign: Sign = "auto",
) -> PCAMaps:
    """The first three PCA components of the foreground patches of all maps, as RGB.

    Args:
        features: ``(B, C, h, w)`` or a sequence of ``(C, h_i, w_i)`` maps (sizes may differ).
        threshold: first-component threshold of ``foreground_masks``; None keeps every patch.
        sign: orientation of the first component, see ``foreground_masks``.

    Raises:
        ValueError: fewer than 3 patches are foreground, or the features have fewer than 3 channels.
    """
    if threshold is not None:
        check_threshold_sign(threshold, sign)
    patches, grids = _flatten(features)
    if patches.shape[1] < 3:
        raise ValueError(f"PCA to RGB needs at least 3 feature channels; the features have {patches.shape[1]}.")
    if threshold is None:
        keep = np.ones(len(patches), dtype=bool)
    else:
        keep = np.concatenate([m.numpy().ravel() for m in foreground_masks(features, threshold, sign)])
    if keep.sum() < 3:
        raise ValueError(
            f"Only {keep.sum()} patch(es) pass the background threshold {threshold} (sign {sign!r}); "
            "lower the threshold, flip the sign, or turn the background removal off."
        )
    scores = PCA(n_components=3, random_state=0).fit_transform(patches[keep])
    low, high = scores.min(0), scores.max(0)
    rgb = np.zeros((len(patches), 3))
    rgb[keep] = (scores - low) / np.maximum(high - low, 1e-12)
    components = np.full((len(patches), 3), np.nan)
    components[keep] = scores
    return PCAMaps(_split(rgb, grids), [m.bool() for m in _split(keep, grids)], _split(components, grids))

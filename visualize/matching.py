"""Patch correspondences between two images: mutual nearest neighbours ("best buddies") of patch features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import Tensor


@dataclass
class Matches:
    """Patch pairs, strongest first; indices are row-major into the ``(h, w)`` grids of the two maps.

    index_a, index_b: ``(M,)`` long. similarity: ``(M,)`` cosine similarity of the two patches.
    """

    index_a: Tensor
    index_b: Tensor
    similarity: Tensor

    def __len__(self) -> int:
        return len(self.index_a)

    def take(self, rows: Tensor) -> Matches:
        return Matches(self.index_a[rows], self.index_b[rows], self.similarity[rows])


def mutual_matches(
    feat_a: Tensor,
    feat_b: Tensor,
    mask_a: Tensor | None = None,
    mask_b: Tensor | None = None,
) -> Matches:
    """Pairs of patches that are each other's nearest neighbour by cosine similarity.

    Args:
        feat_a, feat_b: patch maps ``(C, h_a, w_a)`` and ``(C, h_b, w_b)``.
        mask_a, mask_b: optional ``(h, w)`` bool maps; only ``True`` patches take part (e.g. the foreground).

    Returns:
        The mutual matches on the CPU, strongest first.
    """
    if feat_a.ndim != 3 or feat_b.ndim != 3 or feat_a.shape[0] != feat_b.shape[0]:
        raise ValueError(
            f"feat_a {tuple(feat_a.shape)} and feat_b {tuple(feat_b.shape)} must be patch maps (C, h, w) with the "
            "same number of channels C (one image each, from the same backbone and block)."
        )
    for name, mask, feat in (("mask_a", mask_a, feat_a), ("mask_b", mask_b, feat_b)):
        if mask is not None and tuple(mask.shape) != tuple(feat.shape[1:]):
            raise ValueError(
                f"{name} {tuple(mask.shape)} must be an (h, w) map of its features' grid {tuple(feat.shape[1:])}."
            )
    a = F.normalize(feat_a.float().flatten(1).T, dim=1)
    b = F.normalize(feat_b.float().flatten(1).to(a.device).T, dim=1)
    similarity = a @ b.T
    keep_a = torch.ones(len(a), dtype=torch.bool, device=a.device) if mask_a is None else mask_a.flatten().to(a.device)
    keep_b = torch.ones(len(b), dtype=torch.bool, device=a.device) if mask_b is None else mask_b.flatten().to(a.device)
    similarity = similarity.masked_fill(~keep_a[:, None] | ~keep_b[None, :], -torch.inf)
    best_b = similarity.argmax(1)
    best_a = similarity.argmax(0)
    index_a = torch.arange(len(a), device=a.device)
    mutual = (best_a[best_b] == index_a) & keep_a & keep_b[best_b]
    index_a, index_b = index_a[mutual], best_b[mutual]
    sim = similarity[index_a, index_b]
    order = sim.argsort(descending=True)
    return Matches(index_a[order].cpu(), index_b[order].cpu(), sim[order].cpu())


def spread_matches(matches: Matches, feat_a: Tensor, feat_b: Tensor, n: int, seed: int = 0) -> Matches:
    """At most ``n`` well-spread pairs: k-means over the matched descriptors, the strongest pair of each cluster.

    A pair's descriptor is its two normalised patch features concatenated ``(2C,)``, so the clusters are
    parts that look alike in both images.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} pairs: give a whole number of at least 1.")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed!r}: give a whole number from 0 to 2**32 - 1 (scikit-learn's range).")
    if len(matches) <= n:
        return matches
    a = F.normalize(feat_a.float().flatten(1).T.cpu()[matches.index_a], dim=1)
    b = F.normalize(feat_b.float().flatten(1).T.cpu()[matches.index_b], dim=1)
    labels = KMeans(n_clusters=n, n_init=3, random_state=seed).fit_predict(torch.cat([a, b], 1).numpy())
    # matches come strongest first, so each cluster's first row is its strongest pair
    _, first = np.unique(labels, return_index=True)
    return matches.take(torch.from_numpy(np.sort(first)))


def patch_centres(index: Tensor, grid: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """Row-major patch indices on an ``(h, w)`` grid -> ``(M, 2)`` ``x, y`` centres in an image of ``(H, W)`` pixels."""
    h, w = grid
    height, width = image_size
    rows, cols = index // w, index % w
    return torch.stack([(cols + 0.5) * width / w, (rows + 0.5) * height / h], 1)

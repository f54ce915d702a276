"""The pure tensor steps of the one-shot segmenter: the patch grid of a resized image, forward-and-reverse patch
matching, prompts from the matched patches, scoring SAM's candidate masks against the reference; and the checks
of the images and masks the segmenter is given.

Patch indices are row-major into the target's ``(h, w)`` grid; features are L2-normalised rows ``(T, C)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import Tensor

from backbones.padding import center_pad
from utils.errors import UserError


@dataclass(frozen=True)
class PatchGrid:
    """Where an ``(H, W)`` image's patches lie: resized so that its long side is ``image_size`` (rounded per side),
    then centre-padded to a multiple of ``patch_size`` by the backbone (the extra row/column last, as
    `backbones.padding.center_pad`).

    Attributes:
        size: ``(H, W)`` of the image.
        input_size: ``(H', W')`` after the resize.
        patch_size: p.
    """

    size: tuple[int, int]
    input_size: tuple[int, int]
    patch_size: int

    @classmethod
    def plan(cls, height: int, width: int, image_size: int, patch_size: int) -> PatchGrid:
        scale = image_size / max(height, width)
        return cls((height, width), (max(1, round(height * scale)), max(1, round(width * scale))), patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)`` patches."""
        return tuple(math.ceil(side / self.patch_size) for side in self.input_size)

    @property
    def pad(self) -> tuple[int, int]:
        """``(top, left)`` padding pixels of the resized image."""
        return tuple((n * self.patch_size - side) // 2 for n, side in zip(self.grid, self.input_size))

    def coverage(self, masks: Tensor) -> Tensor:
        """Pixel masks ``(S, H, W)`` (bool or [0, 1] float) -> ``(S, h*w)`` float: the fraction of each patch inside
        each mask (one mask ``(H, W)`` -> ``(h*w,)``).

        A mask is resized as the image is (bilinear, antialiased: a fraction per resized pixel), padded with
        background as the image is, and averaged over each patch.
        """
        x = masks.float().reshape(-1, 1, *masks.shape[-2:])
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        x = F.avg_pool2d(center_pad(x.clamp(0, 1), self.patch_size), self.patch_size).flatten(1)
        return x[0] if masks.ndim == 2 else x

    def centres(self, index: Tensor) -> Tensor:
        """Patch indices ``(M,)`` -> ``(M, 2)`` float32 xy of the patch centres in the image's pixels.

        A patch centre always lies in the resized image (the padding of a side is under half a patch)."""
        box = self.boxes(index, clip=False)
        return torch.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2], 1)

    def boxes(self, index: Tensor, clip: bool = True) -> Tensor:
        """Patch indices ``(M,)`` -> ``(M, 4)`` float32 xyxy of the patches in the image's pixels (clipped to it)."""
        (_, w), (top, left), p = self.grid, self.pad, self.patch_size
        index = index.long().cpu()
        x0 = (index % w * p - left).float()
        y0 = (index // w * p - top).float()
        sy, sx = (side / resized for side, resized in zip(self.size, self.input_size))
        box = torch.stack([x0 * sx, y0 * sy, (x0 + p) * sx, (y0 + p) * sy], 1)
        if clip:
            height, width = self.size
            box = torch.minimum(box.clamp(min=0), torch.tensor([width, height, width, height], dtype=box.dtype))
        return box


def inside_patches(coverage: Tensor, min_coverage: float = 0.5) -> Tensor:
    """``(T,)`` fractions -> ``(T,)`` bool: patches at least ``min_coverage`` inside the mask; when none is, the
    most covered patch(es), so that a thin or small mask still names a patch (a mask covering no pixel is the
    caller's error)."""
    inside = coverage >= min_coverage
    return inside if inside.any() else coverage == coverage.max()


def forward_reverse_match(
    reference: Tensor, target: Tensor, all_reference: Tensor, all_inside: Tensor
) -> tuple[Tensor, Tensor]:
    """Target patches matched to the reference mask and confirmed by the reverse check.

    Forward: each reference mask patch picks its most similar target patch. Reverse: each picked target patch
    picks its most similar patch among ALL reference patches (of every reference image); it is kept when that
    patch lies inside a reference mask. Argmax matching (Matcher uses a bipartite assignment forward; argmax keeps
    every patch's best match, and ties go to the first index both ways, so identical features match themselves).

    Args:
        reference: ``(N, C)`` normalised features of the reference mask patches.
        target: ``(T, C)`` normalised target patch features.
        all_reference: ``(R, C)`` normalised features of every reference patch (``reference`` is a subset).
        all_inside: ``(R,)`` bool, the patches of ``all_reference`` inside a reference mask.

    Returns:
        kept ``(T,)`` bool, and similarity ``(T,)``: each target patch's best cosine similarity to a reference
        mask patch.
    """
    forward = reference @ target.T  # (N, T)
    picked = torch.zeros(len(target), dtype=torch.bool, device=target.device)
    picked[forward.argmax(1)] = True
    back = (target @ all_reference.T).argmax(1)  # (T,)
    return picked & all_inside[back], forward.max(0).values


def cluster_patches(xy: Tensor, n_clusters: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Matched patch positions ``(M, 2)`` -> cluster labels ``(M,)`` long and one representative per cluster
    ``(k,)`` long (indices into ``xy``): the member nearest its cluster's centre, so every point is a matched
    patch. ``k = min(n_clusters, distinct positions)``; k-means (scikit-learn), seeded."""
    points = xy.double().cpu().numpy()
    k = min(n_clusters, len(np.unique(points, axis=0)))
    if k <= 1:
        labels = np.zeros(len(points), dtype=np.int64)
        centres = points.mean(0, keepdims=True)
    else:
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(points)
        labels, centres = km.labels_.astype(np.int64), km.cluster_centers_
    distance = ((points[:, None] - centres[None]) ** 2).sum(-1)  # (M, k)
    members = [np.flatnonzero(labels == c) for c in range(k)]
    representative = [int(rows[distance[rows, c].argmin()]) for c, rows in enumerate(members)]
    return torch.from_numpy(labels), torch.tensor(representative, dtype=torch.long)


def spread_boxes(boxes: Tensor, labels: Tensor, n_clusters: int) -> Tensor:
    """Patch boxes ``(M, 4)`` xyxy and cluster labels ``(M,)`` -> ``(k, 4)``: the box around each cluster's patches."""
    return torch.stack([spread_box(boxes[labels == c]) for c in range(n_clusters)])


def spread_box(boxes: Tensor) -> Tensor:
    """``(M, 4)`` xyxy -> ``(4,)``: the smallest box holding them all."""
    return torch.cat([boxes[:, :2].min(0).values, boxes[:, 2:].max(0).values])


def least_similar(similarity: Tensor, exclude: Tensor, n: int) -> Tensor:
    """``(T,)`` similarity to the reference -> the ``min(n, allowed)`` least similar patch indices, not ``exclude``
    ``(T,)`` bool (the matched patches)."""
    allowed = torch.nonzero(~exclude).flatten()
    order = similarity[allowed].argsort()
    return allowed[order[:n]]


def prompt_sets(positive: Tensor, negative: Tensor, boxes: Tensor | None, all_box: Tensor | None) -> dict[str, Tensor]:
    """One prompt set per positive point, plus one with all of them when there are several; every set carries the
    negatives. Sets are padded to one length with label -1 (SAM's "not a point").

    Args:
        positive: ``(k, 2)`` xy. negative: ``(n, 2)`` xy.
        boxes: ``(k, 4)`` one box per positive point (its cluster's spread), or None (no boxes).
        all_box: ``(4,)`` the box around every matched patch (the set of all points), or None.

    Returns:
        ``points`` ``(S, k + n, 2)``, ``labels`` ``(S, k + n)`` long, ``boxes`` ``(S, 4)`` or None; S = k (+ 1 if k > 1).
    """
    k, n = len(positive), len(negative)
    size = k + n
    points = torch.zeros(k + (k > 1), size, 2)
    labels = torch.full((k + (k > 1), size), -1, dtype=torch.long)
    points[:k, 0], labels[:k, 0] = positive, 1
    points[:k, 1 : 1 + n], labels[:k, 1 : 1 + n] = negative, 0
    if k > 1:
        points[k] = torch.cat([positive, negative])
        labels[k] = torch.cat([torch.ones(k), torch.zeros(n)]).long()
    set_boxes = None if boxes is None else torch.cat([boxes, all_box[None]] if k > 1 else [boxes])
    return {"points": points, "labels": labels, "boxes": set_boxes}


def score_masks(
    coverage: Tensor, target: Tensor, mean_feature: Tensor, matched: Tensor, sam_scores: Tensor
) -> dict[str, Tensor]:
    """Candidate masks scored against the reference.

    Args:
        coverage: ``(S, T)`` fraction of each target patch inside each mask (`PatchGrid.coverage`).
        target: ``(T, C)`` normalised target features. mean_feature: ``(C,)`` normalised reference mean.
        matched: ``(T,)`` bool, the target patches kept by the matching.
        sam_scores: ``(S,)`` SAM's predicted IoU.

    Returns:
        ``similarity`` ``(S,)``: cosine of the mask's coverage-weighted mean feature with the reference mean (0 for a
        mask covering no patch); ``coverage`` ``(S,)``: the fraction of the matched patches' area inside the mask;
        ``score`` ``(S,)``: the mean of the two and SAM's score.
    """
    pooled = coverage @ target  # (S, C); a zero row stays zero after normalising
    similarity = F.normalize(pooled, dim=1) @ mean_feature
    matched_coverage = coverage[:, matched].sum(1) / matched.sum().clamp(min=1)
    score = (similarity + matched_coverage + sam_scores.to(similarity)) / 3
    return {"similarity": similarity, "coverage": matched_coverage, "score": score}


def select_masks(score: Tensor, n_merge: int, margin: float) -> Tensor:
    """``(S,)`` scores -> indices of the masks to merge, best first: at most ``n_merge``, each within ``margin`` of
    the best score."""
    order = score.argsort(descending=True)[:n_merge]
    return order[score[order] >= score[order[0]] - margin]


class OneShotInputError(UserError):
    """A bad reference or target image or mask; the message names it and the fix."""


def check_image(image: object, what: str) -> np.ndarray:
    """``image`` as an ``(H, W, 3)`` uint8 array; OneShotInputError naming what it is otherwise."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise OneShotInputError(
            f"{what} is a {array.dtype} array of shape {array.shape}: pass an (H, W, 3) uint8 RGB image, e.g. "
            "utils.images.read_rgb(path), the project's reader (scale float images in [0, 1] by 255)."
        )
    return np.ascontiguousarray(array)  # torch.from_numpy refuses flipped (negative-stride) views


def check_mask(mask: object, size: tuple[int, int], what: str) -> np.ndarray:
    """``mask`` as ``(H, W)`` bool of an image of ``size``; OneShotInputError for another size, values other than
    0/1 or 0/255, no foreground or no background."""
    array = np.asarray(mask)
    if array.shape != tuple(size):
        raise OneShotInputError(
            f"{what} has shape {array.shape} but its image is {size[1]}x{size[0]} (WxH): pass an (H, W) mask of the "
            "same size as its image (resize it with nearest-neighbour, or give the mask made for this image)."
        )
    if array.dtype != bool:
        values = np.unique(array)
        if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
            raise OneShotInputError(
                f"{what} holds the values {values[:8].tolist()}: a mask is bool, 0/1 or 0/255 (object = 1 or 255)."
            )
        array = array > 0
    if not array.any():
        raise OneShotInputError(f"{what} is empty (no foreground pixel): mark the reference object in it.")
    if array.all():
        raise OneShotInputError(
            f"{what} is all foreground: the reference object must leave some background (crop the image or fix the "
            "mask)."
        )
    return np.ascontiguousarray(array)

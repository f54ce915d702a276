"""The BSDS500 boundary benchmark (ODS, OIS, AP, R50) as the structured-edge toolbox's `edgesEvalImg` /
`edgesEvalDir` compute it (identical to BSDS's `boundaryBench`, plus R50), which the SAM paper's Table 3 reports.

Per image and threshold t (99 thresholds in (0, 1) by default): the edge map is binarised (>= t) and thinned to
1-pixel-wide edges; its pixels are matched to each human annotator's boundary pixels within maxDist = 0.0075 x the
image diagonal, one-to-one. Recall counts, over all annotators, the boundary pixels matched (`cntR`) of all boundary
pixels (`sumR`); precision the predicted pixels matched to any annotator (`cntP`) of all predicted pixels (`sumP`).

The matching is the benchmark's `correspondPixels` (BSDS500 `csa/Matrix/match.cc`, `matchEdgeMaps`): a
minimum-cost assignment in which a pair of pixels at most maxDist apart costs `rint(100 x distance)` and a pixel
left unmatched is assigned to an outlier node at `ow = ceil(100 x outlierCost)`, outlierCost = 100 x maxDist
(in pixels). A matching M of k pairs then costs `sum_M w + ow x (n1 + n2 - k)`, n1 and n2 the two maps' pixel
counts, whatever the outlier links; this module minimises exactly that (see `_assignment`).

The C++ does not connect every pixel to every outlier node: for speed it links each to `degree = 6` outlier nodes
drawn at random (`kOfN`, from a generator seeded from the clock when the library loads, so two runs of the
official code may differ), plus a "perfect match overlay" at cost 100 x ow that keeps the assignment feasible. Those
links only restrict which outlier node an unmatched pixel may take; where they bind, the C++ returns a costlier
assignment than the complete graph's minimum, which this module solves. They do bind: on generated 321x481 images
the C++ matched 0 to 23 fewer boundary pixels per image and threshold at a higher cost, and two of its runs differ
(`tests/test_edges_benchmark.py`). Among several assignments of equal minimum cost the C++ (Goldberg's CSA) and
scipy's solver may pick different ones: the number matched is the same unless two of them differ in cost by exactly
ow, which predicted pixels are matched (the union over annotators gives `cntP`) can differ.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree
from skimage.morphology import thin
from torchmetrics import Metric

MAX_DIST = 0.0075
"""The benchmark's match tolerance, as a fraction of the image diagonal."""
OUTLIER_COST = 100.0
"""`correspondPixels`' cost of an unmatched pixel, in multiples of the match tolerance."""
MULTIPLIER = 100
"""`matchEdgeMaps`' scale from pixel distances to the integer costs its assignment solver takes."""


def thresholds(n: int = 99) -> np.ndarray:
    """The benchmark's `n` thresholds, `linspace(1/(n+1), 1 - 1/(n+1), n)`."""
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"thresholds={n!r} must be a whole number of thresholds of at least 1 (the benchmark: 99).")
    return np.linspace(1 / (n + 1), 1 - 1 / (n + 1), int(n))


def thin_edges(edges: np.ndarray) -> np.ndarray:
    """A binary `(H, W)` map thinned to 1-pixel-wide lines (MATLAB's `bwmorph(E, 'thin', inf)`, as scikit-image's
    `thin` implements the same algorithm)."""
    return thin(np.asarray(edges, bool))


class _Pixels:
    """The `True` pixels of a map, `(N, 2)` row/col, with their k-d tree: built once, matched against many maps."""

    def __init__(self, binary: np.ndarray) -> None:
        self.points = np.argwhere(binary)
        self.flat = np.flatnonzero(binary)  # the same pixels' raster indices, ascending
        self.tree = cKDTree(self.points) if len(self.points) else None


def _partners(pred: _Pixels, truth: _Pixels, max_dist: float, solved: dict | None = None) -> np.ndarray:
    """For each pixel of `pred`, the index of its partner in `truth` or -1, in `correspondPixels`' minimum-cost
    assignment of the two maps' pixels with tolerance `max_dist` pixels.

    The assignment decomposes into the connected components of the graph of pixel pairs within the tolerance, each
    solved alone. `solved` (a dict, emptied and refilled) keeps each component's solution by its pixels, for the
    next call with the same `truth`: a component found again (at the next threshold most are) is not solved again.
    """
    partner = np.full(len(pred.points), -1)
    previous = dict(solved) if solved is not None else {}
    if solved is not None:
        solved.clear()
    if pred.tree is None or truth.tree is None:
        return partner
    # pairs within the tolerance, as matchEdgeMaps tests them (integer offsets: u^2 + v^2 <= maxDist^2)
    near = pred.tree.sparse_distance_matrix(truth.tree, max_dist + 1e-6, output_type="coo_matrix")
    rows, cols = near.row, near.col
    d2 = ((pred.points[rows] - truth.points[cols]) ** 2).sum(1)
    keep = d2 <= max_dist * max_dist
    rows, cols, d2 = rows[keep], cols[keep], d2[keep]
    if not len(rows):
        return partner
    cost = np.rint(np.sqrt(d2) * MULTIPLIER).astype(np.int64)
    outlier = int(np.ceil(OUTLIER_COST * max_dist * MULTIPLIER))
    n = len(pred.points)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, n + cols)), (n + len(truth.points),) * 2)
    component = connected_components(graph, directed=False)[1][rows]
    order = np.lexsort((cols, rows, component))  # by component, then in raster order: a component's own order
    starts = np.flatnonzero(np.r_[True, np.diff(component[order]) != 0])
    ends = np.r_[starts[1:], len(order)]
    lone = starts[ends - starts == 1]  # a component of one pair: matched (it saves outlier - cost > 0)
    partner[rows[order[lone]]] = cols[order[lone]]
    for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        pair = order[start:end]
        key = pred.flat[rows[pair]].tobytes() + b"|" + cols[pair].tobytes()
        if key in previous:
            matched_flat, matched_cols = previous[key]
        else:
            matched_rows, matched_cols = _assignment(rows[pair], cols[pair], cost[pair], outlier)
            matched_flat = pred.flat[matched_rows]
        if solved is not None:
            solved[key] = matched_flat, matched_cols
        partner[np.searchsorted(pred.flat, matched_flat)] = matched_cols
    return partner


def _assignment(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, outlier: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs `(rows[m], cols[m])` of a minimum-cost assignment of the pixels of one component: each pixel is
    matched along one of the `(E,)` pairs at its integer `cost` or left to an outlier at `outlier`.

    With k pairs matched the cost is `sum cost + outlier x (n1 + n2 - k)` (an unmatched pixel takes an outlier
    node; the k outlier nodes freed by the matched pairs pair up with each other at `outlier` each), i.e. up to a
    constant `sum (cost - outlier)`: scipy's LAPJVsp minimises it over the pixels of the smaller side, each given
    a private outlier column, which a full matching of that side may take (`+ 1` everywhere: the solver takes
    non-zero weights, and a full matching has one edge per row).
    """
    left, i = np.unique(rows, return_inverse=True)
    right, j = np.unique(cols, return_inverse=True)
    transposed = len(right) < len(left)
    if transposed:
        (left, i), (right, j) = (right, j), (left, i)
    n_left, n_right = len(left), len(right)
    own = np.arange(n_left)
    graph = csr_matrix(
        (
            np.r_[cost + 1, np.full(n_left, outlier + 1)].astype(np.float64),
            (np.r_[i, own], np.r_[j, n_right + own]),
        ),
        (n_left, n_right + n_left),
    )
    a, b = min_weight_full_bipartite_matching(graph)
    real = b < n_right
    a, b = left[a[real]], right[b[real]]
    return (b, a) if transposed else (a, b)


def match_edges(pred: np.ndarray, truth: np.ndarray, max_dist: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches between the `True` pixels of two `(H, W)` bool maps at most `max_dist` pixels apart.

    Returns `(matched_pred, matched_truth)`, `(H, W)` bool each: the pixels of `pred` / `truth` that have a partner
    in the benchmark's minimum-cost assignment (`correspondPixels`; both hold the same number of pixels).
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"match_edges takes two (H, W) maps of one size, got {pred.shape} and {truth.shape}.")
    return _matched_maps(_Pixels(pred), _Pixels(truth), pred.shape, max_dist)


def _matched_maps(
    pred: _Pixels, truth: _Pixels, shape: tuple[int, ...], max_dist: float
) -> tuple[np.ndarray, np.ndarray]:
    partner = _partners(pred, truth, max_dist)
    rows = np.flatnonzero(partner >= 0)
    matched_pred, matched_truth = np.zeros(shape, bool), np.zeros(shape, bool)
    matched_pred[tuple(pred.points[rows].T)] = True
    matched_truth[tuple(truth.points[partner[rows]].T)] = True
    return matched_pred, matched_truth


def image_counts(
    edges: np.ndarray, boundaries: np.ndarray, levels: np.ndarray, max_dist: float = MAX_DIST, thinning: bool = True
) -> np.ndarray:
    """`edgesEvalImg`'s counts for one image: `(T, 4)` int64 rows `[cntR, sumR, cntP, sumP]`, one per threshold.

    Args:
        edges: `(H, W)` edge map in [0, 1].
        boundaries: `(K, H, W)` bool, the K annotators' boundary maps.
        levels: `(T,)` thresholds (`thresholds()`); a pixel is an edge at t when its value is >= t.
        max_dist: the match tolerance as a fraction of the image diagonal.
        thinning: thin each binarised map first (the benchmark does).
    """
    edges, boundaries = np.asarray(edges, np.float64), np.asarray(boundaries, bool)
    if edges.ndim != 2 or boundaries.ndim != 3 or boundaries.shape[1:] != edges.shape or not len(boundaries):
        raise ValueError(
            f"image_counts takes an (H, W) edge map and (K >= 1, H, W) boundaries, got {edges.shape} and "
            f"{boundaries.shape}."
        )
    radius = max_dist * float(np.hypot(*edges.shape))
    counts = np.zeros((len(levels), 4), np.int64)
    annotators = [_Pixels(truth) for truth in boundaries]  # the same at every threshold
    components: list[dict] = [{} for _ in annotators]  # each annotator's assignments at the previous threshold
    previous = None
    for k, level in enumerate(levels):
        binary = edges >= max(float(level), np.finfo(float).eps)
        if previous is not None and np.array_equal(binary, previous):  # no value between the two thresholds
            counts[k] = counts[k - 1]
            continue
        previous = binary
        if thinning:
            binary = thin_edges(binary)
        pred = _Pixels(binary)
        any_matched = np.zeros(len(pred.points), bool)
        for truth, solved in zip(annotators, components):
            partner = _partners(pred, truth, radius, solved)
            any_matched |= partner >= 0
            counts[k, 0] += int((partner >= 0).sum())
        counts[k, 1:] = boundaries.sum(), any_matched.sum(), binary.sum()
    return counts


def _rpf(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`edgesEvalDir`'s computeRPF: recall, precision, F from `[..., 4]` counts (0 where a count sum is 0)."""
    eps = np.finfo(float).eps
    recall = counts[..., 0] / np.maximum(eps, counts[..., 1])
    precision = counts[..., 2] / np.maximum(eps, counts[..., 3])
    return recall, precision, 2 * precision * recall / np.maximum(eps, precision + recall)


def _best_f(recall: np.ndarray, precision: np.ndarray) -> float:
    """`edgesEvalDir`'s findBestRPF: the best F over 100 linear steps between each pair of adjacent thresholds."""
    if len(recall) == 1:
        return float(_rpf(np.array([recall[0], 1.0, precision[0], 1.0]))[2])
    a = np.linspace(0, 1, 100)[None]
    r = recall[1:, None] * a + recall[:-1, None] * (1 - a)
    p = precision[1:, None] * a + precision[:-1, None] * (1 - a)
    return float((2 * p * r / np.maximum(np.finfo(float).eps, p + r)).max())


def _last_unique(values: np.ndarray) -> np.ndarray:
    """Indices of the sorted unique values, each at its LAST occurrence (MATLAB's legacy `unique`, which the
    toolbox was written for)."""
    _, last = np.unique(values[::-1], return_index=True)
    return len(values) - 1 - last


def summarize(per_image: np.ndarray) -> dict[str, float]:
    """ODS, OIS, AP, R50 from per-image counts `(I, T, 4)` (`image_counts` of each image), as `edgesEvalDir`.

    ODS: the best F of the dataset's summed counts, interpolated between thresholds. OIS: the F of the counts summed
    at each image's own best threshold. AP: the dataset's precision interpolated at recalls 0, 0.01, ..., 1 (NaN
    outside the curve's range dropped), summed / 100. R50: the recall interpolated at 50% precision (or at the
    lowest precision reached, if above).

    Two departures from `edgesEvalDir`, both at the ends of the range: R50 is 0 when no threshold reaches 50%
    precision (no recall is reached at that precision; `edgesEvalDir` gives NaN), and a curve of a single distinct
    recall (e.g. a binary edge map, every threshold the same pixels) has AP = precision x recall, the area of its
    step, where `edgesEvalDir` gives 0; so that a perfect prediction scores AP = 1.
    """
    per_image = np.asarray(per_image, np.int64)
    if per_image.ndim != 3 or per_image.shape[2] != 4 or not per_image.shape[0]:
        raise ValueError(f"summarize takes (images >= 1, thresholds, 4) counts, got shape {per_image.shape}.")
    recall, precision, _ = _rpf(per_image.sum(0))
    ods = _best_f(recall, precision)
    best = _rpf(per_image)[2].argmax(1)  # each image's best threshold (the first, on ties, as MATLAB's max)
    ois = float(_rpf(per_image[np.arange(len(per_image)), best].sum(0))[2])
    k = _last_unique(recall)[::-1]
    r, p = recall[k], precision[k]
    if len(r) > 1:
        order = np.argsort(r)
        curve = np.interp(np.linspace(0, 1, 101), r[order], p[order], left=np.nan, right=np.nan)
        ap = float(np.nansum(curve) / 100)
    else:
        ap = float(r[0] * p[0])
    o = _last_unique(precision)
    if precision[o].max() < 0.5:
        r50 = 0.0
    elif len(o) == 1:
        r50 = float(recall[o[0]])
    else:
        r50 = float(np.interp(max(precision[o[0]], 0.5), precision[o], recall[o]))
    return {"ODS": ods, "OIS": ois, "AP": ap, "R50": r50}


class EdgeBenchmark(Metric):
    """The benchmark as a torchmetrics Metric: `update(edges, boundaries)` per image, `compute()` -> ODS, OIS, AP,
    R50 (summed over the processes under DDP: every image's counts are gathered)."""

    full_state_update = False

    def __init__(self, n_thresholds: int = 99, max_dist: float = MAX_DIST, thinning: bool = True) -> None:
        super().__init__()
        if not (isinstance(max_dist, (int, float)) and not isinstance(max_dist, bool) and 0 < max_dist < 1):
            raise ValueError(
                f"max_dist={max_dist!r} must be a fraction of the image diagonal in (0, 1) (BSDS: 0.0075)."
            )
        self.levels = thresholds(n_thresholds)
        self.max_dist, self.thinning = float(max_dist), bool(thinning)
        self.add_state("counts", default=[], dist_reduce_fx="cat")

    def update(self, edges: np.ndarray, boundaries: np.ndarray) -> None:
        """One image: `edges` `(H, W)` in [0, 1], `boundaries` `(K, H, W)` bool."""
        counts = image_counts(edges, boundaries, self.levels, self.max_dist, self.thinning)
        self.counts.append(torch.as_tensor(counts, device=self.device)[None])

    def compute(self) -> dict[str, float]:
        """ODS, OIS, AP, R50 (`summarize`); all NaN before any image."""
        counts = (
            self.counts if isinstance(self.counts, torch.Tensor) else (torch.cat(self.counts) if self.counts else None)
        )
        if counts is None or not len(counts):
            return dict.fromkeys(("ODS", "OIS", "AP", "R50"), float("nan"))
        return summarize(counts.cpu().numpy())

"""The BSDS500 matching is `correspondPixels`' minimum-cost assignment: checked against a brute-force solve of the
benchmark's complete assignment graph (outlier nodes included) on small maps, and against the original C++
(pyEdgeEval) on generated 321x481 images (tests/fixtures/bsds_counts)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from metrics.edges import (
    MULTIPLIER,
    OUTLIER_COST,
    _partners,
    _Pixels,
    image_counts,
    match_edges,
    summarize,
    thresholds,
)
from tests.fixture_paths import BSDS_COUNTS, require


def brute_force_cost(pred: np.ndarray, truth: np.ndarray, radius: float) -> tuple[int, int]:
    """`matchEdgeMaps`' assignment with every outlier link present, as one dense matrix: left = the n1 predicted
    pixels then n2 outlier nodes, right = the n2 boundary pixels then n1 outlier nodes. Returns (cost, pairs)."""
    p, t = np.argwhere(pred), np.argwhere(truth)
    n1, n2 = len(p), len(t)
    outlier = int(np.ceil(OUTLIER_COST * radius * MULTIPLIER))
    big = 10**9  # no link
    cost = np.full((n1 + n2, n2 + n1), outlier, np.int64)
    d2 = ((p[:, None] - t[None]) ** 2).sum(-1)
    cost[:n1, :n2] = np.where(d2 <= radius * radius, np.rint(np.sqrt(d2) * MULTIPLIER), big)
    cost[n1:, :n2] = np.where(np.eye(n2, dtype=bool), outlier, big)  # boundary pixel j alone: its own outlier
    cost[:n1, n2:] = np.where(np.eye(n1, dtype=bool), outlier, big)  # predicted pixel i alone: its own outlier
    rows, cols = linear_sum_assignment(cost)
    assert (cost[rows, cols] < big).all()
    return int(cost[rows, cols].sum()), int(((rows < n1) & (cols < n2)).sum())


def assignment_cost(pred: np.ndarray, truth: np.ndarray, radius: float) -> tuple[int, int]:
    """The same cost for this module's matching."""
    p, t = _Pixels(pred), _Pixels(truth)
    partner = _partners(p, t, radius)
    outlier = int(np.ceil(OUTLIER_COST * radius * MULTIPLIER))
    matched = partner >= 0
    d = np.sqrt(((p.points[matched] - t.points[partner[matched]]) ** 2).sum(1))
    k = int(matched.sum())
    # the k pairs, the unmatched pixels of both maps, and the k outlier-outlier pairs the matched ones free
    return int(np.rint(d * MULTIPLIER).sum()) + outlier * (len(p.points) + len(t.points) - k), k


@pytest.mark.parametrize("seed", range(12))
def test_the_matching_is_a_minimum_cost_assignment(seed: int) -> None:
    """On small random maps (clustered so that the pairs form large components with competing matches), the cost
    equals the brute-force minimum over the benchmark's complete graph (every outlier link present)."""
    rng = np.random.default_rng(seed)
    shape = (16, 20)
    pred = rng.random(shape) < rng.uniform(0.05, 0.3)
    truth = rng.random(shape) < rng.uniform(0.05, 0.3)
    radius = float(rng.choice([1.0, 1.5, 2.2, 3.1]))
    assert assignment_cost(pred, truth, radius) == brute_force_cost(pred, truth, radius)


def test_the_minimum_cost_can_match_fewer_pixels_than_possible() -> None:
    """Along a long chain one more pair can cost more in distance than the outlier it saves; the benchmark then
    leaves two pixels unmatched where a maximum matching would match them all."""
    # predicted pixels (0, c) for c < n, boundary pixels (2, c) for 1 <= c <= n, tolerance 2.3: straight down (2 px)
    # matches n - 1 pairs, the diagonal (sqrt 5 = 2.24 px) all n; the n x 0.24 px more the diagonal costs exceed
    # the outlier (100 x 2.3 px) it saves once n > 950
    n, radius = 1000, 2.3
    pred, truth = np.zeros((5, n + 1), bool), np.zeros((5, n + 1), bool)
    pred[0, :n] = True
    truth[2, 1:] = True
    cost, k = assignment_cost(pred, truth, radius)
    assert (cost, k) == brute_force_cost(pred, truth, radius)
    assert k == n - 1
    matched_pred, matched_truth = match_edges(pred, truth, radius)
    assert not matched_pred[0, 0] and not matched_truth[2, n] and matched_pred.sum() == n - 1


def test_counts_against_the_original_correspond_pixels() -> None:
    """pyEdgeEval 0.2.8's build of the original C++ on 10 generated 321x481 images (3-5 annotators, 15 thresholds,
    the same thinning; tests/fixtures/README.md). The C++ links each pixel to 6 random outlier nodes drawn from a
    clock-seeded generator (two of its runs differ by a few pairs), and with those its assignment costs more than
    the minimum of the complete graph, which this module finds (see `test_the_matching_is_a_minimum_cost_assignment`):
    here it always matches at least as many boundary pixels (0 to 23 more of 3,000 to 22,000 per image and
    threshold; the predicted pixels matched to some annotator differ by -13 to +2), the summary by less than 5e-4."""
    require(BSDS_COUNTS / "inputs.npz", BSDS_COUNTS / "pyedgeeval_counts.json")
    reference = json.loads((BSDS_COUNTS / "pyedgeeval_counts.json").read_text())
    with np.load(BSDS_COUNTS / "inputs.npz", allow_pickle=False) as inputs:
        edges, width = inputs["edges"], int(inputs["width"])
        truth = np.unpackbits(inputs["truth_bits"], axis=-1, count=width).astype(bool)
        splits = np.cumsum(inputs["annotators"])[:-1]
    theirs = np.array(reference["counts"], np.int64)
    levels = thresholds(reference["thresholds"])
    ours = np.stack(
        [image_counts(e / 255.0, t, levels, reference["max_dist"]) for e, t in zip(edges, np.split(truth, splits))]
    )
    assert ours.shape == theirs.shape
    assert (ours[..., [1, 3]] == theirs[..., [1, 3]]).all()  # the same thinned maps and boundary pixels
    extra = ours[..., 0] - theirs[..., 0]
    assert (extra >= 0).all() and (extra <= 0.01 * ours[..., 0]).all()
    assert (np.abs(ours[..., 2] - theirs[..., 2]) <= 0.01 * ours[..., 2]).all()  # which pixels: up to 13
    mine, original = summarize(ours), summarize(theirs)
    assert all(abs(mine[k] - original[k]) < 5e-4 for k in mine), (mine, original)
    assert abs(original["ODS"] - reference["pyedgeeval_ODS"]) < 1e-12  # the summary as pyEdgeEval computes it
    assert abs(original["OIS"] - reference["pyedgeeval_OIS"]) < 1e-12

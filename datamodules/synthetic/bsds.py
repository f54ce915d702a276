"""Generated BSDS500-like inputs for timing and checking the edge benchmark: per image a soft 8-bit edge map and 3-5
"human" boundary maps of 321x481 pixels (BSDS500's size). numpy and scipy only, so that another environment (one
with pyEdgeEval) can import it too.

The regions are the level sets of a smooth random field; each annotator draws the same field's boundaries with
its own smooth jitter (every second one with some levels left out, as a coarser annotator); the prediction is the
boundaries of a third jittered field, blurred into a soft ridge of uneven strength, with weaker blob-like clutter.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

SIZE = (321, 481)
"""BSDS500's image size (landscape), rows x columns."""


def region_boundaries(labels: np.ndarray) -> np.ndarray:
    """`(H, W)` bool: where a pixel's right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1] |= labels[:-1] != labels[1:]
    return edge


def synthetic_image(seed: int, size: tuple[int, int] = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One generated image: `(edges, truth)`, `(H, W)` uint8 (the prediction as the benchmark reads a PNG, value / 255)
    and `(K, H, W)` bool, K in 3..5 annotators. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.standard_normal(size), 28)
    base /= base.std()
    levels = np.sort(rng.uniform(-1.5, 1.5, int(rng.integers(2, 5))))
    truth = []
    for annotator in range(int(rng.integers(3, 6))):
        jitter = 0.6 * gaussian_filter(rng.standard_normal(size), 6)
        kept = levels if annotator % 2 == 0 else levels[rng.random(len(levels)) < 0.7]
        truth.append(region_boundaries(np.digitize(base + jitter, kept)))
    drawn = region_boundaries(np.digitize(base + 0.5 * gaussian_filter(rng.standard_normal(size), 8), levels))
    strength = (0.4 + 1.2 * gaussian_filter(rng.random(size), 10)).clip(0, 1)
    soft = np.exp(-(distance_transform_edt(~drawn) ** 2) / 4) * strength
    clutter = gaussian_filter(rng.standard_normal(size), 2)
    soft = np.maximum(soft, 0.5 * (clutter / clutter.max()).clip(0, 1))
    return np.round(soft.clip(0, 1) * 255).astype(np.uint8), np.stack(truth)

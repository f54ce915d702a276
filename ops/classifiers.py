"""Classifiers over frozen features, as pure functions: support features and labels + query features -> scores.

Every method takes support `(S, C)`, support labels `(S,)` in 0..n_classes-1, query `(M, C)` and returns scores
`(M, n_classes)` whose argmax is the prediction.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.linear_model import LogisticRegression
from torch import Tensor


def check_episode(support: Tensor, support_labels: Tensor, query: Tensor, n_classes: int) -> None:
    """ValueError naming the argument unless support `(S, C)` with S >= 1, integer support_labels `(S,)` in
    0..n_classes-1 and query `(M, C)` fit together (shape checks and one min/max over the S labels)."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes={n_classes!r}: give the number of classes, a whole number of at least 1.")
    for name, value in (("support", support), ("support_labels", support_labels), ("query", query)):
        if not isinstance(value, Tensor):
            raise ValueError(f"{name} must be a torch Tensor, not {type(value).__name__}.")  # noqa: TRY004 (the API raises ValueError)
    if support.ndim != 2 or query.ndim != 2 or support.shape[1] != query.shape[1] or len(support) == 0:
        raise ValueError(
            f"support {tuple(support.shape)} and query {tuple(query.shape)} must be (S, C) and (M, C) feature "
            "matrices of the same width C, with at least one support row."
        )
    if support_labels.shape != (len(support),) or support_labels.dtype.is_floating_point:
        raise ValueError(
            f"support_labels ({support_labels.dtype} {tuple(support_labels.shape)}) must be integer class ids, one "
            f"per support row: shape ({len(support)},)."
        )
    low, high = int(support_labels.min()), int(support_labels.max())
    if low < 0 or high >= n_classes:
        raise ValueError(
            f"support_labels hold class ids {low}..{high}, outside 0..{n_classes - 1} for n_classes={n_classes}: "
            "number the classes from 0, or raise n_classes."
        )


def centre_and_project(
    support: Tensor, support_labels: Tensor, query: Tensor, n_classes: int, mean: Tensor | None = None
) -> Tensor:
    """SimpleShot (CL2N): subtract `mean` (the support set's when None), L2-normalise, nearest class centroid.

    Returns minus the Euclidean distance of each query to each centroid of the normalised support features.
    """
    check_episode(support, support_labels, query, n_classes)
    mean = support.mean(0) if mean is None else mean
    support, query = F.normalize(support - mean, dim=-1), F.normalize(query - mean, dim=-1)
    one_hot = F.one_hot(support_labels, n_classes).T.to(support.dtype)
    centroids = one_hot @ support / one_hot.sum(1, keepdim=True)
    return -torch.cdist(query, centroids)


def cosine_topk(bank: Tensor, query: Tensor, k: int, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """The k most cosine-similar rows of bank `(N, C)` for each query `(M, C)`: similarities and indices, both `(M, k)`."""
    bank = F.normalize(bank, dim=-1)
    found = [torch.topk(F.normalize(chunk, dim=-1) @ bank.T, k, dim=1) for chunk in query.split(chunk_size)]
    return torch.cat([f.values for f in found]), torch.cat([f.indices for f in found])


def weighted_votes(similarities: Tensor, neighbour_labels: Tensor, n_classes: int, temperature: float) -> Tensor:
    """DINOv2's k-NN votes: each neighbour adds exp(similarity / T) to its class. `(M, k)` twice -> `(M, n_classes)`."""
    votes = torch.zeros(similarities.shape[0], n_classes, dtype=similarities.dtype, device=similarities.device)
    return votes.scatter_add_(1, neighbour_labels, (similarities / temperature).exp())


def cosine_knn(
    support: Tensor, support_labels: Tensor, query: Tensor, n_classes: int, k: int = 10, temperature: float = 0.07
) -> Tensor:
    """Weighted k-NN on cosine similarity (k capped at the support size); scores are each class's share of the votes."""
    check_episode(support, support_labels, query, n_classes)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} neighbours: give a whole number of at least 1.")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature!r}: give a finite number above 0 (DINOv2 uses 0.07).")
    similarities, indices = cosine_topk(support, query, min(k, len(support)))
    votes = weighted_votes(similarities, support_labels[indices], n_classes, temperature)
    return votes / votes.sum(1, keepdim=True)


def logistic_regression(
    support: Tensor, support_labels: Tensor, query: Tensor, n_classes: int, C: float = 1.0, max_iter: int = 1000
) -> Tensor:
    """scikit-learn's multinomial logistic regression on the L2-normalised features; scores are class probabilities."""
    check_episode(support, support_labels, query, n_classes)
    model = LogisticRegression(C=C, max_iter=max_iter).fit(
        F.normalize(support, dim=-1).cpu().numpy(), support_labels.cpu().numpy()
    )
    probs = np.zeros((len(query), n_classes), dtype=np.float32)
    if len(query):  # scikit-learn refuses to predict for no rows; no queries give no scores, as the other methods
        probs[:, model.classes_] = model.predict_proba(F.normalize(query, dim=-1).cpu().numpy())
    return torch.from_numpy(probs)


def mean_confidence_interval(accuracies: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean of per-episode accuracies and the half-width of its normal confidence interval: z * std(ddof=1) / sqrt(n).

    The half-width is NaN for a single episode (no spread to estimate): reported as null, never as a number.
    """
    if len(accuracies) < 2:
        return float(np.mean(accuracies)), math.nan
    z = stats.norm.ppf(0.5 + confidence / 2)
    return float(np.mean(accuracies)), float(z * stats.sem(accuracies))


DEGENERATE_SPREAD = 1e-3
"""`feature_spread` below which features count as collapsed (random ViT-S/14 weights: about 2e-5)."""


def feature_spread(features: Tensor) -> float:
    """The median distance of the L2-normalised features `(N, C)` to their mean: 0 when every image has the same
    direction, up to about 1 for spread-out features."""
    unit = F.normalize(features.double(), dim=-1)
    return float((unit - unit.mean(0)).norm(dim=1).median())


def collapsed_features_warning(spread: float, n_way: int) -> str:
    """What collapsed features (`feature_spread` under `DEGENERATE_SPREAD`) do to the methods, for a warning."""
    return (
        f"The images' features are nearly identical (median distance {spread:.1e} of the L2-normalised features to "
        "their mean), as with random backbone weights: the backbone tells the images apart by almost nothing. "
        "logistic_regression fits on the normalised features without centring them, so its regularised fit stays at "
        f"zero weights: every class gets probability 1/{n_way}, every query is predicted as the first class, and the "
        f"accuracy is exactly {100 / n_way:.2f} % with a 0 confidence interval (chance, not a bug). centre_and_project "
        "subtracts the mean first and can still find the small differences."
    )

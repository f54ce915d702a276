"""Mean average precision of the revisited Oxford / Paris protocol (Radenović et al., CVPR 2018).

Each query's ground truth lists database images as `easy`, `hard` or `junk`; a setting says which count as positives
and which are ignored (removed from the ranking before precision is computed):

| setting | positives | ignored |
| --- | --- | --- |
| Easy (E) | easy | junk, hard |
| Medium (M) | easy, hard | junk |
| Hard (H) | hard | junk, easy |

A query with no positive in a setting is left out of that setting's mean. AP is the area under the precision-recall
curve accumulated by trapezoids over the recall steps, as the protocol's reference code computes it; nothing in
torchmetrics does the junk removal or this interpolation, hence this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

SETTINGS = {"E": "easy", "M": "medium", "H": "hard"}


def setting_ground_truth(query: Mapping[str, np.ndarray], setting: str) -> tuple[np.ndarray, np.ndarray]:
    """The (positives, ignored) database ids of one query's ground truth (`easy`, `hard`, `junk`) in `setting`."""
    easy, hard, junk = (np.asarray(query[key], dtype=np.int64).ravel() for key in ("easy", "hard", "junk"))
    if setting == "E":
        return easy, np.concatenate([junk, hard])
    if setting == "M":
        return np.concatenate([easy, hard]), junk
    if setting == "H":
        return hard, np.concatenate([junk, easy])
    raise ValueError(f"setting={setting!r} is not one of {', '.join(SETTINGS)} (Easy, Medium, Hard).")


def positive_ranks(ranking: np.ndarray, positives: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """0-based ranks of the positives in `ranking` (database ids, best first) once the ignored ids are taken out.

    A positive's rank is its position less the number of ignored ids ranked before it.
    """
    ranking = np.asarray(ranking).ravel()
    is_ignored = np.isin(ranking, ignored)
    ignored_before = np.cumsum(is_ignored) - is_ignored
    at = np.flatnonzero(np.isin(ranking, positives))
    return at - ignored_before[at]


def average_precision(ranks: np.ndarray, n_positives: int) -> float:
    """AP of positives found at 0-based `ranks` (increasing) out of `n_positives`, by trapezoids over recall steps.

    The j-th positive found (0-based) at rank r moves recall by 1 / n_positives; precision over that step goes from
    j / r (1 at r = 0) to (j + 1) / (r + 1), and the step adds their mean times its width. Positives never ranked add
    nothing.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    found = np.arange(len(ranks), dtype=np.float64)
    before = np.divide(found, ranks, out=np.ones_like(ranks), where=ranks > 0)
    after = (found + 1) / (ranks + 1)
    return float(((before + after) / 2).sum() / n_positives)


def precision_at(ranks: np.ndarray, kappas: Sequence[int]) -> np.ndarray:
    """The protocol's precision at each k in `kappas`: positives in the first min(k, last positive's rank) places
    (1-based ranks), over that many places."""
    ranks = np.asarray(ranks) + 1
    cut = np.minimum(ranks.max(), np.asarray(kappas))
    return (ranks[None, :] <= cut[:, None]).sum(1) / cut


def revisited_map(
    rankings: np.ndarray, ground_truth: Sequence[Mapping[str, np.ndarray]], kappas: Sequence[int] = (1, 5, 10)
) -> dict[str, dict[str, object]]:
    """mAP and mP@k of every setting.

    Args:
        rankings: `(Q, K)` database ids per query, best first (K = the database size, or fewer: unranked positives
            then count as never found).
        ground_truth: per query a mapping with `easy`, `hard`, `junk` database-id arrays.
        kappas: the k of mP@k.

    Returns:
        {setting: {"mAP": float, "mP@k": [float] * len(kappas), "AP": (Q,) float64 (NaN where the query has no
        positive), "queries": the number averaged}}; mAP and mP@k are NaN when no query has a positive.
    """
    rankings = np.asarray(rankings)
    if rankings.ndim != 2 or len(rankings) != len(ground_truth):
        raise ValueError(
            f"rankings of shape {rankings.shape} do not match {len(ground_truth)} queries: give one row per query."
        )
    results: dict[str, dict[str, object]] = {}
    for setting in SETTINGS:
        aps = np.full(len(ground_truth), np.nan)
        prs = np.full((len(ground_truth), len(kappas)), np.nan)
        for q, (ranking, query) in enumerate(zip(rankings, ground_truth)):
            positives, ignored = setting_ground_truth(query, setting)
            if len(positives) == 0:
                continue
            ranks = positive_ranks(ranking, positives, ignored)
            aps[q] = average_precision(ranks, len(positives))
            prs[q] = precision_at(ranks, kappas) if len(ranks) else 0.0
        counted = ~np.isnan(aps)
        results[setting] = {
            "mAP": float(aps[counted].mean()) if counted.any() else float("nan"),
            "mP@k": [float(v) for v in prs[counted].mean(0)] if counted.any() else [float("nan")] * len(kappas),
            "AP": aps,
            "queries": int(counted.sum()),
        }
    return results

"""N-way K-shot episodes: drawn with a seed, or read from / written to a JSON file of image paths."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError


@dataclass(frozen=True)
class Episode:
    """One episode as dataset indices; row i of both arrays is the episode's class i.

    support: (n_way, k_shot) int64.
    query: (n_way, n_queries) int64.
    """

    support: np.ndarray
    query: np.ndarray

    @property
    def n_way(self) -> int:
        return self.support.shape[0]

    @property
    def k_shot(self) -> int:
        return self.support.shape[1]


def sample_episodes(labels: np.ndarray, n_way: int, k_shot: int, n_queries: int, n_episodes: int, seed: int) -> list[Episode]:
    """`n_episodes` episodes over images with class ids `labels` (N,): n_way classes, then k_shot + n_queries images each.

    The same seed gives the same episodes; every class in `labels` must have k_shot + n_queries images.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    episodes = []
    for _ in range(n_episodes):
        chosen = rng.choice(classes, size=n_way, replace=False)
        picks = np.stack([rng.choice(members[c], size=k_shot + n_queries, replace=False) for c in chosen])
        episodes.append(Episode(support=picks[:, :k_shot], query=picks[:, k_shot:]))
    return episodes


def save_episodes(path: Path, episodes: list[Episode], names: list[str]) -> None:
    """Write episodes as JSON lists of image names (`names[i]` names dataset index i), through a rename."""
    payload = [{"support": [[names[i] for i in row] for row in ep.support], "query": [[names[i] for i in row] for row in ep.query]} for ep in episodes]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"episodes": payload}))
    tmp.replace(path)


def load_episodes(path: Path, names: list[str]) -> list[Episode]:
    """Episodes from a file written by `save_episodes`; every name must be one of `names` (the dataset's images)."""
    try:
        payload = json.loads(Path(path).read_text())["episodes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"Cannot read episodes file {path} ({e}): it must be JSON {{\"episodes\": [{{\"support\": [[image, ...], ...], \"query\": [...]}}, ...]}} as the runs write it.") from None
    index = {name: i for i, name in enumerate(names)}
    episodes = []
    for number, ep in enumerate(payload):
        if missing := [n for row in ep["support"] + ep["query"] for n in row if n not in index]:
            raise DatasetError(f"Episode {number} of {path} names image {missing[0]!r}, which is not in the dataset: point data.root at the folder the episodes were drawn from.")
        try:
            support, query = (np.array([[index[n] for n in row] for row in ep[key]], dtype=np.int64) for key in ("support", "query"))
        except ValueError:
            support = query = np.empty(0)
        if support.ndim != 2 or query.ndim != 2 or len(support) != len(query):
            raise DatasetError(f"Episode {number} of {path} is ragged: each of its n_way classes needs the same number of support and of query images.")
        episodes.append(Episode(support=support, query=query))
    if not episodes:
        raise DatasetError(f"Episodes file {path} holds no episode.")
    if len({(ep.support.shape, ep.query.shape) for ep in episodes}) > 1:
        raise DatasetError(f"The episodes of {path} differ in n_way, k_shot or queries: write one file per protocol.")
    return episodes

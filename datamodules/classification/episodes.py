"""N-way K-shot episodes: drawn with a seed, or read from / written to a JSON file of image paths."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.errors import DatasetError
from utils.errors import option
from utils.results import write_json


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


def sample_episodes(
    labels: np.ndarray, n_way: int, k_shot: int, n_queries: int, n_episodes: int, seed: int
) -> list[Episode]:
    """`n_episodes` episodes over images with class ids `labels` (N,): n_way classes, then k_shot + n_queries images each.

    The same seed gives the same episodes; every class in `labels` must have k_shot + n_queries images.
    """
    labels = np.asarray(labels)
    for name, value in (("n_way", n_way), ("k_shot", k_shot), ("n_queries", n_queries), ("n_episodes", n_episodes)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or value < (0 if name == "n_queries" else 1)
        ):
            least = 0 if name == "n_queries" else 1
            raise DatasetError(f"{option('data', name, value)}: give a whole number of at least {least}.")
    if labels.ndim != 1:
        raise DatasetError(f"labels must be one class id per image, shape (N,); got shape {labels.shape}.")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if n_way > len(classes):
        raise DatasetError(
            f"{option('data', 'n_way', n_way)} classes per episode, but the labels hold {len(classes)} class(es). "
            f"Fix: {option('data', 'n_way', len(classes))} or fewer, or add classes."
        )
    if (need := k_shot + n_queries) > counts.min():
        small = ", ".join(f"{c} ({n})" for c, n in zip(classes, counts) if n < need)
        raise DatasetError(
            f"{option('data', 'k_shot', k_shot)} + {option('data', 'n_queries', n_queries)} = {need} images per "
            f"class, but some classes have fewer (class id: images): {small}. Fix: lower k_shot or n_queries, or "
            "drop those classes."
        )
    members = {c: np.flatnonzero(labels == c) for c in classes}
    episodes = []
    for _ in range(n_episodes):
        chosen = rng.choice(classes, size=n_way, replace=False)
        picks = np.stack([rng.choice(members[c], size=k_shot + n_queries, replace=False) for c in chosen])
        episodes.append(Episode(support=picks[:, :k_shot], query=picks[:, k_shot:]))
    return episodes


def save_episodes(path: Path, episodes: list[Episode], names: list[str]) -> None:
    """Write episodes as JSON lists of image names (`names[i]` names dataset index i), through a rename."""
    payload = [
        {
            "support": [[names[i] for i in row] for row in ep.support],
            "query": [[names[i] for i in row] for row in ep.query],
        }
        for ep in episodes
    ]
    write_json(path, {"episodes": payload}, indent=None)


EPISODES_FORMAT = (
    'It must be JSON {"episodes": [{"support": [[image, ...], ...], "query": [[image, ...], ...]}, ...]}, one row of '
    "image paths (relative to data.root) per class, as runs write it (episodes_<N>way_<K>shot.json)."
)


def check_protocol(n_way: int, k_shot: int, n_queries: int, file: Path | None = None, episode: int = 0) -> None:
    """Refuse an episode protocol that cannot measure anything: the data options, or episode `episode` of `file`.

    Raises:
        DatasetError: fewer than 2 classes (1-way is always right), no support image (nothing to learn from: the
            methods guess) or no query image (nothing to score: the accuracy is 0 / 0).
    """
    where = "" if file is None else f"Episode {episode} of episodes file {file}: "
    problems = [
        ("n_way", n_way, 2, 5, "an episode needs at least 2 classes to tell apart (1-way is always right)"),
        ("k_shot", k_shot, 1, 1, "every class needs a support image to learn from (with none, the methods guess)"),
        ("n_queries", n_queries, 1, 15, "every class needs a query image to score (with none, accuracy is 0 / 0)"),
    ]
    for name, value, least, usual, why in problems:
        if value < least:
            named = f"{name}={value}" if file is not None else option("data", name, value)
            fix = "rewrite the file, or drop data.episodes_file" if file else option("data", name, usual)
            raise DatasetError(f"{where}{named}, but {why}. Fix: {fix}.")


def _rows(episode: Any, key: str, number: int, path: Path) -> list[list[str]]:
    """An episode's "support" or "query": a non-empty list of lists of image names, checked."""
    rows = episode.get(key) if isinstance(episode, dict) else None
    if not (
        isinstance(rows, list)
        and rows
        and all(isinstance(row, list) and all(isinstance(name, str) for name in row) for row in rows)
    ):
        raise DatasetError(
            f"Episode {number} of episodes file {path} has no valid {key!r} (a list of rows of image names, one row "
            f"per class). {EPISODES_FORMAT} Fix: rewrite the file, or drop data.episodes_file to sample episodes."
        )
    return rows


def check_episode(episode: Episode, labels: np.ndarray, names: list[str], path: Path, number: int) -> None:
    """Refuse episode `number` of `path` unless it is a true N-way episode of the images' class ids `labels` (N,):
    each row's supports of one class, its queries of that class and none of them among the episode's supports, and
    the rows of N different classes (else the accuracy measures something else and nothing says so)."""
    where = f"Episode {number} of episodes file {path}"
    fix = (
        "Fix: rewrite the episode (a run writes a valid file: drop data.episodes_file, and the run saves its "
        "episodes), or check that data.root is the folder the episodes were drawn from."
    )
    support_set = set(episode.support.ravel().tolist())
    if shared := [i for i in episode.query.ravel().tolist() if i in support_set]:
        raise DatasetError(f"{where} has image {names[shared[0]]!r} both as a support and as a query. {fix}")
    classes = []
    for row, (support, query) in enumerate(zip(episode.support, episode.query)):
        if len(kinds := np.unique(labels[support])) > 1:
            raise DatasetError(
                f"{where}: the supports of row {row} are of {len(kinds)} classes ({', '.join(names[i] for i in support)}"
                f"); each row holds one class's images. {fix}"
            )
        if stray := [i for i in query if labels[i] != kinds[0]]:
            raise DatasetError(
                f"{where}: query {names[stray[0]]!r} of row {row} is not of that row's class (its supports are "
                f"{', '.join(names[i] for i in support)}). {fix}"
            )
        classes.append(int(kinds[0]))
    if len(set(classes)) < len(classes):
        row = next(r for r, c in enumerate(classes) if classes.index(c) != r)
        raise DatasetError(
            f"{where} is meant to be {len(classes)}-way, but rows {classes.index(classes[row])} and {row} are of the "
            f"same class ({names[episode.support[row, 0]]!r}). {fix}"
        )


def load_episodes(path: Path, names: list[str], labels: np.ndarray) -> list[Episode]:
    """Episodes from a file written by `save_episodes`; every name must be one of `names` (the dataset's images,
    whose class ids are `labels` (N,)), and every episode pass `check_episode`.

    Raises:
        DatasetError: the file is unreadable, not JSON (names the line and column), malformed, refers to images
            not in `names`, or holds an episode that is not N-way (a query among its supports, a query of another
            class, two rows of one class); names the file, the episode and the fix.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except OSError as e:
        raise DatasetError(
            f"Cannot read episodes file {path} ({e.strerror or e}). Fix: point data.episodes_file at an episodes file "
            "a run wrote, or drop it to sample episodes."
        ) from None
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"Episodes file {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}. {EPISODES_FORMAT}"
        ) from None
    except UnicodeDecodeError:
        raise DatasetError(f"Episodes file {path} is not a text file. {EPISODES_FORMAT}") from None
    entries = payload.get("episodes") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        raise DatasetError(f'Episodes file {path} has no "episodes" list at its top level. {EPISODES_FORMAT}')
    index = {name: i for i, name in enumerate(names)}
    episodes = []
    for number, entry in enumerate(entries):
        support_names, query_names = (_rows(entry, key, number, path) for key in ("support", "query"))
        if missing := [n for row in support_names + query_names for n in row if n not in index]:
            raise DatasetError(
                f"Episode {number} of {path} names image {missing[0]!r}, which is not in the dataset: point data.root "
                "at the folder the episodes were drawn from."
            )
        shapes = {len(row) for row in support_names}, {len(row) for row in query_names}
        if len(shapes[0]) != 1 or len(shapes[1]) != 1 or len(support_names) != len(query_names):
            raise DatasetError(
                f"Episode {number} of {path} is ragged: each of its n_way classes needs the same number of support "
                "and of query images."
            )
        support, query = (
            np.array([[index[n] for n in row] for row in rows], dtype=np.int64) for rows in (support_names, query_names)
        )
        check_protocol(len(support), support.shape[1], query.shape[1], path, number)
        episodes.append(Episode(support=support, query=query))
        check_episode(episodes[-1], np.asarray(labels), names, path, number)
    if not episodes:
        raise DatasetError(f"Episodes file {path} holds no episode.")
    if len({(ep.support.shape, ep.query.shape) for ep in episodes}) > 1:
        raise DatasetError(f"The episodes of {path} differ in n_way, k_shot or queries: write one file per protocol.")
    return episodes

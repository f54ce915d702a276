"""One-shot (K-shot) segmentation episodes: the seeded sampler, the episode dataset and the datamodule base.

An episode is one query image of a class and K support images of the same class, each with its binary mask. The
readers (`datamodules.oneshot.readers`: FSS-1000, COCO-20i, PerSeg) list each class's images; this module draws the
episodes from that list with `numpy.random.default_rng(seed)` once, in `setup`, so that a rerun, any number of loader
workers and any number of processes see the same episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import DatasetError
from datamodules.loaders import check_loader_options, eval_sampler, usable_workers
from utils.errors import option

PROTOCOLS = ("random", "every_query", "reference")


@dataclass(frozen=True)
class OneShotEpisode:
    """One episode as positions in its class's image list: `support` (K,) and `query`, never among the supports."""

    class_id: int
    query: int
    support: tuple[int, ...]


def _whole(value: object, least: int) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= least


def check_shots(shots: object) -> int:
    """`shots` as an int; a DatasetError naming ``data.shots`` unless it is a whole number >= 1."""
    if not _whole(shots, 1):
        raise DatasetError(
            f"{option('data', 'shots', shots)} is not a number of support images: an episode needs at least one "
            f"annotated example of its class. Fix: {option('data', 'shots', 1)} (one-shot) or "
            f"{option('data', 'shots', 5)} (five-shot), the published protocols."
        )
    return int(shots)  # type: ignore[arg-type]


def check_n_episodes(n_episodes: object, protocol: str) -> None:
    """A DatasetError naming ``data.n_episodes`` unless it is a whole number >= 1 (or None where the protocol has a
    count of its own); a ValueError for an unknown protocol."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not one of {PROTOCOLS}")
    if n_episodes is None and protocol == "random":
        raise DatasetError(f"This protocol draws its episodes at random: set {option('data', 'n_episodes', 1000)}.")
    if n_episodes is not None and not _whole(n_episodes, 1):
        raise DatasetError(
            f"{option('data', 'n_episodes', n_episodes)} is not a number of episodes: give a whole number of at "
            f"least 1{'' if protocol == 'random' else ', or null for every query image of the split once'}."
        )


def sample_episodes(
    class_sizes: dict[int, int], shots: int, n_episodes: int | None, seed: int, protocol: str = "random"
) -> list[OneShotEpisode]:
    """Episodes over classes with `class_sizes[c]` images each (the readers' sorted lists), drawn from `seed`.

    Protocols:
        "random" (COCO-20i, as HSNet and Matcher): each episode draws a class uniformly, a query uniformly among
            that class's images, then `shots` distinct supports among its other images. `n_episodes` is required.
        "every_query" (FSS-1000, as HSNet and Matcher): every image of every class is the query once, in class then
            file order, with `shots` distinct random supports among the class's other images. `n_episodes=None`
            keeps all of them; fewer keeps a seeded choice of them (in order); more cycles through them again.
        "reference" (PerSeg, as PerSAM): the first `shots` images of a class are the supports of every episode of
            that class, every other image is a query once; `n_episodes` as for "every_query".

    Raises:
        DatasetError: a bad `shots` / `n_episodes` / `protocol`, no class, or a class with fewer than shots + 1
            images (it could not give a query with its own supports).
    """
    shots = check_shots(shots)
    check_n_episodes(n_episodes, protocol)
    if not _whole(seed, 0):
        raise DatasetError(f"{option('data', 'seed', seed)} is not a seed: give a whole number of at least 0.")
    if not class_sizes:
        raise DatasetError("The split holds no class to draw episodes from: check data.root and data.split.")
    if small := {c: n for c, n in class_sizes.items() if n < shots + 1}:
        raise DatasetError(
            f"{option('data', 'shots', shots)} needs {shots + 1} images per class (the supports and a query), but "
            f"class id(s) {sorted(small)[:10]} have {sorted(set(small.values()))} image(s). Fix: "
            f"{option('data', 'shots', max(min(small.values()) - 1, 1))}, or add images to those classes."
        )
    rng = np.random.default_rng(seed)
    classes = sorted(class_sizes)
    if protocol == "random":
        episodes = []
        for _ in range(n_episodes):
            c = int(rng.choice(classes))
            query = int(rng.integers(class_sizes[c]))
            episodes.append(OneShotEpisode(c, query, _supports(rng, class_sizes[c], query, shots)))
        return episodes
    first = shots if protocol == "reference" else 0
    queries = [(c, q) for c in classes for q in range(first, class_sizes[c])]
    if n_episodes is not None and n_episodes < len(queries):
        queries = [queries[i] for i in sorted(rng.choice(len(queries), n_episodes, replace=False))]
    elif n_episodes is not None:
        queries = [queries[i % len(queries)] for i in range(n_episodes)]
    if protocol == "reference":
        return [OneShotEpisode(c, q, tuple(range(shots))) for c, q in queries]
    return [OneShotEpisode(c, q, _supports(rng, class_sizes[c], q, shots)) for c, q in queries]


def _supports(rng: np.random.Generator, size: int, query: int, shots: int) -> tuple[int, ...]:
    """`shots` distinct positions in range(size), none of them `query`. HSNet redraws a support equal to the query,
    one at a time: one-shot, that is this distribution; K-shot, its supports may repeat, here they are K images."""
    others = np.delete(np.arange(size), query)
    return tuple(int(i) for i in rng.choice(others, shots, replace=False))


class OneShotReader:
    """What a dataset reader gives the episodes: each class's image keys, and an (image, mask) per key."""

    def load(self, class_id: int, key: str) -> tuple[np.ndarray, np.ndarray]:
        """`(H, W, 3)` uint8 RGB image and `(H, W)` bool mask of class `class_id` in the image `key`."""
        raise NotImplementedError


class OneShotEpisodes(Dataset):
    """Item i = episode i as the batch dict of `OneShotDataModule` (numpy arrays, images at their file sizes)."""

    def __init__(self, reader: OneShotReader, keys: dict[int, list[str]], episodes: list[OneShotEpisode]) -> None:
        self.reader, self.keys, self.episodes = reader, keys, episodes

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        episode = self.episodes[index]
        keys = self.keys[episode.class_id]
        support_paths = [keys[i] for i in episode.support]
        supports = [self.reader.load(episode.class_id, key) for key in support_paths]
        query_image, query_mask = self.reader.load(episode.class_id, keys[episode.query])
        return {
            "support_images": [image for image, _ in supports],
            "support_masks": [mask for _, mask in supports],
            "query_image": query_image,
            "query_mask": query_mask,
            "class_id": episode.class_id,
            "episode": index,
            "query_path": keys[episode.query],
            "support_paths": support_paths,
        }


def single(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batches of one episode, left as numpy: images differ in size and the method resizes each itself."""
    return batch[0]


class OneShotDataModule(L.LightningDataModule):
    """Seeded one-shot segmentation episodes for evaluation (a test loader of one episode per batch).

    Batch: ``support_images`` K `(H_k, W_k, 3)` uint8 RGB, ``support_masks`` K `(H_k, W_k)` bool, ``query_image``
    `(H, W, 3)` uint8, ``query_mask`` `(H, W)` bool, ``class_id`` int (the protocol's numbering, an index into
    ``all_class_names``), ``episode`` int, ``query_path`` str, ``support_paths`` [str] * K.

    After ``setup``: ``all_class_names`` (every class of the protocol, by class id), ``num_classes`` (their count:
    the size a per-class metric needs), ``eval_class_ids`` (the evaluated classes' ids), ``class_names`` (their
    names, in that order), ``n_episodes`` (the episodes drawn), ``episodes`` ([`OneShotEpisode`]).

    Subclasses set ``protocol`` (see `sample_episodes`) and implement ``_catalog()`` -> (all class names, evaluated
    class ids, {class id: sorted image keys}, reader).
    """

    protocol = "random"

    def __init__(
        self, root: str, shots: int = 1, n_episodes: int | None = None, seed: int = 0, num_workers: int = 4
    ) -> None:
        super().__init__()
        check_loader_options(num_workers=num_workers)
        self.root = Path(root).expanduser()
        check_n_episodes(n_episodes, self.protocol)
        if not _whole(seed, 0):
            raise DatasetError(f"{option('data', 'seed', seed)} is not a seed: give a whole number of at least 0.")
        self.shots, self.n_episodes, self.seed = check_shots(shots), n_episodes, int(seed)
        self.num_workers = usable_workers(num_workers)

    def _catalog(self) -> tuple[list[str], list[int], dict[int, list[str]], OneShotReader]:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        self.all_class_names, self.eval_class_ids, keys, reader = self._catalog()
        self.num_classes = len(self.all_class_names)
        self.class_names = [self.all_class_names[c] for c in self.eval_class_ids]
        keys = {c: keys.get(c, []) for c in self.eval_class_ids}
        sizes = {c: len(k) for c, k in keys.items()}
        self.episodes = sample_episodes(sizes, self.shots, self.n_episodes, self.seed, self.protocol)
        self.n_episodes = len(self.episodes)
        self.dataset = OneShotEpisodes(reader, keys, self.episodes)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=1,
            collate_fn=single,
            num_workers=self.num_workers,
            sampler=eval_sampler(self.trainer, self.dataset, "episode"),  # under DDP every episode once
        )

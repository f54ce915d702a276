"""Folders of images, one sub-folder per class (torchvision's ImageFolder layout), for classification on frozen features."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import lightning as L
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torchvision.datasets.folder import find_classes, make_dataset

from datamodules.classification.episodes import Episode, check_protocol, load_episodes, sample_episodes, save_episodes
from datamodules.errors import DatasetError
from datamodules.files import IMAGE_SUFFIXES, list_images, load_image, predict_folder
from datamodules.loaders import check_loader_options, eval_sampler, usable_workers
from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from utils.errors import option


class ClassFolderError(DatasetError):
    """A class folder is missing, empty, too small for the protocol, or the splits disagree on the classes."""


def eval_transform(resize_size: int, crop_size: int) -> A.Compose:
    """The official DINOv2 classification evaluation transform: shorter side to resize_size, centre crop, normalise."""
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=resize_size),
            A.CenterCrop(crop_size, crop_size),
            A.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ToTensorV2(),
        ]
    )


class LabelledImages(Dataset):
    """(path, class id) pairs -> {"image": (3, crop, crop) float32, "label": int, "index": int, "part": int}.

    Label -1 = unlabelled; `part` tells which of the loader's image sets (see ImageFolderDataModule) the image is from.
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: A.Compose, part: int = 0):
        self.samples, self.transform, self.part = list(samples), transform, part

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        path, label = self.samples[index]
        image = self.transform(image=load_image(Path(path)))["image"]
        return {"image": image, "label": label, "index": index, "part": self.part}

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class ids."""
        return np.array([label for _, label in self.samples], dtype=np.int64)


def class_folder_samples(folder: Path, setting: str = "root") -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folders) and the sorted (image, class id) pairs under folder, searched recursively.

    ``setting``: the data option that chose ``folder``, named in the fix when it is not a folder of classes.
    """
    fix = f"Fix: {option('data', setting, 'FOLDER')}, a folder of class folders."
    if not folder.is_dir():
        raise ClassFolderError(
            f"{folder} is not a folder. Expected one sub-folder of images per class: {folder}/<class>/<image>.jpg. {fix}"
        )
    try:
        names, class_to_idx = find_classes(folder)
    except FileNotFoundError:
        raise ClassFolderError(
            f"{folder} has no class sub-folders. Expected one sub-folder of images per class: {folder}/<class>/<image>.jpg. {fix}"
        ) from None
    samples = make_dataset(folder, class_to_idx, extensions=IMAGE_SUFFIXES, allow_empty=True)
    counts = np.bincount([label for _, label in samples], minlength=len(names))
    if empty := [names[c] for c in np.flatnonzero(counts == 0)]:
        raise ClassFolderError(
            f"Class folder {folder / empty[0]} holds no {'/'.join(IMAGE_SUFFIXES)} image ({len(empty)} such folder(s)): add images or remove it."
        )
    return names, [(Path(p), label) for p, label in samples]


def check_episode_options(
    n_way: int, k_shot: int | Sequence[int], k_shots: list[int], n_queries: int, n_episodes: int
) -> None:
    """Refuse, when the datamodule is built, an episode protocol that would report a number that means nothing."""
    if not k_shots:
        raise DatasetError(
            f"{option('data', 'k_shot', list(k_shot))} lists no K. Fix: {option('data', 'k_shot', [1, 5])}."
        )
    for k in k_shots:
        check_protocol(n_way, k, n_queries)
    if n_episodes < 1:
        raise DatasetError(
            f"{option('data', 'n_episodes', n_episodes)}: no episode, nothing to average. "
            f"Fix: {option('data', 'n_episodes', 600)} (the usual protocol)."
        )


class ImageFolderDataModule(L.LightningDataModule):
    """Class-folder images for few-shot episodes (root/<class>/...) or a labelled split evaluation (root/<split>/<class>/...).

    One test loader and one predict loader, each over several image sets told apart by the batch's `part`
    (batches {"image": (B, 3, crop, crop), "label": (B,), "index": (B,) within its part, "part": (B,)}):
        test: part i = split i of `splits` (root itself when None), then the `base_dir` images when given.
        predict: part 0 = the support set (root, or root/<splits[0]>), part 1 = the `predict_dir` images (label -1).

    Args:
        root: the folder of class folders, or of split folders when `splits` is set.
        splits: split sub-folders of root sharing the same classes, e.g. [train, val]; None: root is one set.
        num_classes: the number of class folders expected (checked when set); None takes what is there.
        n_way, k_shot, n_queries, n_episodes, seed: the episode protocol; k_shot may be a list (one evaluation per K).
        episodes_file: a JSON file of fixed episodes (as runs write them) used instead of sampling.
        too_few: "skip" (warn and leave out) or "fail" on a class with fewer than max(k_shot) + n_queries images.
        base_dir: class folders of base classes whose mean feature centres the few-shot features.
        predict_dir: a folder of query images to classify against the support set.
    """

    def __init__(
        self,
        root: str,
        splits: Sequence[str] | None = None,
        num_classes: int | None = None,
        n_way: int = 5,
        k_shot: int | Sequence[int] = (1, 5),
        n_queries: int = 15,
        n_episodes: int = 600,
        seed: int = 0,
        episodes_file: str | None = None,
        too_few: str = "skip",
        base_dir: str | None = None,
        predict_dir: str | None = None,
        resize_size: int = 256,
        crop_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
    ):
        super().__init__()
        check_loader_options(
            batch_size=batch_size, num_workers=num_workers, crop_size=crop_size, resize_size=resize_size
        )
        if too_few not in ("skip", "fail"):
            raise DatasetError(
                f"data.too_few={too_few!r} is not an option: use skip (leave small classes out with a warning) or fail."
            )
        self.k_shots = [int(k) for k in np.atleast_1d(np.asarray(k_shot))]
        check_episode_options(n_way, k_shot, self.k_shots, n_queries, n_episodes)
        self.root = Path(root).expanduser()
        self.splits = None if splits is None else list(splits)
        self.num_classes = num_classes
        self.n_way, self.n_queries, self.n_episodes, self.seed = n_way, n_queries, n_episodes, seed
        self.episodes_file = None if episodes_file is None else Path(episodes_file).expanduser()
        self.too_few = too_few
        self.base_dir = None if base_dir is None else Path(base_dir).expanduser()
        self.predict_dir = predict_folder(predict_dir)
        self.transform = eval_transform(resize_size, crop_size)
        self.batch_size, self.num_workers = batch_size, usable_workers(num_workers)

    def setup(self, stage: str) -> None:
        if stage == "predict":
            if self.predict_dir is None:
                raise DatasetError("Prediction needs a folder of query images: set data.predict_dir=<folder>.")
            support = self.root / self.splits[0] if self.splits else self.root
            self.class_names, samples = class_folder_samples(support)
            queries = [(p, -1) for p in list_images(self.predict_dir)]
            self.sets = [LabelledImages(samples, self.transform), LabelledImages(queries, self.transform, part=1)]
            return
        if self.splits is None:
            self.class_names, samples = self._episode_classes(*class_folder_samples(self.root))
            self.sets = [LabelledImages(samples, self.transform)]
        else:
            self.sets = self._split_sets()
        if self.num_classes is not None and self.num_classes != len(self.class_names):
            raise ClassFolderError(
                f"data.num_classes={self.num_classes} but {self.root} has {len(self.class_names)} usable class folders: set data.num_classes={len(self.class_names)} or null."
            )
        if self.base_dir is not None:
            self.sets.append(
                LabelledImages(class_folder_samples(self.base_dir, "base_dir")[1], self.transform, part=len(self.sets))
            )

    def _episode_classes(
        self, names: list[str], samples: list[tuple[Path, int]]
    ) -> tuple[list[str], list[tuple[Path, int]]]:
        """The classes with enough images for every episode (the others skipped or refused), renumbered 0..n-1."""
        needed = (max(self.k_shots) + self.n_queries) if self.episodes_file is None else 1
        counts = np.bincount([label for _, label in samples], minlength=len(names))
        small = [f"{self.root / names[c]} ({counts[c]} images)" for c in np.flatnonzero(counts < needed)]
        if small and self.too_few == "fail":
            raise ClassFolderError(
                f"Class folder {small[0]} has fewer than k_shot + n_queries = {needed} images ({len(small)} such folder(s)). Add images, lower data.k_shot / data.n_queries, or set data.too_few=skip to leave such classes out."
            )
        if small:
            rank_zero_warn(  # every process of a DDP run sets up the data: once
                f"Leaving out {len(small)} class(es) with fewer than k_shot + n_queries = {needed} images: {', '.join(small)}.",
            )
        kept = [c for c in range(len(names)) if counts[c] >= needed]
        if len(kept) < self.n_way and self.episodes_file is None:
            raise ClassFolderError(
                f"data.n_way={self.n_way} but {self.root} has only {len(kept)} class(es) with at least {needed} images: lower data.n_way or add classes."
            )
        new_id = {old: new for new, old in enumerate(kept)}
        return [names[c] for c in kept], [(p, new_id[label]) for p, label in samples if label in new_id]

    def _split_sets(self) -> list[LabelledImages]:
        """One dataset per split; every split must have the classes of the first."""
        sets = []
        for split in self.splits:
            names, samples = class_folder_samples(self.root / split)
            if sets and names != self.class_names:
                extra = sorted(set(names) ^ set(self.class_names))
                raise ClassFolderError(
                    f"{self.root / split} and {self.root / self.splits[0]} have different classes (e.g. {extra[:3]}): every split needs the same class folders."
                )
            self.class_names = names
            sets.append(LabelledImages(samples, self.transform, part=len(sets)))
        return sets

    def image_names(self) -> list[str]:
        """The episode set's images as paths relative to root (how episodes files name them)."""
        return [p.relative_to(self.root).as_posix() for p, _ in self.sets[0].samples]

    def episodes(self) -> dict[int, list[Episode]]:
        """K -> the episodes to evaluate: those of `episodes_file`, else sampled with `seed` for every K in k_shot."""
        if self.episodes_file is not None:
            fixed = load_episodes(self.episodes_file, self.image_names(), self.sets[0].labels)
            return {fixed[0].k_shot: fixed}
        labels = self.sets[0].labels
        return {
            k: sample_episodes(labels, self.n_way, k, self.n_queries, self.n_episodes, self.seed) for k in self.k_shots
        }

    def save_episodes(self, path: Path, episodes: list[Episode]) -> None:
        """Write episodes so that `data.episodes_file=path` replays them."""
        save_episodes(path, episodes, self.image_names())

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def _loader(self) -> DataLoader:
        # One loader over all parts: Lightning returns one result dict per test loader, and train.py expects one.
        # Under DDP each process embeds its share, every image once; the evaluation gathers them.
        images = ConcatDataset(self.sets)
        return DataLoader(
            images,
            sampler=eval_sampler(self.trainer, images),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

"""The one-shot segmentation datasets in their published layouts: FSS-1000, COCO-20i and PerSeg.

Each reader lists every evaluated class's images (sorted) and reads an image with its binary mask; the episodes
come from `datamodules.oneshot.base`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from datamodules.errors import DatasetError
from datamodules.files import load_image
from datamodules.oneshot.base import OneShotDataModule, OneShotReader
from datamodules.oneshot.hsnet_lists import read_hsnet_lists
from datamodules.sam.coco import load_coco
from datamodules.synthetic.fss1000 import write_oneshot_like
from utils.errors import option
from utils.images import read_mask

COCO_FOLDS = 4
FSS_SPLITS = ("trn", "val", "test")


def natural_key(path: Path) -> tuple:
    """Sort key putting 2.jpg before 10.jpg (FSS-1000 numbers its images 1..10)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def load_mask(path: Path, image_path: Path, image_hw: tuple[int, int], threshold: int) -> np.ndarray:
    """A mask file as `(H, W)` bool (grey value >= threshold, `utils.images.read_mask`'s "grey" values: colour and
    palette masks by their luminance, as HSNet reads them), checked against its image's size."""
    grey = read_mask(path, "mask", DatasetError, "grey")
    if grey.shape != image_hw:
        raise DatasetError(
            f"Mask {path} is {grey.shape[1]}x{grey.shape[0]} (WxH) but its image {image_path} is {image_hw[1]}x"
            f"{image_hw[0]}: a mask must have its image's size. Replace it with the dataset's original file."
        )
    return grey >= threshold


class FolderReader(OneShotReader):
    """Images and masks in files: the mask of `image` is `mask_of(image)`, foreground where grey >= threshold."""

    def __init__(self, image_root: Path, mask_root: Path, mask_suffix: str, threshold: int) -> None:
        self.image_root, self.mask_root, self.mask_suffix, self.threshold = (
            image_root,
            mask_root,
            mask_suffix,
            threshold,
        )

    def mask_path(self, image: Path) -> Path:
        return (self.mask_root / image.relative_to(self.image_root)).with_suffix(self.mask_suffix)

    def load(self, class_id: int, key: str) -> tuple[np.ndarray, np.ndarray]:
        image = load_image(Path(key))
        return image, load_mask(self.mask_path(Path(key)), Path(key), image.shape[:2], self.threshold)


def list_images(folder: Path, reader: FolderReader) -> list[str]:
    """The images of a class folder that have a mask, in natural order; a DatasetError for an image without one."""
    images = sorted((p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")), key=natural_key)
    if missing := [p for p in images if not reader.mask_path(p).is_file()]:
        raise DatasetError(
            f"Image {missing[0]} has no mask {reader.mask_path(missing[0])} ({len(missing)} image(s) of {folder} "
            "lack one): restore the dataset's masks, or remove those images."
        )
    return [str(p) for p in images]


class FSS1000DataModule(OneShotDataModule):
    """FSS-1000: root/fewshot_data/<class>/<n>.jpg with <n>.png masks (0/255, foreground >= 128 as HSNet reads
    them), and HSNet's class splits root/splits/{trn,val,test}.txt (one class folder name a line; test: 240 classes).

    Protocol (HSNet, Matcher): every image of the split's classes is the query once (2,400 episodes on the test
    split), with `shots` random other images of its class as supports. Class ids index the split's sorted classes.
    ``split="all"`` takes every class folder and needs no split file; ``generate`` writes the synthetic set
    (`datamodules.synthetic.fss1000`) in this layout when root has none.
    """

    protocol = "every_query"
    how_to_get = (
        "Get the images from https://github.com/HKUSTCV/FSS-1000 (fewshot_data.zip, unpacked into data.root) and "
        "HSNet's split lists from https://github.com/juhongm999/hsnet/tree/main/data/splits/fss (into "
        "data.root/splits)"
    )

    def __init__(
        self,
        root: str,
        shots: int = 1,
        n_episodes: int | None = None,
        seed: int = 0,
        num_workers: int = 4,
        split: str = "test",
        generate: bool = False,
    ) -> None:
        super().__init__(root, shots, n_episodes, seed, num_workers)
        if split not in (*FSS_SPLITS, "all"):
            raise DatasetError(
                f"{option('data', 'split', split)} is not an FSS-1000 split: use {', '.join(FSS_SPLITS)} (HSNet's "
                f"class splits; {option('data', 'split', 'test')} is the published evaluation) or all."
            )
        self.split, self.generate = split, generate
        self.folder = self.root / "fewshot_data"

    def prepare_data(self) -> None:
        if self.generate and not self.folder.is_dir():
            write_oneshot_like(self.root)

    def _catalog(self) -> tuple[list[str], list[int], dict[int, list[str]], OneShotReader]:
        if not self.folder.is_dir():
            raise DatasetError(
                f"FSS-1000 not found: {self.folder} does not exist. Expected under "
                f"{option('data', 'root', self.root)}: fewshot_data/<class>/<n>.jpg with <n>.png masks and "
                f"splits/{{trn,val,test}}.txt. {self.how_to_get}; or {option('data', 'generate', True)} writes a "
                "small synthetic set in this layout."
            )
        names = sorted(p.name for p in self.folder.iterdir() if p.is_dir()) if self.split == "all" else self._split()
        if missing := [n for n in names if not (self.folder / n).is_dir()]:
            raise DatasetError(
                f"Class folder(s) {missing[:5]} of split {self.split} ({len(missing)} missing) are not in "
                f"{self.folder}: the dataset is incomplete. {self.how_to_get}."
            )
        reader = FolderReader(self.folder, self.folder, ".png", threshold=128)
        keys = {c: list_images(self.folder / name, reader) for c, name in enumerate(names)}
        return names, list(range(len(names))), keys, reader

    def _split(self) -> list[str]:
        path = self.root / "splits" / f"{self.split}.txt"
        if not path.is_file():
            raise DatasetError(
                f"FSS-1000 split list {path} not found ({option('data', 'split', self.split)}). {self.how_to_get}; "
                f"or {option('data', 'split', 'all')} evaluates on every class folder."
            )
        return sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})


class PerSegDataModule(OneShotDataModule):
    """PerSeg (PerSAM): root/Images/<object>/<nn>.jpg with root/Annotations/<object>/<nn>.png masks (foreground: any
    non-zero value), 40 objects. Protocol (PerSAM): the first `shots` images of an object (00.jpg for one-shot) are
    the references of every episode of that object, each other image a target once. Class ids index the sorted
    objects."""

    protocol = "reference"

    def __init__(
        self, root: str, shots: int = 1, n_episodes: int | None = None, seed: int = 0, num_workers: int = 4
    ) -> None:
        super().__init__(root, shots, n_episodes, seed, num_workers)

    def _catalog(self) -> tuple[list[str], list[int], dict[int, list[str]], OneShotReader]:
        images, masks = self.root / "Images", self.root / "Annotations"
        if not images.is_dir() or not masks.is_dir():
            raise DatasetError(
                f"PerSeg not found: {images} and {masks} must both exist. Expected under "
                f"{option('data', 'root', self.root)}: Images/<object>/<nn>.jpg and Annotations/<object>/<nn>.png "
                "(40 objects). Get it from https://github.com/ZrrSkywalker/Personalize-SAM (the PerSeg link in its "
                "README), unpacked so that data.root holds Images/ and Annotations/."
            )
        names = sorted(p.name for p in images.iterdir() if p.is_dir())
        reader = FolderReader(images, masks, ".png", threshold=1)
        keys = {c: list_images(images / name, reader) for c, name in enumerate(names)}
        return names, list(range(len(names))), keys, reader


def coco20i_class_ids(fold: int, n_classes: int = 80, n_folds: int = COCO_FOLDS) -> list[int]:
    """The test classes of COCO-20i fold `fold` (0-based indices into the categories sorted by id).

    HSNet's rule (juhongm999/hsnet, data/coco.py `build_class_ids`, also Matcher's): the fold's classes are
    ``[fold + n_folds * v for v in range(n_classes // n_folds)]``, i.e. every 4th class starting at `fold`.
    """
    return [fold + n_folds * v for v in range(n_classes // n_folds)]


class CocoClassReader(OneShotReader):
    """COCO images with the union of one class's instance masks (crowd regions included, as semantic masks are)."""

    def __init__(self, coco: COCO, image_ids: dict[str, int], category_ids: list[int]) -> None:
        self.coco, self.image_ids, self.category_ids = coco, image_ids, category_ids

    def load(self, class_id: int, key: str) -> tuple[np.ndarray, np.ndarray]:
        image = load_image(Path(key))
        image_id = self.image_ids[key]
        info = self.coco.imgs[image_id]
        if image.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(
                f"Image {key} is {image.shape[1]}x{image.shape[0]} but its annotation says {info['width']}x"
                f"{info['height']}: the file does not belong to this annotation set."
            )
        mask = np.zeros(image.shape[:2], dtype=bool)
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, catIds=[self.category_ids[class_id]])):
            mask |= self.coco.annToMask(ann).astype(bool)
        return image, mask


class Coco20iDataModule(OneShotDataModule):
    """COCO-20i: COCO 2014 images root/<split>/<file_name> and root/annotations/instances_<split>.json.

    Class ids are the 80 categories sorted by id (0..79); fold i evaluates `coco20i_class_ids(i)`. Protocol (HSNet,
    Matcher: 1,000 episodes per fold on val2014): a class uniformly, a query uniformly among the split's images that
    contain it, `shots` other such images as supports; masks are the union of that class's instances. The images
    that contain a class are HSNet's lists when root/splits/coco/val/fold<i>.pkl (HSNet's data/splits/coco/val/)
    is present, else every image the annotations give the class.
    """

    protocol = "random"

    def __init__(
        self,
        root: str,
        shots: int = 1,
        n_episodes: int | None = 1000,
        seed: int = 0,
        num_workers: int = 4,
        fold: int = 0,
        split: str = "val2014",
        annotations: str | None = None,
    ) -> None:
        super().__init__(root, shots, n_episodes, seed, num_workers)
        if isinstance(fold, bool) or fold not in range(COCO_FOLDS):
            raise DatasetError(
                f"{option('data', 'fold', fold)} is not a COCO-20i fold: the 80 classes are split into folds 0, 1, "
                f"2 and 3 (20 test classes each). Fix: {option('data', 'fold', 0)} (or 1, 2, 3)."
            )
        self.fold, self.split = int(fold), split
        self.annotations = self.root / (annotations or f"annotations/instances_{split}.json")

    def _catalog(self) -> tuple[list[str], list[int], dict[int, list[str]], OneShotReader]:
        if not self.annotations.is_file():
            raise DatasetError(
                f"COCO-20i not found: {self.annotations} does not exist. Expected under "
                f"{option('data', 'root', self.root)}: {self.split}/*.jpg and annotations/instances_{self.split}.json "
                f"(COCO 2014). Get them from http://images.cocodataset.org/zips/{self.split}.zip and "
                "http://images.cocodataset.org/annotations/annotations_trainval2014.zip, unpacked into data.root."
            )
        if not (self.root / self.split).is_dir():
            raise DatasetError(
                f"COCO-20i images {self.root / self.split} not found ({option('data', 'split', self.split)}). Get "
                f"them from http://images.cocodataset.org/zips/{self.split}.zip, unpacked into data.root."
            )
        coco = load_coco(self.annotations)
        category_ids = sorted(coco.cats)
        if len(category_ids) < COCO_FOLDS:
            raise DatasetError(f"{self.annotations} has {len(category_ids)} categories: COCO-20i needs 80.")
        eval_ids = coco20i_class_ids(self.fold, len(category_ids))
        lists = self.episode_lists_file()
        if lists is not None and lists.is_file():
            by_name = {info["file_name"]: image_id for image_id, info in coco.imgs.items()}
            pools = read_hsnet_lists(lists, eval_ids, by_name)
        else:
            pools = {c: coco.catToImgs.get(category_ids[c], []) for c in eval_ids}
        image_ids, keys = {}, {}
        for c in eval_ids:
            paths = []
            for image_id in sorted(pools[c]):
                path = str(self.root / self.split / coco.imgs[image_id]["file_name"])
                image_ids[path] = image_id
                paths.append(path)
            keys[c] = sorted(set(paths))
        names = [coco.cats[i]["name"] for i in category_ids]
        return names, eval_ids, keys, CocoClassReader(coco, image_ids, category_ids)

    def episode_lists_file(self) -> Path | None:
        """HSNet's per-fold image lists of the val2014 split (its data/splits/coco/val/fold<i>.pkl), used when
        present under data.root; None for another split."""
        if self.split != "val2014":
            return None
        return self.root / "splits" / "coco" / "val" / f"fold{self.fold}.pkl"

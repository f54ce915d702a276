"""BSDS500 (Berkeley Segmentation Dataset) for the boundary benchmark, in its published layout, and a generated
offline set in that layout for tests and the quickstart.

Layout (the `BSR/BSDS500/data` folder of BSR_bsds500.tgz): images/{train,val,test}/<id>.jpg and
groundTruth/{train,val,test}/<id>.mat; each .mat holds `groundTruth`, a 1 x K MATLAB cell of structs with fields
`Segmentation` (labels) and `Boundaries` (the K annotators' boundary maps, one per struct). The test split has 200
images. .mat files are read with `scipy.io.loadmat` (data, no code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import scipy.io
from PIL import Image, ImageDraw
from scipy.io.matlab import MatReadError
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import DatasetError
from datamodules.loaders import check_loader_options, eval_sampler, image_items, usable_workers
from utils.atomic import atomic_folder
from utils.errors import option
from utils.images import read_rgb

SPLITS = ("train", "val", "test")
LAYOUT = "images/{train,val,test}/<id>.jpg and groundTruth/{train,val,test}/<id>.mat"
HOW_TO_GET = (
    "Download BSR_bsds500.tgz from the Berkeley segmentation page (https://www2.eecs.berkeley.edu/Research/Projects/"
    "CS/vision/grouping/resources.html), extract it, and set data.root to its BSR/BSDS500/data folder"
)


def read_boundaries(path: str | Path) -> np.ndarray:
    """The annotators' boundary maps of a BSDS .mat file: `(K, H, W)` bool. DatasetError naming the file when it
    cannot be read or holds no `groundTruth` cell of structs with `Boundaries`."""
    path = Path(path)
    try:
        content = scipy.io.loadmat(path, squeeze_me=False)
        cells = content["groundTruth"].ravel()
        maps = [np.asarray(cell["Boundaries"][0, 0]) for cell in cells]
    # NotImplementedError: a MATLAB v7.3 (HDF5) file, which loadmat does not read; BSDS's are v5
    except (OSError, ValueError, KeyError, IndexError, TypeError, MatReadError, NotImplementedError) as err:
        raise DatasetError(
            f"{path}: not a BSDS500 ground-truth file ({type(err).__name__}: {err}). Each groundTruth/<split>/<id>"
            f".mat holds `groundTruth`, a cell of structs with a `Boundaries` map; re-extract it. {HOW_TO_GET}."
        ) from None
    if not maps or any(m.ndim != 2 or m.shape != maps[0].shape for m in maps):
        raise DatasetError(f"{path}: its {len(maps)} boundary map(s) are not 2-D maps of one size; re-extract it.")
    for k, m in enumerate(maps):
        if m.dtype.kind not in "biuf" or (m.dtype.kind == "f" and not np.isfinite(m).all()):
            raise DatasetError(
                f"{path}: boundary map {k} (groundTruth{{{k + 1}}}.Boundaries) holds {m.dtype} values"
                f"{' that are not finite' if m.dtype.kind == 'f' else ''}; a boundary map is 0 / 1 numbers. "
                f"Re-extract the file. {HOW_TO_GET}."
            )
    return np.stack([m > 0 for m in maps])


def write_boundaries(path: str | Path, segmentations: list[np.ndarray]) -> None:
    """Write a BSDS-style .mat: a 1 x K cell of structs {Segmentation, Boundaries} from K `(H, W)` label maps."""
    cells = np.empty((1, len(segmentations)), dtype=object)
    for k, labels in enumerate(segmentations):
        cells[0, k] = {"Segmentation": labels.astype(np.uint16), "Boundaries": label_boundaries(labels)}
    scipy.io.savemat(path, {"groundTruth": cells})


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """`(H, W)` uint8: 1 where a pixel's right or lower neighbour has another label (BSDS's `seg2bmap`, thin)."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1] |= labels[:-1] != labels[1:]
    return edge.astype(np.uint8)


def write_bsds_like(root: str | Path, n_images: int = 4, size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """A generated set in BSDS500's layout under `root` (test split): `n_images` images of 3-5 random filled
    polygons on a noisy background, each with 3 "annotators" whose labels are the same polygons with vertices jittered
    by up to 2 pixels (one also misses the smallest polygon). Written as one folder, atomically; deterministic."""
    root = Path(root).expanduser()
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()  # an empty folder made beforehand: the set takes its place (atomic_folder keeps existing ones)
    rng = np.random.default_rng(seed)
    return atomic_folder(root, lambda out: _write_images(out, rng, n_images, size))


def _write_images(out: Path, rng: np.random.Generator, n_images: int, size: tuple[int, int]) -> None:
    (out / "images" / "test").mkdir(parents=True)
    (out / "groundTruth" / "test").mkdir(parents=True)
    height, width = size
    for i in range(n_images):
        polygons = []
        for _ in range(int(rng.integers(3, 6))):
            centre, radius = rng.uniform([0.2 * width, 0.2 * height], [0.8 * width, 0.8 * height]), rng.uniform(8, 30)
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
            polygons.append(centre + radius * np.stack([np.cos(angles), np.sin(angles)], 1))
        image = rng.normal(120, 8, (height, width, 3))
        labels = _draw(polygons, size)
        for k in range(1, len(polygons) + 1):
            image[labels == k] = rng.uniform(20, 235, 3) + rng.normal(0, 4, (int((labels == k).sum()), 3))
        annotators = []
        for a in range(3):
            jittered = [p + rng.uniform(-2, 2, p.shape) for p in polygons]
            if a == 2:
                jittered = jittered[:-1]  # one annotator leaves out the last polygon
            annotators.append(_draw(jittered, size))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(out / "images" / "test" / f"{i:04d}.jpg", quality=95)
        write_boundaries(out / "groundTruth" / "test" / f"{i:04d}.mat", annotators)


def _draw(polygons: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """`(H, W)` labels: 0 background, k for polygon k (later ones on top)."""
    canvas = Image.new("L", (size[1], size[0]))
    draw = ImageDraw.Draw(canvas)
    for k, polygon in enumerate(polygons, start=1):
        draw.polygon([tuple(v) for v in polygon.tolist()], fill=k)
    return np.asarray(canvas, np.int32)


class BSDS500Images(Dataset):
    """Item i: {"image": `(H, W, 3)` uint8 RGB, "boundaries": `(K, H, W)` bool, "path": str, "name": image id}."""

    def __init__(self, pairs: list[tuple[Path, Path]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, truth_path = self.pairs[index]
        image = read_rgb(image_path, "image", DatasetError)
        if min(image.shape[:2]) < 2:
            raise DatasetError(
                f"{image_path} is {image.shape[1]}x{image.shape[0]} (WxH) pixels: an edge map needs at least 2x2 "
                "pixels. Remove the file (and its .mat) from the split."
            )
        boundaries = read_boundaries(truth_path)
        if boundaries.shape[1:] != image.shape[:2]:
            raise DatasetError(
                f"{truth_path}: its boundary maps are {boundaries.shape[2]}x{boundaries.shape[1]} (WxH) but the image "
                f"{image_path} is {image.shape[1]}x{image.shape[0]}; they must be the same image's."
            )
        return {"image": image, "boundaries": boundaries, "path": str(image_path), "name": image_path.stem}


class BSDS500DataModule(L.LightningDataModule):
    """BSDS500 for the boundary benchmark: a test loader of one image per batch (`BSDS500Images` items).

    Args:
        root: the folder that holds images/ and groundTruth/ (BSR/BSDS500/data; a root holding BSR/ works too).
        split: train, val or test (the benchmark's: 200 images).
        num_workers: loader processes.
        generate: write the generated set (`write_bsds_like`) when root has no images/ folder.
        generate_n: images of the generated set.
    """

    def __init__(
        self,
        root: str,
        split: str = "test",
        num_workers: int = 2,
        generate: bool = False,
        generate_n: int = 4,
        batch_size: int = 1,
    ) -> None:
        super().__init__()
        check_loader_options(num_workers=num_workers, generate_n=generate_n, batch_size=batch_size)
        self.batch_size = batch_size
        if split not in SPLITS:
            raise DatasetError(f"{option('data', 'split', split)} is not a BSDS500 split: use one of {SPLITS}.")
        self.root, self.split, self.generate, self.generate_n = Path(root).expanduser(), split, generate, generate_n
        self.num_workers = usable_workers(num_workers)

    def folder(self) -> Path:
        """The folder holding images/ and groundTruth/ (root, or root/BSR/BSDS500/data as the archive extracts)."""
        nested = self.root / "BSR" / "BSDS500" / "data"
        return nested if not (self.root / "images").is_dir() and nested.is_dir() else self.root

    def prepare_data(self) -> None:
        if self.generate and not (self.folder() / "images").is_dir():
            write_bsds_like(self.root, n_images=self.generate_n)

    def pairs(self) -> list[tuple[Path, Path]]:
        """Sorted (image, ground truth) paths of the split; DatasetError naming what is missing."""
        folder = self.folder()
        images = folder / "images" / self.split
        if not images.is_dir():
            raise DatasetError(
                f"BSDS500 not found: {images} does not exist. Expected {LAYOUT} under {option('data', 'root')}. "
                f"{HOW_TO_GET}; or {option('data', 'generate', True)} writes a small generated set there."
            )
        pairs = [(p, folder / "groundTruth" / self.split / f"{p.stem}.mat") for p in sorted(images.glob("*.jpg"))]
        if not pairs:
            raise DatasetError(f"{images} holds no .jpg image. Expected {LAYOUT}. {HOW_TO_GET}.")
        if missing := [str(truth) for _, truth in pairs if not truth.is_file()]:
            raise DatasetError(
                f"{len(missing)} image(s) of {images} have no ground truth, e.g. {missing[0]}. Each image <id>.jpg "
                f"needs groundTruth/{self.split}/<id>.mat ({LAYOUT}): re-extract the dataset. {HOW_TO_GET}."
            )
        return pairs

    def setup(self, stage: str) -> None:
        self.dataset = BSDS500Images(self.pairs())

    def test_dataloader(self) -> DataLoader:
        sampler = eval_sampler(self.trainer, self.dataset)  # every image once under DDP, no padding repeats
        collate = image_items(self.batch_size)
        return DataLoader(
            self.dataset, batch_size=self.batch_size, collate_fn=collate, num_workers=self.num_workers, sampler=sampler
        )

"""Revisited Oxford and Paris (Radenović et al. 2018) for `head=retrieval`: the database images and the cropped queries.

Layout (the revisitop repository's): `root/<name>/jpg/<image>.jpg` and `root/<name>/gnd_<name>.pkl`, name `roxford5k`
or `rparis6k`. The ground-truth file is a Python pickle of {"imlist": [names], "qimlist": [names], "gnd": [per query
{"bbx": [x1, y1, x2, y2], "easy": ids, "hard": ids, "junk": ids}]}. A pickle can run any code it names when loaded, so
it is read with `data_pickle.load_data_pickle`, which builds plain containers and numpy arrays only and refuses
anything else, or anything larger than the file.
Query images are cropped to their box before embedding, as the protocol requires; queries are not in the database.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from torch.utils.data import DataLoader, Dataset

from datamodules.data_pickle import load_data_pickle
from datamodules.errors import DatasetError
from datamodules.files import image_size
from datamodules.loaders import check_loader_options, eval_sampler, usable_workers
from datamodules.sam.coco_checks import MARGIN
from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from utils.atomic import atomic_folder
from utils.errors import option
from utils.images import rgb_image

SOURCES = {
    "roxford5k": "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images.tgz",
    "rparis6k": "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_1.tgz and paris_2.tgz",
}
GROUND_TRUTH_URL = "http://cmp.felk.cvut.cz/revisitop/data/datasets/{name}/gnd_{name}.pkl"


def load_ground_truth(path: Path) -> dict[str, Any]:
    """The ground-truth pickle at `path`, read with `load_data_pickle` and checked.

    Returns {"imlist": [str] * N, "qimlist": [str] * Q, "gnd": Q dicts of "bbx" (4,) float64 and "easy", "hard",
    "junk" int64 arrays of database ids}. Raises DatasetError naming the file for anything else.
    """
    try:
        data = load_data_pickle(path.read_bytes())
    except OSError as err:
        raise DatasetError(f"The ground-truth file {path} cannot be read ({err}).") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise DatasetError(
            f"The ground-truth file {path} is not a revisited-protocol pickle: {err}. Fix: download it again "
            f"({GROUND_TRUTH_URL.format(name=path.stem.removeprefix('gnd_'))})."
        ) from None
    problem = _structure_problem(data)
    if problem:
        raise DatasetError(f"The ground-truth file {path} is not in the revisitop format: {problem}.")
    kinds = ("easy", "hard", "junk")
    gnd = [
        {"bbx": np.asarray(q["bbx"], np.float64).ravel(), **{k: np.asarray(q[k], np.int64).ravel() for k in kinds}}
        for q in data["gnd"]
    ]
    return {"imlist": [str(n) for n in data["imlist"]], "qimlist": [str(n) for n in data["qimlist"]], "gnd": gnd}


def _structure_problem(data: Any) -> str | None:
    if not isinstance(data, dict) or not {"imlist", "qimlist", "gnd"} <= set(data):
        return "it must be a dict with 'imlist', 'qimlist' and 'gnd'"
    for key in ("imlist", "qimlist"):
        if not isinstance(data[key], list) or not all(isinstance(name, str) for name in data[key]):
            return f"'{key}' must be a list of image names (strings)"
    if not isinstance(data["gnd"], list):
        return "'gnd' must be a list of one dict per query"
    if len(data["gnd"]) != len(data["qimlist"]):
        return f"{len(data['qimlist'])} queries in 'qimlist' but {len(data['gnd'])} entries in 'gnd'"
    n = len(data["imlist"])
    for q, query in enumerate(data["gnd"]):
        if not isinstance(query, dict) or not {"bbx", "easy", "hard", "junk"} <= set(query):
            return f"gnd[{q}] must be a dict with 'bbx', 'easy', 'hard' and 'junk'"
        lists = [np.asarray(query[k]) for k in ("easy", "hard", "junk")]
        if any(ids.size and ids.dtype.kind not in "iu" for ids in lists):
            return f"gnd[{q}]'s 'easy', 'hard' and 'junk' must be arrays of database ids (whole numbers)"
        ids = np.concatenate([ids.astype(np.int64).ravel() for ids in lists])
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            return f"gnd[{q}] names database ids outside 0..{n - 1}"
        bbx = np.asarray(query["bbx"])
        if bbx.size != 4 or bbx.dtype.kind not in "iuf" or not np.isfinite(bbx).all():
            return f"gnd[{q}]['bbx'] = {str(query['bbx'])[:80]} must be 4 finite numbers (x1, y1, x2, y2)"
        if not (bbx.ravel()[0] < bbx.ravel()[2] and bbx.ravel()[1] < bbx.ravel()[3]):
            return f"gnd[{q}]['bbx'] = {bbx.ravel().tolist()} has x2 <= x1 or y2 <= y1 (corners x1, y1, x2, y2)"
    return None


def check_query_box(truth: Path, query: int, bbx: np.ndarray, size: tuple[int, int]) -> None:
    """Refuse query `query`'s box `(x1, y1, x2, y2)` unless it lies in its image of `size` (width, height) up to
    `MARGIN` (PIL would crop the blank outside)."""
    w, h = size
    low, high = -MARGIN * np.array([w, h]) - 2, np.array([w, h]) * (1 + MARGIN) + 2
    if np.any(bbx[:2] < low) or np.any(bbx[2:] > high):
        raise DatasetError(
            f"The ground-truth file {truth} gives query {query} (gnd[{query}]['bbx']) the box {bbx.tolist()}, "
            f"outside its {w}x{h} (WxH) image: boxes are pixel corners x1, y1, x2, y2. Fix: download the file again "
            f"({GROUND_TRUTH_URL.format(name=truth.stem.removeprefix('gnd_'))})."
        )


def crop_query(image: Image.Image, bbx: np.ndarray) -> Image.Image:
    """The query's box `(x1, y1, x2, y2)` in pixels (PIL rounds it), as the protocol's reference code crops."""
    return image.crop(tuple(float(v) for v in bbx))


class RevisitedImages(Dataset):
    """The database images (part 0) then the cropped queries (part 1), each resized to `image_size` on its longer
    side and ImageNet-normalised. Item: {"image": (3, H, W), "part", "index", "path"}."""

    def __init__(self, folder: Path, truth: dict[str, Any], image_size: int) -> None:
        self.items = [(folder / f"{name}.jpg", None, 0, i) for i, name in enumerate(truth["imlist"])]
        self.items += [
            (folder / f"{n}.jpg", g["bbx"], 1, i) for i, (n, g) in enumerate(zip(truth["qimlist"], truth["gnd"]))
        ]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Image.Image:
        """Item `index`'s RGB image as read (a query cropped to its box), before resizing."""
        path, bbx, _, _ = self.items[index]
        # the stored pixels, EXIF orientation not applied: the official protocol (revisitop, cnnimageretrieval's PIL
        # loader) reads them so, and the query boxes were drawn on them
        img = rgb_image(path, "image", DatasetError, exif=False)
        return img if bbx is None else crop_query(img, bbx)

    def __getitem__(self, index: int) -> dict[str, Any]:
        img = self.load(index)
        scale = self.image_size / max(img.size)
        img = img.resize([max(1, round(side * scale)) for side in img.size], Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)
        image = (pixels - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        path, _, part, i = self.items[index]
        return {"image": image, "part": part, "index": i, "path": str(path)}


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of images of any sizes: `image` is their list, `part` and `index` `(B,)` int64, `path` [str] * B."""
    return {
        "image": [item["image"] for item in items],
        "part": torch.tensor([item["part"] for item in items]),
        "index": torch.tensor([item["index"] for item in items]),
        "path": [item["path"] for item in items],
    }


class RevisitedDataModule(L.LightningDataModule):
    """Revisited Oxford / Paris (or a generated set in their layout) as one test loader of database and queries.

    After `setup`: `ground_truth` (see `load_ground_truth`), `dataset` (`RevisitedImages`), `name`.
    """

    def __init__(
        self,
        root: str,
        name: str = "roxford5k",
        image_size: int = 224,
        batch_size: int = 16,
        num_workers: int = 4,
        generate: bool = False,
    ) -> None:
        super().__init__()
        check_loader_options(batch_size=batch_size, num_workers=num_workers, image_size=image_size)
        self.root, self.name, self.image_size = Path(root).expanduser(), str(name), image_size
        self.batch_size, self.num_workers, self.generate = batch_size, usable_workers(num_workers), generate

    def setup(self, stage: str) -> None:
        folder = self.root / self.name
        if self.generate:
            write_revisited_like(self.root, self.name)
        gnd_path = folder / f"gnd_{self.name}.pkl"
        if not gnd_path.is_file():
            raise DatasetError(self._not_found(f"no ground-truth file {gnd_path}"))
        self.ground_truth = load_ground_truth(gnd_path)
        self.dataset = RevisitedImages(folder / "jpg", self.ground_truth, self.image_size)
        missing = [str(path) for path, *_ in self.dataset.items if not path.is_file()]
        if missing:
            raise DatasetError(
                self._not_found(f"{len(missing)} listed image(s) missing, e.g. {', '.join(missing[:3])}")
            )
        for path, bbx, part, q in self.dataset.items:
            if part == 1:
                check_query_box(gnd_path, q, bbx, image_size(path))

    def _not_found(self, what: str) -> str:
        source = SOURCES.get(self.name, "the dataset's images")
        return (
            f"Revisited dataset {self.name!r} not found under {option('data', 'root', str(self.root))}: {what}. "
            f"Layout: ROOT/{self.name}/jpg/<image>.jpg (every image of the set, flat) and "
            f"ROOT/{self.name}/gnd_{self.name}.pkl. Get the images from {source} (extract the files into jpg/) and the "
            f"ground truth from {GROUND_TRUTH_URL.format(name=self.name)}; or try the generated set offline: "
            "experiment=retrieval_quickstart."
        )

    def test_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_images,
            sampler=eval_sampler(self.trainer, self.dataset),  # every image once under DDP, no padding repeats
        )


# The generated offline set: a few "landmarks" (scikit-image's photographs), each seen by one query and by database
# views of graded difficulty, among distractor photographs. Written as the published pickle so the quickstart reads
# it through the same `load_data_pickle`.
LANDMARKS = ("astronaut", "chelsea", "coffee", "rocket")
DISTRACTORS = ("camera", "coins", "brick", "immunohistochemistry")
VIEWS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "easy_a": lambda im: _crop(im, 0.05, 0.05, 0.9).resize((160, 160 * im.height // im.width)),
    "easy_b": lambda im: ImageEnhance.Brightness(_crop(im, 0.1, 0.0, 0.85)).enhance(1.2),
    "hard": lambda im: ImageEnhance.Contrast(_crop(im, 0.3, 0.25, 0.45)).enhance(0.6).rotate(8),
    "junk": lambda im: _crop(im, 0.45, 0.45, 0.2).filter(ImageFilter.GaussianBlur(2)),
}  # fmt: skip


def _crop(im: Image.Image, left: float, top: float, side: float) -> Image.Image:
    """The part of `im` from (left, top) of its width / height spanning `side` of both."""
    w, h = im.size
    return im.crop((round(left * w), round(top * h), round((left + side) * w), round((top + side) * h)))


def write_revisited_like(root: str | Path, name: str = "revisited_synthetic", size: int = 192, seed: int = 0) -> Path:
    """Write root/<name>/jpg/*.jpg and gnd_<name>.pkl in the published layout; keep an existing set; return it.

    4 landmarks, each with a query (the photograph, its box the central 70%), two easy views, one hard and one junk
    view in the database, plus 4 distractors: 20 database images in a seeded order. Written atomically.
    """
    from skimage import data as photos

    def write(out: Path) -> None:
        (out / "jpg").mkdir(parents=True)
        images, boxes = {}, {}
        for landmark in LANDMARKS:
            im = Image.fromarray(getattr(photos, landmark)()).convert("RGB")
            im = im.resize((size, size * im.height // im.width))
            im.save(out / "jpg" / f"query_{landmark}.jpg", quality=95)
            boxes[landmark] = np.array([0.15 * im.width, 0.15 * im.height, 0.85 * im.width, 0.85 * im.height])
            images.update({f"{landmark}_{view}": make(im) for view, make in VIEWS.items()})
        for distractor in DISTRACTORS:
            images[f"other_{distractor}"] = (
                Image.fromarray(getattr(photos, distractor)()).convert("RGB").resize((size, size))
            )
        imlist = [list(images)[i] for i in np.random.default_rng(seed).permutation(len(images))]
        for image_name in imlist:
            images[image_name].save(out / "jpg" / f"{image_name}.jpg", quality=90)
        ids, kinds = {image_name: i for i, image_name in enumerate(imlist)}, ("easy", "hard", "junk")
        gnd = [
            {"bbx": boxes[landmark]}
            | {kind: np.array([i for n, i in ids.items() if n.startswith(f"{landmark}_{kind}")]) for kind in kinds}
            for landmark in LANDMARKS
        ]  # fmt: skip
        truth = {"imlist": imlist, "qimlist": [f"query_{lm}" for lm in LANDMARKS], "gnd": gnd}
        (out / f"gnd_{name}.pkl").write_bytes(pickle.dumps(truth))  # plain data, written here: no code in it

    return atomic_folder(Path(root).expanduser() / name, write)

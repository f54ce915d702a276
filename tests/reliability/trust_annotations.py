"""Annotation files (issue 23): COCO instances, revisited Oxford / Paris pickles, BSDS500 .mat files, episodes files.

`before` is what commit 3d0908f did, found by running these inputs through it (under a memory limit), except the
two polygons pycocotools cannot rasterise, taken from the adversary's report and never run again on old code: a
NaN polygon grew `train.py head=sam_points data=coco` to 24 GB until the kernel killed it (a segfault under a memory
limit), a 1e12 one segfaulted. The table has no "crashed" row: those, and the MemoryErrors of pickles that ask for
terabytes, count as "traceback", the closest (the process died without a clear paragraph).
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.conftest import TINY_SAM
from tests.reliability import Case

COCO_FILE = "{tmp}/coco/annotations/instances_val2017.json"
SAM_POINTS = (
    "train.py", "head=sam_points", "data=coco", "trainer=cpu", "data.root={tmp}/coco", "data.num_workers=0",
    "head.clicks=2", "sam.random_weights=true", "sam.model_type=vit_b", "paths.output_dir={tmp}/run",
    *(f"sam.{key}={value}" for key, value in TINY_SAM.items()),
)  # fmt: skip
Change = Callable[[dict, dict, int, int], None]


def coco_with(change: Change) -> Callable[[Path], None]:
    """Setup: the generated COCO set under tmp/coco with ``change(annotation #1, its image, height, width)``."""

    def setup(tmp: Path) -> None:
        from datamodules.synthetic.coco import write_coco_like

        path = write_coco_like(tmp / "coco", n_images=2, size_range=((60, 80), (60, 80)))
        data = json.loads(path.read_text())
        ann = data["annotations"][1]
        image = next(i for i in data["images"] if i["id"] == ann["image_id"])
        change(ann, image, image["height"], image["width"])
        path.write_text(json.dumps(data))  # float("nan") is written as NaN

    return setup


def every_coco_item(tmp: Path) -> None:
    from datamodules.sam.coco import CocoDataModule

    datamodule = CocoDataModule(str(tmp / "coco"), num_workers=0)
    datamodule.setup("test")
    for i in range(len(datamodule.dataset)):
        datamodule.dataset[i]


def coco_case(case_id: str, before: str, change: Change, field: str) -> Case:
    return Case(case_id, before, call=every_coco_item, setup=coco_with(change),
                names=(COCO_FILE, "Annotation #1", f"has {field} = "))  # fmt: skip


def ground_truth_bytes(raw: bytes) -> Callable[[Path], object]:
    def load(tmp: Path) -> object:
        from datamodules.retrieval.revisited import load_ground_truth

        (tmp / "gnd_roxford5k.pkl").write_bytes(raw)
        return load_ground_truth(tmp / "gnd_roxford5k.pkl")

    return load


def revisited_query_box(bbx: list[float]) -> Callable[[Path], None]:
    """Call: a revisited set of 64x48 images whose one query has box ``bbx``, every item loaded."""

    def load(tmp: Path) -> None:
        from PIL import Image

        from datamodules.retrieval.revisited import RevisitedDataModule

        folder = tmp / "roxford5k" / "jpg"
        folder.mkdir(parents=True)
        for name in "abq":
            Image.new("RGB", (64, 48), (10, 20, 30)).save(folder / f"{name}.jpg")
        gnd = [{"bbx": np.array(bbx), "easy": np.array([0]), "hard": np.array([], int), "junk": np.array([1])}]
        truth = {"imlist": ["a", "b"], "qimlist": ["q"], "gnd": gnd}
        (tmp / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(truth))
        datamodule = RevisitedDataModule(str(tmp), "roxford5k", image_size=28, num_workers=0)
        datamodule.setup("test")
        for i in range(len(datamodule.dataset)):
            datamodule.dataset[i]

    return load


def bsds_boundaries(maps: np.ndarray) -> Callable[[Path], object]:
    def load(tmp: Path) -> object:
        import scipy.io

        from datamodules.sam.bsds500 import read_boundaries

        cells = np.empty((1, 2), object)
        for k, boundaries in enumerate((np.eye(4, 5, dtype=np.uint8), maps)):
            cells[0, k] = {"Segmentation": np.ones((4, 5), np.uint16), "Boundaries": boundaries}
        scipy.io.savemat(tmp / "0001.mat", {"groundTruth": cells})
        return read_boundaries(tmp / "0001.mat")

    return load


def episodes(support: list[list[str]], query: list[list[str]]) -> Callable[[Path], object]:
    """Call: an episodes file whose episode 1 has these rows, over images a/0..a/3 (class 0) and b/0..b/3 (class 1)."""

    def load(tmp: Path) -> object:
        from datamodules.classification.episodes import load_episodes

        good = {"support": [["a/0"], ["b/0"]], "query": [["a/1"], ["b/1"]]}
        (tmp / "episodes.json").write_text(json.dumps({"episodes": [good, {"support": support, "query": query}]}))
        names = [f"{c}/{i}" for c in "ab" for i in range(4)]
        return load_episodes(tmp / "episodes.json", names, np.repeat([0, 1], 4))

    return load


BYTES_16TB = (16 * 10**12).to_bytes(6, "little")
EPISODE_1 = ("Episode 1 of episodes file {tmp}/episodes.json",)

CASES = [
    # the adversary's commands: train.py head=sam_points data=coco on a polygon pycocotools cannot rasterise
    Case("annot-coco-polygon-nan-train", "traceback", argv=SAM_POINTS, memory_limit_gb=8,
         setup=coco_with(lambda a, i, h, w: a.update(segmentation=[[10, 10, math.nan, 50, 60, 60, 10, 60]])),
         names=(COCO_FILE, "Annotation #1", "has segmentation = ", "finite")),
    Case("annot-coco-polygon-1e12-train", "traceback", argv=SAM_POINTS, memory_limit_gb=8,
         setup=coco_with(lambda a, i, h, w: a.update(segmentation=[[10, 10, 1e12, 50, 60, 60, 10, 60]])),
         names=(COCO_FILE, "Annotation #1", "has segmentation = ", "inside the")),
    # every other field, through the datamodule (setup and every item)
    coco_case("annot-coco-polygon-odd", "silent",
              lambda a, i, h, w: a.update(segmentation=[[10, 10, 20, 10, 20, 20, 10]]), "segmentation"),
    coco_case("annot-coco-rle-sum-large", "traceback",
              lambda a, i, h, w: a.update(segmentation={"size": [h, w], "counts": [0, 2 * h * w]}), "segmentation"),
    coco_case("annot-coco-rle-sum-small", "silent",
              lambda a, i, h, w: a.update(segmentation={"size": [h, w], "counts": [5, 10]}), "segmentation"),
    coco_case("annot-coco-rle-size", "traceback",
              lambda a, i, h, w: a.update(segmentation={"size": [h + 7, w], "counts": [(h + 7) * w]}), "segmentation"),
    coco_case("annot-coco-rle-garbage", "traceback",
              lambda a, i, h, w: a.update(segmentation={"size": [h, w], "counts": "!!!!"}), "segmentation"),
    coco_case("annot-coco-rle-negative", "traceback",
              lambda a, i, h, w: a.update(segmentation={"size": [h, w], "counts": [-5, h * w + 5]}), "segmentation"),
    coco_case("annot-coco-bbox-outside", "silent", lambda a, i, h, w: a.update(bbox=[w + 50, 0, 10, 10]), "bbox"),
    coco_case("annot-coco-category-unknown", "silent", lambda a, i, h, w: a.update(category_id=999), "category_id"),
    coco_case("annot-coco-iscrowd-two", "silent", lambda a, i, h, w: a.update(iscrowd=2), "iscrowd"),
    coco_case("annot-coco-image-id-unknown", "silent", lambda a, i, h, w: a.update(image_id=12345), "image_id"),
    Case("annot-coco-image-width-zero", "clear", call=every_coco_item,
         setup=coco_with(lambda a, i, h, w: i.update(width=0)), names=(COCO_FILE, "Image #", "width = 0")),
    # revisited Oxford / Paris ground truth: pickles asking for terabytes (MemoryError before), bad query boxes
    Case("annot-revisited-bytes-16tb", "traceback",
         call=ground_truth_bytes(b"\x80\x02c__builtin__\nbytes\n\x8a\x06" + BYTES_16TB + b"\x85R."),
         names=("{tmp}/gnd_roxford5k.pkl", "bytes of 16000000000000 bytes")),
    Case("annot-revisited-declared-length", "traceback",
         call=ground_truth_bytes(b"\x80\x04\x8e" + (16 * 10**12).to_bytes(8, "little") + b"."),
         names=("{tmp}/gnd_roxford5k.pkl", "16000000000000")),
    Case("annot-revisited-array-16tb", "traceback",
         call=ground_truth_bytes(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x06"
                                 + BYTES_16TB + b"\x85C\x01b\x87R."),
         names=("{tmp}/gnd_roxford5k.pkl", "an array of 16000000000000 bytes")),
    Case("annot-revisited-query-box-nan", "traceback", call=revisited_query_box([math.nan, 5, 40, 30]),
         names=("{tmp}/roxford5k/gnd_roxford5k.pkl", "gnd[0]['bbx']", "finite")),
    Case("annot-revisited-query-box-reversed", "traceback", call=revisited_query_box([40, 5, 10, 30]),
         names=("{tmp}/roxford5k/gnd_roxford5k.pkl", "gnd[0]['bbx']", "x2 <= x1")),
    Case("annot-revisited-query-box-outside", "silent", call=revisited_query_box([10, 5, 400, 30]),
         names=("{tmp}/roxford5k/gnd_roxford5k.pkl", "query 0", "outside its 64x48")),
    # BSDS500 ground truth
    Case("annot-bsds-boundaries-nan", "silent", call=bsds_boundaries(np.full((4, 5), np.nan)),
         names=("{tmp}/0001.mat", "boundary map 1", "not finite")),
    Case("annot-bsds-boundaries-cell", "traceback", call=bsds_boundaries(np.full((4, 5), "x", dtype=object)),
         names=("{tmp}/0001.mat", "boundary map 1", "object")),
    # episodes files (data.episodes_file): each reported a number before
    Case("annot-episodes-query-is-a-support", "silent", call=episodes([["a/0"], ["b/0"]], [["a/0"], ["b/1"]]),
         names=(*EPISODE_1, "'a/0' both as a support and as a query", "Fix:")),
    Case("annot-episodes-query-of-another-class", "silent", call=episodes([["a/0"], ["b/0"]], [["a/1"], ["a/2"]]),
         names=(*EPISODE_1, "query 'a/2' of row 1", "Fix:")),
    Case("annot-episodes-two-rows-one-class", "silent", call=episodes([["a/0"], ["a/1"]], [["a/2"], ["a/3"]]),
         names=(*EPISODE_1, "2-way, but rows 0 and 1", "Fix:")),
]  # fmt: skip

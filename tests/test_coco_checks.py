"""COCO instance annotations are checked before pycocotools sees them: every bad field is one clear error naming the
file, the annotation and the field, and train.py refuses a NaN or huge polygon instead of exhausting memory."""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from datamodules.errors import DatasetError
from datamodules.sam.coco import CocoDataModule
from datamodules.sam.coco_checks import check_instances, decode_rle_counts
from datamodules.synthetic.coco import write_coco_like
from tests.conftest import TINY_SAM

REPO = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 8 << 30
"""Address space for the train.py runs: a tiny run needs under 8 GB; the NaN polygon once took 24 GB."""


def runs(mask: np.ndarray) -> list[int]:
    """The run lengths of `mask` in column-major order, starting with zeros (COCO's uncompressed RLE)."""
    flat = mask.ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], changes])).tolist()


def test_compressed_counts_decode_as_pycocotools_encodes_them() -> None:
    rng = np.random.default_rng(0)
    for trial in range(50):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        mask = rng.random((h, w)) < rng.random() if trial % 5 else np.full((h, w), trial % 2 == 0)
        text = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
        assert decode_rle_counts(text, h * w).tolist() == runs(mask)
    assert decode_rle_counts("!!", 100) is None and decode_rle_counts("0P", 100) is None  # not digits; unfinished


def test_the_generated_set_passes(tmp_path: Path) -> None:
    path = write_coco_like(tmp_path, n_images=3)
    check_instances(json.loads(path.read_text()), path)


def corrupt(root: Path, change: Callable[[dict, dict, int, int], None]) -> dict:
    """The generated set under root with ``change(annotation #1, its image, height, width)`` applied."""
    path = write_coco_like(root, n_images=2, size_range=((60, 80), (60, 80)))
    data = json.loads(path.read_text())
    ann = data["annotations"][1]
    image = next(i for i in data["images"] if i["id"] == ann["image_id"])
    change(ann, image, image["height"], image["width"])
    path.write_text(json.dumps(data))  # NaN is written as NaN, which json (and COCO's reader) accept
    return ann


BAD = {
    "polygon-nan": (lambda a, i, h, w: a.update(segmentation=[[10, 10, math.nan, 50, 60, 60, 10, 60]]), "segmentation"),
    "polygon-huge": (lambda a, i, h, w: a.update(segmentation=[[10, 10, 1e12, 50, 60, 60, 10, 60]]), "segmentation"),
    "polygon-odd": (lambda a, i, h, w: a.update(segmentation=[[10, 10, 20, 10, 20, 20, 10]]), "segmentation"),
    "polygon-two-points": (lambda a, i, h, w: a.update(segmentation=[[10, 10, 20, 10]]), "segmentation"),
    "polygon-strings": (lambda a, i, h, w: a.update(segmentation=[["1", 1, 2, 2, 3, 3]]), "segmentation"),
    "polygon-loops": (lambda a, i, h, w: a.update(segmentation=[[0, 0, w, h] * 2000]), "segmentation"),
    "rle-sum": (lambda a, i, h, w: a.update(segmentation={"size": [h, w], "counts": [0, 2 * h * w]}), "segmentation"),
    "rle-size": (lambda a, i, h, w: a.update(segmentation={"size": [h + 7, w], "counts": [h * w]}), "segmentation"),
    "rle-garbage": (lambda a, i, h, w: a.update(segmentation={"size": [h, w], "counts": "!!!!"}), "segmentation"),
    "rle-negative": (lambda a, i, h, w: a.update(segmentation={"size": [h, w], "counts": [-5, h * w + 5]}), "segmentation"),
    "bbox-outside": (lambda a, i, h, w: a.update(bbox=[w + 50, 0, 10, 10]), "bbox"),
    "bbox-nan": (lambda a, i, h, w: a.update(bbox=[1, 2, math.nan, 4]), "bbox"),
    "area-negative": (lambda a, i, h, w: a.update(area=-1), "area"),
    "category-unknown": (lambda a, i, h, w: a.update(category_id=999), "category_id"),
    "iscrowd-two": (lambda a, i, h, w: a.update(iscrowd=2), "iscrowd"),
    "image-unknown": (lambda a, i, h, w: a.update(image_id=12345), "image_id"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_annotation_names_the_file_index_id_and_field(tmp_path: Path, case: str) -> None:
    change, field = BAD[case]
    ann = corrupt(tmp_path, change)
    match = rf"Annotation #1 \(id {ann['id']}\) in {tmp_path}/annotations/instances_val2017\.json has {field} = .*Fix"
    with pytest.raises(DatasetError, match=match):
        CocoDataModule(str(tmp_path), num_workers=0).setup("test")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a, i, h, w: i.update(width=0), r"Image #\d of the instance annotations .* has height = \d+, width = 0"),
        (lambda a, i, h, w: i.update(height=1 << 20), r"height = 1048576, width = \d+: both must be whole numbers"),
        (lambda a, i, h, w: i.update(height=60.5), r"height = 60.5"),
    ],
)
def test_a_bad_image_size_names_the_image(tmp_path: Path, change: Callable, message: str) -> None:
    corrupt(tmp_path, change)
    with pytest.raises(DatasetError, match=message):
        CocoDataModule(str(tmp_path), num_workers=0).setup("test")


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.mark.parametrize("value", [math.nan, 1e12], ids=["nan", "1e12"])
def test_train_py_refuses_a_polygon_pycocotools_cannot_rasterise(tmp_path: Path, value: float) -> None:
    """The adversary's command, under a memory limit so that a regression fails here instead of taking the machine."""
    polygon = [[10, 10, value, 50, 60, 60, 10, 60]]
    ann = corrupt(tmp_path / "coco", lambda a, i, h, w: a.update(segmentation=polygon))
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "head=sam_points", "data=coco", "trainer=cpu",
         f"data.root={tmp_path / 'coco'}", "data.num_workers=0", "head.clicks=2", "sam.random_weights=true",
         "sam.model_type=vit_b", *(f"sam.{key}={v}" for key, v in TINY_SAM.items()), f"paths.output_dir={tmp_path}/run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=limit_memory, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"Annotation #1 (id {ann['id']}) in {tmp_path}/coco/annotations/instances_val2017.json" in proc.stderr
    assert "has segmentation = [[10, 10, " in proc.stderr and "finite" in proc.stderr

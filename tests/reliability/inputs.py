"""Data inputs: SAM's box prompts from Python, detections files, oversized images, bad loader numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import TINY_SAM
from tests.reliability import TINY_TRAIN, Case, Result

SAM_TRAIN = (
    "experiment=sam_quickstart",
    "data.root={tmp}/coco",
    "data.detections={tmp}/dets.json",
    "head.overlays=0",
    "head.point_prompts=false",
    *(f"sam.{key}={value}" for key, value in TINY_SAM.items()),
)
# 14000 x 14000 = 196 M pixels, over twice Pillow's Image.MAX_IMAGE_PIXELS: a 1-bit PNG of it is 24 kB on disk.
BOMB_SIZE = (14000, 14000)


def sam_predict(boxes: list[list[float]], hw: tuple[int, int] = (40, 60)) -> object:
    import torch

    from sam import SamBoxPredictor, build_sam

    torch.manual_seed(0)
    return SamBoxPredictor(build_sam("vit_b", **TINY_SAM)).predict(np.zeros((*hw, 3), np.uint8), np.array(boxes))


def write_bomb(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", BOMB_SIZE).save(path)


def write_images(folder: Path, n: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def predict_dir_with_bomb(tmp: Path) -> None:
    write_images(tmp / "photos", 1)
    write_bomb(tmp / "photos" / "huge.png")


def class_folders_with_bomb(tmp: Path) -> None:
    write_images(tmp / "classes" / "a", 2)
    write_images(tmp / "classes" / "b", 2, seed=1)
    write_bomb(tmp / "classes" / "b" / "huge.png")


def coco_with_detections(bad: dict[str, object]) -> object:
    """A generated COCO-format set under tmp/coco and tmp/dets.json whose second detection has the ``bad`` fields."""

    def setup(tmp: Path) -> None:
        from datamodules.synthetic.coco import write_coco_like

        write_coco_like(tmp / "coco", n_images=2, size_range=((60, 80), (60, 80)))
        good = {"image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 15], "score": 0.9}
        (tmp / "dets.json").write_text(json.dumps([good, good | bad]))  # json writes float("nan") as NaN

    return setup


def no_results_file(tmp: Path, result: Result) -> None:
    assert not list(tmp.rglob("segm_results.json")), "a results file was written"


def datamodule(kind: str, **kwargs: object) -> object:
    if kind == "ade20k":
        from datamodules.segmentation import ADE20kDataModule

        return ADE20kDataModule("ade", **kwargs)
    if kind == "nyu":
        from datamodules.depth.nyu import NYUDataModule

        return NYUDataModule("nyu", **kwargs)
    if kind == "coco":
        from datamodules.sam.coco import CocoDataModule

        return CocoDataModule("coco", **kwargs)
    from datamodules.classification.imagefolder import ImageFolderDataModule

    return ImageFolderDataModule("images", **kwargs)


CASES = [
    # SamBoxPredictor.predict from Python
    Case("input-sam-box-nan", "silent", call=lambda tmp: sam_predict([[0, 0, 10, 10], [np.nan, 0, 10, 10]]),
         names=("Box 1", "nan", "finite")),
    Case("input-sam-box-inf", "silent", call=lambda tmp: sam_predict([[0, 0, np.inf, 10]]), names=("Box 0", "inf")),
    Case("input-sam-box-reversed", "silent", call=lambda tmp: sam_predict([[30, 0, 10, 10]]),
         names=("Box 0", "x2", "XYXY")),
    Case("input-sam-box-outside", "silent", call=lambda tmp: sam_predict([[100, 100, 200, 200]]),
         names=("Box 0", "outside", "60x40")),
    Case("input-sam-image-empty", "traceback", call=lambda tmp: sam_predict([[0, 0, 1, 1]], hw=(0, 0)),
         names=("0x0",)),
    # SAM evaluation with a detector's boxes: train.py experiment=sam_quickstart data.detections=FILE
    Case("input-sam-detection-nan-score", "silent", argv=("train.py", *SAM_TRAIN),
         setup=coco_with_detections({"score": float("nan")}), names=("{tmp}/dets.json", "#1", "score"),
         check=no_results_file),
    Case("input-sam-detection-string-bbox", "traceback", argv=("train.py", *SAM_TRAIN),
         setup=coco_with_detections({"bbox": ["a", "b", "c", "d"]}), names=("{tmp}/dets.json", "#1", "bbox"),
         check=no_results_file),
    # decompression bombs where datamodules read images
    Case("input-predict-dir-bomb", "traceback",
         argv=("train.py", *TINY_TRAIN, "train=false", "test=false", "data.predict_dir={tmp}/photos"),
         setup=predict_dir_with_bomb, names=("{tmp}/photos/huge.png", "196000000 pixels", "MAX_IMAGE_PIXELS")),
    Case("input-imagefolder-bomb", "traceback",
         argv=("train.py", "head=fewshot", "data=imagefolder", "trainer=cpu", "backbone.checkpoint={tiny}",
               "backbone.embed_dim=64", "backbone.depth=4", "backbone.num_heads=4", "data.root={tmp}/classes",
               "data.resize_size=28", "data.crop_size=28", "data.num_workers=0", "data.n_way=2", "data.k_shot=1",
               "data.n_queries=1", "data.n_episodes=2"),
         setup=class_folders_with_bomb, names=("{tmp}/classes/b/huge.png", "196000000 pixels")),
    # loader numbers, checked when the datamodule is built
    Case("input-batch-size-zero-imagefolder", "traceback", call=lambda tmp: datamodule("imagefolder", batch_size=0),
         names=("batch_size=0",)),
    Case("input-num-workers-negative", "traceback", call=lambda tmp: datamodule("ade20k", num_workers=-1),
         names=("num_workers=-1",)),
    Case("input-num-workers-negative-coco", "traceback", call=lambda tmp: datamodule("coco", num_workers=-2),
         names=("num_workers=-2",)),
    Case("input-crop-size-zero", "traceback", call=lambda tmp: datamodule("ade20k", crop_size=0),
         names=("crop_size=0",)),
    Case("input-crop-size-negative-depth", "traceback", call=lambda tmp: datamodule("nyu", crop_size=[416, -1]),
         names=("crop_size=[416, -1]",)),
    Case("input-batch-size-negative-depth", "traceback", call=lambda tmp: datamodule("nyu", batch_size=-4),
         names=("batch_size=-4",)),
]  # fmt: skip

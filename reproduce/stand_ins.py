"""Generated stand-ins, in the real datasets' own layouts, for the `--pipeline` runs of rows whose datamodules have no
`data.generate` of their own: Pascal VOC 2012, Cityscapes, KITTI and ImageNet (class folders).

Each writer converts a set of the datamodules' generators (ADE20k-like shapes, NYU-like rooms) into the real layout,
so that the real datamodule reads it: VOC's split lists and palette PNGs with a 255 object border, Cityscapes'
labelIds, KITTI's Eigen split lists and 16-bit depth x 256 PNGs (sparse, as LiDAR's; one "None" line), ImageNet's
train/ and val/ class folders. Each is written once under `data_dir` (`utils.atomic.atomic_folder`: a temporary
folder renamed into place under a lock); an existing one is kept. Small images: a stand-in only shows the row runs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.segmentation.cityscapes import EVAL_CLASSES
from datamodules.segmentation.voc import voc_palette
from datamodules.synthetic.ade20k import write_ade20k_like
from datamodules.synthetic.nyu import write_nyu_like
from utils.atomic import atomic_folder

SIZES = ((60, 76), (72, 96))  # (min_h, max_h), (min_w, max_w) of the segmentation stand-ins
KITTI_FOCAL = 721.5377  # the third column of KITTI's Eigen split lists


def shapes(scratch: Path, n_train: int = 4, n_val: int = 2) -> Path:
    """The ADE20k-like set (labels 0..8) under `scratch`; returns its ADEChallengeData2016 folder."""
    return write_ade20k_like(scratch, n_train, n_val, size_range=SIZES, num_classes=8)


def pairs(ade: Path, split: str) -> list[tuple[Path, np.ndarray]]:
    """(image, label `(H, W)` uint8) of one ADE split ("training" or "validation"), in name order."""
    images = sorted((ade / "images" / split).glob("*.jpg"))
    return [(image, np.asarray(Image.open(ade / "annotations" / split / f"{image.stem}.png"))) for image in images]


def write_voc(out: Path) -> None:
    """`out/VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}`: class ids 0..8 kept (0 is
    VOC's background), a 1-pixel 255 border where the class changes, as VOC's object borders."""
    ade = shapes(out / "scratch")
    base = out / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True)
    palette = voc_palette(256).flatten().tolist()
    for split, source in (("train", "training"), ("val", "validation")):
        stems = []
        for index, (image, label) in enumerate(pairs(ade, source)):
            stem = f"2007_{split}_{index:04d}"
            border = np.zeros(label.shape, bool)
            border[:, 1:] |= label[:, 1:] != label[:, :-1]
            border[1:] |= label[1:] != label[:-1]
            png = Image.fromarray(np.where(border, 255, label).astype(np.uint8)).convert("P")
            png.putpalette(palette)
            png.save(base / "SegmentationClass" / f"{stem}.png")
            shutil.copy(image, base / "JPEGImages" / f"{stem}.jpg")
            stems.append(stem)
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    shutil.rmtree(out / "scratch")


def write_cityscapes(out: Path) -> None:
    """`out/{leftImg8bit,gtFine}/{train,val}/pipeline/`: class k in 1..8 becomes the labelId of trainId k - 1,
    0 becomes labelId 0 ("unlabeled", not evaluated)."""
    ade = shapes(out / "scratch")
    label_ids = np.array([0, *(c.id for c in EVAL_CLASSES[:8])], dtype=np.uint8)
    for split, source in (("train", "training"), ("val", "validation")):
        images, labels = out / "leftImg8bit" / split / "pipeline", out / "gtFine" / split / "pipeline"
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for index, (image, label) in enumerate(pairs(ade, source)):
            stem = f"pipeline_{index:06d}_000019"
            Image.open(image).convert("RGB").save(images / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids[label]).save(labels / f"{stem}_gtFine_labelIds.png")
    shutil.rmtree(out / "scratch")


def write_kitti(out: Path) -> None:
    """`out/{kitti_eigen_train.txt,kitti_eigen_test.txt,input/,gt_depth/}` from NYU-like rooms: PNG images, 16-bit
    depth x 256 with two thirds of the pixels empty (0), as projected LiDAR; one test line without depth ("None")."""
    nyu = write_nyu_like(out / "scratch", n_train=4, n_test=2, size=(72, 120))
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        lines = []
        for index, line in enumerate((nyu / f"nyu_{split}.txt").read_text().split("\n")[:-1]):
            rgb, depth = (nyu / name.lstrip("/") for name in line.split()[:2])
            drive = f"2011_09_26_drive_{split}_{index:04d}_sync"
            image = Path("2011_09_26") / drive / "image_02" / "data" / "0000000005.png"
            truth = Path(drive) / "proj_depth" / "groundtruth" / "image_02" / "0000000005.png"
            metres = np.asarray(Image.open(depth)).astype(np.float64) / 1000
            metres[rng.random(metres.shape) < 2 / 3] = 0
            (out / "input" / image).parent.mkdir(parents=True)
            (out / "gt_depth" / truth).parent.mkdir(parents=True)
            Image.open(rgb).convert("RGB").save(out / "input" / image)
            Image.fromarray(np.rint(metres * 256).astype(np.uint16)).save(out / "gt_depth" / truth)
            lines.append(f"{image.as_posix()} {truth.as_posix()} {KITTI_FOCAL}")
        if split == "test":
            lines.append(f"{lines[0].split()[0]} None {KITTI_FOCAL}")  # a frame without ground truth, skipped
        (out / f"kitti_eigen_{split}.txt").write_text("\n".join(lines) + "\n")
    shutil.rmtree(out / "scratch")


def write_imagenet(out: Path, n_classes: int = 4, n_train: int = 6, n_val: int = 2, side: int = 64) -> None:
    """`out/{train,val}/<wnid>/*.JPEG`: class c is stripes of its own colour and angle under noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:side, :side].astype(np.float64)
    for c in range(n_classes):
        colour = np.array([255 * (c % 2), 255 * (c // 2 % 2), 160], dtype=np.float64)
        angle = np.pi * c / n_classes
        for split, n in (("train", n_train), ("val", n_val)):
            folder = out / split / f"n{c + 1:08d}"
            folder.mkdir(parents=True)
            for i in range(n):
                phase = rng.uniform(0, 2 * np.pi)
                stripes = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / 8 + phase)
                pixels = colour * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 20, (side, side, 3))
                name = f"ILSVRC2012_{split}_{c:02d}{i:04d}.JPEG"
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / name, format="JPEG")


# stand-in name -> (its folder under data_dir, as the row's pipeline overrides read it; its writer)
STAND_INS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "voc2012": ("voc2012", write_voc),
    "cityscapes": ("cityscapes", write_cityscapes),
    "kitti": ("kitti", write_kitti),
    "imagenet": ("imagenet", write_imagenet),
}


def write_stand_in(name: str, data_dir: Path) -> Path:
    """Write stand-in `name` under `data_dir` unless it is there; return its folder."""
    folder, write = STAND_INS[name]
    return atomic_folder(data_dir / folder, write)

"""A tiny COCO-format instance set of drawn shapes with known masks, for tests and the SAM quickstart."""

import colorsys
import json
from functools import partial
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from utils.atomic import atomic_write, write_text

CATEGORIES = ("rectangle", "ellipse", "triangle")


def write_coco_like(
    root: str | Path,
    n_images: int = 8,
    split: str = "val2017",
    size_range: tuple[tuple[int, int], tuple[int, int]] = ((160, 240), (200, 320)),
    seed: int = 0,
) -> Path:
    """Write root/<split>/*.jpg and root/annotations/instances_<split>.json and return the JSON's path.

    Each image (H, W) with H, W drawn from size_range ((min_h, max_h), (min_w, max_w)) is a textured
    background with 2-6 shapes (categories 1..3 of CATEGORIES, 8 px to half the image wide) in flat colours;
    later shapes hide earlier ones, and each annotation is the visible part as an RLE mask with its
    area and bbox. Deterministic given seed.

    Every file is written atomically and the annotations last, under a lock beside them: runs started together
    write the set once, a killed writer's images are written again (no annotations name them yet), and a set with
    its annotations is kept.
    """
    root = Path(root).expanduser()
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        if not path.is_file():
            _write_set(root, path, n_images, split, size_range, seed)
    return path


def _write_set(
    root: Path,
    path: Path,
    n_images: int,
    split: str,
    size_range: tuple[tuple[int, int], tuple[int, int]],
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        h, w = (int(rng.integers(lo, hi + 1)) for lo, hi in size_range)
        image, masks, categories = _draw(rng, h, w)
        file_name = f"{image_id:012d}.jpg"
        atomic_write(root / split / file_name, partial(_save_jpeg, image))
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for mask, category in zip(masks, categories):
            rle = mask_utils.encode(np.asfortranarray(mask))
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(),
                "iscrowd": 0,
            })  # fmt: skip
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)]
    write_text(path, json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, quality=95)


def _draw(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """(h, w, 3) uint8 image, the visible (h, w) bool mask of each shape, and each shape's category id."""
    _, x = np.mgrid[:h, :w]
    image = 100 + 40 * np.sin(x / 7.0)[..., None] * np.array([1.0, 0.6, 0.3]) + rng.normal(0, 8, (h, w, 3))
    masks, categories = [], []
    for _ in range(int(rng.integers(2, 7))):
        category = int(rng.integers(1, len(CATEGORIES) + 1))
        bw, bh = int(rng.integers(8, w // 2)), int(rng.integers(8, h // 2))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        canvas = Image.new("1", (w, h))
        draw = ImageDraw.Draw(canvas)
        corners = (x0, y0, x0 + bw, y0 + bh)
        if category == 1:
            draw.rectangle(corners, fill=1)
        elif category == 2:
            draw.ellipse(corners, fill=1)
        else:
            draw.polygon([(x0, y0 + bh), (x0 + bw // 2, y0), (x0 + bw, y0 + bh)], fill=1)
        shape = np.asarray(canvas, dtype=bool)
        masks = [m & ~shape for m in masks]
        masks.append(shape)
        categories.append(category)
        colour = np.array(colorsys.hsv_to_rgb(rng.random(), 0.8, 0.95)) * 255
        image[shape] = colour + rng.normal(0, 8, (int(shape.sum()), 3))
    kept = [i for i, m in enumerate(masks) if m.sum() >= 16]
    return image.clip(0, 255).astype(np.uint8), [masks[i] for i in kept], [categories[i] for i in kept]

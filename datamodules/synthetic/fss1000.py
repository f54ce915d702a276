"""A tiny one-shot segmentation set in FSS-1000's layout, for tests and the offline quickstart."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from utils.atomic import atomic_folder, write_text

SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond")


def class_names(n_classes: int) -> list[str]:
    """The generated classes' folder names: one shape each, numbered by hue."""
    return [f"{k}_{shape}" for k, shape in enumerate(SHAPES[:n_classes])]


def write_oneshot_like(root: str | Path, n_classes: int = 6, n_images: int = 6, size: int = 96, seed: int = 0) -> Path:
    """Write root/fewshot_data/<class>/<n>.{jpg,png} (n = 1..n_images) and root/splits/test.txt; return the folder.

    Class k is one shape (`SHAPES[k]`) in its own hue and stripe texture (angle and period set by k), pasted at a
    random place and scale (30-60% of the side) on a textured grey-toned background; half the images also hold a
    smaller object of another class, which the mask leaves out. Masks are 0/255 PNGs, images JPEGs, all
    `size` x `size`. Deterministic given seed. The split list (every class) is written first and the image folder
    beside its place and renamed into it under a lock (`utils.atomic.atomic_folder`): runs started together write it
    once, a killed writer leaves no half-written set, and an existing set is kept.
    """
    if not 1 <= n_classes <= len(SHAPES) or n_images < 2 or size < 16:
        got = f"n_classes={n_classes}, n_images={n_images}, size={size}"
        raise ValueError(f"need 1 <= n_classes <= {len(SHAPES)}, n_images >= 2 and size >= 16; got {got}")
    root = Path(root).expanduser()
    names = class_names(n_classes)
    write_text(root / "splits" / "test.txt", "\n".join(names) + "\n")
    rng = np.random.default_rng(seed)
    return atomic_folder(root / "fewshot_data", lambda out: _write_classes(out, rng, names, n_images, size))


def _write_classes(out: Path, rng: np.random.Generator, names: list[str], n_images: int, size: int) -> None:
    for k, name in enumerate(names):
        (out / name).mkdir(parents=True)
        for n in range(1, n_images + 1):
            image = _background(rng, size)
            if len(names) > 1 and rng.random() < 0.5:  # a distractor of another class, left out of the mask
                other = int(rng.choice([j for j in range(len(names)) if j != k]))
                _paste(rng, image, other, len(names), scale=(0.2, 0.3))
            mask = _paste(rng, image, k, len(names), scale=(0.3, 0.6))
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(out / name / f"{n}.jpg", quality=95)
            Image.fromarray((mask * 255).astype(np.uint8)).save(out / name / f"{n}.png")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """`(size, size, 3)` float: a smooth grey-toned gradient with a low-frequency ripple and pixel noise."""
    y, x = np.mgrid[:size, :size].astype(np.float64) / size
    a, b, phase = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, 2 * np.pi)
    tone = 110 + 40 * (a * x + b * y) + 20 * np.sin(2 * np.pi * 2.5 * (x + y) + phase)
    tint = rng.uniform(0.85, 1.15, 3)
    return tone[..., None] * tint + rng.normal(0, 6, (size, size, 3))


def _paste(
    rng: np.random.Generator, image: np.ndarray, k: int, n_classes: int, scale: tuple[float, float]
) -> np.ndarray:
    """Paint class k's object into `image` (in place) at a random place; return its visible `(H, W)` bool mask."""
    size = image.shape[0]
    side = int(size * rng.uniform(*scale))
    x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
    canvas = Image.new("1", (size, size))
    _draw_shape(ImageDraw.Draw(canvas), SHAPES[k], x0, y0, side)
    mask = np.asarray(canvas, dtype=bool)
    y, x = np.nonzero(mask)
    angle, period = np.pi * k / n_classes, 4 + 2 * k
    stripes = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    colour = np.array(colorsys.hsv_to_rgb(k / n_classes, 0.8, 0.95)) * 255
    image[mask] = colour * (0.7 + 0.3 * stripes[:, None]) + rng.normal(0, 5, (len(y), 3))
    return mask


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x0: int, y0: int, side: int) -> None:
    x1, y1, mid, third = x0 + side, y0 + side, side // 2, max(side // 3, 1)
    if shape == "disc":
        draw.ellipse((x0, y0, x1, y1), fill=1)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=1)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x0 + mid, y0), (x1, y1)], fill=1)
    elif shape == "ring":
        draw.ellipse((x0, y0, x1, y1), fill=1)
        draw.ellipse((x0 + third, y0 + third, x1 - third, y1 - third), fill=0)
    elif shape == "cross":
        draw.rectangle((x0 + third, y0, x1 - third, y1), fill=1)
        draw.rectangle((x0, y0 + third, x1, y1 - third), fill=1)
    else:
        draw.polygon([(x0 + mid, y0), (x1, y0 + mid), (x0 + mid, y1), (x0, y0 + mid)], fill=1)

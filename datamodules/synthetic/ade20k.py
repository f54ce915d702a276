"""A tiny synthetic dataset in the ADE20k layout, for tests and the quickstart."""

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from utils.atomic import atomic_folder

N_SHAPE_CLASSES = 8  # classes 1..8 are drawn; 0 is "other"


def write_ade20k_like(
    root: str | Path,
    n_train: int = 32,
    n_val: int = 8,
    size_range: tuple[tuple[int, int], tuple[int, int]] = ((180, 260), (200, 320)),
    num_classes: int = 150,
    seed: int = 0,
) -> Path:
    """Write root/ADEChallengeData2016/{images,annotations}/{training,validation}/ and return that folder.

    Each image (H, W) with H, W drawn from size_range ((min_h, max_h), (min_w, max_w)) is a background class
    plus a few rectangles and ellipses of classes 1..min(8, num_classes), each class with its own colour and
    stripe texture plus noise, and one patch of grey noise labelled 0 ("other"). JPEG images, uint8 PNG labels.
    Deterministic given seed. The set is written beside its place and renamed into it under a lock
    (`utils.atomic.atomic_folder`): runs started together write it once, and an existing set is kept.
    """
    rng = np.random.default_rng(seed)
    classes = np.arange(1, min(N_SHAPE_CLASSES, num_classes) + 1)
    colours = np.array([colorsys.hsv_to_rgb(k / len(classes), 0.75, 0.9) for k in range(len(classes))]) * 255
    return atomic_folder(
        Path(root).expanduser() / "ADEChallengeData2016",
        lambda out: _write_splits(out, rng, classes, colours, n_train, n_val, size_range),
    )


def _write_splits(
    out: Path,
    rng: np.random.Generator,
    classes: np.ndarray,
    colours: np.ndarray,
    n_train: int,
    n_val: int,
    size_range: tuple[tuple[int, int], tuple[int, int]],
) -> None:
    for split, prefix, n in (("training", "train", n_train), ("validation", "val", n_val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = (int(rng.integers(lo, hi + 1)) for lo, hi in size_range)
            label = _draw_label(rng, h, w, classes)
            image = _paint(rng, label, classes, colours)
            stem = f"ADE_{prefix}_{i + 1:08d}"
            Image.fromarray(image).save(out / "images" / split / f"{stem}.jpg", quality=90)
            Image.fromarray(label).save(out / "annotations" / split / f"{stem}.png")


def _draw_label(rng: np.random.Generator, h: int, w: int, classes: np.ndarray) -> np.ndarray:
    """(h, w) uint8 label: a background class, 2-5 shapes of random classes, one small patch of 0."""
    label = Image.new("L", (w, h), int(rng.choice(classes)))
    draw = ImageDraw.Draw(label)
    for fill in [*rng.choice(classes, size=rng.integers(2, 6)), 0]:
        scale = 0.25 if fill == 0 else 0.6
        bw, bh = int(rng.integers(w // 8, int(w * scale) + 1)), int(rng.integers(h // 8, int(h * scale) + 1))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x0 + bw, y0 + bh), fill=int(fill))
    return np.asarray(label)


def _paint(rng: np.random.Generator, label: np.ndarray, classes: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 image: class k's colour times its stripe texture (angle and period set by k), plus noise."""
    h, w = label.shape
    y, x = np.mgrid[:h, :w].astype(np.float32)
    image = rng.normal(128, 40, (h, w, 3))  # class 0 ("other"): grey noise
    for k, colour in zip(classes, colours):
        mask = label == k
        angle, period = np.pi * k / len(classes), 4 + 2 * k
        stripes = np.sin(2 * np.pi * (x[mask] * np.cos(angle) + y[mask] * np.sin(angle)) / period)
        image[mask] = colour * (0.75 + 0.25 * stripes[:, None])
    image += rng.normal(0, 10, image.shape)
    return image.clip(0, 255).astype(np.uint8)

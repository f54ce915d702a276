"""A small synthetic dataset in the NYU-Depth v2 layout, for tests and the offline quickstart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from utils.atomic import atomic_folder

FOCAL = 518.8579  # NYU's focal length, the third column of its split files


def write_nyu_like(
    root: str | Path, n_train: int = 24, n_test: int = 8, size: tuple[int, int] = (480, 640), seed: int = 0
) -> Path:
    """Write root/nyu/{train_XX,test_XX}/{rgb,sync_depth}_00000.{jpg,png} and nyu_{train,test}.txt; return root/nyu.

    Each (H, W) = `size` scene is a room seen in perspective: a floor whose depth grows towards the
    horizon, a back wall at 4-9.5 m bending towards the sides, and 2-4 boxes standing on the floor
    (nearer boxes lower and larger). Surfaces have their own colour, darkened with distance, and a
    stripe texture whose period shrinks with distance; one patch per map has no depth (0), as NYU's holes.
    Depth PNGs hold millimetres (uint16). Deterministic given seed. The set is written beside its place and renamed
    into it under a lock (`utils.atomic.atomic_folder`): runs started together write it once, and an existing set is
    kept.
    """
    rng = np.random.default_rng(seed)
    return atomic_folder(Path(root).expanduser() / "nyu", lambda out: _write_splits(out, rng, n_train, n_test, size))


def _write_splits(out: Path, rng: np.random.Generator, n_train: int, n_test: int, size: tuple[int, int]) -> None:
    for split, n in (("train", n_train), ("test", n_test)):
        lines = []
        for i in range(n):
            scene = out / f"{split}_{i:02d}"
            scene.mkdir(parents=True, exist_ok=True)
            depth, surface = _room(rng, *size)
            image = _paint(rng, depth, surface)
            y0, x0 = int(rng.integers(0, size[0] * 3 // 4)), int(rng.integers(0, size[1] * 3 // 4))
            depth[y0 : y0 + size[0] // 10, x0 : x0 + size[1] // 10] = 0
            Image.fromarray(image).save(scene / "rgb_00000.jpg", quality=92)
            Image.fromarray(np.rint(depth * 1000).astype(np.uint16)).save(scene / "sync_depth_00000.png")
            lead = "/" if split == "train" else ""  # NYU's training list starts its paths with "/"
            lines.append(f"{lead}{scene.name}/rgb_00000.jpg {lead}{scene.name}/sync_depth_00000.png {FOCAL}")
        (out / f"nyu_{split}.txt").write_text("\n".join(lines) + "\n")


def _room(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Depth `(h, w)` float metres in [0.5, 9.9] and surface ids `(h, w)` int (0 wall, 1 floor, 2.. boxes)."""
    y, x = np.mgrid[:h, :w].astype(np.float64)
    horizon, camera = rng.uniform(0.35, 0.55) * h, rng.uniform(0.8, 1.3)
    wall = rng.uniform(4.0, 9.5) / (1 + rng.uniform(0.0, 1.2) * np.abs(x / w - rng.uniform(0.3, 0.7)))
    floor = np.where(y > horizon, camera * h / np.maximum(y - horizon, 1e-3), np.inf)
    depth = np.minimum(wall, floor)
    surface = (floor < wall).astype(np.int64)
    for box in range(int(rng.integers(2, 5))):
        d = rng.uniform(1.0, 0.8 * wall.min())
        bottom = min(int(horizon + camera * h / d), h)
        bh, bw = int(h * rng.uniform(0.3, 0.8) / d), int(w * rng.uniform(0.3, 0.8) / d)
        left = int(rng.integers(0, max(w - bw, 1)))
        region = (slice(max(bottom - bh, 0), bottom), slice(left, left + bw))
        closer = depth[region] > d
        depth[region][closer] = d
        surface[region][closer] = 2 + box
    return depth.clip(0.5, 9.9), surface


def _paint(rng: np.random.Generator, depth: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8: each surface's colour x stripes of period ~ 1 / depth, darkened with distance, plus noise."""
    h, w = depth.shape
    x = np.mgrid[:h, :w][1].astype(np.float64)
    colours = rng.uniform(60, 230, (int(surface.max()) + 1, 3))
    stripes = 0.8 + 0.2 * np.sin(2 * np.pi * x * depth / (0.15 * w))
    image = colours[surface] * (stripes / (1 + 0.08 * depth))[..., None]
    image += rng.normal(0, 6, image.shape)
    return image.clip(0, 255).astype(np.uint8)

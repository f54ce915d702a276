"""Pictures of predicted instance masks and their prompt boxes over the image (matplotlib), and `display_copy`: the
smaller copy of a large photograph that every figure of the project draws."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from PIL import Image

from utils.atomic import atomic_write

DISPLAY_MAX_SIDE = 2048
"""Photographs are drawn from a copy at most this many pixels on the longer side. A figure panel is a few hundred
pixels wide, and matplotlib resamples what it is given as float64 RGBA, 32 bytes a pixel: 0.8 GB for a 24-megapixel
photograph (6000x4000), four times that for the float images of mask overlays, before the copy is drawn at all."""


def display_copy(
    image: np.ndarray, masks: np.ndarray | None = None, max_side: int = DISPLAY_MAX_SIDE
) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` ``(H, W, 3)`` uint8 and ``masks`` ``(N, H, W)`` bool (or one ``(H, W)`` mask) as drawn: unchanged when
    the longer side is at most ``max_side``, else resized to it (the image antialiased, the masks nearest).

    Draw the copy with ``extent=pixel_extent(image)`` so that points and boxes in the original's pixels stay put.
    """
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image, masks
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))
    if masks is None:
        return small, None
    shrunk = [
        np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in masks.reshape(-1, height, width)
    ]
    return small, np.array(shrunk, dtype=bool).reshape(*masks.shape[:-2], size[1], size[0])


def pixel_extent(image: np.ndarray) -> tuple[float, float, float, float]:
    """``imshow``'s extent of ``image`` ``(H, W, ...)`` in its own pixels (pixel centres at whole numbers), for drawing
    a `display_copy` of it where the original would be."""
    height, width = image.shape[:2]
    return (-0.5, width - 0.5, height - 0.5, -0.5)


def save_overlay(
    path: Path,
    image: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray | None = None,
    points: np.ndarray | None = None,
) -> None:
    """Write a PNG of `image` `(H, W, 3)` uint8 with `masks` `(N, H, W)` bool filled in one colour each,
    `boxes` `(N, 4)` xyxy outlined in the same colour, optional `scores` `(N,)` written at the boxes and
    `points` `(P, 2)` xy marked. Written atomically, at the image's size up to `DISPLAY_MAX_SIDE` pixels on the longer
    side (a larger image is drawn from its `display_copy`)."""
    extent = pixel_extent(image)
    image, masks = display_copy(image, masks)
    h, w = image.shape[:2]
    colours = plt.get_cmap("tab20")(np.arange(len(masks)) % 20)[:, :3]
    tinted = image.astype(np.float32) / 255
    for mask, colour in zip(masks, colours):
        tinted[mask] = 0.45 * tinted[mask] + 0.55 * colour
    fig, ax = plt.subplots(figsize=(w / 100, h / 100), dpi=100)
    ax.imshow(tinted, extent=extent)
    for i, ((x0, y0, x1, y1), colour) in enumerate(zip(boxes, colours)):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))
        if scores is not None:
            ax.text(x0, y0, f"{scores[i]:.2f}", color="white", fontsize=6, backgroundcolor=colour, va="bottom")
    if points is not None and len(points):
        ax.scatter(points[:, 0], points[:, 1], marker="*", s=40, c="yellow", edgecolors="black", linewidths=0.5)
    ax.set_axis_off()
    fig.subplots_adjust(0, 0, 1, 1)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)

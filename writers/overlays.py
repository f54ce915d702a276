"""Pictures of predicted instance masks and their prompt boxes over the image (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from utils.atomic import atomic_write


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
    `points` `(P, 2)` xy marked. Written atomically."""
    h, w = image.shape[:2]
    colours = plt.get_cmap("tab20")(np.arange(len(masks)) % 20)[:, :3]
    tinted = image.astype(np.float32) / 255
    for mask, colour in zip(masks, colours):
        tinted[mask] = 0.45 * tinted[mask] + 0.55 * colour
    fig, ax = plt.subplots(figsize=(w / 100, h / 100), dpi=100)
    ax.imshow(tinted)
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

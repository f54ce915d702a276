"""One-shot segmentation outputs: binary mask PNGs and the figure of a reference beside its targets (matplotlib)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from PIL import Image

from utils.atomic import atomic_write
from writers.overlays import display_copy, pixel_extent

MASK_COLOUR = np.array([0.1, 0.6, 1.0])


def save_mask_png(mask: np.ndarray, path: str | os.PathLike) -> None:
    """Write a mask `(H, W)` bool as a greyscale PNG (0 background, 255 foreground), atomically."""
    image = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _show_tinted(ax: plt.Axes, image: np.ndarray, mask: np.ndarray) -> None:
    """Draw ``image`` ``(H, W, 3)`` uint8 with ``mask`` ``(H, W)`` tinted, from its `display_copy`, in its own pixels."""
    small, small_mask = display_copy(image, mask)
    tinted = small.astype(np.float32) / 255
    tinted[small_mask] = 0.45 * tinted[small_mask] + 0.55 * MASK_COLOUR
    ax.imshow(tinted, extent=pixel_extent(image))


def oneshot_figure(
    references: Sequence[tuple[np.ndarray, np.ndarray]],
    targets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    titles: Sequence[str],
    suptitle: str,
) -> plt.Figure:
    """Reference images `(H, W, 3)` uint8 with their masks `(H, W)` bool, then each target with its predicted mask,
    its prompt points `(P, 2)` xy (positive: green +, negative: red x, by `(P,)` labels 1/0) and prompt boxes
    `(B, 4)` xyxy. `titles`: one per panel, references first."""
    panels = len(references) + len(targets)
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.6), squeeze=False)
    axes = axes[0]
    for ax, (image, mask) in zip(axes, references):
        _show_tinted(ax, image, mask)
    for ax, (image, mask, points, labels, boxes) in zip(axes[len(references) :], targets):
        _show_tinted(ax, image, mask)
        for x0, y0, x1, y1 in boxes:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=1.2))
        positive, negative = points[labels == 1], points[labels == 0]
        ax.scatter(positive[:, 0], positive[:, 1], marker="P", s=60, c="lime", edgecolors="black", linewidths=0.6)
        ax.scatter(negative[:, 0], negative[:, 1], marker="X", s=60, c="red", edgecolors="black", linewidths=0.6)
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def save_oneshot_figure(path: Path, fig: plt.Figure, dpi: int = 100) -> None:
    """Write `fig` atomically in the format of `path`'s suffix, and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lower().lstrip("."), dpi=dpi))
    plt.close(fig)

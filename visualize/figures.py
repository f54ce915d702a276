"""Paper-style matplotlib figures of PCA maps and patch matches: titles, no axes, equal panel heights."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import ConnectionPatch

from writers.overlays import display_copy, pixel_extent

PANEL_INCHES = 3.0


def _show(ax, image: np.ndarray, title: str, extent: tuple[int, int] | None = None) -> None:
    """Draw ``image`` in ``ax`` with a title and no axes; ``extent = (W, H)`` stretches it over that many pixels.

    Without ``extent``, a photograph ``(H, W, 3)`` uint8 is drawn from its `display_copy`, in its own pixels."""
    if extent is None:
        ax.imshow(display_copy(image)[0], extent=pixel_extent(image))
    else:
        ax.imshow(image, extent=(0, extent[0], extent[1], 0), interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def pca_figure(
    images: Sequence[np.ndarray], maps: Sequence[np.ndarray], titles: Sequence[str], suptitle: str
) -> Figure:
    """One row per image: the photograph ``(H, W, 3)`` and its PCA map ``(h, w, 3)`` stretched over it."""
    width = max(img.shape[1] / img.shape[0] for img in images)
    fig = Figure(figsize=(2 * PANEL_INCHES * width, PANEL_INCHES * len(images) + 0.4), layout="constrained")
    axes = fig.subplots(len(images), 2, squeeze=False)
    for (ax_img, ax_map), image, rgb, title in zip(axes, images, maps, titles):
        _show(ax_img, image, title)
        _show(ax_map, rgb, "PCA of patch features", extent=(image.shape[1], image.shape[0]))
    fig.suptitle(suptitle, fontsize=11)
    return fig


def match_figure(
    image_a: np.ndarray,
    image_b: np.ndarray,
    points_a: np.ndarray,
    points_b: np.ndarray,
    titles: tuple[str, str],
    suptitle: str,
) -> Figure:
    """The two photographs side by side, matched points ``(M, 2)`` (``x, y`` pixels) in one colour per pair, joined by lines."""
    ratio = image_a.shape[1] / image_a.shape[0] + image_b.shape[1] / image_b.shape[0]
    fig = Figure(figsize=(PANEL_INCHES * ratio + 0.3, PANEL_INCHES + 0.6), layout="constrained")
    ax_a, ax_b = fig.subplots(
        1, 2, width_ratios=[image_a.shape[1] / image_a.shape[0], image_b.shape[1] / image_b.shape[0]]
    )
    _show(ax_a, image_a, titles[0])
    _show(ax_b, image_b, titles[1])
    colours = colormaps["hsv"](np.linspace(0, 1, len(points_a), endpoint=False))
    for (xa, ya), (xb, yb), colour in zip(points_a, points_b, colours):
        line = ConnectionPatch(
            (xa, ya), (xb, yb), "data", "data", axesA=ax_a, axesB=ax_b, color=colour, lw=0.8, alpha=0.7
        )
        fig.add_artist(line)
    for ax, points in ((ax_a, points_a), (ax_b, points_b)):
        ax.scatter(points[:, 0], points[:, 1], c=colours, s=18, edgecolors="white", linewidths=0.6, zorder=3)
    fig.suptitle(suptitle, fontsize=11)
    return fig

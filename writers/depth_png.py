"""Writing depth maps: 16-bit PNGs in millimetres and colour-mapped PNGs, each written atomically."""

from __future__ import annotations

import os

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from utils.atomic import atomic_write


def save_depth_png(depth: Tensor, path: str | os.PathLike) -> None:
    """Depth `(H, W)` in metres -> 16-bit greyscale PNG of millimetres (NYU's encoding), clipped to 0..65535."""
    millimetres = np.clip(np.rint(depth.detach().cpu().double().numpy() * 1000), 0, 65535).astype(np.uint16)
    atomic_write(path, lambda tmp: Image.fromarray(millimetres).save(tmp, format="PNG"))


def save_depth_color(
    depth: Tensor, path: str | os.PathLike, cmap: str = "magma_r", colorbar: bool = False, dpi: int = 100
) -> None:
    """Depth `(H, W)` in metres -> RGB PNG through a matplotlib colormap, stretched over the map's range.

    With `colorbar` the map is drawn at its own pixel size beside a colour bar labelled in metres.
    """
    values = depth.detach().cpu().float().numpy()
    vmin, vmax = float(values.min()), float(values.max())
    if not colorbar:
        normalised = (values - vmin) / max(vmax - vmin, 1e-6)
        rgb = (matplotlib.colormaps[cmap](normalised)[..., :3] * 255).round().astype(np.uint8)
        atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))
        return
    height, width = values.shape
    # a bare Figure (no pyplot) needs no display backend and is freed with its last reference
    fig = Figure(figsize=(width * 1.25 / dpi, height / dpi), dpi=dpi)
    shown = fig.add_axes((0, 0, 0.8, 1)).imshow(values, cmap=cmap, vmin=vmin, vmax=vmax)
    shown.axes.set_axis_off()
    fig.colorbar(shown, cax=fig.add_axes((0.83, 0.05, 0.04, 0.9)), label="depth (m)")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))

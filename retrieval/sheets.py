"""Contact sheets: rows of thumbnails with captions, one PNG, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from utils.atomic import atomic_write
from utils.errors import UserError
from utils.images import rgb_image

Cell = tuple[str, str]
"""An image path and its caption."""


def thumbnail(path: str, side: int = 160) -> np.ndarray:
    """The image at `path` fitted in `side` x `side` pixels `(h, w, 3)` uint8; grey if it cannot be read."""
    try:
        image = rgb_image(path)
    except UserError:
        return np.full((side, side, 3), 128, np.uint8)
    image.thumbnail((side, side))
    return np.asarray(image)


def contact_sheet(rows: list[list[Cell]], path: Path, title: str, dpi: int = 100) -> Path:
    """Write `rows` of captioned thumbnails (one row per query, group or cluster) to the PNG `path`."""
    columns = max(len(row) for row in rows)
    fig = Figure(figsize=(1.8 * columns, 2.0 * len(rows) + 0.4))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for row, cells in zip(axes, rows):
        for k, ax in enumerate(row):
            ax.set_axis_off()
            if k < len(cells):
                image_path, caption = cells[k]
                ax.imshow(thumbnail(image_path))
                ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    return path


def short(path: str, width: int = 22) -> str:
    """A file name cut to `width` characters for a caption."""
    name = Path(path).name
    return name if len(name) <= width else name[: width - 3] + "..."

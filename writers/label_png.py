"""Writing label maps as palette PNGs."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image
from torch import Tensor

from utils.atomic import atomic_write


def save_label_png(
    labels: Tensor, path: str | os.PathLike, palette: Sequence[Sequence[int]] | np.ndarray | None = None
) -> None:
    """Write class ids `(H, W)` (< 256) as a PNG whose pixel values are the ids.

    With a `palette` `(K, 3)` the PNG is "P" mode, colour-coded; without one it is greyscale.
    It is written to a temporary name then renamed, so readers never see a partial file.
    """
    image = Image.fromarray(labels.cpu().numpy().astype(np.uint8))
    if palette is not None:
        image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))

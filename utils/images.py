"""Opening image files safely: a file that is not an image, or a decompression bomb, is a clear user error.

Every image the project reads (datasets, prediction folders, the visualisation CLIs) is opened here.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from utils.errors import UserError


@contextmanager
def opened_image(
    path: str | os.PathLike, what: str = "image", error: type[UserError] = UserError
) -> Iterator[Image.Image]:
    """The image at ``path``, opened lazily (header now, pixels on first use), for a ``with`` block.

    PIL only warns about images above ``Image.MAX_IMAGE_PIXELS`` pixels (about 89 M) and fails at twice that;
    both are refused here, before the pixels are decoded, so that a small file announcing a huge size (a
    decompression bomb) cannot exhaust the memory.

    Raises:
        error: the file is not a readable image, or holds more pixels than PIL's limit; the message names it
            (``what`` says what it is: "image", "label", "depth map").
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                yield img
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{pixels.group(1)} pixels" if pixels else "more pixels than that"
        raise error(
            f"The {what} {path} is too large to read safely: it has {size}, and PIL opens at most "
            f"Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} (a guard against decompression bombs, small files "
            "that decode to gigabytes). Fix: downscale it below that many pixels, or remove it."
        ) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as err:
        raise error(
            f"Cannot read {what} {path} ({err}). The file is missing, truncated or not an image: restore it from "
            "its source, or remove it."
        ) from None


def open_image(path: str | os.PathLike, error: type[UserError] = UserError) -> Image.Image:
    """Read and decode the image at ``path`` (any mode), through `opened_image`'s checks."""
    with opened_image(path, "image", error) as img:
        img.load()
    return img

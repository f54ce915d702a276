"""Opening image files safely: a file that is not an image, or a decompression bomb, is a clear user error."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from utils.errors import UserError


def open_image(path: str | os.PathLike, error: type[UserError] = UserError) -> Image.Image:
    """Read and decode the image at ``path`` (any mode).

    PIL only warns about images above ``Image.MAX_IMAGE_PIXELS`` pixels (about 89 M) and fails at twice that;
    both are refused here, before the pixels are decoded, so a small file that claims a huge size cannot
    exhaust the memory.

    Raises:
        error: the file is not a readable image, or holds more pixels than PIL's limit; the message names it.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{pixels.group(1)} pixels" if pixels else "more pixels than that"
        raise error(
            f"Image {path} is too large to open safely: it has {size}, and PIL opens at most "
            f"Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} (a guard against decompression bombs). "
            "Fix: downscale the image below that many pixels, or remove it."
        ) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise error(
            f"Cannot read image {path} ({err}). Is it a truncated or non-image file? Pass a JPEG or PNG photograph."
        ) from None
    return img

"""Opening image files safely: a file that is not an image, or a decompression bomb, is a clear user error.

Every image the project reads (datasets, prediction folders, the visualisation CLIs, retrieval) is opened here,
and read by one of two readers: `read_rgb` (`rgb_image`) for photos, with one set of rules for modes, bit depths,
orientation and frames (`upright_rgb`), and `read_mask` for masks and label maps. PIL's ``LOAD_TRUNCATED_IMAGES``
is never set: a truncated file is refused, naming it.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


def upright_rgb(img: Image.Image, exif: bool = True) -> Image.Image:
    """An opened image as 8-bit RGB, the way every photo in the project is read (`read_rgb`'s rules).

    - Multi-frame files (animated GIF, APNG, multi-page TIFF): the first frame, the one PIL opens on.
    - EXIF orientation applied (``ImageOps.exif_transpose``): the pixels as image viewers and OpenCV's
      ``imread`` show them, not as the camera stored them. ``exif=False`` keeps the stored pixels, for
      annotations drawn on them that an official protocol reads that way (revisited Oxford/Paris query boxes).
    - 16-bit and 32-bit integer images (modes ``I;16``, ``I;16B``, ``I``): ``value >> 8``, i.e. the dtype's full
      range 0..65535 in 256 equal steps (``I`` clipped to that range first). Not the image's own min/max: a dark
      photo stays dark and two files with the same 16-bit values give the same 8-bit pixels whatever else they
      hold; ``>> 8`` is also what ``torchvision``'s ``to_dtype(scale=True)`` does and what PIL does to 16-bit RGB
      PNGs, and an 8-bit image stored as 16 bits (``value * 257``) reads back exactly. PIL's own ``convert`` would
      clip every value above 255 to white instead.
    - 32-bit float images (mode ``F``): values in [0, 1] (the image's maximum is at most 1) are multiplied by 255;
      otherwise they are taken as 0..255. Then clipped to [0, 255] and rounded; NaN reads as 0.
    - Everything else (grey ``L`` and ``1``, palette ``P`` with or without transparency, ``LA``, ``RGBA``,
      ``CMYK``, ``YCbCr``) through PIL's ``convert("RGB")``: grey is repeated in the three channels, a palette
      index becomes its colour, and an alpha band is dropped (not composited: a transparent pixel keeps its
      colour, as OpenCV and torchvision read it too).
    """
    img = ImageOps.exif_transpose(img) if exif else img
    if img.mode.startswith("I"):
        values = np.asarray(img).astype(np.int64).clip(0, 65535) >> 8
        img = Image.fromarray(values.astype(np.uint8))
    elif img.mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1:
            values = values * 255
        img = Image.fromarray(np.rint(values.clip(0, 255)).astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def rgb_image(
    path: str | os.PathLike, what: str = "image", error: type[UserError] = UserError, exif: bool = True
) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB PIL image, by `upright_rgb`'s rules, through `opened_image`'s checks.

    Raises:
        error: the file is missing, empty, truncated, not an image or a decompression bomb; the message names it.
    """
    with opened_image(path, what, error) as img:
        rgb = upright_rgb(img, exif)
        rgb.load()  # decoded while the file is open: an RGB file read with exif=False is the opened image itself
        return rgb


def read_rgb(path: str | os.PathLike, what: str = "image", error: type[UserError] = UserError) -> np.ndarray:
    """The image at ``path`` as ``(H, W, 3)`` uint8 RGB, by `upright_rgb`'s rules (`rgb_image` as an array)."""
    return np.asarray(rgb_image(path, what, error))


MaskValues = Literal["labels", "grey"]


def read_mask(
    path: str | os.PathLike, what: str = "mask", error: type[UserError] = UserError, values: MaskValues = "labels"
) -> np.ndarray:
    """A mask or label file as ``(H, W)`` integers (uint8, or uint16/int32 for 16/32-bit files).

    Like photos: the first frame, EXIF orientation applied (a mask saved with its photo's orientation tag stays
    on its photo). Single-channel files give their values (``L``, ``I;16``, ``I``; ``1`` gives 0/1), ``LA`` its
    grey band (the alpha band is dropped). ``values`` says what a palette or colour file means:

    - ``"labels"``: a label map of class ids: a palette (``P``, ``PA``) PNG gives its palette indices, as VOC's
      SegmentationClass PNGs are read; a colour (RGB, RGBA, CMYK) file is refused, since its colours are not ids.
    - ``"grey"``: a binary or thresholded mask drawn as a picture: palette and colour files give their luminance
      (PIL's ``convert("L")``, ITU-R 601-2), as HSNet reads FSS-1000's masks; ``1`` gives 0/255.

    Raises:
        error: the file cannot be read (see `opened_image`), holds floats, or (``"labels"``) is a colour image;
            the message names the file and the reason.
    """
    with opened_image(path, what, error) as img:
        img = ImageOps.exif_transpose(img)
        mode = img.mode
        if mode == "F":
            raise error(
                f"The {what} {path} holds floating-point values (a 32-bit float image); a {what} holds integers. "
                "Save it as an 8-bit or 16-bit integer PNG."
            )
        if mode in ("LA", "La") or (mode == "PA" and values == "labels"):
            return np.asarray(img.getchannel(0))
        if mode == "1" and values == "labels":
            return np.asarray(img).astype(np.uint8)
        if mode == "L" or mode.startswith("I") or (mode == "P" and values == "labels"):
            return np.asarray(img)
        if values == "labels":
            raise error(
                f"The {what} {path} is a {mode} colour image with {len(img.getbands())} channels; a {what} must be a "
                "single-channel (palette or greyscale) PNG holding class ids, not a colour-coded picture. Use the "
                "dataset's original file."
            )
        return np.asarray(img.convert("L"))

"""Reading photographs for the visualisation tools and turning them into backbone inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor

from utils.errors import UserError
from utils.images import open_image, upright_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


ORIENTATION = 0x0112
"""The EXIF tag that says how a photograph is to be rotated for viewing."""


class InputError(UserError):
    """A bad image or option given to a visualisation tool; the message names it and the fix."""


def require_files(paths: list[str]) -> None:
    """InputError naming the first path that is not a file, before any slow work starts."""
    for path in paths:
        if not Path(path).is_file():
            raise InputError(f"Image {path} does not exist. Check the path.")


def load_rgb(path: str | Path, patch_size: int) -> Image.Image:
    """Read an image as 8-bit RGB by `utils.images.upright_rgb`'s rules, with a note on stderr when it is rotated by
    its EXIF orientation or converted from another mode.

    Raises:
        InputError: the file is missing, not an image, too large to open safely, or smaller than one patch.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Image {path} does not exist. Check the path.")
    img = open_image(path, InputError)
    if img.width < patch_size or img.height < patch_size:
        raise InputError(
            f"Image {path} is {img.width}x{img.height} pixels, smaller than one {patch_size}x{patch_size} patch "
            f"of the backbone. Pass an image at least {patch_size} pixels on each side."
        )
    if img.getexif().get(ORIENTATION, 1) != 1:
        print(f"Note: {path} is rotated by its EXIF orientation tag, as image viewers show it.", file=sys.stderr)
    if img.mode != "RGB":
        print(f"Note: {path} is a {img.mode} image; converted to 8-bit RGB.", file=sys.stderr)
    return upright_rgb(img)


def snap_to_patches(size: int, patch_size: int) -> int:
    """``size`` rounded to the nearest positive multiple of the patch size, with a note on stderr when it changes.

    Raises:
        InputError: ``size`` is under two patches: one patch per side leaves nothing to compare (PCA, matching).
    """
    if size < 2 * patch_size:
        raise InputError(
            f"--size {size} is under two {patch_size}-pixel patches: the images would have at most one patch per side. "
            f"Give --size {2 * patch_size} or more (default 448)."
        )
    snapped = max(patch_size, round(size / patch_size) * patch_size)
    if snapped != size:
        print(
            f"Note: --size {size} is not a multiple of the patch size {patch_size}; using {snapped}.", file=sys.stderr
        )
    return snapped


def input_size(width: int, height: int, short_side: int, patch_size: int) -> tuple[int, int]:
    """``(H, W)`` with the shorter side ``short_side`` and the longer side the multiple of the patch size nearest the aspect ratio."""
    scale = short_side / min(width, height)
    return (
        max(patch_size, round(height * scale / patch_size) * patch_size),
        max(patch_size, round(width * scale / patch_size) * patch_size),
    )


def to_input(image: Image.Image, size: tuple[int, int]) -> Tensor:
    """An RGB image -> the normalised backbone input ``(3, H, W)`` at ``size = (H, W)`` (bicubic, antialiased)."""
    x = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
    x = TF.resize(x, list(size), interpolation=TF.InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)

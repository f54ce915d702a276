"""Finding and reading dataset files: RGB images and label PNGs, checked as they are read."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image

from datamodules.errors import DatasetError
from utils.errors import option
from utils.images import opened_image, read_mask, read_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class LabelMap(NamedTuple):
    """How a dataset's label values become class ids.

    lut: (256,) int16, raw value -> class id or the datamodule's ignore_index, -1 = not a valid value.
    valid: the valid raw values in words, for error messages.
    """

    lut: np.ndarray
    valid: str


def make_label_map(mapping: dict[int, int], valid: str) -> LabelMap:
    """LabelMap sending each raw value in mapping to its class id (or ignore_index); every other value is invalid."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[list(mapping)] = list(mapping.values())
    return LabelMap(lut, valid)


@contextmanager
def open_image(path: Path, what: str = "image") -> Iterator[Image.Image]:
    """`utils.images.opened_image` raising `DatasetError`: every image a datamodule reads is opened through here."""
    with opened_image(path, what, DatasetError) as img:
        yield img


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, through `open_image`'s checks; the pixels are not decoded."""
    with open_image(path) as img:
        return img.size


def load_image(path: Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB by `utils.images.read_rgb`'s rules (grey, palette, alpha, CMYK, 16-bit
    and float images converted, EXIF orientation applied, the first frame); a DatasetError names a bad file."""
    return read_rgb(path, "image", DatasetError)


TURNED = "The image is read turned by its EXIF orientation tag, as viewers show it: its label must be too."


def turned_by_exif(path: Path) -> bool:
    """Whether the image's EXIF orientation tag turns it by 90 degrees (its width and height swap when read)."""
    with open_image(path) as img:
        return img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)


def upright_colour(path: Path) -> bool:
    """Whether the JPEG is RGB or grey and not turned by EXIF, from its header (`open_image` refuses a decompression
    bomb, which nvJPEG would not). nvJPEG ignores EXIF orientation and CMYK: those JPEGs are decoded on the CPU."""
    with open_image(path) as img:
        return img.mode in ("RGB", "L") and img.getexif().get(ExifTags.Base.Orientation, 1) == 1


def load_label(path: Path, label_map: LabelMap, image_path: Path, image_hw: tuple[int, int]) -> np.ndarray:
    """Read a single-channel label PNG as (H, W) uint8 class ids (or ignore_index), checking it against its image.

    The raw values are `utils.images.read_mask`'s labels: palette indices, grey values; a colour PNG is refused."""
    raw = read_mask(path, "label", DatasetError, "labels")
    if raw.shape != image_hw:
        raise DatasetError(
            f"Label {path} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image {image_path} is "
            f"{image_hw[1]}x{image_hw[0]}; a label must have its image's size. Replace the label with the original one."
            + (" " + TURNED if raw.shape == image_hw[::-1] and turned_by_exif(image_path) else "")
        )
    values = np.unique(raw)
    bad = [int(v) for v in values if v >= label_map.lut.size or label_map.lut[v] < 0]
    if bad:
        raise DatasetError(
            f"Label {path} holds value(s) {bad[:10]} outside the dataset's classes (valid values: {label_map.valid}). "
            "The file is corrupt or from another dataset: replace it with the original."
        )
    return label_map.lut[raw].astype(np.uint8)


def pair_files(image_dir: Path, image_suffix: str, label_dir: Path, label_suffix: str) -> list[tuple[Path, Path]]:
    """Sorted (image, label) pairs under two folders (recursive), matched by relative path minus suffix."""
    images, labels = _index(image_dir, image_suffix), _index(label_dir, label_suffix)
    if not images:
        raise DatasetError(f"No *{image_suffix} images in {image_dir}: the folder is empty; re-extract the dataset.")
    if orphans := sorted(images.keys() - labels.keys()):
        raise DatasetError(
            f"Image {images[orphans[0]]} has no label file {label_dir / (orphans[0] + label_suffix)} "
            f"({len(orphans)} image(s) lack one). Restore the labels or remove those images."
        )
    if orphans := sorted(labels.keys() - images.keys()):
        raise DatasetError(
            f"Label {labels[orphans[0]]} has no image file {image_dir / (orphans[0] + image_suffix)} "
            f"({len(orphans)} label(s) lack one). Restore the images or remove those labels."
        )
    return [(images[key], labels[key]) for key in sorted(images)]


def _index(folder: Path, suffix: str) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix()[: -len(suffix)]: p for p in folder.rglob("*" + suffix)}


def list_images(folder: Path) -> list[Path]:
    """Sorted image files (jpg, jpeg, png, bmp, webp) directly in folder."""
    if not folder.is_dir():
        raise DatasetError(
            f"{option('data', 'predict_dir', folder)} is not a folder. Fix: {option('data', 'predict_dir', 'FOLDER')}, a "
            "folder of images."
        )
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(
            f"{option('data', 'predict_dir', folder)} holds no {'/'.join(IMAGE_SUFFIXES)} images. Fix: "
            f"{option('data', 'predict_dir', 'FOLDER')}, a folder of images."
        )
    return files


def predict_folder(predict_dir: str | None) -> Path | None:
    """``predict_dir`` as a Path, checked when the datamodule is built: a wrong folder stops the run before
    training, not after it, when the trained run's metrics would be lost with it."""
    if predict_dir is None:
        return None
    folder = Path(predict_dir).expanduser()
    list_images(folder)
    return folder

"""Reading depth datasets: split files of (RGB, depth PNG) pairs and 16-bit depth PNGs, checked as they are read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.errors import DatasetError
from datamodules.files import open_image

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L")


def read_split(split_file: Path, image_base: Path, depth_base: Path, layout: str) -> list[tuple[Path, Path]]:
    """(image, depth) paths listed by a split file, one `IMAGE DEPTH [focal]` line each, relative to the bases.

    Leading slashes are dropped (NYU's lists start with one); lines whose depth is "None" (KITTI frames
    without ground truth) are skipped, as the official loader does.
    """
    if not split_file.is_file():
        raise DatasetError(f"Split file {split_file} is missing. Expected:\n{layout}")
    pairs = []
    for number, line in enumerate(split_file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DatasetError(
                f"{split_file}, line {number}: {line!r} names no depth file; each line must read "
                "'IMAGE DEPTH [focal]'. Fix or remove the line."
            )
        if fields[1] == "None":
            continue
        image, depth = image_base / fields[0].lstrip("/"), depth_base / fields[1].lstrip("/")
        for path in (image, depth):
            if not path.is_file():
                raise DatasetError(
                    f"{path} is missing, but {split_file} (line {number}) lists it: restore the file or remove the line."
                )
        pairs.append((image, depth))
    if not pairs:
        raise DatasetError(f"Split file {split_file} lists no image/depth pairs. Expected:\n{layout}")
    return pairs


def load_depth(path: Path, scale: float, image_path: Path, image_hw: tuple[int, int]) -> np.ndarray:
    """Read a 16-bit depth PNG as `(H, W)` float32 metres (raw value / `scale`; 0 = no measurement).

    NYU stores millimetres (scale 1000), KITTI 256ths of a metre (scale 256).
    """
    with open_image(path, "depth map") as img:
        mode, raw = img.mode, np.asarray(img)
    if mode not in SIXTEEN_BIT_MODES:
        raise DatasetError(
            f"Depth map {path} is a {mode!r} image, expected a single-channel 16-bit PNG (mode 'I;16') of "
            f"depth x {scale:g}. An 8-bit or colour PNG is a visualisation, not the ground truth: use the "
            "dataset's original depth files."
        )
    if raw.shape != image_hw:
        raise DatasetError(
            f"Depth map {path} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image {image_path} is "
            f"{image_hw[1]}x{image_hw[0]}; a depth map must have its image's size. Replace it with the original one."
        )
    return raw.astype(np.float32) / scale

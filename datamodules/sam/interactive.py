"""The interactive-segmentation test sets as RITM publishes them (GrabCut, Berkeley, DAVIS): one object per image.

Layouts (RITM's isegm/data/datasets): images in one folder, masks in another, matched by file stem.
- grabcut: root/data_GT/*.jpg|bmp, root/boundary_GT/*.bmp; 255 object, 128 unlabelled band (ignored), else background.
- berkeley: root/images/*, root/masks/*; the same values as GrabCut.
- davis: root/img/*, root/gt/*; any non-zero value (any channel) is the object.
Masks are read from the channel OpenCV reads first (blue), as RITM does. Items have the keys of
`datamodules.sam.coco.CocoInstances` that the point evaluation reads: image, image_id, path, gt_masks `(1, H, W)` bool,
gt_iscrowd `(1,)`, and gt_ignore `(H, W)` bool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import DatasetError
from datamodules.files import load_image
from datamodules.loaders import check_loader_options, eval_sampler, image_items, usable_workers
from utils.images import read_rgb

HOW_TO_GET = (
    "RITM's evaluation sets are linked from https://github.com/SamsungLabs/ritm_interactive_segmentation#datasets "
    "(GrabCut, Berkeley, DAVIS archives); unpack one and set data.root to the folder that holds its two subfolders."
)


class Layout(NamedTuple):
    images: str  # folder of the images under root
    masks: str  # folder of the masks under root, one per image with the same stem
    ignore_value: int | None  # mask value of the unlabelled band, None: none; object: values above it, or > 0


LAYOUTS = {
    "grabcut": Layout("data_GT", "boundary_GT", 128),
    "berkeley": Layout("images", "masks", 128),
    "davis": Layout("img", "gt", None),
}


def read_mask(path: Path, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """A mask file -> object `(H, W)` bool and unlabelled band `(H, W)` bool, with the layout's values."""
    # RITM reads masks with OpenCV's imread as colour photos (grey and palette masks as 3 colour channels): the
    # photo reader's rules are that reading
    raw = read_rgb(path, "mask", DatasetError)
    if layout.ignore_value is None:
        values = raw.max(2)
        return values > 0, np.zeros(values.shape, dtype=bool)
    values = raw[..., 2]  # OpenCV's first channel is blue
    return values > layout.ignore_value, values == layout.ignore_value


def list_samples(root: Path, name: str, layout: Layout) -> list[tuple[Path, Path]]:
    """Sorted `(image, mask)` pairs of the layout under root; a DatasetError when a folder, a mask or an image is
    missing."""
    images_dir, masks_dir = root / layout.images, root / layout.masks
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DatasetError(
            f"The {name} set was not found: data.root={root} must hold {layout.images}/ (images) and "
            f"{layout.masks}/ (masks with the images' file names), RITM's published layout. {HOW_TO_GET}"
        )
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.is_file() and not p.name.startswith(".")}
    masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.is_file() and not p.name.startswith(".")}
    if not images:
        raise DatasetError(f"{images_dir} holds no image: the {name} set is incomplete. {HOW_TO_GET}")
    if no_mask := sorted(set(images) - set(masks)):
        raise DatasetError(
            f"Image {images[no_mask[0]]} has no mask {masks_dir / no_mask[0]}.* ({len(no_mask)} image(s) without "
            f"a mask): restore the {name} set from its archive, or remove the image. {HOW_TO_GET}"
        )
    if no_image := sorted(set(masks) - set(images)):
        raise DatasetError(
            f"Mask {masks[no_image[0]]} names the image {images_dir / no_image[0]}.*, which is missing "
            f"({len(no_image)} such mask(s)): restore the {name} set from its archive, or remove the mask."
        )
    return [(images[stem], masks[stem]) for stem in sorted(images)]


class InteractiveInstances(Dataset):
    """One image per item with its object mask and unlabelled band (see the module docstring)."""

    def __init__(self, samples: list[tuple[Path, Path]], layout: Layout) -> None:
        self.samples, self.layout = samples, layout

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, mask_path = self.samples[index]
        image = load_image(image_path)
        mask, ignore = read_mask(mask_path, self.layout)
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"Mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}: restore the original mask."
            )
        return {
            "image": image,
            "image_id": index,
            "path": str(image_path),
            "gt_masks": mask[None],
            "gt_iscrowd": np.zeros(1, dtype=np.int64),
            "gt_ignore": ignore,
        }


class InteractiveDataModule(L.LightningDataModule):
    """GrabCut, Berkeley or DAVIS in RITM's layout, for the interactive point evaluation (test loader only).

    Args:
        root: the folder holding the layout's two subfolders.
        layout: "grabcut", "berkeley" or "davis".
        num_workers: image-loading processes.
    """

    def __init__(self, root: str, layout: str = "grabcut", num_workers: int = 4, batch_size: int = 1) -> None:
        super().__init__()
        check_loader_options(num_workers=num_workers, batch_size=batch_size)
        self.batch_size = batch_size  # images per test batch: SAM encodes a batch's images in one call
        if layout not in LAYOUTS:
            raise DatasetError(f"data.layout={layout!r} is not a known layout: use one of {', '.join(LAYOUTS)}.")
        self.root, self.layout_name = Path(root).expanduser(), layout
        self.num_workers = usable_workers(num_workers)

    def setup(self, stage: str) -> None:
        layout = LAYOUTS[self.layout_name]
        self.dataset = InteractiveInstances(list_samples(self.root, self.layout_name, layout), layout)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            collate_fn=image_items(self.batch_size),
            num_workers=self.num_workers,
            sampler=eval_sampler(self.trainer, self.dataset),  # every image once under DDP, no padding repeats
        )

"""Albumentations pipelines of the DINOv2/mmseg ADE20k linear-probe setup, with the two steps albumentations lacks."""

from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.augmentations.geometric.resize import MaxSizeTransform
from albumentations.pytorch import ToTensorV2

IGNORE_INDEX = 255  # the default label value for "not labelled"; a datamodule's ignore_index overrides it
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RescaleToBox(MaxSizeTransform):
    """mmseg Resize(img_scale=(long_side, short_side), ratio_range, keep_ratio=True).

    Scales (H, W) by r * min(long_side / max(H, W), short_side / min(H, W)), r ~ U(ratio_range): the image fits
    the (long_side * r, short_side * r) box. Image bilinear, mask nearest.
    """

    # albumentations' Longest/SmallestMaxSize bound one side; mmseg fits both sides of a box
    def __init__(self, long_side: int, short_side: int, ratio_range: tuple[float, float] = (1.0, 1.0)):
        super().__init__(max_size=long_side, p=1.0)
        self.long_side, self.short_side, self.ratio_range = long_side, short_side, ratio_range

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, float]:
        h, w = params["shape"][:2]
        r = self.py_random.uniform(*self.ratio_range)
        return {"scale": r * min(self.long_side / max(h, w), self.short_side / min(h, w))}


def cat_max_ratio_crop_box(
    label: np.ndarray,
    crop_size: int,
    cat_max_ratio: float,
    rng: np.random.Generator,
    max_tries: int = 10,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[int, int, int, int]:
    """Random crop box (x0, y0, x1, y1), at most crop_size square, in an (H, W) uint8 label, as mmseg's RandomCrop.

    A box is redrawn (up to max_tries boxes in all) while one class covers cat_max_ratio or more of its
    non-ignored pixels (those other than ignore_index), or it holds fewer than two classes; the last box is kept
    if none passes. cat_max_ratio >= 1 disables the check.
    """
    h, w = label.shape
    ch, cw = min(crop_size, h), min(crop_size, w)
    for _ in range(max_tries):
        y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        if cat_max_ratio >= 1:
            break
        counts = np.bincount(label[y0 : y0 + ch, x0 : x0 + cw].ravel(), minlength=ignore_index + 1)
        counts[ignore_index] = 0
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() < cat_max_ratio * counts.sum():
            break
    return x0, y0, x0 + cw, y0 + ch


class CatMaxRatioCrop(BaseCrop):
    """mmseg RandomCrop(crop_size, cat_max_ratio) on image and mask; see cat_max_ratio_crop_box."""

    # albumentations has no crop that rejects boxes dominated by one class
    def __init__(self, crop_size: int, cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX):
        super().__init__(p=1.0)
        self.crop_size, self.cat_max_ratio, self.ignore_index = crop_size, cat_max_ratio, ignore_index

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        box = cat_max_ratio_crop_box(
            data["mask"], self.crop_size, self.cat_max_ratio, self.random_generator, ignore_index=self.ignore_index
        )
        return {"crop_coords": box}


def photometric_distortion() -> list[A.BasicTransform]:
    """Approximates mmseg's PhotoMetricDistortion, each step with p=0.5: brightness +-32, contrast 0.5-1.5,
    saturation 0.5-1.5, hue +-18 (OpenCV units of 2 degrees). Unlike mmseg, contrast always comes second and
    saturation blends with the grey image instead of scaling the HSV S channel."""
    return [
        A.RandomBrightnessContrast(brightness_limit=32 / 255, contrast_limit=0, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=0.5, p=0.5),
        A.ColorJitter(brightness=0, contrast=0, saturation=(0.5, 1.5), hue=0, p=0.5),
        A.HueSaturationValue(hue_shift_limit=18, sat_shift_limit=0, val_shift_limit=0, p=0.5),
    ]


def train_transform(
    crop_size: int,
    scale_range: tuple[float, float],
    short_side: int,
    cat_max_ratio: float,
    seed: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> A.Compose:
    """(image (H, W, 3) uint8, mask (H, W) uint8) -> (image (3, crop, crop) float32, mask (crop, crop) uint8).

    Rescale into the (4 * short_side, short_side) box times r ~ U(scale_range), cat_max_ratio crop (ignore_index
    pixels not counted), flip, photometric distortion, ImageNet normalisation, pad bottom/right with 0 (image) and
    ignore_index (mask).
    """
    return A.Compose(
        [
            RescaleToBox(4 * short_side, short_side, scale_range),
            CatMaxRatioCrop(crop_size, cat_max_ratio, ignore_index),
            A.HorizontalFlip(p=0.5),
            *photometric_distortion(),
            A.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            A.PadIfNeeded(
                crop_size, crop_size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill_mask=ignore_index
            ),
            ToTensorV2(),
        ],
        seed=seed,
    )


def eval_transform(short_side: int) -> A.Compose:
    """image (H, W, 3) uint8 -> (3, h, w) float32 fitted in the (4 * short_side, short_side) box, normalised."""
    return A.Compose([RescaleToBox(4 * short_side, short_side), A.Normalize(IMAGENET_MEAN, IMAGENET_STD), ToTensorV2()])

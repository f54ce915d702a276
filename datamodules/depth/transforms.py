"""Albumentations pipelines of the official DINOv2 depth evaluation; the depth map travels as the mask."""

from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD


def color_augmentation() -> A.Sequential:
    """The depth toolbox's ColorAug, all three at once with p=0.5: gamma 0.9-1.1, brightness x0.75-1.25,
    per-channel colour x0.9-1.1."""
    return A.Sequential(
        [
            A.RandomGamma(gamma_limit=(90, 110), p=1.0),
            A.MultiplicativeNoise(multiplier=(0.75, 1.25), per_channel=False, p=1.0),
            A.MultiplicativeNoise(multiplier=(0.9, 1.1), per_channel=True, p=1.0),
        ],
        p=0.5,
    )


def depth_train_transform(crop_hw: tuple[int, int], rotate_degrees: float = 2.5, seed: int | None = None) -> A.Compose:
    """(image (H, W, 3) uint8, mask = depth (H, W) float32) -> (image (3, h, w) float32, depth (h, w)).

    Rotation by U(-2.5, 2.5) degrees (p=0.5; depth nearest, new corners invalid), horizontal flip,
    random crop `crop_hw` (padded with invalid depth if the image is smaller), colour augmentation,
    ImageNet normalisation.
    """
    return A.Compose(
        [
            A.Rotate(
                limit=rotate_degrees,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.5,
            ),
            A.HorizontalFlip(p=0.5),
            A.RandomCrop(*crop_hw, pad_if_needed=True, fill=0, fill_mask=0),
            color_augmentation(),
            A.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ToTensorV2(),
        ],
        seed=seed,
    )


def depth_eval_transform() -> A.Compose:
    """The whole image, only normalised: (H, W, 3) uint8 -> (3, H, W) float32 (depth passes unchanged)."""
    return A.Compose([A.Normalize(IMAGENET_MEAN, IMAGENET_STD), ToTensorV2()])


def depth_predict_transform(short_side: int) -> A.Compose:
    """A user's image resized to `short_side` on its short side (the training scale), normalised."""
    return A.Compose([A.SmallestMaxSize(max_size=short_side), A.Normalize(IMAGENET_MEAN, IMAGENET_STD), ToTensorV2()])

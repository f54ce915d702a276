"""LightningDataModule shared by the depth datasets (NYU-Depth v2, KITTI); subclasses say where the files are."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import albumentations as A
import torch
from torch.utils.data import Dataset

from datamodules.datasets import PredictImages
from datamodules.depth.files import load_depth
from datamodules.depth.transforms import (
    depth_eval_transform,
    depth_predict_transform,
    depth_train_transform,
)
from datamodules.errors import DatasetError
from datamodules.files import list_images, load_image, predict_folder
from datamodules.loaders import DenseDataModule, check_loader_options, usable_workers
from utils.errors import option


class DepthDataset(Dataset):
    """(image, depth PNG) pairs -> {"image": (3, h, w) float32, "depth": (1, h, w) float32 metres, "path": str}.

    Depth 0 marks pixels without ground truth. `top_crop` `(h, w)` first cuts each pair to its bottom
    `h` rows and central `w` columns (KITTI's KB crop).
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        depth_scale: float,
        transform: A.Compose,
        top_crop: tuple[int, int] | None = None,
    ) -> None:
        self.samples, self.depth_scale, self.transform, self.top_crop = samples, depth_scale, transform, top_crop

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        image_path, depth_path = self.samples[index]
        image = load_image(image_path)
        depth = load_depth(depth_path, self.depth_scale, image_path, image.shape[:2])
        if self.top_crop is not None:
            crop_h, crop_w = self.top_crop
            height, width = depth.shape
            top, left = max(height - crop_h, 0), max((width - crop_w) // 2, 0)
            image, depth = (
                image[top : top + crop_h, left : left + crop_w],
                depth[top : top + crop_h, left : left + crop_w],
            )
        out = self.transform(image=image, mask=depth)
        return {"image": out["image"], "depth": torch.as_tensor(out["mask"])[None].float(), "path": str(image_path)}


class DepthDataModule(DenseDataModule):
    """Monocular depth batches: train on the training split, validate and test on the test split.

    Batches:
        train:    {"image": (B, 3, *crop_size) float32, "depth": (B, 1, *crop_size) float32 metres, "path": [str] * B}
        val/test: {"image": (1, 3, H, W), "depth": (1, 1, H, W) (the whole image), "path": [str]}
        predict:  {"image": (1, 3, h, w) short side `predict_short_side`, "size": (1, 2) original (H, W), "path": [str]}

    Args:
        root: the folder holding the dataset's layout (see the subclass's `layout`).
        crop_size: training crop (H, W).
        min_depth, max_depth: the dataset's depth range in metres (the head's bins and the evaluated pixels).
        eval_crop: "eigen", "garg" or None: the evaluation crop (read by the depth module's metrics).
        predict_dir: a folder of images to predict depth for.
        predict_short_side: the short side those images are resized to (the dataset's image scale).
    """

    name: ClassVar[str]
    depth_scale: ClassVar[float]  # raw PNG value per metre
    layout: ClassVar[str]
    how_to_get: ClassVar[str]
    top_crop: ClassVar[tuple[int, int] | None] = None

    def __init__(
        self,
        root: str,
        batch_size: int = 16,
        num_workers: int = 4,
        crop_size: Sequence[int] = (416, 544),
        rotate_degrees: float = 2.5,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        eval_crop: str | None = "eigen",
        predict_dir: str | None = None,
        predict_short_side: int = 480,
    ) -> None:
        super().__init__()
        check_loader_options(
            batch_size=batch_size, num_workers=num_workers, crop_size=crop_size, predict_short_side=predict_short_side
        )
        if not isinstance(crop_size, Sequence) or len(crop_size) != 2:
            raise DatasetError(f"{option('data', 'crop_size', crop_size)} must be two sides [H, W] in pixels.")
        self.root = Path(root).expanduser()
        self.batch_size, self.num_workers = batch_size, usable_workers(num_workers)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.rotate_degrees = rotate_degrees
        self.min_depth, self.max_depth, self.eval_crop = min_depth, max_depth, eval_crop
        self.predict_dir = predict_folder(predict_dir)
        self.predict_short_side = predict_short_side

    def _samples(self, split: str) -> list[tuple[Path, Path]]:
        """(image, depth PNG) pairs of split "train" or "test"."""
        raise NotImplementedError

    def _require(self, folder: Path) -> None:
        if not folder.is_dir():
            raise DatasetError(
                f"{self.name} not found: {folder} does not exist. Expected under data.root={self.root}:\n"
                f"{self.layout}\n{self.how_to_get}"
            )

    def setup(self, stage: str) -> None:
        if stage == "predict":
            if self.predict_dir is None:
                raise DatasetError("Prediction needs a folder of images: set data.predict_dir=<folder>.")
            transform = depth_predict_transform(self.predict_short_side)
            self.predict_set = PredictImages(list_images(self.predict_dir), transform)
            return
        if stage == "fit":
            # albumentations ignores global seeds: tie it to torch's so that seed_everything makes runs repeatable
            seed = torch.initial_seed() % 2**32
            transform = depth_train_transform(self.crop_size, self.rotate_degrees, seed)
            self.train_set = DepthDataset(self._samples("train"), self.depth_scale, transform, self.top_crop)
        self.eval_set = DepthDataset(self._samples("test"), self.depth_scale, depth_eval_transform(), self.top_crop)

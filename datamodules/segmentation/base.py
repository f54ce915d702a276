"""LightningDataModule shared by the semantic segmentation datasets; subclasses say where the files are."""

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from datamodules.datasets import PredictImages, Sample, SegmentationDataset
from datamodules.errors import DatasetError
from datamodules.files import list_images, predict_folder
from datamodules.loaders import DenseDataModule, check_loader_options, usable_workers
from datamodules.transforms import IGNORE_INDEX, eval_transform, train_transform
from utils.errors import option


class SegmentationDataModule(DenseDataModule):
    """Semantic segmentation batches; train on the training split, validate and test on the validation split.

    Batches:
        train:    {"image": (B, 3, crop, crop) float32, "label": (B, crop, crop) int64, "path": [str] * B}
        val/test: {"image": (1, 3, h, w) float32, "label": (1, H, W) int64 at the file's resolution, "path": [str]}
        predict:  {"image": (1, 3, h, w) float32, "size": (1, 2) int64 original (H, W), "path": [str]}
    Labels hold class ids 0..K-1 and `ignore_index` (default 255) for unlabelled pixels: the dataset's own ignored
    values, and the padding of training crops. Images are fitted in the (4 * short_side, short_side) box,
    times r ~ U(scale_range) for training: mmseg's (2048, 512) at the default short_side.
    """

    name: ClassVar[str]
    class_names: ClassVar[tuple[str, ...]]
    palette: ClassVar[np.ndarray]  # (K, 3) uint8 RGB, one colour per class
    dirname: ClassVar[str]  # folder under root whose presence means the dataset is there
    layout: ClassVar[str]  # the expected files under root, for error messages
    how_to_get: ClassVar[str]

    def __init__(
        self,
        root: str,
        num_classes: int | None = None,
        batch_size: int = 16,
        num_workers: int = 4,
        crop_size: int = 512,
        scale_range: Sequence[float] = (0.5, 2.0),
        short_side: int = 512,
        cat_max_ratio: float = 0.75,
        download: bool = False,
        predict_dir: str | None = None,
        ignore_index: int = IGNORE_INDEX,
    ):
        super().__init__()
        check_loader_options(batch_size=batch_size, num_workers=num_workers, crop_size=crop_size, short_side=short_side)
        if not isinstance(crop_size, int):  # the segmentation crops are square (mmseg's RandomCrop)
            raise DatasetError(
                f"{option('data', 'crop_size', crop_size)}: segmentation crops are square, one side in pixels. "
                f"Fix: e.g. {option('data', 'crop_size', 512)}."
            )
        if num_classes is not None and num_classes != len(self.class_names):
            raise DatasetError(
                f"{self.name} has {len(self.class_names)} classes but data.num_classes={num_classes}: "
                f"set data.num_classes={len(self.class_names)} or leave it out."
            )
        self.root = Path(root).expanduser()
        self.num_classes = len(self.class_names)
        self.ignore_index = check_ignore_index(ignore_index, self.num_classes)
        self.batch_size, self.num_workers = batch_size, usable_workers(num_workers)
        self.crop_size, self.scale_range = crop_size, (float(scale_range[0]), float(scale_range[1]))
        self.short_side, self.cat_max_ratio = short_side, cat_max_ratio
        self.download = download
        self.predict_dir = predict_folder(predict_dir)

    def _samples(self, split: str) -> list[Sample]:
        """(image, label, label map) of split "train" or "val", sorted; ignored values map to self.ignore_index."""
        raise NotImplementedError

    def _download(self) -> None:
        """Fetch and unpack the dataset under root."""
        raise NotImplementedError

    def _require(self, *folders: Path) -> None:
        """Raise the 'dataset not found' error, with the expected layout, if a folder is missing."""
        for folder in folders:
            if not folder.is_dir():
                raise DatasetError(
                    f"{self.name} not found: {folder} does not exist. Expected under data.root={self.root}:\n"
                    f"{self.layout}\n{self.how_to_get}"
                )

    def prepare_data(self) -> None:
        if self.download and not (self.root / self.dirname).is_dir():
            self._download()

    def setup(self, stage: str) -> None:
        if stage == "predict":
            if self.predict_dir is None:
                raise DatasetError("Prediction needs a folder of images: set data.predict_dir=<folder>.")
            self.predict_set = PredictImages(list_images(self.predict_dir), eval_transform(self.short_side))
            return
        if stage == "fit":
            # albumentations ignores global seeds: tie it to torch's so that seed_everything makes runs repeatable
            seed = torch.initial_seed() % 2**32
            transform = train_transform(
                self.crop_size, self.scale_range, self.short_side, self.cat_max_ratio, seed, self.ignore_index
            )
            self.train_set = SegmentationDataset(self._samples("train"), transform)
        self.eval_set = SegmentationDataset(self._samples("val"), eval_transform(self.short_side), keep_label_size=True)


def check_ignore_index(value: object, num_classes: int) -> int:
    """`value` as the label value of unlabelled pixels: an int in num_classes..255 (labels are uint8, and the value
    must not be a class id); else DatasetError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not num_classes <= value <= 255:
        raise DatasetError(
            f"{option('data', 'ignore_index', value)} cannot mark unlabelled pixels: labels are uint8 and class ids "
            f"are 0..{num_classes - 1}, so it must be an int in {num_classes}..255. Fix: "
            f"{option('data', 'ignore_index', IGNORE_INDEX)} (the default) or another value in {num_classes}..255."
        )
    return int(value)

"""Torch datasets: labelled image pairs for train/val/test, bare images for predict."""

from pathlib import Path

import albumentations as A
import torch
from torch.utils.data import Dataset

from datamodules.files import LabelMap, load_image, load_label

Sample = tuple[Path, Path, LabelMap]


class SegmentationDataset(Dataset):
    """(image, label, label map) samples -> {"image": (3, h, w) float32, "label": (h, w) int64, "path": str}.

    With keep_label_size the transform sees only the image and the label keeps its file's (H, W), for evaluation
    at the original resolution; otherwise image and label go through the transform together.
    """

    def __init__(self, samples: list[Sample], transform: A.Compose, keep_label_size: bool = False):
        self.samples, self.transform, self.keep_label_size = samples, transform, keep_label_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        image_path, label_path, label_map = self.samples[index]
        image = load_image(image_path)
        label = load_label(label_path, label_map, image_path, image.shape[:2])
        if self.keep_label_size:
            image, label = self.transform(image=image)["image"], torch.from_numpy(label)
        else:
            out = self.transform(image=image, mask=label)
            image, label = out["image"], out["mask"]
        return {"image": image, "label": label.long(), "path": str(image_path)}


class PredictImages(Dataset):
    """Image files -> {"image": (3, h, w) float32, "size": (2,) int64 original (H, W), "path": str}."""

    def __init__(self, paths: list[Path], transform: A.Compose):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        image = load_image(self.paths[index])
        return {
            "image": self.transform(image=image)["image"],
            "size": torch.tensor(image.shape[:2]),
            "path": str(self.paths[index]),
        }

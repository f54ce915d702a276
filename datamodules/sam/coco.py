"""COCO-format instance sets (COCO, LVIS layout) with the box prompts for SAM: ground truth or a detector's."""

from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import DatasetError
from datamodules.files import load_image
from datamodules.loaders import check_loader_options, eval_sampler, image_items, usable_workers
from datamodules.sam.coco_checks import check_detection, check_instances
from datamodules.synthetic.coco import write_coco_like


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """COCO boxes `(N, 4)` x, y, width, height -> corners `(N, 4)` x0, y0, x1, y1 (float32)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def load_coco(path: Path) -> COCO:
    """The annotation file as a pycocotools COCO index, checked by `check_instances` before pycocotools reads it;
    a clear error when it is not COCO-format JSON or holds a bad annotation."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(
            f"Cannot read the instance annotations {path} ({type(err).__name__}: {err}). It must be a COCO-format "
            "JSON file with 'images', 'annotations' and 'categories': restore it from the dataset archive."
        ) from None
    check_instances(data, path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


def load_detections(path: Path, image_ids: set[int], max_per_image: int) -> dict[int, list[dict[str, Any]]]:
    """A COCO results file `[{image_id, category_id, bbox (xywh), score}, ...]` grouped by image id,
    best `max_per_image` per image. Detections naming image ids not in the annotations are skipped with a warning."""
    try:
        detections = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"Cannot read the detections file data.detections={path} ({err}).") from None
    if not isinstance(detections, list):
        raise DatasetError(
            f"The detections file {path} holds a {type(detections).__name__}; it must be a COCO results list "
            '[{"image_id": ..., "category_id": ..., "bbox": [x, y, w, h], "score": ...}, ...].'
        )
    by_image, unknown = defaultdict(list), []
    for i, det in enumerate(detections):
        check_detection(det, i, path)
        if det["image_id"] in image_ids:
            by_image[det["image_id"]].append(det)
        else:
            unknown.append(det["image_id"])
    if unknown:
        rank_zero_warn(  # every process of a DDP run sets up the data: once
            f"{len(unknown)} of {len(detections)} detections in {path} name image ids that are not in the annotations "
            f"(e.g. {sorted(set(unknown))[:5]}); they were skipped. Check that the detections were made on this split.",
        )
    return {k: sorted(v, key=lambda d: -d["score"])[:max_per_image] for k, v in by_image.items()}


class CocoInstances(Dataset):
    """One image per item with its instances and its box prompts.

    Items (numpy, M instances, K prompts):
        image `(H, W, 3)` uint8 RGB, image_id int, path str, index int (the item's position in the split),
        gt_masks `(M, H, W)` bool, gt_boxes `(M, 4)` xyxy, gt_labels `(M,)`, gt_iscrowd `(M,)`, gt_areas `(M,)`,
        prompt_boxes `(K, 4)` xyxy, prompt_labels `(K,)`, prompt_scores `(K,)` detector scores, or None for
        ground-truth boxes (every non-crowd instance).
    """

    def __init__(self, coco: COCO, image_paths: dict[int, Path], detections: dict[int, list[dict]] | None) -> None:
        self.coco, self.image_paths, self.detections = coco, image_paths, detections
        self.image_ids = sorted(image_paths)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        path = self.image_paths[image_id]
        image = load_image(path)
        info = self.coco.imgs[image_id]
        if image.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(
                f"Image {path} is {image.shape[1]}x{image.shape[0]} but its annotation says "
                f"{info['width']}x{info['height']}: the file does not belong to this annotation set."
            )
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        h, w = image.shape[:2]
        item = {
            "image": image,
            "image_id": image_id,
            "index": index,
            "path": str(path),
            "gt_masks": np.stack([self.coco.annToMask(a).astype(bool) for a in anns])
            if anns
            else np.zeros((0, h, w), bool),
            "gt_boxes": xywh_to_xyxy([a["bbox"] for a in anns]),
            "gt_labels": np.array([a["category_id"] for a in anns], dtype=np.int64),
            "gt_iscrowd": np.array([a.get("iscrowd", 0) for a in anns], dtype=np.int64),
            "gt_areas": np.array([a["area"] for a in anns], dtype=np.float32),
        }
        if self.detections is None:
            keep = item["gt_iscrowd"] == 0
            item |= {
                "prompt_boxes": item["gt_boxes"][keep],
                "prompt_labels": item["gt_labels"][keep],
                "prompt_scores": None,
            }
        else:
            dets = self.detections.get(image_id, [])
            item |= {
                "prompt_boxes": xywh_to_xyxy([d["bbox"] for d in dets]),
                "prompt_labels": np.array([d["category_id"] for d in dets], dtype=np.int64),
                "prompt_scores": np.array([d["score"] for d in dets], dtype=np.float64),
            }
        return item


class CocoDataModule(L.LightningDataModule):
    """A COCO-format instance split for evaluation (test and predict loaders).

    A batch is one `CocoInstances` item when `batch_size` is 1, else a list of `batch_size` items (the last may
    hold fewer), which `SamBoxEvaluation` encodes in one image-encoder call.

    Layout "coco": root/<images>/<file_name> and root/<annotations>. Layout "lvis": the LVIS v1 JSON, whose
    images are found by their `coco_url` as root/{train2017,val2017}/<name>.

    Args:
        root: dataset folder.
        images: image folder under root ("coco" layout).
        annotations: instances JSON under root.
        layout: "coco" or "lvis".
        detections: a COCO results file of detector boxes to prompt with; None prompts with the ground truth.
        max_detections: detector boxes kept per image, best scores first (COCO evaluates 100).
        num_workers: image-loading processes.
        batch_size: images per test / predict batch.
        generate: write a small synthetic set of shapes (generate_n images) when the annotations are absent.
    """

    def __init__(
        self,
        root: str,
        images: str = "val2017",
        annotations: str = "annotations/instances_val2017.json",
        layout: str = "coco",
        detections: str | None = None,
        max_detections: int = 100,
        num_workers: int = 4,
        generate: bool = False,
        generate_n: int = 16,
        batch_size: int = 1,
    ) -> None:
        super().__init__()
        check_loader_options(
            num_workers=num_workers, max_detections=max_detections, generate_n=generate_n, batch_size=batch_size
        )
        if layout not in ("coco", "lvis"):
            raise DatasetError(f"data.layout={layout!r} is not a known layout: use 'coco' or 'lvis'.")
        self.root = Path(root).expanduser()
        self.images, self.annotations, self.layout = self.root / images, self.root / annotations, layout
        self.detections = None if detections is None else Path(detections).expanduser()
        self.max_detections, self.num_workers = max_detections, usable_workers(num_workers)
        self.generate, self.generate_n, self.batch_size = generate, generate_n, batch_size

    def prepare_data(self) -> None:
        if self.generate and not self.annotations.is_file():
            write_coco_like(self.root, self.generate_n, split=self.images.name)

    def setup(self, stage: str) -> None:
        if not self.annotations.is_file():
            raise DatasetError(
                f"Instance annotations {self.annotations} not found. Expected under data.root={self.root}: "
                f"{self.images.name}/*.jpg and {self.annotations.relative_to(self.root)} (COCO format), or set "
                "data.annotations / data.images to where they are; data.generate=true writes a small synthetic set."
            )
        coco = load_coco(self.annotations)
        paths = {image_id: self._image_path(info) for image_id, info in coco.imgs.items()}
        detections = None
        if self.detections is not None:
            detections = load_detections(self.detections, set(paths), self.max_detections)
        self.dataset = CocoInstances(coco, paths, detections)

    def _image_path(self, info: dict[str, Any]) -> Path:
        if self.layout == "lvis":
            return self.root.joinpath(*info["coco_url"].split("/")[-2:])
        return self.images / info["file_name"]

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def _loader(self) -> DataLoader:
        collate = image_items(self.batch_size)
        sampler = eval_sampler(self.trainer, self.dataset)  # every image once under DDP, no padding repeats
        return DataLoader(
            self.dataset, batch_size=self.batch_size, collate_fn=collate, num_workers=self.num_workers, sampler=sampler
        )

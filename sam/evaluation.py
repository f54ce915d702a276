"""Zero-shot instance segmentation with SAM as a Lightning test loop: box prompts -> masks -> COCO mask AP."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from pycocotools import mask as mask_utils
from scipy.ndimage import distance_transform_edt
from torch import nn
from torchmetrics import MeanMetric

from metrics.coco import UNDEFINED, mask_ap
from sam.batched import encode_images
from sam.predictor import SamBoxPredictor, clip_boxes
from utils.distributed import from_rank_zero, gather_to_zero, summed
from utils.errors import UserError, option
from utils.results import write_json
from writers.overlays import save_overlay


def mask_centres(masks: np.ndarray) -> np.ndarray:
    """Masks `(N, H, W)` bool -> `(N, 2)` xy of each mask's point farthest from its boundary (image edge included)."""
    points = np.zeros((len(masks), 2), dtype=np.float32)
    for i, mask in enumerate(masks):
        distance = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(distance.argmax(), distance.shape)
        points[i] = x, y
    return points


def mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU `(N,)` of paired masks `a`, `b` `(N, H, W)` bool; two empty masks count as 1."""
    inter = (a & b).sum((1, 2))
    union = (a | b).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def encode_results(image_id: int, masks: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """COCO results entries `{image_id, category_id, segmentation (RLE), score}` for masks `(N, H, W)` bool."""
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))) if len(masks) else []
    return [
        {"image_id": image_id, "category_id": int(label), "score": float(score),
         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}
        for rle, label, score in zip(rles, labels, scores)
    ]  # fmt: skip


class SamBoxEvaluation(L.LightningModule):
    """SAM prompted with each image's boxes (ground truth or a detector's); nothing is trained.

    Test batches are `datamodules.sam.coco.CocoInstances` items: one item (`data.batch_size=1`), or a list of them,
    whose images go through SAM's image encoder in one call (`sam.batched.encode_images`) before each image's
    prompts. Boxes are clipped to the image (counted) and boxes with no area after clipping are skipped
    (counted); every other box gets a mask. A mask's score is the detector's score, or SAM's predicted IoU for
    ground-truth boxes. With `refine`, each box is decoded a second time with the first mask's low-res logits
    as the decoder's mask input, and the second mask is the result.

    Metrics (test/): mask_AP, mask_AP50, mask_AP75, mask_APs/m/l, mask_AR1/10/100, mask_ARs/m/l (pycocotools'
    COCOeval on the run's results over every image of the split, `metrics.coco.mask_ap`), box_mIoU
    (ground-truth boxes: each mask against its instance), point_mIoU (one point at each instance's centre,
    SAM's most confident of three masks: the SAM paper's single-point evaluation), and the box counts; with
    `refine`, also mask_AP_unrefined (the first pass's masks, same run).

    Args:
        sam: a `segment_anything` Sam model (see `sam.model.load_sam`).
        chunk_size: prompts per mask-decoder call.
        point_prompts: also run the single-point evaluation.
        results_file: where to write the COCO results JSON of RLE masks; None writes nothing.
        overlays: how many images get an overlay picture in `overlay_dir`.
        refine: decode each box twice, the second time with the first pass's logits as mask input.
    """

    monitor = "test/mask_AP"
    """The metric that picks the best checkpoint, and whether higher is better ("max")."""
    monitor_mode = "max"

    def __init__(
        self,
        sam: nn.Module,
        chunk_size: int = 64,
        point_prompts: bool = True,
        results_file: str | None = None,
        overlays: int = 0,
        overlay_dir: str | None = None,
        refine: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(refine, (bool, np.bool_)):
            raise UserError(f"{option('head', 'refine', refine)} must be true or false (decode each box twice).")
        self.save_hyperparameters(ignore=["sam"])
        self.sam = sam.eval().requires_grad_(False)
        self.predictor = SamBoxPredictor(self.sam, chunk_size)
        self.box_miou, self.point_miou = MeanMetric(), MeanMetric()
        self.counts: Counter[str] = Counter()
        self.results: dict[int, list[dict[str, Any]]] = {}
        """COCO results entries by image id (with `refine`, also `self.results_unrefined`)."""
        self.results_unrefined: dict[int, list[dict[str, Any]]] = {}
        self.metric_notes: dict[str, str] = {}
        """Why a logged metric is NaN (train.py writes it as null with this reason), by metric name."""

    def images_of(self, batch: dict[str, Any] | list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The batch's items in order, each yielded while the predictor holds its image: one item is encoded by
        `set_image`, several by one `encode_images` call (equal embeddings, tests/test_sam_batched.py)."""
        items = batch if isinstance(batch, list) else [batch]
        if len(items) == 1:
            self.predictor.set_image(items[0]["image"])
            yield items[0]
            return
        embeddings = encode_images(self.sam, [item["image"] for item in items], batch_size=len(items))
        for item, embedding in zip(items, embeddings):
            self.predictor.set_embedding(embedding)
            yield item

    def segment(self, item: dict[str, Any]) -> dict[str, np.ndarray]:
        """One image's box prompts -> masks `(K, H, W)` bool, scores `(K,)`, labels `(K,)`, boxes `(K, 4)`
        for its K valid boxes, and `valid` `(N,)` bool over all its N boxes (with `refine`, also the first
        pass's `masks_unrefined`, `scores_unrefined`)."""
        self.predictor.set_image(item["image"])
        return self.prompt(item)

    def prompt(self, item: dict[str, Any]) -> dict[str, np.ndarray]:
        """`segment` on the image the predictor holds (that of `item`)."""
        boxes, clipped, valid = clip_boxes(item["prompt_boxes"], *item["image"].shape[:2])
        self.counts.update(boxes=len(boxes), boxes_clipped=int(clipped.sum()), boxes_degenerate=int((~valid).sum()))
        out = {"labels": item["prompt_labels"][valid], "boxes": boxes[valid], "valid": valid}
        if self.hparams.refine:
            (masks, sam_scores), (first, first_scores) = self.predictor.predict_refined(None, boxes[valid])
            out["masks_unrefined"] = first
            out["scores_unrefined"] = self._scores(item, first_scores, valid)
        else:
            masks, sam_scores = self.predictor.predict(None, boxes[valid])
        return out | {"masks": masks, "scores": self._scores(item, sam_scores, valid)}

    @staticmethod
    def _scores(item: dict[str, Any], sam_scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return sam_scores if item["prompt_scores"] is None else item["prompt_scores"][valid]

    def test_step(self, batch: dict[str, Any] | list[dict[str, Any]], batch_idx: int) -> None:
        for item in self.images_of(batch):
            self.evaluate_image(item, self.prompt(item))

    def evaluate_image(self, item: dict[str, Any], out: dict[str, np.ndarray]) -> None:
        """Update the metrics, results and overlays with one image's masks (`prompt`'s output)."""
        image_id = int(item["image_id"])
        self.results[image_id] = encode_results(image_id, out["masks"], out["labels"], out["scores"])
        if self.hparams.refine:
            unrefined = encode_results(image_id, out["masks_unrefined"], out["labels"], out["scores_unrefined"])
            self.results_unrefined[image_id] = unrefined
        non_crowd = item["gt_iscrowd"] == 0
        if item["prompt_scores"] is None and out["valid"].any():
            paired = item["gt_masks"][non_crowd][out["valid"]]
            self.box_miou.update(torch.from_numpy(mask_ious(out["masks"], paired)))
        if self.hparams.point_prompts:
            self.point_prompt_step(item["gt_masks"][non_crowd])
        # the split's first images, whichever process evaluates them (under DDP each image is one process's)
        if item["index"] < self.hparams.overlays and self.hparams.overlay_dir is not None:
            path = Path(self.hparams.overlay_dir) / f"{Path(item['path']).stem}.png"
            save_overlay(path, item["image"], out["masks"], out["boxes"], out["scores"])

    def point_prompt_step(self, gt_masks: np.ndarray) -> None:
        """Prompt with one point at the centre of each non-empty instance `(M, H, W)` bool; update point_mIoU."""
        gt_masks = gt_masks[gt_masks.any((1, 2))]
        if len(gt_masks):
            masks, _ = self.predictor.predict_points(None, mask_centres(gt_masks))
            self.point_miou.update(torch.from_numpy(mask_ious(masks, gt_masks)))

    def on_test_epoch_start(self) -> None:
        self.counts.clear()
        self.results, self.results_unrefined = {}, {}

    def on_test_epoch_end(self) -> None:
        results, unrefined = self.gathered(self.results), self.gathered(self.results_unrefined)
        # float64 tensors: Lightning logs a Python float as float32, which would round COCOeval's numbers
        metrics = {k: torch.tensor(v, dtype=torch.float64) for k, v in self.coco_metrics(results, unrefined).items()}
        means = {"box_mIoU": self.box_miou, "point_mIoU": self.point_miou}
        updated = summed({name: metric.update_count for name, metric in means.items()})  # by any process
        for name, metric in means.items():
            if updated[name]:
                metrics[f"test/{name}"] = metric.compute()  # synchronised: every process calls it
            metric.reset()
        counts = summed(self.counts)  # over every process's images
        metrics |= {f"test/{name}": float(n) for name, n in counts.items()}
        self.log_dict(metrics)
        if counts.get("boxes_clipped") or counts.get("boxes_degenerate"):
            rank_zero_warn(
                f"Of {counts['boxes']} prompt boxes, {counts['boxes_clipped']} reached outside their image "
                f"and were clipped to it, and {counts['boxes_degenerate']} had zero width or height (after "
                "clipping) and were skipped; every other box got a mask."
            )
        if self.hparams.results_file is not None and self.trainer.is_global_zero:
            # strict JSON: detector scores are checked when read (datamodules.sam.coco) and SAM's are finite
            write_json(Path(self.hparams.results_file), results, indent=None)

    def gathered(self, by_image: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """The results entries of every process, in image id order, on rank 0; an empty list on the other ranks."""
        everyone = gather_to_zero(by_image)
        merged = {} if everyone is None else {k: v for part in everyone for k, v in part.items()}
        return [entry for image_id in sorted(merged) for entry in merged[image_id]]

    def coco_metrics(self, results: list[dict[str, Any]], unrefined: list[dict[str, Any]]) -> dict[str, float]:
        """COCOeval's stats (`metrics.coco.mask_ap`) of the gathered results against every image of the split,
        computed once on rank 0 and sent to the other ranks; NaN stats get their reason in `metric_notes`."""

        def on_rank_zero() -> dict[str, float]:
            coco = self.trainer.test_dataloaders.dataset.coco
            metrics = {f"test/{name}": value for name, value in mask_ap(coco, results).items()}
            if self.hparams.refine:
                metrics["test/mask_AP_unrefined"] = mask_ap(coco, unrefined)["mask_AP"]
            return metrics

        metrics = from_rank_zero(on_rank_zero)
        self.metric_notes.update({name: UNDEFINED for name, value in metrics.items() if math.isnan(value)})
        return metrics

    def predict_step(self, batch: dict[str, Any] | list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        """COCO results entries (RLE masks) of the batch's images' box prompts."""
        entries = []
        for item in self.images_of(batch):
            out = self.prompt(item)
            entries += encode_results(item["image_id"], out["masks"], out["labels"], out["scores"])
        return entries

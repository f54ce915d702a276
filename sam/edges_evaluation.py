"""Zero-shot edge detection with SAM as a Lightning test loop: BSDS500's boundary benchmark (ODS, OIS, AP, R50).

`python train.py head=sam_edges data=bsds500 sam.model_type=vit_h sam.checkpoint=PATH`. Nothing is trained.
Batches are `datamodules.sam.bsds500` items (one image with its annotators' boundary maps); each image's edge map is
`sam.edges.edge_map`, quantised to 8 bits as the benchmark reads the PNG it is given, then scored by
`metrics.edges.EdgeBenchmark`.
"""

from __future__ import annotations

import math
from numbers import Integral
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from PIL import Image
from torch import nn

from metrics.edges import MAX_DIST, EdgeBenchmark
from sam.batched import ImageEmbedding, encode_images
from sam.edges import edge_map
from utils.atomic import atomic_write
from utils.errors import UserError, option

METRICS = ("ODS", "OIS", "AP", "R50")


class SamEdgesEvaluation(L.LightningModule):
    """SAM's zero-shot edge maps over a datamodule's images, scored with the BSDS500 benchmark.

    Args:
        sam: a `segment_anything` Sam model (`sam.model.load_sam`).
        points_per_side: the prompt grid's points per side (the paper: 16).
        points_per_batch: point prompts per mask-decoder call.
        box_nms_thresh: box IoU above which the lower-scored of two masks is dropped (SAM's default 0.7).
        pred_iou_thresh: masks with a lower predicted IoU are dropped first (the paper: none, 0).
        thresholds: the benchmark's number of thresholds (99).
        max_dist: the match tolerance as a fraction of the image diagonal (0.0075).
        save_edges: write each edge map as an 8-bit PNG `<edges_dir>/<image id>.png` (the benchmark's input).
        edges_dir: where they go.
    """

    monitor = None
    """Nothing is trained, so no checkpoint metric."""
    monitor_mode = "max"

    def __init__(
        self,
        sam: nn.Module,
        points_per_side: int = 16,
        points_per_batch: int = 256,
        box_nms_thresh: float = 0.7,
        pred_iou_thresh: float = 0.0,
        thresholds: int = 99,
        max_dist: float = MAX_DIST,
        save_edges: bool = False,
        edges_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["sam"])
        for name, value in (("points_per_side", points_per_side), ("points_per_batch", points_per_batch)):
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise UserError(
                    f"{option('head', name, value)} must be a whole number of at least 1; e.g. "
                    f"{option('head', name, 16 if name == 'points_per_side' else 256)}."
                )
        for name, value in (("box_nms_thresh", box_nms_thresh), ("pred_iou_thresh", pred_iou_thresh)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise UserError(f"{option('head', name, value)} must be a number in [0, 1].")
        if save_edges and edges_dir is None:
            raise ValueError("save_edges=True needs edges_dir, the folder the PNGs go to.")
        self.sam = sam.eval().requires_grad_(False)
        self.benchmark = EdgeBenchmark(thresholds, max_dist)
        self.metric_notes: dict[str, str] = {}
        """Why a logged metric is NaN (train.py writes it as null with this reason), by metric name."""

    def setup(self, stage: str) -> None:
        if not hasattr(self.trainer.datamodule, "pairs"):
            raise UserError(
                f"head=sam_edges scores boundary maps, but {type(self.trainer.datamodule).__name__} has none: choose "
                "data=bsds500."
            )

    def on_test_epoch_start(self) -> None:
        self.benchmark.reset()

    def test_step(self, batch: dict[str, Any] | list[dict[str, Any]], batch_idx: int) -> None:
        # data.batch_size > 1 gives a list of images: SAM's encoder runs once for all of them
        items = batch if isinstance(batch, list) else [batch]
        embeddings = encode_images(self.sam, [item["image"] for item in items]) if len(items) > 1 else [None]
        for item, embedding in zip(items, embeddings):
            self.image_step(item, embedding)

    def image_step(self, item: dict[str, Any], embedding: ImageEmbedding | None) -> None:
        """One image: its edge map, the benchmark's counts, and its PNG."""
        hp = self.hparams
        edges = edge_map(
            self.sam,
            item["image"],
            hp.points_per_side,
            hp.points_per_batch,
            hp.box_nms_thresh,
            hp.pred_iou_thresh,
            embedding=embedding,
        )
        quantised = np.round(edges * 255).astype(np.uint8)  # what the benchmark reads from the PNG: value / 255
        self.benchmark.update(quantised / 255.0, item["boundaries"])
        if hp.save_edges:
            image = Image.fromarray(quantised)
            atomic_write(Path(hp.edges_dir) / f"{item['name']}.png", lambda tmp: image.save(tmp, format="PNG"))

    def on_test_epoch_end(self) -> None:
        result = self.benchmark.compute()
        self.log_dict({f"test/{name}": float(result[name]) for name in METRICS})
        for name in METRICS:
            if not math.isfinite(result[name]):
                self.metric_notes[f"test/{name}"] = "the test split gave no image to score"

"""One-shot segmentation as a Lightning test loop: every episode's query segmented from its K supports, mIoU and FB-IoU.

`python train.py head=oneshot data=fss1000` (or `data=coco20i data.fold=0`, `data=perseg`, `data.shots=5`). Nothing is
trained. Batches are episodes (`datamodules.oneshot.base`): `support_images` / `support_masks` (K each), `query_image`,
`query_mask`, `class_id`, `episode`, `query_path`. The metrics are accumulated over the episodes as HSNet and Matcher
do (`metrics.oneshot.OneShotIoU`): mIoU is the mean over ALL the evaluated classes of each class's IoU (a class with
no episode counts as 0, with a warning naming it), FB-IoU the mean of the foreground and the background IoU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from metrics.oneshot import OneShotIoU
from oneshot.segmenter import OneShotSegmenter
from sam.predictor import SamBoxPredictor
from utils.distributed import gather_to_zero, summed
from utils.errors import UserError
from writers.oneshot import oneshot_figure, save_oneshot_figure
from writers.tables import write_rows


class OneShotEvaluation(L.LightningModule):
    """The one-shot segmenter (`oneshot.segmenter.OneShotSegmenter`) over a datamodule's episodes.

    Args:
        backbone: the frozen DINOv2 backbone whose patch features are matched.
        sam: a `segment_anything` Sam model (`sam.model.load_sam`).
        method: "matcher" or "persam" (see `OneShotSegmenter`).
        block: the backbone block whose normed patch tokens are matched (-1: the last).
        image_size: the longer side of the backbone's input, in pixels.
        options: further options of the segmenter (e.g. `n_clusters`), as a mapping.
        results_dir: where `oneshot_episodes.csv` / `.json` (every episode's IoU, pixel counts and note) and
            `oneshot_classes.csv` / `.json` (every class's IoU) are written; None writes none.
        overlays: how many episodes get a figure (supports | query with its mask and prompts) in `overlay_dir`.
    """

    monitor = None
    """Nothing is trained, so no checkpoint metric."""
    monitor_mode = "max"

    def __init__(
        self,
        backbone: nn.Module,
        sam: nn.Module,
        method: str = "matcher",
        block: int = -1,
        image_size: int = 518,
        options: dict[str, Any] | None = None,
        results_dir: str | None = None,
        overlays: int = 0,
        overlay_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "sam"])
        self.backbone = backbone.eval().requires_grad_(False)
        self.sam = sam.eval().requires_grad_(False)
        options = dict(options or {})
        self.segmenter = OneShotSegmenter(
            self.backbone, SamBoxPredictor(self.sam), method=method, block=block, image_size=image_size, **options
        )
        self.rows: list[dict[str, Any]] = []
        self.metric_notes: dict[str, str] = {}
        """Why a logged metric is NaN (train.py writes it as null with this reason), by metric name."""

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "shots"):
            raise UserError(
                f"head=oneshot evaluates one-shot episodes, but {type(datamodule).__name__} gives none: choose "
                "data=fss1000, data=coco20i, data=perseg or data=oneshot_synthetic."
            )
        self.class_names = list(datamodule.all_class_names)  # by class_id (COCO-20i: all 80; a fold evaluates 20)
        self.iou = OneShotIoU(datamodule.num_classes, datamodule.eval_class_ids).to(self.device)

    def on_test_epoch_start(self) -> None:
        self.rows = []
        self.iou.reset()

    def test_step(self, episode: dict[str, Any], batch_idx: int) -> None:
        reference = self.segmenter.reference(episode["support_images"], episode["support_masks"])
        result = self.segmenter.segment(reference, episode["query_image"])
        pred, truth = (
            torch.as_tensor(np.array(result.mask, bool)),
            torch.as_tensor(np.array(episode["query_mask"], bool)),
        )
        self.iou.update(pred, truth, int(episode["class_id"]))
        intersection, union = int((pred & truth).sum()), int((pred | truth).sum())
        self.rows.append(
            {
                "episode": int(episode["episode"]),
                "class_id": int(episode["class_id"]),
                "class": self.class_names[int(episode["class_id"])],
                "query": str(episode["query_path"]),
                "IoU": intersection / union if union else None,
                "intersection": intersection,
                "union": union,
                "prompts": len(result.points),
                "note": result.note or "",
            }
        )
        # the split's first episodes, whichever process evaluates them (under DDP each episode is one process's)
        if int(episode["episode"]) < self.hparams.overlays and self.hparams.overlay_dir is not None:
            self.save_overlay(episode, result)

    def save_overlay(self, episode: dict[str, Any], result: Any) -> None:
        """The figure of one episode: its supports with their masks, the query with its mask and prompts."""
        supports = list(zip(episode["support_images"], episode["support_masks"]))
        titles = [f"support {k + 1}" for k in range(len(supports))] + [Path(str(episode["query_path"])).name]
        fig = oneshot_figure(
            supports,
            [(episode["query_image"], result.mask, result.points, result.point_labels, result.boxes)],
            titles,
            f"episode {int(episode['episode'])}: {self.class_names[int(episode['class_id'])]}",
        )
        save_oneshot_figure(Path(self.hparams.overlay_dir) / f"episode_{int(episode['episode']):05d}.png", fig)

    def on_test_epoch_end(self) -> None:
        result = self.iou.compute()  # the per-class counts summed over the processes
        # float64 tensors: Lightning logs a Python float as float32
        self.log_dict({f"test/{name}": value.double() for name, value in result.items()})
        counts = summed({"episodes": len(self.rows), "empty_masks": sum(1 for row in self.rows if row["note"])})
        if not counts["episodes"]:
            self.metric_notes.update(dict.fromkeys(("test/mIoU", "test/FB-IoU"), "the test split gave no episode"))
        elif not torch.isfinite(result["FB-IoU"]):
            self.metric_notes["test/FB-IoU"] = (
                "no episode had a foreground pixel in its prediction or ground truth: HSNet's FB-IoU is 0 / 0"
            )
        unseen = self.iou.unseen()
        if counts["episodes"] and unseen:
            names = [self.class_names[c] for c in unseen]
            rank_zero_warn(
                f"{len(unseen)} of the {len(self.iou.class_ids)} evaluated classes had no episode and count as IoU 0 "
                f"in test/mIoU, as in HSNet: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}. More "
                "episodes (data.n_episodes) give every class one."
            )
        self.log("test/empty_masks", float(counts["empty_masks"]))
        per_class = self.iou.class_iou()  # synchronised: every process calls it
        everyone = gather_to_zero(self.rows)
        if self.hparams.results_dir is not None and everyone is not None:
            results = Path(self.hparams.results_dir)
            rows = sorted((row for rows in everyone for row in rows), key=lambda row: row["episode"])
            write_rows(rows, results / "oneshot_episodes")
            rows = [
                {"class_id": c, "class": name, "IoU": float(per_class[c])}
                for c, name in enumerate(self.class_names)
                if torch.isfinite(per_class[c])
            ]
            write_rows(rows, results / "oneshot_classes")

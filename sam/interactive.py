"""Interactive point evaluation (RITM's protocol, the SAM paper's 1..N click curves) as a Lightning test loop.

Each object gets a first click at its centre; SAM answers with three masks (multimask). Two runs follow from there:
"top" keeps SAM's most confident mask, "oracle" the one closest to the ground truth (the paper's oracle); each then
adds RITM's next click (`sam.clicks`: the distance-transform peak of all missed or all false pixels) and asks SAM
again with all its clicks and its previous low-res logits as the mask input, one mask per call (multimask off), up
to N clicks (the mIoU@1..@N curve), and on up to 20 clicks (`noc_clicks`) while the object's IoU has not reached
0.90 (NoC, as RITM's evaluation runs it). An object whose mask has no error left gets no further click and keeps its IoU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from sam.batched import ImageEmbedding, encode_images
from sam.clicks import NOC_MAX_CLICKS, Click, clicks_to_reach, first_click, mask_iou, next_click
from sam.predictor import SamBoxPredictor
from utils.distributed import summed
from utils.errors import UserError, option
from utils.results import write_json

RUNS = ("top", "oracle")
THRESHOLDS = {"NoC@85": 0.85, "NoC@90": 0.90}
STOP_IOU = max(THRESHOLDS.values())  # past N clicks an object stops here, as RITM's evaluation (--target-iou 0.90)
COUNTS = ("objects", "skipped_objects")


@dataclass
class Track:
    """One run ("top" or "oracle") over the M objects of an image: clicks, masks, logits and IoUs so far."""

    clicks: list[list[Click]]
    masks: np.ndarray  # (M, H, W) bool, the latest mask of each object
    logits: torch.Tensor  # (M, 1, 256, 256) SAM's low-res logits of that mask, the next call's mask input
    ious: list[list[float]] = field(default_factory=list)  # per object, the IoU after each click (N or more)


class InteractiveSegmenter:
    """Simulated clicks on the objects of one image at a time, SAM answering each round for all objects at once.

    Args:
        sam: a `segment_anything` Sam model (see `sam.model.load_sam`).
        clicks: N, the clicks every object gets (fewer only when its mask has no error left).
        chunk_size: objects per mask-decoder call.
        noc_clicks: NoC's cap (RITM's 20): past N, an object gets clicks up to this many while its IoU is below
            0.90, and NoC counts an IoU never reached as this many.
    """

    def __init__(self, sam: nn.Module, clicks: int = 9, chunk_size: int = 64, noc_clicks: int = NOC_MAX_CLICKS) -> None:
        for key, value, meaning in (("clicks", clicks, "clicks per object"), ("noc_clicks", noc_clicks, "NoC's cap")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{option('head', key, value)} must be a whole number of at least 1 ({meaning}).")
        self.box_predictor = SamBoxPredictor(sam, chunk_size)
        self.predictor = self.box_predictor.predictor  # segment_anything's SamPredictor: predict_torch
        self.clicks, self.chunk_size, self.noc_clicks = clicks, chunk_size, noc_clicks

    @torch.no_grad()
    def _decode(self, clicks: list[list[Click]], mask_input: torch.Tensor | None, multimask: bool) -> tuple:
        """Click lists of equal length for B objects -> masks `(B, C, H, W)` bool, scores `(B, C)`, low-res logits
        `(B, C, 256, 256)` float32 (C = 3 with `multimask`, else 1), on the CPU, in chunks of `chunk_size`."""
        device = self.box_predictor.device
        coords = torch.tensor([[(c.x, c.y) for c in row] for row in clicks], dtype=torch.float32, device=device)
        labels = torch.tensor([[int(c.positive) for c in row] for row in clicks], dtype=torch.int, device=device)
        coords = self.predictor.transform.apply_coords_torch(coords, self.predictor.original_size)
        out = []
        for start in range(0, len(clicks), self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            prior = None if mask_input is None else mask_input[rows].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                masks, scores, logits = self.predictor.predict_torch(
                    coords[rows], labels[rows], mask_input=prior, multimask_output=multimask
                )
            out.append((masks.cpu(), scores.float().cpu(), logits.float().cpu()))
        return tuple(torch.cat(parts) for parts in zip(*out))

    def run(
        self,
        image: np.ndarray,
        gt_masks: np.ndarray,
        ignore: np.ndarray | None = None,
        embedding: ImageEmbedding | None = None,
    ) -> dict[str, Track]:
        """Objects `gt_masks` `(M, H, W)` bool, each non-empty, on `image` `(H, W, 3)` uint8 -> one Track per run.
        `ignore` `(H, W)` bool: pixels left out of IoUs and error regions (None: none). `embedding`: the image
        already encoded (`sam.batched.encode_images`); without it SAM encodes it here."""
        if not len(gt_masks):
            return {}
        if embedding is None:
            self.box_predictor.set_image(image)
        else:
            self.box_predictor.set_embedding(embedding)
        first = [first_click(gt, ignore) for gt in gt_masks]
        if any(click is None for click in first):
            raise ValueError("Every object needs a non-empty mask: drop the empty ones (they have no centre).")
        masks, scores, logits = self._decode([[c] for c in first], None, multimask=True)
        masks = masks.numpy()
        candidate_ious = np.array([[mask_iou(m, gt, ignore) for m in ms] for ms, gt in zip(masks, gt_masks)])
        picks = {"top": scores.argmax(1).numpy(), "oracle": candidate_ious.argmax(1)}
        rows = np.arange(len(gt_masks))
        tracks = {}
        for run, pick in picks.items():
            track = Track([[c] for c in first], masks[rows, pick], logits[rows, pick][:, None].clone())
            track.ious = [[float(candidate_ious[i, pick[i]])] for i in rows]
            tracks[run] = self._refine(track, gt_masks, ignore)
        return tracks

    def _refine(self, track: Track, gt_masks: np.ndarray, ignore: np.ndarray | None) -> Track:
        """Clicks 2, 3, ... of one run: each round, the objects with an error left get a click and a new mask, up to
        N clicks, then up to `noc_clicks` while their IoU is below 0.90. An object with no error left keeps its IoU
        up to N."""
        active = list(range(len(gt_masks)))
        for number in range(2, max(self.clicks, self.noc_clicks) + 1):
            followed = []
            for i in active:
                if number > self.clicks and max(track.ious[i]) >= STOP_IOU:
                    continue  # NoC@85 and NoC@90 are known; the mIoU curve has its N values
                click = next_click(track.masks[i], gt_masks[i], ignore, track.clicks[i])
                if click is None:
                    track.ious[i] += [track.ious[i][-1]] * (self.clicks - len(track.ious[i]))
                else:
                    track.clicks[i].append(click)
                    followed.append(i)
            active = followed
            if active:
                masks, _, logits = self._decode([track.clicks[i] for i in active], track.logits[active], False)
                track.masks[active] = masks[:, 0].numpy()
                track.logits[active] = logits
                for i in active:
                    track.ious[i].append(mask_iou(track.masks[i], gt_masks[i], ignore))
        return track


class SamPointsEvaluation(L.LightningModule):
    """SAM's interactive point evaluation over a dataset; nothing is trained.

    Test batches are one image each (`datamodules.sam.coco.CocoInstances`, `datamodules.sam.interactive`): `image`,
    `gt_masks` `(M, H, W)`, `gt_iscrowd` `(M,)` (crowd instances are left out), optionally `gt_ignore` `(H, W)`.
    Empty masks have no centre: they are skipped and counted (test/skipped_objects).

    Metrics (test/): mIoU@1..@N, NoC@85, NoC@90 (RITM's, capped at `noc_clicks`) for SAM's top-scored mask, the same with the `oracle_` prefix for
    the oracle (best of the 3 first-click masks), objects and skipped_objects. With `results_dir`, one JSON per
    image records every click (object, click number, x, y, positive) and the IoU after it.

    Args:
        sam: a `segment_anything` Sam model (see `sam.model.load_sam`).
        clicks: N, the clicks per object.
        chunk_size: objects per mask-decoder call.
        results_dir: the folder of the per-image JSON files; None writes none.
        noc_clicks: NoC's cap, RITM's 20 (see `InteractiveSegmenter`).
    """

    monitor = "test/mIoU@1"
    """The metric that picks the best checkpoint, and whether higher is better ("max")."""
    monitor_mode = "max"

    def __init__(
        self,
        sam: nn.Module,
        clicks: int = 9,
        chunk_size: int = 64,
        results_dir: str | None = None,
        noc_clicks: int = NOC_MAX_CLICKS,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["sam"])
        self.sam = sam.eval().requires_grad_(False)
        self.segmenter = InteractiveSegmenter(self.sam, clicks, chunk_size, noc_clicks)
        prefixes = {"top": "", "oracle": "oracle_"}
        names = [f"mIoU@{k}" for k in range(1, clicks + 1)] + list(THRESHOLDS)
        self.metrics = nn.ModuleDict(
            {f"{prefixes[run]}{name}": MeanMetric() for run in RUNS for name in names}
        )  # keys hold "@": ModuleDict takes any string key
        self.counts = nn.ModuleDict({name: SumMetric() for name in COUNTS})  # summed over processes, as the means

    def test_step(self, batch: dict[str, Any] | list[dict[str, Any]], batch_idx: int) -> None:
        # data.batch_size > 1 gives a list of images: SAM's encoder runs once for all of them
        items = batch if isinstance(batch, list) else [batch]
        embeddings = encode_images(self.sam, [item["image"] for item in items]) if len(items) > 1 else [None]
        for item, embedding in zip(items, embeddings):
            self.image_step(item, embedding)

    def image_step(self, item: dict[str, Any], embedding: ImageEmbedding | None) -> None:
        """One image's objects: clicks, metrics, and its JSON."""
        keep = np.asarray(item["gt_iscrowd"]) == 0
        gt_masks = np.asarray(item["gt_masks"], dtype=bool)[keep]
        present = gt_masks.any((1, 2))
        self.counts["objects"].update(float(present.sum()))
        self.counts["skipped_objects"].update(float((~present).sum()))
        ignore = item.get("gt_ignore")
        tracks = self.segmenter.run(item["image"], gt_masks[present], ignore, embedding)
        for run, track in tracks.items():
            prefix = "" if run == "top" else "oracle_"
            curve = np.array([ious[: self.segmenter.clicks] for ious in track.ious])
            for k in range(curve.shape[1]):
                self.metrics[f"{prefix}mIoU@{k + 1}"].update(torch.from_numpy(curve[:, k]))
            for name, threshold in THRESHOLDS.items():
                noc = clicks_to_reach(track.ious, threshold, self.segmenter.noc_clicks).astype(np.float64)
                self.metrics[f"{prefix}{name}"].update(torch.from_numpy(noc))
        if self.hparams.results_dir is not None:
            self.write_clicks(item, np.flatnonzero(keep)[present], tracks)

    def write_clicks(self, item: dict[str, Any], object_ids: np.ndarray, tracks: dict[str, Track]) -> None:
        """`results_dir/<image stem>.json`: per object, each run's clicks with the IoU after each."""
        objects = []
        for j, object_id in enumerate(object_ids):
            entry: dict[str, Any] = {"object": int(object_id)}
            for run, track in tracks.items():
                entry[run] = [
                    {"click": n + 1, "x": c.x, "y": c.y, "positive": c.positive, "iou": track.ious[j][n]}
                    for n, c in enumerate(track.clicks[j])
                ]
            objects.append(entry)
        record = {"path": str(item["path"]), "image_id": item.get("image_id"), "objects": objects}
        write_json(Path(self.hparams.results_dir) / f"{Path(item['path']).stem}.json", record)

    def on_test_epoch_end(self) -> None:
        values = {}
        updated = summed({name: metric.update_count for name, metric in self.metrics.items()})  # by any process
        for name, metric in self.metrics.items():
            if updated[name]:
                values[f"test/{name}"] = metric.compute()  # synchronised: every process calls it
            metric.reset()
        if not values:
            rank_zero_warn(
                "No object was evaluated (every mask was empty or crowd): there is no mIoU or NoC to report."
            )
        for name, count in self.counts.items():
            values[f"test/{name}"] = count.compute()
            count.reset()
        self.log_dict(values)

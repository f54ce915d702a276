"""COCO mask AP as the official evaluator computes it: pycocotools' `COCOeval(iouType="segm")` itself.

`mask_ap` runs COCOeval with its own parameters (IoU thresholds 0.50:0.05:0.95 and 101 recall thresholds as
float64, maxDets 1/10/100, the three area ranges) over EVERY image of the annotations, those without ground truth
included, so that a false positive on an image with no instance counts, as it does in the official evaluation.
(torchmetrics' `MeanAveragePrecision`, used before, rounds the thresholds to float32 and leaves out images with no
ground truth.) Its twelve stats come back under the suite's metric names; a stat COCOeval gives as -1 (undefined:
no ground-truth instance in that area range, or none at all) comes back as NaN, which results files write as null
with `UNDEFINED`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

log = logging.getLogger(__name__)

STAT_NAMES = ("mask_AP", "mask_AP50", "mask_AP75", "mask_APs", "mask_APm", "mask_APl",
              "mask_AR1", "mask_AR10", "mask_AR100", "mask_ARs", "mask_ARm", "mask_ARl")  # fmt: skip
"""COCOeval.stats in order, by the names the suite logs (under test/)."""

UNDEFINED = "COCOeval gives -1 (undefined): the split has no ground-truth instance in that area range"


def mask_ap(annotations: str | Path | COCO, results: str | Path | list[dict[str, Any]]) -> dict[str, float]:
    """COCOeval's twelve segm stats of `results` against `annotations`, by `STAT_NAMES`; NaN where COCOeval gives -1.

    Args:
        annotations: a COCO instances JSON file, or a pycocotools `COCO` (not modified: COCOeval converts the
            ground truth's polygons to RLE in place, so it works on a copy).
        results: COCO results entries `{image_id, category_id, segmentation (RLE), score}`, or a JSON file of
            them. An empty list is no detection at all: AP and AR are 0 wherever there is ground truth, as
            COCOeval computes them (pycocotools' `loadRes` cannot read an empty list, so it is indexed here).

    Every image of `annotations` is evaluated (`params.imgIds`), those without ground truth included.
    COCOeval's printing goes to this module's logger at debug level.
    """
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        gt = _ground_truth(annotations)
        entries = _entries(results)
        unknown = {entry["image_id"] for entry in entries} - set(gt.getImgIds())
        if unknown:
            raise ValueError(f"results name image ids that are not in the annotations: {sorted(unknown)[:10]}")
        dt = gt.loadRes(entries) if entries else _empty_results(gt)
        evaluation = COCOeval(gt, dt, iouType="segm")
        evaluation.params.imgIds = sorted(gt.getImgIds())
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    log.debug("COCOeval:\n%s", printed.getvalue())
    return {name: float(value) if value != -1 else math.nan for name, value in zip(STAT_NAMES, evaluation.stats)}


def _ground_truth(annotations: str | Path | COCO) -> COCO:
    if isinstance(annotations, COCO):
        gt = COCO()
        gt.dataset = copy.deepcopy(annotations.dataset)
        gt.createIndex()
        return gt
    if isinstance(annotations, str | Path):
        return COCO(str(annotations))
    raise ValueError(f"annotations must be a COCO json path or a pycocotools COCO; got {type(annotations).__name__}")


def _entries(results: str | Path | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results as a new list of shallow copies (loadRes adds area, bbox and id to each entry in place)."""
    if isinstance(results, str | Path):
        results = json.loads(Path(results).read_text())
    if not isinstance(results, list) or not all(isinstance(e, dict) and "segmentation" in e for e in results):
        raise ValueError("results must be a list of COCO results entries, each with a segmentation (RLE)")
    return [dict(entry) for entry in results]


def _empty_results(gt: COCO) -> COCO:
    """What `gt.loadRes` would give for an empty segm results list."""
    dt = COCO()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"])}
    dt.dataset["annotations"] = []
    dt.createIndex()
    return dt

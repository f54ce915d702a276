"""Numbers that must be the official evaluator's: COCO mask AP (pycocotools' COCOeval over every image) and HSNet's
one-shot mIoU / FB-IoU. Before issue 24 each was a silent wrong result."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datamodules.synthetic.coco import write_coco_like
from metrics.coco import mask_ap
from metrics.oneshot import OneShotIoU
from tests.reliability import Case


def ap_counts_false_positives_on_images_without_ground_truth(tmp: Path) -> None:
    """A false positive on an image with no instance lowers AP50, as in COCOeval (torchmetrics left it out)."""
    path = write_coco_like(tmp / "coco", n_images=2, size_range=((60, 80), (60, 80)))
    data = json.loads(path.read_text())
    data["images"].append({"id": 99, "file_name": "empty.jpg", "height": 50, "width": 50})
    path.write_text(json.dumps(data))
    results = []
    for ann in data["annotations"]:
        rle = dict(ann["segmentation"])
        results.append(
            {"image_id": ann["image_id"], "category_id": ann["category_id"], "segmentation": rle, "score": 0.5}
        )
    box = np.zeros((50, 50), np.uint8, order="F")
    box[5:20, 5:20] = 1
    rle = mask_utils.encode(box)
    results.append({"image_id": 99, "category_id": 1, "score": 0.9,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        evaluation = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iouType="segm")
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    got = mask_ap(path, results)["mask_AP50"]
    assert abs(got - evaluation.stats[1]) <= 1e-12 and got < 1, (got, evaluation.stats[1])


def fb_iou_with_no_foreground_is_nan() -> None:
    """All-empty masks: HSNet's FB-IoU is 0 / 0, not (0 + 1) / 2."""
    metric = OneShotIoU(num_classes=2)
    metric.update(np.zeros((4, 4), bool), np.zeros((4, 4), bool), 0)
    assert math.isnan(float(metric.compute()["FB-IoU"]))


def miou_counts_a_class_without_episode_as_zero() -> None:
    """HSNet averages over all the fold's classes: one class with IoU 1 and one with no episode give 0.5."""
    metric = OneShotIoU(num_classes=4, class_ids=[1, 3])
    metric.update(np.eye(4, dtype=bool), np.eye(4, dtype=bool), 1)
    assert float(metric.compute()["mIoU"]) == 0.5


# fmt: off
CASES = [
    Case("exact-coco-ap-false-positive-without-ground-truth", "silent",
         call=ap_counts_false_positives_on_images_without_ground_truth, exit_code=0),
    Case("exact-oneshot-fb-iou-no-foreground", "silent", call=lambda tmp: fb_iou_with_no_foreground_is_nan(),
         exit_code=0),
    Case("exact-oneshot-miou-class-without-episode", "silent",
         call=lambda tmp: miou_counts_a_class_without_episode_as_zero(), exit_code=0),
]
# fmt: on

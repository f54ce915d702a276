"""metrics.coco.mask_ap against pycocotools' COCOeval run directly, on perturbed ground-truth masks."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.ndimage import binary_dilation, binary_erosion

from datamodules.synthetic.coco import write_coco_like
from metrics.coco import STAT_NAMES, mask_ap

NO_GT_IMAGES = (101, 102, 103)


@pytest.fixture(scope="module")
def annotations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic set (6 images, shapes of 3 categories) plus three images with no instance, and one crowd."""
    path = write_coco_like(tmp_path_factory.mktemp("coco"), n_images=6, size_range=((90, 140), (110, 180)))
    data = json.loads(path.read_text())
    data["images"] += [{"id": i, "file_name": f"{i}.jpg", "height": 100, "width": 120} for i in NO_GT_IMAGES]
    data["annotations"][2]["iscrowd"] = 1
    path.write_text(json.dumps(data))
    return path


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}


def perturbed_detections(path: Path, seed: int = 0) -> list[dict]:
    """Each ground-truth mask eroded, dilated, shifted or made noisy, some with wrong labels or dropped, tied scores,
    and false positives on images with and without ground truth."""
    rng = np.random.default_rng(seed)
    data = json.loads(path.read_text())
    sizes = {image["id"]: (image["height"], image["width"]) for image in data["images"]}
    detections = []
    for k, ann in enumerate(data["annotations"]):
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        kind = k % 6
        if kind == 0:
            mask = binary_erosion(mask, iterations=2)
        elif kind == 1:
            mask = binary_dilation(mask, iterations=3)
        elif kind == 2:
            mask = np.roll(mask, (3, -4), axis=(0, 1))
        elif kind == 3:
            mask = mask ^ (rng.random(mask.shape) < 0.08)
        elif kind == 4 and k % 12 == 4:
            continue  # dropped instance
        label = ann["category_id"] % 3 + 1 if k % 7 == 5 else ann["category_id"]  # some wrong labels
        score = 0.5 if k % 4 == 0 else float(rng.uniform(0.05, 0.95))  # ties at 0.5
        detections.append(
            {"image_id": ann["image_id"], "category_id": label, "segmentation": rle(mask), "score": score}
        )
    for image_id in [1, 3, *NO_GT_IMAGES]:  # false positives: blobs where there may or may not be an object
        h, w = sizes[image_id]
        mask = np.zeros((h, w), bool)
        y, x = int(rng.integers(0, h - 30)), int(rng.integers(0, w - 30))
        mask[y : y + int(rng.integers(5, 30)), x : x + int(rng.integers(5, 30))] = True
        score = float(rng.uniform(0.3, 0.99))
        detections.append({"image_id": image_id, "category_id": int(rng.integers(1, 4)), "segmentation": rle(mask), "score": score})  # fmt: skip
    return detections


def cocoeval_stats(path: Path, detections: list[dict]) -> np.ndarray:
    """COCOeval as its documentation runs it (default params: every image and category of the ground truth)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        evaluation = COCOeval(gt, gt.loadRes(copy.deepcopy(detections)), iouType="segm")
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    return evaluation.stats


def as_cocoeval(result: dict[str, float]) -> np.ndarray:
    return np.array([-1.0 if math.isnan(result[name]) else result[name] for name in STAT_NAMES])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_ap_is_cocoeval_on_perturbed_masks(annotations: Path, tmp_path: Path, seed: int) -> None:
    detections = perturbed_detections(annotations, seed)
    expected = cocoeval_stats(annotations, detections)
    assert 0.1 < expected[0] < 0.9 and 0.1 < expected[1] < 0.95  # far from 0 and 1: the numbers say something
    np.testing.assert_allclose(as_cocoeval(mask_ap(annotations, detections)), expected, rtol=0, atol=1e-12)
    results_file = tmp_path / "segm.json"
    results_file.write_text(json.dumps(detections))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotations))
    np.testing.assert_allclose(as_cocoeval(mask_ap(coco, results_file)), expected, rtol=0, atol=1e-12)


def test_false_positives_on_images_without_ground_truth_count(annotations: Path) -> None:
    detections = perturbed_detections(annotations)
    on_annotated = [d for d in detections if d["image_id"] not in NO_GT_IMAGES]
    assert mask_ap(annotations, detections)["mask_AP50"] < mask_ap(annotations, on_annotated)["mask_AP50"]


def test_inputs_are_not_modified(annotations: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotations))
    dataset, detections = copy.deepcopy(coco.dataset), perturbed_detections(annotations)
    kept = copy.deepcopy(detections)
    mask_ap(coco, detections)
    assert coco.dataset == dataset and detections == kept


def test_no_detection_is_zero_where_there_is_ground_truth(annotations: Path) -> None:
    result = mask_ap(annotations, [])
    areas = [a["area"] for a in json.loads(annotations.read_text())["annotations"] if not a["iscrowd"]]
    ranges = {"s": (0, 32**2), "m": (32**2, 96**2), "l": (96**2, 1e10)}  # COCOeval's areaRng, ends included
    assert result["mask_AP"] == result["mask_AP50"] == result["mask_AR100"] == 0.0
    for size, (lo, hi) in ranges.items():
        present = any(lo <= area <= hi for area in areas)
        for name in (f"mask_AP{size}", f"mask_AR{size}"):
            assert (result[name] == 0.0) if present else math.isnan(result[name])


def test_undefined_stats_are_nan(tmp_path: Path, annotations: Path) -> None:
    data = json.loads(annotations.read_text())
    data["annotations"] = []
    path = tmp_path / "none.json"
    path.write_text(json.dumps(data))
    detections = [d for d in perturbed_detections(annotations) if d["image_id"] in NO_GT_IMAGES]
    assert all(math.isnan(value) for value in mask_ap(path, detections).values())


def test_results_on_unknown_images_are_a_value_error(annotations: Path) -> None:
    detection = perturbed_detections(annotations)[0] | {"image_id": 999}
    with pytest.raises(ValueError, match=r"image ids that are not in the annotations: \[999\]"):
        mask_ap(annotations, [detection])
    with pytest.raises(ValueError, match="each with a segmentation"):
        mask_ap(annotations, [{"image_id": 1, "bbox": [1, 2, 3, 4]}])

"""SAM box-to-mask evaluation: the COCO datamodule, detector boxes, bad input, metrics and train.py end to end."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import train
from datamodules.errors import DatasetError
from datamodules.sam.coco import CocoDataModule
from datamodules.synthetic.coco import write_coco_like
from metrics.coco import STAT_NAMES
from sam.evaluation import SamBoxEvaluation, mask_centres
from sam.model import build_sam
from tests.conftest import TINY_SAM
from tests.helpers import compose_train


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    path = write_coco_like(root, n_images=4, size_range=((60, 90), (80, 120)))
    data = json.loads(path.read_text())
    data["images"].append({"id": 99, "file_name": "empty.jpg", "height": 50, "width": 70})  # no instances
    path.write_text(json.dumps(data))
    Image.fromarray(np.full((50, 70, 3), 90, np.uint8)).save(root / "val2017" / "empty.jpg")
    return root


def datamodule(root: Path, **kwargs) -> CocoDataModule:
    dm = CocoDataModule(str(root), num_workers=0, **kwargs)
    dm.setup("test")
    return dm


class OraclePredictor:
    """Stands in for SamBoxPredictor and answers every prompt with the ground-truth instance it belongs to."""

    def __init__(self, dataset) -> None:
        self.gt = {dataset[i]["image"].tobytes(): dataset[i] for i in range(len(dataset))}

    def set_image(self, image: np.ndarray) -> None:
        self.item = self.gt[image.tobytes()]

    def predict(self, image, boxes):
        masks = self.item["gt_masks"][self.item["gt_iscrowd"] == 0]
        return masks, np.ones(len(masks), np.float32)

    def predict_points(self, image, points):
        masks = self.item["gt_masks"]
        hits = [masks[:, int(y), int(x)].argmax() for x, y in points]
        return masks[hits], np.ones(len(hits), np.float32)


def run_test(model: SamBoxEvaluation, dm: CocoDataModule) -> dict[str, float]:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    (metrics,) = trainer.test(model, datamodule=dm, verbose=False)
    return metrics


def test_synthetic_set_annotations_hold_the_drawn_masks(coco_root: Path) -> None:
    item = datamodule(coco_root).dataset[0]
    h, w = item["image"].shape[:2]
    assert item["gt_masks"].shape == (len(item["gt_labels"]), h, w) and len(item["gt_labels"]) >= 1
    assert item["gt_masks"].sum((1, 2)).tolist() == item["gt_areas"].tolist()
    assert not (item["gt_masks"].sum(0) > 1).any()  # visible parts do not overlap
    np.testing.assert_array_equal(item["prompt_boxes"], item["gt_boxes"])
    assert item["prompt_scores"] is None


def test_mask_centre_is_farthest_from_the_boundary() -> None:
    yy, xx = np.mgrid[:20, :30]
    disc = (xx - 17) ** 2 + (yy - 9) ** 2 <= 36
    touching_edge = np.zeros((20, 30), bool)
    touching_edge[:9, :9] = True  # the image edge counts as boundary: the centre is (4, 4), not (0, 0)
    assert mask_centres(np.stack([disc, touching_edge])).tolist() == [[17.0, 9.0], [4.0, 4.0]]


def test_perfect_masks_score_ap_one_and_match_pycocotools(coco_root: Path, tmp_path: Path) -> None:
    dm = datamodule(coco_root)
    model = SamBoxEvaluation(build_sam("vit_b", **TINY_SAM), results_file=str(tmp_path / "r.json"))
    model.predictor = OraclePredictor(dm.dataset)
    metrics = run_test(model, dm)
    assert metrics["test/mask_AP"] == pytest.approx(1.0) and metrics["test/mask_AP50"] == pytest.approx(1.0)
    assert metrics["test/box_mIoU"] == pytest.approx(1.0) and metrics["test/point_mIoU"] == pytest.approx(1.0)


def test_results_file_holds_every_box_and_overlays_are_drawn(coco_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    results = tmp_path / "segm.json"
    overlays = tmp_path / "overlays"
    model = SamBoxEvaluation(
        build_sam("vit_b", **TINY_SAM), results_file=str(results), overlays=2, overlay_dir=str(overlays)
    )
    dm = datamodule(coco_root)
    metrics = run_test(model, dm)
    entries = json.loads(results.read_text())
    n_boxes = sum(len(dm.dataset[i]["prompt_boxes"]) for i in range(len(dm.dataset)))
    assert len(entries) == n_boxes == metrics["test/boxes"]
    assert len(list(overlays.glob("*.png"))) == 2


class BoxFillPredictor:
    """Stands in for SamBoxPredictor and answers each box with the box filled: right for rectangles, partly right
    for ellipses and triangles, so that AP is far from 0 and 1."""

    def set_image(self, image: np.ndarray) -> None:
        self.shape = image.shape[:2]

    def predict(self, image, boxes):
        masks = np.zeros((len(boxes), *self.shape), bool)
        for mask, (x0, y0, x1, y1) in zip(masks, np.round(boxes).astype(int)):
            mask[y0:y1, x0:x1] = True
        return masks, np.ones(len(boxes), np.float32)


def test_results_file_evaluates_to_the_logged_ap(coco_root: Path, tmp_path: Path) -> None:
    """The logged AP is COCOeval's on the run's own results file over every image, false positives on the image
    without ground truth (id 99) and wrong labels included."""
    annotations = coco_root / "annotations" / "instances_val2017.json"
    rng = np.random.default_rng(0)
    detections = [
        {"image_id": ann["image_id"], "category_id": ann["category_id"] % 3 + 1 if k % 5 == 4 else ann["category_id"],
         "bbox": (np.array(ann["bbox"]) + rng.integers(-2, 3, 4)).clip(1).tolist(), "score": float(rng.random())}
        for k, ann in enumerate(json.loads(annotations.read_text())["annotations"])
    ] + [{"image_id": 99, "category_id": c, "bbox": [5, 5, 20, 20], "score": 0.95} for c in (1, 2)]  # fmt: skip
    (tmp_path / "dets.json").write_text(json.dumps(detections))
    results = tmp_path / "segm.json"
    model = SamBoxEvaluation(build_sam("vit_b", **TINY_SAM), results_file=str(results), point_prompts=False)
    model.predictor = BoxFillPredictor()
    metrics = run_test(model, datamodule(coco_root, detections=str(tmp_path / "dets.json")))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        evaluation = COCOeval(gt, gt.loadRes(str(results)), iouType="segm")  # default params: every image
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert {entry["image_id"] for entry in json.loads(results.read_text())} >= {99}
    assert 0.05 < evaluation.stats[0] < 0.95
    logged = [metrics[f"test/{name}"] for name in STAT_NAMES]
    np.testing.assert_allclose(np.nan_to_num(logged, nan=-1.0), evaluation.stats, rtol=0, atol=1e-12)


def write_detections(coco_root: Path, path: Path) -> list[dict]:
    """Boxes of image 1: two inside, one reaching outside, one outside altogether, one flat; one unknown image."""
    first = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())["images"][0]
    h, w = first["height"], first["width"]
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 15], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [10, 10, 30, 30], "score": 0.8},
        {"image_id": 1, "category_id": 3, "bbox": [w - 10, h - 10, 40, 40], "score": 0.7},
        {"image_id": 1, "category_id": 1, "bbox": [w + 5, 0, 10, 10], "score": 0.6},
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 12], "score": 0.5},
        {"image_id": 12345, "category_id": 1, "bbox": [5, 5, 10, 12], "score": 0.5},
    ]
    path.write_text(json.dumps(detections))
    return detections


def test_detector_boxes_bad_ones_are_counted_and_the_rest_answered(coco_root: Path, tmp_path: Path) -> None:
    dets = tmp_path / "dets.json"
    write_detections(coco_root, dets)
    with pytest.warns(UserWarning, match="1 of 6 detections .* image ids that are not in the annotations"):
        dm = datamodule(coco_root, detections=str(dets))
    model = SamBoxEvaluation(build_sam("vit_b", **TINY_SAM), results_file=str(tmp_path / "r.json"), point_prompts=False)
    with pytest.warns(UserWarning, match="2 reached outside .* 2 had zero width or height"):
        metrics = run_test(model, dm)
    assert (metrics["test/boxes"], metrics["test/boxes_clipped"], metrics["test/boxes_degenerate"]) == (5, 2, 2)
    entries = json.loads((tmp_path / "r.json").read_text())
    assert [(e["image_id"], e["category_id"], e["score"]) for e in entries] == [
        (1, 1, 0.9),
        (1, 2, 0.8),
        (1, 3, pytest.approx(0.7)),
    ]
    assert "test/box_mIoU" not in metrics


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"a": 1}', "must be a COCO results list"),
        ('[{"image_id": 1, "bbox": [1, 2, 3, 4]}]', "Detection #0"),
        ("[", "Cannot read"),
    ],
)
def test_bad_detections_file_is_one_clear_error(coco_root: Path, tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "d.json").write_text(content)
    with pytest.raises(DatasetError, match=message):
        datamodule(coco_root, detections=str(tmp_path / "d.json"))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"score": float("nan")}, "score = nan"),
        ({"score": "0.9"}, "score = 0.9"),
        ({"bbox": ["a", "b", "c", "d"]}, r"bbox = \['a', 'b', 'c', 'd'\]"),
        ({"bbox": [1, 2, float("inf"), 4]}, "bbox = .*inf"),
        ({"bbox": [1, 2, -3, 4]}, r"bbox = \[1, 2, -3, 4\]"),
        ({"bbox": [1, 2, 3]}, "bbox = "),
        ({"category_id": True}, "category_id = True"),
        ({"image_id": "1"}, "image_id = 1"),
    ],
)
def test_bad_detection_values_name_the_file_and_entry(coco_root: Path, tmp_path: Path, bad: dict, message: str) -> None:
    good = {"image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 15], "score": 0.9}
    (tmp_path / "d.json").write_text(json.dumps([good, good | bad]))  # json writes NaN for float("nan")
    with pytest.raises(DatasetError, match=rf"Detection #1 in .*d\.json has {message}"):
        datamodule(coco_root, detections=str(tmp_path / "d.json"))


def test_bad_annotation_box_names_the_annotation(coco_root: Path, tmp_path: Path) -> None:
    data = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    data["annotations"][1]["bbox"] = ["1", "2", "3", "4"]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    ann_id = data["annotations"][1]["id"]
    with pytest.raises(
        DatasetError, match=rf"Annotation #1 \(id {ann_id}\) in .*instances_val2017.json has bbox = \['1'"
    ):
        datamodule(tmp_path)


def test_missing_annotations_name_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="instances_val2017.json not found.*data.generate=true"):
        datamodule(tmp_path)


def test_train_py_sam_quickstart_end_to_end(tmp_path: Path) -> None:
    cfg = compose_train(
        ["experiment=sam_quickstart", f"data.root={tmp_path / 'coco'}", "data.generate_n=3", "head.overlays=1",
         *(f"sam.{key}={value}" for key, value in TINY_SAM.items())],
        tmp_path,
    )  # fmt: skip
    assert cfg.train is False and "backbone" not in cfg.head
    metrics = train.run(cfg)
    assert {"test/mask_AP", "test/mask_AP75", "test/mask_APs", "test/point_mIoU", "test/boxes"} <= set(metrics)
    run_dir = Path(cfg.paths.output_dir)
    assert len(json.loads((run_dir / "segm_results.json").read_text())) == metrics["test/boxes"]
    record = json.loads((run_dir / "metrics.json").read_text())  # an undefined COCOeval stat (-1) is null
    assert all((record[f"test/{name}"] is None) == math.isnan(metrics[f"test/{name}"]) for name in STAT_NAMES)
    assert len(list((run_dir / "overlays").glob("*.png"))) == 1

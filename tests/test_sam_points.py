"""SAM's interactive point evaluation: click centres, the next-click rule, NoC / mIoU@k, the decoder loop's mask
feedback, the RITM readers and train.py end to end.

Longer than 300 lines: the click rules' hand-made cases, the decoder loop and three readers, one short test each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image

import train
from datamodules.errors import DatasetError
from datamodules.sam.interactive import InteractiveDataModule
from sam.clicks import NOC_MAX_CLICKS, Click, clicks_to_reach, first_click, mask_iou, miou_at, next_click
from sam.interactive import InteractiveSegmenter, SamPointsEvaluation
from sam.model import build_sam
from tests.conftest import TINY_SAM
from tests.helpers import compose_train


def brute_force_centre(mask: np.ndarray) -> tuple[int, int]:
    """The definition, pixel by pixel: the mask pixel whose squared distance to the nearest background pixel (the
    one-pixel frame around the image counts as background) is largest, the first in row-major order on ties."""
    h, w = mask.shape
    background = [(y, x) for y in range(-1, h + 1) for x in range(-1, w + 1)
                  if not (0 <= y < h and 0 <= x < w) or not mask[y, x]]  # fmt: skip
    best, best_pixel = -1, None
    for y in range(h):
        for x in range(w):
            if mask[y, x]:
                nearest = min((y - by) ** 2 + (x - bx) ** 2 for by, bx in background)
                if nearest > best:  # strictly larger: the first pixel in row-major order keeps a tie
                    best, best_pixel = nearest, (x, y)
    return best_pixel


def disc(h: int, w: int, cy: int, cx: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def shapes() -> dict[str, np.ndarray]:
    l_shape = np.zeros((16, 14), bool)
    l_shape[2:14, 2:6] = True
    l_shape[10:14, 2:12] = True
    ring = disc(21, 21, 10, 10, 8) & ~disc(21, 21, 10, 10, 4)
    half = np.zeros((9, 12), bool)
    half[:, :5] = True  # touches the top, left and bottom borders
    return {
        "disc": disc(23, 27, 11, 13, 6),
        "l_shape": l_shape,
        "ring": ring,
        "touches_three_borders": half,
        "touches_every_border": np.ones((7, 10), bool),
        "one_pixel_image": np.ones((1, 1), bool),
    }


@pytest.mark.parametrize("name", list(shapes()))
def test_first_click_is_the_centre_the_definition_gives(name: str) -> None:
    mask = shapes()[name]
    x, y = brute_force_centre(mask)
    assert 0 <= x < mask.shape[1] and 0 <= y < mask.shape[0] and mask[y, x]  # a click is never outside the image
    assert first_click(mask) == Click(x, y, True)


def test_centre_of_known_shapes_by_hand() -> None:
    assert first_click(disc(23, 27, 11, 13, 6)) == Click(13, 11, True)
    assert first_click(np.ones((7, 7), bool)) == Click(3, 3, True)  # the padding makes the border a boundary
    # the middle row of a 7x11 rectangle is 4 pixels from the frame for x = 3..7: the first in row-major order wins
    assert first_click(np.ones((7, 11), bool)) == Click(3, 3, True)
    assert first_click(np.ones((1, 1), bool)) == Click(0, 0, True)
    assert first_click(np.zeros((5, 5), bool)) is None


def test_next_click_positive_in_the_largest_missed_region() -> None:
    gt = np.zeros((30, 30), bool)
    gt[2:28, 2:28] = True
    pred = gt.copy()
    pred[5:10, 5:10] = False  # missed 5x5, centre (7, 7)
    pred[20:23, 20:23] = False  # missed 3x3
    pred[0, 0:3] = True  # false 3 pixels
    assert next_click(pred, gt) == Click(7, 7, True)


def test_next_click_negative_in_the_largest_false_region() -> None:
    gt = np.zeros((30, 30), bool)
    gt[2:12, 2:12] = True
    pred = gt.copy()
    pred[18:25, 15:22] = True  # false 7x7, centre (18, 21)
    pred[3:5, 3:5] = False  # missed 2x2
    assert next_click(pred, gt) == Click(18, 21, False)


def test_next_click_goes_by_thickness_not_pixel_count() -> None:
    gt = np.zeros((20, 40), bool)
    gt[1, 2:32] = True  # a thin object of 30 pixels, all missed: distance 1
    pred = np.zeros_like(gt)
    pred[10:15, 10:15] = True  # a thick false region of 25 pixels: distance 3 at its centre
    assert next_click(pred, gt) == Click(*brute_force_centre(pred), False)


def test_next_click_never_clicks_a_pixel_twice() -> None:
    gt = np.zeros((12, 12), bool)
    gt[2:9, 2:9] = True  # missed 7x7: distance 4 at (5, 5) only, 3 around it
    pred = np.zeros_like(gt)
    first = next_click(pred, gt)
    assert first == Click(5, 5, True)
    second = next_click(pred, gt, clicked=[first])
    assert second.positive and (second.x, second.y) != (5, 5) and (second.x, second.y) == (4, 4)


def test_next_click_none_without_error_and_ignore_band_left_out() -> None:
    gt = np.zeros((12, 12), bool)
    gt[3:9, 3:9] = True
    assert next_click(gt, gt) is None
    ignore = np.zeros_like(gt)
    ignore[2:10, 2:10] = True
    ignore[4:8, 4:8] = False
    pred = np.zeros_like(gt)
    pred[4:8, 4:8] = True  # misses only the band
    assert next_click(pred, gt, ignore) is None
    assert mask_iou(pred, gt, ignore) == 1.0
    assert mask_iou(pred, gt) == pytest.approx(16 / 36)


def test_noc_and_miou_agree_with_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    ious = rng.uniform(0.5, 1.0, size=(7, 5))
    ious[0] = 0.99  # reached at the first click
    ious[1] = 0.1  # never reached: RITM's cap, 20, whatever the clicks made
    for threshold in (0.85, 0.9):
        expected = []
        for row in ious:
            hits = [k + 1 for k, value in enumerate(row) if value >= threshold]
            expected.append(hits[0] if hits else NOC_MAX_CLICKS)
        assert clicks_to_reach(ious, threshold).tolist() == expected
    assert miou_at(ious) == pytest.approx([sum(ious[:, k]) / len(ious) for k in range(ious.shape[1])])


@pytest.fixture(scope="module")
def tiny_sam() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam("vit_b", **TINY_SAM).eval()


def scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)
    masks = np.stack([disc(40, 52, 12, 14, 6), disc(40, 52, 26, 34, 9)])
    return image, masks


def test_loop_feeds_the_previous_logits_back(tiny_sam: torch.nn.Module) -> None:
    segmenter = InteractiveSegmenter(tiny_sam, clicks=4, noc_clicks=6)  # 6: clicks past N, fewer than 20 for time
    calls = []
    original = segmenter.predictor.predict_torch

    def spy(coords, labels, mask_input=None, multimask_output=True, **kwargs):
        out = original(coords, labels, mask_input=mask_input, multimask_output=multimask_output, **kwargs)
        calls.append({"mask_input": mask_input, "multimask": multimask_output, "labels": labels.clone(), "out": out})
        return out

    segmenter.predictor.predict_torch = spy
    image, masks = scene()
    tracks = segmenter.run(image, masks)
    first, *later = calls
    assert first["mask_input"] is None and first["multimask"]
    assert all(not call["multimask"] and call["mask_input"] is not None for call in later)
    # two runs (top, oracle): clicks 2..4 for every object, then up to 6 while its IoU is below 0.90
    rounds = {run: max(map(len, track.ious)) - 1 for run, track in tracks.items()}
    assert len(later) == rounds["top"] + rounds["oracle"]
    rows = torch.arange(len(masks))
    previous = {"top": first["out"][2][rows, first["out"][1].argmax(1)][:, None]}
    oracle_pick = [int(np.argmax([mask_iou(m, gt) for m in ms])) for ms, gt in zip(first["out"][0].numpy(), masks)]
    previous["oracle"] = first["out"][2][rows, oracle_pick][:, None]
    for run, run_calls in (("top", later[: rounds["top"]]), ("oracle", later[rounds["top"] :])):
        for k, call in enumerate(run_calls):
            assert torch.equal(call["mask_input"], previous[run])  # the mask input is the last call's logits
            previous[run] = call["out"][2]
            active = [clicks for clicks in tracks[run].clicks if len(clicks) >= k + 2]
            assert call["labels"].tolist() == [[int(c.positive) for c in clicks[: k + 2]] for clicks in active]
    for track in tracks.values():
        for clicks, ious, gt, mask in zip(track.clicks, track.ious, masks, track.masks):
            assert len(ious) == len(clicks) and (len(ious) == 6 or max(ious) >= 0.9)
            assert all(0 <= c.x < image.shape[1] and 0 <= c.y < image.shape[0] for c in clicks)
            assert ious[-1] == pytest.approx(mask_iou(mask, gt))


def test_one_pixel_image(tiny_sam: torch.nn.Module) -> None:
    tracks = InteractiveSegmenter(tiny_sam, clicks=2, noc_clicks=2).run(
        np.zeros((1, 1, 3), np.uint8), np.ones((1, 1, 1), bool)
    )
    for track in tracks.values():
        assert track.clicks[0][0] == Click(0, 0, True)
        assert all(0.0 <= iou <= 1.0 for iou in track.ious[0])


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_clicks_option(tiny_sam: torch.nn.Module, bad: object) -> None:
    with pytest.raises(ValueError, match=r"^clicks="):
        InteractiveSegmenter(tiny_sam, clicks=bad)
    with pytest.raises(ValueError, match=r"^noc_clicks="):
        InteractiveSegmenter(tiny_sam, noc_clicks=bad)


def test_empty_and_crowd_masks_are_skipped_and_counted(tiny_sam: torch.nn.Module, tmp_path: Path) -> None:
    image, masks = scene()
    gt = np.concatenate([masks, np.zeros((1, 40, 52), bool), masks[:1]])
    item = {"image": image, "path": "x/img.jpg", "image_id": 3, "gt_masks": gt, "gt_iscrowd": np.array([0, 0, 0, 1])}
    module = SamPointsEvaluation(tiny_sam, clicks=2, results_dir=str(tmp_path), noc_clicks=2)
    module.test_step(item, 0)
    counts = {name: float(count.compute()) for name, count in module.counts.items()}
    assert counts == {"objects": 2, "skipped_objects": 1}
    record = json.loads((tmp_path / "img.json").read_text())
    assert [o["object"] for o in record["objects"]] == [0, 1]
    first = record["objects"][0]["top"][0]
    assert first == {**first, "click": 1, "positive": True} and (first["x"], first["y"]) == first_click(masks[0])[:2]
    assert module.metrics["mIoU@1"].update_count == 1


def write_layout(root: Path, images: str, masks: str, mask_values: np.ndarray, names=("a", "b")) -> None:
    (root / images).mkdir(parents=True)
    (root / masks).mkdir(parents=True)
    for name in names:
        Image.fromarray(np.full((*mask_values.shape, 3), 120, np.uint8)).save(root / images / f"{name}.jpg")
        Image.fromarray(mask_values).save(root / masks / f"{name}.bmp")


def grabcut_mask() -> np.ndarray:
    values = np.zeros((20, 24), np.uint8)
    values[4:16, 5:19] = 128
    values[6:14, 7:17] = 255
    return values


def test_grabcut_layout_object_and_ignore_band(tmp_path: Path) -> None:
    write_layout(tmp_path, "data_GT", "boundary_GT", grabcut_mask())
    dm = InteractiveDataModule(str(tmp_path), "grabcut", num_workers=0)
    dm.setup("test")
    item = dm.dataset[0]
    assert len(dm.dataset) == 2 and item["gt_masks"].shape == (1, 20, 24)
    assert np.array_equal(item["gt_masks"][0], grabcut_mask() == 255)
    assert np.array_equal(item["gt_ignore"], grabcut_mask() == 128)


def test_davis_layout_any_nonzero_is_the_object(tmp_path: Path) -> None:
    values = np.zeros((10, 12), np.uint8)
    values[2:6, 3:9] = 1
    write_layout(tmp_path, "img", "gt", values)
    dm = InteractiveDataModule(str(tmp_path), "davis", num_workers=0)
    dm.setup("test")
    assert np.array_equal(dm.dataset[1]["gt_masks"][0], values > 0) and not dm.dataset[1]["gt_ignore"].any()


def test_missing_data_names_the_layout_and_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"images/ .*masks/.*ritm_interactive_segmentation"):
        InteractiveDataModule(str(tmp_path), "berkeley", num_workers=0).setup("test")
    with pytest.raises(DatasetError, match="data.layout='sbd'"):
        InteractiveDataModule(str(tmp_path), "sbd", num_workers=0)


def test_mask_naming_a_missing_image(tmp_path: Path) -> None:
    write_layout(tmp_path, "images", "masks", grabcut_mask())
    (tmp_path / "images" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=r"Mask .*b\.bmp names the image .*images/b\.\*, which is missing"):
        InteractiveDataModule(str(tmp_path), "berkeley", num_workers=0).setup("test")
    (tmp_path / "masks" / "a.bmp").unlink()
    (tmp_path / "masks" / "b.bmp").unlink()
    with pytest.raises(DatasetError, match=r"Image .*a\.jpg has no mask"):
        InteractiveDataModule(str(tmp_path), "berkeley", num_workers=0).setup("test")


def check_run(cfg, clicks: int, noc_clicks: int) -> dict[str, float]:
    metrics = train.run(cfg)
    names = [f"mIoU@{k}" for k in range(1, clicks + 1)] + ["NoC@85", "NoC@90"]
    assert {f"test/{p}{n}" for p in ("", "oracle_") for n in names} | {"test/skipped_objects"} <= set(metrics)
    assert f"test/mIoU@{clicks + 1}" not in metrics
    run_dir = Path(cfg.paths.output_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["test/NoC@90"] == metrics["test/NoC@90"]
    records = [json.loads(p.read_text()) for p in sorted((run_dir / "clicks").glob("*.json"))]
    for run, prefix in (("top", ""), ("oracle", "oracle_")):  # the JSON's first-click IoUs make mIoU@1
        first = [o[run][0]["iou"] for r in records for o in r["objects"]]
        assert len(first) == metrics["test/objects"]
        assert np.mean(first) == pytest.approx(metrics[f"test/{prefix}mIoU@1"], abs=1e-5)
    assert 1 <= metrics["test/NoC@85"] <= noc_clicks
    return metrics


def test_train_py_sam_points_quickstart(tmp_path: Path) -> None:
    cfg = compose_train(
        ["experiment=sam_points_quickstart", f"data.root={tmp_path / 'coco'}", "data.generate_n=2", "head.clicks=3",
         "head.noc_clicks=4",
         *(f"sam.{key}={value}" for key, value in TINY_SAM.items())],
        tmp_path,
    )  # fmt: skip
    assert cfg.train is False and cfg.head.clicks == 3
    single = check_run(cfg, 3, 4)
    with open_dict(cfg):
        cfg.data.batch_size = 2  # a list of images per batch: one SAM encoder call for both
        cfg.paths.output_dir = str(tmp_path / "batched")
    batched = train.run(cfg)
    assert batched.keys() == single.keys()
    assert all(batched[k] == pytest.approx(single[k], abs=1e-4) for k in single), (batched, single)


def test_train_py_sam_points_on_grabcut(tmp_path: Path) -> None:
    write_layout(tmp_path / "GrabCut", "data_GT", "boundary_GT", grabcut_mask())
    cfg = compose_train(
        ["head=sam_points", "data=grabcut", "trainer=cpu", f"data.root={tmp_path / 'GrabCut'}", "data.num_workers=0",
         "head.clicks=2", "head.noc_clicks=2", "sam.random_weights=true", "sam.model_type=vit_b",
         *(f"sam.{key}={value}" for key, value in TINY_SAM.items())],
        tmp_path,
    )  # fmt: skip
    assert cfg.data.layout == "grabcut"
    assert check_run(cfg, 2, 2)["test/objects"] == 2

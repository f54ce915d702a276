"""sam.model: batched box prompts match SamPredictor box by box; loading and checking SAM checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from backbones.weights import CheckpointError, WeightsNotFoundError
from sam import SamBoxPredictor, build_sam, clip_boxes, load_sam
from sam.model import CHECKPOINTS, _size_hint
from tests.conftest import TINY_SAM


@pytest.fixture(scope="module")
def tiny_sam() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam("vit_b", **TINY_SAM)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


@pytest.mark.parametrize("hw", [(90, 150), (170, 64)])
def test_batched_boxes_match_sam_predictor_box_by_box(tiny_sam: torch.nn.Module, hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(hw[0])
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    h, w = hw
    x0, y0 = rng.uniform(0, w * 0.7, 7), rng.uniform(0, h * 0.7, 7)
    boxes = np.stack([x0, y0, x0 + rng.uniform(3, w * 0.3, 7), y0 + rng.uniform(3, h * 0.3, 7)], 1)
    masks, scores = SamBoxPredictor(tiny_sam, chunk_size=3).predict(image, boxes)
    assert masks.shape == (7, h, w) and masks.dtype == bool and scores.shape == (7,)
    reference = SamPredictor(tiny_sam)
    reference.set_image(image)
    for box, mask, score in zip(boxes, masks, scores):
        ref_masks, ref_scores, _ = reference.predict(box=box, multimask_output=False)
        assert iou(ref_masks[0], mask) >= 0.999
        assert abs(ref_scores[0] - score) <= 1e-4
    assert 0 < masks.mean() < 1


def test_point_prompts_keep_sam_predictors_most_confident_mask(tiny_sam: torch.nn.Module) -> None:
    image = np.random.default_rng(1).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    points = np.array([[10.0, 20.0], [60.0, 40.0], [119.0, 79.0]])
    masks, scores = SamBoxPredictor(tiny_sam).predict_points(image, points)
    reference = SamPredictor(tiny_sam)
    reference.set_image(image)
    for point, mask, score in zip(points, masks, scores):
        ref_masks, ref_scores, _ = reference.predict(
            point_coords=point[None], point_labels=np.ones(1), multimask_output=True
        )
        best = ref_scores.argmax()
        assert iou(ref_masks[best], mask) >= 0.999 and abs(ref_scores[best] - score) <= 1e-4


def test_no_boxes_gives_no_masks(tiny_sam: torch.nn.Module) -> None:
    masks, scores = SamBoxPredictor(tiny_sam).predict(np.zeros((30, 40, 3), np.uint8), np.zeros((0, 4)))
    assert masks.shape == (0, 30, 40) and scores.shape == (0,)


def test_image_must_be_uint8_rgb(tiny_sam: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        SamBoxPredictor(tiny_sam).predict(np.zeros((30, 40), np.float32), np.zeros((1, 4)))


def test_clip_boxes_counts_clipped_and_degenerate() -> None:
    boxes = np.array([[5, 5, 20, 20], [-10, 5, 20, 50], [65, 10, 80, 20], [8, 8, 8, 30], [10, 10, 12, 11]])
    inside, clipped, valid = clip_boxes(boxes, height=40, width=60)
    assert clipped.tolist() == [False, True, True, False, False]
    assert valid.tolist() == [True, True, False, False, True]  # the 3rd lies right of the image
    assert inside[1].tolist() == [0, 5, 20, 40]


def test_checkpoint_round_trip(tiny_sam: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "tiny_sam.pth"
    torch.save(tiny_sam.state_dict(), path)
    loaded = load_sam("vit_b", checkpoint=str(path), **TINY_SAM)
    for key, value in tiny_sam.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_checkpoint_of_another_architecture_lists_the_mismatches(tiny_sam: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "tiny_sam.pth"
    torch.save(tiny_sam.state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"image_encoder\.blocks\.2.*missing keys|missing keys.*image_encoder\.blocks\.2"
    ):
        load_sam("vit_b", checkpoint=str(path), **(TINY_SAM | {"encoder_depth": 3}))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_sam("vit_b", checkpoint=str(path), **(TINY_SAM | {"encoder_embed_dim": 48}))


def test_size_hint_names_the_size_the_file_was_made_for() -> None:
    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 1, 1)}
    state |= {f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(24)}
    assert "sam.model_type=vit_l" in _size_hint(state, "vit_h")


def test_official_file_name_with_wrong_content_is_refused(tiny_sam: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINTS["vit_b"][0]
    torch.save(tiny_sam.state_dict(), path)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_sam("vit_b", checkpoint=str(path), **TINY_SAM)


def test_missing_weights_say_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="sam_vit_b_01ec64.pth"):
        load_sam("vit_b", **TINY_SAM)
    with pytest.raises(CheckpointError, match="vit_q"):
        load_sam("vit_q")


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ([np.nan, 0, 10, 10], r"Box 0 = \[nan, .*not finite"),
        ([0, 0, np.inf, 10], r"Box 0 = .*inf.*not finite"),
        ([30, 0, 10, 10], r"Box 0 .*x2 <= x1 .*XYXY"),
        ([5, 5, 20, 5], r"Box 0 .*no area"),
        ([100, 100, 200, 200], r"Box 0 .*entirely outside the 60x40 \(WxH\) image"),
        ([-30, 0, -5, 10], r"Box 0 .*entirely outside"),
    ],
)
def test_bad_boxes_are_refused_by_index(tiny_sam: torch.nn.Module, box: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamBoxPredictor(tiny_sam).predict(np.zeros((40, 60, 3), np.uint8), np.array([box]))


def test_bad_box_is_named_among_good_ones(tiny_sam: torch.nn.Module) -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [8, 8, 3, 30]])
    with pytest.raises(ValueError, match=r"Box 2 = \[8.0, 8.0, 3.0, 30.0\]"):
        SamBoxPredictor(tiny_sam).predict(np.zeros((40, 60, 3), np.uint8), boxes)


@pytest.mark.parametrize("boxes", [[[0, 0, 10]], [["a", "b", "c", "d"]], np.zeros((2, 2, 4))])
def test_boxes_of_the_wrong_shape_or_type_are_refused(tiny_sam: torch.nn.Module, boxes: object) -> None:
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        SamBoxPredictor(tiny_sam).predict(np.zeros((40, 60, 3), np.uint8), boxes)


def test_box_partly_outside_gets_the_mask_of_its_part_inside(tiny_sam: torch.nn.Module) -> None:
    image = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    predictor = SamBoxPredictor(tiny_sam)
    masks, scores = predictor.predict(image, np.array([[50, -5, 80, 60], [-3, 10, 20, 20]]))
    expected, expected_scores = predictor.predict(image, np.array([[50, 0, 60, 40], [0, 10, 20, 20]]))
    np.testing.assert_array_equal(masks, expected)
    np.testing.assert_allclose(scores, expected_scores)
    assert np.isfinite(scores).all()


def test_empty_image_and_no_image_are_refused(tiny_sam: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="empty 0x0"):
        SamBoxPredictor(tiny_sam).predict(np.zeros((0, 0, 3), np.uint8), np.array([[0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="No image is set"):
        SamBoxPredictor(tiny_sam).predict(None, np.array([[0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="chunk_size=0"):
        SamBoxPredictor(tiny_sam, chunk_size=0)


@pytest.mark.parametrize(("point", "message"), [([np.nan, 3], "Point 0"), ([61, 3], "60x40"), ([5, -1], "Point 0")])
def test_bad_points_are_refused(tiny_sam: torch.nn.Module, point: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamBoxPredictor(tiny_sam).predict_points(np.zeros((40, 60, 3), np.uint8), np.array([point]))

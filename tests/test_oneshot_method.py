"""oneshot: the training-free one-shot segmenter (DINOv2 matches -> SAM prompts) and SAM's batched prompt sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor

from backbones import load_backbone
from backbones.dinov2 import build_dinov2
from oneshot import OneShotInputError, OneShotSegmenter, Reference
from oneshot.matching import PatchGrid, forward_reverse_match, prompt_sets
from sam import build_sam
from sam.predictor import SamBoxPredictor
from tests.conftest import TINY, TINY_SAM


@pytest.fixture(scope="module")
def tiny_sam() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam("vit_b", **TINY_SAM)


@pytest.fixture(scope="module")
def fixture_backbone(tiny_checkpoint: Path) -> torch.nn.Module:
    return load_backbone("dinov2_vits14", tiny_checkpoint, **TINY)


@pytest.fixture(scope="module")
def random_backbone() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_dinov2("dinov2_vits14", **TINY)


def noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def patch_mask(grid: PatchGrid, patches: list[int]) -> np.ndarray:
    """The pixels of some patches of ``grid`` (their boxes rasterised): a mask aligned to the resized patch grid."""
    mask = np.zeros(grid.size, dtype=bool)
    for x0, y0, x1, y1 in grid.boxes(torch.tensor(patches)).round().long().tolist():
        mask[y0:y1, x0:x1] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


# (H, W, image_size, patches in the mask): an L-shape at scale 1 on an 8x8 grid; two blobs on a resized, padded grid
CASES = [(112, 112, 112, [10, 11, 18, 19, 26, 27, 28, 29, 30, 34, 35, 36, 37, 38]), (130, 100, 70, [0, 1, 4, 14, 18])]


@pytest.mark.parametrize("method", ["matcher", "persam"])
@pytest.mark.parametrize("weights", ["fixture", "random"])
@pytest.mark.parametrize("case", CASES)
def test_an_image_against_itself_prompts_inside_its_mask(
    method: str, weights: str, case: tuple, tiny_sam: torch.nn.Module, request: pytest.FixtureRequest
) -> None:
    height, width, image_size, patches = case
    backbone = request.getfixturevalue(f"{weights}_backbone")
    segmenter = OneShotSegmenter(backbone, SamBoxPredictor(tiny_sam), method, image_size=image_size)
    grid = PatchGrid.plan(height, width, image_size, 14)
    image, mask = noise(height, width, 3), patch_mask(grid, patches)
    for images, masks in (([image], [mask]), ([image, noise(height, width, 4)], [mask, np.flipud(mask)])):
        reference = segmenter.reference(images, masks)
        assert torch.nonzero(reference.patch_masks[0]).flatten().tolist() == patches
        result = segmenter.segment(reference, image)
        positive = result.points[result.point_labels == 1]
        assert result.note is None and len(positive) >= 1
        assert mask[positive[:, 1].astype(int), positive[:, 0].astype(int)].all()
        assert result.mask.shape == (height, width) and result.mask.dtype == bool
        assert result.scores.dtype == np.float32 and len(result.scores) >= 1
        assert result.boxes.shape[1] == 4 and result.point_labels.dtype == np.int64


def test_forward_reverse_check_on_hand_made_features() -> None:
    e = torch.eye(4)
    # reference image: patch 0 (e0) and patch 1 (e1) inside the mask, patch 2 (e2) outside
    all_reference, inside = e[:3], torch.tensor([True, True, False])
    # target patches: t0 ~ e0 (kept), t1 ~ e2 but nearer e1 than t3 is (picked by e1, reverse lands on e2: dropped),
    # t2 = e3 (never picked), t3 ~ e1 but less than t1 is (not picked)
    target = F.normalize(torch.tensor([[1.0, 0, 0, 0.1], [0, 0.7, 1, 0], [0, 0, 0, 1], [0, 0.5, 0, 1]]), dim=1)
    kept, similarity = forward_reverse_match(e[:2], target, all_reference, inside)
    assert kept.tolist() == [True, False, False, False]
    assert torch.allclose(similarity, (target @ e[:2].T).max(1).values)


def test_forward_reverse_check_agrees_with_a_loop() -> None:
    rng = np.random.default_rng(0)
    all_reference = rng.normal(size=(40, 8))
    all_reference /= np.linalg.norm(all_reference, axis=1, keepdims=True)
    target = rng.normal(size=(30, 8))
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    inside = rng.random(40) < 0.4
    expected = np.zeros(30, dtype=bool)
    for r in np.flatnonzero(inside):
        t = int(np.argmax(target @ all_reference[r]))
        expected[t] |= bool(inside[np.argmax(all_reference @ target[t])])
    as_tensor = (torch.from_numpy(a).float() for a in (all_reference[inside], target, all_reference))
    kept, _ = forward_reverse_match(*as_tensor, torch.from_numpy(inside))
    assert kept.numpy().tolist() == expected.tolist() and expected.any() and not expected.all()


def test_no_match_gives_an_empty_mask_and_a_note(fixture_backbone: torch.nn.Module, tiny_sam) -> None:
    segmenter = OneShotSegmenter(fixture_backbone, SamBoxPredictor(tiny_sam), image_size=56)
    image = noise(56, 56, 5)
    target = segmenter._features(image, segmenter._grid(image, "target"))
    inside = F.normalize(torch.ones(1, target.shape[1]), dim=1)
    # every target patch also lies, exactly, outside the reference mask: its reverse match lands there
    reference = Reference(inside, inside[0], [torch.cat([inside, target])], [torch.arange(len(target) + 1) == 0])
    result = segmenter.segment(reference, image)
    assert not result.mask.any() and result.mask.shape == (56, 56)
    assert "no target patch matched" in result.note
    assert result.points.shape == (0, 2) and result.boxes.shape == (0, 4) and result.scores.shape == (0,)


@pytest.mark.parametrize("with_boxes", [True, False])
@pytest.mark.parametrize("multimask", [True, False])
def test_prompt_sets_match_sam_predictor_set_by_set(
    tiny_sam: torch.nn.Module, with_boxes: bool, multimask: bool
) -> None:
    rng = np.random.default_rng(7)
    image = noise(90, 120, 6)
    points = rng.uniform(0, [120, 90], (5, 3, 2)).astype(np.float32)
    labels = rng.integers(-1, 2, (5, 3))
    labels[:, 0] = 1
    xy = rng.uniform(0, [80, 60], (5, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 30, (5, 2))], 1) if with_boxes else None
    masks, scores = SamBoxPredictor(tiny_sam, chunk_size=2).predict_prompts(image, points, labels, boxes, multimask)
    assert masks.shape == (5, 90, 120) and masks.dtype == bool and scores.shape == (5,)
    reference = SamPredictor(tiny_sam)
    reference.set_image(image)
    for i in range(5):
        box = None if boxes is None else boxes[i]
        ref_masks, ref_scores, _ = reference.predict(points[i], labels[i], box, multimask_output=multimask)
        best = ref_scores.argmax()
        assert iou(ref_masks[best], masks[i]) >= 0.999 and abs(ref_scores[best] - scores[i]) <= 1e-4


def test_prompt_sets_on_a_large_image_go_fewer_at_once(
    tiny_sam: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sam.batched.UPSAMPLE_ELEMENTS` bounds the masks upsampled to the image at once: here 2 sets of 3 candidates."""
    import sam.batched

    rng = np.random.default_rng(3)
    image = noise(90, 120, 2)
    points = rng.uniform(0, [120, 90], (5, 2, 2)).astype(np.float32)
    labels = np.ones((5, 2), dtype=int)
    predictor = SamBoxPredictor(tiny_sam)
    whole = predictor.predict_prompts(image, points, labels)
    calls = []
    decode = predictor._decode
    monkeypatch.setattr(predictor, "_decode", lambda **kw: calls.append(len(kw["points"][0])) or decode(**kw))
    monkeypatch.setattr(sam.batched, "UPSAMPLE_ELEMENTS", 2 * 3 * 90 * 120 + 1)
    chunked = predictor.predict_prompts(None, points, labels)
    assert calls == [2, 2, 1]
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_allclose(chunked[1], whole[1], atol=1e-6)


def test_prompt_sets_pad_to_one_length() -> None:
    positive, negative = torch.tensor([[1.0, 2], [3, 4]]), torch.tensor([[5.0, 6]])
    sets = prompt_sets(positive, negative, torch.zeros(2, 4), torch.ones(4))
    assert sets["labels"].tolist() == [[1, 0, -1], [1, 0, -1], [1, 1, 0]]
    assert sets["points"][2].tolist() == [[1, 2], [3, 4], [5, 6]] and sets["points"][1, 0].tolist() == [3, 4]
    assert sets["boxes"].tolist() == [[0] * 4, [0] * 4, [1] * 4]


@pytest.mark.parametrize("size", [(130, 100, 70), (61, 200, 98), (112, 112, 112)])
def test_patch_grid_rule_agrees_with_its_boxes(size: tuple[int, int, int]) -> None:
    height, width, image_size = size
    grid = PatchGrid.plan(height, width, image_size, 14)
    h, w = grid.grid
    assert max(grid.input_size) == image_size and h * 14 >= grid.input_size[0] and w * 14 >= grid.input_size[1]
    centres = grid.centres(torch.arange(h * w))
    assert (centres >= 0).all() and (centres[:, 0] <= width).all() and (centres[:, 1] <= height).all()
    for i in range(0, h * w, 3):
        coverage = grid.coverage(torch.from_numpy(patch_mask(grid, [i])))
        assert int(coverage.argmax()) == i and coverage[i] >= 0.5


def bad_inputs() -> list[tuple[str, object, object, object, str]]:
    """(name, reference image, reference mask, target, expected message) with a 56x56 target and image_size=56."""
    image, mask = noise(56, 56, 8), np.zeros((56, 56), dtype=bool)
    mask[10:30, 10:30] = True
    return [
        ("empty mask", image, np.zeros((56, 56), bool), image, "empty"),
        ("all-foreground mask", image, np.ones((56, 56), bool), image, "all foreground"),
        ("mask size", image, mask[:50], image, r"shape \(50, 56\) but its image is 56x56"),
        ("mask values", image, mask * np.uint8(2), image, r"values \[0, 2\]"),
        (
            "thin reference",
            noise(56, 3, 8),
            np.eye(56, 3, dtype=bool),
            image,
            "Reference image 0 is 3x56.*under one 14-pixel patch",
        ),
        ("thin target", image, mask, noise(2, 56, 8), "target image is 56x2.*under one 14-pixel patch"),
        ("float image", image / 255.0, mask, image, "Reference image 0 is a float64.*uint8 RGB"),
        ("grey target", image, mask, image[..., 0], "target image is a uint8 array of shape \\(56, 56\\)"),
        ("RGBA reference", np.dstack([image, image[..., :1]]), mask, image, r"shape \(56, 56, 4\)"),
    ]


@pytest.mark.parametrize("case", bad_inputs(), ids=lambda case: case[0])
def test_bad_input_is_one_clear_error(fixture_backbone: torch.nn.Module, tiny_sam, case: tuple) -> None:
    _, ref_image, ref_mask, target, message = case
    segmenter = OneShotSegmenter(fixture_backbone, SamBoxPredictor(tiny_sam), image_size=56)
    with pytest.raises(OneShotInputError, match=message):
        segmenter.segment(segmenter.reference([ref_image], [ref_mask]), target)


def test_bad_arguments_say_what_to_give(fixture_backbone: torch.nn.Module, tiny_sam) -> None:
    sam = SamBoxPredictor(tiny_sam)
    with pytest.raises(ValueError, match="method='hsnet': choose one of matcher, persam"):
        OneShotSegmenter(fixture_backbone, sam, "hsnet")
    with pytest.raises(ValueError, match="Unknown option n_cluster=3"):
        OneShotSegmenter(fixture_backbone, sam, n_cluster=3)
    with pytest.raises(ValueError, match="image_size=10 is under one 14-pixel patch"):
        OneShotSegmenter(fixture_backbone, sam, image_size=10)
    with pytest.raises(ValueError, match="block=4"):
        OneShotSegmenter(fixture_backbone, sam, block=4)
    with pytest.raises(OneShotInputError, match="2 reference image"):
        OneShotSegmenter(fixture_backbone, sam).reference([noise(20, 20, 0)] * 2, [np.eye(20, dtype=bool)])
    image = noise(30, 40, 0)
    with pytest.raises(ValueError, match="point_labels holds 2"):
        sam.predict_prompts(image, np.zeros((1, 1, 2)), np.full((1, 1), 2))
    with pytest.raises(ValueError, match=r"points\[None\]"):
        sam.predict_prompts(image, np.zeros((1, 2)), np.ones(1))
    with pytest.raises(ValueError, match="one box per set"):
        sam.predict_prompts(image, np.zeros((2, 1, 2)), np.ones((2, 1)), np.array([[0, 0, 5, 5]]))

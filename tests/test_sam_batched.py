"""Many images through SAM's encoder at once (sam.batched) equal one at a time; box refinement; data.batch_size."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from segment_anything import SamPredictor

import train
from datamodules.errors import DatasetError
from datamodules.sam.coco import CocoDataModule
from datamodules.synthetic.coco import write_coco_like
from sam.batched import ImageEmbedding, encode_images
from sam.evaluation import SamBoxEvaluation, mask_ious
from sam.model import build_sam
from sam.predictor import SamBoxPredictor
from tests.conftest import TINY_SAM
from tests.helpers import compose_train

# (H, W): landscape, portrait, square, one pixel, odd sizes, larger than the encoder's input (128)
SIZES = [(40, 90), (100, 30), (64, 64), (1, 1), (77, 51), (150, 200)]


@pytest.fixture(scope="module")
def sam() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam("vit_b", **TINY_SAM).eval()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def prompts(h: int, w: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Three boxes and three points inside an h x w image."""
    xy = rng.uniform(0, [w * 0.5, h * 0.5], (3, 2))
    boxes = np.concatenate([xy, xy + rng.uniform([w * 0.2, h * 0.2], [w * 0.5, h * 0.5], (3, 2))], 1)
    points = rng.uniform(0, [w, h], (3, 2)).astype(np.float32)
    return {"boxes": boxes.astype(np.float32), "points": points}


def all_outputs(predictor: SamBoxPredictor, p: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every predict* method on the image the predictor holds."""
    labels = np.array([[1, 0], [1, -1], [1, 1]])
    pairs = np.stack([p["points"], p["points"][::-1]], 1)
    (refined, first) = predictor.predict_refined(None, p["boxes"])
    return [
        predictor.predict(None, p["boxes"]),
        predictor.predict_points(None, p["points"]),
        predictor.predict_points(None, p["points"], multimask=False),
        predictor.predict_prompts(None, pairs, labels, boxes=p["boxes"]),
        refined,
        first,
    ]


@pytest.mark.parametrize("batch_size", [4])  # chunks of 4 and 2
def test_batched_encoding_equals_one_image_at_a_time(sam, images, batch_size: int) -> None:
    embeddings = encode_images(sam, images, batch_size=batch_size)
    one, many = SamBoxPredictor(sam, chunk_size=2), SamBoxPredictor(sam, chunk_size=2)
    reference = SamPredictor(sam)
    rng = np.random.default_rng(1)
    for image, embedding in zip(images, embeddings):
        reference.set_image(image)  # segment-anything's own preprocessing and encoder call
        assert embedding.original_size == reference.original_size and embedding.input_size == reference.input_size
        # per-image independent encoder: only the rounding of batched matrix products may differ
        torch.testing.assert_close(embedding.features, reference.features, rtol=1e-5, atol=1e-5)
        one.set_image(image)
        many.set_embedding(embedding)
        p = prompts(*image.shape[:2], rng)
        for (mask_a, score_a), (mask_b, score_b) in zip(all_outputs(one, p), all_outputs(many, p)):
            assert mask_a.shape == mask_b.shape == (len(mask_a), *image.shape[:2])
            assert (mask_ious(mask_a, mask_b) >= 0.999).all()
            np.testing.assert_allclose(score_a, score_b, atol=1e-5)


def test_refine_pass_is_samPredictor_with_the_first_logits_as_mask_input(sam, images) -> None:
    image = images[0]
    boxes = prompts(*image.shape[:2], np.random.default_rng(2))["boxes"]
    predictor, reference = SamBoxPredictor(sam, chunk_size=2), SamPredictor(sam)
    (masks, scores), (first_masks, first_scores) = predictor.predict_refined(image, boxes)
    reference.set_image(image)
    for i, box in enumerate(boxes):
        first, first_score, first_logits = reference.predict(box=box, multimask_output=False)
        second, second_score, _ = reference.predict(box=box, mask_input=first_logits, multimask_output=False)
        assert mask_ious(first_masks[i : i + 1], first)[0] >= 0.999
        assert mask_ious(masks[i : i + 1], second)[0] >= 0.999
        np.testing.assert_allclose([first_scores[i], scores[i]], [first_score[0], second_score[0]], atol=1e-5)


def test_refine_calls_the_decoder_twice_per_chunk(sam, images) -> None:
    calls = []
    hook = sam.mask_decoder.register_forward_hook(lambda module, args, out: calls.append(out[0].shape[0]))
    try:
        boxes = prompts(*images[0].shape[:2], np.random.default_rng(3))["boxes"]
        predictor = SamBoxPredictor(sam, chunk_size=2)
        predictor.set_image(images[0])
        predictor.predict(None, boxes)
        assert len(calls) == 2  # 3 boxes in chunks of 2
        calls.clear()
        predictor.predict_refined(None, boxes)
        assert len(calls) == 4
    finally:
        hook.remove()


def test_encoder_runs_once_per_batch(sam, images) -> None:
    calls = []
    hook = sam.image_encoder.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    try:
        encode_images(sam, images, batch_size=4)
    finally:
        hook.remove()
    assert calls == [4, 2]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([], "no images"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)], r"Image 1 is float32 \(8, 8, 3\)"),
        ([np.zeros((8, 8), np.uint8)], r"Image 0 is uint8 \(8, 8\)"),
        ([np.zeros((8, 8, 3), np.uint8)] * 2 + [np.zeros((1, 1000, 3), np.uint8)], r"Image 2 is 1000x1 \(WxH\)"),
        ([np.zeros((0, 5, 3), np.uint8)], r"Image 0 is 5x0 \(WxH\).*has no pixel"),
        ([[[1, 2, 3]]], "Image 0 is a list"),
        (np.zeros((8, 8, 3), np.uint8), r"for one image pass \[image\]"),
    ],
)
def test_bad_images_name_their_index(sam, bad, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_images(sam, bad)


def test_set_image_refuses_an_image_too_thin_to_resize(sam) -> None:
    with pytest.raises(ValueError, match=r"1000x1 \(WxH\)"):
        SamBoxPredictor(sam).set_image(np.zeros((1, 1000, 3), np.uint8))


def test_embedding_of_another_sam_is_refused(sam, images) -> None:
    other = build_sam("vit_b", **(TINY_SAM | {"prompt_embed_dim": 16}))
    (embedding,) = encode_images(other, images[:1])
    with pytest.raises(ValueError, match="same SAM model"):
        SamBoxPredictor(sam).set_embedding(embedding)
    with pytest.raises(ValueError, match="ImageEmbedding"):
        SamBoxPredictor(sam).set_embedding(embedding.features)
    assert isinstance(embedding, ImageEmbedding)


def test_batch_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="data.batch_size=0|batch_size=0"):
        CocoDataModule(str(tmp_path), batch_size=0)
    with pytest.raises(ValueError, match="refine"):
        SamBoxEvaluation(build_sam("vit_b", **TINY_SAM), refine="yes")


def quickstart(tmp_path: Path, *overrides: str) -> dict[str, float]:
    cfg = compose_train(
        ["experiment=sam_quickstart", f"data.root={tmp_path.parent / 'coco'}", "data.generate_n=5",
         *(f"sam.{key}={value}" for key, value in TINY_SAM.items()), *overrides],
        tmp_path,
    )  # fmt: skip
    return train.run(cfg)


def assert_same_masks(first: list[dict], second: list[dict]) -> None:
    """The same detections, mask for mask. A batch of 4 sums SAM's matrix products in another order than a batch of
    1, so a logit within float32 rounding of 0 may cross the threshold: at most 1 pixel in 1,000 may differ
    (measured on an AMD EPYC: 1 pixel of 43,460 in one mask; other CPUs give 0)."""
    assert [(r["image_id"], r["category_id"]) for r in first] == [(r["image_id"], r["category_id"]) for r in second]
    for a, b in zip(first, second):
        mask_a, mask_b = mask_utils.decode(a["segmentation"]), mask_utils.decode(b["segmentation"])
        assert mask_a.shape == mask_b.shape and (mask_a != mask_b).mean() <= 1e-3, a["image_id"]
        assert b["score"] == pytest.approx(a["score"], abs=1e-6)


def test_metrics_equal_for_batch_size_1_and_4_and_refine_reports_both(tmp_path: Path) -> None:
    one = quickstart(tmp_path / "one")
    four = quickstart(tmp_path / "four", "data.batch_size=4")  # 5 images: batches of 4 and 1
    assert set(one) == set(four) and "test/mask_AP_unrefined" not in one
    for key in one:
        assert float(four[key]) == pytest.approx(float(one[key]), abs=1e-6, nan_ok=True), key  # NaN: COCOeval's -1
    results = [json.loads((tmp_path / name / "run" / "segm_results.json").read_text()) for name in ("one", "four")]
    assert_same_masks(*results)
    refined = quickstart(tmp_path / "refined", "head.refine=true", "data.batch_size=4")
    assert set(refined) == set(one) | {"test/mask_AP_unrefined"}
    # the unrefined pass is the default run's boxes: its AP is the default run's
    assert float(refined["test/mask_AP_unrefined"]) == pytest.approx(float(one["test/mask_AP"]), abs=1e-6)
    assert float(refined["test/point_mIoU"]) == pytest.approx(float(one["test/point_mIoU"]), abs=1e-6)


def test_predict_loop_gives_the_same_results_in_batches(sam, tmp_path: Path) -> None:
    write_coco_like(tmp_path, n_images=3, size_range=((60, 90), (80, 120)))
    results = []
    for batch_size in (1, 2):  # batches of one item, then lists of 2 and 1
        dm = CocoDataModule(str(tmp_path), num_workers=0, batch_size=batch_size)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
        batches = trainer.predict(SamBoxEvaluation(sam), datamodule=dm)
        results.append([r for batch in batches for r in batch])
    assert_same_masks(*results)
    assert len(results[0]) > 3
    np.testing.assert_allclose([r["score"] for r in results[0]], [r["score"] for r in results[1]], atol=1e-5)

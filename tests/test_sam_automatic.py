"""sam.automatic: the same masks as segment_anything's SamAutomaticMaskGenerator (a one-to-one match), the mask
probabilities, bad options and images; `python -m visualize.sam_masks` on photographs."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator
from skimage import data

from sam import build_sam
from sam.automatic import SamMaskGenerator, generate_masks, mask_probabilities
from tests.conftest import TINY_SAM
from visualize.sam_masks import main

ROOT = Path(__file__).resolve().parents[1]
# a random SAM's predicted IoUs are about +-0.1 and its logits about +-0.1: thresholds that let masks through
LOW = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.2, "stability_score_offset": 0.02}


def tiny_sam(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_sam("vit_b", **TINY_SAM)


def localised_sam(seed: int) -> torch.nn.Module:
    """A random tiny SAM whose masks are discs of 3 radii around each point prompt (plus its own logits as noise), and
    whose predicted IoUs are its own plus 0.8: a random SAM's masks all span the image, so their boxes would never
    exercise NMS, the crop-edge filter or the small-region clean-up. Hooks on the model, so both generators see it."""
    sam = tiny_sam(seed)
    state = {}

    def remember(module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        state["coords"] = kwargs["points"][0][:, 0].float()  # (B, 2) xy in the model's input frame

    def discs(module: torch.nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple:
        logits, iou = output
        stride = sam.image_encoder.img_size / logits.shape[-1]
        centres = (torch.arange(logits.shape[-1], dtype=torch.float32) + 0.5) * stride
        x, y = state["coords"][:, 0, None, None], state["coords"][:, 1, None, None]
        dist = ((centres[None, None, :] - x) ** 2 + (centres[None, :, None] - y) ** 2).sqrt()
        radii = torch.tensor([9.0, 22.0, 40.0])[None, :, None, None]
        return logits * 20 + (radii - dist[:, None]) / 4, iou + 0.8

    sam.prompt_encoder.register_forward_hook(remember, with_kwargs=True)
    sam.mask_decoder.register_forward_hook(discs, with_kwargs=True)
    return sam


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def assert_same_masks(ours: list[dict], reference: list[dict]) -> None:
    """A one-to-one match: each reference mask has its own mask of ours with IoU >= 0.99 and scores within 1e-4."""
    assert len(ours) == len(reference)
    unmatched = list(range(len(ours)))
    for ref in reference:
        ious = [iou(ref["segmentation"], ours[j]["segmentation"]) for j in unmatched]
        j = unmatched.pop(int(np.argmax(ious)))
        assert max(ious) >= 0.99
        assert abs(ours[j]["predicted_iou"] - ref["predicted_iou"]) <= 1e-4
        assert abs(ours[j]["stability_score"] - ref["stability_score"]) <= 1e-4
        assert ours[j]["crop_box"] == ref["crop_box"]
        np.testing.assert_allclose(ours[j]["point_coords"], ref["point_coords"], atol=1e-6)


@pytest.mark.parametrize(
    ("points_per_side", "crop_n_layers", "seed", "extra"),
    [
        (16, 0, 0, {"box_nms_thresh": 1.0}),  # no NMS: every mask that passes the filters
        (32, 0, 1, {"stability_score_thresh": 0.4, "points_per_batch": 1024}),  # all points in one decoder call
        (16, 1, 2, {"stability_score_thresh": 0.5, "box_nms_thresh": 0.95, "crop_nms_thresh": 0.95}),
    ],
)
def test_same_masks_as_segment_anything_on_a_random_sam(
    points_per_side: int, crop_n_layers: int, seed: int, extra: dict
) -> None:
    image = np.asarray(Image.fromarray(data.chelsea()).resize((72, 48)))
    options = {**LOW, "points_per_side": points_per_side, "crop_n_layers": crop_n_layers, **extra}
    sam = tiny_sam(seed)
    ours = SamMaskGenerator(sam, **options).generate(image)
    reference_options = {k: v for k, v in options.items() if k != "points_per_batch"}
    reference = SamAutomaticMaskGenerator(sam, **reference_options).generate(image)
    assert len(reference) > 0
    assert_same_masks(ours, reference)


@pytest.mark.parametrize(
    ("points_per_side", "crop_n_layers", "extra"),
    [
        (16, 0, {"pred_iou_thresh": 0.85}),
        (32, 0, {"pred_iou_thresh": 0.86, "min_mask_region_area": 12}),
        (16, 1, {"pred_iou_thresh": 0.85, "points_per_batch": 7}),
        (32, 1, {"pred_iou_thresh": 0.86, "crop_n_points_downscale_factor": 2}),
    ],
)
def test_same_masks_as_segment_anything_through_nms_and_crops(
    points_per_side: int, crop_n_layers: int, extra: dict
) -> None:
    image = data.coffee()[::8, ::8].copy()  # 50 x 75
    options = {**LOW, "points_per_side": points_per_side, "crop_n_layers": crop_n_layers, **extra}
    sam = localised_sam(points_per_side + crop_n_layers)
    ours = SamMaskGenerator(sam, **options).generate(image)
    reference_options = {k: v for k, v in options.items() if k != "points_per_batch"}
    reference = SamAutomaticMaskGenerator(sam, **reference_options).generate(image)
    boxes = {tuple(r["bbox"]) for r in reference}
    assert len(boxes) > 5  # masks of many sizes and places
    if crop_n_layers:
        assert len({tuple(r["crop_box"]) for r in reference}) > 1  # masks from the crops survive
    assert_same_masks(ours, reference)
    assert [r["bbox"] for r in ours] == [r["bbox"] for r in reference]  # and in the same order
    assert [r["area"] for r in ours] == [int(r["segmentation"].sum()) for r in ours]


def test_output_modes_and_probabilities() -> None:
    image = data.coffee()[::8, ::8].copy()
    sam = localised_sam(0)
    options = {**LOW, "points_per_side": 8, "crop_n_layers": 1}
    records, probs = mask_probabilities(sam, image, **options)
    assert probs.shape == (len(records), *image.shape[:2]) and probs.dtype == np.float32
    assert 0 <= probs.min() and probs.max() <= 1
    for record, prob in zip(records, probs):
        x, y, w, h = record["crop_box"]
        np.testing.assert_array_equal(prob > 0.5, record["segmentation"])
        outside = np.ones(image.shape[:2], bool)
        outside[y : y + h, x : x + w] = False
        assert not prob[outside].any()  # 0 outside the mask's crop
    coco = generate_masks(sam, image, output_mode="coco_rle", **options)
    for record, rle in zip(records, coco):
        assert isinstance(rle["segmentation"]["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(rle["segmentation"]).astype(bool), record["segmentation"])
        assert rle["area"] == record["area"]


def test_a_large_image_upsamples_fewer_masks_at_once_with_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sam.batched.UPSAMPLE_ELEMENTS` bounds the logits upsampled at once; here to 5 masks of the image (not 192),
    more of a smaller crop."""
    import sam.batched

    image = data.coffee()[::8, ::8].copy()  # 50 x 75
    options = {**LOW, "points_per_side": 16, "crop_n_layers": 1, "pred_iou_thresh": 0.85}
    whole, whole_probs = mask_probabilities(localised_sam(3), image, **options)
    sizes = []
    upsample = SamMaskGenerator._upsample
    monkeypatch.setattr(
        SamMaskGenerator,
        "_upsample",
        lambda self, low, crop: sizes.append(len(low) * np.prod(crop["size"])) or upsample(self, low, crop),
    )
    monkeypatch.setattr(sam.batched, "UPSAMPLE_ELEMENTS", 5 * 50 * 75)
    chunked, chunked_probs = mask_probabilities(localised_sam(3), image, **options)
    assert len(whole) > 5 and max(sizes) == 5 * 50 * 75
    assert [r["bbox"] for r in chunked] == [r["bbox"] for r in whole]
    assert all(np.array_equal(a["segmentation"], b["segmentation"]) for a, b in zip(chunked, whole))
    np.testing.assert_allclose(chunked_probs, whole_probs, atol=1e-6)  # batched kernels round differently


def test_no_mask_at_all_is_an_empty_list_with_crops() -> None:
    """segment_anything fails here (its cross-crop NMS indexes an empty box tensor); an empty result is the answer."""
    image = data.coffee()[::8, ::8].copy()
    records, probs = mask_probabilities(tiny_sam(0), image, points_per_side=4, crop_n_layers=1)  # scores < 0.88
    assert records == [] and probs.shape == (0, *image.shape[:2])


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"points_per_side": 0}, "points_per_side=0"),
        ({"points_per_side": -4}, "points_per_side=-4"),
        ({"points_per_side": 2.5}, "points_per_side=2.5"),
        ({"points_per_batch": 0}, "points_per_batch=0"),
        ({"pred_iou_thresh": float("nan")}, "pred_iou_thresh=nan"),
        ({"box_nms_thresh": 1.5}, "box_nms_thresh=1.5"),
        ({"crop_n_layers": -1}, "crop_n_layers=-1"),
        ({"crop_overlap_ratio": -0.1}, "crop_overlap_ratio=-0.1"),
        ({"stability_score_offset": float("inf")}, "stability_score_offset=inf"),
        ({"min_mask_region_area": True}, "min_mask_region_area=True"),
        ({"points_per_side": 4, "crop_n_layers": 2, "crop_n_points_downscale_factor": 4}, "points_per_side=4"),
        ({"output_mode": "png"}, "output_mode=png"),
    ],
)
def test_bad_options_name_themselves(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        SamMaskGenerator(tiny_sam(0), **options)


@pytest.mark.parametrize(
    ("image", "named"),
    [
        (np.zeros((1, 1, 3), np.uint8), "1x1"),
        (np.zeros((1, 40, 3), np.uint8), "40x1"),
        (np.zeros((30, 40, 3), np.float32), "float32"),
        (np.zeros((30, 40), np.uint8), r"\(30, 40\)"),
        (np.zeros((3, 3, 3), np.uint8), "crop_n_layers=2"),
    ],
)
def test_bad_images_are_value_errors(image: np.ndarray, named: str) -> None:
    generator = SamMaskGenerator(tiny_sam(0), points_per_side=4, crop_n_layers=2 if image.shape[0] == 3 else 0)
    with pytest.raises(ValueError, match=named):
        generator.generate(image)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("chelsea", "coffee"):
        Image.fromarray(getattr(data, name)()).reduce(4).save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths


TINY_FLAGS = [f"--sam-{k.replace('_', '-')}={v}" for k, v in TINY_SAM.items()]


def test_cli_writes_an_overlay_and_coco_rle_per_photo(photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "masks"
    flags = ["--sam-model-type", "vit_b", "--random-weights", *TINY_FLAGS, "--device", "cpu", "--points-per-side", "8"]
    flags += ["--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--out", str(out)]
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM SAM"):
        assert main([*map(str, photos), *flags]) == 0
    for photo in photos:
        image = np.asarray(Image.open(photo))
        overlay = Image.open(out / f"{photo.stem}_masks.png")
        assert overlay.size == (image.shape[1], image.shape[0])
        record = json.loads((out / f"{photo.stem}_masks.json").read_text())
        assert record["image"] == str(photo) and record["random_weights"] is True
        assert record["height"] == image.shape[0] and record["width"] == image.shape[1]
        assert len(record["masks"]) > 0
        for mask in record["masks"]:
            decoded = mask_utils.decode({**mask["segmentation"], "counts": mask["segmentation"]["counts"].encode()})
            assert decoded.shape == image.shape[:2] and int(decoded.sum()) == mask["area"]
            x, y, w, h = mask["bbox"]
            rows, cols = np.nonzero(decoded)
            assert (x, y, w, h) == (cols.min(), rows.min(), cols.max() - cols.min(), rows.max() - rows.min())
            assert {"predicted_iou", "stability_score", "point_coords", "crop_box"} <= set(mask)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # no temporary files left


@pytest.mark.parametrize(
    ("size", "flags", "says"),
    [
        ((6, 5), ["--crop-n-layers", "3", "--random-weights"], "--crop-n-layers 3"),
        ((1, 1), ["--random-weights"], "1x1"),
        ((40, 30), ["--pred-iou-thresh", "1.5", "--random-weights"], "--pred-iou-thresh 1.5"),
        ((40, 30), ["--sam-checkpoint", "missing.pth"], "missing.pth"),
    ],
)
def test_cli_user_errors_exit_2_with_one_paragraph(
    tmp_path: Path, size: tuple[int, int], flags: list[str], says: str, capsys: pytest.CaptureFixture
) -> None:
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(tmp_path / "small.png")
    args = [str(tmp_path / "small.png"), "--sam-model-type", "vit_b", *TINY_FLAGS, "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning
        code = main([*args, "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_help_imports_no_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "visualize.sam_masks", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and "--points-per-side" in proc.stdout
    heavy = {"torch", "segment_anything", "matplotlib"}
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert not imported & heavy

"""SAM's automatic masks: a grid of point prompts over the image and its crops, masks filtered by SAM's predicted
IoU and stability score, duplicates removed by box NMS within and across crops.

`SamMaskGenerator` gives `segment_anything.SamAutomaticMaskGenerator`'s masks and records for the same settings, in
its order of operations and with its helpers (`utils.amg`), faster: `points_per_batch` prompts per decoder call (256,
there 64), the predicted-IoU filter before upsampling (only its survivors reach image size), no run-length encoding of
masks that NMS drops, bf16 autocast on CUDA (as `SamBoxPredictor`); also the kept masks' probabilities (edge maps).
On large images fewer masks are upsampled at once (`sam.batched.rows_per_call`).

Longer than 300 lines: one generator, as `SamAutomaticMaskGenerator` is one class, with its option and image checks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    MaskData,
    batch_iterator,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from torchvision.ops.boxes import batched_nms, box_area

from sam.batched import rows_per_call
from utils.errors import UserError, option

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
UPSAMPLE_CHUNK = 192  # masks upsampled at once: SamAutomaticMaskGenerator's 64 points x 3 (fewer on large images)


class SamMaskGenerator:
    """Masks of everything in an image from a `points_per_side` x `points_per_side` grid of point prompts.

    The options are `SamAutomaticMaskGenerator`'s, with the same meaning and defaults (those chosen for ViT-H), but
    `points_per_batch` (prompts per decoder call; 256 here). Every option is checked; a bad one raises a `UserError`
    (a ValueError) naming it.
    """

    def __init__(
        self,
        sam_model: Sam,
        points_per_side: int = 32,
        points_per_batch: int = 256,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
    ) -> None:
        if not isinstance(sam_model, Sam):
            raise UserError(f"sam_model must be a segment_anything Sam (sam.load_sam), got {type(sam_model).__name__}.")
        for name, value, least in (
            ("points_per_side", points_per_side, 1), ("points_per_batch", points_per_batch, 1),
            ("crop_n_layers", crop_n_layers, 0), ("min_mask_region_area", min_mask_region_area, 0),
            ("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1),
        ):  # fmt: skip
            _check(name, value, least, whole=True)
        for name, value, most in (
            ("pred_iou_thresh", pred_iou_thresh, 1), ("stability_score_thresh", stability_score_thresh, 1),
            ("box_nms_thresh", box_nms_thresh, 1), ("crop_nms_thresh", crop_nms_thresh, 1),
            ("crop_overlap_ratio", crop_overlap_ratio, 1), ("stability_score_offset", stability_score_offset, math.inf),
        ):  # fmt: skip
            _check(name, value, 0, most)
        if points_per_side // crop_n_points_downscale_factor**crop_n_layers < 1:
            raise UserError(
                f"{option('head', 'points_per_side', points_per_side)} over {crop_n_layers} crop layers divided by "
                f"{option('head', 'crop_n_points_downscale_factor', crop_n_points_downscale_factor)} per layer leaves "
                "the last layer no point: lower the factor or crop_n_layers."
            )
        if output_mode not in OUTPUT_MODES:
            raise UserError(f"{option('head', 'output_mode', output_mode)} is not one of {', '.join(OUTPUT_MODES)}.")
        self.predictor = SamPredictor(sam_model)
        self.point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        self.points_per_batch, self.crop_n_layers = points_per_batch, crop_n_layers
        self.pred_iou_thresh, self.stability_score_thresh = pred_iou_thresh, stability_score_thresh
        self.stability_score_offset, self.min_mask_region_area = stability_score_offset, min_mask_region_area
        self.box_nms_thresh, self.crop_nms_thresh = box_nms_thresh, crop_nms_thresh
        self.crop_overlap_ratio, self.output_mode = crop_overlap_ratio, output_mode

    @property
    def model(self) -> Sam:
        return self.predictor.model

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """`SamAutomaticMaskGenerator.generate`'s records for an `(H, W, 3)` uint8 RGB image, best first: `segmentation`
        (`(H, W)` bool, or an RLE dict by `output_mode`), `area` (pixels), `bbox` (XYWH), `predicted_iou`,
        `point_coords` (`[[x, y]]`, the prompt), `stability_score`, `crop_box` (XYWH)."""
        return self._generate(image, probabilities=False)[0]

    def generate_with_probabilities(self, image: np.ndarray) -> tuple[list[dict[str, Any]], np.ndarray]:
        """`generate`'s records and, for each record in the same order, SAM's mask probability map: `(N, H, W)` float32
        in [0, 1], the sigmoid of the mask logits upsampled to the image (thresholded at 0.5 it is the record's mask,
        before any `min_mask_region_area` clean-up); 0 outside the mask's crop."""
        return self._generate(image, probabilities=True)

    def _autocast(self) -> torch.autocast:
        device = self.predictor.device
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def crop_boxes(self, image: np.ndarray) -> tuple[list[list[int]], list[int]]:
        """The crops `[x0, y0, x1, y1]` the image is processed in and their layers, once the image is checked
        (`check_image`; a UserError when a crop would be empty). Call it to check images before a long run."""
        height, width = check_image(image).shape[:2]
        crop_boxes, layers = generate_crop_boxes((height, width), self.crop_n_layers, self.crop_overlap_ratio)
        if any(x1 <= x0 or y1 <= y0 for x0, y0, x1, y1 in crop_boxes):
            raise UserError(
                f"A {width}x{height} (WxH) image is too small for "
                f"{option('head', 'crop_n_layers', self.crop_n_layers)}: its last layer would hold empty crops. Use "
                "fewer crop layers or a larger image."
            )
        return crop_boxes, layers

    @torch.no_grad()
    def _generate(self, image: np.ndarray, probabilities: bool) -> tuple[list[dict[str, Any]], np.ndarray | None]:
        crop_boxes, layer_idxs = self.crop_boxes(image)
        image = np.asarray(image)
        height, width = image.shape[:2]
        data, crops = MaskData(), []
        for index, (crop_box, layer) in enumerate(zip(crop_boxes, layer_idxs)):
            crop_data, crop = self._process_crop(image, crop_box, layer)
            crop_data["crop_index"] = torch.full((len(crop_data["iou_preds"]),), index, dtype=torch.long)
            data.cat(crop_data)
            crops.append(crop)
        if len(crop_boxes) > 1:  # duplicates between crops: the mask from the smaller crop is kept
            scores = (1 / box_area(data["crop_boxes"])).to(data["boxes"].device)
            data.filter(batched_nms(data["boxes"].float(), scores, torch.zeros_like(scores), self.crop_nms_thresh))
        masks, probs = self._upsample_kept(data, crops, (height, width), probabilities)
        del data["low_res"], data["crop_index"]
        data.to_numpy()
        if self.min_mask_region_area > 0:
            masks, kept = self._remove_small_regions(data, masks)
            probs = None if probs is None else probs[kept]
        return self._records(data, masks), probs

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int) -> tuple[MaskData, dict]:
        """The masks of one crop that pass the filters and the crop's NMS, their low-res logits kept for upsampling."""
        x0, y0, x1, y1 = crop_box
        cropped = image[y0:y1, x0:x1]
        with self._autocast():
            self.predictor.set_image(cropped)
        crop = {"box": crop_box, "input_size": self.predictor.input_size, "size": cropped.shape[:2]}
        points = self.point_grids[layer] * np.array(cropped.shape[:2])[None, ::-1]
        data = MaskData()
        for (batch,) in batch_iterator(self.points_per_batch, points):
            data.cat(self._process_batch(batch, crop, image.shape[:2]))
        self.predictor.reset_image()
        scores = data["iou_preds"]
        data.filter(batched_nms(data["boxes"].float(), scores, torch.zeros_like(scores), self.box_nms_thresh))
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor(crop_box).repeat(len(data["iou_preds"]), 1)
        return data, crop

    def _process_batch(self, points: np.ndarray, crop: dict, image_size: tuple[int, int]) -> MaskData:
        """`points` `(B, 2)` xy in the crop -> its 3B masks that pass the predicted-IoU, stability and crop-edge
        filters: low-res logits `(M, 256, 256)`, scores, boxes in the crop."""
        model = self.model
        # float64 coordinates, as segment_anything passes them (the prompt encoder divides them before its cast)
        coords = torch.as_tensor(
            self.predictor.transform.apply_coords(points, crop["size"]), device=self.predictor.device
        )
        labels = torch.ones((len(coords), 1), dtype=torch.int, device=coords.device)
        with self._autocast():
            sparse, dense = model.prompt_encoder(points=(coords[:, None], labels), boxes=None, masks=None)
            low_res, iou_preds = model.mask_decoder(
                image_embeddings=self.predictor.features,
                image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
        data = MaskData(
            low_res=low_res.float().flatten(0, 1),
            iou_preds=iou_preds.float().flatten(0, 1),
            points=torch.as_tensor(points.repeat(low_res.shape[1], axis=0)),
        )
        if self.pred_iou_thresh > 0.0:  # before upsampling: only the survivors are upsampled to the image
            data.filter(data["iou_preds"] > self.pred_iou_thresh)
        stability, boxes = [data["iou_preds"][:0]], [torch.zeros((0, 4), dtype=torch.long, device=coords.device)]
        for chunk in data["low_res"].split(rows_per_call(UPSAMPLE_CHUNK, 1, crop["size"])):
            logits = self._upsample(chunk, crop)
            stability.append(calculate_stability_score(logits, model.mask_threshold, self.stability_score_offset))
            stable = stability[-1] >= self.stability_score_thresh if self.stability_score_thresh > 0.0 else ...
            boxes.append(batched_mask_to_box(logits[stable] > model.mask_threshold))  # of the masks kept only
        data["stability_score"] = torch.cat(stability)
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)
        data["boxes"] = torch.cat(boxes)  # computed after the filter, as segment_anything does
        near_edge = is_box_near_crop_edge(data["boxes"], crop["box"], [0, 0, image_size[1], image_size[0]])
        if near_edge.any():
            data.filter(~near_edge)
        return data

    def _upsample(self, low_res: torch.Tensor, crop: dict) -> torch.Tensor:
        """Low-res logits `(M, 256, 256)` -> logits `(M, h, w)` at the crop's size (SAM's own postprocessing)."""
        return self.model.postprocess_masks(low_res[:, None], crop["input_size"], crop["size"])[:, 0]

    def _upsample_kept(
        self, data: MaskData, crops: list[dict], size: tuple[int, int], probabilities: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The kept masks `(N, H, W)` bool in the image and, with `probabilities`, their sigmoids `(N, H, W)`."""
        n = len(data["iou_preds"])
        masks = np.zeros((n, *size), dtype=bool)
        probs = np.zeros((n, *size), dtype=np.float32) if probabilities else None
        for index, crop in enumerate(crops):
            rows = torch.nonzero(data["crop_index"] == index)[:, 0]
            for part in rows.split(rows_per_call(UPSAMPLE_CHUNK, 1, crop["size"])):
                logits = self._upsample(data["low_res"][part.to(data["low_res"].device)], crop)
                rows_np = part.numpy()
                masks[rows_np] = uncrop_masks(logits > self.model.mask_threshold, crop["box"], *size).cpu().numpy()
                if probs is not None:
                    probs[rows_np] = uncrop_masks(torch.sigmoid(logits), crop["box"], *size).cpu().numpy()
        return masks, probs

    def _remove_small_regions(self, data: MaskData, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """segment_anything's clean-up (holes and islands under `min_mask_region_area`, then NMS) on `data` in place
        -> the cleaned masks `(N', H, W)` and the indices `(N',)` of the masks kept."""
        data["rles"] = mask_to_rle_pytorch(torch.from_numpy(masks))
        data["kept"] = np.arange(len(masks))
        nms_thresh = max(self.box_nms_thresh, self.crop_nms_thresh)
        SamAutomaticMaskGenerator.postprocess_small_regions(data, self.min_mask_region_area, nms_thresh)
        cleaned = [rle_to_mask(rle) for rle in data["rles"]]
        return np.array(cleaned, dtype=bool).reshape(-1, *masks.shape[1:]), data["kept"]

    def _records(self, data: MaskData, masks: np.ndarray) -> list[dict[str, Any]]:
        """The masks `(N, H, W)` bool and their `data` as `SamAutomaticMaskGenerator.generate` writes them."""
        binary = self.output_mode == "binary_mask"
        segmentations = list(masks) if binary else mask_to_rle_pytorch(torch.from_numpy(masks))
        if self.output_mode == "coco_rle":
            segmentations = [coco_encode_rle(rle) for rle in segmentations]
        return [
            {
                "segmentation": segmentation,
                "area": int(mask.sum()),
                "bbox": box_xyxy_to_xywh(data["boxes"][i]).tolist(),
                "predicted_iou": data["iou_preds"][i].item(),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": data["stability_score"][i].item(),
                "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
            }
            for i, (segmentation, mask) in enumerate(zip(segmentations, masks))
        ]


def generate_masks(sam_model: Sam, image: np.ndarray, **options: Any) -> list[dict[str, Any]]:
    """`SamMaskGenerator(sam_model, **options).generate(image)`: the records of every mask SAM finds in the image."""
    return SamMaskGenerator(sam_model, **options).generate(image)


def mask_probabilities(sam_model: Sam, image: np.ndarray, **options: Any) -> tuple[list[dict[str, Any]], np.ndarray]:
    """`SamMaskGenerator(sam_model, **options).generate_with_probabilities(image)`: the records and the kept masks'
    probabilities `(N, H, W)` float32 (the sigmoid of SAM's upsampled logits), in the records' order."""
    return SamMaskGenerator(sam_model, **options).generate_with_probabilities(image)


def check_image(image: object) -> np.ndarray:
    """An `(H, W, 3)` uint8 RGB image of at least 2 x 2 pixels, or a UserError saying what it is and the fix."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise UserError(
            f"SAM takes an (H, W, 3) uint8 RGB image with values 0-255, got dtype {array.dtype}: convert it, e.g. "
            "(image * 255).round().astype(np.uint8) for floats in [0, 1]."
        )
    if array.ndim != 3 or array.shape[2] != 3:
        raise UserError(
            f"SAM takes an (H, W, 3) RGB image, got shape {array.shape}: convert grey or RGBA images to RGB "
            "(utils.images.read_rgb(path) reads any image file so)."
        )
    if min(array.shape[:2]) < 2:
        raise UserError(
            f"The image is {array.shape[1]}x{array.shape[0]} (WxH) pixels: automatic masks need at least 2 pixels on "
            "each side (a mask of a 1-pixel-wide image can only be all or nothing). Pass a larger image."
        )
    return array


def _check(name: str, value: object, least: float, most: float = math.inf, whole: bool = False) -> None:
    """A finite number in [least, most], whole when `whole` (a bool is refused: Python counts it as an int)."""
    kinds = (int, np.integer) if whole else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not (least <= value <= most and math.isfinite(value)):
        what = "a whole number" if whole else "a finite number"
        limits = f"of at least {least:g}" if math.isinf(most) else f"in [{least:g}, {most:g}]"
        raise UserError(f"{option('head', name, value)}: give {what} {limits}.")

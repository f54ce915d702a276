"""Zero-shot edge maps from SAM, as the SAM paper's appendix (D.2) describes its BSDS500 experiment.

A 16x16 grid of foreground points prompts SAM (3 masks per point, all prompts in large batched decoder calls),
redundant masks are removed by box NMS, a Sobel filter runs on each kept mask's UNTHRESHOLDED probability map, the
magnitudes are combined per pixel (max), and the result goes through edge NMS (thin ridges along the edge normal,
as the structured-edge toolbox's `edgesNms` does) before the benchmark thins its binarised maps.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import convolve1d, map_coordinates
from segment_anything.modeling import Sam
from segment_anything.utils.amg import batched_mask_to_box, build_point_grid
from torchvision.ops import batched_nms

from sam.batched import ImageEmbedding
from sam.predictor import SamBoxPredictor

SOBEL_X = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


def _check_whole(name: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
        raise ValueError(f"{name}={value!r} must be a whole number of at least {least}.")
    return int(value)


def check_image(image: np.ndarray) -> np.ndarray:
    """`image` as an `(H, W, 3)` uint8 array with H, W >= 2 (a Sobel filter and an edge need two pixels)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"An edge map needs an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}.")
    if min(image.shape[:2]) < 2:
        raise ValueError(
            f"The image is {image.shape[1]}x{image.shape[0]} (WxH) pixels: an edge lies between pixels, so an edge "
            "map needs an image of at least 2x2 pixels."
        )
    return image


@torch.no_grad()
def grid_mask_probabilities(
    sam_model: Sam,
    image: np.ndarray,
    points_per_side: int = 16,
    points_per_batch: int = 256,
    box_nms_thresh: float = 0.7,
    pred_iou_thresh: float = 0.0,
    embedding: ImageEmbedding | None = None,
) -> np.ndarray:
    """SAM's masks for a `points_per_side`^2 point grid on `image`, after box NMS, as probabilities.

    Args:
        sam_model: a `segment_anything` Sam.
        image: `(H, W, 3)` uint8 RGB, H, W >= 2.
        points_per_side: the grid's points per side (the paper: 16, i.e. 768 masks before NMS).
        points_per_batch: point prompts per mask-decoder call (each gives SAM's 3 multimask outputs).
        box_nms_thresh: the IoU of mask boxes above which the lower-scored mask (SAM's predicted IoU) is dropped.
        pred_iou_thresh: masks with a predicted IoU below this are dropped first (the paper filters none: 0).
        embedding: `image` already encoded (`sam.batched.encode_images`, many images in one encoder call); without
            it SAM encodes the image here.

    Returns:
        `(N, H, W)` float32 sigmoid of SAM's mask logits at the image's size, highest predicted IoU first; masks
        empty after thresholding at SAM's `mask_threshold` are dropped (they have no box for the NMS).
    """
    image = check_image(image)
    points_per_side = _check_whole("points_per_side", points_per_side, 1)
    points_per_batch = _check_whole("points_per_batch", points_per_batch, 1)
    prompts = SamBoxPredictor(sam_model)
    if embedding is None:
        prompts.set_image(image)
    else:
        prompts.set_embedding(embedding)
    predictor = prompts.predictor
    height, width = image.shape[:2]
    # amg's grid is in [0, 1], cell centres; pixels as SamAutomaticMaskGenerator scales it (x by W, y by H)
    points = torch.as_tensor(build_point_grid(points_per_side) * np.array([width, height]), dtype=torch.float32)
    low_res, boxes, scores = [], [], []
    for chunk in points.split(points_per_batch):
        coords = predictor.transform.apply_coords_torch(chunk.to(predictor.device), predictor.original_size)
        labels = torch.ones(len(chunk), 1, dtype=torch.int, device=predictor.device)
        logits, iou, low = predictor.predict_torch(coords[:, None], labels, multimask_output=True, return_logits=True)
        masks = logits.flatten(0, 1) > sam_model.mask_threshold
        boxes.append(batched_mask_to_box(masks).float().cpu())
        nonempty = masks.flatten(1).any(1).cpu()
        scores.append(torch.where(nonempty, iou.flatten().float().cpu(), -torch.inf))
        low_res.append(low.flatten(0, 1).float().cpu())
    boxes, scores, low_res = torch.cat(boxes), torch.cat(scores), torch.cat(low_res)
    keep = torch.isfinite(scores) & (scores >= pred_iou_thresh)
    boxes, scores, low_res = boxes[keep], scores[keep], low_res[keep]
    keep = batched_nms(boxes, scores, torch.zeros(len(boxes), dtype=torch.long), box_nms_thresh)  # sorted by score
    # the kept low-res logits upsampled exactly as predict_torch does: the same probabilities, a fraction of memory
    probabilities = [
        torch.sigmoid(sam_model.postprocess_masks(chunk.to(predictor.device)[:, None], predictor.input_size,
                                                  predictor.original_size))[:, 0].cpu()
        for chunk in low_res[keep].split(points_per_batch)
    ]  # fmt: skip
    if not probabilities:
        return np.zeros((0, height, width), np.float32)
    return torch.cat(probabilities).numpy().astype(np.float32)


def sobel_magnitude(probabilities: np.ndarray | torch.Tensor, chunk: int = 64) -> np.ndarray:
    """`(N, H, W)` maps -> `(H, W)` float32: the per-pixel maximum over the maps of the Sobel gradient magnitude
    (replicate padding, so that an image border is no edge). Zeros when N = 0."""
    maps = torch.as_tensor(np.asarray(probabilities, np.float32))
    if maps.ndim != 3:
        raise ValueError(f"sobel_magnitude takes (N, H, W) maps, got shape {tuple(maps.shape)}.")
    kernel = torch.stack([SOBEL_X, SOBEL_X.T])[:, None]
    combined = torch.zeros(maps.shape[1:])
    for part in maps.split(chunk):
        gradient = F.conv2d(F.pad(part[:, None], (1, 1, 1, 1), mode="replicate"), kernel)
        combined = torch.maximum(combined, gradient.pow(2).sum(1).sqrt().amax(0))
    return combined.numpy()


def _triangle_smooth(edges: np.ndarray, radius: int = 4) -> np.ndarray:
    """The structured-edge toolbox's `convTri(E, 4)`: a separable triangle filter of the given radius."""
    kernel = np.concatenate([np.arange(1, radius + 2), np.arange(radius, 0, -1)]).astype(np.float64)
    kernel /= kernel.sum()
    return convolve1d(convolve1d(edges, kernel, axis=0, mode="reflect"), kernel, axis=1, mode="reflect")


def edge_orientation(edges: np.ndarray) -> np.ndarray:
    """`(H, W)` edge map -> `(H, W)` angle in [0, pi) of each pixel's edge normal (x along columns), from the second
    derivatives of the smoothed map, as `edgesDetect` computes it for its NMS."""
    smooth = _triangle_smooth(edges.astype(np.float64))
    oy, ox = np.gradient(smooth)
    oxx = np.gradient(ox, axis=1)
    oyy, oxy = np.gradient(oy)
    return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)


def edge_nms(edges: np.ndarray, radius: int = 1, border: int = 5, margin: float = 1.01) -> np.ndarray:
    """Non-maximum suppression along the edge normal (`edgesNms(E, O, r=1, s=5, m=1.01)`): a pixel whose value times
    `margin` is below one of its interpolated neighbours at distances 1..`radius` along the normal becomes 0; values
    within `border` pixels of the image's sides are faded linearly (their gradients are least reliable).

    `edges` `(H, W)` >= 0 -> `(H, W)` float32.
    """
    edges = np.asarray(edges, np.float64)
    angle = edge_orientation(edges)
    rows, cols = np.mgrid[: edges.shape[0], : edges.shape[1]].astype(np.float64)
    keep = np.ones(edges.shape, bool)
    for d in [d for d in range(-radius, radius + 1) if d]:
        neighbour = map_coordinates(
            edges, [rows + d * np.sin(angle), cols + d * np.cos(angle)], order=1, mode="nearest"
        )
        keep &= edges * margin >= neighbour
    out = np.where(keep, edges, 0.0)
    for axis, size in enumerate(out.shape):
        s = min(border, size // 2)
        if s < 1:
            continue
        ramp = np.ones(size)
        ramp[:s] = np.arange(s) / s
        ramp[size - s :] = np.minimum(ramp[size - s :], np.arange(s)[::-1] / s)
        out *= ramp[:, None] if axis == 0 else ramp[None, :]
    return out.astype(np.float32)


def edge_map(
    sam_model: Sam,
    image: np.ndarray,
    points_per_side: int = 16,
    points_per_batch: int = 256,
    box_nms_thresh: float = 0.7,
    pred_iou_thresh: float = 0.0,
    nms: bool = True,
    embedding: ImageEmbedding | None = None,
) -> np.ndarray:
    """The zero-shot SAM edge map of an `(H, W, 3)` uint8 RGB image: `(H, W)` float32 in [0, 1].

    The grid's masks (`grid_mask_probabilities`), the maximum of their Sobel magnitudes, edge NMS (`nms`), then
    divided by the image's maximum: the benchmark thresholds maps in [0, 1], and a Sobel magnitude of probabilities
    has no fixed scale of its own. All zeros when no mask survives.
    """
    probabilities = grid_mask_probabilities(
        sam_model, image, points_per_side, points_per_batch, box_nms_thresh, pred_iou_thresh, embedding
    )
    edges = sobel_magnitude(probabilities)
    if nms:
        edges = edge_nms(edges)
    peak = float(edges.max()) if edges.size else 0.0
    return (edges / peak if peak > 0 else edges).astype(np.float32)

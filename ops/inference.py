"""Test-time inference of the official DINOv2 segmentation configs (mmseg `slide` mode and `aug_test`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PredictFn = Callable[[Tensor], Tensor]
"""Windows `(N, 3, h, w)` -> logits `(N, K, h, w)` at the window size."""


def check_windows(crop_size: int, stride: int, owner: str = "slide_windows") -> None:
    """ValueError unless ``1 <= stride <= crop_size`` (whole numbers): a stride of 0 divides by zero, and one
    larger than the window leaves pixels that no window covers (their logits would be 0 / 0)."""
    numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (crop_size, stride))
    if not (numbers and 1 <= stride <= crop_size):
        raise ValueError(
            f"{owner}: stride={stride} with crop_size={crop_size}: the sliding windows need whole numbers with "
            f"1 <= stride <= crop_size. Fix: e.g. stride={max(1, (2 * crop_size) // 3) if numbers else 341}."
        )


def slide_windows(height: int, width: int, crop_size: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's sliding-window grid as `(y1, y2, x1, x2)`, each window clipped to the image.

    All windows have size `(min(crop_size, height), min(crop_size, width))`.
    """
    check_windows(crop_size, stride)
    h_grids = max(height - crop_size + stride - 1, 0) // stride + 1
    w_grids = max(width - crop_size + stride - 1, 0) // stride + 1
    windows = []
    for row in range(h_grids):
        for col in range(w_grids):
            y2 = min(row * stride + crop_size, height)
            x2 = min(col * stride + crop_size, width)
            windows.append((max(y2 - crop_size, 0), y2, max(x2 - crop_size, 0), x2))
    return windows


def slide_logits(
    predict_fn: PredictFn,
    image: Tensor,
    num_classes: int,
    crop_size: int = 512,
    stride: int = 341,
    windows_per_call: int = 4,
) -> Tensor:
    """Images `(B, 3, H, W)` -> logits `(B, K, H, W)`: window logits summed, divided by the overlap count.

    Windows go through `predict_fn` `windows_per_call` at a time (one call gets
    `windows_per_call * B` crops, concatenated on the batch dimension).
    """
    batch, _, height, width = image.shape
    windows = slide_windows(height, width, crop_size, stride)
    logits = image.new_zeros(batch, num_classes, height, width)
    count = image.new_zeros(1, 1, height, width)
    for start in range(0, len(windows), windows_per_call):
        group = windows[start : start + windows_per_call]
        out = predict_fn(torch.cat([image[..., y1:y2, x1:x2] for y1, y2, x1, x2 in group]))
        for (y1, y2, x1, x2), window_logits in zip(group, out.split(batch)):
            logits[..., y1:y2, x1:x2] += window_logits
            count[..., y1:y2, x1:x2] += 1
    return logits / count


def multiscale_flip_probs(
    predict_fn: PredictFn,
    image: Tensor,
    num_classes: int,
    out_size: Sequence[int],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crop_size: int = 512,
    stride: int = 341,
) -> Tensor:
    """Images `(B, 3, H, W)` -> class probabilities `(B, K, *out_size)` averaged over the views.

    Views: the image resized bilinearly by each scale (the "+ms" probe uses
    1.0, 1.32, 1.73, 2.28, 3.0), each also flipped horizontally when `flip`. As mmseg's
    `aug_test`: each view's slide logits are resized to `out_size`, softmaxed, flipped back,
    and the probabilities averaged.
    """
    height, width = image.shape[-2:]
    probs = image.new_zeros(image.shape[0], num_classes, *out_size)
    flips = (False, True) if flip else (False,)
    for scale in scales:
        # mmcv's rescale rounds half up
        size = (int(height * scale + 0.5), int(width * scale + 0.5))
        scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for flipped in flips:
            view = scaled.flip(-1) if flipped else scaled
            logits = slide_logits(predict_fn, view, num_classes, crop_size, stride)
            view_probs = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False).softmax(1)
            probs += view_probs.flip(-1) if flipped else view_probs
    return probs / (len(scales) * len(flips))

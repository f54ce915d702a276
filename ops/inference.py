"""Test-time inference of the official DINOv2 segmentation configs (mmseg `slide` mode and `aug_test`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PredictFn = Callable[[Tensor], Tensor]
"""Windows `(N, 3, h, w)` -> logits `(N, K, h, w)` at the window size."""

LABEL_ELEMENTS = 2**26
"""The most class scores at the output size `multiscale_flip_labels` holds in one tensor (256 MiB of float32); it
holds about four such tensors at once."""


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
    probs = image.new_zeros(image.shape[0], num_classes, *out_size)
    for view, flipped in views_of(image, scales, flip):
        logits = slide_logits(predict_fn, view, num_classes, crop_size, stride)
        view_probs = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False).softmax(1)
        probs += view_probs.flip(-1) if flipped else view_probs
    return probs / (len(scales) * (2 if flip else 1))


def views_of(image: Tensor, scales: Sequence[float], flip: bool) -> Iterator[tuple[Tensor, bool]]:
    """The test-time views of images `(B, 3, H, W)`: resized bilinearly by each scale (mmcv's rescale rounds half
    up), each also flipped horizontally when `flip`; with whether the view is flipped."""
    height, width = image.shape[-2:]
    for scale in scales:
        size = (int(height * scale + 0.5), int(width * scale + 0.5))
        scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            yield (scaled.flip(-1) if flipped else scaled), flipped


def multiscale_flip_labels(
    predict_fn: PredictFn,
    image: Tensor,
    num_classes: int,
    out_size: Sequence[int],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crop_size: int = 512,
    stride: int = 341,
    max_elements: int = LABEL_ELEMENTS,
) -> Tensor:
    """Images `(B, 3, H, W)` -> labels `(B, *out_size)` int64: the argmax over classes of `multiscale_flip_probs`,
    holding at most about ``max_elements`` class scores at the output size in one tensor.

    When `(B, K, *out_size)` is within ``max_elements``, it is `multiscale_flip_probs(...).argmax(1)` itself.
    Otherwise (a large photograph: 150 classes of a 4032x3024 image are 7.3 GB, and `multiscale_flip_probs` holds
    three such tensors) the views' logits are kept at their own sizes and upsampled a few classes at a time and
    compared with the best class so far: one view's logits as they are (the softmax keeps their order), several
    views' probabilities summed, each view's upsampled twice for that: first for its log-sum-exp over the classes at
    the output size, then for the probabilities `exp(logit - logsumexp)`. Each pixel's label is that of
    `multiscale_flip_probs` up to float rounding (a tie within about 1e-7 may go either way).
    """
    batch, pixels = image.shape[0], out_size[0] * out_size[1]
    if batch * num_classes * pixels <= max_elements:
        probs = multiscale_flip_probs(predict_fn, image, num_classes, out_size, scales, flip, crop_size, stride)
        return probs.argmax(1)
    # each view's logits at its own size, and whether it is flipped
    views = [
        (slide_logits(predict_fn, view, num_classes, crop_size, stride), flipped)
        for view, flipped in views_of(image, scales, flip)
    ]
    step = max(1, max_elements // (batch * pixels))
    chunks = [slice(start, start + step) for start in range(0, num_classes, step)]

    def upsampled(logits: Tensor, classes: slice) -> Tensor:
        return F.interpolate(logits[:, classes], size=tuple(out_size), mode="bilinear", align_corners=False)

    lse = []  # each view's log-sum-exp over all classes at the output size, (B, H', W'); one view needs none
    for logits, _ in views if len(views) > 1 else ():
        total = None
        for classes in chunks:
            part = torch.logsumexp(upsampled(logits, classes), dim=1)
            total = part if total is None else torch.logaddexp(total, part)
        lse.append(total)

    def scores(classes: slice) -> Tensor:
        """The classes' probabilities summed over the views, or one view's logits (the softmax keeps their order)."""
        if not lse:
            return upsampled(views[0][0], classes)
        total = None
        for (logits, flipped), view_lse in zip(views, lse):
            probs = (upsampled(logits, classes) - view_lse[:, None]).exp()
            probs = probs.flip(-1) if flipped else probs
            total = probs if total is None else total.add_(probs)
        return total

    best = labels = None
    for classes in chunks:
        value, index = scores(classes).max(1)
        index += classes.start
        if best is None:
            best, labels = value, index
        else:  # strictly better: on a tie the lower class, as argmax
            better = value > best
            best, labels = torch.where(better, value, best), torch.where(better, index, labels)
    return labels

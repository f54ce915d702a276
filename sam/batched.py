"""Many images through SAM's image encoder at once: one encoder call per batch of images (segment-anything #184).

`encode_images(sam, images)` prepares each image exactly as `segment_anything.SamPredictor.set_image` does
(ResizeLongestSide, normalisation, padding to the encoder's square input), stacks them, and runs the image encoder
once per `batch_size` images. Each `ImageEmbedding` then goes to `SamBoxPredictor.set_embedding`, after which
its `predict*` methods prompt that image without encoding it again.

The encoder in eval mode treats each image of a batch independently, so the embeddings equal one-image-at-a-time
ones up to the float rounding of batched matrix products (tests/test_sam_batched.py checks masks and scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide


@dataclass(frozen=True)
class ImageEmbedding:
    """One image encoded by SAM: `features` `(1, C, h, w)` on the model's device (SamPredictor.features),
    `original_size` the image's `(H, W)`, `input_size` its `(H', W')` after ResizeLongestSide, before padding."""

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


UPSAMPLE_ELEMENTS = 2**28
"""The most mask logits upsampled to the image in one decoder call (1 GiB of float32): `SamBoxPredictor` sends fewer
prompts at once on large images (64 boxes of a 640x480 image are 20 M; 3 candidates of one prompt on a 6000x4000
photograph are 72 M), and `sam.automatic` upsamples fewer masks at once. The results are the same up to float
rounding (about 1e-7: batched kernels round differently)."""


def rows_per_call(most: int, masks_per_row: int, size: tuple[int, int]) -> int:
    """How many prompts (rows) of ``masks_per_row`` masks each to upsample at once to an image of ``size`` ``(H, W)``:
    ``most``, or fewer so that their logits stay within ``UPSAMPLE_ELEMENTS`` (at least 1)."""
    return max(1, min(most, UPSAMPLE_ELEMENTS // (masks_per_row * size[0] * size[1])))


def sam_autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (SAM's encoder and decoder run in it there), nothing on other devices."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def check_image(image: object, long_side: int, index: int | None = None) -> np.ndarray:
    """An `(H, W, 3)` uint8 RGB image that SAM's ResizeLongestSide(`long_side`) can resize, or a ValueError
    naming it (`image {index}` when `index` is given)."""
    name = "SAM's image" if index is None else f"Image {index}"
    if not isinstance(image, np.ndarray):
        raise ValueError(  # noqa: TRY004 (API: ValueError)
            f"{name} is a {type(image).__name__}; SAM takes (H, W, 3) uint8 RGB numpy arrays."
        )
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"{name} is {image.dtype} {image.shape}; SAM takes (H, W, 3) uint8 RGB images (values 0-255): convert "
            "a float image in [0, 1] with (image * 255).round().astype(np.uint8), drop an alpha channel, stack a grey one."
        )
    height, width = image.shape[:2]
    if not (height and width) or 0 in ResizeLongestSide.get_preprocess_shape(height, width, long_side):
        raise ValueError(
            f"{name} is {width}x{height} (WxH): resized to SAM's {long_side}-pixel long side, its short side "
            f"{'would have no pixel' if height and width else 'has no pixel'}. Pass an image whose short side is at "
            f"least {max(height, width) / long_side:.2g} pixels (1 / {long_side} of its long side)."
        )
    return image


@torch.no_grad()
def encode_images(sam: Sam, images: Sequence[np.ndarray], batch_size: int = 8) -> list[ImageEmbedding]:
    """Images `(H_i, W_i, 3)` uint8 RGB (any sizes) -> one `ImageEmbedding` each, in order.

    Each image is resized and padded as `SamPredictor.set_image` does; the image encoder runs once per
    `batch_size` images on the stacked `(B, 3, S, S)` input (S = `sam.image_encoder.img_size`), in bf16
    autocast on CUDA as `SamBoxPredictor.set_image` runs it. Every image is checked before anything is
    encoded: a ValueError names the first bad one by its index.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a whole number of at least 1 (images per encoder call).")
    if isinstance(images, np.ndarray) and images.ndim == 3:
        raise ValueError("encode_images takes a sequence of (H, W, 3) images; for one image pass [image].")
    images = list(images)
    if not images:
        raise ValueError("encode_images got no images: pass a non-empty list of (H, W, 3) uint8 RGB images.")
    long_side = sam.image_encoder.img_size
    images = [check_image(image, long_side, i) for i, image in enumerate(images)]
    transform, device = ResizeLongestSide(long_side), sam.device
    embeddings = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        if sam.image_format != "RGB":  # as SamPredictor.set_image(image, "RGB") does for a BGR model
            chunk = [image[..., ::-1] for image in chunk]
        inputs = [
            torch.as_tensor(transform.apply_image(image), device=device).permute(2, 0, 1)[None] for image in chunk
        ]
        with sam_autocast(device):
            features = sam.image_encoder(torch.cat([sam.preprocess(x.contiguous()) for x in inputs]))
        embeddings += [
            ImageEmbedding(features[i : i + 1], tuple(image.shape[:2]), tuple(x.shape[-2:]))
            for i, (image, x) in enumerate(zip(chunk, inputs))
        ]
    return embeddings

"""Segment Anything (SAM): loading the official checkpoints, and box / point prompts batched per image."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from backbones.weights import (
    CheckpointError,
    check_state_dict,
    load_state_dict_file,
    resolve_checkpoint,
)
from utils.errors import option

URL = "https://dl.fbaipublicfiles.com/segment_anything/"
# Meta publishes no checksums for these files, and the hex in their names is not a SHA-256 prefix. These full
# SHA-256 digests were pinned here earlier and are the ones many public projects record for the same files.
CHECKPOINTS = {
    "vit_b": ("sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "vit_l": ("sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_h": ("sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
}
# Image-encoder width and depth of each size, to name the size a mismatched checkpoint was made for.
ENCODER_SIZES = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}
ENCODER_HEADS = {"vit_b": 12, "vit_l": 16, "vit_h": 16}


def check_sam_sizes(
    encoder_embed_dim: int | None,
    encoder_depth: int | None,
    encoder_num_heads: int | None,
    prompt_embed_dim: int | None,
    image_size: int | None,
) -> None:
    """ValueError naming the first size override SAM cannot be built with (``None`` keeps the official size):
    `build_sam` would silently take 0 as "official", and segment_anything fails later, deep in a forward pass."""
    sizes = {
        "encoder_embed_dim": encoder_embed_dim,
        "encoder_depth": encoder_depth,
        "encoder_num_heads": encoder_num_heads,
        "prompt_embed_dim": prompt_embed_dim,
        "image_size": image_size,
    }
    for name, value in sizes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{option('sam', name, value)}: give a whole number of at least 1 (or null: official).")
    # the patch size is 16; the decoder's 8 attention heads run at half the prompt width
    for name, value, multiple in (("image_size", image_size, 16), ("prompt_embed_dim", prompt_embed_dim, 16)):
        if value is not None and value % multiple:
            raise ValueError(f"{option('sam', name, value)} is not a multiple of {multiple}, as SAM needs.")
    if encoder_embed_dim is not None and encoder_num_heads is not None and encoder_embed_dim % encoder_num_heads:
        raise ValueError(
            f"{option('sam', 'encoder_embed_dim', encoder_embed_dim)} does not split over "
            f"{option('sam', 'encoder_num_heads', encoder_num_heads)}: the width must be a multiple of the head count."
        )


def build_sam(
    model_type: str = "vit_h",
    encoder_embed_dim: int | None = None,
    encoder_depth: int | None = None,
    encoder_num_heads: int | None = None,
    encoder_global_attn_indexes: list[int] | None = None,
    prompt_embed_dim: int | None = None,
    image_size: int | None = None,
) -> Sam:
    """A randomly initialised SAM in eval mode: `sam_model_registry[model_type]`, or a smaller one for tests.

    Any override builds the same modules as segment_anything's builder with those values changed
    (the decoder MLP is 8x the prompt width, as 2048 = 8 x 256 in the official sizes).
    """
    if model_type not in CHECKPOINTS:
        raise CheckpointError(f"Unknown SAM size sam.model_type={model_type!r}: choose one of {sorted(CHECKPOINTS)}.")
    overrides = (
        encoder_embed_dim,
        encoder_depth,
        encoder_num_heads,
        encoder_global_attn_indexes,
        prompt_embed_dim,
        image_size,
    )
    if all(value is None for value in overrides):
        return sam_model_registry[model_type]()
    check_sam_sizes(encoder_embed_dim, encoder_depth, encoder_num_heads, prompt_embed_dim, image_size)
    official_dim, official_depth = next(size for size, name in ENCODER_SIZES.items() if name == model_type)
    depth = encoder_depth or official_depth
    # segment_anything's _build_sam fixes the prompt width (256) and input size (1024): tests need smaller ones.
    prompt_dim, size = prompt_embed_dim or 256, image_size or 1024
    global_attn = encoder_global_attn_indexes or [i for i in range(depth) if i % 4 == 3 or i == depth - 1]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=depth,
            embed_dim=encoder_embed_dim or official_dim,
            img_size=size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=encoder_num_heads or ENCODER_HEADS[model_type],
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(global_attn),
            window_size=14,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(size // 16, size // 16),
            input_image_size=(size, size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=8 * prompt_dim, num_heads=8),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=prompt_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam(
    model_type: str = "vit_h",
    checkpoint: str | None = None,
    download: bool = False,
    random_weights: bool = False,
    sha256: str | None = None,
    **overrides: int | list[int] | None,
) -> Sam:
    """SAM of size `model_type` ("vit_b", "vit_l", "vit_h") with its official weights, frozen, in eval mode.

    The weights come from `checkpoint` (a local file), else the torch.hub cache, else the official URL when
    `download`. Official file names are checked against their pinned SHA-256, other files against `sha256` or a
    `<file>.sha256` beside them. `random_weights=True` keeps the random initialisation instead (tests, the
    offline quickstart), and sets the model's ``random_weights`` attribute. `overrides` change the architecture (see `build_sam`).

    Raises:
        CheckpointError: the file is missing, corrupt, or made for another SAM size (the message names it).
    """
    sam = build_sam(model_type, **overrides)
    if random_weights and checkpoint is None:
        sam.random_weights = True  # read by train.py, which marks the metrics as made with random weights
        return sam.requires_grad_(False)
    filename = CHECKPOINTS[model_type][0]
    path = resolve_checkpoint(
        checkpoint,
        filename,
        URL + filename,
        download,
        sha256,
        f"SAM {model_type} weights",
        "sam",
        "random_weights",
        official_sha256=dict(CHECKPOINTS.values()),
    )
    state = load_state_dict_file(path)
    check_state_dict(state, sam.state_dict(), path, hint=_size_hint(state, model_type))
    sam.load_state_dict(state)
    return sam.requires_grad_(False)


def _size_hint(state: dict[str, torch.Tensor], model_type: str) -> str:
    """'This file is a vit_l checkpoint: set sam.model_type=vit_l.' when the encoder's shape says so."""
    patch = state.get("image_encoder.patch_embed.proj.weight")
    depth = len({key.split(".")[2] for key in state if key.startswith("image_encoder.blocks.")})
    found = ENCODER_SIZES.get((patch.shape[0], depth)) if patch is not None else None
    if found is not None and found != model_type:
        return f"The file is a SAM {found} checkpoint (width {patch.shape[0]}, {depth} blocks): set sam.model_type={found}."
    return f"Pass the official {CHECKPOINTS[model_type][0]} for sam.model_type={model_type}, or set the size the file was made for."


class SamBoxPredictor:
    """Masks for many prompts on one image: the image encoder runs once, the prompts go through the
    prompt encoder and mask decoder in batches of `chunk_size`. bf16 autocast on CUDA.

    Preprocessing and postprocessing are `segment_anything.SamPredictor`'s (ResizeLongestSide, padding,
    mask upsampling), so each mask matches `SamPredictor.predict(box=b, multimask_output=False)`.
    """

    def __init__(self, sam_model: Sam, chunk_size: int = 64) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(
                f"chunk_size={chunk_size!r} must be a whole number of at least 1 (prompts per decoder call)."
            )
        self.predictor = SamPredictor(sam_model)
        self.chunk_size = chunk_size

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        """Encode an `(H, W, 3)` uint8 RGB image for the following `predict*` calls with `image=None`."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"SAM takes an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}.")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(
                f"SAM got an empty {image.shape[1]}x{image.shape[0]} (WxH) image: pass an (H, W, 3) image with at "
                "least one pixel."
            )
        with self._autocast():
            self.predictor.set_image(image)

    def predict(self, image: np.ndarray | None, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Box prompts `(N, 4)` xyxy pixels -> masks `(N, H, W)` bool, scores `(N,)` (SAM's predicted IoU).

        `image` `(H, W, 3)` uint8 RGB, or None to reuse the last one set. Boxes are `(x1, y1, x2, y2)` pixel
        corners with x2 > x1 and y2 > y1. A box reaching outside the image is clipped to it (the mask is that of
        its part inside, as `clip_boxes` does); a box with a non-finite value, no area, or entirely outside
        the image raises `ValueError` naming it.
        """
        if image is not None:
            self.set_image(image)
        boxes = check_boxes(boxes, *self._image_size())
        boxes = torch.as_tensor(boxes, device=self.device)
        boxes = self.predictor.transform.apply_boxes_torch(boxes, self.predictor.original_size)
        chunks = [self._decode(boxes=chunk, multimask=False) for chunk in boxes.split(self.chunk_size) if len(chunk)]
        return self._collect(chunks)

    def predict_points(
        self, image: np.ndarray | None, points: np.ndarray, multimask: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """One foreground point per prompt `(N, 2)` xy pixels -> masks `(N, H, W)` bool, scores `(N,)`.

        With `multimask`, SAM's three candidate masks are made and the one with the highest predicted IoU is
        kept, as SAM does for ambiguous single points.
        """
        if not isinstance(multimask, (bool, np.bool_)):
            raise ValueError(f"multimask={multimask!r} must be True or False.")  # noqa: TRY004 (API: ValueError)
        if image is not None:
            self.set_image(image)
        points = torch.as_tensor(check_points(points, *self._image_size())[:, None], device=self.device)
        points = self.predictor.transform.apply_coords_torch(points, self.predictor.original_size)
        labels = torch.ones(points.shape[:2], dtype=torch.int, device=self.device)
        chunks = [
            self._decode(points=(p, l), multimask=multimask)
            for p, l in zip(points.split(self.chunk_size), labels.split(self.chunk_size))
            if len(p)
        ]
        return self._collect(chunks)

    def _image_size(self) -> tuple[int, int]:
        """(H, W) of the image set; a ValueError when there is none."""
        if not self.predictor.is_image_set:
            raise ValueError("No image is set: pass an (H, W, 3) uint8 image, or call set_image(image) first.")
        return self.predictor.original_size

    @torch.no_grad()
    def _decode(self, boxes: torch.Tensor | None = None, points: tuple | None = None, multimask: bool = False) -> tuple:
        """A batch of prompts -> the best mask `(B, H, W)` bool and its score `(B,)`, on the CPU."""
        coords, labels = points if points is not None else (None, None)
        with self._autocast():
            masks, scores, _ = self.predictor.predict_torch(coords, labels, boxes, multimask_output=multimask)
        best = scores.argmax(1)
        rows = torch.arange(len(best), device=best.device)
        return masks[rows, best].cpu(), scores[rows, best].float().cpu()

    def _collect(self, chunks: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
        if not chunks:
            return np.zeros((0, *self.predictor.original_size), dtype=bool), np.zeros(0, dtype=np.float32)
        return torch.cat([m for m, _ in chunks]).numpy(), torch.cat([s for _, s in chunks]).numpy()


def _as_array(values: object, width: int, what: str, layout: str) -> np.ndarray:
    """``values`` as a float32 ``(N, width)`` array, or a ValueError that says what was expected."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{what} must be numbers, an (N, {width}) array of {layout}; got {str(values)[:80]} ({err})."
        ) from None
    if array.ndim == 1 and array.size == width:
        array = array[None]
    if array.size == 0:
        return array.reshape(0, width)
    if array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"{what} must be an (N, {width}) array of {layout}; got shape {array.shape}.")
    return array


def check_boxes(boxes: object, height: int, width: int) -> np.ndarray:
    """Box prompts `(N, 4)` xyxy pixels checked against an `height` x `width` image -> `(N, 4)` float32 clipped to it.

    A box partly outside the image is clipped (SAM was trained on boxes inside their images); a box with a
    NaN or infinite value, x2 <= x1 or y2 <= y1, or no part inside the image is refused with a ValueError that
    names its index and values: boxes must be XYXY pixel corners, not XYWH or normalised coordinates.
    """
    boxes = _as_array(boxes, 4, "Boxes", "(x1, y1, x2, y2) pixel corners")
    inside, _, valid = clip_boxes(boxes, height, width)
    problems = (
        (~np.isfinite(boxes).all(1), "has a value that is not finite: every corner must be a finite number"),
        ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]), "has x2 <= x1 or y2 <= y1, so no area"),
        (~valid, f"lies entirely outside the {width}x{height} (WxH) image"),
    )
    for bad, why in problems:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"Box {i} = {boxes[i].tolist()} {why} ({int(bad.sum())} such box(es)). Boxes are XYXY pixel corners "
                "(x1, y1, x2, y2) with x1 < x2 and y1 < y2, overlapping the image: convert XYWH boxes (COCO's) with "
                "x2 = x + w, y2 = y + h, scale normalised ones by the image size, and drop the others."
            )
    return inside


def check_points(points: object, height: int, width: int) -> np.ndarray:
    """Point prompts `(N, 2)` xy pixels -> `(N, 2)` float32; a ValueError names a point that is not finite or not
    in the `height` x `width` image."""
    points = _as_array(points, 2, "Points", "(x, y) pixel coordinates")
    outside = ~np.isfinite(points).all(1) | (points < 0).any(1) | (points[:, 0] > width) | (points[:, 1] > height)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"Point {i} = {points[i].tolist()} is not a finite (x, y) pixel position inside the {width}x{height} "
            f"(WxH) image ({int(outside.sum())} such point(s)): pass pixel coordinates 0 <= x <= {width}, "
            f"0 <= y <= {height}."
        )
    return points


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes `(N, 4)` xyxy clipped to the image -> clipped boxes, `clipped` `(N,)` bool (a box moved),
    `valid` `(N,)` bool (positive width and height after clipping)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    inside = boxes.clip(0, [width, height, width, height]).astype(np.float32)
    clipped = (inside != boxes).any(1)
    valid = (inside[:, 2] > inside[:, 0]) & (inside[:, 3] > inside[:, 1])
    return inside, clipped, valid

"""SAM's box and point prompts batched per image (`SamBoxPredictor`), and the checks of prompts in pixels."""

from __future__ import annotations

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from sam.batched import ImageEmbedding, check_image, rows_per_call, sam_autocast


class SamBoxPredictor:
    """Masks for many prompts on one image: the image encoder runs once, the prompts go through the
    prompt encoder and mask decoder in batches of `chunk_size`. bf16 autocast on CUDA.

    Preprocessing and postprocessing are `segment_anything.SamPredictor`'s (ResizeLongestSide, padding,
    mask upsampling), so each mask matches `SamPredictor.predict(box=b, multimask_output=False)`. For many
    images, encode them in one call (`sam.batched.encode_images`) and `set_embedding` each in turn. On a large image
    fewer prompts go at once (`sam.batched.rows_per_call`: the masks upsampled to it stay within 1 GiB).
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
        return sam_autocast(self.device)

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
        check_image(image, self.predictor.model.image_encoder.img_size)
        with self._autocast():
            self.predictor.set_image(image)

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Use an image encoded by `sam.batched.encode_images` for the following `predict*` calls with
        `image=None`, as `set_image` would have encoded it (no encoder call here)."""
        if not isinstance(embedding, ImageEmbedding):
            raise ValueError(  # noqa: TRY004 (API: ValueError)
                f"set_embedding takes an ImageEmbedding from sam.batched.encode_images, got {type(embedding).__name__}."
            )
        encoder = self.predictor.model.prompt_encoder
        expected = (1, encoder.embed_dim, *encoder.image_embedding_size)
        if tuple(embedding.features.shape) != expected or embedding.features.device != self.device:
            raise ValueError(
                f"The embedding is {tuple(embedding.features.shape)} on {embedding.features.device}; this SAM takes "
                f"{expected} on {self.device}: encode the images with the same SAM model (encode_images(sam, images))."
            )
        self.predictor.reset_image()
        self.predictor.features = embedding.features
        self.predictor.original_size = embedding.original_size
        self.predictor.input_size = embedding.input_size
        self.predictor.is_image_set = True

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
        rows = rows_per_call(self.chunk_size, 1, self._image_size())
        chunks = [self._decode(boxes=chunk, multimask=False) for chunk in boxes.split(rows) if len(chunk)]
        return self._collect(chunks)

    def predict_refined(
        self, image: np.ndarray | None, boxes: np.ndarray
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Box prompts `(N, 4)` xyxy pixels, each decoded twice -> `(masks, scores)` of the second pass and
        `(masks, scores)` of the first (masks `(N, H, W)` bool, scores `(N,)`); boxes are checked as `predict` does.

        The first pass is `predict`'s; the second gives the mask decoder the same box plus the first pass's
        low-res logits `(1, 256, 256)` as its mask input (SAM's iterative refinement), so each second mask matches
        `SamPredictor.predict(box=b, mask_input=first_logits, multimask_output=False)`.
        """
        if image is not None:
            self.set_image(image)
        boxes = check_boxes(boxes, *self._image_size())
        boxes = torch.as_tensor(boxes, device=self.device)
        boxes = self.predictor.transform.apply_boxes_torch(boxes, self.predictor.original_size)
        first, second = [], []
        for chunk in boxes.split(rows_per_call(self.chunk_size, 1, self._image_size())):
            if len(chunk):
                masks, scores, logits = self._decode(boxes=chunk, multimask=False, logits=True)
                first.append((masks, scores))
                second.append(self._decode(boxes=chunk, multimask=False, mask_input=logits))
        return self._collect(second), self._collect(first)

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
        rows = rows_per_call(self.chunk_size, 3 if multimask else 1, self._image_size())
        chunks = [
            self._decode(points=(p, l), multimask=multimask)
            for p, l in zip(points.split(rows), labels.split(rows))
            if len(p)
        ]
        return self._collect(chunks)

    def predict_prompts(
        self,
        image: np.ndarray | None,
        points: np.ndarray,
        point_labels: np.ndarray,
        boxes: np.ndarray | None = None,
        multimask: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """N prompt sets at once -> masks `(N, H, W)` bool, scores `(N,)` (SAM's predicted IoU of each mask).

        Set i is the points `points[i]` `(P, 2)` xy pixels with labels `point_labels[i]` `(P,)` (1 foreground,
        0 background, -1 padding: SAM's "not a point", for sets with fewer points than P), plus the box
        `boxes[i]` xyxy pixels when `boxes` `(N, 4)` is given (checked and clipped as `predict` does). P may be 0
        when boxes are given. Each mask matches `SamPredictor.predict(points[i], point_labels[i], boxes[i],
        multimask)`'s most confident one.
        """
        if not isinstance(multimask, (bool, np.bool_)):
            raise ValueError(f"multimask={multimask!r} must be True or False.")  # noqa: TRY004 (API: ValueError)
        if image is not None:
            self.set_image(image)
        height, width = self._image_size()
        coords, labels = check_prompt_points(points, point_labels, height, width)
        n = len(coords)
        if boxes is not None:
            boxes = check_boxes(boxes, height, width)
            if len(boxes) != n:
                raise ValueError(f"boxes holds {len(boxes)} box(es) for {n} point set(s): give one box per set.")
            boxes = self.predictor.transform.apply_boxes_torch(
                torch.as_tensor(boxes, device=self.device), self.predictor.original_size
            )
        elif coords.shape[1] == 0 and n:
            raise ValueError("Each prompt set needs a point or a box: pass points (N, P >= 1, 2) or boxes (N, 4).")
        coords = self.predictor.transform.apply_coords_torch(
            torch.as_tensor(coords, device=self.device), self.predictor.original_size
        )
        labels = torch.as_tensor(labels, dtype=torch.int, device=self.device)
        chunks, step = [], rows_per_call(self.chunk_size, 3 if multimask else 1, self._image_size())
        for start in range(0, n, step):
            rows = slice(start, start + step)
            prompt = (coords[rows], labels[rows]) if coords.shape[1] else None
            chunks.append(
                self._decode(boxes=None if boxes is None else boxes[rows], points=prompt, multimask=multimask)
            )
        return self._collect(chunks)

    def _image_size(self) -> tuple[int, int]:
        """(H, W) of the image set; a ValueError when there is none."""
        if not self.predictor.is_image_set:
            raise ValueError("No image is set: pass an (H, W, 3) uint8 image, or call set_image(image) first.")
        return self.predictor.original_size

    @torch.no_grad()
    def _decode(
        self,
        boxes: torch.Tensor | None = None,
        points: tuple | None = None,
        multimask: bool = False,
        mask_input: torch.Tensor | None = None,
        logits: bool = False,
    ) -> tuple:
        """A batch of prompts (and `mask_input` `(B, 1, 256, 256)` logits) -> the best mask `(B, H, W)` bool and
        its score `(B,)`, on the CPU; with `logits`, also that mask's low-res logits `(B, 1, 256, 256)` on the device."""
        coords, labels = points if points is not None else (None, None)
        with self._autocast():
            masks, scores, low_res = self.predictor.predict_torch(
                coords, labels, boxes, mask_input, multimask_output=multimask
            )
        best = scores.argmax(1)
        rows = torch.arange(len(best), device=best.device)
        out = masks[rows, best].cpu(), scores[rows, best].float().cpu()
        return (*out, low_res[rows, best][:, None]) if logits else out

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


def check_prompt_points(points: object, labels: object, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Point sets `(N, P, 2)` xy pixels and labels `(N, P)` -> float32 points, int64 labels; a ValueError names a
    point outside the `height` x `width` image (as `check_points`), a wrong shape, or a label other than 1, 0, -1."""
    try:
        coords = np.asarray(points, dtype=np.float32)
        values = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"points and point_labels must be numeric arrays (N, P, 2) and (N, P) ({err}).") from None
    if coords.ndim != 3 or coords.shape[2] != 2 or values.shape != coords.shape[:2]:
        raise ValueError(
            f"points must be (N, P, 2) xy pixels and point_labels (N, P), one row per prompt set; got shapes "
            f"{coords.shape} and {values.shape}. One set of P points: add the set dimension, points[None]."
        )
    check_points(coords.reshape(-1, 2), height, width)
    bad = ~np.isin(values, (1, 0, -1))
    if bad.any():
        raise ValueError(
            f"point_labels holds {values[bad][0]:g}: each label must be 1 (foreground), 0 (background) or -1 (padding)."
        )
    return coords, values.astype(np.int64)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes `(N, 4)` xyxy clipped to the image -> clipped boxes, `clipped` `(N,)` bool (a box moved),
    `valid` `(N,)` bool (positive width and height after clipping)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    inside = boxes.clip(0, [width, height, width, height]).astype(np.float32)
    clipped = (inside != boxes).any(1)
    valid = (inside[:, 2] > inside[:, 0]) & (inside[:, 3] > inside[:, 1])
    return inside, clipped, valid

"""Checks of COCO-format files before pycocotools sees them: instance annotations and detector results.

pycocotools' C code trusts its input: a polygon holding NaN or a coordinate of 1e12 makes it allocate without bound
(NaN cast to an int) or write outside its buffers, and an RLE whose counts do not add up to height x width decodes
past the end of the mask. So every number it will rasterise is checked here first, in plain numpy, and a bad one is
refused with the file, the annotation's index and id, the field and the fix.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from datamodules.errors import DatasetError

DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")
MAX_SIDE = 1 << 15
"""The largest image side accepted (pixels); a mask is height x width bytes."""
MAX_PIXELS = 1 << 28
"""The largest image accepted (pixels): above PIL's decompression-bomb limit, which refuses such images anyway."""
MARGIN = 0.1
"""How far (as a fraction of the image's side, plus 2 pixels) a polygon or box may reach outside its image."""
MAX_POINTS = 100_000
"""Polygon points per annotation (COCO's largest have a few thousand)."""
MAX_OUTLINE_TURNS = 100
"""pycocotools allocates 5 ints per pixel of a polygon's outline: at most this many times around its image."""
RLE_DIGITS = 7
"""Characters of one compressed RLE count (5 bits each: a 32-bit count needs 7)."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_box(bbox: object) -> bool:
    """Whether ``bbox`` is a COCO box: a list of four finite numbers [x, y, width, height], width and height >= 0."""
    return (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(_is_number(v) and math.isfinite(v) for v in bbox)
        and bbox[2] >= 0
        and bbox[3] >= 0
    )


def check_detection(det: object, index: int, path: Path) -> None:
    """Raise a DatasetError naming the file, the entry and the bad value unless ``det`` is a COCO result
    ``{image_id: int, category_id: int, bbox: [x, y, w, h] finite numbers with w, h >= 0, score: finite number}``."""
    fix = (
        f"every entry needs {', '.join(DETECTION_KEYS)} with integer ids, bbox = [x, y, width, height] in pixels "
        "(finite numbers, width and height >= 0) and a finite score (the COCO results format). Fix or remove the entry."
    )
    if not isinstance(det, dict) or (missing := [key for key in DETECTION_KEYS if key not in det]):
        what = f"lacks {', '.join(missing)}" if isinstance(det, dict) else f"is a {type(det).__name__}"
        raise DatasetError(f"Detection #{index} in {path} {what} ({str(det)[:120]}); {fix}")
    problems = {
        "image_id": not _is_int(det["image_id"]),
        "category_id": not _is_int(det["category_id"]),
        "bbox": not is_box(det["bbox"]),
        "score": not _is_number(det["score"]) or not math.isfinite(det["score"]),
    }
    for key, bad in problems.items():
        if bad:
            raise DatasetError(f"Detection #{index} in {path} has {key} = {str(det[key])[:80]}; {fix}")


def check_instances(data: object, path: Path) -> None:
    """Raise a DatasetError unless ``data`` (the parsed JSON of ``path``) is a COCO instances set pycocotools can
    rasterise safely.

    Checked: "images", "annotations" and "categories" are lists; every image has an integer id and positive integer
    width and height (at most MAX_SIDE, MAX_PIXELS in all); every category an integer id; every annotation an
    integer image_id and category_id that are listed, iscrowd 0 or 1, a finite area >= 0, a bbox of four finite
    numbers (width, height >= 0) inside its image up to MARGIN, and a segmentation that is either polygons (finite
    coordinates, even count >= 6, inside the image up to MARGIN, at most MAX_POINTS points) or an RLE whose size is
    the image's and whose counts (a list of non-negative ints, or COCO's compressed string) add up to height x width.
    """
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise DatasetError(
            f"The instance annotations {path} are not a COCO-format set: the file must be a JSON object with the "
            "lists 'images', 'annotations' and 'categories'. Restore it from the dataset archive."
        )
    sizes = {}
    for index, image in enumerate(data["images"]):
        size = _image_size(image)
        if isinstance(size, str):
            raise DatasetError(
                f"Image #{index} of the instance annotations {path} ({str(image)[:120]}) {size}. Fix that entry of "
                "'images', or restore the file from the dataset archive."
            )
        sizes[image["id"]] = size
    categories = data.get("categories")
    if not isinstance(categories, list) or not all(isinstance(c, dict) and _is_int(c.get("id")) for c in categories):
        raise DatasetError(
            f"The instance annotations {path} have no valid 'categories' list: each category needs an integer 'id' "
            "(and a 'name'). Restore the file from the dataset archive."
        )
    category_ids = {c["id"] for c in categories}
    for index, ann in enumerate(data["annotations"]):
        problem = _annotation_problem(ann, sizes, category_ids)
        if problem is not None:
            field, rule = problem
            value = ann.get(field) if isinstance(ann, dict) else ann
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            raise DatasetError(
                f"Annotation #{index} (id {ann_id}) in {path} has {field} = {str(value)[:100]}: {rule}. Fix or remove "
                "that annotation, or restore the file from the dataset archive."
            )


def _image_size(image: object) -> tuple[int, int] | str:
    """(height, width) of an entry of "images", or what is wrong with it."""
    if not isinstance(image, dict) or not _is_int(image.get("id")):
        return "has no integer 'id'"
    h, w = image.get("height"), image.get("width")
    if not (_is_int(h) and _is_int(w) and 0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE and h * w <= MAX_PIXELS):
        return (
            f"has height = {str(h)[:40]}, width = {str(w)[:40]}: both must be whole numbers of pixels, 1 to "
            f"{MAX_SIDE}, at most {MAX_PIXELS} pixels in all"
        )
    return h, w


def _annotation_problem(
    ann: object, sizes: dict[int, tuple[int, int]], category_ids: set[int]
) -> tuple[str, str] | None:
    """(field, rule) of the first bad field of an annotation, or None."""
    if not isinstance(ann, dict):
        return "annotation", "each annotation must be a JSON object"
    if not _is_int(ann.get("id")):
        return "id", "every annotation needs an integer id"
    if not _is_int(ann.get("image_id")) or ann["image_id"] not in sizes:
        return "image_id", "it must be the integer id of an entry of 'images'"
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in category_ids:
        return "category_id", "it must be the integer id of an entry of 'categories'"
    if not _is_int(ann.get("iscrowd", 0)) or ann.get("iscrowd", 0) not in (0, 1):
        return "iscrowd", "it must be 0 or 1"
    area = ann.get("area")
    if not (_is_number(area) and math.isfinite(area) and area >= 0):
        return "area", "it must be a finite number >= 0 (pixels)"
    h, w = sizes[ann["image_id"]]
    if not is_box(ann.get("bbox")) or not _inside(np.asarray(ann["bbox"][:2]), np.asarray(ann["bbox"][2:]), h, w):
        return "bbox", (
            f"it must be [x, y, width, height], finite numbers with width and height >= 0, inside its {w}x{h} (WxH) "
            "image"
        )
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list):
        rule = _polygons_problem(segmentation, h, w)
    elif isinstance(segmentation, dict):
        rule = _rle_problem(segmentation, h, w)
    else:
        rule = "it must be a list of polygons [[x1, y1, x2, y2, ...], ...] or an RLE {'size': [h, w], 'counts': ...}"
    return None if rule is None else ("segmentation", rule)


def _inside(corner: np.ndarray, extent: np.ndarray, h: int, w: int) -> bool:
    """Whether the box from ``corner`` (x, y) spanning ``extent`` lies in the w x h image up to MARGIN."""
    margin = MARGIN * np.array([w, h]) + 2
    return bool(np.all(corner >= -margin) and np.all(corner + extent <= np.array([w, h]) + margin))


def _polygons_problem(polygons: list, h: int, w: int) -> str | None:
    rule = f"polygons are lists of x, y pixel coordinates (finite, an even number >= 6) inside the {w}x{h} (WxH) image"
    if not polygons or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in polygons):
        return rule
    if sum(len(p) for p in polygons) > 2 * MAX_POINTS:
        return f"{rule}, at most {MAX_POINTS} points in all"
    if not all(_is_number(v) for p in polygons for v in p):
        return rule
    points = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]
    if not all(np.isfinite(p).all() and _inside(p, np.zeros(2), h, w) for p in points):
        return rule
    outline = sum(float(np.abs(np.diff(p, axis=0, append=p[:1])).max(axis=1).sum()) for p in points)
    if outline > MAX_OUTLINE_TURNS * 2 * (h + w):
        return f"{rule}; its outline is {outline:.0f} pixels long, over {MAX_OUTLINE_TURNS} times around the image"
    return None


def _rle_problem(rle: dict, h: int, w: int) -> str | None:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and size[0] == h and size[1] == w):
        return f"an RLE's 'size' must be its image's [height, width] = [{h}, {w}], not {str(size)[:40]}"
    if isinstance(counts, list):
        if len(counts) > h * w + 1 or not all(_is_int(c) and c >= 0 for c in counts):
            return "an uncompressed RLE's 'counts' must be non-negative whole numbers (at most height x width + 1)"
        values = np.asarray(counts, dtype=np.int64)
    elif isinstance(counts, str):
        values = decode_rle_counts(counts, h * w)
        if values is None:
            return "a compressed RLE's 'counts' is not a valid COCO RLE string"
    else:
        return "an RLE's 'counts' must be a list of whole numbers or COCO's compressed string"
    if int(values.sum()) != h * w:
        return f"an RLE's counts must add up to height x width = {h * w}, not {int(values.sum())}"
    return None


def decode_rle_counts(text: str, n_pixels: int) -> np.ndarray | None:
    """The run lengths `(M,)` int64 of COCO's compressed RLE string, or None when it is not one.

    Written here (not pycocotools' ``rleFrString``) because that C function reads past the end of a truncated
    string and returns unsigned counts, wrapping negative ones: this decodes the same format (each count a
    LEB128-like run of 5-bit digits, ``'0' + digit``, 0x20 = more digits, 0x10 in the last = negative; counts after
    the second are stored as differences from the count two before) and refuses what pycocotools would misread.
    """
    if not text.isascii() or len(text) > RLE_DIGITS * (n_pixels + 1):
        return None
    c = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0 or c.min() < 0 or c.max() >= 64 or c[-1] & 0x20:
        return None
    ends = np.flatnonzero((c & 0x20) == 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > RLE_DIGITS:
        return None
    digit = np.arange(c.size) - np.repeat(starts, lengths)
    x = np.add.reduceat((c & 0x1F) << (5 * digit), starts)
    x -= np.where(c[ends] & 0x10, 1 << (5 * lengths), 0)  # the sign: pycocotools' `x |= -1 << 5 * k`
    counts = x.copy()
    for first in (1, 2):  # pycocotools: count m > 2 is stored as count m minus count m - 2
        counts[first::2] = np.cumsum(x[first::2])
    return None if counts.min() < 0 or counts.max() >= 1 << 32 else counts

"""Every mask SAM finds in your photos, with no prompt: `python -m visualize.sam_masks IMAGE [IMAGE ...] --out DIR`.

Writes, in DIR, for each image: `<image>_masks.png` (each mask in its own colour over the image, its prompt point
starred) and `<image>_masks.json` (the masks as COCO RLE with their area, XYWH box, predicted IoU, stability score,
prompt point and crop; `pycocotools.mask.decode` reads them back). Every image and option is checked before the first
mask is computed; every file is written atomically.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visualize.args import sam_masks_parser

build_parser = sam_masks_parser


def segment_everything(args: argparse.Namespace) -> None:
    # imported here, not at the top, so that --help answers before torch is imported
    import torch

    from sam.automatic import SamMaskGenerator
    from utils.argtypes import device_problem
    from utils.outputs import Outputs
    from utils.results import write_json
    from visualize.images import InputError, load_rgb, require_files
    from visualize.oneshot import load_sam_from_args
    from writers.overlays import save_overlay

    require_files(args.images)
    stems = [Path(path).stem for path in args.images]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise InputError(
            f"Images {', '.join(repeated)} share a file name, so their outputs would overwrite each other in "
            f"{args.out}: run them separately or rename them."
        )
    files = [args.out / f"{stem}_masks{end}" for stem in stems for end in (".png", ".json")]
    outputs = Outputs(files, [*args.images, args.sam_checkpoint], folder=args.out, overwrite=args.overwrite)
    if args.device != "auto" and (problem := device_problem(args.device)):
        raise InputError(f"{problem}.")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    options = {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "stability_score_offset": args.stability_score_offset,
        "box_nms_thresh": args.box_nms_thresh,
        "crop_n_layers": args.crop_n_layers,
        "min_mask_region_area": args.min_mask_region_area,
    }
    images = [np.asarray(load_rgb(path, 1)) for path in args.images]
    model = load_sam_from_args(args, device)
    generator = SamMaskGenerator(model, **options)
    for path, image in zip(args.images, images):
        try:
            generator.crop_boxes(image)
        except ValueError as err:
            raise InputError(f"Image {path}: {err}") from None
    random_weights = bool(getattr(model, "random_weights", False))
    counts = []
    with outputs:
        for path, stem, image in zip(args.images, stems, images):
            records = sorted(generator.generate(image), key=lambda r: -r["area"])  # large first: small ones visible
            masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *image.shape[:2]), bool)
            points = np.array([r["point_coords"][0] for r in records]).reshape(-1, 2)
            with outputs.file(args.out / f"{stem}_masks.png") as tmp:
                save_overlay(tmp, image, masks, np.zeros((0, 4)), points=points)
            header = {"image": str(path), "height": image.shape[0], "width": image.shape[1]}
            header |= {"sam": args.sam_model_type, "random_weights": random_weights, "options": options}
            with outputs.file(args.out / f"{stem}_masks.json") as tmp:
                write_json(tmp, {**header, "masks": [coco_record(r) for r in records]})
            counts.append(f"{Path(path).name}: {len(records)}")
    note = " (RANDOM SAM WEIGHTS: meaningless masks)" if random_weights else ""
    print(f"Wrote the masks' overlays and COCO RLE JSON to {args.out}{note}; masks per image: {', '.join(counts)}")


def coco_record(record: dict[str, Any]) -> dict[str, Any]:
    """A `SamMaskGenerator` record (binary mask) as JSON: the mask as COCO RLE, `counts` a str; numbers rounded."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(record["segmentation"].astype(np.uint8)))
    return {
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": int(record["area"]),
        "bbox": [int(v) for v in record["bbox"]],
        "predicted_iou": round(float(record["predicted_iou"]), 5),
        "stability_score": round(float(record["stability_score"]), 5),
        "point_coords": [[round(float(v), 2) for v in point] for point in record["point_coords"]],
        "crop_box": [int(v) for v in record["crop_box"]],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = sam_masks_parser().parse_args(argv)
    from visualize.args import CLI_FLAGS
    from visualize.cli import run

    return run(segment_everything, args, CLI_FLAGS | {"sam.*": "--sam-", "sam.random_weights": "--random-weights"})


if __name__ == "__main__":
    sys.exit(main())

"""Segment an object in your photos from one labelled example:
`python -m visualize.oneshot REF_IMAGE REF_MASK TARGET [TARGET ...] --out DIR`.

Writes, in DIR: `<target>_mask.png` (0 / 255) and `<target>.json` (prompt points, boxes, the kept masks' scores, a note
when nothing matched) for each target, and `oneshot.png`: the reference with its mask beside each target with its mask
and prompts. Every input is read and checked before anything is written; every file is written atomically.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from visualize.args import oneshot_parser

build_parser = oneshot_parser


def load_mask(path: str, size: tuple[int, int]) -> np.ndarray:
    """A reference mask PNG as `(H, W)` bool; `size` is its image's `(W, H)`. Read by `utils.images.read_mask`'s
    "grey" values: a grey (or grey+alpha) mask's grey band, a colour, palette or 1-bit mask's luminance.

    Raises:
        InputError: not an image, another size than the image, values other than 0/1 or 0/255, or nothing (or
            everything) marked.
    """
    from utils.images import read_mask
    from visualize.images import InputError

    if not Path(path).is_file():
        raise InputError(f"Mask {path} does not exist. Check the path.")
    values = read_mask(path, "mask", InputError, "grey")
    if values.shape[::-1] != size:
        raise InputError(
            f"Mask {path} is {values.shape[1]}x{values.shape[0]} pixels but its image is {size[0]}x{size[1]}: "
            "give the mask of that image, at its size."
        )
    found = np.unique(values)
    if not (set(found.tolist()) <= {0, 1} or set(found.tolist()) <= {0, 255}):
        shown = ", ".join(map(str, found[:8].tolist())) + (", ..." if len(found) > 8 else "")
        raise InputError(
            f"Mask {path} holds the values {shown}; a mask is 0 (background) and 1 or 255 (the object). Save it as "
            "a two-valued PNG."
        )
    mask = values > 0
    if not mask.any() or mask.all():
        what = "no pixel" if not mask.any() else "every pixel"
        raise InputError(
            f"Mask {path} marks {what} as the object: the reference needs both object and background pixels."
        )
    return mask


def load_sam_from_args(args: argparse.Namespace, device: object) -> object:
    """SAM as the options describe; with --random-weights and no SAM weights found, a random one (warned)."""
    from backbones.checksums import WeightsNotFoundError
    from sam.model import load_sam

    overrides = {
        "encoder_embed_dim": args.sam_encoder_embed_dim,
        "encoder_depth": args.sam_encoder_depth,
        "encoder_num_heads": args.sam_encoder_num_heads,
        "prompt_embed_dim": args.sam_prompt_embed_dim,
        "image_size": args.sam_image_size,
    }
    options = {"checkpoint": args.sam_checkpoint, "download": args.sam_download, "sha256": args.sam_sha256}
    try:
        model = load_sam(args.sam_model_type, **options, **overrides)
    except WeightsNotFoundError:
        if not args.random_weights:
            raise
        warnings.warn(
            f"USING A RANDOM SAM ({args.sam_model_type}, --random-weights): its masks are meaningless. For real ones "
            "give --sam-checkpoint PATH or --sam-download.",
            stacklevel=1,
        )
        model = load_sam(args.sam_model_type, random_weights=True, **overrides)
    return model.to(device)


def segment_photos(args: argparse.Namespace) -> None:
    # imported here, not at the top, so that --help answers before torch and matplotlib are imported
    from oneshot.segmenter import OneShotSegmenter
    from sam.batched import encode_images
    from sam.predictor import SamBoxPredictor
    from utils.outputs import Outputs
    from utils.results import write_json
    from visualize.cli import backbone_label, load_from_args
    from visualize.images import InputError, load_rgb
    from writers.oneshot import oneshot_figure, save_mask_png, save_oneshot_figure

    stems = [Path(t).stem for t in args.targets]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise InputError(
            f"Targets {', '.join(repeated)} share a file name, so their outputs would overwrite each other in "
            f"{args.out}: run them separately or rename them."
        )
    files = [args.out / "oneshot.png", *(args.out / f"{stem}{end}" for stem in stems for end in ("_mask.png", ".json"))]
    inputs = [args.reference, args.reference_mask, *args.targets, args.checkpoint, args.sam_checkpoint]
    outputs = Outputs(files, inputs, folder=args.out, overwrite=args.overwrite)
    backbone = load_from_args(args, [args.reference, *args.targets])
    reference = np.asarray(load_rgb(args.reference, backbone.patch_size))
    reference_mask = load_mask(args.reference_mask, (reference.shape[1], reference.shape[0]))
    targets = [np.asarray(load_rgb(path, backbone.patch_size)) for path in args.targets]
    sam = SamBoxPredictor(load_sam_from_args(args, next(backbone.parameters()).device))
    segmenter = OneShotSegmenter(backbone, sam, method=args.method, block=args.block, image_size=args.size)
    try:
        features = segmenter.reference([reference], [reference_mask])
    except ValueError as err:
        raise InputError(f"Reference {args.reference} with {args.reference_mask}: {err}") from None
    embeddings = encode_images(sam.predictor.model, targets)  # every target through SAM's encoder in batches
    results = []
    for path, image, embedding in zip(args.targets, targets, embeddings):
        try:
            results.append(segmenter.segment(features, image, embedding))
        except ValueError as err:
            raise InputError(f"Target {path}: {err}") from None
    label = backbone_label(args, backbone)
    random_sam = bool(getattr(sam.predictor.model, "random_weights", False))
    titles = [f"reference: {Path(args.reference).name}", *(Path(t).name for t in args.targets)]
    sam_label = f"SAM {args.sam_model_type}" + (" with RANDOM WEIGHTS" if random_sam else "")
    fig = oneshot_figure(
        [(reference, reference_mask)],
        [(image, r.mask, r.points, r.point_labels, r.boxes) for image, r in zip(targets, results)],
        titles,
        f"{args.method}: {label} + {sam_label}",
    )
    with outputs:  # the masks, their JSON and the figure appear together, or none of them
        for path, stem, result in zip(args.targets, stems, results):
            with outputs.file(args.out / f"{stem}_mask.png") as tmp:
                save_mask_png(result.mask, tmp)
            with outputs.file(args.out / f"{stem}.json") as tmp:
                write_json(tmp, target_record(args, path, stem, result, label, backbone.random_weights or random_sam))
        with outputs.file(args.out / "oneshot.png") as tmp:
            save_oneshot_figure(tmp, fig, args.dpi)
    empty = [Path(p).name for p, r in zip(args.targets, results) if not r.mask.any()]
    print(
        f"Wrote {len(results)} mask(s), their JSON and oneshot.png to {args.out}"
        + (f"; no match in {', '.join(empty)} (empty masks, see their JSON)" if empty else "")
    )


def target_record(
    args: argparse.Namespace, path: str, stem: str, result: object, backbone: str, random_weights: bool
) -> dict[str, object]:
    """What `<target>.json` holds: the inputs, the prompts in pixels, the kept masks' scores, and why a mask is empty."""
    return {
        "target": str(path),
        "reference": str(args.reference),
        "reference_mask": str(args.reference_mask),
        "method": args.method,
        "backbone": backbone,
        "sam": args.sam_model_type,
        "random_weights": random_weights,
        "mask": f"{stem}_mask.png",
        "mask_pixels": int(result.mask.sum()),
        "points": [
            {"x": round(float(x), 2), "y": round(float(y), 2), "label": "positive" if lab == 1 else "negative"}
            for (x, y), lab in zip(result.points, result.point_labels)
        ],
        "boxes": [[round(float(v), 2) for v in box] for box in result.boxes],
        "scores": [round(float(s), 5) for s in result.scores],
        "note": result.note,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = oneshot_parser().parse_args(argv)
    from visualize.args import CLI_FLAGS
    from visualize.cli import run

    return run(segment_photos, args, CLI_FLAGS | {"sam.*": "--sam-", "sam.random_weights": "--random-weights"})


if __name__ == "__main__":
    sys.exit(main())

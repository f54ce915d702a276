"""Patch correspondences between two images: `python -m visualize.match IMAGE_A IMAGE_B --out match.png`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from visualize.args import match_parser

build_parser = match_parser


def make_match_figure(args: argparse.Namespace) -> None:
    # imported here, not at the top, so that --help answers before torch and matplotlib are imported
    from pathlib import Path

    import numpy as np

    from utils.outputs import Outputs
    from utils.results import write_json
    from visualize.cli import backbone_label, check_figure_path, load_from_args, load_inputs, save_figure
    from visualize.features import patch_maps
    from visualize.figures import match_figure
    from visualize.images import InputError
    from visualize.matching import mutual_matches, patch_centres, spread_matches
    from visualize.pca_maps import foreground_masks

    check_figure_path(args.out)
    if args.num_pairs < 1:
        raise InputError(f"--num-pairs {args.num_pairs} must be at least 1.")
    json_path = args.json or args.out.with_suffix(".json")
    if json_path.absolute() == args.out.absolute():
        raise InputError(f"--json {json_path} is also --out's figure: give the pairs another file.")
    outputs = Outputs(
        {args.out: "--out", json_path: "--json" if args.json else "--out"},
        [args.image_a, args.image_b, args.checkpoint],
        overwrite=args.overwrite,
    )
    backbone = load_from_args(args, [args.image_a, args.image_b])
    images, inputs = load_inputs([args.image_a, args.image_b], args.size, backbone.patch_size)
    try:
        feat_a, feat_b = patch_maps(backbone, inputs, args.block)
    except ValueError as err:
        raise InputError(str(err)) from None
    masks = foreground_masks([feat_a, feat_b], args.threshold, args.sign) if args.foreground else [None, None]
    matches = mutual_matches(feat_a, feat_b, *masks)
    if len(matches) == 0:
        raise InputError(
            f"No mutual nearest neighbours between {args.image_a} and {args.image_b}; try without --foreground or a lower --threshold."
        )
    kept = spread_matches(matches, feat_a, feat_b, args.num_pairs, args.seed)
    points = [
        patch_centres(index, tuple(feat.shape[1:]), (img.height, img.width)).numpy()
        for index, feat, img in ((kept.index_a, feat_a, images[0]), (kept.index_b, feat_b, images[1]))
    ]
    titles = (Path(args.image_a).name, Path(args.image_b).name)
    suptitle = f"{backbone_label(args, backbone)}: {len(kept)} of {len(matches)} mutual nearest neighbours"
    fig = match_figure(np.asarray(images[0]), np.asarray(images[1]), *points, titles, suptitle)
    record = {
        "image_a": str(args.image_a),
        "image_b": str(args.image_b),
        "backbone": backbone_label(args, backbone),
        "random_weights": backbone.random_weights,
        "block": args.block % backbone.n_blocks,
        "mutual_matches": len(matches),
        "pairs": [
            {
                "a": [round(float(x), 2) for x in pa],
                "b": [round(float(x), 2) for x in pb],
                "similarity": round(float(s), 5),
            }
            for pa, pb, s in zip(*points, kept.similarity)
        ],
    }
    with outputs:
        with outputs.file(args.out) as tmp:
            save_figure(fig, tmp, args.dpi)
        with outputs.file(json_path) as tmp:
            write_json(tmp, record)
    print(f"Wrote {args.out} and {json_path} ({len(kept)} of {len(matches)} mutual matches)")


def main(argv: Sequence[str] | None = None) -> int:
    args = match_parser().parse_args(argv)
    from visualize.cli import run

    return run(make_match_figure, args)


if __name__ == "__main__":
    sys.exit(main())

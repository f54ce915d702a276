"""PCA maps of patch features: `python -m visualize.pca IMAGE [IMAGE ...] --backbone dinov2_vits14 --out pca.png`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from visualize.args import pca_parser

build_parser = pca_parser


def make_pca_figure(args: argparse.Namespace) -> None:
    # imported here, not at the top, so that --help answers before torch and matplotlib are imported
    import numpy as np

    from utils.outputs import Outputs
    from visualize.cli import backbone_label, check_figure_path, load_from_args, load_inputs, save_figure
    from visualize.features import patch_maps
    from visualize.figures import pca_figure
    from visualize.images import InputError
    from visualize.pca_maps import pca_rgb

    check_figure_path(args.out)
    features = [args.out.with_name(f"{args.out.stem}_{k}_{Path(path).stem}.npy") for k, path in enumerate(args.images)]
    outputs = Outputs(
        [args.out, *(features if args.save_features else [])], [*args.images, args.checkpoint], overwrite=args.overwrite
    )
    backbone = load_from_args(args, args.images)
    images, inputs = load_inputs(args.images, args.size, backbone.patch_size)
    try:
        maps = pca_rgb(
            patch_maps(backbone, inputs, args.block), None if args.keep_background else args.threshold, args.sign
        )
    except ValueError as err:
        raise InputError(str(err)) from None
    titles = [f"{Path(p).name} ({x.shape[2]}x{x.shape[1]})" for p, x in zip(args.images, inputs)]
    block = args.block % backbone.n_blocks
    fig = pca_figure(
        [np.asarray(img) for img in images],
        [m.numpy() for m in maps.rgb],
        titles,
        f"{backbone_label(args, backbone)}, block {block}",
    )
    with outputs:
        with outputs.file(args.out) as tmp:
            save_figure(fig, tmp, args.dpi)
        if args.save_features:
            for target, components in zip(features, maps.components):
                with outputs.file(target) as tmp:
                    np.save(tmp, components.numpy())
    print(f"Wrote {args.out}")
    if args.save_features:
        for target, components in zip(features, maps.components):
            print(f"Wrote {target} {tuple(components.shape)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = pca_parser().parse_args(argv)
    from visualize.cli import run

    return run(make_pca_figure, args)


if __name__ == "__main__":
    sys.exit(main())

"""PCA maps of patch features: `python -m visualize.pca IMAGE [IMAGE ...] --backbone dinov2_vits14 --out pca.png`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.atomic import atomic_write
from visualize.cli import add_common_args, backbone_label, check_figure_path, load_from_args, load_inputs, run, save_figure
from visualize.features import patch_maps
from visualize.figures import pca_figure
from visualize.images import InputError
from visualize.pca_maps import pca_rgb


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m visualize.pca",
        description="The first three PCA components of each image's patch features as RGB, beside the image. "
        "One PCA is fitted over the patches of all images, so the same part gets the same colour everywhere.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--out", type=Path, default=Path("pca.png"), help="figure file (.png, .pdf, .svg; default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=0.0, help="background removal: keep patches whose first-component score is above it (default: %(default)s)")
    parser.add_argument("--sign", choices=("auto", "positive", "negative"), default="auto", help="orientation of the first component; auto makes the image borders background (default)")
    parser.add_argument("--keep-background", action="store_true", help="no background removal: the PCA of all patches")
    parser.add_argument("--save-features", action="store_true", help="also write each image's 3 components (h, w, 3), NaN on background, as OUT_<k>_<image>.npy")
    add_common_args(parser)
    return parser


def make_pca_figure(args: argparse.Namespace) -> None:
    check_figure_path(args.out)
    backbone = load_from_args(args, args.images)
    images, inputs = load_inputs(args.images, args.size, backbone.patch_size)
    try:
        maps = pca_rgb(patch_maps(backbone, inputs, args.block), None if args.keep_background else args.threshold, args.sign)
    except ValueError as err:
        raise InputError(str(err)) from None
    titles = [f"{Path(p).name} ({x.shape[2]}x{x.shape[1]})" for p, x in zip(args.images, inputs)]
    block = args.block % backbone.n_blocks
    fig = pca_figure([np.asarray(img) for img in images], [m.numpy() for m in maps.rgb], titles, f"{backbone_label(args)}, block {block}")
    save_figure(fig, args.out, args.dpi)
    print(f"Wrote {args.out}")
    if args.save_features:
        for k, (path, components) in enumerate(zip(args.images, maps.components)):
            target = args.out.with_name(f"{args.out.stem}_{k}_{Path(path).stem}.npy")
            atomic_write(target, lambda tmp, c=components: np.save(tmp, c.numpy()))
            print(f"Wrote {target} {tuple(components.shape)}")


def main(argv: Sequence[str] | None = None) -> int:
    return run(make_pca_figure, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

"""An interactive page of patch features: `python -m visualize.explore IMAGE [IMAGE ...] --out explore.html`.

One self-contained HTML file (``visualize.explore_page``): point at a patch of any image to see its cosine
similarity over every image and each image's best match; a toggle shows visualize.pca's maps.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from visualize.args import explore_parser

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

build_parser = explore_parser


def reduce_features(maps: Sequence[Tensor], max_dims: int) -> tuple[list[np.ndarray], float | None]:
    """Patch maps ``(C, h_i, w_i)`` -> ``(h_i, w_i, d)`` float64 arrays, ``d = C`` when ``C <= max_dims``, else their
    projections on the first ``max_dims`` principal components fitted over the patches of all maps (fewer when there
    are fewer patches); and the fraction of the variance those components keep (None when nothing was reduced).
    """
    from sklearn.decomposition import PCA

    from visualize.pca_maps import _flatten, _split

    if max_dims < 1:
        raise ValueError(f"max_dims={max_dims}: give a positive number of dimensions.")
    patches, grids = _flatten(maps)
    if patches.shape[1] <= max_dims:
        return [m.double().numpy() for m in _split(patches, grids)], None
    pca = PCA(n_components=min(max_dims, len(patches)), random_state=0).fit(patches)
    # projected without centring: the page's cosine similarities are then those of the features themselves,
    # restricted to the kept components, not those of features centred on the mean of these particular images
    reduced = patches @ pca.components_.T
    return [m.double().numpy() for m in _split(reduced, grids)], float(pca.explained_variance_ratio_.sum())


def make_explore_page(args: argparse.Namespace) -> None:
    # imported here, not at the top, so that --help answers before torch and scikit-learn are imported
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from utils.atomic import write_text
    from utils.outputs import Outputs
    from visualize.cli import backbone_label, load_from_args, load_inputs
    from visualize.explore_page import encode_features, image_data_url, render_page
    from visualize.features import patch_maps
    from visualize.images import InputError
    from visualize.pca_maps import pca_rgb

    outputs = Outputs([args.out], [*args.images, args.checkpoint], overwrite=args.overwrite)
    backbone = load_from_args(args, args.images)
    images, inputs = load_inputs(args.images, args.size, backbone.patch_size)
    try:
        maps = patch_maps(backbone, inputs, args.block)
        pca = pca_rgb(maps, args.threshold, args.sign)
    except ValueError as err:
        raise InputError(str(err)) from None
    features, kept = reduce_features(maps, args.max_dims)
    channels, dims = maps[0].shape[0], features[0].shape[-1]
    reduction = (
        f"{channels} channels, reduced by PCA to {dims} (fitted over all {sum(f.shape[0] * f.shape[1] for f in features)}"
        f" patches), keeping {100 * kept:.1f}% of the variance"
        if kept is not None
        else f"{channels} channels"
    )
    print(f"Features: {reduction}.")
    block = args.block % backbone.n_blocks
    label = backbone_label(args, backbone)
    entries = []
    for path, image, x, feature, rgb in zip(args.images, images, inputs, features, pca.rgb):
        height, width = x.shape[1:]
        photo = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))
        entries.append(
            {
                "name": Path(path).name,
                "rows": feature.shape[0],
                "cols": feature.shape[1],
                "width": width,
                "height": height,
                "photo": image_data_url(photo, "JPEG"),
                "pca": image_data_url((255 * rgb.numpy()).round().astype(np.uint8), "PNG"),
                "features": encode_features(feature),
            }
        )
    summary = (
        f"{label}, block {block}, patch {backbone.patch_size} px, shorter side {args.size} px; patch features: "
        f"{reduction}, embedded as fp16. PCA maps as visualize.pca (--threshold {args.threshold}, --sign {args.sign})."
    )
    page = render_page(
        {
            "backbone": label,
            "random_weights": bool(backbone.random_weights),
            "block": block,
            "patch": backbone.patch_size,
            "dims": dims,
            "kept_variance": kept,
            "summary": summary,
            "images": entries,
        }
    )
    with outputs, outputs.file(args.out) as tmp:
        write_text(tmp, page)
    print(f"Wrote {args.out} ({len(page) / 1e6:.2f} MB, {len(entries)} image(s), {dims}-dim fp16 features)")


def main(argv: Sequence[str] | None = None) -> int:
    args = explore_parser().parse_args(argv)
    from visualize.cli import run

    return run(make_explore_page, args)


if __name__ == "__main__":
    sys.exit(main())

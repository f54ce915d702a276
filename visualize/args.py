"""The visualisation CLIs' command lines, built without importing torch, timm or matplotlib.

``python -m visualize.pca --help`` answers from here in a fraction of a second; the tools import the heavy
libraries only once the arguments are parsed.

Longer than 300 lines: one parser per CLI, kept in one torch-free module so that every --help answers at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.argtypes import finite_float, non_negative_int, positive_int
from utils.outputs import OVERWRITE_HELP

BACKBONE_CHOICES: tuple[str, ...] = (
    *(f"dinov2_vit{size}14{reg}" for size in "sblg" for reg in ("", "_reg")),
    *(f"dinov3_vit{size}16" for size in "sbl"),
)
"""``backbones.BACKBONE_NAMES``, spelt out here because importing ``backbones`` imports torch (a test checks they agree)."""

CLI_FLAGS = {"random_fallback": "--random-weights"}
"""Backbone options whose flag differs from ``--<name>`` (for ``utils.errors.cli_style``)."""


def add_common_args(
    parser: argparse.ArgumentParser,
    size: tuple[int, str] = (448, "shorter image side in pixels, a multiple of the patch size"),
    random_weights: str = "no weights found: warn loudly and use random ones (the figure then says RANDOM WEIGHTS)",
) -> None:
    """The backbone options of the Hydra backbone config, plus image size, block, device and ``--overwrite``.

    ``size``: the default of ``--size`` and what it means to this tool; ``random_weights``: what ``--random-weights``
    does in this tool."""
    group = parser.add_argument_group("backbone (as configs/backbone)")
    group.add_argument(
        "--backbone",
        default="dinov2_vits14",
        choices=BACKBONE_CHOICES,
        metavar="NAME",
        help=f"official hub name, one of {', '.join(BACKBONE_CHOICES)} (default: %(default)s)",
    )
    group.add_argument("--checkpoint", help="an official *_pretrain.pth file; default: the torch.hub cache")
    group.add_argument("--download", action="store_true", help="allow downloading the official weights")
    group.add_argument("--sha256", help="the weights file's expected SHA-256 (else a FILE.sha256 beside it is checked)")
    group.add_argument("--embed-dim", type=positive_int, help="architecture override for small models")
    group.add_argument("--depth", type=positive_int, help="architecture override for small models")
    group.add_argument("--num-heads", type=positive_int, help="architecture override for small models")
    group.add_argument("--random-weights", action="store_true", help=random_weights)
    parser.add_argument("--size", type=positive_int, default=size[0], help=f"{size[1]} (default: %(default)s)")
    parser.add_argument(
        "--block", type=int, default=-1, help="block whose normed patch tokens are used; -1 = last (default)"
    )
    parser.add_argument("--dpi", type=positive_int, default=100, help="figure resolution (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def add_background_args(parser: argparse.ArgumentParser, foreground_help: str | None = None) -> None:
    """visualize.pca's background removal (`--threshold`, `--sign`), shared by every tool that shows PCA maps or
    keeps foreground patches; with ``foreground_help``, also the `--foreground` switch that turns it on."""
    if foreground_help is not None:
        parser.add_argument("--foreground", action="store_true", help=foreground_help)
    parser.add_argument(
        "--threshold",
        type=finite_float,
        default=0.0,
        help="background removal: keep patches whose first PCA component is above it (default: %(default)s)",
    )
    parser.add_argument(
        "--sign",
        choices=("auto", "positive", "negative"),
        default="auto",
        help="orientation of the first component; auto makes the image borders background (default)",
    )


def pca_parser() -> argparse.ArgumentParser:
    """``python -m visualize.pca``'s arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m visualize.pca",
        description="The first three PCA components of each image's patch features as RGB, beside the image. "
        "One PCA is fitted over the patches of all images, so the same part gets the same colour everywhere.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument(
        "--out", type=Path, default=Path("pca.png"), help="figure file (.png, .pdf, .svg; default: %(default)s)"
    )
    add_background_args(parser)
    parser.add_argument("--keep-background", action="store_true", help="no background removal: the PCA of all patches")
    parser.add_argument(
        "--save-features",
        action="store_true",
        help="also write each image's 3 components (h, w, 3), NaN on background, as OUT_<k>_<image>.npy",
    )
    add_common_args(parser)
    return parser


def match_parser() -> argparse.ArgumentParser:
    """``python -m visualize.match``'s arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m visualize.match",
        description="Mutual nearest neighbours ('best buddies') of patch features by cosine similarity, "
        "reduced to well-spread pairs (k-means over the matched descriptors, the strongest pair per cluster).",
    )
    parser.add_argument("image_a", metavar="IMAGE_A")
    parser.add_argument("image_b", metavar="IMAGE_B")
    parser.add_argument("--out", type=Path, default=Path("match.png"), help="figure file (default: %(default)s)")
    parser.add_argument(
        "--json", type=Path, help="the pairs in pixel coordinates with their similarity (default: OUT with .json)"
    )
    parser.add_argument("--num-pairs", type=positive_int, default=20, help="pairs to keep (default: %(default)s)")
    add_background_args(parser, "match foreground patches only (first PCA component, as visualize.pca)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="k-means seed (default: %(default)s)")
    add_common_args(parser)
    return parser


SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")


def oneshot_parser() -> argparse.ArgumentParser:
    """``python -m visualize.oneshot``'s arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m visualize.oneshot",
        description="Segment an object in your photos from one labelled example: DINOv2 patch matches between the "
        "reference (inside its mask) and each target become SAM prompts (points and boxes), SAM's masks are scored "
        "against the reference and the good ones merged. No training.",
    )
    parser.add_argument("reference", metavar="REF_IMAGE")
    parser.add_argument("reference_mask", metavar="REF_MASK", help="PNG mask of REF_IMAGE's size: 0/1 or 0/255")
    parser.add_argument("targets", nargs="+", metavar="TARGET")
    parser.add_argument("--out", type=Path, default=Path("oneshot"), help="output folder (default: %(default)s)")
    parser.add_argument(
        "--method",
        choices=("matcher", "persam"),
        default="matcher",
        help="matcher: matched patches -> clustered points and boxes, scored masks (default); persam: the "
        "similarity map's best and worst points",
    )
    sam = parser.add_argument_group("SAM (as the sam config of head=sam_box)")
    sam.add_argument("--sam-model-type", choices=SAM_MODEL_TYPES, default="vit_h", help="(default: %(default)s)")
    sam.add_argument("--sam-checkpoint", help="sam_vit_{b,l,h}_*.pth; default: the torch.hub cache")
    sam.add_argument("--sam-download", action="store_true", help="allow downloading the official SAM weights")
    sam.add_argument("--sam-sha256", help="the SAM file's expected SHA-256")
    for name in ("encoder-embed-dim", "encoder-depth", "encoder-num-heads", "prompt-embed-dim", "image-size"):
        sam.add_argument(f"--sam-{name}", type=positive_int, help="architecture override for small SAM models")
    add_common_args(
        parser,
        size=(518, "longer side of the DINOv2 input in pixels"),
        random_weights="no weights found (backbone or SAM): warn loudly and use random ones (a pipeline check)",
    )
    return parser


def sam_masks_parser() -> argparse.ArgumentParser:
    """``python -m visualize.sam_masks``'s arguments (the mask options are SamAutomaticMaskGenerator's)."""
    parser = argparse.ArgumentParser(
        prog="python -m visualize.sam_masks",
        description="Every mask SAM finds in your photos, with no prompt: a grid of point prompts (optionally also "
        "over crops of the image), masks filtered by SAM's predicted IoU and their stability, duplicates removed by "
        "box NMS, the same masks as segment_anything's SamAutomaticMaskGenerator. Writes, per image, "
        "<image>_masks.png (the masks in colours over the image) and <image>_masks.json (COCO RLE masks and scores).",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--out", type=Path, default=Path("sam_masks"), help="output folder (default: %(default)s)")
    masks = parser.add_argument_group("automatic masks (as SamAutomaticMaskGenerator)")
    masks.add_argument(
        "--points-per-side", type=positive_int, default=32, help="point grid per side (default: %(default)s)"
    )
    masks.add_argument(
        "--points-per-batch", type=positive_int, default=256, help="prompts per decoder call (default: %(default)s)"
    )
    masks.add_argument(
        "--pred-iou-thresh",
        type=finite_float,
        default=0.88,
        help="keep masks whose predicted IoU is above it, in [0, 1]; 0: no filter (default: %(default)s)",
    )
    masks.add_argument(
        "--stability-score-thresh",
        type=finite_float,
        default=0.95,
        help="keep masks whose stability score is at least it, in [0, 1]; 0: no filter (default: %(default)s)",
    )
    masks.add_argument(
        "--stability-score-offset",
        type=finite_float,
        default=1.0,
        help="logit offset of the stability score (default: %(default)s)",
    )
    masks.add_argument(
        "--box-nms-thresh", type=finite_float, default=0.7, help="box IoU of duplicates (default: %(default)s)"
    )
    masks.add_argument(
        "--crop-n-layers",
        type=non_negative_int,
        default=0,
        help="also run on 2x2, 4x4, ... crops, this many layers of them (default: %(default)s)",
    )
    masks.add_argument(
        "--min-mask-region-area",
        type=non_negative_int,
        default=0,
        help="remove holes and islands smaller than this many pixels; 0: off (default: %(default)s)",
    )
    sam = parser.add_argument_group("SAM (as the sam config of head=sam_box)")
    sam.add_argument("--sam-model-type", choices=SAM_MODEL_TYPES, default="vit_h", help="(default: %(default)s)")
    sam.add_argument("--sam-checkpoint", help="sam_vit_{b,l,h}_*.pth; default: the torch.hub cache")
    sam.add_argument("--sam-download", action="store_true", help="allow downloading the official SAM weights")
    sam.add_argument("--sam-sha256", help="the SAM file's expected SHA-256")
    for name in ("encoder-embed-dim", "encoder-depth", "encoder-num-heads", "prompt-embed-dim", "image-size"):
        sam.add_argument(f"--sam-{name}", type=positive_int, help="architecture override for small SAM models")
    sam.add_argument(
        "--random-weights",
        action="store_true",
        help="no SAM weights found: warn loudly and use random ones (a pipeline check; the masks are meaningless)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return parser


def explore_parser() -> argparse.ArgumentParser:
    """``python -m visualize.explore``'s arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m visualize.explore",
        description="One self-contained HTML page (no server, no network) to explore patch features: point at a patch "
        "of any image to see its cosine similarity over every image, each image's best match (and whether it is "
        "mutual), and the PCA maps of visualize.pca. Open it in any browser.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--out", type=Path, default=Path("explore.html"), help="HTML file (default: %(default)s)")
    parser.add_argument(
        "--max-dims",
        type=positive_int,
        default=128,
        help="wider features are projected on their first MAX_DIMS principal components (fitted over the patches "
        "of all images) before they are embedded, to keep the page small (default: %(default)s)",
    )
    add_background_args(parser)
    add_common_args(parser, size=(448, "shorter image side in pixels, a multiple of the patch size"))
    return parser


def token_grid(text: str) -> tuple[int, int]:
    """``--tokens WxH`` -> ``(W, H)`` patch tokens, each side at least 2 (one token per side leaves nothing to compare)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a token grid: give WIDTHxHEIGHT in tokens, e.g. 80x60")
    width, height = (int(p) for p in parts)
    if width < 2 or height < 2:
        raise argparse.ArgumentTypeError(
            f"{text!r} has a side under 2 tokens: give at least 2 tokens on each side, e.g. 80x60 (the default)"
        )
    return width, height


def backbone_checkpoint(text: str) -> tuple[str, str]:
    """``--checkpoints NAME=PATH`` -> ``(NAME, PATH)``, NAME one of ``BACKBONE_CHOICES``."""
    name, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH, e.g. dinov2_vits14=dinov2_vits14_pretrain.pth")
    if name not in BACKBONE_CHOICES:
        raise argparse.ArgumentTypeError(
            f"{name!r} in {text!r} is not a backbone: use one of {', '.join(BACKBONE_CHOICES)}"
        )
    return name, path


def compare_parser() -> argparse.ArgumentParser:
    """``python -m visualize.compare``'s arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m visualize.compare",
        description="Several backbones' PCA maps of one image side by side (first three components as RGB), every "
        "backbone on the same token grid: the image is resized to exactly WIDTH*patch x HEIGHT*patch pixels "
        "(1120x840 for patch 14, 1280x960 for patch 16 at 80x60 tokens). By default the grid has about 80x60 = 4800 "
        "tokens at the image's own aspect ratio (a square photograph: 69x69). A --tokens grid whose aspect ratio is "
        "more than 25%% off the image's is refused (the image would be visibly squashed); crop the image or pick a "
        "grid of its shape. One backbone is in memory at a time, batch of one, no gradients.",
    )
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument(
        "--backbones",
        nargs="+",
        required=True,
        choices=BACKBONE_CHOICES,
        metavar="NAME",
        help=f"official hub names, in panel order, each once: {', '.join(BACKBONE_CHOICES)}",
    )
    parser.add_argument("--out", type=Path, default=Path("compare.png"), help="figure file (default: %(default)s)")
    parser.add_argument(
        "--tokens",
        type=token_grid,
        metavar="WxH",
        help="token grid, width x height, the same for every backbone (default: about 80x60 = 4800 tokens at the "
        "image's aspect ratio, e.g. 80x60 for a 4:3 photograph, 69x69 for a square one)",
    )
    add_background_args(
        parser, "black out background patches by the first PCA component (as visualize.pca); default: all patches"
    )
    parser.add_argument(
        "--title", default="", help="text put above the figure's own title (e.g. where weights came from)"
    )
    group = parser.add_argument_group("backbones (as configs/backbone, applied to every backbone)")
    group.add_argument(
        "--checkpoints",
        nargs="+",
        type=backbone_checkpoint,
        default=[],
        metavar="NAME=PATH",
        help="an official *_pretrain.pth file per backbone; default: the torch.hub cache",
    )
    group.add_argument("--download", action="store_true", help="allow downloading the official weights")
    for name in ("embed-dim", "depth", "num-heads"):
        group.add_argument(
            f"--{name}", type=positive_int, help="architecture override for small models (all backbones)"
        )
    group.add_argument(
        "--random-weights",
        action="store_true",
        help="a backbone with no weights found: warn loudly and use random ones (its panel then says RANDOM WEIGHTS)",
    )
    group.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="float32: bf16 autocast on CUDA, float32 on the CPU (default); bfloat16/float16: weights and compute in it",
    )
    parser.add_argument(
        "--block", type=int, default=-1, help="block whose normed patch tokens are used; -1 = last (default)"
    )
    parser.add_argument("--dpi", type=positive_int, default=100, help="figure resolution (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return parser

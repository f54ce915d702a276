"""What the visualisation CLIs share: backbone options, devices, image loading, atomic outputs, error reporting."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from backbones import BACKBONE_NAMES, CheckpointError, FrozenBackbone, load_backbone
from utils.atomic import atomic_write
from visualize.images import InputError, input_size, load_rgb, require_files, snap_to_patches, to_input

USER_ERRORS = (InputError, CheckpointError)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The backbone options of the Hydra backbone config, plus image size, block and device."""
    group = parser.add_argument_group("backbone (as configs/backbone)")
    group.add_argument("--backbone", default="dinov2_vits14", choices=BACKBONE_NAMES, metavar="NAME", help="official hub name (default: %(default)s)")
    group.add_argument("--checkpoint", help="an official *_pretrain.pth file; default: the torch.hub cache")
    group.add_argument("--download", action="store_true", help="allow downloading the official weights")
    group.add_argument("--sha256", help="expected SHA-256 of a downloaded file")
    group.add_argument("--embed-dim", type=int, help="architecture override for small models")
    group.add_argument("--depth", type=int, help="architecture override for small models")
    group.add_argument("--num-heads", type=int, help="architecture override for small models")
    group.add_argument("--random-weights", action="store_true", help="no weights found: warn loudly and use random ones (pictures are then meaningless)")
    parser.add_argument("--size", type=int, default=448, help="shorter image side in pixels, a multiple of the patch size (default: %(default)s)")
    parser.add_argument("--block", type=int, default=-1, help="block whose normed patch tokens are used; -1 = last (default)")
    parser.add_argument("--dpi", type=int, default=100, help="figure resolution (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def load_from_args(args: argparse.Namespace, image_paths: list[str]) -> FrozenBackbone:
    """The frozen backbone the options describe, on the chosen device, once the image paths are checked."""
    require_files(image_paths)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise InputError(f"--device {args.device!r} is not a device; use cpu, cuda or cuda:N.") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {args.device} was asked for but no CUDA GPU is available; use --device cpu.")
    backbone = load_backbone(
        args.backbone,
        checkpoint=args.checkpoint,
        download=args.download,
        random_fallback=args.random_weights,
        sha256=args.sha256,
        embed_dim=args.embed_dim,
        depth=args.depth,
        num_heads=args.num_heads,
    )
    return backbone.to(device)


def backbone_label(args: argparse.Namespace) -> str:
    """How figures name the backbone: its checkpoint file when one was given, else its hub name."""
    return Path(args.checkpoint).name if args.checkpoint else args.backbone


def load_inputs(paths: Sequence[str], short_side: int, patch_size: int) -> tuple[list[Image.Image], list[Tensor]]:
    """The RGB images and their normalised inputs ``(3, H, W)``: shorter side ``short_side`` (snapped to the patch size)."""
    short_side = snap_to_patches(short_side, patch_size)
    images = [load_rgb(path, patch_size) for path in paths]
    inputs = [to_input(img, input_size(img.width, img.height, short_side, patch_size)) for img in images]
    return images, inputs


def check_figure_path(path: Path) -> None:
    """InputError unless matplotlib can write a figure of ``path``'s type."""
    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise InputError(f"Cannot write a figure to {path}: use one of the suffixes {', '.join('.' + f for f in sorted(formats))}.")


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> None:
    """Save a figure atomically; the format follows the suffix."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lower().lstrip("."), dpi=dpi, bbox_inches="tight"))


def run(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run ``main``; a user error prints one paragraph (no traceback) and returns 2."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except USER_ERRORS as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    return 0

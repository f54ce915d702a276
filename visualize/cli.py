"""What the visualisation CLIs share once their arguments are parsed: devices, backbone and image loading, atomic
outputs, error reporting (the arguments themselves are in ``visualize.args``, which imports no torch)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from backbones import FrozenBackbone, load_backbone
from utils.argtypes import device_problem
from utils.atomic import atomic_write
from utils.errors import cli_exit_code, cli_style
from visualize.args import CLI_FLAGS
from visualize.images import InputError, input_size, load_rgb, require_files, snap_to_patches, to_input


def load_from_args(args: argparse.Namespace, image_paths: list[str]) -> FrozenBackbone:
    """The frozen backbone the options describe, on the chosen device, once the image paths are checked."""
    require_files(image_paths)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif problem := device_problem(args.device):
        raise InputError(f"{problem}.")
    else:
        device = torch.device(args.device)
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


def backbone_label(args: argparse.Namespace, backbone: FrozenBackbone) -> str:
    """How figures name the backbone: its checkpoint file when one was given, else its hub name; and RANDOM WEIGHTS
    when no weights were found (``--random-weights``), so that such a figure never passes for real features."""
    name = Path(args.checkpoint).name if args.checkpoint else args.backbone
    return f"{name} with RANDOM WEIGHTS (meaningless features)" if backbone.random_weights else name


def load_inputs(paths: Sequence[str], short_side: int, patch_size: int) -> tuple[list[Image.Image], list[Tensor]]:
    """The RGB images and their normalised inputs ``(3, H, W)``: shorter side ``short_side`` (snapped to the patch size)."""
    short_side = snap_to_patches(short_side, patch_size)
    images = [load_rgb(path, patch_size) for path in paths]
    sizes = [input_size(img.width, img.height, short_side, patch_size) for img in images]
    for path, (height, width) in zip(paths, sizes):
        # the same bound as for decoding an image: past it, the inputs alone take gigabytes
        if height * width > Image.MAX_IMAGE_PIXELS:
            raise InputError(
                f"--size {short_side} makes {path} a {width}x{height} input, over Image.MAX_IMAGE_PIXELS = "
                f"{Image.MAX_IMAGE_PIXELS} pixels: give a smaller --size (default 448)."
            )
    inputs = [to_input(img, size) for img, size in zip(images, sizes)]
    return images, inputs


def check_figure_path(path: Path) -> None:
    """InputError unless matplotlib can write a figure of ``path``'s type (`utils.outputs.Outputs` checks the path)."""
    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise InputError(
            f"Cannot write a figure to {path}: use one of the suffixes {', '.join('.' + f for f in sorted(formats))}."
        )


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> None:
    """Save a figure atomically; the format follows the suffix."""
    atomic_write(
        path, lambda tmp: fig.savefig(tmp, format=path.suffix.lower().lstrip("."), dpi=dpi, bbox_inches="tight")
    )


def run(
    main: Callable[[argparse.Namespace], None], args: argparse.Namespace, flags: dict[str, str] | None = None
) -> int:
    """Run ``main`` on parsed ``args``; a user error prints one paragraph (options spelt as flags: ``CLI_FLAGS``, or
    ``flags``), no traceback: 2."""
    return cli_exit_code(lambda: main(args), cli_style(CLI_FLAGS if flags is None else flags))

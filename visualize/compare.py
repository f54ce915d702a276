"""Backbones side by side on one image: ``python -m visualize.compare IMAGE --backbones dinov2_vits14 dinov2_vits14_reg
dinov3_vits16 --out compare.png``.

Every backbone sees the image resized to exactly ``tokens * patch`` pixels, so that all of them give the same token
grid, and each map is that backbone's own PCA (first three components as RGB, ``visualize.pca_maps.pca_rgb``):
features of different backbones share no space. Without ``--tokens`` the grid is about ``DEFAULT_TOKENS`` (80x60)
tokens at the image's own aspect ratio (``fitted_grid``: a square photograph gets 69x69, a 4:3 one 80x60); with it,
the image is stretched to the grid asked for, and a grid more than ``MAX_STRETCH`` off the image's aspect ratio is
refused. One backbone is in memory at a time, fed a batch of one under inference mode.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from visualize.args import CLI_FLAGS, compare_parser

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image
    from torch import Tensor

    from backbones import FrozenBackbone
    from visualize.pca_maps import Sign

build_parser = compare_parser

MAX_STRETCH = 1.25
"""The most a grid may stretch the image along one side relative to the other (1.25: 25%)."""

DEFAULT_TOKENS = 80 * 60
"""How many tokens the grid has without ``--tokens``: the DINOv3 report's 80x60, at the image's own aspect ratio."""


def patch_size_of(name: str) -> int:
    """The official patch size of a hub name, known before loading: 14 for DINOv2, 16 for DINOv3."""
    return 16 if name.startswith("dinov3") else 14


def input_size(tokens: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Token grid ``(W, H)`` -> the input ``(height, width)`` in pixels that gives it: exactly ``H*p x W*p``."""
    return tokens[1] * patch_size, tokens[0] * patch_size


def fitted_grid(width: int, height: int, tokens: int = DEFAULT_TOKENS) -> tuple[int, int]:
    """The grid ``(W, H)`` of about ``tokens`` tokens with the aspect ratio of a ``width x height`` image.

    The shorter side is rounded first (at least 2 tokens), the longer one is then that times the aspect ratio,
    rounded, so that the grid keeps the image's shape as closely as whole tokens can (rounding a short side of 2.5
    up to 3 gives 1.44 times ``tokens``, the most it can). The longer side is at most ``tokens // 2``, however
    elongated the image: such an image is then refused by `check_grid`, not fed to the backbone as a huge input.
    """
    ratio = max(width, height) / min(width, height)
    short = max(2, round(math.sqrt(tokens / ratio)))
    long = min(max(2, round(short * ratio)), tokens // 2)
    return (long, short) if width >= height else (short, long)


def check_grid(path: str, width: int, height: int, tokens: tuple[int, int], asked: bool = True) -> float:
    """How much the ``tokens = (W, H)`` grid stretches a ``width x height`` image (1: not at all); ``asked``: the
    grid was given as ``--tokens`` (else it is `fitted_grid`'s, and only a very elongated image can fail).

    Raises:
        InputError: the stretch is over ``MAX_STRETCH``; the message suggests a grid of the image's shape.
    """
    from visualize.images import InputError

    image_ratio, grid_ratio = width / height, tokens[0] / tokens[1]
    stretch = max(image_ratio / grid_ratio, grid_ratio / image_ratio)
    if stretch > MAX_STRETCH:
        rows = tokens[1] if round(tokens[1] * image_ratio) >= 2 else max(2, round(2 / image_ratio))
        fit = f"{max(2, round(rows * image_ratio))}x{rows}"
        if not asked:
            raise InputError(
                f"{path} ({width}x{height} pixels, aspect {image_ratio:.2f}) is too elongated for the default grid of "
                f"about {DEFAULT_TOKENS} tokens: the closest, {tokens[0]}x{tokens[1]} (aspect {grid_ratio:.2f}), would "
                f"stretch it by {stretch - 1:.0%}, over the {MAX_STRETCH - 1:.0%} allowed. Crop the image, or give a "
                f"grid of its shape, e.g. --tokens {fit}."
            )
        raise InputError(
            f"--tokens {tokens[0]}x{tokens[1]} (aspect {grid_ratio:.2f}) would stretch {path} ({width}x{height} "
            f"pixels, aspect {image_ratio:.2f}) by {stretch - 1:.0%}, over the {MAX_STRETCH - 1:.0%} allowed: the "
            f"image is resized to exactly the grid times the patch size. Give a grid of the image's shape, e.g. "
            f"--tokens {fit}, or crop the image to the grid's shape first."
        )
    return stretch


@dataclass
class Panel:
    """One backbone's PCA map of the image.

    rgb: ``(H, W, 3)`` floats in [0, 1], ``(H, W)`` the token grid; input_size: the input's ``(height, width)``.
    """

    name: str
    patch_size: int
    input_size: tuple[int, int]
    block: int
    random_weights: bool
    rgb: Tensor


def backbone_pca_maps(
    image: Image.Image,
    names: Sequence[str],
    tokens: tuple[int, int],
    load: Callable[[str], FrozenBackbone],
    block: int = -1,
    threshold: float | None = None,
    sign: Sign = "auto",
) -> list[Panel]:
    """Each backbone's PCA map of ``image`` on the token grid ``tokens = (W, H)``, in the order of ``names``.

    ``load(name)`` gives the backbone (on its device); it is freed before the next one is loaded. ``threshold``
    and ``sign``: background removal by the first component (``pca_rgb``); None keeps every patch.

    Raises:
        ValueError: ``block`` is out of range for a backbone, or too few patches pass ``threshold``.
    """
    import gc

    import torch

    from visualize.features import block_index, patch_maps
    from visualize.images import to_input
    from visualize.pca_maps import pca_rgb

    panels = []
    inputs: dict[int, Tensor] = {}  # one input per patch size, shared by the backbones of that size
    for name in names:
        start = time.perf_counter()
        backbone = load(name)
        patch, random_weights, index = backbone.patch_size, backbone.random_weights, block_index(backbone, block)
        size = input_size(tokens, patch)
        if patch not in inputs:
            inputs[patch] = to_input(image, size)
        with torch.inference_mode():
            (features,) = patch_maps(backbone, [inputs[patch]], index)
        cuda = next(backbone.parameters()).is_cuda
        del backbone  # the next backbone loads into the memory this one held
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        rgb = pca_rgb([features], threshold, sign).rgb[0]
        panels.append(Panel(name, patch, size, index, random_weights, rgb))
        print(
            f"{name}: {tokens[0]}x{tokens[1]} tokens from {size[1]}x{size[0]} pixels in {time.perf_counter() - start:.1f} s"
        )
    return panels


def panel_title(panel: Panel, checkpoint: str | None) -> str:
    """The backbone's name, its weights file, grid, input size and block; RANDOM WEIGHTS when no weights were found."""
    h, w = panel.rgb.shape[:2]
    lines = [panel.name, *([Path(checkpoint).name] if checkpoint else [])]
    lines.append(f"{w}x{h} tokens ({panel.input_size[1]}x{panel.input_size[0]} px), block {panel.block}")
    return "\n".join(lines + ["RANDOM WEIGHTS (meaningless)"] * panel.random_weights)


def compare_figure(
    image: Image.Image, path: str, panels: Sequence[Panel], titles: Sequence[str], suptitle: str
) -> Figure:
    """The photograph, then each panel's map stretched over it, at most 4 panels a row."""
    import numpy as np
    from matplotlib.figure import Figure

    from visualize.figures import PANEL_INCHES, _show

    count = len(panels) + 1
    cols, rows = min(count, 4), -(-count // min(count, 4))
    ratio = image.width / image.height
    fig = Figure(figsize=(PANEL_INCHES * ratio * cols, (PANEL_INCHES + 0.7) * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    _show(axes[0], np.asarray(image), f"{Path(path).name}\n({image.width}x{image.height} px)")
    for ax, panel, title in zip(axes[1:], panels, titles):
        _show(ax, panel.rgb.numpy(), title, extent=(image.width, image.height))
        if panel.random_weights:
            ax.title.set_color("red")
    for ax in axes[count:]:
        ax.set_axis_off()
    fig.suptitle(suptitle, fontsize=11)
    return fig


def check_options(args: argparse.Namespace) -> dict[str, str]:
    """The checkpoint of each backbone, once ``--backbones`` and ``--checkpoints`` are checked against each other."""
    from visualize.images import InputError

    if repeated := sorted({n for n in args.backbones if args.backbones.count(n) > 1}):
        raise InputError(f"--backbones names {', '.join(repeated)} more than once: give each backbone once.")
    checkpoints: dict[str, str] = {}
    for name, path in args.checkpoints:
        if name in checkpoints:
            raise InputError(f"--checkpoints gives {name} two files: give one {name}=PATH.")
        if name not in args.backbones:
            raise InputError(
                f"--checkpoints {name}={path}: {name} is not in --backbones; add it there or drop the file."
            )
        if not Path(path).is_file():
            raise InputError(f"--checkpoints {name}={path}: {path} does not exist. Check the path.")
        checkpoints[name] = path
    return checkpoints


def loader(args: argparse.Namespace, checkpoints: dict[str, str]) -> Callable[[str], FrozenBackbone]:
    """``load(name)``: the backbone as ``visualize.cli.load_from_args`` loads it, with that name's checkpoint and the
    shared options; messages spell the checkpoint option as ``--checkpoints NAME=PATH``."""
    from utils.errors import cli_style, option_style
    from visualize.cli import load_from_args

    def load(name: str) -> FrozenBackbone:
        base = cli_style(CLI_FLAGS)

        def spell(owner: str, option: str, value: object) -> str:
            return f"--checkpoints {name}={value}" if option == "checkpoint" else base(owner, option, value)

        one = argparse.Namespace(
            **{**vars(args), "backbone": name, "checkpoint": checkpoints.get(name), "sha256": None}
        )
        with option_style(spell):
            return load_from_args(one, [args.image]).configure_speed(args.dtype)

    return load


def make_compare_figure(args: argparse.Namespace) -> list[Panel]:
    """The CLI: checks every option before loading anything, then the panels, then the figure (written atomically)."""
    from PIL import Image

    from utils.errors import UserError
    from utils.outputs import Outputs
    from visualize.cli import check_figure_path, save_figure
    from visualize.images import InputError, load_rgb, require_files

    check_figure_path(args.out)
    checkpoints = check_options(args)
    outputs = Outputs([args.out], [args.image, *checkpoints.values()], overwrite=args.overwrite)
    require_files([args.image])
    image = load_rgb(args.image, max(map(patch_size_of, args.backbones)))
    asked = args.tokens is not None
    tokens = args.tokens if asked else fitted_grid(image.width, image.height)
    stretch = check_grid(args.image, image.width, image.height, tokens, asked)
    if not asked:
        print(
            f"Token grid: {tokens[0]}x{tokens[1]}, about {DEFAULT_TOKENS} tokens at the aspect ratio of {args.image} "
            f"({image.width}x{image.height} pixels); --tokens WxH picks another."
        )
    if stretch > 1.01:
        print(f"Note: {args.image} is stretched by {stretch - 1:.0%} to the grid's aspect ratio.", file=sys.stderr)
    for patch in {patch_size_of(n) for n in args.backbones}:
        height, width = input_size(tokens, patch)
        if height * width > Image.MAX_IMAGE_PIXELS:  # the bound of visualize.cli.load_inputs
            raise InputError(
                f"--tokens {tokens[0]}x{tokens[1]} makes a {width}x{height} input for patch {patch}, over "
                f"Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels: give a smaller grid, or leave --tokens "
                f"out (about {DEFAULT_TOKENS} tokens at the image's aspect ratio)."
            )
    threshold = args.threshold if args.foreground else None
    try:
        panels = backbone_pca_maps(
            image, args.backbones, tokens, loader(args, checkpoints), args.block, threshold, args.sign
        )
    except UserError:
        raise
    except ValueError as err:  # a block out of range, too few foreground patches: the message says the fix
        raise InputError(str(err)) from None
    overrides = [f"{k}={getattr(args, k)}" for k in ("embed_dim", "depth", "num_heads") if getattr(args, k)]
    lines = [args.title] if args.title else []
    which = f"foreground patches (threshold {args.threshold})" if args.foreground else "all patches"
    lines.append(f"Each backbone's PCA of {which}: first 3 components as RGB")
    if overrides:
        lines.append(f"architecture overridden ({', '.join(overrides)}): not the official models")
    titles = [panel_title(p, checkpoints.get(p.name)) for p in panels]
    fig = compare_figure(image, args.image, panels, titles, "\n".join(lines))
    with outputs, outputs.file(args.out) as tmp:
        save_figure(fig, tmp, args.dpi)
    print(f"Wrote {args.out}")
    return panels


def main(argv: Sequence[str] | None = None) -> int:
    args = compare_parser().parse_args(argv)
    from visualize.cli import run

    return run(make_compare_figure, args)


if __name__ == "__main__":
    sys.exit(main())

"""Frozen vision backbones with the official DINOv2 hub API (``forward_features``, ``get_intermediate_layers``)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from backbones.base import COMPILE_MODES, WEIGHT_DTYPES, FrozenBackbone
from backbones.dinov2 import (
    DINOV2_SPECS,
    DinoVisionBackbone,
    build_dinov2,
    load_official_weights,
    official_filename,
    official_url,
)
from backbones.dinov3 import DINOV3_FILES, Dinov3Backbone, build_dinov3, load_dinov3
from backbones.padding import center_pad
from backbones.weights import CheckpointError, WeightsNotFoundError, resolve_checkpoint
from utils.errors import option

__all__ = [
    "BACKBONE_NAMES",
    "COMPILE_MODES",
    "WEIGHT_DTYPES",
    "CheckpointError",
    "DinoVisionBackbone",
    "Dinov3Backbone",
    "FrozenBackbone",
    "WeightsNotFoundError",
    "center_pad",
    "load_backbone",
]

BACKBONE_NAMES: tuple[str, ...] = (*DINOV2_SPECS, *DINOV3_FILES)

RANDOM_WEIGHTS_SEED = 0
"""The seed of `random_fallback`'s weights by default: one architecture has the same random weights in every
process, so that an index built with random weights can be queried with them (their SHA-256 is checked)."""


def load_backbone(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    download: bool = False,
    random_fallback: bool = False,
    sha256: str | None = None,
    random_seed: int | None = RANDOM_WEIGHTS_SEED,
    dtype: str = "float32",
    compile: bool | str | None = None,
    fused_attention: bool = True,
    **arch_overrides: int | None,
) -> FrozenBackbone:
    """Build a frozen backbone by its official hub name and load its weights.

    Args:
        name: ``dinov2_vit{s,b,l,g}14`` or its ``_reg`` twin (4 registers); ``dinov3_vit{s,b,l}16``.
        checkpoint: path to an official ``*_pretrain.pth`` file. Without it: the torch.hub cache, then
            the official URL when ``download`` is True (DINOv2 only: DINOv3 files are sent on request).
        download: allow downloading the official file (progress bar, atomic write into the hub cache).
        random_fallback: when no weights can be found, warn loudly and keep random weights instead of failing;
            the backbone's ``random_weights`` is then True (figures and metrics say so).
        random_seed: the seed of those random weights (the caller's random state is left as it was); ``None``
            draws them from torch's global random state instead (train.py: from the run's ``seed``).
        sha256: the file's expected SHA-256 (local, cached or downloaded). Without it a ``<file>.sha256`` beside
            the file pins it; an unpinned hub-cache file has its hash recorded there at first use.
        dtype, compile, fused_attention: speed options, see ``FrozenBackbone.configure_speed``
            (``bfloat16`` weights, ``torch.compile`` mode, fused attention).
        arch_overrides: ``embed_dim``, ``depth``, ``num_heads`` for smaller models; ``None`` values are ignored.

    Returns:
        A frozen module (eval mode, no gradients).
    """
    if name not in BACKBONE_NAMES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}.")
    overrides = {k: v for k, v in arch_overrides.items() if v is not None}
    unknown = set(overrides) - {"embed_dim", "depth", "num_heads"}
    if unknown:
        raise ValueError(
            f"Unknown architecture overrides {sorted(unknown)}; only embed_dim, depth and num_heads can change."
        )
    _check_arch(name, overrides)
    if random_seed is not None and (
        isinstance(random_seed, bool) or not isinstance(random_seed, int) or not 0 <= random_seed < 2**64
    ):
        raise ValueError(
            f"{option('backbone', 'random_seed', random_seed)} is not a seed: give a whole number from 0 to 2**64 - 1."
        )
    if name in DINOV3_FILES:
        filename, url, build = DINOV3_FILES[name][1], None, build_dinov3
    else:
        filename, url, build = official_filename(name), official_url(name), build_dinov2
    try:
        path = resolve_checkpoint(
            checkpoint, filename, url, download, sha256, f"{name} backbone", "backbone", "random_fallback"
        )
    except WeightsNotFoundError:
        if not random_fallback:
            raise
        from lightning.fabric.utilities.rank_zero import rank_zero_warn  # here: Lightning is slow to import

        real = f"{option('backbone', 'checkpoint', 'PATH')} or {option('backbone', 'download', True)}"
        rank_zero_warn(  # once, not once per process of a DDP run
            f"\n{'!' * 78}\nUSING RANDOM WEIGHTS for {name} ({option('backbone', 'random_fallback', True)}): "
            f"features and every result are meaningless. No weights were found ({filename} is not in the "
            f"torch.hub cache); for real ones give {real}.\n{'!' * 78}",
        )
        backbone = _random_backbone(build, name, random_seed, overrides)
        backbone.random_weights = True
    else:
        if name in DINOV3_FILES:
            backbone = load_dinov3(name, path, **overrides)
        else:
            backbone = build_dinov2(name, **overrides)
            load_official_weights(backbone, path)
    return backbone.configure_speed(dtype, compile, fused_attention)


def _random_backbone(
    build: Callable[..., FrozenBackbone], name: str, seed: int | None, overrides: dict[str, int]
) -> FrozenBackbone:
    """``build(name, **overrides)``, its random initialisation drawn from ``seed`` (None: the global random state).

    timm's initialisers draw from torch's default CPU generator and take no generator of their own, so it is
    seeded inside `torch.random.fork_rng`, which puts the caller's state back afterwards.
    """
    if seed is None:
        return build(name, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return build(name, **overrides)


# The official widths and head counts of the DINOv3 releases (timm's vit_{small,base,large}_patch16_dinov3).
_DINOV3_ARCH = {"dinov3_vits16": (384, 6), "dinov3_vitb16": (768, 12), "dinov3_vitl16": (1024, 16)}


def _check_arch(name: str, overrides: dict[str, object]) -> None:
    """ValueError unless every override is a whole number of at least 1 and the width splits evenly over the heads
    (timm would fail with a bare assertion or a ZeroDivisionError, or build a model with no block at all)."""
    for key, value in overrides.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{option('backbone', key, value)} is not a size (got {value!r}, a {type(value).__name__}): "
                "give a whole number of at least 1."
            )
    spec = DINOV2_SPECS.get(name)
    embed_dim, num_heads = (spec.embed_dim, spec.num_heads) if spec else _DINOV3_ARCH[name]
    embed_dim, num_heads = overrides.get("embed_dim", embed_dim), overrides.get("num_heads", num_heads)
    if embed_dim % num_heads:
        raise ValueError(
            f"{option('backbone', 'embed_dim', embed_dim)} does not split over {option('backbone', 'num_heads', num_heads)}"
            f" (the width must be a multiple of the head count): pick a num_heads that divides {embed_dim}."
        )

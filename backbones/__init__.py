"""Frozen vision backbones with the official DINOv2 hub API (``forward_features``, ``get_intermediate_layers``)."""

from __future__ import annotations

import os
import warnings

from backbones.dinov2 import DINOV2_SPECS, DinoVisionBackbone, build_dinov2, load_official_weights, official_filename, official_url
from backbones.padding import center_pad
from backbones.weights import CheckpointError, WeightsNotFoundError, resolve_checkpoint

__all__ = [
    "BACKBONE_NAMES",
    "CheckpointError",
    "DinoVisionBackbone",
    "WeightsNotFoundError",
    "center_pad",
    "load_backbone",
]

BACKBONE_NAMES: tuple[str, ...] = tuple(DINOV2_SPECS)


def load_backbone(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    download: bool = False,
    random_fallback: bool = False,
    sha256: str | None = None,
    **arch_overrides: int | None,
) -> DinoVisionBackbone:
    """Build a frozen backbone by its official hub name and load its weights.

    Args:
        name: ``dinov2_vit{s,b,l,g}14`` or its ``_reg`` twin (4 registers).
        checkpoint: path to an official ``*_pretrain.pth`` file. Without it: the torch.hub cache, then
            the official URL when ``download`` is True.
        download: allow downloading the official file (progress bar, atomic write into the hub cache).
        random_fallback: when no weights can be found, warn loudly and keep random weights instead of failing.
        sha256: expected SHA-256 of a downloaded file.
        arch_overrides: ``embed_dim``, ``depth``, ``num_heads`` for smaller models; ``None`` values are ignored.

    Returns:
        A frozen module (eval mode, no gradients).
    """
    if name not in DINOV2_SPECS:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}.")
    overrides = {k: v for k, v in arch_overrides.items() if v is not None}
    unknown = set(overrides) - {"embed_dim", "depth", "num_heads"}
    if unknown:
        raise ValueError(f"Unknown architecture overrides {sorted(unknown)}; only embed_dim, depth and num_heads can change.")
    backbone = build_dinov2(name, **overrides)
    try:
        path = resolve_checkpoint(checkpoint, official_filename(name), official_url(name), download, sha256, f"{name} backbone")
    except WeightsNotFoundError as err:
        if not random_fallback:
            raise
        warnings.warn(
            f"\n{'!' * 78}\nUSING RANDOM WEIGHTS for {name}: features are meaningless.\n{err}\n{'!' * 78}",
            stacklevel=2,
        )
        return backbone
    load_official_weights(backbone, path)
    return backbone

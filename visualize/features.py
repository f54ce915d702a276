"""Patch feature maps of one block of a frozen backbone, for images of any sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from backbones import FrozenBackbone


def block_index(backbone: FrozenBackbone, block: int) -> int:
    """A block index, negative ones counted from the end (-1 = last); ValueError when out of range."""
    if not -backbone.n_blocks <= block < backbone.n_blocks:
        raise ValueError(
            f"Block {block} is out of range: the backbone has {backbone.n_blocks} blocks "
            f"(0 to {backbone.n_blocks - 1}, or -1 for the last)."
        )
    return block % backbone.n_blocks


def patch_maps(backbone: FrozenBackbone, images: Sequence[Tensor], block: int = -1) -> list[Tensor]:
    """Normalised images ``(3, H_i, W_i)`` -> normed patch features ``(C, H_i/p, W_i/p)`` of ``block``, on the CPU.

    Images of the same size go through the backbone together.
    """
    index = block_index(backbone, block)
    device = next(backbone.parameters()).device
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(i)
    maps: list[Tensor] = [torch.empty(0)] * len(images)
    for positions in by_size.values():
        batch = torch.stack([images[i] for i in positions]).to(device)
        (features,) = backbone.get_intermediate_layers(batch, n=[index], reshape=True, norm=True)
        for i, feature_map in zip(positions, features.cpu()):
            maps[i] = feature_map
    return maps

"""What a head reads from a frozen backbone, as one value: `FeatureSpec`, and the one call that reads it.

A probe declares its spec (`probes.base.HeadGridProbe.feature_spec`); the backbone pass (`read_features`), the
feature cache's key and its extraction all take that spec, so that a head never states its blocks, norm or class
tokens twice and a cache is never read by a head that wants other features.

Features travel as one dict shape, live or cached (`Features`):
    ``{"tokens": {block: patch map (B, C, H/p, W/p)}, "class_tokens": {block: class token (B, C)}}``
with ``class_tokens`` empty unless the spec asks for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

Features = dict[str, dict[int, Tensor]]
"""``{"tokens": {block: (B, C, h, w)}, "class_tokens": {block: (B, C)}}``, the shape of a live or a cached batch."""


def parse_blocks(blocks: object, n_blocks: int, what: str = "blocks") -> tuple[int, ...]:
    """The one reading of a block choice: an int n is the last n blocks, a sequence of ints holds block indices
    (kept in their order). The official ``get_intermediate_layers(n=...)`` meaning.

    Args:
        blocks: an int from 1 to ``n_blocks``, or a non-empty sequence of indices from 0 to ``n_blocks - 1``.
        n_blocks: the backbone's depth.
        what: the value's name in the error (``n``, ``SegmentationProbe: blocks``).

    Raises:
        ValueError: anything else, naming the value, the backbone's depth and the fix.
    """
    if isinstance(blocks, int) and not isinstance(blocks, bool):
        if 1 <= blocks <= n_blocks:
            return tuple(range(n_blocks - blocks, n_blocks))
    elif isinstance(blocks, Sequence) and not isinstance(blocks, str):
        indices = list(blocks)
        if indices and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_blocks for i in indices):
            return tuple(indices)
    raise ValueError(
        f"{what}={blocks!r} is not a block choice for a backbone with {n_blocks} blocks. Fix: give the last n "
        f"blocks as an int from 1 to {n_blocks}, or a list of block indices from 0 to {n_blocks - 1}."
    )


@dataclass(frozen=True)
class FeatureSpec:
    """The features a head reads: the patch maps of some blocks, normed or not, with their class tokens or not.

    Attributes:
        blocks: absolute block indices, sorted and unique (`FeatureSpec.of` sorts them).
        norm: apply the backbone's final norm (the segmentation heads: yes; the official depth heads: no).
        class_tokens: also the class token of each block (the depth heads read it).
    """

    blocks: tuple[int, ...]
    norm: bool = True
    class_tokens: bool = False

    @classmethod
    def of(cls, blocks: Sequence[int], norm: bool = True, class_tokens: bool = False) -> FeatureSpec:
        """A spec over ``blocks`` (absolute indices, any order, repeats allowed)."""
        return cls(tuple(sorted({int(i) for i in blocks})), bool(norm), bool(class_tokens))

    def covers(self, other: FeatureSpec) -> bool:
        """True when features of this spec hold everything ``other`` reads, computed the same way."""
        return (
            self.norm == other.norm
            and set(other.blocks) <= set(self.blocks)
            and (self.class_tokens or not other.class_tokens)
        )

    def describe(self) -> str:
        """``blocks [8, 9, 10, 11], final norm, no class tokens``: for messages."""
        norm = "final norm" if self.norm else "no final norm"
        return f"blocks {list(self.blocks)}, {norm}, {'with' if self.class_tokens else 'no'} class tokens"

    def to_json(self) -> dict[str, Any]:
        return {"blocks": list(self.blocks), "norm": self.norm, "class_tokens": self.class_tokens}


@torch.no_grad()
def read_features(backbone: nn.Module, images: Tensor, spec: FeatureSpec) -> Features:
    """Images `(B, 3, H, W)` -> the features of ``spec`` in one backbone pass, float32.

    Works on any model with the official hub API (``get_intermediate_layers``), ours or ``torch.hub``'s.
    """
    outputs = backbone.get_intermediate_layers(
        images, n=list(spec.blocks), reshape=True, return_class_token=True, norm=spec.norm
    )
    return {
        "tokens": {block: patches for block, (patches, _) in zip(spec.blocks, outputs)},
        "class_tokens": {block: cls for block, (_, cls) in zip(spec.blocks, outputs)} if spec.class_tokens else {},
    }


def batch_features(batch: Mapping[str, Any], spec: FeatureSpec, owner: str) -> Features:
    """A cached batch's features for ``spec``, float32 (float64 under ``64-true``): its ``tokens`` and
    ``class_tokens`` dicts.

    Raises:
        ValueError: the batch lacks a block (or a class token) that ``spec`` reads; names it and the fix.
    """
    tokens = {int(block): maps for block, maps in batch["tokens"].items()}
    classes = {int(block): cls for block, cls in batch.get("class_tokens", {}).items()}
    missing = [b for b in spec.blocks if b not in tokens or (spec.class_tokens and b not in classes)]
    if missing:
        what = "patch maps and class tokens" if spec.class_tokens else "patch maps"
        raise ValueError(
            f"{owner}: the cached features hold the {what} of blocks {sorted(tokens)}"
            f"{f' (class tokens: {sorted(classes)})' if spec.class_tokens else ''}, but the head reads block "
            f"{missing[0]}. Fix: rebuild the feature cache for this head ({spec.describe()}), or train on images."
        )
    return {
        "tokens": {b: widened(tokens[b]) for b in spec.blocks},
        "class_tokens": {b: widened(classes[b]) for b in spec.blocks} if spec.class_tokens else {},
    }


def widened(features: Tensor) -> Tensor:
    """Cached (float16) features as float32; float32 and float64 (`trainer.precision=64-true`) ones as they are."""
    return features.float() if features.dtype in (torch.float16, torch.bfloat16) else features

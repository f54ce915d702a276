"""One global descriptor per image from a frozen backbone: the class token, GeM-pooled patch tokens, or both.

GeM (generalised mean, Radenović et al.) pools the patch tokens of one block as `(mean(x ** p)) ** (1 / p)`; DINOv2's
tokens are signed, so the pooling is of their positive parts (`clamp(min=eps)`), as image-retrieval code does for
ReLU features. Every descriptor is L2-normalised (after concatenation for `cls+gem`), so inner products are cosines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.features import FeatureSpec, parse_blocks, read_features

POOLINGS = ("cls", "gem", "cls+gem")


@dataclass(frozen=True)
class EmbeddingSpec:
    """What an index holds: which descriptor, of which backbone and block, at which input size.

    An index records its spec (`to_json`); a query or an added image must be embedded with the same one.
    """

    backbone: str
    pooling: str = "cls"
    block: int = -1
    size: int = 224
    gem_p: float = 3.0

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not one of {', '.join(POOLINGS)}.")
        if not (isinstance(self.size, int) and self.size >= 1):
            raise ValueError(f"size={self.size!r} must be a whole number of pixels, at least 1.")
        if not self.gem_p > 0:
            raise ValueError(f"gem_p={self.gem_p!r} must be positive (3 is the usual GeM exponent).")

    def to_json(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "pooling": self.pooling, "block": self.block, "size": self.size,
                "gem_p": self.gem_p}  # fmt: skip


def gem(patches: Tensor, p: float = 3.0, eps: float = 1e-6) -> Tensor:
    """Patch maps `(B, C, h, w)` -> GeM-pooled `(B, C)`."""
    return patches.clamp(min=eps).pow(p).mean((2, 3)).pow(1.0 / p)


@torch.no_grad()
def embed(backbone: nn.Module, images: Tensor, spec: EmbeddingSpec) -> Tensor:
    """Images `(B, 3, H, W)` (ImageNet-normalised) -> L2-normalised descriptors `(B, D)` float32.

    D is the width C for `cls` and `gem`, 2C for `cls+gem`. The block's tokens are read with the final norm, as the
    DINOv2 hub model's class token is.
    """
    block = parse_blocks([spec.block % backbone.n_blocks], backbone.n_blocks, "block")[0]
    features = read_features(backbone, images, FeatureSpec.of([block], norm=True, class_tokens=True))
    parts = []
    if spec.pooling in ("cls", "cls+gem"):
        parts.append(F.normalize(features["class_tokens"][block], dim=1))
    if spec.pooling in ("gem", "cls+gem"):
        parts.append(F.normalize(gem(features["tokens"][block], spec.gem_p), dim=1))
    return F.normalize(torch.cat(parts, dim=1), dim=1)

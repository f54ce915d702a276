"""DINOv2 ViTs on timm's blocks, behind the official ``torch.hub`` API.

The transformer blocks, the final norm and the checkpoint key conversion are timm's
(``vit_*_patch14_dinov2`` / ``*_reg4_dinov2``). Token preparation is ours: the official models resize
the position embedding by a scale factor ``(n + 0.1) / 37`` (plain models) rather than to an output
size, and timm's resize is about 3% off at 224x224, which the released heads notice.

Shapes as in ``backbones.base``, with patch size 14.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor

from backbones.base import FrozenBackbone
from backbones.weights import CheckpointError, check_state_dict, load_state_dict_file
from utils.errors import option

DINOV2_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"


@dataclass(frozen=True)
class Dinov2Spec:
    """One official DINOv2 release: its timm architecture and how its position embedding is resized."""

    timm_name: str
    embed_dim: int
    depth: int
    num_heads: int
    swiglu: bool = False
    num_register_tokens: int = 0

    @property
    def interpolate_offset(self) -> float:
        return 0.0 if self.num_register_tokens else 0.1

    @property
    def interpolate_antialias(self) -> bool:
        return bool(self.num_register_tokens)


def _specs() -> dict[str, Dinov2Spec]:
    sizes = {
        "s": ("small", 384, 12, 6),
        "b": ("base", 768, 12, 12),
        "l": ("large", 1024, 24, 16),
        "g": ("giant", 1536, 40, 24),
    }
    specs = {}
    for letter, (size, dim, depth, heads) in sizes.items():
        swiglu = letter == "g"
        specs[f"dinov2_vit{letter}14"] = Dinov2Spec(f"vit_{size}_patch14_dinov2", dim, depth, heads, swiglu)
        specs[f"dinov2_vit{letter}14_reg"] = Dinov2Spec(f"vit_{size}_patch14_reg4_dinov2", dim, depth, heads, swiglu, 4)
    return specs


DINOV2_SPECS: dict[str, Dinov2Spec] = _specs()


def official_filename(name: str) -> str:
    """``dinov2_vits14_reg`` -> ``dinov2_vits14_reg4_pretrain.pth`` (the released file's name)."""
    return name.replace("_reg", "_reg4") + "_pretrain.pth"


def official_url(name: str) -> str:
    """The official download URL of a DINOv2 backbone, as ``torch.hub.load`` uses it."""
    return f"{DINOV2_BASE_URL}/{name.removesuffix('_reg')}/{official_filename(name)}"


def swiglu_mlp_ratio(embed_dim: int, mlp_ratio: float = 4.0) -> float:
    """timm ``mlp_ratio`` that gives the official SwiGLU width.

    Official: hidden = round-up-to-8 of ``int(int(embed_dim * mlp_ratio) * 2 / 3)``; timm's packed SwiGLU
    takes twice that as ``int(embed_dim * ratio)``, so aim half a unit above it to survive float rounding.
    """
    hidden = (int(int(embed_dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8
    return (2 * hidden + 0.5) / embed_dim


class DinoVisionBackbone(FrozenBackbone):
    """A frozen DINOv2 ViT: timm's blocks, the official token preparation."""

    def __init__(self, vit: VisionTransformer, interpolate_offset: float, interpolate_antialias: bool) -> None:
        super().__init__()
        self.vit = vit
        self.norm = vit.norm
        self.embed_dim = vit.embed_dim
        self.patch_size = vit.patch_embed.patch_size[0]
        self.num_register_tokens = vit.num_reg_tokens
        self.n_blocks = len(vit.blocks)
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        self.freeze()

    def _patch_pos_embed(self, h: int, w: int) -> Tensor:
        """Position embedding of the patches for an ``h x w`` grid, ``(1, h*w, C)``, resized as the official code does."""
        pos = self.vit.pos_embed[:, 0 if self.vit.no_embed_class else 1 :]
        m = int(math.sqrt(pos.shape[1]))
        if (h, w) == (m, m):
            return pos
        grid = pos.float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            size_or_scale = {"scale_factor": ((h + self.interpolate_offset) / m, (w + self.interpolate_offset) / m)}
        else:
            size_or_scale = {"size": (h, w)}
        grid = F.interpolate(grid, mode="bicubic", antialias=self.interpolate_antialias, **size_or_scale)
        return grid.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(pos.dtype)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, h*14, w*14)`` -> tokens ``(B, 1 + R + h*w, C)`` before the first block."""
        b, _, height, width = x.shape
        h, w = height // self.patch_size, width // self.patch_size
        patches = self.vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        patches = patches + self._patch_pos_embed(h, w)
        cls = self.vit.cls_token
        if not self.vit.no_embed_class:
            cls = cls + self.vit.pos_embed[:, :1]
        tokens = [cls.expand(b, -1, -1)]
        if self.vit.reg_token is not None:
            tokens.append(self.vit.reg_token.expand(b, -1, -1))
        return torch.cat(tokens + [patches], dim=1)

    def block_tokens(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        tokens, outputs, wanted = self.prepare_tokens(x), [], set(indices)
        for i, block in enumerate(self.vit.blocks[: max(indices) + 1]):
            tokens = block(tokens)
            if i in wanted:
                outputs.append(tokens)
        return outputs


def build_dinov2(name: str, **arch_overrides: int) -> DinoVisionBackbone:
    """A randomly initialised DINOv2 backbone of the official architecture ``name``.

    ``arch_overrides`` (``embed_dim``, ``depth``, ``num_heads``) shrink it, e.g. for tests.
    """
    spec = DINOV2_SPECS[name]
    args = {"embed_dim": spec.embed_dim, "depth": spec.depth, "num_heads": spec.num_heads, **arch_overrides}
    if spec.swiglu:
        args["mlp_ratio"] = swiglu_mlp_ratio(args["embed_dim"])
    vit = timm.create_model(spec.timm_name, pretrained=False, img_size=518, num_classes=0, **args)
    return DinoVisionBackbone(vit, spec.interpolate_offset, spec.interpolate_antialias)


def load_official_weights(backbone: DinoVisionBackbone, path: Path) -> None:
    """Load an official ``*_pretrain.pth`` state_dict into ``backbone``, checking every key and shape."""
    official = load_state_dict_file(path)
    expected_tokens = backbone.vit.pos_embed.shape[1] + (1 if backbone.vit.no_embed_class else 0)
    pos = official.get("pos_embed")
    if pos is not None and pos.shape[1] != expected_tokens:
        raise CheckpointError(
            f"Checkpoint {path} has a pos_embed of {pos.shape[1]} tokens; the model expects {expected_tokens} "
            "(a 37x37 grid plus the class token, as the official 518x518 releases). Is it a DINOv2 *_pretrain.pth file?"
        )
    if "storage_tokens" in official or "rope_embed.periods" in official:
        raise CheckpointError(
            f"Checkpoint {path} is a DINOv3 file (it has RoPE periods and storage tokens, no pos_embed), loaded "
            f"for a DINOv2 backbone. Fix: {option('', 'backbone', 'dinov3_vits16')} (or _vitb16, _vitl16: "
            "the size of the file)."
        )
    converted = checkpoint_filter_fn(dict(official), backbone.vit)
    hint = (
        f"The model has embed_dim={backbone.embed_dim}, depth={backbone.n_blocks}, "
        f"registers={backbone.num_register_tokens}: pick the backbone name and sizes that match the file."
    )
    check_state_dict(converted, backbone.vit.state_dict(), path, hint)
    backbone.vit.load_state_dict(converted)

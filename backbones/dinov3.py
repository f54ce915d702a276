"""DINOv3 ViT-S/B/L/16 through timm's Eva implementation, behind the same frozen-backbone API.

timm runs the whole model (RoPE position encoding, 4 register tokens); this module only maps the
official DINOv3 names and files onto it, and keeps the file's RoPE periods (timm recomputes them).
The official weights need a licence agreement, so there is no public URL: a local file or the
torch.hub cache, where ``torch.hub.load("facebookresearch/dinov3")`` puts the file you were sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from timm.models.eva import Eva, checkpoint_filter_fn
from torch import Tensor

from backbones.base import FrozenBackbone
from backbones.weights import CheckpointError, check_state_dict, load_state_dict_file
from utils.errors import option

DINOV3_FILES = {
    "dinov3_vits16": ("vit_small_patch16_dinov3", "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"),
    "dinov3_vitb16": ("vit_base_patch16_dinov3", "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"),
    "dinov3_vitl16": ("vit_large_patch16_dinov3", "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"),
}


class Dinov3Backbone(FrozenBackbone):
    """A frozen DINOv3 ViT (timm ``Eva``); tokens are class, 4 registers, patches."""

    def __init__(self, eva: Eva) -> None:
        super().__init__()
        self.eva = eva
        self.norm = eva.norm
        self.embed_dim = eva.embed_dim
        self.patch_size = eva.patch_embed.patch_size[0]
        self.num_register_tokens = eva.num_prefix_tokens - 1
        self.n_blocks = len(eva.blocks)
        self.freeze()

    def block_tokens(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        outputs = self.eva.forward_intermediates(
            x,
            indices=list(indices),
            return_prefix_tokens=True,
            norm=False,
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        return [torch.cat([prefix, patches], dim=1) for patches, prefix in outputs]


def build_dinov3(name: str, qkv_bias: bool = False, **arch_overrides: int) -> Dinov3Backbone:
    """A randomly initialised DINOv3 backbone ``name``; ``qkv_bias`` picks timm's variant with attention biases."""
    timm_name = DINOV3_FILES[name][0] + ("_qkvb" if qkv_bias else "")
    return Dinov3Backbone(timm.create_model(timm_name, pretrained=False, num_classes=0, **arch_overrides))


def load_dinov3(name: str, path: Path, **arch_overrides: int) -> Dinov3Backbone:
    """Build ``name`` and load an official DINOv3 checkpoint (or a timm-format one), checking keys and shapes."""
    state_dict = load_state_dict_file(path)
    if "pos_embed" in state_dict and "rope_embed.periods" not in state_dict:
        raise CheckpointError(
            f"Checkpoint {path} is a DINOv2 file (a learned pos_embed, no RoPE periods), loaded for the DINOv3 "
            f"backbone {name}. Fix: {option('', 'backbone', 'dinov2_vits14')} (or the size of the file)."
        )
    bias = state_dict.get("blocks.0.attn.qkv.bias")
    backbone = build_dinov3(name, qkv_bias=bias is not None and bool(bias.abs().sum() > 0), **arch_overrides)
    converted = checkpoint_filter_fn(state_dict, backbone.eva)
    hint = f"The model has embed_dim={backbone.embed_dim}, depth={backbone.n_blocks}: pick the name and sizes that match the file."
    check_state_dict(converted, backbone.eva.state_dict(), path, hint)
    backbone.eva.load_state_dict(converted)
    periods = state_dict.get("rope_embed.periods")
    if periods is not None:
        load_rope_periods(backbone, periods, path)
    return backbone


def load_rope_periods(backbone: Dinov3Backbone, periods: Tensor, path: Path) -> None:
    """Use the file's RoPE periods ``(head_dim / 4,)``, as the official model does (a persistent buffer).

    timm skips them and recomputes the periods in float32, but the released files hold them rounded to bfloat16,
    so the official outputs use the rounded values. Their length also gives the head width, the one architecture
    setting no weight shape reveals: a wrong ``num_heads`` would otherwise load silently and compute nonsense.
    """
    rope = backbone.eva.rope
    if periods.shape != rope.periods.shape:
        heads = backbone.embed_dim // (4 * periods.numel()) if periods.numel() else 0
        raise CheckpointError(
            f"Checkpoint {path} has RoPE periods for a head width of {4 * periods.numel()} "
            f"(num_heads={heads} at embed_dim={backbone.embed_dim}), but the model has "
            f"{4 * rope.periods.numel()}: set {option('backbone', 'num_heads', heads)}."
        )
    with torch.no_grad():
        rope.periods.copy_(periods)

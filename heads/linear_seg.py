"""DINOv2's linear segmentation head (mmseg `BNHead`) and its released-checkpoint loader."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.weights import check_state_dict, load_state_dict_file, resolve_checkpoint
from utils.errors import option

_VIT_WIDTHS = {384: "ViT-S", 768: "ViT-B", 1024: "ViT-L", 1536: "ViT-g"}


class LinearSegHead(nn.Module):
    """BatchNorm then a 1x1 conv on the backbone's patch maps, resized and concatenated.

    The "linear" probe of DINOv2 feeds the last block (`in_channels = embed_dim`), the "ms" probe
    the last 4 blocks (`in_channels = 4 * embed_dim`). Attribute names match the released heads.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        # mmseg BaseDecodeHead.init_weights
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Maps `(B, C_i, h_i, w_i)` -> logits `(B, K, h_0, w_0)` at the first map's size.

        Every map is resized bilinearly to the first one's size and all are concatenated on
        channels (mmseg `resize_concat`), so `sum(C_i)` must equal `in_channels`.
        """
        size = features[0].shape[-2:]
        x = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features], dim=1)
        return self.conv_seg(self.dropout(self.bn(x)))


def load_official_head(path: str | os.PathLike, head: LinearSegHead, sha256: str | None = None) -> LinearSegHead:
    """Load a released DINOv2 segmentation head (`dinov2_*_{linear,ms}_head.pth`) into `head`.

    The file is checked against `sha256` and a `<file>.sha256` beside it, when given.

    Raises:
        backbones.CheckpointError: the file is missing, its hash differs, or its keys or shapes do not fit
            `head`; the message names the file, the first mismatches and how to fix them.
    """
    path = resolve_checkpoint(path, Path(path).name, None, False, sha256, "segmentation head", "head")
    state = {key.removeprefix("decode_head."): value for key, value in load_state_dict_file(path).items()}
    check_state_dict(state, head.state_dict(), path, _fix_hint(state, head))
    head.load_state_dict(state)
    return head


def _fix_hint(state: dict[str, Tensor], head: LinearSegHead) -> str:
    """How to fix a mismatch, read from the file's classifier shape `(K, C, 1, 1)`."""
    if any(key.startswith(("head.", "heads.")) for key in state):
        return (
            "Fix: this is a train.py checkpoint (best-*.ckpt, last.ckpt), not a released head: test it by resuming "
            f"its run, {option('', 'ckpt_path', 'PATH')} with the run's overrides (a finished run only tests)."
        )
    weight = state.get("conv_seg.weight")
    if weight is None or weight.ndim != 4:
        return "Fix: give a released DINOv2 linear segmentation head (mmseg BNHead checkpoint)."
    classes, channels = weight.shape[:2]
    hints = []
    if channels != head.conv_seg.in_channels:
        hints.append(
            f"this head was trained on {_describe_width(channels)} but the backbone gives "
            f"{_describe_width(head.conv_seg.in_channels)}; use the backbone it was trained on, with blocks=1 "
            "for a '_linear_head' file and blocks=4 for an '_ms_head' file"
        )
    if classes != head.conv_seg.out_channels:
        hints.append(f"it predicts {classes} classes: set num_classes={classes} (ADE20K 150, VOC2012 21)")
    return f"Fix: {'; '.join(hints)}." if hints else ""


def _describe_width(channels: int) -> str:
    """A head input width read as released backbones, e.g. '3072 channels (ViT-B (768) x 4 blocks)'."""
    readings = [
        f"{name} ({width}) x {channels // width} block{'s' if channels > width else ''}"
        for width, name in _VIT_WIDTHS.items()
        if channels in (width, 4 * width)
    ]
    return f"{channels} channels ({' or '.join(readings)})" if readings else f"{channels} channels"

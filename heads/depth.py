"""A frozen DINOv2 backbone plus a depth head, fed and post-processed as the official depther, and its loader.

`DepthModel.from_official(backbone, "dinov2_vits14_nyu_linear4_head.pth", "linear4")` rebuilds a
released head (local file, torch.hub cache, or the official URL with `download=True`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.dinov2 import DINOV2_BASE_URL
from backbones.features import parse_blocks
from backbones.weights import (
    CheckpointError,
    check_state_dict,
    load_state_dict_file,
    resolve_checkpoint,
)
from heads.depth_heads import DPTDepthHead, LinearDepthHead

BLOCKS_READ = {"linear": 1, "linear4": 4, "dpt": 4}
"""How many backbone blocks each head kind reads: the one place that says "linear" is 1 block, the others 4."""
KINDS = tuple(BLOCKS_READ)
OFFICIAL_BLOCKS = {12: [2, 5, 8, 11], 24: [4, 11, 17, 23], 40: [9, 19, 29, 39]}
"""The blocks the released linear4 and DPT heads read, by backbone depth (ViT-S/B, ViT-L, ViT-g)."""
RELEASED_HEAD = re.compile(r"(?P<backbone>dinov2_vit[sblg]14)_(?P<dataset>nyu|kitti)_(?P<kind>linear4?|dpt)_head\.pth")


def default_out_index(kind: str, n_blocks: int) -> list[int]:
    """The official blocks for a head kind: the last block for "linear", 4 blocks otherwise.

    Depths without a released model (small test models) take the 4 evenly spaced blocks ending at the last.
    """
    check_kind(kind)
    if BLOCKS_READ[kind] == 1:
        return [n_blocks - 1]
    return OFFICIAL_BLOCKS.get(n_blocks, [n_blocks * (i + 1) // 4 - 1 for i in range(4)])


def build_depth_head(kind: str, embed_dim: int, min_depth: float, max_depth: float, channels: int = 256) -> nn.Module:
    """A fresh head of `kind` ("linear", "linear4" or "dpt") for a backbone of width `embed_dim`."""
    check_kind(kind)
    if kind == "dpt":
        return DPTDepthHead(embed_dim, min_depth, channels)
    return LinearDepthHead(embed_dim, BLOCKS_READ[kind], min_depth, max_depth)


def check_kind(kind: str) -> None:
    """ValueError unless `kind` is a depth head kind."""
    if kind not in KINDS:
        raise ValueError(f"Unknown depth head kind {kind!r}; choose one of {', '.join(KINDS)}.")


def resolve_depth_head(checkpoint: str | os.PathLike, download: bool = False, sha256: str | None = None) -> Path:
    """A head file: a local path, or a released name (`dinov2_vits14_nyu_linear4_head.pth`) from the hub cache or URL.

    The file is checked against `sha256` and a `<file>.sha256` beside it (see `backbones.weights.resolve_checkpoint`).
    """
    name = Path(checkpoint).name
    released = RELEASED_HEAD.fullmatch(name)
    if released is None or str(checkpoint) != name or Path(checkpoint).is_file():
        return resolve_checkpoint(checkpoint, name, None, False, sha256, "depth head", "head")
    url = f"{DINOV2_BASE_URL}/{released['backbone']}/{name}"
    return resolve_checkpoint(None, name, url, download, sha256, f"released depth head {name}", "head")


def load_depth_head(path: str | os.PathLike, head: nn.Module, kind: str, embed_dim: int) -> nn.Module:
    """Load a released depth head file (`{"state_dict": {"decode_head.*": ...}}`) into `head`, strictly.

    Raises:
        backbones.CheckpointError: the file is for another kind of head or another backbone width; the
            message names the file, what it holds and what was expected.
    """
    path = Path(path)
    state = {key.removeprefix("decode_head."): value for key, value in load_state_dict_file(path).items()}
    check_state_dict(state, head.state_dict(), path, _mismatch_hint(state, kind, embed_dim))
    head.load_state_dict(state)
    return head


def _mismatch_hint(state: dict[str, Tensor], kind: str, embed_dim: int) -> str:
    """What the file holds, read from its shapes, against the `kind` head on an `embed_dim` backbone."""
    expected = f"a {kind!r} head for a backbone of width {embed_dim}"
    if "reassemble_blocks.readout_projects.0.0.weight" in state:
        width = state["reassemble_blocks.readout_projects.0.0.weight"].shape[0]
        return f"The file holds a 'dpt' head for a backbone of width {width}; expected {expected}. " + _FIX
    weight = state.get("conv_depth.weight")
    if weight is None or weight.ndim != 4:
        return f"The file holds no DINOv2 depth head; expected {expected}. " + _FIX
    channels = weight.shape[1]
    readings = " or ".join(f"a {k!r} head for width {channels // (2 * n)}" for k, n in (("linear", 1), ("linear4", 4)))
    return f"The file ({channels} input channels) holds {readings}; expected {expected}. " + _FIX


_FIX = (
    "Fix: pass head.kind matching the file name (*_linear_head.pth -> linear, *_linear4_head.pth -> linear4, "
    "*_dpt_head.pth -> dpt) and the backbone it was trained on (ViT-S 384, B 768, L 1024, g 1536)."
)


def check_depth_range(min_depth: float, max_depth: float) -> None:
    """ValueError unless ``0 < min_depth < max_depth`` (finite): the bins and the clamp span that range, so a
    reversed one would clamp every prediction to one value and a non-positive one break the log-depth metrics."""
    finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (min_depth, max_depth))
    if not (finite and 0 < min_depth < max_depth):
        raise ValueError(
            f"min_depth={min_depth!r}, max_depth={max_depth!r} is not a depth range in metres: give finite values "
            "with 0 < min_depth < max_depth (NYU: 0.001 and 10, KITTI: 0.001 and 80)."
        )


def check_out_index(out_index: Sequence[int], kind: str, n_blocks: int) -> None:
    """ValueError unless ``out_index`` names as many blocks as a ``kind`` head reads (1 or 4), each in range."""
    check_kind(kind)
    wanted = BLOCKS_READ[kind]
    if isinstance(out_index, Sequence) and not isinstance(out_index, str):
        blocks = parse_blocks(out_index, n_blocks, f"out_index for a {kind!r} head")
        if len(blocks) == wanted:
            return
    raise ValueError(
        f"out_index={out_index!r} does not fit a {kind!r} head on a backbone with {n_blocks} blocks: give "
        f"{wanted} block index(es) from 0 to {n_blocks - 1}, or leave out_index=None for the official ones."
    )


class DepthModel(nn.Module):
    """Frozen backbone + depth head; images `(B, 3, H, W)` (ImageNet-normalised) -> depth `(B, 1, H, W)` in metres.

    As the official depther: the head reads `get_intermediate_layers(x, n=out_index, reshape=True,
    return_class_token=True, norm=False)` of the input centre-padded to a multiple of the patch size
    (the backbone pads), its output is clamped to `[min_depth, max_depth]` and resized bilinearly to
    the unpadded input size.
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module, out_index: Sequence[int], min_depth: float, max_depth: float
    ) -> None:
        super().__init__()
        check_depth_range(min_depth, max_depth)
        self.backbone = backbone
        self.head = head
        self.out_index = list(out_index)
        self.min_depth, self.max_depth = min_depth, max_depth

    def decode(self, images: Tensor) -> Tensor:
        """Images `(B, 3, H, W)` -> the head's raw depth `(B, 1, h', w')` (upsampled grid; unclamped: for losses)."""
        with torch.no_grad():
            features = self.backbone.get_intermediate_layers(
                images, n=self.out_index, reshape=True, return_class_token=True, norm=False
            )
        return self.head(features)

    def forward(self, images: Tensor) -> Tensor:
        """Images `(B, 3, H, W)` -> depth `(B, 1, H, W)` in `[min_depth, max_depth]` metres."""
        depth = self.decode(images).clamp(self.min_depth, self.max_depth)
        return F.interpolate(depth, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @classmethod
    def from_official(
        cls,
        backbone: nn.Module,
        head_checkpoint: str | os.PathLike,
        kind: str,
        min_depth: float = 0.001,
        max_depth: float = 10.0,
        out_index: Sequence[int] | None = None,
        download: bool = False,
        sha256: str | None = None,
    ) -> DepthModel:
        """A released DINOv2 depth head (`dinov2_*_{nyu,kitti}_{linear,linear4,dpt}_head.pth`) on `backbone`.

        Args:
            backbone: the frozen backbone the head was trained on.
            head_checkpoint: a local file, or a released file name looked up in the torch.hub cache
                (then downloaded from its official URL when `download`).
            kind: "linear" (last block), "linear4" or "dpt" (4 blocks).
            min_depth, max_depth: the bin range / clamp (NYU 0.001-10, KITTI 0.001-80).
            out_index: blocks fed to the head; default the official ones (`default_out_index`).
            download: fetch a released file name from its official URL into the torch.hub cache.
            sha256: the head file's expected SHA-256 (else a `<file>.sha256` beside it, or the hash recorded at
                its download, is checked).
        """
        if kind not in KINDS:
            raise CheckpointError(
                f"Unknown depth head kind {kind!r} for {head_checkpoint}; choose one of {', '.join(KINDS)}."
            )
        check_depth_range(min_depth, max_depth)
        if out_index is not None:
            check_out_index(out_index, kind, backbone.n_blocks)
        path = resolve_depth_head(head_checkpoint, download, sha256)
        channels = 256
        if kind == "dpt":
            state = load_state_dict_file(path)
            # the released heads use 256 channels, smaller heads fewer: read it from the final 3x3 conv
            channels = int(state.get("decode_head.project.conv.weight", torch.empty(256)).shape[0])
        head = build_depth_head(kind, backbone.embed_dim, min_depth, max_depth, channels)
        load_depth_head(path, head, kind, backbone.embed_dim)
        out_index = default_out_index(kind, backbone.n_blocks) if out_index is None else out_index
        return cls(backbone, head, out_index, min_depth, max_depth)

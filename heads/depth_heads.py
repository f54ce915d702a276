"""The official DINOv2 depth heads (linear bins head and DPT), with the released files' parameter names.

Every head takes the backbone's features as the official depther gives them:
`get_intermediate_layers(x, n=out_index, reshape=True, return_class_token=True, norm=False)`, i.e. a
sequence of `(patch map (B, C, h, w), class token (B, C))` pairs, `h, w = ceil(H / 14), ceil(W / 14)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Features = Sequence[tuple[Tensor, Tensor]]
"""Per block: patch map `(B, C, h, w)` and class token `(B, C)`."""


class LinearDepthHead(nn.Module):
    """DINOv2's "lin. 1" / "lin. 4" depth probe (the official `BNHead`, which has no BatchNorm).

    Each block's patch map is concatenated with its class token broadcast over the map (2C channels),
    all are resized bilinearly to `upsample` x the first map's size and concatenated, and a 1x1 conv
    gives `n_bins` logits. Depth is the bin centres (uniform in `[min_depth, max_depth]`) weighted by
    the "linear" normalisation of the logits: `relu(logit) + 0.1`, divided by its sum.
    """

    def __init__(
        self, embed_dim: int, n_layers: int, min_depth: float, max_depth: float, n_bins: int = 256, upsample: int = 4
    ) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv_depth = nn.Conv2d(2 * embed_dim * n_layers, n_bins, kernel_size=1)
        self.register_buffer("bins", torch.linspace(min_depth, max_depth, n_bins), persistent=False)

    def forward(self, features: Features) -> Tensor:
        """Features of `n_layers` blocks -> depth `(B, 1, upsample * h, upsample * w)`, unclamped."""
        size = [side * self.upsample for side in features[0][0].shape[-2:]]
        maps = [torch.cat((patch, cls[:, :, None, None].expand_as(patch)), dim=1) for patch, cls in features]
        x = torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], dim=1)
        weights = torch.relu(self.conv_depth(x)) + 0.1
        weights = weights / weights.sum(dim=1, keepdim=True)
        return torch.einsum("bkhw,k->bhw", weights, self.bins).unsqueeze(1)


class ConvUnit(nn.Module):
    """A conv held as `.conv`, so that parameter names match the released heads (mmcv's `ConvModule`)."""

    def __init__(self, *args: int, **kwargs: int | bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(*args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class ReassembleBlocks(nn.Module):
    """DPT's reassemble stage with `readout_type="project"`: tokens -> maps at 4x, 2x, 1x and 1/2x the grid.

    Each patch token is concatenated with the class token and projected back to C (Linear + GELU), then
    a 1x1 conv to `out_channels[i]` and a resize (4x and 2x transposed convs, identity, stride-2 conv).
    """

    def __init__(self, embed_dim: int, out_channels: Sequence[int]) -> None:
        super().__init__()
        self.readout_projects = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU()) for _ in out_channels
        )
        self.projects = nn.ModuleList(ConvUnit(embed_dim, c, kernel_size=1) for c in out_channels)
        c0, c1, _, c3 = out_channels
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4),
                nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),
            ]
        )

    def forward(self, features: Features) -> list[Tensor]:
        """4 blocks' features -> maps `(B, out_channels[i], s_i * h, s_i * w)`, s = 4, 2, 1, 1/2 (rounded up)."""
        out = []
        for i, (patch, cls) in enumerate(features):
            tokens = patch.flatten(2).transpose(1, 2)
            tokens = self.readout_projects[i](torch.cat((tokens, cls[:, None].expand_as(tokens)), dim=-1))
            x = tokens.transpose(1, 2).reshape(patch.shape)
            out.append(self.resize_layers[i](self.projects[i](x)))
        return out


class PreActResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convs without bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvUnit(channels, channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = ConvUnit(channels, channels, kernel_size=3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class FeatureFusionBlock(nn.Module):
    """DPT fusion: add the refined skip map (resized to x if needed), refine, upsample 2x, 1x1 project."""

    def __init__(self, channels: int, with_skip: bool = True) -> None:
        super().__init__()
        self.res_conv_unit1 = PreActResidualConvUnit(channels) if with_skip else None
        self.res_conv_unit2 = PreActResidualConvUnit(channels)
        self.project = ConvUnit(channels, channels, kernel_size=1)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """`(B, C, h, w)` (+ skip `(B, C, h', w')`) -> `(B, C, 2h, 2w)`."""
        if skip is not None:
            if skip.shape != x.shape:
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.res_conv_unit1(skip)
        x = F.interpolate(self.res_conv_unit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


class DPTDepthHead(nn.Module):
    """The official DINOv2 DPT depth head (`DPTHead`, readout "project", no norm layers).

    Reassemble 4 blocks at `embed_dim // 8, // 4, // 2, // 1` channels, 3x3 convs to `channels`, fuse
    from the coarsest map up, a 3x3 conv + ReLU, then the depth head (3x3 conv to channels/2, 2x
    upsampling, 3x3 conv to 32, ReLU, 1x1 conv to 1); depth = relu(out) + min_depth.
    """

    def __init__(self, embed_dim: int, min_depth: float, channels: int = 256) -> None:
        super().__init__()
        self.min_depth = min_depth
        post_channels = [embed_dim // 2 ** (3 - i) for i in range(4)]
        self.reassemble_blocks = ReassembleBlocks(embed_dim, post_channels)
        self.convs = nn.ModuleList(ConvUnit(c, channels, kernel_size=3, padding=1, bias=False) for c in post_channels)
        self.fusion_blocks = nn.ModuleList(FeatureFusionBlock(channels, with_skip=i > 0) for i in range(4))
        self.project = ConvUnit(channels, channels, kernel_size=3, padding=1)
        self.conv_depth = DepthOutput(channels)

    def forward(self, features: Features) -> Tensor:
        """4 blocks' features -> depth `(B, 1, 8 * ceil(h / 2), 8 * ceil(w / 2))` (about 8x the grid), unclamped."""
        maps = [conv(x) for conv, x in zip(self.convs, self.reassemble_blocks(features))]
        out = self.fusion_blocks[0](maps[-1])
        for fusion, skip in zip(self.fusion_blocks[1:], reversed(maps[:-1])):
            out = fusion(out, skip)
        out = torch.relu(self.project(out))
        return torch.relu(self.conv_depth(out)) + self.min_depth


class DepthOutput(nn.Module):
    """DPT's output convs (the official `HeadDepth`): `(B, C, h, w)` -> `(B, 1, 2h, 2w)`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, kernel_size=3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(channels // 2, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x)

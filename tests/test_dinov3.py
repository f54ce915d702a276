"""DINOv3 conformance: our loader reproduces the official implementation's outputs on an official-format checkpoint.

The fixture (tests/fixtures/dinov3, see tests/fixtures/README.md) is a tiny ViT-S/16-configured DINOv3 (embed_dim=64, depth=4,
num_heads=4) with every parameter random, and the official code's outputs in float32 on the CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import backbones
from tests.fixture_paths import DINOV3, listed, require

TINY = {"embed_dim": 64, "depth": 4, "num_heads": 4}
SIZES = ("224x224", "160x208")
ATOL = 2e-5  # float32 rounding of two implementations of the same sums (measured: about 3e-6)


@pytest.fixture(scope="module")
def fixture_dir() -> Path:
    require(*listed())
    return DINOV3


@pytest.fixture(scope="module")
def checkpoint(fixture_dir: Path) -> Path:
    return fixture_dir / "tiny_vit16_dinov3.pth"


@pytest.fixture(scope="module")
def reference(fixture_dir: Path) -> dict:
    return torch.load(fixture_dir / "tiny_vit16_dinov3_ref.pt", weights_only=True)


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> backbones.FrozenBackbone:
    return backbones.load_backbone("dinov3_vits16", checkpoint=checkpoint, **TINY)


def test_overrides_fit_the_fixture(checkpoint: Path) -> None:
    """The sizes we pass are the file's: width and depth from the weights, head width from the RoPE periods."""
    state = torch.load(checkpoint, weights_only=True)
    assert state["cls_token"].shape[-1] == TINY["embed_dim"]
    assert len({key.split(".")[1] for key in state if key.startswith("blocks.")}) == TINY["depth"]
    assert state["storage_tokens"].shape[1] == 4
    assert state["patch_embed.proj.weight"].shape[-2:] == (16, 16)
    head_dim = TINY["embed_dim"] // TINY["num_heads"]
    assert state["rope_embed.periods"].shape == (head_dim // 4,)
    # RoPE base 100: period i is 100 ** (2i / (head_dim / 2)), as the official ViT-S/16 configuration.
    expected = 100.0 ** (2 * torch.arange(head_dim // 4, dtype=torch.float64) / (head_dim // 2))
    torch.testing.assert_close(state["rope_embed.periods"].double(), expected, rtol=1e-6, atol=0)


def max_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return (ours.double() - theirs.double()).abs().max().item()


@pytest.mark.parametrize("size", SIZES)
def test_forward_features_match_official(model: backbones.FrozenBackbone, reference: dict, size: str) -> None:
    ref = reference[size]
    out = model.forward_features(ref["x"])
    for ours, theirs in (
        ("x_norm_clstoken", "x_norm_clstoken"),
        ("x_norm_regtokens", "x_storage_tokens"),
        ("x_norm_patchtokens", "x_norm_patchtokens"),
    ):
        assert out[ours].shape == ref[theirs].shape, ours
        assert max_diff(out[ours], ref[theirs]) < ATOL, (size, ours, max_diff(out[ours], ref[theirs]))


@pytest.mark.parametrize("size", SIZES)
def test_intermediate_layers_match_official(model: backbones.FrozenBackbone, reference: dict, size: str) -> None:
    ref = reference[size]
    ours = model.get_intermediate_layers(ref["x"], n=4, reshape=True, return_class_token=True, norm=True)
    assert len(ours) == len(ref["intermediate"]) == 4
    for block, ((patches, cls), (ref_patches, ref_cls)) in enumerate(zip(ours, ref["intermediate"])):
        assert patches.shape == ref_patches.shape
        assert max_diff(patches, ref_patches) < ATOL, (size, block, max_diff(patches, ref_patches))
        assert max_diff(cls, ref_cls) < ATOL, (size, block, "class token", max_diff(cls, ref_cls))


def rope_reference(periods: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sin, cos `(h*w, head_dim)` in float64 from the DINOv3 paper's axial RoPE: patch centres normalised by each side
    separately to [-1, 1], angle 2 pi x / period per axis and period, the (axis, period) angles repeated twice."""
    rows = (torch.arange(height, dtype=torch.float64) + 0.5) / height * 2 - 1
    cols = (torch.arange(width, dtype=torch.float64) + 0.5) / width * 2 - 1
    coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    angles = (2 * math.pi * coords[:, :, None] / periods.double()[None, None, :]).flatten(1)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.sin(), angles.cos()


def test_file_rope_periods_are_used(checkpoint: Path, tmp_path: Path) -> None:
    """The released files hold bfloat16-rounded periods and the official model uses them; so must we."""
    state = torch.load(checkpoint, weights_only=True)
    rounded = state["rope_embed.periods"].bfloat16().float()
    assert not torch.equal(rounded, state["rope_embed.periods"])
    state["rope_embed.periods"] = rounded
    path = tmp_path / "rounded_periods.pth"
    torch.save(state, path)
    model = backbones.load_backbone("dinov3_vits16", checkpoint=path, **TINY)
    assert torch.equal(model.eva.rope.periods, rounded)
    height, width = 10, 13
    sin, cos = rope_reference(rounded, height, width)
    embed = model.eva.rope.get_embed(shape=(height, width)).double()
    torch.testing.assert_close(embed, torch.cat([sin, cos], dim=-1), rtol=0, atol=1e-6)


def test_wrong_num_heads_is_refused(checkpoint: Path) -> None:
    """No weight shape depends on the head count; the periods do, so a wrong num_heads no longer loads silently."""
    with pytest.raises(backbones.CheckpointError, match=r"num_heads=4"):
        backbones.load_backbone("dinov3_vits16", checkpoint=checkpoint, embed_dim=64, depth=4, num_heads=2)

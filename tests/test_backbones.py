"""The frozen DINOv2 backbone: parity with the official implementation, API, weights resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import backbones
from backbones.weights import download_to_cache, sha256_of
from tests.conftest import TINY

VARIANTS = [
    ("tiny_vit14", "dinov2_vits14"),
    ("tiny_vit14_reg4", "dinov2_vits14_reg"),
    ("tiny_vit14_swiglu", "dinov2_vitg14"),
]


@pytest.mark.parametrize(("fixture", "name"), VARIANTS)
def test_matches_official_outputs(fixtures_dir: Path, fixture: str, name: str) -> None:
    ref = torch.load(fixtures_dir / f"{fixture}_ref.pt")
    model = backbones.load_backbone(name, checkpoint=fixtures_dir / f"{fixture}.pth", **TINY)
    assert model.num_register_tokens == ref["constructor"]["num_register_tokens"]
    for size, images in ref["inputs"].items():
        features = model.forward_features(images)
        for key, expected in ref["forward_features"][size].items():
            assert features[key].shape == expected.shape, (size, key)
            if expected.numel():
                torch.testing.assert_close(features[key], expected, atol=1e-4, rtol=0, msg=f"{size} {key}")
        layers = model.get_intermediate_layers(images, n=4, reshape=True, return_class_token=True)
        for (patches, cls), ref_patches, ref_cls in zip(
            layers, ref["intermediate"][size]["patch_nchw"], ref["intermediate"][size]["cls"]
        ):
            torch.testing.assert_close(patches, ref_patches, atol=1e-4, rtol=0, msg=size)
            torch.testing.assert_close(cls, ref_cls, atol=1e-4, rtol=0, msg=size)


def test_plain_model_needs_official_position_resize(fixtures_dir: Path) -> None:
    """Resizing the position embedding to an output size (as timm does) is visibly wrong on the plain model."""
    ref = torch.load(fixtures_dir / "tiny_vit14_ref.pt")
    model = backbones.load_backbone("dinov2_vits14", checkpoint=fixtures_dir / "tiny_vit14.pth", **TINY)
    model.interpolate_offset = 0.0
    out = model.forward_features(ref["inputs"]["224x224"])["x_norm_patchtokens"]
    assert (out - ref["forward_features"]["224x224"]["x_norm_patchtokens"]).abs().max() > 1e-2


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path) -> backbones.DinoVisionBackbone:
    return backbones.load_backbone("dinov2_vits14", checkpoint=tiny_checkpoint, **TINY)


def test_intermediate_layers_api(tiny: backbones.DinoVisionBackbone) -> None:
    x = torch.randn(2, 3, 56, 70)
    last_two = tiny.get_intermediate_layers(x, n=2)
    by_index = tiny.get_intermediate_layers(x, n=[2, 3])
    assert len(last_two) == 2 and last_two[0].shape == (2, 20, 64)
    for a, b in zip(last_two, by_index):
        torch.testing.assert_close(a, b)
    (final,) = tiny.get_intermediate_layers(x, n=1, reshape=True)
    assert final.shape == (2, 64, 4, 5)
    patches = tiny.forward_features(x)["x_norm_patchtokens"]
    torch.testing.assert_close(final.flatten(2).transpose(1, 2), patches)
    (raw,) = tiny.get_intermediate_layers(x, n=[3], norm=False)
    torch.testing.assert_close(raw, tiny.forward_features(x)["x_prenorm"][:, 1:])
    with pytest.raises(ValueError, match="is not a block choice for a backbone with"):
        tiny.get_intermediate_layers(x, n=[4])


def test_centre_padding(tiny: backbones.DinoVisionBackbone) -> None:
    x = torch.randn(1, 3, 50, 61)
    (maps,) = tiny.get_intermediate_layers(x, reshape=True)
    assert maps.shape[-2:] == (4, 5)
    padded = torch.nn.functional.pad(x, (4, 5, 3, 3))
    torch.testing.assert_close(maps, tiny.get_intermediate_layers(padded, reshape=True)[0])


def test_frozen(tiny: backbones.DinoVisionBackbone) -> None:
    assert not any(p.requires_grad for p in tiny.parameters())
    assert not tiny.train().training
    assert not tiny.forward_features(torch.randn(1, 3, 28, 28))["x_norm_clstoken"].requires_grad
    assert tiny(torch.randn(1, 3, 28, 28)).shape == (1, 64)


def test_wrong_architecture_lists_mismatches(tiny_checkpoint: Path) -> None:
    with pytest.raises(backbones.CheckpointError) as err:
        backbones.load_backbone("dinov2_vits14", checkpoint=tiny_checkpoint, embed_dim=64, depth=6, num_heads=4)
    assert "tiny_vit14.pth" in str(err.value) and "missing keys: blocks.4" in str(err.value)
    with pytest.raises(
        backbones.CheckpointError, match="shape mismatches: .*file \\(1, 1, 64\\) vs model \\(1, 1, 384\\)"
    ):
        backbones.load_backbone("dinov2_vits14", checkpoint=tiny_checkpoint)


def test_missing_weights_say_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(
        backbones.WeightsNotFoundError, match="dinov2_vits14_pretrain.pth.*download=True.*random_fallback=True"
    ):
        backbones.load_backbone("dinov2_vits14", **TINY)
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        backbones.load_backbone("dinov2_vits14", random_fallback=True, **TINY)
    with pytest.raises(backbones.CheckpointError, match="nope.pth for the dinov2_vits14 backbone does not exist"):
        backbones.load_backbone("dinov2_vits14", checkpoint=tmp_path / "nope.pth")


def test_hub_cache_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tiny_checkpoint.read_bytes())
    model = backbones.load_backbone("dinov2_vits14", **TINY)
    reference = backbones.load_backbone("dinov2_vits14", checkpoint=tiny_checkpoint, **TINY)
    x = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(model(x), reference(x))


def test_download_checks_hash_and_writes_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = tiny_checkpoint.as_uri()
    with pytest.raises(backbones.CheckpointError, match="SHA-256"):
        download_to_cache(url, sha256="0" * 64)
    assert not (tmp_path / "hub").exists(), "a failed first download leaves no cache folders"
    path = download_to_cache(url, sha256=sha256_of(tiny_checkpoint))
    assert path.read_bytes() == tiny_checkpoint.read_bytes()
    assert path.with_name(path.name + ".sha256").read_text().split()[0] == sha256_of(tiny_checkpoint)


def test_unknown_names_and_overrides() -> None:
    with pytest.raises(ValueError, match="dinov2_vits14_reg"):
        backbones.load_backbone("dinov2_vits16")
    with pytest.raises(ValueError, match="mlp_ratio"):
        backbones.load_backbone("dinov2_vits14", mlp_ratio=3)


@pytest.mark.parametrize("name", backbones.BACKBONE_NAMES)
def test_every_official_name_builds(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.warns(UserWarning):
        model = backbones.load_backbone(name, random_fallback=True, embed_dim=32, depth=2, num_heads=2)
    out = model.forward_features(torch.randn(1, 3, 42, 28))
    assert out["x_norm_patchtokens"].shape == (1, 6, 32)
    registers = 4 if name.endswith("_reg") or name.startswith("dinov3") else 0
    assert out["x_norm_regtokens"].shape == (1, registers, 32)


def test_dinov3_wraps_timm_faithfully(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DINOv3 family is timm's Eva; our API must return exactly its tokens, and its weights must round-trip."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.warns(UserWarning):
        model = backbones.load_backbone("dinov3_vits16", random_fallback=True, embed_dim=32, depth=3, num_heads=2)
    x = torch.randn(2, 3, 50, 70)
    timm_tokens = model.eva.forward_features(backbones.center_pad(x, 16))
    features = model.forward_features(x)
    torch.testing.assert_close(features["x_norm_clstoken"], timm_tokens[:, 0])
    torch.testing.assert_close(features["x_norm_patchtokens"], timm_tokens[:, 5:])
    first, last = model.get_intermediate_layers(x, n=[0, 2], reshape=True, return_class_token=True)
    assert first[0].shape == (2, 32, 4, 5)
    torch.testing.assert_close(last[0].flatten(2).transpose(1, 2), timm_tokens[:, 5:])
    path = tmp_path / "dinov3_tiny.pth"
    torch.save(model.eva.state_dict(), path)
    reloaded = backbones.load_backbone("dinov3_vits16", checkpoint=path, embed_dim=32, depth=3, num_heads=2)
    torch.testing.assert_close(reloaded(x), model(x))
    with pytest.raises(backbones.WeightsNotFoundError, match="no public URL"):
        backbones.load_backbone("dinov3_vits16", download=True)

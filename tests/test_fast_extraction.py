"""Fast extraction: the backbone's speed options (dtype, fused attention, torch.compile), the image-file
pipeline (torchvision decoding in workers or on the GPU), and the two benchmark scripts in --quick mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import backbones
import backbones.base
from backbones.dinov2 import build_dinov2
from bench import backbone_throughput, extraction
from datamodules.errors import DatasetError
from datamodules.files import load_image
from datamodules.image_files import (
    ImageFileLoader,
    ImageFiles,
    collate_encoded,
    decode_file,
    resize_crop,
)
from tests.conftest import TINY

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def load_tiny(checkpoint: Path, **speed: object) -> backbones.FrozenBackbone:
    return backbones.load_backbone("dinov2_vits14", checkpoint=checkpoint, **TINY, **speed)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path) -> backbones.FrozenBackbone:
    return load_tiny(tiny_checkpoint)


def test_default_options_change_nothing(tiny: backbones.FrozenBackbone, tiny_checkpoint: Path) -> None:
    """float32, fused attention, no compile: fp32 weights and bit-identical outputs (fixture parity: test_backbones)."""
    assert all(p.dtype == torch.float32 for p in tiny.parameters())
    assert tiny._compiled is None
    attention = [m for m in tiny.modules() if hasattr(m, "fused_attn")]
    assert len(attention) == TINY["depth"] and all(m.fused_attn for m in attention)
    x = torch.randn(2, 3, 42, 56)
    again = load_tiny(tiny_checkpoint, dtype="float32", compile=None, fused_attention=True)
    assert torch.equal(again.forward_features(x)["x_prenorm"], tiny.forward_features(x)["x_prenorm"])


def test_bf16_weights_keep_the_api(tiny: backbones.FrozenBackbone, tiny_checkpoint: Path) -> None:
    fast = load_tiny(tiny_checkpoint, dtype="bfloat16")
    linear = [m for m in fast.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert linear and all(p.dtype == torch.bfloat16 for m in linear for p in m.parameters())
    assert fast.norm.weight.dtype == torch.float32 and fast.vit.pos_embed.dtype == torch.float32
    x = torch.randn(2, 3, 42, 70)
    for key, value in tiny.forward_features(x).items():
        got = fast.forward_features(x)[key]
        assert got.dtype == torch.float32 and got.shape == value.shape, key
        if value.numel():
            torch.testing.assert_close(got, value, atol=0.05 * value.abs().max().item(), rtol=0)
    pairs = fast.get_intermediate_layers(x, n=2, reshape=True, return_class_token=True)
    assert [(p.shape, c.shape) for p, c in pairs] == [((2, 64, 3, 5), (2, 64))] * 2


def test_fused_attention_can_be_switched_off(tiny: backbones.FrozenBackbone, tiny_checkpoint: Path) -> None:
    plain = load_tiny(tiny_checkpoint, fused_attention=False)
    assert not any(m.fused_attn for m in plain.modules() if hasattr(m, "fused_attn"))
    x = torch.randn(1, 3, 28, 42)
    torch.testing.assert_close(plain(x), tiny(x), atol=1e-5, rtol=1e-5)


def test_bad_speed_options_say_what_to_use(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="backbone.dtype='fp8'.*float32, bfloat16, float16"):
        load_tiny(tiny_checkpoint, dtype="fp8")
    with pytest.raises(ValueError, match="backbone.compile='fast'.*reduce-overhead"):
        load_tiny(tiny_checkpoint, compile="fast")
    rounded = load_tiny(tiny_checkpoint, dtype="bfloat16")
    with pytest.raises(ValueError, match="already rounded.*reload"):
        rounded.configure_speed(dtype="float32")


def test_compiled_trunk_gives_the_eager_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dynamo traces our trunk (blocks + norm) without changing a value; inductor is replaced by the eager backend to stay fast."""
    compile_eager = torch.compile
    monkeypatch.setattr(
        backbones.base.torch,
        "compile",
        lambda fn, **options: compile_eager(fn, backend="eager", dynamic=options["dynamic"]),
    )
    arch = {"embed_dim": 32, "depth": 3, "num_heads": 2}
    eager = build_dinov2("dinov2_vits14_reg", **arch)
    compiled = build_dinov2("dinov2_vits14_reg", **arch).configure_speed(compile="max-autotune-no-cudagraphs")
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 50, 70)
    try:
        for (p, c), (q, d) in zip(
            eager.get_intermediate_layers(x, n=[0, 2], reshape=True, return_class_token=True),
            compiled.get_intermediate_layers(x, n=[0, 2], reshape=True, return_class_token=True),
        ):
            assert torch.equal(p, q) and torch.equal(c, d)
        reference, got = eager.forward_features(x), compiled.forward_features(x)
        assert all(torch.equal(reference[k], got[k]) for k in reference)
    finally:
        torch._dynamo.reset()


@pytest.mark.slow  # inductor compiles C++ for about 30 s on a 2-core CPU
def test_inductor_compile_on_cpu(tiny: backbones.FrozenBackbone, tiny_checkpoint: Path) -> None:
    compiled = load_tiny(tiny_checkpoint, compile=True)
    x = torch.randn(2, 3, 42, 56)
    try:
        torch.testing.assert_close(
            compiled.get_intermediate_layers(x, n=2)[0], tiny.get_intermediate_layers(x, n=2)[0], atol=1e-4, rtol=1e-4
        )
    finally:
        torch._dynamo.reset()


@cuda
def test_bf16_weights_equal_bf16_autocast_on_cuda(tiny_checkpoint: Path) -> None:
    """Autocast casts float32 weights to the same bf16 values each call: storing them in bf16 changes no output."""
    x = torch.randn(4, 3, 224, 224, device="cuda")
    reference = load_tiny(tiny_checkpoint).cuda().forward_features(x)
    got = load_tiny(tiny_checkpoint, dtype="bfloat16").cuda().forward_features(x)
    for key, value in reference.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-6, msg=key)


@cuda
def test_cuda_graph_outputs_survive_the_next_call(tiny_checkpoint: Path) -> None:
    graphs = load_tiny(tiny_checkpoint, dtype="bfloat16", compile="reduce-overhead").cuda()
    eager = load_tiny(tiny_checkpoint, dtype="bfloat16").cuda()
    x, y = torch.randn(2, 2, 3, 224, 224, device="cuda")
    try:
        for _ in range(3):
            first = graphs.get_intermediate_layers(x, n=1, norm=False)[0]
            graphs.get_intermediate_layers(y, n=1, norm=False)
            torch.testing.assert_close(
                first, eager.get_intermediate_layers(x, n=1, norm=False)[0], atol=0.05, rtol=0.05
            )
    finally:
        torch._dynamo.reset()


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per decoding case: RGB JPEG, grey JPEG, RGB / grey / RGBA / palette / 16-bit PNG, BMP (PIL fallback)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    images = {
        "rgb.jpg": Image.fromarray(rgb),
        "grey.jpg": Image.fromarray(grey),
        "rgb.png": Image.fromarray(rgb),
        "grey.png": Image.fromarray(grey),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (20, 25, 4), dtype=np.uint8)),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "deep.png": Image.fromarray(rng.integers(0, 65536, (21, 19), dtype=np.uint16)),
        "rgb.bmp": Image.fromarray(rgb),
    }
    for name, image in images.items():
        image.save(folder / name)
    return {name: folder / name for name in images}


def test_decoding_matches_pil(image_files: dict[str, Path]) -> None:
    for name, path in image_files.items():
        expected = load_image(path)
        got = decode_file(path)
        assert got.dtype == torch.uint8 and got.shape == (3, *expected.shape[:2]), name
        # JPEG decoders may differ by a few levels; lossless formats must be exact
        tolerance = 3 if name.endswith(".jpg") else 0
        assert np.abs(got.permute(1, 2, 0).numpy().astype(int) - expected).max() <= tolerance, name


def test_resize_matches_pil_and_crops_the_centre(image_files: dict[str, Path]) -> None:
    image = decode_file(image_files["rgb.png"])
    square = resize_crop(image, 28)
    assert square.shape == (3, 28, 28) and square.dtype == torch.uint8
    pil = np.asarray(Image.open(image_files["rgb.png"]).resize((28, 28), Image.BILINEAR))
    assert np.abs(square.permute(1, 2, 0).numpy().astype(int) - pil).mean() < 1.0
    cropped = resize_crop(image, 28, resize_size=32)
    resized = resize_crop(image, 32, resize_size=32)
    assert cropped.shape == (3, 28, 28) and resized.shape == (3, 32, 32)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_gives_normalised_batches_in_file_order(image_files: dict[str, Path], workers: int) -> None:
    paths = list(image_files.values())
    loader = ImageFileLoader(paths, 28, batch_size=3, num_workers=workers)
    indices, batches = zip(*loader)
    assert len(loader) == 3 and torch.cat(indices).tolist() == list(range(len(paths)))
    images = torch.cat(batches)
    assert images.shape == (len(paths), 3, 28, 28) and images.dtype == torch.float32
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = (resize_crop(decode_file(paths[2]), 28).float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    torch.testing.assert_close(images[2], expected, atol=1e-5, rtol=0)


def test_gpu_jpeg_items_are_left_encoded(image_files: dict[str, Path]) -> None:
    paths = [image_files["rgb.png"], image_files["rgb.jpg"], image_files["grey.png"], image_files["grey.jpg"]]
    batch = collate_encoded([ImageFiles(paths, 28, gpu_jpeg=True)[i] for i in range(len(paths))])
    assert batch.pixel_rows.tolist() == [0, 2] and batch.jpeg_rows.tolist() == [1, 3]
    assert batch.pixels.shape == (2, 3, 28, 28) and [j.dim() for j in batch.jpegs] == [1, 1]
    assert batch.index.tolist() == [0, 1, 2, 3]


@cuda
def test_gpu_decoding_matches_cpu_decoding(image_files: dict[str, Path]) -> None:
    paths = list(image_files.values())
    cpu = torch.cat([images for _, images in ImageFileLoader(paths, 28, batch_size=4, num_workers=0, device="cuda")])
    gpu = torch.cat(
        [images for _, images in ImageFileLoader(paths, 28, batch_size=4, num_workers=0, device="cuda", decode="gpu")]
    )
    # nvJPEG and libjpeg-turbo round differently; a few levels out of 255 in normalised units
    assert (gpu - cpu).abs().mean() < 0.05


def test_bad_files_are_named(tmp_path: Path, image_files: dict[str, Path]) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    with pytest.raises(DatasetError, match="corrupt.jpg"):
        decode_file(corrupt)
    with pytest.raises(DatasetError, match="corrupt.jpg"):
        list(ImageFileLoader([image_files["rgb.jpg"], corrupt], 28, num_workers=0))
    with pytest.raises(DatasetError, match="missing.png.*exists"):
        decode_file(tmp_path / "missing.png")
    with pytest.raises(DatasetError, match="empty"):
        ImageFileLoader([], 28)
    with pytest.raises(ValueError, match="decode='gpu' needs a CUDA device"):
        ImageFileLoader([corrupt], 28, decode="gpu", device="cpu")
    with pytest.raises(ValueError, match="decode='nvdec'"):
        ImageFileLoader([corrupt], 28, decode="nvdec")


def test_backbone_benchmark_quick(capsys: pytest.CaptureFixture[str]) -> None:
    rows = backbone_throughput.main(["--quick", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "Backbone forward throughput on CPU" in out and "max abs diff" in out
    variants = [row[2] for row in rows]
    assert variants[:4] == ["timm", "timm-dynamic", "ours", "ours-bf16"] and all(row[3] > 0 for row in rows)
    # our float32 backbone on timm's weights and our position embedding: the same numbers as timm
    assert all(row[5] < 1e-4 for row in rows if row[2] == "ours")


def test_extraction_benchmark_quick(capsys: pytest.CaptureFixture[str]) -> None:
    rows = extraction.main(["--quick", "--device", "cpu", "--decode", "cpu", "gpu"])
    out = capsys.readouterr().out
    assert "Feature extraction on CPU" in out and "end to end, decode cpu" in out
    rates = {what: rate for what, rate, _ in rows}
    assert rates["raw forward (batch on the device)"] > 0 and rates["end to end, decode cpu"] > 0
    assert rates["end to end, decode gpu"] is None


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = tmp_path / "huge.png"
    Image.new("1", (14000, 14000)).save(bomb)  # torchvision would decode it to 588 MB
    with pytest.raises(DatasetError, match="huge.png is too large.*MAX_IMAGE_PIXELS"):
        decode_file(bomb)
    with pytest.raises(DatasetError, match="huge.png is too large"):
        list(ImageFileLoader([bomb], 28, num_workers=0))

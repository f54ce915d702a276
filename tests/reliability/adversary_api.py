"""The entry points besides train.py, used wrongly: the visualisation and bench CLIs' options, and the Python API
(backbones, depth model, losses, few-shot functions and episodes, the image-file loader)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.fixture_paths import DINOV2, TINY_CHECKPOINT, TINY_DINOV3
from tests.reliability import Case, Result

# The tiny fixture backbone from a CLI, on the CPU.
TINY_CLI = ("--checkpoint", "{tiny}", "--embed-dim", "64", "--depth", "4", "--num-heads", "4", "--device", "cpu")
DEPTH_HEAD = DINOV2 / "tiny_vit14_depth_linear_head.pth"


def photo(tmp: Path, name: str = "a.png", size: tuple[int, int] = (80, 60), exif_orientation: int = 1) -> Path:
    """A random RGB image of ``size`` (W, H) pixels in ``tmp``; with an EXIF orientation tag when not 1."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    exif = image.getexif()
    if exif_orientation != 1:
        exif[0x0112] = exif_orientation
    image.save(tmp / name, exif=exif)
    return tmp / name


def two_photos(tmp: Path) -> None:
    photo(tmp, "a.png")
    photo(tmp, "b.png", (60, 80))


def pca(*options: str) -> tuple[str, ...]:
    return ("-m", "visualize.pca", "{tmp}/a.png", *TINY_CLI, *options)


def tiny_backbone(**overrides: object) -> object:
    from backbones import load_backbone

    arch = {"embed_dim": 64, "depth": 4, "num_heads": 4} | overrides
    return load_backbone("dinov2_vits14", checkpoint=TINY_CHECKPOINT, **arch)


def features(x: object) -> object:
    return tiny_backbone().forward_features(x)


def intermediate(n: object) -> object:
    import torch

    return tiny_backbone().get_intermediate_layers(torch.zeros(1, 3, 28, 28), n=n)


def images(*shape: int, dtype: str = "float32") -> object:
    import torch

    return torch.zeros(shape, dtype=getattr(torch, dtype))


def depth_model(**kwargs: object) -> object:
    from heads.depth import DepthModel

    return DepthModel.from_official(tiny_backbone(), DEPTH_HEAD, "linear", **kwargs)


def cross_entropy(batch: int = 2, labels: object = None) -> object:
    import torch

    from ops.losses import upsample_cross_entropy

    logits = torch.zeros(batch, 3, 4, 4)
    return upsample_cross_entropy(logits, torch.zeros(batch, 8, 8, dtype=torch.long) if labels is None else labels)


def few_shot(method: str, labels: list[int], n_classes: int = 3, **kwargs: object) -> object:
    import torch

    from ops import classifiers as fewshot

    support = torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(0))
    return getattr(fewshot, method)(support, torch.tensor(labels), torch.randn(4, 8), n_classes, **kwargs)


def episodes(n_way: int = 2, k_shot: int = 1, n_queries: int = 1, n_episodes: int = 2) -> object:
    from datamodules.classification.episodes import sample_episodes

    return sample_episodes(np.repeat(np.arange(4), 5), n_way, k_shot, n_queries, n_episodes, seed=0)


def image_loader(tmp: Path, **kwargs: object) -> object:
    from datamodules.image_files import ImageFileLoader

    return ImageFileLoader([photo(tmp)], **({"size": 28, "num_workers": 0} | kwargs))


def tiny_sam(**overrides: object) -> object:
    from sam.model import build_sam

    sizes = {"encoder_embed_dim": 32, "encoder_depth": 1, "encoder_num_heads": 2, "prompt_embed_dim": 32}
    return build_sam("vit_b", **(sizes | {"image_size": 128} | overrides))


def sam_points(multimask: object) -> object:
    from sam import SamBoxPredictor

    return SamBoxPredictor(tiny_sam()).predict_points(np.zeros((40, 60, 3), np.uint8), [[3, 3]], multimask)


def patch_features(channels: int = 8) -> object:
    import torch

    return torch.randn(channels, 5, 5, generator=torch.Generator().manual_seed(0))


def pca_colours(sign: str) -> object:
    from visualize import pca_rgb

    return pca_rgb([patch_features(), patch_features()], 0.0, sign)


def matches(channels_b: int = 8, n: int = 3) -> object:
    from visualize import mutual_matches, spread_matches

    a, b = patch_features(), patch_features(channels_b)
    return spread_matches(mutual_matches(a, b), a, b, n)


def no_nan_printed(tmp: Path, result: Result) -> None:
    assert "nan" not in result.text.lower(), result.text


def rotated_photo(tmp: Path) -> None:
    photo(tmp, "a.png", (80, 60), exif_orientation=6)  # stored 80 wide, 60 high; viewed turned by 90 degrees


def portrait_components(tmp: Path, result: Result) -> None:
    components = np.load(tmp / "o_0_a.npy")
    assert components.shape[0] > components.shape[1], f"EXIF rotation ignored: components {components.shape}"


def a_file(tmp: Path) -> None:
    (tmp / "file").write_text("not a folder")


CASES = [
    # python -m visualize.pca / visualize.match: options checked when parsed or before the backbone runs
    Case("adv-api-pca-size-13", "silent", argv=pca("--size", "13", "--out", "{tmp}/o.png"), setup=photo,
         names=("--size 13", "28"), absent=("o.png",)),
    Case("adv-api-pca-size-huge", "traceback", argv=pca("--size", "100000", "--out", "{tmp}/o.png"), setup=photo,
         names=("--size 100002", "MAX_IMAGE_PIXELS"), absent=("o.png",)),
    Case("adv-api-pca-dpi-zero", "traceback", argv=pca("--dpi", "0", "--out", "{tmp}/o.png"), setup=photo,
         names=("--dpi", "at least 1"), absent=("o.png",)),
    Case("adv-api-pca-embed-dim-zero", "traceback", argv=pca("--embed-dim", "0"), setup=photo,
         names=("--embed-dim", "at least 1")),
    Case("adv-api-pca-out-under-a-file", "traceback", argv=pca("--out", "{tmp}/a.png/o.png"), setup=photo,
         names=("--out {tmp}/a.png/o.png", "not a folder")),
    Case("adv-api-pca-exif-rotated", "silent", argv=pca("--save-features", "--out", "{tmp}/o.png"),
         setup=rotated_photo, check=portrait_components, exit_code=0),
    Case("adv-api-pca-dinov3-file-for-dinov2", "clear",
         argv=pca("--checkpoint", str(TINY_DINOV3), "--out", "{tmp}/o.png"),
         setup=photo, names=("tiny_vit16_dinov3.pth", "DINOv3 file", "--backbone dinov3_vits16"), absent=("o.png",)),
    Case("adv-api-match-json-folder", "traceback",
         argv=("-m", "visualize.match", "{tmp}/a.png", "{tmp}/b.png", *TINY_CLI, "--out", "{tmp}/m.png",
               "--json", "{tmp}"), setup=two_photos, names=("--json {tmp}", "folder"), absent=("m.png",)),
    Case("adv-api-match-seed-negative", "traceback",
         argv=("-m", "visualize.match", "{tmp}/a.png", "{tmp}/b.png", "--seed", "-1"), names=("--seed", "-1")),
    # the visualize package from Python
    Case("adv-api-visualize-sign", "silent", call=lambda tmp: pca_colours("up"), names=("sign='up'", "'negative'")),
    Case("adv-api-visualize-match-channels", "traceback", call=lambda tmp: matches(channels_b=9),
         names=("(8, 5, 5)", "(9, 5, 5)", "channels")),
    Case("adv-api-visualize-spread-zero", "traceback", call=lambda tmp: matches(n=0), names=("n=0",)),
    # python -m bench.*: argparse's usage error (exit 2) before any work
    Case("adv-api-bench-throughput-batch-zero", "traceback", argv=("-m", "bench.backbone_throughput", "--batch", "0"),
         names=("--batch", "at least 1")),
    Case("adv-api-bench-throughput-device", "traceback",
         argv=("-m", "bench.backbone_throughput", "--quick", "--device", "banana"), names=("--device", "banana")),
    Case("adv-api-bench-throughput-compile-mode", "silent",
         argv=("-m", "bench.backbone_throughput", "--quick", "--compile-mode", "fast"),
         names=("--compile-mode", "fast", "max-autotune")),
    Case("adv-api-bench-throughput-no-timm-nan", "silent",
         argv=("-m", "bench.backbone_throughput", "--quick", "--device", "cpu", "--variants", "ours"),
         check=no_nan_printed, exit_code=0),
    Case("adv-api-bench-extraction-dir-file", "traceback",
         argv=("-m", "bench.extraction", "--quick", "--dir", "{tmp}/file"), setup=a_file,
         names=("--dir {tmp}/file", "is a file")),
    Case("adv-api-bench-extraction-compile", "traceback", argv=("-m", "bench.extraction", "--quick", "--compile", "x"),
         names=("--compile", "'x'")),
    Case("adv-api-bench-fewshot-n-way", "traceback", argv=("-m", "bench.fewshot_episodes", "--n-way", "30"),
         names=("--n-way 30", "--classes 20")),
    Case("adv-api-bench-probe-batch-zero", "traceback", argv=("-m", "bench.probe_step", "--batch", "0"),
         names=("--batch", "at least 1")),
    Case("adv-api-bench-sam-boxes-zero", "silent", argv=("-m", "bench.sam_box_to_mask", "--boxes", "0"),
         names=("--boxes", "at least 1")),
    Case("adv-api-bench-digits-out-file", "traceback", argv=("-m", "bench.digits_folder", "{tmp}/file"),
         setup=a_file, names=("{tmp}/file", "is a file")),
    # backbones.load_backbone: architecture overrides
    Case("adv-api-backbone-embed-dim-string", "traceback", call=lambda tmp: tiny_backbone(embed_dim="64"),
         names=("embed_dim", "'64'", "whole number")),
    Case("adv-api-backbone-depth-zero", "silent", call=lambda tmp: tiny_backbone(depth=0),
         names=("depth=0", "at least 1")),
    Case("adv-api-backbone-heads-indivisible", "traceback", call=lambda tmp: tiny_backbone(num_heads=3),
         names=("embed_dim=64", "num_heads=3")),
    # FrozenBackbone.forward_features / get_intermediate_layers: inputs
    Case("adv-api-features-one-image", "traceback", call=lambda tmp: features(images(3, 28, 28)),
         names=("(3, 28, 28)", "(B, 3, H, W)", "x[None]")),
    Case("adv-api-features-grey", "traceback", call=lambda tmp: features(images(2, 1, 28, 28)),
         names=("(2, 1, 28, 28)", "(B, 3, H, W)")),
    Case("adv-api-features-uint8", "traceback", call=lambda tmp: features(images(1, 3, 28, 28, dtype="uint8")),
         names=("torch.uint8", "normalised")),
    Case("adv-api-features-numpy", "traceback", call=lambda tmp: features(np.zeros((1, 3, 28, 28), np.float32)),
         names=("torch.Tensor", "ndarray")),
    Case("adv-api-intermediate-n-float", "traceback", call=lambda tmp: intermediate(2.0), names=("n=2.0",)),
    Case("adv-api-intermediate-n-bool", "silent", call=lambda tmp: intermediate(True), names=("n=True",)),
    # sam.model: build_sam's size overrides, SamBoxPredictor.predict_points
    Case("adv-api-sam-embed-dim-zero", "silent", call=lambda tmp: tiny_sam(encoder_embed_dim=0),
         names=("encoder_embed_dim=0",)),
    Case("adv-api-sam-heads-indivisible", "traceback", call=lambda tmp: tiny_sam(encoder_num_heads=3),
         names=("encoder_embed_dim=32", "encoder_num_heads=3")),
    Case("adv-api-sam-prompt-dim", "traceback", call=lambda tmp: tiny_sam(prompt_embed_dim=24),
         names=("prompt_embed_dim=24", "16")),
    Case("adv-api-sam-multimask-string", "silent", call=lambda tmp: sam_points("no"), names=("multimask='no'",)),
    # heads.depth.DepthModel.from_official: the depth range and blocks
    Case("adv-api-depth-range-reversed", "silent", call=lambda tmp: depth_model(min_depth=10.0, max_depth=1.0),
         names=("min_depth=10.0", "max_depth=1.0", "0 < min_depth < max_depth")),
    Case("adv-api-depth-min-zero", "silent", call=lambda tmp: depth_model(min_depth=0.0),
         names=("min_depth=0.0",)),
    Case("adv-api-depth-out-index-count", "traceback", call=lambda tmp: depth_model(out_index=[0, 1]),
         names=("out_index=[0, 1]", "'linear'", "1 block")),
    # ops.losses.upsample_cross_entropy
    Case("adv-api-loss-empty-batch", "traceback", call=lambda tmp: cross_entropy(batch=0), names=("(0, 3, 4, 4)",)),
    Case("adv-api-loss-numpy-labels", "traceback",
         call=lambda tmp: cross_entropy(labels=np.zeros((2, 8, 8), np.int64)), names=("labels", "ndarray")),
    # ops.classifiers and datamodules.classification.episodes
    Case("adv-api-fewshot-label-over", "traceback",
         call=lambda tmp: few_shot("centre_and_project", [0, 0, 1, 1, 2, 5]), names=("0..5", "n_classes=3")),
    Case("adv-api-fewshot-logreg-negative-label", "silent",
         call=lambda tmp: few_shot("logistic_regression", [0, 0, 1, 1, 2, -1]), names=("-1..2", "n_classes=3")),
    Case("adv-api-fewshot-knn-temperature", "silent",
         call=lambda tmp: few_shot("cosine_knn", [0, 1, 2], temperature=-1.0), names=("temperature=-1.0",)),
    Case("adv-api-fewshot-knn-k-zero", "silent", call=lambda tmp: few_shot("cosine_knn", [0, 1, 2], k=0),
         names=("k=0",)),
    Case("adv-api-episodes-n-way-over", "traceback", call=lambda tmp: episodes(n_way=5),
         names=("n_way=5", "4 class")),
    Case("adv-api-episodes-too-few-images", "traceback", call=lambda tmp: episodes(k_shot=3, n_queries=3),
         names=("k_shot=3", "n_queries=3", "6 images")),
    Case("adv-api-episodes-none", "silent", call=lambda tmp: episodes(n_episodes=0), names=("n_episodes=0",)),
    # datamodules.image_files.ImageFileLoader
    Case("adv-api-image-loader-size-zero", "traceback", call=lambda tmp: image_loader(tmp, size=0),
         names=("size=0",)),
    Case("adv-api-image-loader-std-zero", "traceback", call=lambda tmp: image_loader(tmp, std=(0.0, 1.0, 1.0)),
         names=("std=", "above 0")),
    Case("adv-api-image-loader-crop-over-resize", "silent",
         call=lambda tmp: image_loader(tmp, size=28, resize_size=14), names=("resize_size=14", "size=28")),
    Case("adv-api-image-loader-device", "traceback", call=lambda tmp: image_loader(tmp, device="gpu0"),
         names=("device='gpu0'",)),
]  # fmt: skip

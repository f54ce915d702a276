"""visualize/: PCA maps and mutual matches on features of known structure, both CLIs on real photographs.

Longer than 300 lines: both figure tools (PCA maps, patch matches) end to end and their helpers, one short test each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from skimage import data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from backbones import load_backbone
from tests.conftest import TINY
from tests.helpers import compose_train
from visualize import foreground_masks, mutual_matches, patch_centres, pca_rgb, spread_matches
from visualize.callback import PCAMapCallback
from visualize.match import main as match_main
from visualize.pca import main as pca_main

ROOT = Path(__file__).resolve().parents[1]


def clustered_map(channels: int = 16, side: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(C, side, side)`` map: a background vector on the border ring, four clusters in the interior quadrants.

    Returns the map and the ``(side, side)`` cluster ids (-1 = background).
    """
    gen = torch.Generator().manual_seed(seed)
    centres = torch.zeros(4, channels)
    centres[:, 1:4] = torch.tensor([[3.0, 2, 1], [3, -2, -1], [-3, 2, -1], [-3, -2, 1]])
    ids = torch.full((side, side), -1)
    half = side // 2
    ids[1:half, 1:half], ids[1:half, half:-1], ids[half:-1, 1:half], ids[half:-1, half:-1] = 0, 1, 2, 3
    features = torch.zeros(side, side, channels)
    features[ids < 0, 0] = 8.0
    features[ids >= 0] = centres[ids[ids >= 0]]
    features += 1e-3 * torch.randn(side, side, channels, generator=gen)
    return features.permute(2, 0, 1), ids


def test_pca_separates_background_and_gives_each_cluster_one_colour() -> None:
    features, ids = clustered_map()
    maps = pca_rgb([features])
    assert torch.equal(maps.foreground[0], ids >= 0)
    rgb = maps.rgb[0]
    assert rgb[ids < 0].abs().max() == 0
    colours = torch.stack([rgb[ids == k].mean(0) for k in range(4)])
    spread = max(float(rgb[ids == k].std(0).max()) for k in range(4))
    assert spread < 0.01
    assert torch.cdist(colours, colours)[~torch.eye(4, dtype=torch.bool)].min() > 0.3
    assert torch.isnan(maps.components[0][ids < 0]).all() and not torch.isnan(maps.components[0][ids >= 0]).any()


@pytest.mark.parametrize("sign", ["positive", "negative"])
def test_explicit_sign_keeps_one_side_of_the_first_component(sign: str) -> None:
    features, _ = clustered_map()
    (auto,) = foreground_masks([features])
    (fixed,) = foreground_masks([features], sign=sign)
    other = foreground_masks([features], sign="negative" if sign == "positive" else "positive")[0]
    assert torch.equal(fixed | other, torch.ones_like(fixed)) and not (fixed & other).any()
    assert torch.equal(auto, fixed) or torch.equal(auto, other)


def test_same_features_in_two_images_get_the_same_colours() -> None:
    features, _ = clustered_map()
    features = features + 0.5 * torch.randn(features.shape, generator=torch.Generator().manual_seed(1))
    maps = pca_rgb([features, features.flip(-1)], threshold=None)
    assert torch.allclose(maps.rgb[1], maps.rgb[0].flip(1), atol=1e-6)
    batched = pca_rgb(torch.stack([features, features]), threshold=None)
    assert torch.allclose(batched.rgb[0], batched.rgb[1])


def test_too_few_foreground_patches_is_a_clear_error() -> None:
    features, _ = clustered_map()
    with pytest.raises(ValueError, match="pass the background threshold"):
        pca_rgb([features], threshold=1e6)


def test_mutual_matches_recover_a_horizontal_flip_exactly() -> None:
    h, w = 7, 9
    features = torch.randn(32, h, w, generator=torch.Generator().manual_seed(0))
    matches = mutual_matches(features, features.flip(-1))
    assert len(matches) == h * w
    rows, cols = matches.index_a // w, matches.index_a % w
    assert torch.equal(matches.index_b, rows * w + (w - 1 - cols))
    assert torch.allclose(matches.similarity, torch.ones(h * w), atol=1e-5)
    assert torch.equal(matches.similarity, matches.similarity.sort(descending=True).values)


def test_masks_restrict_matches_to_the_foreground() -> None:
    features = torch.randn(32, 6, 6, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[:, :3] = True
    matches = mutual_matches(features, features, mask, mask)
    assert torch.equal(matches.index_a.sort().values, mask.flatten().nonzero()[:, 0])
    assert torch.equal(matches.index_a, matches.index_b)


def test_spread_matches_keep_the_strongest_pair_of_each_cluster() -> None:
    features = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(0))
    noisy = features + 0.3 * torch.randn(features.shape, generator=torch.Generator().manual_seed(1))
    matches = mutual_matches(features, noisy)
    kept = spread_matches(matches, features, noisy, n=5)
    assert len(kept) == 5 < len(matches)
    pairs = set(zip(matches.index_a.tolist(), matches.index_b.tolist()))
    assert set(zip(kept.index_a.tolist(), kept.index_b.tolist())) <= pairs
    assert kept.similarity[0] == matches.similarity[0]
    assert spread_matches(matches, features, noisy, n=len(matches) + 1) is matches


def test_patch_centres_are_pixel_coordinates() -> None:
    centres = patch_centres(torch.tensor([0, 5]), (2, 4), (20, 40))
    assert torch.equal(centres, torch.tensor([[5.0, 5.0], [15.0, 15.0]]))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """scikit-image's sample photographs as files, plus grey, RGBA and 16-bit variants, a tiny and a broken file."""
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("chelsea", "astronaut", "coffee"):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(paths[name])
    chelsea = Image.open(paths["chelsea"])
    variants = {
        "grey": chelsea.convert("L"),
        "rgba": chelsea.convert("RGBA"),
        "grey16": Image.fromarray(np.asarray(chelsea.convert("L")).astype(np.uint16) * 257),
        "tiny": chelsea.resize((10, 10)),
    }
    for name, image in variants.items():
        paths[name] = folder / f"{name}.png"
        image.save(paths[name])
    paths["broken"] = folder / "broken.jpg"
    paths["broken"].write_bytes(b"not an image")
    return paths


def tiny_args(checkpoint: Path) -> list[str]:
    return [
        "--checkpoint",
        str(checkpoint),
        "--embed-dim",
        "64",
        "--depth",
        "4",
        "--num-heads",
        "4",
        "--size",
        "56",
        "--device",
        "cpu",
    ]


def test_pca_cli_writes_the_figure_and_the_components(
    photos: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "figs" / "pca.png"
    images = [photos["chelsea"], photos["astronaut"], photos["coffee"]]
    assert pca_main([*map(str, images), "--out", str(out), "--save-features", *tiny_args(tiny_checkpoint)]) == 0
    with Image.open(out) as figure:
        assert figure.format == "PNG" and figure.height > figure.width > 300
    shapes = {"chelsea": (4, 6, 3), "astronaut": (4, 4, 3), "coffee": (4, 6, 3)}
    for k, image in enumerate(images):
        components = np.load(tmp_path / "figs" / f"pca_{k}_{image.stem}.npy")
        assert components.shape == shapes[image.stem] and components.dtype == np.float32
        assert 0 < np.isfinite(components[..., 0]).sum() < components[..., 0].size
    assert not list(out.parent.glob("*.tmp"))


@pytest.mark.parametrize("foreground", [False, True])
def test_match_cli_writes_the_figure_and_pixel_pairs(
    photos: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path, foreground: bool
) -> None:
    out = tmp_path / "match.png"
    argv = [
        str(photos["chelsea"]),
        str(photos["coffee"]),
        "--out",
        str(out),
        "--num-pairs",
        "4",
        *tiny_args(tiny_checkpoint),
    ]
    assert match_main(argv + ["--foreground"] * foreground) == 0
    with Image.open(out) as figure:
        assert figure.format == "PNG" and figure.width > 2 * figure.height
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["image_a"] == str(photos["chelsea"]) and record["mutual_matches"] >= len(record["pairs"]) == 4
    a, b = np.array([p["a"] for p in record["pairs"]]), np.array([p["b"] for p in record["pairs"]])
    assert ((a > 0) & (a < [451, 300])).all() and ((b > 0) & (b < [600, 400])).all()
    # patch centres: half a patch of the 6x4 (chelsea) and 6x4 (coffee) grids, in original pixels
    for cells in (a[:, 0] / (451 / 6) - 0.5, b[:, 1] / (400 / 4) - 0.5):
        assert np.allclose(cells, cells.round(), atol=1e-3)
    similarities = [p["similarity"] for p in record["pairs"]]
    assert similarities == sorted(similarities, reverse=True) and all(-1 <= s <= 1 for s in similarities)


def test_cli_runs_as_a_module(photos: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.png"
    argv = [
        sys.executable,
        "-m",
        "visualize.match",
        str(photos["astronaut"]),
        str(photos["astronaut"]),
        "--out",
        str(out),
    ]
    done = subprocess.run(
        argv + tiny_args(tiny_checkpoint), cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert out.is_file() and out.with_suffix(".json").is_file()


@pytest.mark.parametrize("variant", ["grey", "rgba", "grey16"])
def test_non_rgb_images_are_converted(
    photos: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path, variant: str, capsys
) -> None:
    out = tmp_path / "pca.png"
    assert pca_main([str(photos[variant]), "--out", str(out), *tiny_args(tiny_checkpoint)]) == 0
    assert "converted to 8-bit RGB" in capsys.readouterr().err and out.is_file()


def test_size_is_rounded_to_the_patch_size(
    photos: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    args = [
        str(photos["astronaut"]),
        "--out",
        str(tmp_path / "pca.png"),
        "--save-features",
        *tiny_args(tiny_checkpoint),
        "--size",
        "60",
    ]
    assert pca_main(args) == 0
    assert "--size 60 is not a multiple of the patch size 14; using 56" in capsys.readouterr().err
    assert np.load(tmp_path / "pca_0_astronaut.npy").shape == (4, 4, 3)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("broken", "Cannot read image"),
        ("tiny", "smaller than one 14x14 patch"),
        ("block", "Block 7 is out of range"),
        ("suffix", "Cannot write a figure"),
        ("checkpoint", "does not exist. Check the path"),
    ],
)
def test_bad_inputs_give_one_clear_message(
    photos: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path, case: str, message: str, capsys
) -> None:
    image = {"missing": str(tmp_path / "nope.jpg"), "broken": str(photos["broken"]), "tiny": str(photos["tiny"])}.get(
        case, str(photos["chelsea"])
    )
    argv = [image, "--out", str(tmp_path / ("pca.xyz" if case == "suffix" else "pca.png")), *tiny_args(tiny_checkpoint)]
    argv += {"block": ["--block", "7"], "checkpoint": ["--checkpoint", str(tmp_path / "none.pth")]}.get(case, [])
    assert pca_main(argv) == 2
    err = capsys.readouterr().err
    assert err.lstrip().startswith("Error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "pca.png").exists()


class ProbeWithBackbone(L.LightningModule):
    """A do-nothing module holding a frozen backbone, as the heads do."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pass


def test_callback_logs_pca_maps_to_tensorboard(tiny_checkpoint: Path, tmp_path: Path) -> None:
    backbone = load_backbone("dinov2_vits14", checkpoint=tiny_checkpoint, **TINY)
    images = torch.randn(5, 3, 56, 70, generator=torch.Generator().manual_seed(0))
    loader = DataLoader([{"image": image} for image in images], batch_size=2)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = L.Trainer(
        accelerator="cpu", logger=logger, callbacks=[PCAMapCallback(max_images=3)], enable_progress_bar=False
    )
    trainer.validate(ProbeWithBackbone(backbone), loader)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["pca/0", "pca/1", "pca/2"]
    logged = events.Images("pca/0")[0]
    assert (logged.width, logged.height) == (2 * 70, 56)


def test_callback_config_composes(tmp_path: Path) -> None:
    cfg = compose_train(["+callbacks=pca_maps"], tmp_path)
    callback = instantiate(cfg.callbacks.pca_maps)
    assert isinstance(callback, PCAMapCallback) and callback.max_images == 4

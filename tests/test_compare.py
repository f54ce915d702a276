"""``python -m visualize.compare``: several backbones' PCA maps of one photograph on the same token grid.

Run on the official-format tiny fixtures (tests/fixtures): DINOv2 ViT-S/14 without and with 4 registers, and
DINOv3 ViT-S/16, all with embed_dim=64, depth=4, num_heads=4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.fixture_paths import DINOV2, TINY_DINOV3, require
from visualize.args import compare_parser
from visualize.compare import DEFAULT_TOKENS, MAX_STRETCH, check_grid, fitted_grid, main, make_compare_figure
from visualize.images import InputError

FILES = {
    "dinov2_vits14": DINOV2 / "tiny_vit14.pth",
    "dinov2_vits14_reg": DINOV2 / "tiny_vit14_reg4.pth",
    "dinov3_vits16": TINY_DINOV3,
}
TINY_ARGS = ["--embed-dim", "64", "--depth", "4", "--num-heads", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def files() -> dict[str, Path]:
    require(*FILES.values())
    return FILES


@pytest.fixture(scope="module")
def chelsea(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's cat photograph (451x300) as a file."""
    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No official weights in the torch.hub cache: a backbone without --checkpoints has none."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))


def argv(image: Path, out: Path, names: list[str], files: dict[str, Path], *extra: str) -> list[str]:
    checkpoints = [f"{name}={files[name]}" for name in names if name in files]
    return [str(image), "--backbones", *names, "--checkpoints", *checkpoints, "--out", str(out), *TINY_ARGS, *extra]


def test_three_backbones_share_the_asked_grid(files: dict[str, Path], chelsea: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs" / "compare.png"
    names = ["dinov2_vits14", "dinov2_vits14_reg", "dinov3_vits16"]
    panels = make_compare_figure(compare_parser().parse_args(argv(chelsea, out, names, files, "--tokens", "8x6")))
    assert [p.name for p in panels] == names
    for panel in panels:
        patch = 16 if panel.name.startswith("dinov3") else 14
        assert panel.patch_size == patch and panel.input_size == (6 * patch, 8 * patch)
        assert panel.rgb.shape == (6, 8, 3) and not panel.random_weights and panel.block == 3
        assert 0 <= panel.rgb.min() and panel.rgb.max() <= 1 and panel.rgb.std() > 0.05
    # each backbone is its own model: the registers model and DINOv3 do not give the plain model's map
    assert not np.allclose(panels[0].rgb, panels[1].rgb) and not np.allclose(panels[0].rgb, panels[2].rgb)
    with Image.open(out) as figure:
        assert figure.format == "PNG" and figure.width > 3 * figure.height
    assert not list(out.parent.glob("*.tmp"))


def test_default_grid_fits_the_image_and_is_said(files: dict[str, Path], chelsea: Path, tmp_path: Path, capsys) -> None:
    names = ["dinov2_vits14", "dinov3_vits16"]
    square = tmp_path / "square.png"
    Image.open(chelsea).crop((75, 0, 375, 300)).save(square)
    for image, size in ((chelsea, (451, 300)), (square, (300, 300))):
        out = tmp_path / f"{image.stem}_compare.png"
        panels = make_compare_figure(compare_parser().parse_args(argv(image, out, names, files, "--dtype", "bfloat16")))
        width, height = fitted_grid(*size)
        assert f"Token grid: {width}x{height}" in capsys.readouterr().out
        assert [p.input_size for p in panels] == [(height * 14, width * 14), (height * 16, width * 16)]
        assert all(p.rgb.shape == (height, width, 3) and p.rgb.isfinite().all() for p in panels)
        assert check_grid(str(image), *size, (width, height)) < 1.02 and out.is_file()


def test_fitted_grid_keeps_the_aspect_ratio_at_about_80x60_tokens() -> None:
    assert fitted_grid(640, 480) == (80, 60) and fitted_grid(480, 640) == (60, 80)  # 4:3 is the report's grid
    side, other = fitted_grid(1000, 1000)
    assert side == other and abs(side * side - DEFAULT_TOKENS) < 2 * side
    for width, height in [(451, 300), (300, 451), (1920, 1080), (6000, 4000), (20, 20), (3000, 500), (500, 3000)]:
        grid = fitted_grid(width, height)
        assert min(grid) >= 2 and 0.8 * DEFAULT_TOKENS <= grid[0] * grid[1] <= 1.44 * DEFAULT_TOKENS
        assert check_grid("x.png", width, height, grid, asked=False) < 1.05
    # a panorama too long for the token budget: the grid is capped, and the image refused rather than stretched
    grid = fitted_grid(100_000, 20)
    assert grid[0] * grid[1] <= DEFAULT_TOKENS
    with pytest.raises(InputError, match="too elongated for the default grid"):
        check_grid("pano.png", 100_000, 20, grid, asked=False)


def test_random_weights_are_said_and_background_removed(files: dict[str, Path], chelsea: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.png"
    names = ["dinov2_vits14", "dinov3_vits16"]
    args = argv(
        chelsea,
        out,
        names,
        {"dinov2_vits14": files["dinov2_vits14"]},
        "--tokens",
        "6x4",
        "--random-weights",
        "--foreground",
    )
    with pytest.warns(UserWarning, match="USING RANDOM WEIGHTS for dinov3_vits16"):
        panels = make_compare_figure(compare_parser().parse_args(args))
    assert [p.random_weights for p in panels] == [False, True] and panels[1].rgb.shape == (4, 6, 3)
    for panel in panels:  # --foreground: background patches are black, the others coloured
        black = (panel.rgb == 0).all(-1)
        assert 0 < black.sum() < black.numel()
    from visualize.compare import panel_title

    assert "RANDOM WEIGHTS" in panel_title(panels[1], None) and "RANDOM" not in panel_title(panels[0], "x.pth")
    assert out.is_file()


def test_grid_stretch_rule() -> None:
    # chelsea's 451x300 on 80x60 tokens: stretched by the ratio of the aspect ratios, within the bound
    assert check_grid("c.png", 451, 300, (80, 60)) == pytest.approx((451 / 300) / (80 / 60))
    assert check_grid("c.png", 300, 451, (60, 80)) == pytest.approx((451 / 300) / (80 / 60))
    with pytest.raises(InputError, match="--tokens 12x8"):
        check_grid("c.png", 451, 300, (6, 8))
    assert check_grid("c.png", 125, 100, (1, 1)) == pytest.approx(MAX_STRETCH)  # the bound itself is allowed


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("aspect", "would stretch"),
        ("tiny", "smaller than one 16x16 patch"),
        ("not_listed", "is not in --backbones"),
        ("twice", "more than once"),
        ("no_weights", "--checkpoints dinov3_vits16=PATH"),
        ("block", "Block 9 is out of range"),
        ("missing_checkpoint", "does not exist"),
    ],
)
def test_bad_inputs_exit_2_with_one_paragraph(
    files: dict[str, Path], chelsea: Path, tmp_path: Path, case: str, message: str, capsys
) -> None:
    image = chelsea
    if case == "tiny":
        image = tmp_path / "tiny.png"
        Image.open(chelsea).resize((15, 10)).save(image)
    names = {"twice": ["dinov2_vits14", "dinov2_vits14"], "not_listed": ["dinov2_vits14"]}.get(
        case, ["dinov2_vits14", "dinov3_vits16"]
    )
    given = {n: f for n, f in files.items() if case != "no_weights" or n != "dinov3_vits16"}
    if case == "missing_checkpoint":
        given = {**given, "dinov3_vits16": tmp_path / "none.pth"}
    extra = {"aspect": ["--tokens", "6x8"], "block": ["--tokens", "6x4", "--block", "9"]}.get(case, ["--tokens", "6x4"])
    args = argv(image, tmp_path / "c.png", names, given, *extra)
    if case == "not_listed":
        args += ["--checkpoints", f"dinov3_vits16={files['dinov3_vits16']}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.lstrip().startswith("Error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "c.png").exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--backbones", "dinov2_vitx14"], "invalid choice: 'dinov2_vitx14'"),
        (["--backbones", "dinov2_vits14", "--tokens", "0x60"], "has a side under 2 tokens"),
        (["--backbones", "dinov2_vits14", "--tokens", "80"], "is not a token grid"),
        (["--backbones", "dinov2_vits14", "--checkpoints", "vit=a.pth"], "'vit' in 'vit=a.pth' is not a backbone"),
    ],
)
def test_bad_options_are_refused_before_anything_loads(
    chelsea: Path, tmp_path: Path, option: list[str], message: str, capsys
) -> None:
    with pytest.raises(SystemExit) as stop:
        main([str(chelsea), "--out", str(tmp_path / "c.png"), *option])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err
    if "invalid choice" in message:  # the valid names are listed
        assert all(name in err for name in ("dinov2_vits14_reg", "dinov3_vits16", "dinov2_vitg14"))
    assert not (tmp_path / "c.png").exists()

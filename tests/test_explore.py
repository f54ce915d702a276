"""visualize.explore: the self-contained page, its embedded features, bad input, and the page itself in headless
Chromium (pointing at a patch shows the best matches the Python reference computes)."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from backbones import load_backbone
from tests.conftest import TINY
from visualize.cli import load_inputs
from visualize.explore import main as explore_main
from visualize.explore_page import decode_features, read_page_data
from visualize.features import patch_maps

SIZE = 112
PATCH = 14


def tiny_args(checkpoint: Path) -> list[str]:
    return [
        "--checkpoint", str(checkpoint), "--embed-dim", "64", "--depth", "4", "--num-heads", "4",
        "--size", str(SIZE), "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three real photographs: a cat, the same cat mirrored, a cup of coffee."""
    folder = tmp_path_factory.mktemp("photos")
    arrays = {"chelsea": data.chelsea(), "mirrored": data.chelsea()[:, ::-1], "coffee": data.coffee()}
    paths = []
    for name, pixels in arrays.items():
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths


@pytest.fixture(scope="module")
def page(photos: list[Path], tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("page") / "explore.html"
    assert explore_main([*map(str, photos), "--out", str(out), *tiny_args(tiny_checkpoint)]) == 0
    return out


class LinkParser(HTMLParser):
    """Collects the tags of a page and their src/href attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.links += [(name, value) for name, value in attrs if name in ("src", "href")]


def unit_rows(features: np.ndarray) -> np.ndarray:
    """``(h, w, d)`` -> ``(h*w, d)`` float64 rows of unit length."""
    rows = features.reshape(-1, features.shape[-1]).astype(np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def page_features(page_data: dict) -> list[np.ndarray]:
    return [unit_rows(decode_features(item["features"], item["rows"], item["cols"])) for item in page_data["images"]]


def reference_best(features: list[np.ndarray], grids: list[tuple[int, int]], image: int, row: int, col: int) -> list:
    """Each image's best match to patch (row, col) of ``image`` by cosine similarity, and whether it is mutual."""
    index = row * grids[image][1] + col
    best = []
    for j, target in enumerate(features):
        sims = target @ features[image][index]
        q = int(np.argmax(sims))
        back = int(np.argmax(features[image] @ target[q]))
        best.append({"image": j, "row": q // grids[j][1], "col": q % grids[j][1], "mutual": back == index})
        best[-1]["score"] = float(sims[q])
    return best


def test_page_is_self_contained_and_embeds_the_features(page: Path, photos: list[Path], tiny_checkpoint: Path) -> None:
    text = page.read_text()
    assert not re.search(r"https?://", text), "the page must not load anything from the network"
    links = LinkParser()
    links.feed(text)
    assert links.tags and not links.links, f"the page must not load other files: {links.links}"
    page_data = read_page_data(text)
    # the script sets each image's src from these
    assert all(item[key].startswith("data:image/") for item in page_data["images"] for key in ("photo", "pca"))
    assert page_data["backbone"] == "tiny_vit14.pth" and page_data["block"] == 3 and not page_data["random_weights"]
    assert "RANDOM WEIGHTS" not in text and page_data["kept_variance"] is None and page_data["dims"] == 64

    backbone = load_backbone("dinov2_vits14", checkpoint=str(tiny_checkpoint), **TINY)
    _, inputs = load_inputs([str(p) for p in photos], SIZE, PATCH)
    with torch.inference_mode():
        maps = patch_maps(backbone, inputs, -1)
    for item, feature_map, x in zip(page_data["images"], maps, inputs):
        assert (item["rows"], item["cols"]) == (x.shape[1] // PATCH, x.shape[2] // PATCH)
        assert (item["height"], item["width"]) == tuple(x.shape[1:])
        decoded = decode_features(item["features"], item["rows"], item["cols"])
        expected = unit_rows(feature_map.permute(1, 2, 0).double().numpy())
        np.testing.assert_allclose(decoded.reshape(expected.shape), expected, atol=1e-3)  # fp16 rounding


def test_wide_features_are_projected_on_their_principal_components(
    photos: list[Path], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "explore.html"
    assert (
        explore_main([*map(str, photos[:2]), "--out", str(out), "--max-dims", "16", *tiny_args(tiny_checkpoint)]) == 0
    )
    page_data = read_page_data(out.read_text())
    assert page_data["dims"] == 16

    backbone = load_backbone("dinov2_vits14", checkpoint=str(tiny_checkpoint), **TINY)
    _, inputs = load_inputs([str(p) for p in photos[:2]], SIZE, PATCH)
    with torch.inference_mode():
        patches = np.concatenate([m.flatten(1).T.double().numpy() for m in patch_maps(backbone, inputs, -1)])
    # float64 reference: the top 16 eigenvectors of the patches' covariance
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(patches, rowvar=False))
    kept = eigenvalues[::-1][:16].sum() / eigenvalues.sum()
    assert page_data["kept_variance"] == pytest.approx(kept, rel=1e-6)
    assert f"keeping {100 * kept:.1f}% of the variance" in capsys.readouterr().out
    projected = unit_rows(patches @ eigenvectors[:, ::-1][:, :16])  # component signs do not change cosines
    decoded = np.concatenate(page_features(page_data))
    np.testing.assert_allclose(decoded @ decoded.T, projected @ projected.T, atol=3e-3)


def test_images_of_very_different_sizes_and_a_single_image(tiny_checkpoint: Path, tmp_path: Path) -> None:
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")  # 451 x 300
    Image.fromarray(data.coffee()[100:120, 200:260]).save(tmp_path / "strip.png")  # 60 x 20: a tiny, long strip
    out = tmp_path / "explore.html"
    assert (
        explore_main(
            [str(tmp_path / "cat.png"), str(tmp_path / "strip.png"), "--out", str(out), *tiny_args(tiny_checkpoint)]
        )
        == 0
    )
    grids = [(item["rows"], item["cols"]) for item in read_page_data(out.read_text())["images"]]
    # shorter side SIZE pixels, the longer one scaled alike and rounded to whole patches
    assert grids == [(SIZE // PATCH, round(451 * SIZE / 300 / PATCH)), (SIZE // PATCH, round(60 * SIZE / 20 / PATCH))]

    assert (
        explore_main([str(tmp_path / "cat.png"), "--out", str(tmp_path / "one.html"), *tiny_args(tiny_checkpoint)]) == 0
    )
    assert len(read_page_data((tmp_path / "one.html").read_text())["images"]) == 1


@pytest.mark.parametrize("case", ["smaller than a patch", "missing image", "out under a file", "out is a folder"])
def test_bad_input_is_one_clear_message(
    case: str, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")
    Image.fromarray(data.chelsea()[:10, :10]).save(tmp_path / "tiny.png")
    (tmp_path / "notes.txt").write_text("")
    image, out, expected = {
        "smaller than a patch": ("tiny.png", "explore.html", "smaller than one 14x14 patch"),
        "missing image": ("nowhere.png", "explore.html", "does not exist"),
        "out under a file": ("cat.png", "notes.txt/explore.html", "cannot be written"),
        "out is a folder": ("cat.png", ".", "is a folder"),
    }[case]
    before = sorted(tmp_path.rglob("*"))
    assert explore_main([str(tmp_path / image), "--out", str(tmp_path / out), *tiny_args(tiny_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before, "nothing may be written"


def test_unknown_backbone_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        explore_main(["cat.png", "--backbone", "dinov2_vitx14", "--out", str(tmp_path / "explore.html")])
    assert stop.value.code == 2 and "dinov2_vitx14" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def chromium_driver():
    """Headless Chromium driven by Selenium through Debian's chromedriver; skips when one of them is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("chromium or chromedriver is not installed (.ci/install_browser installs both, as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def test_pointing_at_a_patch_shows_the_best_matches_python_computes(page: Path, tmp_path: Path) -> None:
    browser = chromium_driver()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    try:
        browser.get(page.as_uri())
        assert browser.execute_script("return window.exploreState.ready") is True
        page_data = read_page_data(page.read_text())
        features = page_features(page_data)
        grids = [(item["rows"], item["cols"]) for item in page_data["images"]]

        # a real pointer over the centre of patch (row, col) of the mirrored cat
        image, row, col = 1, grids[1][0] // 2, grids[1][1] // 3
        view = browser.find_elements(By.CSS_SELECTOR, ".view")[image]
        width, height = view.size["width"], view.size["height"]
        x = (col + 0.5) * width / grids[image][1] - width / 2  # offsets from the element's centre
        y = (row + 0.5) * height / grids[image][0] - height / 2
        ActionChains(browser).move_to_element_with_offset(view, round(x), round(y)).perform()
        state = browser.execute_script("return window.exploreState")
        assert state["selected"] == {"image": image, "row": row, "col": col}
        pointed = [state["best"]]

        # the page's own function, at a patch of the coffee
        state = browser.execute_script("return selectPatch(2, 1, 2)")
        assert state["selected"] == {"image": 2, "row": 1, "col": 2}
        pointed.append(state["best"])

        for best, (i, r, c) in zip(pointed, [(image, row, col), (2, 1, 2)]):
            expected = reference_best(features, grids, i, r, c)
            assert [{k: b[k] for k in ("image", "row", "col", "mutual")} for b in best] == [
                {k: e[k] for k in ("image", "row", "col", "mutual")} for e in expected
            ]
            assert [b["score"] for b in best] == pytest.approx([e["score"] for e in expected], abs=1e-9)
            assert best[i]["row"] == r and best[i]["col"] == c  # in its own image, a patch is its best match

        browser.find_element(By.ID, "pca").click()
        assert browser.execute_script("return window.exploreState.view") == "pca"
        browser.find_element(By.ID, "pca").click()
        browser.execute_script(
            "const s = document.getElementById('threshold'); s.value = '0.5';s.dispatchEvent(new Event('input'));"
        )
        assert browser.execute_script("return window.exploreState.threshold") == 0.5
        assert browser.save_screenshot(str(tmp_path / "explore.png"))
        assert Image.open(tmp_path / "explore.png").size[0] > 0
    finally:
        browser.quit()

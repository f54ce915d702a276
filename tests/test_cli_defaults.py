"""Every command line that reads photographs, with its default options, on four of them: square, portrait, tiny (under
two 14-pixel patches a side) and very large (6000x4000). Each either works (exit 0, its outputs written) or refuses with
one paragraph (exit 2, no traceback); which one is in `EXPECTED`.

Only the model is not the default: the tiny fixture backbone (or a tiny random SAM), on the CPU, with an empty hub
cache. The very large photograph's runs share one subprocess, whose peak memory must stay under `LARGE_PEAK_GB` (and whose
address space is limited to `LARGE_LIMIT_GB`, so that a default that would allocate tens of gigabytes fails here
instead of exhausting the machine); the others run in this process.
Longer than 300 lines: one short function per command line, all run by the same two tests.

`python -m tests.test_cli_defaults IMAGE OUT_DIR [CLI...]` runs the command lines on one photograph (its mask beside it,
as `write_photos` writes them) and prints the results as JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY, TINY_SAM
from tests.fixture_paths import TINY_CHECKPOINT, require

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"square": (300, 300), "portrait": (300, 451), "tiny": (20, 20), "large": (6000, 4000)}
"""Each photograph's (width, height): crops of scikit-image's cat photograph, the large one it upscaled (a JPEG)."""
LARGE_PEAK_GB = 3.5
"""The most resident memory the large photograph's subprocess may reach: 2.4 GB measured (0.9 GB of it torch and the
libraries at rest); 4.4 GB when figures drew the whole photograph and SAM upsampled all 27 candidate masks at once."""
LARGE_LIMIT_GB = 12
"""The address space of the large photograph's subprocess (5.6 GB of it used, measured; torch maps much that it never touches)."""

BACKBONE = [
    "--checkpoint",
    str(TINY_CHECKPOINT),
    *(f"--{key.replace('_', '-')}={value}" for key, value in TINY.items()),
    "--device",
    "cpu",
]
SAM = ["--sam-model-type", "vit_b", *(f"--sam-{k.replace('_', '-')}={v}" for k, v in TINY_SAM.items())]


def write_photos(folder: Path) -> dict[str, Path]:
    """The four photographs (and a mask of each, for the one-shot CLI) in ``folder``."""
    from skimage import data

    cat = data.chelsea()  # 451x300
    images = {
        "square": Image.fromarray(cat[:, 75:375]),
        "portrait": Image.fromarray(cat.transpose(1, 0, 2).copy()),
        "tiny": Image.fromarray(cat[100:120, 200:220]),
        "large": Image.fromarray(cat).resize(SIZES["large"], Image.Resampling.BILINEAR),
    }
    paths = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        assert image.size == SIZES[name]
        paths[name] = folder / (f"{name}.jpg" if name == "large" else f"{name}.png")
        image.save(paths[name], quality=90)
        width, height = image.size
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
        Image.fromarray(mask).save(folder / f"{name}_mask.png")
    return paths


def pca(image: Path, out: Path) -> tuple[int, list[Path]]:
    from visualize.pca import main

    return main([str(image), "--out", str(out / "pca.png"), *BACKBONE]), [out / "pca.png"]


def match(image: Path, out: Path) -> tuple[int, list[Path]]:
    from visualize.match import main

    code = main([str(image), str(image), "--out", str(out / "match.png"), *BACKBONE])
    return code, [out / "match.png", out / "match.json"]


def explore(image: Path, out: Path) -> tuple[int, list[Path]]:
    from visualize.explore import main

    return main([str(image), "--out", str(out / "explore.html"), *BACKBONE]), [out / "explore.html"]


def compare(image: Path, out: Path) -> tuple[int, list[Path]]:
    from visualize.compare import main

    tiny = [f"--{key.replace('_', '-')}={value}" for key, value in TINY.items()]
    argv = [str(image), "--backbones", "dinov2_vits14", "--checkpoints", f"dinov2_vits14={TINY_CHECKPOINT}"]
    return main([*argv, *tiny, "--device", "cpu", "--out", str(out / "compare.png")]), [out / "compare.png"]


def oneshot(image: Path, out: Path) -> tuple[int, list[Path]]:
    from visualize.oneshot import main

    mask = image.with_name(f"{image.stem}_mask.png")
    argv = [str(image), str(mask), str(image), "--out", str(out), *BACKBONE, *SAM, "--random-weights"]
    files = [out / "oneshot.png", out / f"{image.stem}_mask.png", out / f"{image.stem}.json"]
    return main(argv), files


def sam_masks(image: Path, out: Path) -> tuple[int, list[Path]]:
    from visualize.sam_masks import main

    code = main([str(image), "--out", str(out), *SAM, "--random-weights", "--device", "cpu"])
    return code, [out / f"{image.stem}_masks.png", out / f"{image.stem}_masks.json"]


def retrieval(image: Path, out: Path) -> tuple[int, list[Path]]:
    """index (a folder of the one photograph), then query, dedup and cluster on that index."""
    from retrieval.cli import main

    folder, index = out / "photos", out / "index"
    folder.mkdir(parents=True)
    (folder / image.name).symlink_to(image)
    for argv in (
        ["index", str(folder), "--out", str(index), *BACKBONE],
        ["query", str(index), str(image), "--out", str(out / "query"), "--k", "1", "--device", "cpu"],
        ["dedup", str(index), "--threshold", "0.9", "--out", str(out / "dedup")],  # --threshold: required
        ["cluster", str(index), "--k", "1", "--out", str(out / "clusters")],  # --k: required
    ):
        if code := main(argv):
            return code, []
    files = [index / "spec.json", out / "query" / f"{image.stem}.json", out / "query" / f"{image.stem}.png"]
    return 0, [*files, out / "dedup" / "keep_one.txt", out / "clusters" / "clusters.json"]


def train_predict(image: Path, out: Path, overrides: list[str], support: Path | None = None) -> tuple[int, Path]:
    """`python train.py OVERRIDES data.predict_dir=<a folder of the photograph> train=false test=false` with the tiny
    backbone, in this process (loader workers 0: the default 4 only start processes); the exit code and where the
    predictions went."""
    import train
    from tests.helpers import compose_train
    from utils.errors import cli_exit_code, hydra_style

    queries = out / "queries"
    queries.mkdir(parents=True)
    (queries / image.name).symlink_to(image)
    cfg = compose_train(
        [
            *overrides,
            f"backbone.checkpoint={TINY_CHECKPOINT}",
            *(f"backbone.{key}={value}" for key, value in TINY.items()),
            f"data.root={support or out / 'data'}",
            f"data.predict_dir={queries}",
            "data.num_workers=0",
            "train=false",
            "test=false",
            "trainer=cpu",
        ],
        out / "run",
    )
    return cli_exit_code(lambda: train.run(cfg), hydra_style), Path(cfg.head.predict_dir_out)


def classify(image: Path, out: Path) -> tuple[int, list[Path]]:
    """`train.py head=fewshot data=imagefolder data.root=SUPPORT data.predict_dir=QUERIES test=false`: the
    classification predict CLI, with two classes of two images each."""
    support = out / "support"
    for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (support / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 48), tuple(c + 10 * i for c in colour)).save(support / name / f"{i}.png")
    code, predictions = train_predict(image, out, ["head=fewshot", "data=imagefolder"], support)
    return code, [predictions / "predictions.csv"]


def segment(image: Path, out: Path) -> tuple[int, list[Path]]:
    """`train.py head=linear_seg data=ade20k train=false head.checkpoint=HEAD data.predict_dir=...`: 150 classes."""
    from tests.test_train import write_released_head

    head = out / "head.pth"
    write_released_head(head, channels=TINY["embed_dim"], num_classes=150)
    code, predictions = train_predict(image, out, ["head=linear_seg", "data=ade20k", f"head.checkpoint={head}"])
    return code, [predictions / f"{image.stem}.png"]


def depth(image: Path, out: Path) -> tuple[int, list[Path]]:
    """`train.py head=depth_linear4 data=nyu train=false head.checkpoint=HEAD data.predict_dir=...` (the tiny
    backbone's 4 blocks are its last 4)."""
    from tests.fixture_paths import DINOV2

    head = [f"head.checkpoint={DINOV2 / 'tiny_vit14_depth_linear4_head.pth'}", "head.out_index=[0,1,2,3]"]
    code, predictions = train_predict(image, out, ["head=depth_linear4", "data=nyu", *head])
    return code, [predictions / f"{image.stem}_depth.png", predictions / f"{image.stem}_depth_color.png"]


CLIS: dict[str, Callable[[Path, Path], tuple[int, list[Path]]]] = {
    "visualize.pca": pca,
    "visualize.match": match,
    "visualize.explore": explore,
    "visualize.compare": compare,
    "visualize.oneshot": oneshot,
    "visualize.sam_masks": sam_masks,
    "retrieval index/query/dedup/cluster": retrieval,
    "train.py head=fewshot predict": classify,
    "train.py head=linear_seg predict": segment,
    "train.py head=depth_linear4 predict": depth,
}
EXPECTED = {cli: dict.fromkeys(SIZES, 0) for cli in CLIS}
"""The exit code of each command line on each photograph: every default fits every one of them."""


def run_case(cli: str, image: Path, out: Path) -> dict[str, object]:
    """One command line on one photograph: its exit code, what it wrote to stderr, and the outputs it lacks."""
    out.mkdir(parents=True, exist_ok=True)
    err, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random SAM's warning
        code, files = CLIS[cli](image, out)
    return {
        "cli": cli,
        "image": image.stem,
        "code": code,
        "stderr": err.getvalue(),
        "stdout": stdout.getvalue(),
        "missing": [str(f) for f in files if not f.is_file()] if code == 0 else [],
    }


def check(result: dict) -> None:
    """Exit 0 with every output, or exit 2 with one paragraph; and the expected one of them."""
    assert "Traceback" not in result["stderr"], result["stderr"]
    assert result["code"] == EXPECTED[result["cli"]][result["image"]], result["stderr"]
    if result["code"] == 0:
        assert not result["missing"]
    else:
        message = result["stderr"].split("Error: ", 1)[1].strip()
        assert message and "\n" not in message


def short(result: dict) -> str:
    """The table cell: exit 0 and the output, or exit 2 and the start of the paragraph."""
    if result["code"] == 0:
        note = next((line for line in result["stdout"].splitlines() if line.startswith("Token grid")), "")
        return "0" + (f" ({note.split(',')[0]})" if note else "")
    return f"{result['code']}: " + result["stderr"].split("Error: ", 1)[-1].strip()[:60]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require(TINY_CHECKPOINT)
    return write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))


@pytest.mark.parametrize("image", ["square", "portrait", "tiny"])
@pytest.mark.parametrize("cli", CLIS)
def test_defaults_fit_the_photograph(cli: str, image: str, photos: dict[str, Path], tmp_path: Path) -> None:
    result = run_case(cli, photos[image], tmp_path / "out")
    check(result)
    if cli == "visualize.compare" and result["code"] == 0:  # the grid fits the photograph, and is said
        from visualize.compare import fitted_grid

        assert "Token grid: {}x{}".format(*fitted_grid(*SIZES[image])) in result["stdout"]


SLOW_ON_LARGE = ("train.py head=linear_seg predict",)
"""30 s on the large photograph, on a shared 2-core CPU: its 150 classes upsampled to 24 megapixels, two at a time."""


@pytest.mark.parametrize(
    "clis",
    [
        pytest.param([c for c in CLIS if c not in SLOW_ON_LARGE], id="most"),
        pytest.param(list(SLOW_ON_LARGE), id="segmentation", marks=pytest.mark.slow),
    ],
)
def test_defaults_fit_a_very_large_photograph_in_bounded_memory(
    clis: list[str], photos: dict[str, Path], tmp_path: Path
) -> None:
    """The command lines on the 6000x4000 photograph, in one subprocess limited to `LARGE_LIMIT_GB` of address space."""

    def limit() -> None:
        size = LARGE_LIMIT_GB * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    env = {**os.environ, "TORCH_HOME": str(tmp_path / "hub"), "MALLOC_ARENA_MAX": "2"}  # fewer address-space arenas
    command = [sys.executable, "-m", "tests.test_cli_defaults", str(photos["large"]), str(tmp_path), *clis]
    proc = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, preexec_fn=limit, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert [r["cli"] for r in report["results"]] == clis
    for result in report["results"]:
        check(result)
    assert report["peak_rss_gb"] < LARGE_PEAK_GB


def test_display_copy_of_a_large_photograph_keeps_its_shape_and_masks() -> None:
    from writers.overlays import DISPLAY_MAX_SIDE, display_copy, pixel_extent

    image = np.zeros((4000, 6000, 3), np.uint8)
    masks = np.zeros((2, 4000, 6000), bool)
    masks[0, :2000], masks[1, :, 3000:] = True, True
    small, small_masks = display_copy(image, masks)
    assert small.shape[:2] == (round(4000 * DISPLAY_MAX_SIDE / 6000), DISPLAY_MAX_SIDE)
    assert small_masks.shape == (2, *small.shape[:2]) and small_masks.dtype == bool
    assert abs(small_masks[0].mean() - 0.5) < 0.01 and abs(small_masks[1].mean() - 0.5) < 0.01
    assert pixel_extent(image) == (-0.5, 5999.5, 3999.5, -0.5)
    thumb = image[:300, :400]
    assert display_copy(thumb, masks[:, :300, :400])[0] is thumb  # small enough: drawn as it is


def main(argv: list[str]) -> None:
    """``IMAGE OUT_DIR CLI...``: the named command lines (keys of `CLIS`; all without any) on the photograph; prints
    one JSON line: the results and the process's peak resident memory in GB."""
    image, out = Path(argv[0]), Path(argv[1])
    results = [run_case(cli, image, out / f"{number}") for number, cli in enumerate(argv[2:] or CLIS)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # ru_maxrss: kB on Linux
    print(json.dumps({"results": results, "peak_rss_gb": round(peak, 2)}))


if __name__ == "__main__":
    main(sys.argv[1:])

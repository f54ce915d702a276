"""One-shot segmentation end to end: the Lightning test loop through train.py, and `python -m visualize.oneshot` on
real photographs with the fixture backbone and a tiny SAM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

import train
from tests.conftest import TINY, TINY_SAM
from tests.helpers import compose_train
from utils.errors import UserError
from visualize.oneshot import main

SAM_FLAGS = [f"--sam-{key.replace('_', '-')}={value}" for key, value in TINY_SAM.items()]


def oneshot_run(tmp_path: Path, checkpoint: Path, *overrides: str):
    return compose_train(
        [
            "experiment=oneshot_quickstart",
            f"backbone.checkpoint={checkpoint}",
            *(f"backbone.{key}={value}" for key, value in TINY.items()),
            *(f"sam.{key}={value}" for key, value in TINY_SAM.items()),
            f"data.root={tmp_path / 'shapes'}",
            "head.image_size=112",
            "head.overlays=2",
            *overrides,
        ],
        tmp_path,
    )


def test_the_test_loop_reports_miou_and_fb_iou_over_the_episodes(tmp_path: Path, tiny_checkpoint: Path) -> None:
    cfg = oneshot_run(tmp_path, tiny_checkpoint)
    metrics = train.run(cfg)
    run = Path(cfg.paths.output_dir)
    rows = json.loads((run / "oneshot_episodes.json").read_text())
    assert len(rows) == 36 and len(list((run / "overlays").glob("episode_*.png"))) == 2
    per_class = class_counts(rows)
    assert len(per_class) == 6  # every class had an episode
    assert metrics["test/mIoU"] == pytest.approx(np.mean([i / max(u, 1) for i, u in per_class.values()]), abs=1e-12)
    assert 0.0 <= metrics["test/FB-IoU"] <= 1.0
    classes = json.loads((run / "oneshot_classes.json").read_text())
    assert {row["class_id"] for row in classes} == set(per_class)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["random_weights"] is True  # the tiny SAM has random weights, and the record says so


def class_counts(rows: list[dict]) -> dict[int, list[int]]:
    """Per class, the intersections and unions summed over its episodes."""
    per_class: dict[int, list[int]] = {}
    for row in rows:
        counts = per_class.setdefault(row["class_id"], [0, 0])
        counts[0] += row["intersection"]
        counts[1] += row["union"]
    return per_class


def test_a_class_without_episode_counts_as_zero_in_miou_as_in_hsnet(tmp_path: Path, tiny_checkpoint: Path) -> None:
    cfg = oneshot_run(tmp_path, tiny_checkpoint, "data.n_episodes=3", "head.overlays=0")
    with pytest.warns(UserWarning, match=r"(\d) of the 6 evaluated classes had no episode and count as IoU 0"):
        metrics = train.run(cfg)
    per_class = class_counts(json.loads((Path(cfg.paths.output_dir) / "oneshot_episodes.json").read_text()))
    assert len(per_class) < 6
    assert metrics["test/mIoU"] == pytest.approx(sum(i / max(u, 1) for i, u in per_class.values()) / 6, abs=1e-12)


def test_the_persam_baseline_runs_as_a_head_option(tmp_path: Path, tiny_checkpoint: Path) -> None:
    metrics = train.run(oneshot_run(tmp_path, tiny_checkpoint, "head.method=persam", "data.n_episodes=6"))
    assert 0.0 <= metrics["test/mIoU"] <= 1.0


def test_a_head_on_data_without_episodes_says_what_to_choose(tmp_path: Path, tiny_checkpoint: Path) -> None:
    cfg = oneshot_run(tmp_path, tiny_checkpoint, "data=ade20k", f"data.root={tmp_path / 'ade'}", "data.generate=true")
    with pytest.raises(UserError, match="head=oneshot evaluates one-shot episodes.*data=fss1000"):
        train.run(cfg)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real photographs: the cat (with a rough mask around it), the cat mirrored, and a cup of coffee."""
    root = tmp_path_factory.mktemp("photos")
    cat = data.chelsea()
    paths = {"cat": root / "cat.jpg", "mirrored": root / "mirrored.jpg", "coffee": root / "coffee.jpg"}
    Image.fromarray(cat).save(paths["cat"])
    Image.fromarray(cat[:, ::-1]).save(paths["mirrored"])
    Image.fromarray(data.coffee()).save(paths["coffee"])
    mask = np.zeros(cat.shape[:2], np.uint8)
    yy, xx = np.mgrid[: cat.shape[0], : cat.shape[1]]
    mask[((yy - 170) / 130) ** 2 + ((xx - 200) / 150) ** 2 < 1] = 255
    paths["mask"] = root / "mask.png"
    Image.fromarray(mask).save(paths["mask"])
    return paths


def cli(photos: dict[str, Path], checkpoint: Path, out: Path, *extra: str, mask: str = "mask") -> list[str]:
    return [
        str(photos["cat"]),
        str(photos[mask]) if mask in photos else mask,
        str(photos["mirrored"]),
        str(photos["coffee"]),
        "--out",
        str(out),
        "--checkpoint",
        str(checkpoint),
        *(f"--{key.replace('_', '-')}={value}" for key, value in TINY.items()),
        "--random-weights",
        "--device",
        "cpu",
        "--size",
        "112",
        *SAM_FLAGS,
        *extra,
    ]


def test_the_cli_writes_masks_json_and_the_figure(
    photos: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main(cli(photos, tiny_checkpoint, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".outputs.json",  # the run's files, for utils.outputs
        "coffee.json",
        "coffee_mask.png",
        "mirrored.json",
        "mirrored_mask.png",
        "oneshot.png",
    ]
    record = json.loads((out / "mirrored.json").read_text())
    mask = np.asarray(Image.open(out / "mirrored_mask.png"))
    assert mask.shape == data.chelsea().shape[:2] and set(np.unique(mask)) <= {0, 255}
    assert record["mask_pixels"] == int((mask > 0).sum()) and record["random_weights"] is True
    assert record["points"] and {p["label"] for p in record["points"]} <= {"positive", "negative"}
    height, width = mask.shape
    assert all(0 <= p["x"] <= width and 0 <= p["y"] <= height for p in record["points"])
    assert Image.open(out / "oneshot.png").size[0] > 0


@pytest.mark.parametrize(
    ("make_mask", "message"),
    [
        (lambda m: (m > 0).astype(np.uint8) * 2, "holds the values 0, 2"),
        (lambda m: m[:-10], "is 451x290 pixels but its image is 451x300"),
        (lambda m: np.zeros_like(m), "marks no pixel as the object"),
        (lambda m: np.full_like(m, 255), "marks every pixel as the object"),
    ],
)
def test_bad_reference_masks_are_refused_before_any_output(
    photos: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, make_mask, message
) -> None:
    bad = tmp_path / "bad.png"
    Image.fromarray(make_mask(np.asarray(Image.open(photos["mask"])))).save(bad)
    out = tmp_path / "out"
    assert main(cli(photos, tiny_checkpoint, out, mask=str(bad))) == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_a_mask_that_is_not_an_image_is_named(
    photos: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "mask.png"
    bad.write_text("not a png\n")
    out = tmp_path / "out"
    assert main(cli(photos, tiny_checkpoint, out, mask=str(bad))) == 2
    err = capsys.readouterr().err
    assert f"Cannot read mask {bad}" in err and "Traceback" not in err and not out.exists()

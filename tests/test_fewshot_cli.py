"""train.py with head=fewshot / knn / linear_probe and data=imagefolder, end to end on generated class folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig
from PIL import Image

import train
from datamodules.classification.imagefolder import ClassFolderError, ImageFolderDataModule
from datamodules.errors import DatasetError
from tests.conftest import TINY
from tests.helpers import compose_train


def make_class_folders(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    """One folder per class of 40x40 noisy images around the class's colour (the colour is a hash of the name)."""
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        colour = np.random.default_rng(sum(map(ord, name))).integers(0, 256, 3)
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.clip(colour + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def tiny_run(tmp_path: Path, checkpoint: Path, *overrides: str) -> DictConfig:
    """The fixture backbone on 28 px images, loaded in the test process."""
    return compose_train(
        [
            f"backbone.checkpoint={checkpoint}",
            *(f"backbone.{key}={value}" for key, value in TINY.items()),
            "data=imagefolder",
            "data.resize_size=28",
            "data.crop_size=28",
            "data.num_workers=0",
            "data.batch_size=16",
            "trainer=cpu",
            *overrides,
        ],
        tmp_path,
    )


CLASSES = {f"class{c}": 6 for c in range(6)}


def test_fewshot_prints_and_writes_every_method_and_k(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    make_class_folders(tmp_path / "images", CLASSES)
    cfg = tiny_run(
        tmp_path,
        tiny_checkpoint,
        "head=fewshot",
        f"data.root={tmp_path / 'images'}",
        "data.k_shot=[1,2]",
        "data.n_queries=3",
        "data.n_episodes=20",
    )
    assert cfg.train is False
    metrics = train.run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    rows = list(csv.DictReader((run_dir / "fewshot.csv").open()))
    assert rows == [{k: str(v) for k, v in row.items()} for row in json.loads((run_dir / "fewshot.json").read_text())]
    assert [(r["method"], r["k_shot"]) for r in rows] == [
        (m, k) for k in "12" for m in ("centre_and_project", "knn", "logistic_regression")
    ]
    for row in rows:
        key = f"test/{row['method']}/5way_{row['k_shot']}shot"
        assert float(row["accuracy"]) == pytest.approx(100 * metrics[key], abs=0.01)
        assert float(row["ci95"]) == pytest.approx(100 * metrics[key + "_ci95"], abs=0.01)
        assert row["episodes"] == "20" and row["n_queries"] == "3"
    assert "+-" in capsys.readouterr().out

    replay = tiny_run(
        tmp_path / "replay",
        tiny_checkpoint,
        "head=fewshot",
        f"data.root={tmp_path / 'images'}",
        f"data.episodes_file={run_dir / 'episodes_5way_2shot.json'}",
        "data.k_shot=7",
    )
    assert train.run(replay) == {k: v for k, v in metrics.items() if "2shot" in k}


def test_predict_mode_writes_a_prediction_per_query(tmp_path: Path, tiny_checkpoint: Path) -> None:
    make_class_folders(tmp_path / "support", {"red": 2, "blue": 2})
    make_class_folders(tmp_path / "mixed", {"queries": 3})
    cfg = tiny_run(
        tmp_path,
        tiny_checkpoint,
        "head=fewshot",
        "test=false",
        f"data.root={tmp_path / 'support'}",
        f"data.predict_dir={tmp_path / 'mixed' / 'queries'}",
    )
    train.run(cfg)
    out = Path(cfg.head.predict_dir_out)
    rows = json.loads((out / "predictions.json").read_text())
    assert [Path(r["image"]).name for r in rows] == ["0.png", "1.png", "2.png"]
    assert all(r["prediction"] in ("blue", "red") and r["score"] == max(r["score_blue"], r["score_red"]) for r in rows)
    assert len(list(csv.DictReader((out / "predictions.csv").open()))) == 3


@pytest.mark.parametrize("head", ["knn", "linear_probe"])
def test_split_evaluations(tmp_path: Path, tiny_checkpoint: Path, head: str) -> None:
    counts = {f"class{c}": 8 for c in range(3)}
    make_class_folders(tmp_path / "split" / "train", counts, seed=0)
    make_class_folders(tmp_path / "split" / "val", {k: 3 for k in counts}, seed=1)
    cfg = tiny_run(
        tmp_path,
        tiny_checkpoint,
        f"head={head}",
        f"data.root={tmp_path / 'split'}",
        "head.epochs=2" if head == "linear_probe" else "head.ks=[1,5]",
    )
    metrics = train.run(cfg)
    rows = json.loads((Path(cfg.paths.output_dir) / f"{head}.json").read_text())
    if head == "knn":
        assert [r["k"] for r in rows] == [1, 5] and metrics["test/knn_k1_top1"] == pytest.approx(
            rows[0]["top1"] / 100, abs=1e-4
        )
    else:
        assert len(rows) == 2 * 2 * 13 and sum(r["best"] for r in rows) == 1
        best = next(r for r in rows if r["best"])
        assert best["held_out_top1"] == max(r["held_out_top1"] for r in rows)
        assert metrics["test/linear_top1"] == pytest.approx(best["val_top1"] / 100, abs=1e-4)


def datamodule(root: Path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        str(root), n_way=3, k_shot=2, n_queries=2, resize_size=28, crop_size=28, num_workers=0, **kwargs
    )


def test_small_classes_are_skipped_with_a_warning_or_refused(tmp_path: Path) -> None:
    make_class_folders(tmp_path, {"a": 4, "b": 4, "c": 4, "tiny": 3})
    dm = datamodule(tmp_path)
    with pytest.warns(UserWarning, match="tiny"):
        dm.setup("test")
    assert dm.class_names == ["a", "b", "c"] and len(dm.sets[0]) == 12
    with pytest.raises(ClassFolderError, match=r"tiny \(3 images\).*data.too_few=skip"):
        datamodule(tmp_path, too_few="fail").setup("test")
    with pytest.warns(UserWarning), pytest.raises(ClassFolderError, match="data.n_way=4 but .* only 3 class"):
        ImageFolderDataModule(str(tmp_path), n_way=4, k_shot=2, n_queries=2).setup("test")


def test_bad_images_are_converted_or_named(tmp_path: Path) -> None:
    make_class_folders(tmp_path, {"a": 4, "b": 4, "c": 4})
    Image.fromarray(np.full((30, 30), 40000, dtype=np.uint16)).save(tmp_path / "a" / "0.png")
    Image.fromarray(np.zeros((30, 30), dtype=np.uint8)).save(tmp_path / "a" / "1.png")
    Image.fromarray(np.zeros((30, 30, 4), dtype=np.uint8)).save(tmp_path / "a" / "2.png")
    dm = datamodule(tmp_path)
    dm.setup("test")
    assert all(dm.sets[0][i]["image"].shape == (3, 28, 28) for i in range(3))
    (tmp_path / "b" / "0.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"b/0.png"):
        dm.sets[0][4]


def test_missing_or_mismatched_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(ClassFolderError, match="is not a folder"):
        datamodule(tmp_path / "nowhere").setup("test")
    make_class_folders(tmp_path / "train", {"a": 2, "b": 2})
    make_class_folders(tmp_path / "val", {"a": 2, "c": 2})
    with pytest.raises(ClassFolderError, match="different classes"):
        datamodule(tmp_path, splits=["train", "val"]).setup("test")
    (tmp_path / "val" / "empty").mkdir()
    with pytest.raises(ClassFolderError, match="empty.* holds no"):
        datamodule(tmp_path / "val").setup("test")

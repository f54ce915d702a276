"""Zero-shot edge detection: the BSDS500 benchmark on hand-made boundaries, the .mat reader, SAM's edge maps, and the
quickstart through train.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from segment_anything import SamPredictor
from segment_anything.utils.amg import build_point_grid

import train
from datamodules.errors import DatasetError
from datamodules.sam.bsds500 import (
    BSDS500DataModule,
    label_boundaries,
    read_boundaries,
    write_boundaries,
    write_bsds_like,
)
from metrics.edges import EdgeBenchmark, image_counts, match_edges, summarize, thin_edges, thresholds
from sam.edges import edge_map, edge_nms, grid_mask_probabilities, sobel_magnitude
from sam.model import build_sam
from tests.conftest import TINY_SAM
from tests.helpers import compose_train
from utils.errors import exit_on_user_error, hydra_style


def pixels(shape: tuple[int, int], *points: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for p in points:
        out[p] = True
    return out


def f_measure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall)


def test_a_perfect_prediction_scores_one() -> None:
    labels = np.zeros((40, 50), np.int32)
    labels[10:30, 8:20] = 1
    labels[5:25, 30:45] = 2
    # the benchmark thins a prediction; a boundary map that thinning leaves as it is, predicted exactly
    truth = thin_edges(label_boundaries(labels))
    assert (thin_edges(truth) == truth).all() and truth.sum() > 50
    counts = np.stack([image_counts(truth.astype(float), truth[None], thresholds(9))] * 2)
    result = summarize(counts)
    assert result["ODS"] == pytest.approx(1) and result["OIS"] == pytest.approx(1)
    assert result["AP"] == pytest.approx(1) and result["R50"] == pytest.approx(1)


def test_counts_agree_with_a_hand_computed_case() -> None:
    shape = (20, 20)
    radius = 2.0  # pixels: max_dist is a fraction of the diagonal
    max_dist = radius / np.hypot(*shape)
    # annotator 1: four boundary pixels; the first two have a prediction 1 px away, (5, 7) and (15, 15) none
    first = pixels(shape, (5, 5), (5, 6), (5, 7), (15, 15))
    # annotator 2: one pixel, 1 px from the prediction at (10, 10), which is 5+ px from annotator 1's pixels
    second = pixels(shape, (10, 11))
    pred = pixels(shape, (6, 5), (6, 6), (10, 10))
    counts = image_counts(pred.astype(float), np.stack([first, second]), thresholds(5), max_dist, thinning=False)
    # by hand: recall counts 2 of 4 (annotator 1) + 1 of 1 (annotator 2); precision 3 predicted pixels, each matched
    # to some annotator (union)
    assert counts.tolist() == [[3, 5, 3, 3]] * 5
    alone = image_counts(pred.astype(float), first[None], thresholds(5), max_dist, thinning=False)
    assert alone.tolist() == [[2, 4, 2, 3]] * 5
    result = summarize(alone[None])
    precision, recall = 2 / 3, 2 / 4
    assert result["ODS"] == pytest.approx(f_measure(precision, recall))
    assert result["OIS"] == pytest.approx(f_measure(precision, recall))
    assert result["AP"] == pytest.approx(precision * recall)  # one recall value: the step's area
    assert result["R50"] == pytest.approx(recall)  # precision 2/3 >= 50% at every threshold


def test_a_graded_map_gives_the_interpolated_curve() -> None:
    """Two thresholds' worth of edges: ODS interpolates between them, AP is the BSDS sum over recalls 0..1."""
    shape = (30, 30)
    truth = pixels(shape, *[(10, c) for c in range(5, 25)])
    edges = truth * 0.8
    edges[10, 15:25] = 0.3  # above t = 0.5 only the first 10 pixels: recall 10/20 at precision 1
    edges[20, 5:15] = 0.3  # 10 far false edges below t = 0.5: precision 20/30 at recall 1
    counts = image_counts(edges, truth[None], np.array([0.25, 0.5]), 0.0075, thinning=False)
    assert counts.tolist() == [[20, 20, 20, 30], [10, 20, 10, 10]]
    result = summarize(counts[None])
    a = np.linspace(0, 1, 100)
    r, p = 1 * (1 - a) + 0.5 * a, (2 / 3) * (1 - a) + 1 * a
    assert result["ODS"] == pytest.approx(max(2 * p * r / (p + r)))
    recalls = np.linspace(0, 1, 101)
    inside = recalls >= 0.5 - 1e-12
    assert result["AP"] == pytest.approx(np.interp(recalls[inside], [0.5, 1], [1, 2 / 3]).sum() / 100)
    assert result["OIS"] == pytest.approx(max(f_measure(2 / 3, 1), f_measure(1, 0.5)))


def test_the_matching_never_matches_one_pixel_twice() -> None:
    shape = (12, 12)
    # two predictions within reach of one boundary pixel: one match
    one, two = match_edges(pixels(shape, (5, 4), (5, 6)), pixels(shape, (5, 5)), 1.5)
    assert one.sum() == two.sum() == 1
    # A is near both boundary pixels, B only near the first: a greedy nearest match (A-first) leaves B alone; the
    # matching finds both
    pred = pixels(shape, (3, 3), (3, 0))
    truth = pixels(shape, (3, 2), (3, 5))
    matched_pred, matched_truth = match_edges(pred, truth, 2.0)
    assert matched_pred.sum() == matched_truth.sum() == 2
    rng = np.random.default_rng(0)
    pred, truth = rng.random((30, 30)) < 0.2, rng.random((30, 30)) < 0.1
    matched_pred, matched_truth = match_edges(pred, truth, 3.0)
    assert matched_pred.sum() == matched_truth.sum() <= min(pred.sum(), truth.sum())
    assert not (matched_pred & ~pred).any() and not (matched_truth & ~truth).any()


def test_thinning_gives_one_pixel_wide_edges() -> None:
    band = np.zeros((30, 40), bool)
    band[10:16, 5:35] = True
    thinned = thin_edges(band)
    assert thinned.any() and not (thinned & ~band).any()
    blocks = thinned[:-1, :-1] & thinned[1:, :-1] & thinned[:-1, 1:] & thinned[1:, 1:]
    assert not blocks.any()  # no 2x2 block of edge pixels anywhere
    assert (thinned[:, 10:30].sum(0) == 1).all()  # one pixel across the band
    # the edge NMS keeps the ridge of a blurred step's gradient and drops its flanks
    ridge = np.exp(-(((np.arange(40) - 20.0) / 2) ** 2))[None].repeat(30, 0)
    kept = edge_nms(ridge) > 0
    assert kept[10:20, 20].all() and not kept[10:20, 17].any() and not kept[10:20, 23].any()


def test_the_mat_reader_reads_a_bsds_file(tmp_path: Path) -> None:
    labels = [np.zeros((8, 10), np.int32) for _ in range(2)]
    labels[0][2:6, 3:7] = 1
    labels[1][3:7, 3:8] = 2
    write_boundaries(tmp_path / "a.mat", labels)
    read = read_boundaries(tmp_path / "a.mat")
    assert read.dtype == bool and read.shape == (2, 8, 10)
    assert (read == np.stack([label_boundaries(x) > 0 for x in labels])).all()
    # a file written as MATLAB writes BSDS's: a 1 x 1 cell holding a struct
    cell = np.empty((1, 1), object)
    cell[0, 0] = {"Segmentation": np.ones((4, 5), np.uint16), "Boundaries": np.eye(4, 5, dtype=np.uint8)}
    scipy.io.savemat(tmp_path / "b.mat", {"groundTruth": cell})
    assert (read_boundaries(tmp_path / "b.mat")[0] == np.eye(4, 5, dtype=bool)).all()
    (tmp_path / "c.mat").write_text("not a MATLAB file")
    with pytest.raises(DatasetError, match="c.mat: not a BSDS500 ground-truth file"):
        read_boundaries(tmp_path / "c.mat")


@pytest.mark.parametrize(
    ("boundaries", "message"),
    [
        (np.full((4, 5), np.nan), "holds float64 values that are not finite"),
        (np.full((4, 5), "x", dtype=object), "holds object values"),
        (np.zeros((4, 5), complex), "holds complex128 values"),
    ],
)
def test_a_bsds_file_with_bad_boundaries_is_refused(tmp_path: Path, boundaries: np.ndarray, message: str) -> None:
    """A .mat whose second annotator's map is not 0 / 1 numbers (NaN, a cell, complex): the file and map named."""
    cells = np.empty((1, 2), object)
    for k, maps in enumerate((np.eye(4, 5, dtype=np.uint8), boundaries)):
        cells[0, k] = {"Segmentation": np.ones((4, 5), np.uint16), "Boundaries": maps}
    scipy.io.savemat(tmp_path / "bad.mat", {"groundTruth": cells})
    with pytest.raises(DatasetError, match=rf"bad\.mat: boundary map 1 \(groundTruth\{{2\}}\.Boundaries\) {message}"):
        read_boundaries(tmp_path / "bad.mat")


def test_grid_masks_are_sam_predictors_probabilities() -> None:
    torch.manual_seed(0)  # a random SAM's predicted IoUs sit near 0: another draw can have none above the threshold
    sam = build_sam("vit_b", **TINY_SAM)
    image = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    grid = build_point_grid(3) * np.array([32, 24])
    logits = np.concatenate(
        [predictor.predict(point[None], np.array([1]), multimask_output=True, return_logits=True)[0] for point in grid]
    )
    sam.mask_threshold = float(np.median(logits))  # a random SAM's logits are near 0: masks of some pixels each
    probabilities = grid_mask_probabilities(sam, image, points_per_side=3, points_per_batch=4)
    assert probabilities.dtype == np.float32 and probabilities.shape[1:] == (24, 32)
    assert 1 <= len(probabilities) <= 27
    expected = 1 / (1 + np.exp(-logits.astype(np.float64)))
    for kept in probabilities:  # each kept map is one of the 27 point-prompt masks' sigmoid, as SamPredictor makes it
        assert np.abs(expected - kept).max((1, 2)).min() < 1e-5
    edges = edge_map(sam, image, points_per_side=3)
    assert edges.shape == (24, 32) and 0 <= edges.min() and edges.max() <= 1
    with pytest.raises(ValueError, match="points_per_side=0 must be a whole number of at least 1"):
        grid_mask_probabilities(sam, image, points_per_side=0)
    with pytest.raises(ValueError, match="at least 2x2 pixels"):
        edge_map(sam, image[:1, :1])


def test_an_oracles_masks_give_edges_the_benchmark_scores_high(tmp_path: Path) -> None:
    """The post-processing and the benchmark end to end, at BSDS's image size (481x321, a 4.3-pixel tolerance):
    the probability maps of an annotator's own segments (blurred as a mask decoder's are) through the Sobel filter
    and edge NMS find that annotator's boundaries."""
    root = write_bsds_like(tmp_path / "bsds", n_images=1, size=(321, 481))
    truth_file = root / "groundTruth" / "test" / "0000.mat"
    segments = scipy.io.loadmat(truth_file)["groundTruth"][0, 0]["Segmentation"][0, 0].astype(int)
    probabilities = np.stack([gaussian_filter((segments == k).astype(float), 1.0) for k in np.unique(segments)])
    edges = edge_nms(sobel_magnitude(probabilities))
    benchmark = EdgeBenchmark(9)
    benchmark.update(edges / edges.max(), read_boundaries(truth_file)[:1])
    counts = benchmark.counts[0][0].numpy()
    assert (counts[:, 2] >= 0.97 * counts[:, 3]).all()  # precision: the edges are the segments' boundaries
    assert benchmark.compute()["ODS"] > 0.85


def edges_run(tmp_path: Path, *overrides: str):
    return compose_train(
        [
            "experiment=sam_edges_quickstart",
            *(f"sam.{key}={value}" for key, value in TINY_SAM.items()),
            f"data.root={tmp_path / 'bsds'}",
            "data.generate_n=2",
            "head.points_per_side=8",
            "head.thresholds=19",
            *overrides,
        ],
        tmp_path,
    )


def test_the_quickstart_logs_the_four_metrics(tmp_path: Path) -> None:
    cfg = edges_run(tmp_path)
    metrics = train.run(cfg)
    for name in ("ODS", "OIS", "AP", "R50"):
        assert 0.0 <= metrics[f"test/{name}"] <= 1.0
    run = Path(cfg.paths.output_dir)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["random_weights"] is True and saved["test/ODS"] == pytest.approx(metrics["test/ODS"])
    pngs = sorted((run / "edges").glob("*.png"))
    assert [p.stem for p in pngs] == ["0000", "0001"]
    assert np.asarray(Image.open(pngs[0])).shape == (96, 128)
    # the logged numbers are the benchmark's on the written PNGs (the 8-bit maps it scores)
    benchmark = EdgeBenchmark(19)
    for png in pngs:
        truth = read_boundaries(tmp_path / "bsds" / "groundTruth" / "test" / f"{png.stem}.mat")
        benchmark.update(np.asarray(Image.open(png)) / 255.0, truth)
    assert benchmark.compute()["ODS"] == pytest.approx(metrics["test/ODS"], rel=1e-5)


def test_images_encoded_together_give_the_same_edges(tmp_path: Path) -> None:
    single = train.run(edges_run(tmp_path))
    batched = train.run(edges_run(tmp_path / "batched", "data.batch_size=2", f"data.root={tmp_path / 'bsds'}"))
    assert all(batched[k] == pytest.approx(single[k], abs=1e-4) for k in single), (batched, single)


def exit_code(cfg) -> int:
    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(lambda: train.run(cfg), hydra_style)
    return stop.value.code


def test_bad_input_exits_2_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert exit_code(edges_run(tmp_path, "head.points_per_side=0")) == 2
    assert "head.points_per_side=0 must be a whole number of at least 1" in capsys.readouterr().err

    BSDS500DataModule(str(tmp_path / "bsds"), generate=True).prepare_data()
    (tmp_path / "bsds" / "groundTruth" / "test" / "0001.mat").unlink()
    assert exit_code(edges_run(tmp_path)) == 2
    assert "have no ground truth, e.g." in capsys.readouterr().err

    tiny = tmp_path / "tiny"
    (tiny / "images" / "test").mkdir(parents=True)
    (tiny / "groundTruth" / "test").mkdir(parents=True)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny / "images" / "test" / "dot.jpg")
    write_boundaries(tiny / "groundTruth" / "test" / "dot.mat", [np.zeros((1, 1), np.int32)])
    assert exit_code(edges_run(tmp_path, f"data.root={tiny}")) == 2
    assert "1x1 (WxH) pixels: an edge map needs at least 2x2" in capsys.readouterr().err

    assert exit_code(edges_run(tmp_path, f"data.root={tmp_path / 'none'}", "data.generate=false")) == 2
    assert "BSDS500 not found" in capsys.readouterr().err

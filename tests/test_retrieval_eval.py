"""The revisited Oxford / Paris evaluation: the protocol's mAP against a direct implementation, the ground-truth pickle
read without running code, queries cropped to their box, and the quickstart through train.py."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import train
from datamodules.errors import DatasetError
from datamodules.retrieval.revisited import RevisitedDataModule, RevisitedImages, load_ground_truth
from metrics.retrieval import revisited_map
from tests.conftest import TINY
from tests.helpers import compose_train

# The protocol's three settings, as its paper defines them: (positives, ignored) from a query's easy / hard / junk.
PROTOCOL = {
    "E": lambda g: (set(g["easy"]), set(g["junk"]) | set(g["hard"])),
    "M": lambda g: (set(g["easy"]) | set(g["hard"]), set(g["junk"])),
    "H": lambda g: (set(g["hard"]), set(g["junk"]) | set(g["easy"])),
}


def direct_ap_and_precision(ranking: list[int], ok: set[int], junk: set[int], kappas: list[int]):
    """Walk the ranking with the junk taken out; each positive found adds a trapezoid of the precision-recall curve
    (from the precision just before it to the precision at it) over its recall step."""
    kept = [i for i in ranking if i not in junk]
    ap, found, places = 0.0, 0, []
    for place, image in enumerate(kept, start=1):
        if image in ok:
            before = found / (place - 1) if place > 1 else 1.0
            found += 1
            ap += (before + found / place) / 2 / len(ok)
            places.append(place)
    precision = [sum(p <= min(k, max(places)) for p in places) / min(k, max(places)) for k in kappas]
    return ap, precision


def hand_made_queries(rng: np.random.Generator, n_db: int = 30) -> list[dict[str, np.ndarray]]:
    queries = []
    for q in range(6):
        ids = rng.permutation(n_db)
        n_easy, n_hard, n_junk = rng.integers(1, 5), (0 if q == 0 else rng.integers(1, 4)), rng.integers(0, 4)
        easy, hard = ids[:n_easy], ids[n_easy : n_easy + n_hard]
        queries.append({"easy": easy, "hard": hard, "junk": ids[n_easy + n_hard : n_easy + n_hard + n_junk]})
    return queries


def test_map_agrees_with_a_direct_implementation_of_the_protocol() -> None:
    rng = np.random.default_rng(0)
    queries = hand_made_queries(rng)
    rankings = np.stack([rng.permutation(30) for _ in queries])
    kappas = [1, 5, 10]
    results = revisited_map(rankings, queries, kappas)
    for setting, rule in PROTOCOL.items():
        aps, precisions = [], []
        for ranking, query in zip(rankings, queries):
            ok, junk = rule(query)
            if ok:
                ap, precision = direct_ap_and_precision(list(ranking), ok, junk, kappas)
                aps.append(ap)
                precisions.append(precision)
        assert results[setting]["mAP"] == pytest.approx(np.mean(aps), abs=1e-12)
        assert results[setting]["mP@k"] == pytest.approx(np.mean(precisions, axis=0).tolist(), abs=1e-12)
        assert results[setting]["queries"] == len(aps)
    assert np.isnan(results["H"]["AP"][0])  # query 0 has no hard image: left out of the Hard mean


def test_junk_is_taken_out_before_precision() -> None:
    # ranking: junk, positive, negative, positive -> without the junk, positives at places 1 and 3
    query = {"easy": np.array([1, 3]), "hard": np.array([], np.int64), "junk": np.array([0])}
    result = revisited_map(np.array([[0, 1, 2, 3]]), [query])
    assert result["M"]["mAP"] == pytest.approx(((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert np.isnan(result["H"]["mAP"])


def published_structure() -> dict:
    return {
        "imlist": ["all_souls_000001", "all_souls_000002", "radcliffe_000003"],
        "qimlist": ["all_souls_000013"],
        "gnd": [{"bbx": [1.5, 2.0, 30.0, 40.25], "easy": np.array([0, 2]), "hard": [1], "junk": np.array([], int)}],
    }


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_the_restricted_unpickler_reads_the_published_structure(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "gnd_roxford5k.pkl"
    path.write_bytes(pickle.dumps(published_structure(), protocol=protocol))
    truth = load_ground_truth(path)
    assert truth["imlist"] == published_structure()["imlist"] and truth["qimlist"] == ["all_souls_000013"]
    assert truth["gnd"][0]["bbx"].tolist() == [1.5, 2.0, 30.0, 40.25]
    assert [truth["gnd"][0][k].tolist() for k in ("easy", "hard", "junk")] == [[0, 2], [1], []]


class RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = published_structure() | {"payload": RunsACommand(marker)}
    path = tmp_path / "roxford5k" / "gnd_roxford5k.pkl"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DatasetError, match=rf"{os.system.__module__}\.system, which is refused") as info:
        load_ground_truth(path)
    assert str(path) in str(info.value) and not marker.exists()


TERABYTES_16 = (16 * 10**12).to_bytes(6, "little")
BOMBS = {
    # bytes(16e12) through the admitted `bytes` global (protocol 2 rebuilds b"" as bytes())
    "bytes-call": b"\x80\x02c__builtin__\nbytes\n\x8a\x06" + TERABYTES_16 + b"\x85R.",
    # a BINBYTES8 opcode declaring 16 TB: the unpickler allocates before it reads
    "declared-length": b"\x80\x04\x8e" + (16 * 10**12).to_bytes(8, "little") + b".",
    # a FRAME of 16 TB
    "frame": b"\x80\x04\x95" + (16 * 10**12).to_bytes(8, "little") + b"N.",
    # a memo index of 2**24: the unpickler grows its memo table to it (harmless here, refused all the same)
    "memo-index": b"\x80\x02K\x01r" + (1 << 24).to_bytes(4, "little") + b".",
    # numpy's _reconstruct asked for a 16 TB array
    "array-shape": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x06"
    + TERABYTES_16
    + b"\x85C\x01b\x87R.",
}


@pytest.mark.parametrize("bomb", BOMBS, ids=list(BOMBS))
def test_a_pickle_cannot_ask_for_more_memory_than_its_size(tmp_path: Path, bomb: str) -> None:
    path = tmp_path / "gnd_roxford5k.pkl"
    path.write_bytes(BOMBS[bomb])
    with pytest.raises(DatasetError, match=rf"{path} is not a revisited-protocol pickle: .*(bytes|declares).*Fix"):
        load_ground_truth(path)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"bbx": [np.nan, 2.0, 30.0, 40.0]}, r"gnd\[0\]\['bbx'\] = \[nan, 2.0, 30.0, 40.0\] must be 4 finite numbers"),
        ({"bbx": [30.0, 2.0, 1.5, 40.0]}, r"has x2 <= x1 or y2 <= y1"),
        ({"bbx": "abcd"}, r"must be 4 finite numbers"),
        ({"easy": ["x", "y"]}, r"gnd\[0\]'s 'easy', 'hard' and 'junk' must be arrays of database ids"),
    ],
)
def test_bad_query_entries_are_refused(tmp_path: Path, query: dict, message: str) -> None:
    data = published_structure()
    data["gnd"][0].update(query)
    path = tmp_path / "gnd_roxford5k.pkl"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DatasetError, match=rf"{path} is not in the revisitop format: .*{message}"):
        load_ground_truth(path)


def write_layout(root: Path) -> tuple[Path, np.ndarray]:
    """root/roxford5k with 2 database images and 1 query of 64x48 random pixels; returns the query file and box."""
    folder = root / "roxford5k" / "jpg"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b", "q"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"{name}.jpg")
    bbx = np.array([10.4, 5.6, 41.2, 30.0])
    gnd = [{"bbx": bbx, "easy": np.array([0]), "hard": np.array([], int), "junk": np.array([1])}]
    (root / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(
        pickle.dumps({"imlist": ["a", "b"], "qimlist": ["q"], "gnd": gnd})
    )
    return folder / "q.jpg", bbx


def test_queries_are_cropped_to_their_box(tmp_path: Path) -> None:
    query, bbx = write_layout(tmp_path)
    datamodule = RevisitedDataModule(str(tmp_path), "roxford5k", image_size=28, num_workers=0)
    datamodule.setup("test")
    images: RevisitedImages = datamodule.dataset
    x1, y1, x2, y2 = np.round(bbx).astype(int)  # pixel edges: the box rounded, as PIL's crop
    expected = np.asarray(Image.open(query).convert("RGB"))[y1:y2, x1:x2]
    assert np.array_equal(np.asarray(images.load(2)), expected)
    assert images[2]["image"].shape == (3, round(28 * (y2 - y1) / (x2 - x1)), 28) and images[2]["part"] == 1
    assert images[0]["image"].shape == (3, 21, 28) and images[0]["part"] == 0  # database images are whole


def test_a_query_box_outside_its_image_is_refused(tmp_path: Path) -> None:
    write_layout(tmp_path)
    path = tmp_path / "roxford5k" / "gnd_roxford5k.pkl"
    data = pickle.loads(path.read_bytes())
    data["gnd"][0]["bbx"] = np.array([10.0, 5.0, 400.0, 30.0])
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DatasetError, match=rf"{path} gives query 0 .* outside its 64x48 \(WxH\) image"):
        RevisitedDataModule(str(tmp_path), "roxford5k", num_workers=0).setup("test")


def test_missing_data_names_the_layout_and_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"ROOT/rparis6k/jpg/<image>.jpg.*parisbuildings.*gnd_rparis6k.pkl"):
        RevisitedDataModule(str(tmp_path), "rparis6k", num_workers=0).setup("test")
    write_layout(tmp_path)
    (tmp_path / "roxford5k" / "jpg" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 listed image\(s\) missing.*b.jpg"):
        RevisitedDataModule(str(tmp_path), "roxford5k", num_workers=0).setup("test")


def test_the_quickstart_logs_the_three_maps(tmp_path: Path, tiny_checkpoint: Path) -> None:
    cfg = compose_train(
        [
            "experiment=retrieval_quickstart",
            f"backbone.checkpoint={tiny_checkpoint}",
            *(f"backbone.{key}={value}" for key, value in TINY.items()),
            f"data.root={tmp_path / 'data'}",
            "data.image_size=112",
        ],
        tmp_path,
    )
    metrics = train.run(cfg)
    for setting in "EMH":
        assert 0.0 <= metrics[f"test/mAP_{setting}"] <= 1.0
    run = Path(cfg.paths.output_dir)
    saved = json.loads((run / "metrics.json").read_text())
    rows = json.loads((run / "retrieval_queries.json").read_text())["queries"]
    assert len(rows) == 4 and all(len(row["top"]) == 10 for row in rows)
    for setting in "EMH":
        assert saved[f"test/mAP_{setting}"] == pytest.approx(np.mean([row[f"AP_{setting}"] for row in rows]), abs=1e-6)

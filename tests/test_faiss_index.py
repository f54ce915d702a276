"""retrieval.faiss_index: exact search is numpy's ranking, the approximate kinds' recall@10 measured against it with
the defaults, indexes survive a write/read round trip, bad inputs are refused; the scale benchmark's --quick run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import retrieval_scale
from bench.retrieval_scale import clustered_embeddings, recall_at_k
from retrieval import faiss_index
from retrieval.faiss_index import build_index, read_index, search, write_index


def normalised(n: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_exact_search_is_numpy_ranking_of_the_inner_products() -> None:
    vectors, queries = normalised(500, 32), normalised(7, 32, seed=1)
    scores, ids = search(build_index(vectors, "flat"), queries, 10)
    products = queries.astype(np.float64) @ vectors.astype(np.float64).T
    expected = np.argsort(-products, axis=1)[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(products, expected, axis=1), atol=1e-5)


@pytest.mark.parametrize("per_cluster", [1000, 50])
@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_recall_with_the_defaults(kind: str, per_cluster: int) -> None:
    """Recall@10 against exact search on 8 k clustered 384-d vectors (the benchmark's mixture, easy and hard)."""
    data = clustered_embeddings(8200, 384, per_cluster, seed=0)
    vectors, queries = data[:8000], data[8000:]
    _, exact = search(build_index(vectors, "flat"), queries, 10)
    _, found = search(build_index(vectors, kind), queries, 10)
    assert recall_at_k(found, exact) >= 0.95


def test_the_recall_test_can_fail() -> None:
    """The mixture is not trivially easy: a starved HNSW (4 links, 10 candidates) finds far fewer true neighbours."""
    data = clustered_embeddings(8200, 384, 50, seed=0)
    vectors, queries = data[:8000], data[8000:]
    _, exact = search(build_index(vectors, "flat"), queries, 10)
    _, found = search(build_index(vectors, "hnsw", hnsw_m=4, ef_search=10), queries, 10)
    assert recall_at_k(found, exact) < 0.9


def test_auto_is_exact_up_to_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = normalised(300, 16)
    assert build_index(vectors).__class__.__name__ == "IndexFlatIP"
    monkeypatch.setattr(faiss_index, "APPROXIMATE_ABOVE", 299)
    index = build_index(vectors)
    assert index.__class__.__name__ == "IndexHNSWFlat" and index.hnsw.efSearch == faiss_index.EF_SEARCH


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_write_read_round_trip_gives_identical_results(kind: str, tmp_path: Path) -> None:
    vectors, queries = normalised(2000, 24), normalised(20, 24, seed=1)
    index = build_index(vectors, kind, ef_search=40, nprobe=5)
    write_index(index, tmp_path / "index.faiss")
    again = read_index(tmp_path / "index.faiss")
    for before, after in zip(search(index, queries, 10), search(again, queries, 10)):
        np.testing.assert_array_equal(before, after)
    if kind == "hnsw":
        assert again.hnsw.efSearch == 40
    if kind == "ivf":
        assert again.nprobe == 5
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temporary left behind


def test_bad_inputs_are_refused() -> None:
    vectors = normalised(50, 8)
    index = build_index(vectors, "flat")
    with pytest.raises(ValueError, match="at least 1"):
        search(index, vectors[:1], 0)
    with pytest.raises(ValueError, match="k=51 is more than the 50 vectors"):
        search(index, vectors[:1], 51)
    with pytest.raises(ValueError, match="9 dimensions but the index has 8"):
        search(index, normalised(2, 9), 5)
    with pytest.raises(ValueError, match=r"\(N, D\) matrix"):
        search(index, vectors[0], 5)
    broken = vectors.copy()
    broken[3, 2], broken[5, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"row\(s\) \[3, 5\] hold NaN or infinite"):
        build_index(broken)
    with pytest.raises(ValueError, match=r"row\(s\) \[3, 5\] hold NaN"):
        search(index, broken, 5)
    with pytest.raises(ValueError, match="not one of auto, flat, hnsw, ivf"):
        build_index(vectors, "lsh")
    with pytest.raises(ValueError, match=r"\(N, D\) matrix"):
        build_index(np.zeros((0, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="nlist=60 is more than the 50 vectors"):
        build_index(vectors, "ivf", nlist=60)


def test_scale_benchmark_quick(capsys: pytest.CaptureFixture[str]) -> None:
    rows = retrieval_scale.main(["--quick", "--dim", "32"])
    assert "recall@10" in capsys.readouterr().out
    assert [row.kind for row in rows] == ["flat", "hnsw", "ivf", "ivfpq", "ondisk", "ondisk-cold"]
    assert rows[0].recall == 1.0 and all(0 <= row.recall <= 1 and row.build_s >= 0 and row.p50_ms > 0 for row in rows)
    by_kind = {row.kind: row for row in rows}
    # exact vectors cost 4 bytes a dimension plus the id; ivfpq's codes fewer; ondisk keeps its lists out of RAM
    assert by_kind["flat"].ram_bytes == pytest.approx(4 * 32, rel=0.05)
    assert by_kind["ivfpq"].ram_bytes < by_kind["ivf"].ram_bytes / 2
    assert by_kind["ondisk"].ram_bytes < by_kind["ivf"].ram_bytes / 4 < by_kind["ondisk"].disk_bytes
    assert by_kind["flat"].ram_gib == pytest.approx(by_kind["flat"].ram_bytes * 1e8 / 2**30)

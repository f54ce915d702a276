"""FAISS indexes over L2-normalised descriptors: exact inner product by default, approximate above a size.

The contract every retrieval command uses: `build_index`, `search`, `write_index`, `read_index`.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from utils.atomic import atomic_write

KINDS = ("auto", "flat", "hnsw", "ivf")
APPROXIMATE_ABOVE = 200_000
"""`kind="auto"` is exact (`flat`) up to this many vectors, HNSW above (see bench/retrieval_scale.py)."""


def build_index(vectors: np.ndarray, kind: str = "auto") -> faiss.Index:
    """An inner-product index over `vectors` `(N, D)` float32 (L2-normalised: scores are cosines)."""
    if kind not in KINDS:
        raise ValueError(f"index kind {kind!r} is not one of {', '.join(KINDS)}.")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if kind == "auto":
        kind = "flat" if n <= APPROXIMATE_ABOVE else "hnsw"
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    else:
        lists = max(1, int(4 * np.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    index.add(vectors)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Queries `(Q, D)` -> scores `(Q, k)` and ids `(Q, k)` (best first)."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def write_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write `index` atomically (FAISS's own binary format: data, not code)."""
    atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))


def read_index(path: str | os.PathLike) -> faiss.Index:
    return faiss.read_index(str(Path(path)))

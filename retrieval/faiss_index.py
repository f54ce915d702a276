"""FAISS indexes over L2-normalised descriptors: exact inner product by default, approximate above a size.

The contract every retrieval command uses: `build_index` (or `retrieval.ondisk.write_ondisk_index`), `search`,
`write_index`, `read_index`.

Approximate kinds and their defaults (chosen with `python -m bench.retrieval_scale`, see docs/retrieval_scale.md):
- `hnsw`: `IndexHNSWFlat`, `HNSW_M` links per node, `EF_CONSTRUCTION` candidates while building, `EF_SEARCH`
  candidates while searching (set on the index, so it is saved with it).
- `ivf`: `IndexIVFFlat` with `nlist = sqrt(N)` lists (at least 39 training vectors per list, FAISS's minimum) and
  `nprobe = NPROBE` lists searched per query (also saved with the index).
- `ivfpq`: `IndexIVFPQ`, the same lists, each vector stored as `D / PQ_DIMS_PER_BYTE` bytes (product quantisation of
  its residual to the list centre, 8 bits per sub-vector): 96 bytes instead of 1536 at D = 384.
- `ondisk`: `ivf` whose inverted lists are a file of their own beside the index (`<index>.ivfdata`, FAISS's
  `OnDiskInvertedLists`), built one chunk of vectors at a time (`retrieval.ondisk.write_ondisk_index`) and
  memory-mapped when read: neither building nor searching holds the vectors in RAM.

`read_index` memory-maps the lists of every IVF kind (`faiss.IO_FLAG_MMAP`): the OS pages in the lists a query
probes, so an index larger than RAM can still be opened.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import faiss
import numpy as np

from utils.atomic import atomic_write

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq", "ondisk")
APPROXIMATE_ABOVE = 100_000
"""`kind="auto"` is exact (`flat`) up to this many vectors, HNSW above (see bench/retrieval_scale.py): exact search
costs ~12 ms a query at 100 k x 384 on one core, linear in N, so above it the 20 ms target needs an approximate index;
HNSW over IVF because its recall held on the harder synthetic mixture where IVF's fell (docs/retrieval.md, "Scale")."""

HNSW_M = 32
EF_CONSTRUCTION = 40
EF_SEARCH = 256
NPROBE = 64
IVF_TRAIN_PER_LIST = 64
"""k-means trains on at most this many vectors per list (a sample): FAISS's default of 256 quadruples build time."""
PQ_DIMS_PER_BYTE = 4
"""`ivfpq` codes: one 8-bit sub-quantizer per 4 dimensions. At D = 384 and 100 k vectors, 8 dimensions per byte
(48 bytes) gave recall@10 0.55, 4 (96 bytes) 0.75 (docs/retrieval_scale.md)."""


def check_matrix(array: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    """`array` as a C-contiguous float32 `(N, D)` matrix, or a ValueError naming what is wrong with it."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) matrix, got shape {tuple(array.shape)}.")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(
            f"{name} have {array.shape[1]} dimensions but the index has {dim}: embed them with the index's spec."
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    # a float64 row sum of float32 values cannot overflow, so it is finite exactly when the row is (no N x D mask)
    bad = ~np.isfinite(array.sum(axis=1, dtype=np.float64))
    if bad.any():
        raise ValueError(f"{name} row(s) {np.flatnonzero(bad)[:5].tolist()} hold NaN or infinite values.")
    return array


def ivf_lists(n: int) -> int:
    """IVF list count for `n` vectors: sqrt(n), with at least 39 vectors per list to train k-means on."""
    return max(1, min(round(math.sqrt(n)), n // 39))


def pq_shape(dim: int, n: int) -> tuple[int, int]:
    """`ivfpq`'s (sub-quantizers, bits each) for `n` vectors of `dim` dimensions: the largest divisor of `dim` up to
    `dim / PQ_DIMS_PER_BYTE`, 8 bits; fewer bits when `n` cannot train 2^8 centres with 39 vectors each (small
    indexes: FAISS refuses fewer training vectors than centres)."""
    m = max(d for d in range(1, max(1, dim // PQ_DIMS_PER_BYTE) + 1) if dim % d == 0)
    return m, max(1, min(8, int(math.log2(max(n, 1) / 39)) if n >= 78 else 1))


def ivf_index(dim: int, lists: int, kind: str, n: int, seed: int) -> faiss.IndexIVF:
    """An untrained inner-product IVF index of `kind` (`ivf`/`ondisk`: exact vectors, `ivfpq`: PQ codes)."""
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivfpq":
        index = faiss.IndexIVFPQ(quantizer, dim, lists, *pq_shape(dim, n), faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST
    index.cp.seed = seed
    return index


def _check_options(hnsw_m: int, ef_construction: int, ef_search: int, nlist: int | None, nprobe: int) -> None:
    for name, value in (("hnsw_m", hnsw_m), ("ef_construction", ef_construction), ("ef_search", ef_search)):
        if value < 1:
            raise ValueError(f"{name}={value} must be at least 1.")
    if nprobe < 1 or (nlist is not None and nlist < 1):
        raise ValueError(f"nlist={nlist} and nprobe={nprobe} must be at least 1.")


def build_index(
    vectors: np.ndarray,
    kind: str = "auto",
    *,
    hnsw_m: int = HNSW_M,
    ef_construction: int = EF_CONSTRUCTION,
    ef_search: int = EF_SEARCH,
    nlist: int | None = None,
    nprobe: int = NPROBE,
    seed: int = 0,
) -> faiss.Index:
    """An inner-product index over `vectors` `(N, D)` float32 (L2-normalised: scores are cosines).

    `kind="auto"` is `flat` for N <= APPROXIMATE_ABOVE, `hnsw` above. `nlist=None` is `ivf_lists(N)`. The `ondisk`
    kind needs a file: `write_ondisk_index`.
    """
    if kind not in KINDS:
        raise ValueError(f"index kind {kind!r} is not one of {', '.join(KINDS)}.")
    if kind == "ondisk":
        raise ValueError("the ondisk kind is built into a file: use retrieval.ondisk.write_ondisk_index.")
    _check_options(hnsw_m, ef_construction, ef_search, nlist, nprobe)
    vectors = check_matrix(vectors, "vectors")
    n, dim = vectors.shape
    if kind == "auto":
        kind = "flat" if n <= APPROXIMATE_ABOVE else "hnsw"
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        lists = ivf_lists(n) if nlist is None else nlist
        if lists > n:
            raise ValueError(f"nlist={lists} is more than the {n} vectors: give nlist <= {n}.")
        index = ivf_index(dim, lists, kind, n, seed)
        index.train(vectors)
        index.nprobe = min(nprobe, lists)
    index.add(vectors)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Queries `(Q, D)` -> scores `(Q, k)` and ids `(Q, k)` (best first).

    An approximate index may find fewer than k neighbours for a query (IVF when the probed lists hold fewer): those
    slots have id -1, as FAISS returns them.
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k={k!r} must be a whole number of at least 1.")
    if k > index.ntotal:
        raise ValueError(f"k={k} is more than the {index.ntotal} vectors in the index: give k <= {index.ntotal}.")
    queries = check_matrix(queries, "queries", dim=index.d)
    return index.search(queries, int(k))


def write_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write `index` atomically (FAISS's own binary format: data, not code; search parameters included)."""
    atomic_write(path, lambda tmp: write_index_file(index, Path(tmp)))


def write_index_file(index: faiss.Index, path: Path) -> None:
    """faiss.write_index to a file name ignores a failed close (a full disk: a truncated file, no error); through a
    Python file every failed write raises OSError."""
    with path.open("wb") as file:
        writer = faiss.PyCallbackIOWriter(file.write)
        faiss.write_index(index, writer)
        del writer  # flushes FAISS's buffer into the file before it closes


def read_index(path: str | os.PathLike) -> faiss.Index:
    """The index `write_index` (or `write_ondisk_index`) wrote to `path`; IVF lists memory-mapped, not read.

    `ondisk` lists are looked for beside `path` (the index file names them without a folder, so the index folder
    can move), mapped read-only; a lists file shorter than the index says is refused (reading past its end through
    the map would kill the process).
    """
    path = Path(path)
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    ivf = faiss.try_extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if isinstance(lists, faiss.OnDiskInvertedLists) and lists.ptr is None and lists.totsize:
        data = path.parent / Path(lists.filename).name
        size = data.stat().st_size if data.is_file() else None
        if size is None or size < lists.totsize:
            found = "is missing" if size is None else f"holds {size} bytes"
            raise RuntimeError(f"the lists file {data} {found}, the index needs {lists.totsize}")
        lists.filename, lists.read_only = str(data), True
        # FAISS's 32 prefetch threads go on reading the map after a search returns; if the file shrank meanwhile
        # (another job rebuilding the index) that read kills the process with SIGBUS. The search's own threads read
        # the lists they need.
        lists.prefetch_nthread = 0
        lists.do_mmap()
    return index

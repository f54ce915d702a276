"""FAISS indexes over L2-normalised descriptors: exact inner product by default, approximate above a size.

The contract every retrieval command uses: `build_index` (or `write_ondisk_index`), `search`, `write_index`,
`read_index`.

Approximate kinds and their defaults (chosen with `python -m bench.retrieval_scale`, see docs/retrieval_scale.md):
- `hnsw`: `IndexHNSWFlat`, `HNSW_M` links per node, `EF_CONSTRUCTION` candidates while building, `EF_SEARCH`
  candidates while searching (set on the index, so it is saved with it).
- `ivf`: `IndexIVFFlat` with `nlist = sqrt(N)` lists (at least 39 training vectors per list, FAISS's minimum) and
  `nprobe = NPROBE` lists searched per query (also saved with the index).
- `ivfpq`: `IndexIVFPQ`, the same lists, each vector stored as `D / PQ_DIMS_PER_BYTE` bytes (product quantisation of
  its residual to the list centre, 8 bits per sub-vector): 96 bytes instead of 1536 at D = 384.
- `ondisk`: `ivf` whose inverted lists are a file of their own beside the index (`<index>.ivfdata`, FAISS's
  `OnDiskInvertedLists`), built one chunk of vectors at a time (`write_ondisk_index`) and memory-mapped when read:
  neither building nor searching holds the vectors in RAM.

`read_index` memory-maps the lists of every IVF kind (`faiss.IO_FLAG_MMAP`): the OS pages in the lists a query
probes, so an index larger than RAM can still be opened.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from utils.atomic import atomic_write, temp_prefix

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq", "ondisk")
ONDISK_SUFFIX = ".ivfdata"
"""The `ondisk` kind's lists file, beside the index file: `index.faiss` -> `index.ivfdata`."""
APPROXIMATE_ABOVE = 100_000
"""`kind="auto"` is exact (`flat`) up to this many vectors, HNSW above (see bench/retrieval_scale.py): exact search
costs ~12 ms a query at 100 k x 384 on one core, linear in N, so above it the 20 ms target needs an approximate index;
HNSW over IVF because its recall held on the harder synthetic mixture where IVF's fell (README, "Scale")."""

HNSW_M = 32
EF_CONSTRUCTION = 40
EF_SEARCH = 256
NPROBE = 64
IVF_TRAIN_PER_LIST = 64
"""k-means trains on at most this many vectors per list (a sample): FAISS's default of 256 quadruples build time."""
PQ_DIMS_PER_BYTE = 4
"""`ivfpq` codes: one 8-bit sub-quantizer per 4 dimensions. At D = 384 and 100 k vectors, 8 dimensions per byte
(48 bytes) gave recall@10 0.55, 4 (96 bytes) 0.74 (docs/retrieval_scale.md)."""
ONDISK_CHUNK = 1 << 18
"""`write_ondisk_index` adds this many vectors at a time: 0.4 GB of float32 vectors plus their lists at D = 384."""


def _check_matrix(array: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
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


def _ivf(dim: int, lists: int, kind: str, n: int, seed: int) -> faiss.IndexIVF:
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
        raise ValueError("the ondisk kind is built into a file: use write_ondisk_index.")
    _check_options(hnsw_m, ef_construction, ef_search, nlist, nprobe)
    vectors = _check_matrix(vectors, "vectors")
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
        index = _ivf(dim, lists, kind, n, seed)
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
    queries = _check_matrix(queries, "queries", dim=index.d)
    return index.search(queries, int(k))


def write_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write `index` atomically (FAISS's own binary format: data, not code; search parameters included)."""
    atomic_write(path, lambda tmp: _write_through_python(index, Path(tmp)))


def _write_through_python(index: faiss.Index, path: Path) -> None:
    """faiss.write_index to a file name ignores a failed close (a full disk: a truncated file, no error); through a
    Python file every failed write raises OSError."""
    with path.open("wb") as file:
        writer = faiss.PyCallbackIOWriter(file.write)
        faiss.write_index(index, writer)
        del writer  # flushes FAISS's buffer into the file before it closes


def ondisk_lists(path: str | os.PathLike) -> Path:
    """The lists file of the `ondisk` index file `path`: `index.faiss` -> `index.ivfdata` beside it."""
    return Path(path).with_suffix(ONDISK_SUFFIX)


def write_ondisk_index(
    train: np.ndarray,
    chunks: Iterable[np.ndarray],
    n: int,
    path: str | os.PathLike,
    *,
    nlist: int | None = None,
    nprobe: int = NPROBE,
    seed: int = 0,
) -> None:
    """Write the `ondisk` index of the `n` rows of `chunks` (`(n_i, D)` float32 each, in row order) to `path`, its
    inverted lists to `ondisk_lists(path)`.

    The lists' centres are trained on `train` `(T, D)` (a sample of the rows, T >= nlist). Each chunk's lists are
    built in memory and written to a temporary index file, then FAISS merges the files' lists into one
    `OnDiskInvertedLists` file (the `merge_ondisk` recipe), reading them memory-mapped: no step holds more than one
    chunk. A list holds its ids in increasing order whatever the chunks, so the files depend on the rows only. The
    two files replace the old ones by renames (lists first); the caller's fingerprints tell a pair that a crash
    between the renames mismatched.
    """
    path = Path(path)
    train = _check_matrix(train, "training vectors")
    dim = train.shape[1]
    lists = ivf_lists(n) if nlist is None else nlist
    if nprobe < 1 or lists < 1 or lists > len(train):
        raise ValueError(
            f"nlist={lists} must be between 1 and the {len(train)} training vectors; nprobe={nprobe} >= 1."
        )
    index = _ivf(dim, lists, "ondisk", n, seed)
    index.train(train)
    index.nprobe = min(nprobe, lists)
    data = ondisk_lists(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=temp_prefix(data)) as tmp:
        shards, start = [], 0
        for chunk in chunks:
            chunk = _check_matrix(chunk, "vectors", dim)
            shard = faiss.clone_index(index)
            shard.add_with_ids(chunk, np.arange(start, start + len(chunk), dtype=np.int64))
            start += len(chunk)
            shards.append(Path(tmp) / f"{len(shards):05d}.faiss")
            _write_through_python(shard, shards[-1])
            del shard
        if start != n:
            raise ValueError(f"the chunks hold {start} vectors, not the n={n} announced.")
        _merge_lists(index, shards, Path(tmp) / data.name)
        # the index file names its lists file; `read_index` looks for that name beside the index, wherever it is
        faiss.downcast_InvertedLists(index.invlists).filename = data.name
        os.replace(Path(tmp) / data.name, data)
        write_index(index, path)
    del index


def _merge_lists(index: faiss.IndexIVF, shards: list[Path], target: Path) -> None:
    """Merge the lists of the index files `shards` into the `OnDiskInvertedLists` file `target`, now `index`'s lists.

    faiss.contrib.ondisk.merge_ondisk does the same but never frees its inputs' mapped lists (so their files' disk
    space stays taken until the process ends), and FAISS grows the target by truncating a sparse file, then writes it
    through a memory map, where a full disk is a SIGBUS, not an error: the free space is checked first.
    """
    readers = [faiss.read_index(str(shard), faiss.IO_FLAG_MMAP) for shard in shards]
    needed = sum(r.ntotal for r in readers) * (index.code_size + np.dtype(np.int64).itemsize)
    free = shutil.disk_usage(target.parent).free
    if needed > free:
        raise OSError(
            errno.ENOSPC, f"the inverted lists need {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB are free"
        )
    pointers = faiss.InvertedListsPtrVector()
    for reader in readers:
        pointers.push_back(reader.invlists)
    merged = faiss.OnDiskInvertedLists(index.nlist, index.code_size, str(target))
    with _stdout_silenced():  # FAISS prints "resizing <file> to <n> bytes" on stdout, unasked
        index.ntotal = merged.merge_from_multiple(pointers.data(), pointers.size(), False, False)
    index.replace_invlists(merged, True)
    merged.this.disown()  # the index owns (and frees) its lists now


@contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Send the process's file descriptor 1 to /dev/null for the block: FAISS's C++ printf, not Python's print."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


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
        lists.do_mmap()
    return index

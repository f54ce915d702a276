"""Build time, memory, query latency and recall@10 of the FAISS indexes at N vectors: `python -m bench.retrieval_scale`.

`python -m bench.retrieval_scale --n 1000000 --dim 384` prints one row per (N, kind) for the kinds flat, hnsw, ivf,
ivfpq and ondisk: build seconds (on `--build-threads`), bytes per vector in RAM and on disk, the same extrapolated to
`--extrapolate` vectors (100 M: bytes per vector times that N; the IVF centres grow as its square root, 15 MB at
100 M x 384, which this leaves out), the process's peak RSS so far, single-query latency p50 / p99 (one query per
`search` call on `--threads`, default 1) and recall@10 against exact search (`IndexFlatIP`, so `flat` is 1.000 by
construction). `--quick` is a tiny run (seconds).

In RAM is the index as FAISS holds it (`faiss.serialize_index`'s size; for `ondisk` its index file, which holds the
centres and where each list lies); on disk, its files. The `ondisk` index is built by the `index` command's own
function into a temporary folder (`--ondisk-dir`) and searched as the commands open it, its lists memory-mapped. Its
row's latencies are with the lists in the page cache (just written); the `ondisk-cold` row times `--cold-queries`
queries each on a freshly opened index after the lists file was dropped from the page cache (`posix_fadvise`
DONTNEED: the index larger than RAM, read from the disk).

The embeddings are synthetic but clustered like real features (uniform random vectors would make every neighbour
equally far and recall meaningless): a mixture of `N / --per-cluster` Gaussians whose centres are uniform on the
sphere, each point its centre plus an offset whose variance decays as 1/i along the i-th axis of a random rotation
(an effective dimension of ~26 of the 384, like the decaying PCA spectrum of DINOv2 descriptors), L2-normalised.
The queries are drawn from the same mixture and are not in the index. `--per-cluster 50` (many small clusters) is a
harder mixture, on which IVF needs more lists probed than HNSW needs candidates.
"""

from __future__ import annotations

import argparse
import os

from utils.argtypes import positive_int

KINDS = ("flat", "hnsw", "ivf", "ivfpq", "ondisk")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if any(size < 100 for size in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: every N must be at least 100")
    return sizes


def _kinds(text: str) -> list[str]:
    kinds = text.split(",")
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: the kinds are {', '.join(KINDS)}")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=_sizes, default=[10_000, 100_000], help="index sizes, comma-separated")
    parser.add_argument("--dim", type=positive_int, default=384)
    parser.add_argument("--kinds", type=_kinds, default=list(KINDS), help="comma-separated (default: all)")
    parser.add_argument("--queries", type=positive_int, default=200, help="queries timed one at a time")
    parser.add_argument("--per-cluster", type=positive_int, default=1000, help="vectors per Gaussian of the mixture")
    parser.add_argument("--threads", type=positive_int, default=1, help="FAISS threads while timing queries")
    parser.add_argument("--build-threads", type=positive_int, default=os.cpu_count() or 1)
    parser.add_argument("--hnsw-m", type=positive_int, default=None, help="default: retrieval.faiss_index.HNSW_M")
    parser.add_argument("--ef-construction", type=positive_int, default=None)
    parser.add_argument("--ef-search", type=positive_int, default=None)
    parser.add_argument("--nlist", type=positive_int, default=None, help="default: sqrt(N)")
    parser.add_argument("--nprobe", type=positive_int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extrapolate", type=positive_int, default=100_000_000, help="N for the memory columns")
    parser.add_argument("--ondisk-dir", default=None, help="folder for the ondisk index (default: the system's temp)")
    parser.add_argument("--cold-queries", type=positive_int, default=50, help="ondisk queries from a cold page cache")
    parser.add_argument("--quick", action="store_true", help="N=5000, 50 queries: a smoke run")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and option errors answer here, before faiss is imported

import resource
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

from retrieval.faiss_index import build_index, read_index, search
from retrieval.ondisk import ondisk_lists, ondisk_training_rows, write_ondisk_index

K = 10


class Row(NamedTuple):
    n: int
    kind: str
    build_s: float
    ram_bytes: float  # per vector
    disk_bytes: float  # per vector
    ram_gib: float  # at --extrapolate vectors
    disk_gib: float
    peak_mb: float
    p50_ms: float
    p99_ms: float
    recall: float


HEADER = ("N", "kind", "build s", "RAM B/vec", "disk B/vec", "RAM GiB@", "disk GiB@", "peak MB", "p50 ms", "p99 ms")
HEADER += ("recall@10",)
COLUMNS = ((9, ""), (11, ""), (8, ".1f"), (9, ".1f"), (10, ".1f"), (9, ".1f"), (9, ".1f"), (8, ".0f"), (7, ".2f"))
COLUMNS += ((7, ".2f"), (9, ".3f"))


def clustered_embeddings(n: int, dim: int, per_cluster: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """`(n, dim)` float32 L2-normalised points of the Gaussian mixture the module docstring describes."""
    rng = np.random.default_rng(seed)
    clusters = max(1, n // per_cluster)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    variance = 1.0 / np.arange(1, dim + 1)
    # Offsets of unit expected norm: a point is ~45 degrees from its centre, so clusters overlap as real ones do.
    scale = np.sqrt(variance / variance.sum())
    axes = (scale[:, None] * rotation.T).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):  # chunks keep the float32 temporaries small at 1 M
        stop = min(n, start + chunk)
        out[start:stop] = centres[rng.integers(clusters, size=stop - start)]
        out[start:stop] += rng.standard_normal((stop - start, dim), dtype=np.float32) @ axes
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latencies_ms(index: faiss.Index, queries: np.ndarray) -> np.ndarray:
    """Milliseconds of one `search` call per query (the path a `query` command takes)."""
    times = np.empty(len(queries))
    for i in range(len(queries)):
        start = time.perf_counter()
        search(index, queries[i : i + 1], K)
        times[i] = time.perf_counter() - start
    return 1000 * times


def cold_latencies_ms(path: Path, queries: np.ndarray) -> np.ndarray:
    """Milliseconds of one `search` per query on the ondisk index `path`, opened afresh after its lists file left the
    page cache (the kernel drops only pages no process maps, hence the fresh index each time)."""
    times = np.empty(len(queries))
    descriptor = os.open(ondisk_lists(path), os.O_RDONLY)
    try:
        os.fsync(descriptor)  # dirty pages cannot be dropped
        for i in range(len(queries)):
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            index = read_index(path)
            start = time.perf_counter()
            search(index, queries[i : i + 1], K)
            times[i] = time.perf_counter() - start
            del index
    finally:
        os.close(descriptor)
    return 1000 * times


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top k that the index found, `(Q, k)` ids each."""
    return float(np.mean([len(np.intersect1d(f, e)) / exact.shape[1] for f, e in zip(found, exact)]))


def build(vectors: np.ndarray, kind: str, folder: Path, options: dict) -> tuple[faiss.Index, int, int]:
    """The index of `kind` over `vectors`, and its bytes in RAM and on disk (`ondisk`: built into `folder`)."""
    if kind != "ondisk":
        index = build_index(vectors, kind, **options)
        size = len(faiss.serialize_index(index))
        return index, size, size
    path = folder / "index.faiss"
    chunks = (vectors[i : i + 100_000] for i in range(0, len(vectors), 100_000))
    ivf = {k: v for k, v in options.items() if k in ("nlist", "nprobe", "seed")}
    write_ondisk_index(vectors[ondisk_training_rows(len(vectors))], chunks, len(vectors), path, **ivf)
    ram = path.stat().st_size
    return read_index(path), ram, ram + ondisk_lists(path).stat().st_size


def bench_size(n: int, args: argparse.Namespace, options: dict) -> list[Row]:
    """The rows of the kinds at `n` vectors (see `Row` and the module docstring)."""
    data = clustered_embeddings(n + args.queries, args.dim, args.per_cluster, args.seed)
    vectors, queries = data[:n], data[n:]
    faiss.omp_set_num_threads(args.build_threads)
    _, exact = search(build_index(vectors, "flat"), queries, K)
    rows = []
    for kind in args.kinds:
        with tempfile.TemporaryDirectory(dir=args.ondisk_dir, prefix="retrieval_scale-") as folder:
            faiss.omp_set_num_threads(args.build_threads)
            start = time.perf_counter()
            index, ram, disk = build(vectors, kind, Path(folder), options)
            build_s = time.perf_counter() - start
            faiss.omp_set_num_threads(args.threads)
            times = {kind: latencies_ms(index, queries)}
            _, found = search(index, queries, K)
            del index  # before its lists file goes
            if kind == "ondisk":
                times["ondisk-cold"] = cold_latencies_ms(Path(folder) / "index.faiss", queries[: args.cold_queries])
        per_vector, scale = (ram / n, disk / n), args.extrapolate / 2**30
        memory = (*per_vector, per_vector[0] * scale, per_vector[1] * scale)
        for name, latencies in times.items():
            p50, p99 = (float(t) for t in np.percentile(latencies, [50, 99]))
            rows.append(Row(n, name, build_s, *memory, peak_rss_mb(), p50, p99, recall_at_k(found, exact)))
            print("  ".join(f"{value:>{width}{spec}}" for value, (width, spec) in zip(rows[-1], COLUMNS)), flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    """Print the table and return its rows (see `bench_size`)."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.n, args.queries = [5000], 50
    names = ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe")
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    print(
        f"dim {args.dim}, {args.queries} queries one at a time on {args.threads} thread(s), build on "
        f"{args.build_threads}, {args.per_cluster} vectors per cluster, options {options or 'default'}; "
        f"GiB@ = at {args.extrapolate:,} vectors"
    )
    print("  ".join(f"{name:>{width}}" for name, (width, _) in zip(HEADER, COLUMNS)))
    threads = faiss.omp_get_max_threads()
    try:
        return [row for n in args.n for row in bench_size(n, args, options)]
    finally:
        faiss.omp_set_num_threads(threads)  # the caller's setting (a test's process), not the last one timed


if __name__ == "__main__":
    main()

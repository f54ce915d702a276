"""Build time, memory, query latency and recall@10 of the FAISS indexes at N vectors: `python -m bench.retrieval_scale`.

`python -m bench.retrieval_scale --n 10000,100000,1000000 --dim 384 --kinds flat,hnsw,ivf` prints one row per (N, kind):
build seconds (on `--build-threads`), the index's size (`faiss.serialize_index`), the process's peak RSS so far,
single-query latency p50 / p99 (one query per `search` call on `--threads`, default 1) and recall@10 of the index
against exact search (`IndexFlatIP`, so `flat` is 1.000 by construction). `--quick` is a tiny run (seconds).

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
    unknown = [kind for kind in kinds if kind not in ("flat", "hnsw", "ivf")]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: the kinds are flat, hnsw, ivf")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=_sizes, default=[10_000, 100_000], help="index sizes, comma-separated")
    parser.add_argument("--dim", type=positive_int, default=384)
    parser.add_argument("--kinds", type=_kinds, default=["flat", "hnsw", "ivf"])
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
    parser.add_argument("--quick", action="store_true", help="N=5000, 50 queries: a smoke run")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and option errors answer here, before faiss is imported

import resource
import time

import faiss
import numpy as np

from retrieval.faiss_index import build_index, search

K = 10
HEADER = ("N", "kind", "build s", "index MB", "peak MB", "p50 ms", "p99 ms", "recall@10")
COLUMNS = ((9, ""), (5, ""), (8, ".1f"), (9, ".1f"), (8, ".0f"), (7, ".2f"), (7, ".2f"), (9, ".3f"))


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


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top k that the index found, `(Q, k)` ids each."""
    return float(np.mean([len(np.intersect1d(f, e)) / exact.shape[1] for f, e in zip(found, exact)]))


def bench_size(n: int, args: argparse.Namespace, options: dict) -> list[tuple]:
    """Rows (N, kind, build s, index MB, peak RSS MB, p50 ms, p99 ms, recall@10) for the kinds at `n` vectors."""
    data = clustered_embeddings(n + args.queries, args.dim, args.per_cluster, args.seed)
    vectors, queries = data[:n], data[n:]
    faiss.omp_set_num_threads(args.build_threads)
    _, exact = search(build_index(vectors, "flat"), queries, K)
    rows = []
    for kind in args.kinds:
        faiss.omp_set_num_threads(args.build_threads)
        start = time.perf_counter()
        index = build_index(vectors, kind, **options)
        build_s = time.perf_counter() - start
        size_mb = len(faiss.serialize_index(index)) / 2**20
        faiss.omp_set_num_threads(args.threads)
        times = latencies_ms(index, queries)
        _, found = search(index, queries, K)
        recall = recall_at_k(found, exact)
        p50, p99 = np.percentile(times, [50, 99])
        rows.append((n, kind, build_s, size_mb, peak_rss_mb(), float(p50), float(p99), recall))
        print("  ".join(f"{value:>{width}{spec}}" for value, (width, spec) in zip(rows[-1], COLUMNS)), flush=True)
        del index
    return rows


def main(argv: list[str] | None = None) -> list[tuple]:
    """Print the table and return its rows (see `bench_size`)."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.n, args.queries = [5000], 50
    names = ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe")
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    print(
        f"dim {args.dim}, {args.queries} queries one at a time on {args.threads} thread(s), build on "
        f"{args.build_threads}, {args.per_cluster} vectors per cluster, options {options or 'default'}"
    )
    print("  ".join(f"{name:>{width}}" for name, (width, _) in zip(HEADER, COLUMNS)))
    threads = faiss.omp_get_max_threads()
    try:
        return [row for n in args.n for row in bench_size(n, args, options)]
    finally:
        faiss.omp_set_num_threads(threads)  # the caller's setting (a test's process), not the last one timed


if __name__ == "__main__":
    main()

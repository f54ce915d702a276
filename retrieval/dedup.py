"""`dedup` and `cluster`: near-duplicate groups (connected components of the thresholded k-NN graph) and k-means
clusters of an index.

Copy detection as in DINOv2's curation pipeline: every image is linked to those of its k nearest neighbours whose
cosine similarity is at least the threshold, and a group is a connected component of these links (so A~B and B~C
put A, B and C in one group even if A and C are further apart).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from typing import Any

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from retrieval.faiss_index import search
from retrieval.index_store import RetrievalError, open_index
from retrieval.sheets import contact_sheet, short
from utils.atomic import write_text
from utils.outputs import Outputs


def near_duplicate_groups(index: faiss.Index, vectors: np.ndarray, threshold: float, k: int) -> list[list[int]]:
    """The groups (2 or more rows each) of `vectors` `(N, D)` linked by k-NN similarity >= `threshold`, largest first.

    `index` holds `vectors` in the same order; `k` neighbours per image (itself included) are looked at.
    """
    n = len(vectors)
    scores, ids = search(index, vectors, min(k, n))
    rows = np.repeat(np.arange(n), ids.shape[1])
    ids, scores = ids.reshape(-1), scores.reshape(-1)
    linked = (ids >= 0) & (ids != rows) & (scores >= threshold)
    graph = coo_matrix((np.ones(linked.sum()), (rows[linked], ids[linked])), shape=(n, n))
    _, labels = connected_components(graph, directed=True, connection="weak")
    members = [np.flatnonzero(labels == label).tolist() for label in np.unique(labels)]
    return sorted((m for m in members if len(m) > 1), key=lambda m: (-len(m), m[0]))


def keep_one(groups: list[list[str]]) -> list[str]:
    """The paths to remove so that one image of each group stays: all but the first in sorted order."""
    return [path for group in groups for path in sorted(group)[1:]]


def kmeans(vectors: np.ndarray, k: int, seed: int, niter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (FAISS) of `vectors` `(N, D)` -> cluster of each row `(N,)` and its cosine to the centroid."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    clustering = faiss.Kmeans(vectors.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False)
    clustering.train(vectors)
    # the nearest unit-norm centroid by inner product (FAISS's own assignment index measures L2 distances)
    similarity = vectors @ clustering.centroids.T
    assignment = similarity.argmax(axis=1)
    return assignment, similarity[np.arange(len(vectors)), assignment]


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    return buffer.getvalue()


def dedup(args: argparse.Namespace) -> None:
    if not -1.0 <= args.threshold <= 1.0:
        raise RetrievalError(
            f"--threshold {args.threshold} is outside [-1, 1]: scores are cosine similarities "
            "(near-duplicates are usually above 0.9)."
        )
    loaded = open_index(args.index)
    names = ("groups.json", "groups.csv", "keep_one.txt", "groups.png")
    outputs = Outputs([args.out / n for n in names], [args.index], folder=args.out, overwrite=args.overwrite)
    groups = [
        [loaded.paths[i] for i in group]
        for group in near_duplicate_groups(loaded.index, loaded.vectors(), args.threshold, args.k)
    ]
    groups = [sorted(g) for g in groups]
    remove = keep_one(groups)
    summary = {
        "index": str(args.index),
        "threshold": args.threshold,
        "k": args.k,
        "n_images": len(loaded.paths),
        "groups": [
            {"group": g, "size": len(paths), "keep": paths[0], "paths": paths} for g, paths in enumerate(groups)
        ],
    }
    rows = [[g, path, int(k == 0)] for g, paths in enumerate(groups) for k, path in enumerate(paths)]
    texts = {
        "groups.json": json.dumps(summary, indent=1, allow_nan=False),
        "groups.csv": csv_text(["group", "path", "keep"], rows),
        "keep_one.txt": "".join(f"{path}\n" for path in remove),
    }
    with outputs:
        for name, text in texts.items():
            with outputs.file(args.out / name) as tmp:
                write_text(tmp, text)
        if groups:
            sheet = [
                [(p, f"{'keep ' if k == 0 else ''}g{g} {short(p)}") for k, p in enumerate(paths[:8])]
                for g, paths in enumerate(groups[: args.sheet_groups])
            ]
            with outputs.file(args.out / "groups.png") as tmp:
                contact_sheet(sheet, tmp, f"near-duplicates at cosine >= {args.threshold}")
    print(f"{len(groups)} groups of near-duplicates ({len(remove)} images to remove: {args.out / 'keep_one.txt'}).")


def cluster(args: argparse.Namespace) -> None:
    loaded = open_index(args.index)
    if args.k > len(loaded.paths):
        raise RetrievalError(
            f"--k {args.k} clusters is more than the index's {len(loaded.paths)} images: give --k "
            f"{len(loaded.paths)} or less."
        )
    names = ["clusters.json", "clusters.csv", *(f"cluster_{c:03d}.png" for c in range(args.k))]
    outputs = Outputs([args.out / n for n in names], [args.index], folder=args.out, overwrite=args.overwrite)
    assignment, similarity = kmeans(loaded.vectors(), args.k, args.seed, args.niter)
    clusters = []
    for c in range(args.k):
        members = np.flatnonzero(assignment == c)
        members = members[np.argsort(-similarity[members], kind="stable")]
        clusters.append(
            {
                "cluster": c,
                "size": len(members),
                "paths": [loaded.paths[i] for i in members],
                "similarity": [float(similarity[i]) for i in members],
            }
        )
    summary = {"index": str(args.index), "k": args.k, "seed": args.seed, "clusters": clusters}
    rows = [[path, int(a), f"{s:.6f}"] for path, a, s in zip(loaded.paths, assignment, similarity)]
    with outputs:
        with outputs.file(args.out / "clusters.json") as tmp:
            write_text(tmp, json.dumps(summary, indent=1, allow_nan=False))
        with outputs.file(args.out / "clusters.csv") as tmp:
            write_text(tmp, csv_text(["path", "cluster", "similarity"], rows))
        for c in clusters:
            if c["size"]:
                cells = [(p, f"{s:.3f} {short(p)}") for p, s in zip(c["paths"][:16], c["similarity"][:16])]
                rows_of_4 = [cells[i : i + 4] for i in range(0, len(cells), 4)]
                with outputs.file(args.out / f"cluster_{c['cluster']:03d}.png") as tmp:
                    contact_sheet(rows_of_4, tmp, f"cluster {c['cluster']} ({c['size']} images)")
    print(f"{args.k} clusters of {len(loaded.paths)} images in {args.out}.")

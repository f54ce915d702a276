"""An index folder on disk: resumable fp16 shards of descriptors (the feature cache's store), and the FAISS index.

    INDEX/spec.json       the EmbeddingSpec, the weights' SHA-256, how the backbone was loaded, the source and
                          index kind of the last build, and the fingerprints of the files below as written
                          (`retrieval.fingerprints`; a file that differs when opened is refused by name)
    INDEX/parts/NNNNN-<digest>/   one part per `index` run that found new images: a feature-cache shard folder
                          (key.json, paths.json, embedding_*.npy (n, D) float16, ok_*.npy (n,) uint8,
                          shard_*.json markers, manifest.json once complete)
    INDEX/parts/NNNNN-partIIIIIofNNNNN-<digest>/   part i of N of a split run (`index --part i/N`, `retrieval.splits`)
    INDEX/paths.json      the path of every row of index.faiss, in order
    INDEX/index.faiss     the FAISS index over the readable images' descriptors
    INDEX/index.ivfdata   the `ondisk` kind's inverted lists (memory-mapped when read)
    INDEX/skipped.json    the unreadable files, each with the reason

A killed run leaves its part without a manifest; the next run on the same images resumes it (finished shards are
kept). A run that finds images not yet in any part embeds only those, as a new part, then rebuilds index.faiss
from all parts' shards (rebuilding costs seconds where embedding costs hours, and lets IVF retrain).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from datamodules.feature_cache.store import (
    MANIFEST_FILE,
    PATHS_FILE,
    CacheError,
    ShardLayout,
    read_manifest,
)
from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from retrieval.embedding import EmbeddingSpec
from retrieval.faiss_index import read_index
from retrieval.fingerprints import difference, fingerprints
from retrieval.ondisk import ondisk_lists
from utils.atomic import write_text
from utils.errors import UserError
from utils.images import rgb_image

SPEC_FILE, INDEX_FILE, SKIPPED_FILE, PARTS = "spec.json", "index.faiss", "skipped.json", "parts"
FILES = "files"
"""spec.json's key for the fingerprints of the files the commands read (index.faiss, paths.json, every part's)."""


class RetrievalError(UserError):
    """An index folder is missing, damaged, or was built with other settings than asked."""


def load_input(path: str | Path, size: int) -> torch.Tensor:
    """An image file -> the backbone input `(3, size, size)`: shorter side resized to `size` (bicubic), centre crop,
    ImageNet-normalised. Read by `utils.images.rgb_image` (16-bit, float, palette, alpha, CMYK, EXIF rules).
    Raises UserError for a file that is not a readable image."""
    image = rgb_image(path)
    x = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
    x = TF.resize(x, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    return TF.normalize(TF.center_crop(x, [size, size]), IMAGENET_MEAN, IMAGENET_STD)


@dataclass
class Part:
    """One complete part: its folder, paths, descriptors `(n, D)` float32 and readable flags `(n,)` bool."""

    directory: Path
    paths: list[str]
    vectors: np.ndarray
    ok: np.ndarray


def damaged(directory: Path, err: Exception) -> RetrievalError:
    message = err if isinstance(err, CacheError) else f"{type(err).__name__}: {err}"
    return RetrievalError(
        f"The index part {directory} is damaged ({str(message).split(' Delete ')[0]}). Delete that folder and run "
        "`python -m retrieval index` again: only its images are embedded again."
    )


def open_part(directory: Path) -> tuple[ShardLayout, list[str]]:
    """A complete part's layout (every shard checked against its manifest) and its paths."""
    try:
        manifest, layout = read_manifest(directory)
        paths = json.loads((directory / PATHS_FILE).read_text())
    except (CacheError, OSError, ValueError, KeyError) as err:
        raise damaged(directory, err) from None
    if not isinstance(paths, list) or len(paths) != manifest["n_samples"]:
        raise RetrievalError(f"{directory / PATHS_FILE} does not list its part's images: delete {directory} and rerun.")
    return layout, [str(p) for p in paths]


def read_shard(layout: ShardLayout, shard: int) -> tuple[np.ndarray, np.ndarray]:
    """Shard `shard`'s descriptors `(n, D)` float32, L2-normalised, and readable flags `(n,)` bool."""
    try:
        vectors, ok = (np.load(layout.file(name, shard)) for name in ("embedding", "ok"))
    except (OSError, ValueError) as err:
        raise damaged(layout.directory, err) from None
    vectors = vectors.astype(np.float32)
    if not np.isfinite(vectors).all():
        raise RetrievalError(f"{layout.directory} holds non-finite descriptors: delete it and run `index` again.")
    # float16 storage rounds the norm: normalise again so that scores stay cosines
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors, ok.astype(bool)


def read_part(directory: Path) -> Part:
    """A complete part, every shard checked (a damaged one is a RetrievalError naming the fix)."""
    layout, paths = open_part(directory)
    shards = [read_shard(layout, k) for k in range(layout.n_shards)]
    return Part(directory, paths, np.concatenate([v for v, _ in shards]), np.concatenate([ok for _, ok in shards]))


def parts(index_dir: Path) -> tuple[list[Path], list[Path]]:
    """The complete and the incomplete part folders, in order."""
    found = sorted(p for p in (index_dir / PARTS).glob("*-*") if p.is_dir()) if (index_dir / PARTS).is_dir() else []
    return [p for p in found if (p / MANIFEST_FILE).is_file()], [p for p in found if not (p / MANIFEST_FILE).is_file()]


def record_files(index_dir: Path, record: dict[str, Any]) -> None:
    """Rewrite spec.json as ``record`` plus the fingerprints of index.faiss, paths.json and every complete part's
    files: written last, so that they describe a finished build."""
    files = [index_dir / INDEX_FILE, index_dir / PATHS_FILE]
    files += [ondisk_lists(index_dir / INDEX_FILE)] if ondisk_lists(index_dir / INDEX_FILE).is_file() else []
    files += [f for part in parts(index_dir)[0] for f in sorted(part.iterdir()) if f.is_file()]
    write_text(index_dir / SPEC_FILE, json.dumps(record | {FILES: fingerprints(index_dir, files)}, indent=2))


def rebuild_command(directory: Path, record: dict[str, Any]) -> str:
    """The `python -m retrieval index` command that builds `directory` again with its own settings (its parts'
    images are not embedded again)."""
    spec, loading = record.get("embedding") or {}, record.get("loading") or {}
    flags = [f"--{key} {spec[key]}" for key in ("backbone", "size", "pooling", "block") if key in spec]
    flags += [
        f"--{key.replace('_', '-')} {loading[key]}" for key in ("embed_dim", "depth", "num_heads") if loading.get(key)
    ]
    flags += [f"--checkpoint {loading['checkpoint']}"] if loading.get("checkpoint") else []
    flags += ["--random-weights"] if loading.get("random_weights") else []
    flags += [f"--index-kind {record['index_kind']}"] if record.get("index_kind") else []
    return f"python -m retrieval index {record.get('source') or 'SOURCE'} --out {directory} {' '.join(flags)}"


def open_index_record(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / SPEC_FILE).read_text())
    except (OSError, ValueError) as err:
        raise RetrievalError(
            f"{directory / SPEC_FILE} is damaged ({err}): delete {directory} and index again."
        ) from None


def check_index_folder(out: Path, record: dict[str, Any], rank_zero: bool = True) -> dict[str, Any]:
    """The record (spec.json) of the index folder `out` that an `index` run of `record` grows: RetrievalError if it
    holds other settings or is a folder of something else; {} for a new folder. Only rank 0 judges a folder without
    spec.json: the other ranks of a run may already see rank 0's first writes in it."""
    if (out / SPEC_FILE).is_file():
        stored = open_index_record(out)
        check_same(out, stored, record)
        return stored
    if rank_zero and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RetrievalError(f"--out {out} exists and is not an index folder (no {SPEC_FILE}): give a new folder.")
    return {}


def describe(record: dict[str, Any]) -> str:
    spec, sha = record.get("embedding") or {}, str(record.get("weights_sha256", "?"))
    return " ".join(f"--{key} {spec.get(key, '?')}" for key in ("backbone", "size", "pooling", "block")) + (
        f" (weights sha256 {sha[:12]})"
    )


def check_same(index_dir: Path, stored: dict[str, Any], asked: dict[str, Any]) -> None:
    """RetrievalError unless `asked` embeds as the index's own spec and weights do."""
    keys = ("embedding", "weights_sha256")
    if any(stored.get(k) != asked.get(k) for k in keys):
        loading = stored.get("loading") or {}
        # the same settings, other weights: random weights drawn before they were seeded (or real ones found since)
        lost = (
            loading.get("random_weights")
            and loading == asked.get("loading")
            and stored.get("embedding") == asked.get("embedding")
        )
        unseeded = (
            " The index was built with random weights that cannot be made again (drawn before random weights were "
            "seeded, or weights were put into the torch.hub cache since): build it again (delete it, then "
            "`python -m retrieval index ... --random-weights`)."
            if lost
            else ""
        )
        raise RetrievalError(
            f"The index {index_dir} was built with {describe(stored)}; this command asks for {describe(asked)}. "
            "Descriptors of other settings cannot be compared: give the index's own settings (query: leave them "
            f"out), or build another index with --out.{unseeded}"
        )


def check_files(directory: Path, record: dict[str, Any], names: list[str]) -> None:
    """RetrievalError naming the first of ``names`` (recorded files of the index) that differs from its fingerprint."""
    recorded = record[FILES]
    for name in names:
        if (problem := difference(directory, name, recorded.get(name) or {})) is None:
            continue
        part = name.split("/")[1] if name.startswith(f"{PARTS}/") else None
        fix = (
            f"delete the part folder {directory / PARTS / part} and run `{rebuild_command(directory, record)}`: only "
            "that part's images are embedded again"
            if part
            else f"run `{rebuild_command(directory, record)}`: it rebuilds index.faiss and paths.json from the parts' "
            "shards without embedding again"
        )
        raise RetrievalError(
            f"The index folder {directory} is inconsistent: {directory / name} {problem} (it was changed, truncated "
            f"or copied from another index since), so its rows would not be the images and descriptors they say "
            f"they are. Fix: {fix}."
        )


def check_part_files(directory: Path, record: dict[str, Any], found: list[Path]) -> None:
    """Check the recorded files of the complete parts ``found`` (a part built since the record was written, by a
    build that was killed before it, is not checked: the next build records it)."""
    names = {part.name for part in found}
    if FILES in record:
        check_files(directory, record, [n for n in record[FILES] if n.startswith(PARTS) and n.split("/")[1] in names])


@dataclass
class LoadedIndex:
    """An index folder, checked: its spec record, paths and FAISS index."""

    directory: Path
    record: dict[str, Any]
    paths: list[str]
    index: Any

    def vectors(self) -> np.ndarray:
        """The indexed descriptors `(N, D)` float32, from the parts' shards, in paths.json's order."""
        done, _ = parts(self.directory)
        check_part_files(self.directory, self.record, done)
        loaded = [read_part(p) for p in done]
        vectors = np.concatenate([p.vectors[p.ok] for p in loaded])
        rebuild = f"run `{rebuild_command(self.directory, self.record)}`"
        if [path for p in loaded for path, ok in zip(p.paths, p.ok) if ok] != self.paths:
            raise RetrievalError(f"{self.directory}'s shards do not match its paths.json: {rebuild}.")
        if vectors.shape[1] != self.index.d:
            raise RetrievalError(
                f"{self.directory / INDEX_FILE} holds {self.index.d}-dimensional vectors, the shards "
                f"{vectors.shape[1]}-dimensional descriptors: {rebuild}."
            )
        return vectors


def open_index(directory: Path) -> LoadedIndex:
    """Read and check an index folder; RetrievalError naming the file and the fix."""
    rerun = f"run `python -m retrieval index SOURCE --out {directory}` to build it"
    if not directory.is_dir():
        raise RetrievalError(f"The index folder {directory} does not exist: {rerun}.")
    try:
        record = json.loads((directory / SPEC_FILE).read_text())
        EmbeddingSpec(**record["embedding"])
        if FILES in record:
            lists = ondisk_lists(directory / INDEX_FILE).name
            check_files(directory, record, [INDEX_FILE, PATHS_FILE] + [lists] * (lists in record[FILES]))
        paths = json.loads((directory / PATHS_FILE).read_text())
    except (OSError, ValueError, KeyError, TypeError) as err:
        if isinstance(err, RetrievalError):
            raise
        raise RetrievalError(f"{directory} is not a complete index ({type(err).__name__}: {err}): {rerun}.") from None
    if FILES not in record:
        # built before files were fingerprinted: still usable (dedup and cluster need no weights, and a rebuild needs
        # the weights it was built with, which for random ones were not reproducible then), but unchecked
        print(
            f"Warning: the index {directory} records no fingerprints of its files (built before they were checked), "
            f"so a file changed since is not noticed. Run `{rebuild_command(directory, record)}` to record them "
            "(seconds: nothing is embedded again).",
            file=sys.stderr,
        )
    try:
        index = read_index(directory / INDEX_FILE)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1][:200]
        raise RetrievalError(
            f"{directory / INDEX_FILE} is damaged or missing ({reason}): run `python -m retrieval index SOURCE --out "
            f"{directory}` again; it rebuilds the index from the shards without embedding again."
        ) from None
    if index.ntotal != len(paths):
        raise RetrievalError(
            f"{directory / INDEX_FILE} holds {index.ntotal} vectors, {directory / PATHS_FILE} {len(paths)} paths (a "
            f"build was interrupted): run `python -m retrieval index SOURCE --out {directory}` again."
        )
    return LoadedIndex(directory, record, [str(p) for p in paths], index)

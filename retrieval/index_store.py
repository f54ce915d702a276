"""An index folder on disk: resumable fp16 shards of descriptors (the feature cache's store), and the FAISS index.

    INDEX/spec.json       the EmbeddingSpec, the weights' SHA-256, how the backbone was loaded, the source and
                          index kind of the last build, and the fingerprints of the files below as written
                          (`retrieval.fingerprints`; a file that differs when opened is refused by name)
    INDEX/parts/NNNNN-<digest>/   one part per `index` run that found new images: a feature-cache shard folder
                          (key.json, paths.json, embedding_*.npy (n, D) float16, ok_*.npy (n,) uint8,
                          shard_*.json markers, manifest.json once complete)
    INDEX/paths.json      the path of every row of index.faiss, in order
    INDEX/index.faiss     the FAISS index over the readable images' descriptors
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
    read_manifest,
)
from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from retrieval.embedding import EmbeddingSpec
from retrieval.faiss_index import build_index, read_index, write_index
from retrieval.fingerprints import difference, fingerprints
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


def read_part(directory: Path) -> Part:
    """A complete part, every shard checked (a damaged one is a RetrievalError naming the fix)."""
    try:
        manifest, layout = read_manifest(directory)
        paths = json.loads((directory / PATHS_FILE).read_text())
        arrays = {
            name: np.concatenate([np.load(layout.file(name, k)) for k in range(layout.n_shards)])
            for name in ("embedding", "ok")
        }
    except (CacheError, OSError, ValueError, KeyError) as err:
        message = err if isinstance(err, CacheError) else f"{type(err).__name__}: {err}"
        raise RetrievalError(
            f"The index part {directory} is damaged ({str(message).split(' Delete ')[0]}). Delete that folder and run "
            "`python -m retrieval index` again: only its images are embedded again."
        ) from None
    if not isinstance(paths, list) or len(paths) != manifest["n_samples"]:
        raise RetrievalError(f"{directory / PATHS_FILE} does not list its part's images: delete {directory} and rerun.")
    vectors = arrays["embedding"].astype(np.float32)
    if not np.isfinite(vectors).all():
        raise RetrievalError(f"{directory} holds non-finite descriptors: delete it and run `index` again.")
    # float16 storage rounds the norm: normalise again so that scores stay cosines
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return Part(directory, [str(p) for p in paths], vectors, arrays["ok"].astype(bool))


def parts(index_dir: Path) -> tuple[list[Path], list[Path]]:
    """The complete and the incomplete part folders, in order."""
    found = sorted(p for p in (index_dir / PARTS).glob("*-*") if p.is_dir()) if (index_dir / PARTS).is_dir() else []
    return [p for p in found if (p / MANIFEST_FILE).is_file()], [p for p in found if not (p / MANIFEST_FILE).is_file()]


def skip_reason(path: str) -> str:
    try:
        rgb_image(path)
    except UserError as err:
        return str(err).split(". The file")[0]
    return "unreadable when indexed"


def write_index_files(index_dir: Path, all_parts: list[Part], kind: str) -> tuple[int, list[dict[str, str]]]:
    """Build index.faiss over the readable rows of every part; write paths.json and skipped.json beside it."""
    vectors = np.concatenate([p.vectors[p.ok] for p in all_parts])
    paths = [path for p in all_parts for path, ok in zip(p.paths, p.ok) if ok]
    skipped = [
        {"path": path, "reason": skip_reason(path)} for p in all_parts for path, ok in zip(p.paths, p.ok) if not ok
    ]
    if not len(vectors):
        raise RetrievalError(f"None of the {len(skipped)} image files could be read: {skipped[0]['reason']}.")
    write_index(build_index(vectors, kind), index_dir / INDEX_FILE)
    write_text(index_dir / PATHS_FILE, json.dumps(paths, indent=1))
    write_text(index_dir / SKIPPED_FILE, json.dumps(skipped, indent=1))
    return len(paths), skipped


def record_files(index_dir: Path, record: dict[str, Any]) -> None:
    """Rewrite spec.json as ``record`` plus the fingerprints of index.faiss, paths.json and every complete part's
    files: written last, so that they describe a finished build."""
    files = [index_dir / INDEX_FILE, index_dir / PATHS_FILE]
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
            check_files(directory, record, [INDEX_FILE, PATHS_FILE])
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

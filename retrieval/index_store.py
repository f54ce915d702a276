"""An index folder on disk: resumable fp16 shards of descriptors (the feature cache's store), and the FAISS index.

    INDEX/spec.json       the EmbeddingSpec, the weights' SHA-256 and how the backbone was loaded
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
from utils.atomic import write_text
from utils.errors import UserError
from utils.images import rgb_image

SPEC_FILE, INDEX_FILE, SKIPPED_FILE, PARTS = "spec.json", "index.faiss", "skipped.json", "parts"


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
        loaded = [read_part(p) for p in done]
        vectors = np.concatenate([p.vectors[p.ok] for p in loaded])
        if [path for p in loaded for path, ok in zip(p.paths, p.ok) if ok] != self.paths:
            raise RetrievalError(f"{self.directory}'s shards do not match its paths.json: run `index` again.")
        return vectors


def open_index(directory: Path) -> LoadedIndex:
    """Read and check an index folder; RetrievalError naming the file and the fix."""
    rerun = f"run `python -m retrieval index SOURCE --out {directory}` to build it"
    if not directory.is_dir():
        raise RetrievalError(f"The index folder {directory} does not exist: {rerun}.")
    try:
        record = json.loads((directory / SPEC_FILE).read_text())
        paths = json.loads((directory / PATHS_FILE).read_text())
        EmbeddingSpec(**record["embedding"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RetrievalError(f"{directory} is not a complete index ({type(err).__name__}: {err}): {rerun}.") from None
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

"""Building an index's parts: the images to embed, the predict loop over them and the shard writer.

The extraction is the feature cache's (`datamodules.feature_cache`): `ShardLayout` shards, markers and manifest,
`ShardWriter`, `ExtractionData` (pending shards only, split between the ranks), under Lightning's
`trainer.predict` (any number of GPUs); only the arrays differ: one float16 descriptor and one readable flag per
image.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import Dataset

from datamodules.feature_cache.extraction import ExtractionData, ShardWriter
from datamodules.feature_cache.store import (
    FORMAT_VERSION,
    KEY_FILE,
    PATHS_FILE,
    CacheError,
    ShardLayout,
    json_digest,
    write_manifest,
)
from retrieval.embedding import EmbeddingSpec, embed
from retrieval.index_store import PARTS, RetrievalError, load_input
from utils.atomic import remove_stale_temps, write_text
from utils.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def list_images(source: Path, exclude: Path | None = None) -> list[str]:
    """The absolute paths to index: a folder's image files (recursively, hidden ones and those under `exclude`, the
    index folder, left out; sorted), or the lines of a file list (relative to its folder; a missing listed file is
    skipped later, not fatal)."""
    if not source.exists():
        raise RetrievalError(f"{source} does not exist: give a folder of images or a file with one path per line.")
    if source.is_file():
        lines = [line.strip() for line in source.read_text(errors="replace").splitlines()]
        paths = [source.parent / line for line in lines if line and not line.startswith("#")]
        if not paths:
            raise RetrievalError(f"The file list {source} lists no image: write one image path per line.")
        return [str(p.absolute()) for p in paths]
    skip = exclude.absolute() if exclude is not None else None
    files = sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and not p.name.startswith(".") and (skip is None or not p.absolute().is_relative_to(skip))
    )
    if not files:
        raise RetrievalError(f"The folder {source} is empty: give a folder that holds images.")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise RetrievalError(
            f"The folder {source} holds {len(files)} files (e.g. {files[0].name}) but no image: the suffixes read "
            f"are {', '.join(IMAGE_SUFFIXES)}."
        )
    return [str(p.absolute()) for p in images]


class ImageFiles(Dataset):
    """Item i: `{"image": (3, size, size), "ok": bool, "index": i, "path": str}`; an unreadable file gives a black
    image with ok=False (it is listed in skipped.json, never fatal)."""

    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image, ok = load_input(self.paths[index], self.size), True
        except UserError:
            image, ok = torch.zeros(3, self.size, self.size), False
        return {"image": image, "ok": ok, "index": index, "path": self.paths[index]}


class Embedder(L.LightningModule):
    """`predict_step`: a batch of `ImageFiles` -> `{"embedding": (B, D) float16, "ok": (B,) uint8}` on the CPU
    (zero rows for unreadable files)."""

    def __init__(self, backbone: torch.nn.Module, spec: EmbeddingSpec):
        super().__init__()
        self.backbone, self.spec = backbone.eval().requires_grad_(False), spec
        # the ranks of a DDP extraction split the pending shards: with fewer shards than ranks, some have none
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        ok = batch["ok"].bool()
        vectors = embed(self.backbone, batch["image"], self.spec) * ok[:, None].to(batch["image"].dtype)
        return {"embedding": vectors.half().cpu(), "ok": ok.to(torch.uint8).cpu()}


class EmbeddingWriter(ShardWriter):
    """The feature cache's shard writer, storing one descriptor and one readable flag per image."""

    def rows(self, prediction: dict[str, Any], batch: dict[str, Any], shard: int) -> dict[str, np.ndarray]:
        rows = {name: t.numpy() for name, t in prediction.items()}
        bad = ~np.isfinite(rows["embedding"]).all(axis=1)
        if bad.any():
            self.on_exception()
            path = batch["path"][int(np.flatnonzero(bad)[0])]
            raise CacheError(
                f"The backbone gives a non-finite descriptor (NaN or inf) for {path}; nothing of that shard was kept. Check the weights (--checkpoint) and that image."
            )
        return rows


def part_key(record: dict[str, Any], paths: list[str], samples_per_shard: int) -> dict[str, Any]:
    """A part's key.json: read_manifest's fields plus what its bytes depend on (the spec, the weights, the files)."""
    return {
        "format": FORMAT_VERSION,
        "spec": record,
        "files_sha256": hashlib.sha256("\n".join(paths).encode()).hexdigest(),
        "n_source_samples": len(paths),
        "views": 0,
        "samples_per_shard": samples_per_shard,
    }


def part_directory(index_dir: Path, key: dict[str, Any], number: int) -> Path:
    """The folder of the part with key.json `key`: `NNNNN-<digest>` (in the order built), or for part i of a split
    run `NNNNN-partIIIIIofNNNNN-<digest>` (the key's `split`), so that the parts sort in the order of their rows."""
    split = key.get("split")
    label = f"part{split['part']:05d}of{split['parts']:05d}-" if split else ""
    return index_dir / PARTS / f"{number:05d}-{label}{json_digest(key)}"


def embed_new(
    index_dir: Path,
    record: dict[str, Any],
    paths: list[str],
    found: tuple[list[Path], list[Path]],
    trainer: L.Trainer,
    embedder: Embedder,
    batch_size: int,
    num_workers: int,
    samples_per_shard: int,
) -> int:
    """Embed `paths` into a new part (or resume the killed run's part of the same paths); return how many images
    were embedded now.

    `found`: the complete and incomplete parts; an incomplete part of other paths (the folder changed since the run
    was killed) is removed, its images being in `paths` again. `trainer` holds an `EmbeddingWriter` callback.
    """
    done, incomplete = found
    key = part_key(record, paths, samples_per_shard)
    directory = part_directory(index_dir, key, len(done))
    if rank_zero_only.rank == 0:
        for stale in incomplete:
            if stale != directory:
                print(f"Note: removing {stale}, an unfinished part of other images.", file=sys.stderr)
                shutil.rmtree(stale)
    return fill_part(directory, key, paths, trainer, embedder, batch_size, num_workers)


def fill_part(
    directory: Path,
    key: dict[str, Any],
    paths: list[str],
    trainer: L.Trainer,
    embedder: Embedder,
    batch_size: int,
    num_workers: int,
) -> int:
    """Create the part `directory` of `paths` (rank 0: the folder, key.json, paths.json) or resume it, embed its
    pending shards and seal it with its manifest; return how many images were embedded now."""
    layout = ShardLayout(directory, len(paths), key["samples_per_shard"], json_digest(key))
    if rank_zero_only.rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(directory)
        if not (directory / KEY_FILE).is_file():
            write_text(directory / PATHS_FILE, json.dumps(paths))
            write_text(directory / KEY_FILE, json.dumps(key, indent=2))
    pending = layout.pending()
    next(c for c in trainer.callbacks if isinstance(c, EmbeddingWriter)).layout = layout
    data = ExtractionData(ImageFiles(paths, key["spec"]["embedding"]["size"]), layout, batch_size, num_workers)
    trainer.predict(embedder, datamodule=data, return_predictions=False)
    trainer.strategy.barrier("retrieval_shards")
    if trainer.is_global_zero:
        write_manifest(layout, 0)
    trainer.strategy.barrier("retrieval_manifest")
    return sum(layout.size(k) for k in pending)

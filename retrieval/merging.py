"""Merging an index folder's parts into one FAISS index: the parts checked together, then index.faiss, paths.json
and skipped.json written from their shards (`python -m retrieval build`, and the end of every `index` run).

The parts must make one index: one embedding (spec and weights, from each part's key.json), no image in two parts,
and every part of a split run (`index --part i/N`, `retrieval.splits`) complete. Rows follow the parts' folder
order, which is the split's order, so N parts of a split give the rows (hence the bytes) one process gives.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.feature_cache.store import KEY_FILE, ShardLayout
from retrieval.faiss_index import build_index, write_index
from retrieval.index_store import (
    INDEX_FILE,
    PATHS_FILE,
    SKIPPED_FILE,
    RetrievalError,
    damaged,
    describe,
    open_part,
    parts,
    read_shard,
    rebuild_command,
)
from retrieval.ondisk import ondisk_lists, ondisk_training_rows, write_ondisk_index
from utils.atomic import write_text
from utils.errors import UserError
from utils.images import rgb_image

SPLIT_NAME = re.compile(r"^\d+-part(\d+)of(\d+)-")


def part_command(index_dir: Path, record: dict[str, Any], part: str) -> str:
    """The `index` command that embeds (or resumes) part `part` ("i/N") of a split run of `index_dir`."""
    return f"{rebuild_command(index_dir, record)} --part {part}"


def _key(directory: Path) -> dict[str, Any]:
    try:
        key = json.loads((directory / KEY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return key if isinstance(key, dict) else {}


def checked_parts(index_dir: Path, record: dict[str, Any]) -> list[Path]:
    """The complete parts of `index_dir`, in order, once they are checked to make one index of `record`'s embedding:
    a RetrievalError names the part that was embedded otherwise, the two parts that hold one image, or the jobs of a
    split run that are missing or unfinished, with the commands that fix it."""
    done, incomplete = parts(index_dir)
    keys = {directory: _key(directory) for directory in done + incomplete}
    for directory in done:
        spec = keys[directory].get("spec") or {}
        if any(spec.get(k) != record.get(k) for k in ("embedding", "weights_sha256")):
            raise RetrievalError(
                f"The part {directory} was embedded with {describe(spec)}, but the index {index_dir} holds "
                f"{describe(record)}: descriptors of other settings cannot be merged into one index. Delete that part "
                "folder and embed its images again with the index's settings (the `--part i/N` job that made it, or "
                f"`{rebuild_command(index_dir, record)}`), or build an index of that part's settings in another folder."
            )
    owner: dict[str, Path] = {}
    for directory in done:
        for path in open_part(directory)[1]:
            if (first := owner.setdefault(path, directory)) != directory:
                raise RetrievalError(
                    f"The parts {first.name} and {directory.name} of {index_dir} both hold {path}: they come from runs "
                    "that split different image lists, or one list differently (`--part i/N` jobs given other N, or "
                    "the folder changed between the jobs). An image must be in one part: delete the parts of one of "
                    f"those runs from {index_dir / 'parts'}, run its jobs again if their images are missing, then "
                    f"`python -m retrieval build {index_dir}`."
                )
    splits: dict[tuple[str, int], dict[int, Path]] = {}
    for directory in done + incomplete:
        if match := SPLIT_NAME.match(directory.name):
            group = (keys[directory].get("split") or {}).get("files_sha256", "?"), int(match.group(2))
            splits.setdefault(group, {})[int(match.group(1))] = directory
    problems, patterns = [], []
    for (_, n), members in splits.items():
        missing = [f"{i}/{n}" for i in range(1, n + 1) if i not in members]
        unfinished = [f"{i}/{n} ({members[i].name})" for i in sorted(members) if members[i] in incomplete]
        problems += [f"part {part} was not started" for part in missing]
        problems += [f"part {part} is unfinished (still running, or killed)" for part in unfinished]
        patterns += [str(index_dir / "parts" / f"*of{n:05d}-*")] if missing or unfinished else []
    if problems:
        raise RetrievalError(
            f"The index {index_dir} holds a split run whose parts are not all embedded: {'; '.join(problems)}. Run "
            f"each of those jobs (`{part_command(index_dir, record, 'i/N')}`, with the images and settings of the "
            "other jobs; a killed one resumes where it stopped), then `python -m retrieval build "
            f"{index_dir}`. If the images changed since, that run cannot be finished: delete its part folders "
            f"({', '.join(patterns)}) and split the images again."
        )
    return done


def readable_rows(part_dirs: list[Path]) -> Iterator[np.ndarray]:
    """The readable descriptors of the complete parts `part_dirs`, one shard `(n, D)` float32 at a time, in order."""
    for directory in part_dirs:
        layout, _ = open_part(directory)
        for k in range(layout.n_shards):
            vectors, ok = read_shard(layout, k)
            yield vectors[ok]


def skip_reason(path: str) -> str:
    try:
        rgb_image(path)
    except UserError as err:
        return str(err).split(". The file")[0]
    return "unreadable when indexed"


def write_index_files(index_dir: Path, part_dirs: list[Path], kind: str) -> tuple[int, list[dict[str, str]]]:
    """Build index.faiss over the readable rows of the complete parts `part_dirs`, in order; write paths.json and
    skipped.json beside it. The `ondisk` kind reads the shards twice (a training sample, then every row) and never
    holds them all; the other kinds build in memory from all of them."""
    paths, skipped = [], []
    for directory in part_dirs:
        layout, part_paths = open_part(directory)
        ok = np.concatenate([_readable(layout, k) for k in range(layout.n_shards)])
        paths += [path for path, readable in zip(part_paths, ok) if readable]
        skipped += [{"path": p, "reason": skip_reason(p)} for p, readable in zip(part_paths, ok) if not readable]
    if not paths:
        raise RetrievalError(f"None of the {len(skipped)} image files could be read: {skipped[0]['reason']}.")
    target = index_dir / INDEX_FILE
    if kind == "ondisk":
        train = _rows(readable_rows(part_dirs), ondisk_training_rows(len(paths)))
        write_ondisk_index(train, readable_rows(part_dirs), len(paths), target)
    else:
        write_index(build_index(np.concatenate(list(readable_rows(part_dirs))), kind), target)
        ondisk_lists(target).unlink(missing_ok=True)  # an earlier ondisk build's lists
    write_text(index_dir / PATHS_FILE, json.dumps(paths, indent=1))
    write_text(index_dir / SKIPPED_FILE, json.dumps(skipped, indent=1))
    return len(paths), skipped


def _readable(layout: ShardLayout, shard: int) -> np.ndarray:
    try:
        return np.load(layout.file("ok", shard)).astype(bool)
    except (OSError, ValueError) as err:
        raise damaged(layout.directory, err) from None


def _rows(chunks: Iterator[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The rows `rows` (sorted indices) of the concatenation of `chunks`, without concatenating them."""
    picked, start = [], 0
    for chunk in chunks:
        lo, hi = np.searchsorted(rows, [start, start + len(chunk)])
        picked.append(chunk[rows[lo:hi] - start])
        start += len(chunk)
    return np.concatenate(picked)

"""The feature cache on disk: its key, its folder and lock, self-describing shards and the manifest that seals them.

Every file is checked against the others before it is trusted: ``key.json`` against the folder name, each shard's
marker against the key and the shard layout, each array's header against its marker, the manifest against all of
them. A mismatch is a `CacheError` naming the file and the fix (or, while resuming, a shard extracted again);
never a silent reuse.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from lightning.pytorch.utilities import rank_zero_info

from utils.atomic import write_text
from utils.errors import option

from ..errors import DatasetError

FORMAT_VERSION = 2  # 2: shard size and numerics in the key, self-describing shard markers
KEY_FILE, PATHS_FILE, MANIFEST_FILE = "key.json", "paths.json", "manifest.json"


class CacheError(DatasetError):
    """A feature cache on disk is damaged, incomplete, or belongs to other settings."""


@dataclass(frozen=True)
class CacheKey:
    """Everything the cached bytes and their layout depend on; any change gives another digest, hence another folder."""

    backbone: str  # the hub name
    architecture: str  # class, width, depth, patch size, registers
    backbone_options: dict[str, Any]  # how it computes (dtype, compiled, fused attention): the last bits can change
    numerics: dict[str, Any]  # device type, trainer precision, autocast dtype, matmul precision: the tokens' rounding
    weights_sha256: str  # of the loaded weights themselves: a checkpoint file, the hub cache or a random init
    blocks: tuple[int, ...]  # absolute block indices
    norm: bool
    class_tokens: bool
    crop_size: tuple[int, int]
    preprocessing: str  # the dataset class, its options and the transform's repr (every parameter)
    views: int
    seed: int | None  # None for views=0, which draws nothing
    n_source_samples: int
    files_sha256: str  # of the ordered (path, size, mtime) list and label maps
    samples_per_shard: int  # the layout: which rows each shard file holds
    format: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def digest(self) -> str:
        return json_digest(self.to_json())


def json_digest(data: dict[str, Any]) -> str:
    """The first 16 hex digits of the SHA-256 of ``data`` as sorted JSON: a key's name."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def delete_hint(directory: Path) -> str:
    """The fix for a damaged cache folder, in the syntax of the running command."""
    root = option("feature_cache", "root", "PATH")
    return f"Delete {directory} to extract the features again, or set {root} to use another folder."


def cache_directory(root: str | os.PathLike, key: CacheKey) -> Path:
    return Path(root).expanduser() / f"{key.backbone}-{key.digest()}"


@contextmanager
def extraction_lock(directory: Path, exclusive: bool = True) -> Iterator[None]:
    """Hold ``<directory>.lock`` while a cache is checked, extracted and sealed: a second extraction of the same key
    waits, then finds the finished cache. Other keys have other locks. The OS releases the lock of a killed process.

    ``exclusive=False`` (ranks other than 0 of a DDP job) takes no lock: their rank 0 holds it for them, and waiting
    for it would deadlock the job.
    """
    if not exclusive:
        yield
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(directory.with_name(directory.name + ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        rank_zero_info(f"Feature cache: another run is extracting into {directory}; waiting for it to finish.")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def open_cache_dir(directory: Path, key: CacheKey) -> Path:
    """``directory`` of ``key``: created with its key.json, or checked against it."""
    key_file = directory / KEY_FILE
    if key_file.is_file():
        stored = _read_json(key_file, directory)
        if stored != key.to_json():
            fields = sorted(f for f in {*key.to_json(), *stored} if stored.get(f) != key.to_json().get(f))
            raise CacheError(
                f"{key_file} describes other settings than its folder name says (differing: {', '.join(fields)}); "
                f"its features are not reused. {delete_hint(directory)}"
            )
    elif directory.is_dir() and any(not p.name.startswith(".") for p in directory.iterdir()):
        raise CacheError(
            f"{directory} holds files but no {KEY_FILE}: it is not a feature cache. {delete_hint(directory)}"
        )
    else:
        write_text(key_file, json.dumps(key.to_json(), indent=2))
    return directory


def _read_json(path: Path, directory: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheError(f"{path} is damaged ({err}). {delete_hint(directory)}") from None


@dataclass(frozen=True)
class ShardLayout:
    """Which rows each shard of a cache holds: shard k = samples ``k * samples_per_shard`` onwards.

    Shard k's marker ``shard_{k:05d}.json`` is written last and says what the shard is: the key's digest, its
    first sample, its row count and each array's dtype and row shape. A shard counts as done only if the marker
    says exactly what this layout expects and every array file's header agrees.
    """

    directory: Path
    n_samples: int
    samples_per_shard: int
    key: str  # the key's digest

    @property
    def n_shards(self) -> int:
        return -(-self.n_samples // self.samples_per_shard)

    def start(self, shard: int) -> int:
        return shard * self.samples_per_shard

    def size(self, shard: int) -> int:
        return min(self.samples_per_shard, self.n_samples - self.start(shard))

    def marker(self, shard: int) -> Path:
        return self.directory / f"shard_{shard:05d}.json"

    def file(self, name: str, shard: int) -> Path:
        return self.directory / f"{name}_{shard:05d}.npy"

    def describe(self, shard: int, arrays: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """What shard ``shard``'s marker says when it is complete."""
        return {
            "format": FORMAT_VERSION,
            "key": self.key,
            "shard": shard,
            "start": self.start(shard),
            "samples": self.size(shard),
            "samples_per_shard": self.samples_per_shard,
            "arrays": arrays,
        }

    def mark_done(self, shard: int, arrays: dict[str, dict[str, Any]]) -> None:
        write_text(self.marker(shard), json.dumps(self.describe(shard, arrays)))

    def problem(self, shard: int, arrays: dict[str, dict[str, Any]] | None = None) -> str | None:
        """Why shard ``shard`` is not a complete shard of this layout (with these ``arrays``, if given), or None."""
        marker = self.marker(shard)
        if not marker.is_file():
            return f"{marker} is missing"
        try:
            found = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            return f"{marker} is damaged ({err})"
        if not isinstance(found, dict) or not isinstance(found.get("arrays"), dict):
            return f"{marker} is damaged (not a shard marker)"
        expected = self.describe(shard, found["arrays"] if arrays is None else arrays)
        if found != expected:
            differing = sorted(k for k in expected if found.get(k) != expected[k])
            return f"{marker} does not describe this cache's shard {shard} (differing: {', '.join(differing)})"
        for name, meta in found["arrays"].items():
            path = self.file(name, shard)
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as err:
                return f"{path} cannot be read ({err})"
            if str(array.dtype) != meta["dtype"] or list(array.shape) != [found["samples"], *meta["shape"]]:
                return (
                    f"{path} holds {array.dtype} {list(array.shape)}, its marker says "
                    f"{meta['dtype']} {[found['samples'], *meta['shape']]}"
                )
        return None

    def pending(self) -> list[int]:
        """The shards to extract (again): missing, or not what this layout expects (then said so)."""
        pending = []
        for shard in range(self.n_shards):
            problem = self.problem(shard)
            if problem is not None:
                if self.marker(shard).is_file():
                    rank_zero_info(f"Feature cache: extracting shard {shard} again: {problem}.")
                pending.append(shard)
        return pending


def write_manifest(layout: ShardLayout, views: int) -> dict[str, Any]:
    """Check every shard is complete and alike, then write manifest.json: the cache is complete and readable."""
    if missing := layout.pending():
        raise CacheError(f"{layout.directory} misses shards {missing[:5]} after extraction: run again to resume it.")
    arrays = {k: json.loads(layout.marker(k).read_text())["arrays"] for k in range(layout.n_shards)}
    if any(a != arrays[0] for a in arrays.values()):
        raise CacheError(
            f"The shards of {layout.directory} hold arrays of different shapes: the views must all be one size."
        )
    manifest = {
        "format": FORMAT_VERSION,
        "key": layout.key,
        "n_samples": layout.n_samples,
        "samples_per_shard": layout.samples_per_shard,
        "views": views,
        "arrays": arrays[0],
    }
    write_text(layout.directory / MANIFEST_FILE, json.dumps(manifest, indent=2))
    return manifest


def read_manifest(directory: Path) -> tuple[dict[str, Any], ShardLayout]:
    """The manifest of a complete cache and its layout, every shard checked against both (headers only)."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise CacheError(
            f"{directory} is not a complete feature cache (no {MANIFEST_FILE}): run again to resume the extraction."
        )
    manifest, key = _read_json(path, directory), _read_json(directory / KEY_FILE, directory)
    fields = {"format": int, "key": str, "n_samples": int, "samples_per_shard": int, "views": int, "arrays": dict}
    if not isinstance(manifest, dict) or any(not isinstance(manifest.get(f), t) for f, t in fields.items()):
        raise CacheError(f"{path} is damaged (a manifest holds {', '.join(fields)}). {delete_hint(directory)}")
    if not isinstance(key, dict):
        raise CacheError(f"{directory / KEY_FILE} is damaged (not a key). {delete_hint(directory)}")
    if manifest["key"] != json_digest(key) or not directory.name.endswith(f"-{manifest['key']}"):
        raise CacheError(
            f"{path} belongs to key {manifest['key']}, not to {directory / KEY_FILE} ({json_digest(key)}) and its "
            f"folder name. {delete_hint(directory)}"
        )
    expected = (
        key.get("samples_per_shard"),
        key.get("format"),
        key.get("n_source_samples", 0) * max(key.get("views", 0), 1),
    )
    if (manifest["samples_per_shard"], manifest["format"], manifest["n_samples"]) != expected:
        raise CacheError(f"{path} does not match {directory / KEY_FILE}. {delete_hint(directory)}")
    layout = ShardLayout(directory, manifest["n_samples"], manifest["samples_per_shard"], manifest["key"])
    for shard in range(layout.n_shards):
        if (problem := layout.problem(shard, manifest["arrays"])) is not None:
            raise CacheError(f"The feature cache {directory} is damaged: {problem}. {delete_hint(directory)}")
    return manifest, layout

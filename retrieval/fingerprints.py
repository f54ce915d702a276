"""Fingerprints of an index folder's files, recorded when it is built and compared when it is opened.

A fingerprint is the file's size and the SHA-256 of its first and last MiB (of the whole file up to 2 MiB). Not
the whole file's SHA-256: opening must stay cheap, and at a million images index.faiss is 1.5-1.7 GB (docs/retrieval.md,
"Scale"), which SHA-256 reads at about 0.4 GB/s on this project's CPUs, seconds before every query. The mix-ups
this guards against change the size or the edges: a file copied from another index (a FAISS file starts with its
dimension, count and first vectors, a shard with its .npy header and first rows), a truncated or extended file, an
edited paths list (a same-length edit in the middle of a list above 2 MiB is the one change it misses). Damage
inside a large file is the storage's to detect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

EDGE_BYTES = 1 << 20


def fingerprint(path: Path) -> dict[str, int | str]:
    """``{"size": bytes, "sha256": hex digest of the first and last EDGE_BYTES}`` of the file ``path``."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            digest.update(f.read(EDGE_BYTES))
    return {"size": size, "sha256": digest.hexdigest()}


def fingerprints(root: Path, files: Iterable[Path]) -> dict[str, dict[str, int | str]]:
    """The fingerprints of ``files``, by their path relative to ``root`` (with ``/``)."""
    return {path.relative_to(root).as_posix(): fingerprint(path) for path in files}


def difference(root: Path, name: str, recorded: dict[str, int | str]) -> str | None:
    """How ``root/name`` differs from its ``recorded`` fingerprint (missing, another size, other bytes), or None."""
    path = root / name
    if not recorded:
        return "has no recorded fingerprint"
    if not path.is_file():
        return "is missing"
    found = fingerprint(path)
    if found["size"] != recorded.get("size"):
        return f"holds {found['size']} bytes, not the {recorded.get('size')} its build wrote"
    if found["sha256"] != recorded.get("sha256"):
        return "holds as many bytes as its build wrote, but other ones"
    return None

"""Checksums of weight files: SHA-256 pins given by the code, the user or a ``<file>.sha256`` beside the file, and
trust on first use for unpinned files in the torch.hub cache (recorded beside them; a later change is refused)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

from utils.atomic import remove_stale_temps, write_text
from utils.errors import UserError, option

SHA256_SUFFIX = ".sha256"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable or does not fit the model it is loaded into."""


class WeightsNotFoundError(CheckpointError):
    """No local file, no cached file, and downloading was not allowed."""


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_record(path: Path) -> Path:
    """The ``<file>.sha256`` beside ``path`` that pins its hash."""
    return path.with_name(path.name + SHA256_SUFFIX)


def checked_sha256(value: str, source: str) -> str:
    """``value`` as 64 lower-case hex digits; a CheckpointError naming ``source`` if it is not a SHA-256."""
    text = str(value).strip().lower()
    if not _HEX64.match(text):
        raise CheckpointError(
            f"{source} gives {str(value)[:80]!r}, which is not a SHA-256 (64 hexadecimal digits). "
            "Fix: give the full digest, as `sha256sum FILE` prints it."
        )
    return text


def read_sha256_record(record: Path) -> str:
    """The hash in a ``<file>.sha256`` file (``sha256sum`` format: the digest first, then optionally the name)."""
    try:
        words = record.read_text().split()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"Cannot read the hash file {record} ({err}). Fix: delete it or write the file's SHA-256 in it."
        ) from None
    return checked_sha256(words[0] if words else "", f"The hash file {record}")


def write_sha256_record(path: Path, digest: str) -> Path:
    """Pin ``digest`` for ``path`` in ``<file>.sha256`` (``sha256sum`` format), atomically."""
    return write_text(sha256_record(path), f"{digest}  {path.name}\n")


def verify_checkpoint(
    path: Path, sha256: str | None, owner: str, what: str, official_sha256: Mapping[str, str] | None = None
) -> None:
    """Check ``path`` against its pins: ``sha256`` (an option of ``owner``), else the official digest of a file of
    that name (``official_sha256``), and the ``<file>.sha256`` beside it.

    Raises:
        CheckpointError: a hash differs; the message names the file, both hashes and the fix.
    """
    pins = []
    if sha256 is not None:
        pins.append((checked_sha256(sha256, option(owner, "sha256", sha256)), option(owner, "sha256", sha256)))
    elif official_sha256 and path.name in official_sha256:
        pins.append((official_sha256[path.name], f"the official {path.name}'s known SHA-256"))
    record = sha256_record(path)
    if record.is_file():
        pins.append((read_sha256_record(record), f"the hash file {record}"))
    if not pins:
        return
    got = sha256_of(path)
    for expected, source in pins:
        if got != expected:
            raise CheckpointError(
                f"The {what} file {path} has SHA-256 {got}, but {source} expects {expected}: the file is truncated, "
                f"corrupt or was replaced, and was not loaded. Fix: delete {path} and get it again "
                f"({option(owner, 'download', True)} fetches an official file into the torch.hub cache); "
                f"if you trust this file as it is, pin its hash instead ({option(owner, 'sha256', got)}, "
                f"or write it into {record})."
            )


def trust_on_first_use(path: Path, what: str) -> None:
    """Record the SHA-256 of an unpinned hub-cache file beside it, so that a later change is refused."""
    digest = sha256_of(path)
    try:
        remove_stale_temps(path.parent)
        write_sha256_record(path, digest)
    except OSError as err:  # a read-only shared cache: the file is still usable, only unpinned
        print(f"SHA-256 of the {what} file {path}: {digest} (not recorded: {err.strerror or err})")
        return
    print(
        f"SHA-256 of the {what} file {path}: {digest} (recorded in {sha256_record(path).name}; a changed file will be refused)"
    )

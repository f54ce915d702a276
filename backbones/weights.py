"""Finding, downloading and checking official checkpoint files.

Resolution order for a model's weights: an explicit local path, then the torch.hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``, where ``torch.hub.load`` puts the official files), then the
official URL when the user allows a download. Anything else is a clear error that says how to get
the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

import torch

from utils.atomic import atomic_write
from utils.errors import UserError


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable or does not fit the model it is loaded into."""


class WeightsNotFoundError(CheckpointError):
    """No local file, no cached file, and downloading was not allowed."""


def hub_checkpoint_path(filename: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``filename``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def download_to_cache(url: str, sha256: str | None = None) -> Path:
    """Download ``url`` into the torch.hub cache with a progress bar, atomically.

    The file only gets its cache name after the optional SHA-256 check passed, so an interrupted or
    corrupt download never leaves a checkpoint behind.
    """

    def download(tmp: Path) -> None:
        torch.hub.download_url_to_file(url, str(tmp), progress=True)
        if sha256 is not None and (got := sha256_of(tmp)) != sha256.lower():
            raise CheckpointError(
                f"Downloaded {url} but its SHA-256 is {got}, not the expected {sha256}. "
                "The download is corrupt or the file changed upstream; nothing was saved. "
                "Retry, or pass a local file."
            )

    return atomic_write(hub_checkpoint_path(url.rsplit("/", 1)[-1]), download)


def resolve_checkpoint(
    checkpoint: str | os.PathLike | None,
    filename: str,
    url: str | None,
    download: bool,
    sha256: str | None = None,
    what: str = "weights",
) -> Path:
    """Return the path of a checkpoint: ``checkpoint`` if given, else the hub cache, else download.

    Raises:
        CheckpointError: ``checkpoint`` was given but does not exist.
        WeightsNotFoundError: nothing local and ``download`` is False (or no official URL exists).
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(f"Checkpoint file {path} for the {what} does not exist. Check the path.")
        return path
    cached = hub_checkpoint_path(filename)
    if cached.is_file():
        return cached
    if download and url is not None:
        return download_to_cache(url, sha256)
    how = (
        f"download it from {url} into {cached.parent}, or allow the download "
        "(`download=True`, or `backbone.download=true` on the command line)"
        if url is not None
        else "this file has no public URL: get it from its authors"
    )
    raise WeightsNotFoundError(
        f"No {what} found: no local checkpoint was given and {cached} is not in the torch.hub cache. "
        f"Pass a local file (`checkpoint=PATH`), or {how}."
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``state_dict`` saved with ``torch.save``, unwrapping ``{"state_dict": ...}``/``{"model": ...}``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"Cannot read checkpoint {path}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"Checkpoint {path} does not hold a state_dict of tensors.")
    return dict(obj)


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    path: Path,
    hint: str = "",
    show: int = 5,
) -> None:
    """Raise a CheckpointError listing the first mismatched keys and shapes, if any."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - show} more)" if len(items) > show else ""
            parts.append(f"{label}: {', '.join(items[:show])}{more}")
    raise CheckpointError(
        f"Checkpoint {path} does not fit the chosen architecture; " + "; ".join(parts) + ". " + hint
    )

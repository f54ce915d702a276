"""Finding, downloading and checking official checkpoint files.

Resolution order for a model's weights: an explicit local path, then the torch.hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``, where ``torch.hub.load`` puts the official files), then the
official URL when the user allows a download. Anything else is a clear error that says how to get
the file.

Every file is checked before it is read. A hash can be pinned three ways: by the code where the publisher
gives one (SAM), by the user (a ``sha256`` option), or by a ``<file>.sha256`` file beside the weights
(``sha256sum`` format). Files in the hub cache without any pin are trusted on first use: their SHA-256 is
recorded in ``<file>.sha256`` beside them and shown, and a later change of the file is refused.
"""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Mapping
from pathlib import Path

import torch

from backbones.checksums import (
    CheckpointError,
    WeightsNotFoundError,
    checked_sha256,
    sha256_of,
    sha256_record,
    trust_on_first_use,
    verify_checkpoint,
    write_sha256_record,
)
from utils.atomic import atomic_write, remove_stale_temps
from utils.errors import load_failure_reason, option


def hub_checkpoint_path(filename: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``filename``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _created_folders(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, deepest first."""
    missing = []
    for folder in path.parents:
        if folder.exists():
            break
        missing.append(folder)
    return missing


def download_to_cache(url: str, sha256: str | None = None, owner: str = "backbone", what: str = "weights") -> Path:
    """Download ``url`` into the torch.hub cache with a progress bar, atomically, and pin its hash.

    The file only gets its cache name after the SHA-256 check (``sha256``: the publisher's or the user's
    pin) passed, so an interrupted or corrupt download never leaves a checkpoint behind; temporary files
    of killed downloads are removed first. Without a pin the hash is recorded (trust on first use) and shown.

    Raises:
        CheckpointError: the download failed (the message names the URL) or its hash differs from the pin.
    """
    target = hub_checkpoint_path(url.rsplit("/", 1)[-1])
    new_folders = _created_folders(target)
    expected = None if sha256 is None else checked_sha256(sha256, option(owner, "sha256", sha256))

    def download(tmp: Path) -> None:
        try:
            torch.hub.download_url_to_file(url, str(tmp), progress=True)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", None) or err
            raise CheckpointError(
                f"Cannot download the {what} from {url}: {reason}. Nothing was saved. Fix: check the network "
                f"connection (and the proxy settings), or fetch the file by hand into {target.parent} "
                f"(e.g. `curl -L -o {target} {url}`), or pass a local file ({option(owner, 'checkpoint', 'PATH')})."
            ) from None
        if expected is not None and (got := sha256_of(tmp)) != expected:
            raise CheckpointError(
                f"Downloaded {url} but its SHA-256 is {got}, not the expected {expected}. "
                "The download is corrupt or the file changed upstream; nothing was saved. "
                f"Retry, or pass a local file ({option(owner, 'checkpoint', 'PATH')})."
            )

    try:
        remove_stale_temps(target.parent)
        atomic_write(target, download)
    except BaseException as err:
        for folder in new_folders:  # leave no empty cache folders behind a failed first download
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if isinstance(err, OSError):  # the download's own errors are CheckpointErrors: this is the cache folder
            raise unwritable_cache(target, err, owner, what) from None
        raise
    digest = expected or sha256_of(target)
    write_sha256_record(target, digest)
    print(f"Downloaded {url} to {target}; SHA-256 {digest} (recorded in {sha256_record(target).name}).")
    return target


def unwritable_cache(target: Path, err: OSError, owner: str, what: str) -> CheckpointError:
    """The error for a hub cache folder that cannot take ``target`` (read-only, not a folder, no permission)."""
    return CheckpointError(
        f"Cannot save the {what} into the torch.hub cache folder {target.parent}: {err.strerror or err}"
        f"{f' ({err.filename})' if err.filename not in (None, str(target.parent)) else ''}. Nothing was saved. Fix: make that folder writable, or "
        f"point the cache at a writable folder with the TORCH_HOME environment variable (e.g. `TORCH_HOME=$HOME/"
        f".cache/torch` before the command, then {option(owner, 'download', True)} again), or fetch {target.name} "
        f"by hand and pass it ({option(owner, 'checkpoint', 'PATH')})."
    )


def resolve_checkpoint(
    checkpoint: str | os.PathLike | None,
    filename: str,
    url: str | None,
    download: bool,
    sha256: str | None = None,
    what: str = "weights",
    owner: str = "backbone",
    random_option: str | None = None,
    official_sha256: Mapping[str, str] | None = None,
) -> Path:
    """Return the verified path of a checkpoint: ``checkpoint`` if given, else the hub cache, else download.

    Args:
        checkpoint, download, sha256: the user's options (of the config group ``owner``, for messages).
        filename, url: the official file name in the hub cache and its URL (None: not public).
        what: how messages name the weights.
        random_option: the option of ``owner`` that keeps random weights instead, offered when nothing is found.
        official_sha256: the known digests of official files, by file name (pins where the user gave none).

    Raises:
        CheckpointError: ``checkpoint`` was given but does not exist, or a file's hash differs from its pin.
        WeightsNotFoundError: nothing local and ``download`` is False (or no official URL exists).
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"Checkpoint file {path} for the {what} does not exist. Check the path "
                f"({option(owner, 'checkpoint', path)})."
            )
        verify_checkpoint(path, sha256, owner, what, official_sha256)
        return path
    cached = hub_checkpoint_path(filename)
    official = (official_sha256 or {}).get(filename)
    if cached.is_file():
        if sha256 is None and official is None and not sha256_record(cached).is_file():
            trust_on_first_use(cached, what)
        verify_checkpoint(cached, sha256, owner, what, official_sha256)
        return cached
    if download and url is not None:
        return download_to_cache(url, sha256 if sha256 is not None else official, owner, what)
    ways = [f"`{option(owner, 'checkpoint', 'PATH')}` (a local copy of {filename})"]
    if url is not None:
        ways.append(f"`{option(owner, 'download', True)}` (fetch {url} into {cached.parent})")
    else:
        ways.append(f"put {filename} into {cached.parent} (this file has no public URL: get it from its authors)")
    if random_option is not None:
        ways.append(
            f"`{option(owner, random_option, True)}` (random weights, to check the pipeline only: every result is meaningless)"
        )
    raise WeightsNotFoundError(
        f"No {what} found: no local checkpoint was given and {filename} is not in the torch.hub cache "
        f"({cached.parent}). Next step, one of: " + "; ".join(ways) + "."
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``state_dict`` saved with ``torch.save``, unwrapping ``{"state_dict": ...}``/``{"model": ...}``.

    Raises:
        CheckpointError: the file is empty, truncated, not a torch file, holds code (pickled objects are
            refused: ``weights_only=True``) or holds no tensors; the message names the file and the reason.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise CheckpointError(f"Cannot read checkpoint {path}: {err.strerror or err}. Check the path.") from None
    if size == 0:
        raise CheckpointError(
            f"Checkpoint {path} is empty (0 bytes): an interrupted download or copy. Delete it and get the file again."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged or foreign file
        raise CheckpointError(
            f"Cannot read checkpoint {path} ({size} bytes): {load_failure_reason(err)}. It is truncated, corrupt, not a file "
            "saved by torch.save, or holds Python objects other than tensors (refused: files are loaded as data, "
            "never as code). Get the file again, or pass the right one."
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = (
            type(obj).__name__
            if not isinstance(obj, Mapping)
            else "a dict that is not all tensors"
            if obj
            else "an empty dict"
        )
        raise CheckpointError(
            f"Checkpoint {path} does not hold a state_dict of tensors (it holds {found}). Pass a weights file saved "
            "with torch.save(model.state_dict())."
        )
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
    raise CheckpointError(f"Checkpoint {path} does not fit the chosen architecture; " + "; ".join(parts) + ". " + hint)

"""Fetching a dataset archive: downloaded atomically, unpacked beside the data, moved into place only when whole.

torchvision's ``download_and_extract_archive`` writes the archive and its contents in place: a failed or killed
download leaves an empty ``data.root`` or a half-unpacked dataset that later runs take for the real one. Here the
archive gets its name only once complete (and its MD5 checked, where one is published), it is unpacked into
``<root>/.download-partial`` (removed first, so a killed unpacking is never reused) and the dataset folder is
moved into place only after ``check`` passed. A failure names the URL and leaves no new folder behind.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import zipfile
from collections.abc import Callable
from pathlib import Path

from torchvision.datasets.utils import check_integrity, download_url, extract_archive

from datamodules.errors import DatasetError
from utils.atomic import atomic_write, remove_stale_temps
from utils.errors import option

PARTIAL = ".download-partial"


def fetch_archive(
    name: str,
    url: str,
    root: Path,
    filename: str,
    dirname: str,
    md5: str | None = None,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``url`` to ``root/filename``, unpack it, and move its ``dirname`` folder to ``root/dirname``.

    Args:
        name: the dataset, for messages.
        md5: the archive's published MD5, checked after the download (None: none published).
        check: raises DatasetError if the unpacked ``dirname`` folder (its argument) is incomplete.

    Raises:
        DatasetError: the download or unpacking failed (the message names the URL and the fix), or ``check`` did.
    """
    new_folders = [root, *root.parents]
    new_folders = [folder for folder in new_folders if not folder.exists()]
    archive, partial = root / filename, root / PARTIAL
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(root)
        shutil.rmtree(partial, ignore_errors=True)
        if not check_integrity(str(archive), md5):
            atomic_write(archive, lambda tmp: _download(name, url, tmp, md5, archive))
        _unpack(name, archive, partial)
        unpacked = partial / dirname
        if not unpacked.is_dir():
            raise DatasetError(
                f"The {name} archive {archive} (from {url}) holds no {dirname} folder. Delete {archive} and run "
                f"again with {option('data', 'download', True)}, or unpack the dataset by hand under {root}."
            )
        if check is not None:
            check(unpacked)
        (root / dirname).parent.mkdir(parents=True, exist_ok=True)
        os.replace(unpacked, root / dirname)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        for folder in new_folders:  # deepest first: nothing new is left when the download failed
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return root / dirname


def _download(name: str, url: str, tmp: Path, md5: str | None, archive: Path) -> None:
    tmp.unlink()  # download_url skips a file that exists (the empty temporary file) when no MD5 is published
    try:
        download_url(url, str(tmp.parent), tmp.name, md5)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        reason = getattr(err, "reason", None) or err
        raise DatasetError(
            f"Cannot download {name} from {url}: {reason}. Nothing was saved. Fix: check the network connection "
            f"(and the proxy settings) and run again, or download the archive by hand to {archive} and "
            f"run again with {option('data', 'download', True)} (it is then unpacked, not fetched)."
        ) from None


def _unpack(name: str, archive: Path, into: Path) -> None:
    try:
        extract_archive(str(archive), str(into))
    except (OSError, RuntimeError, zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise DatasetError(
            f"Cannot unpack the {name} archive {archive}: {err}. It is truncated or corrupt: delete it and run again "
            f"with {option('data', 'download', True)}."
        ) from None

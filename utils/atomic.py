"""Writing files atomically: a temporary file in the target folder, then a rename.

A crash or a kill never leaves a half-written output, and readers only ever see whole files. A SIGKILL can
leave the hidden temporary file itself; its name holds the writer's process id and host, so `remove_stale_temps` can
tell a dead writer's leftovers from a live writer's work in progress (on a file system that several nodes share, the
same process id can be a live writer on another node).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

TEMP_MARK = ".tmp-"
HOST = re.sub(r"\W", "_", socket.gethostname())  # letters, digits and _ only: the name's separators stay unambiguous
_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)(?:@(\w+))?-[^/]*$")


def temp_prefix(path: Path) -> str:
    """The prefix of ``path``'s temporary files: hidden, and naming this process and its host."""
    return f".{path.name}{TEMP_MARK}{os.getpid()}@{HOST}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, any_writer: bool = False) -> list[Path]:
    """Delete the temporary files (and `atomic_folder` folders) that killed writers left in ``folder``; return them.

    A writer on another host cannot be checked from here: its files stay, unless ``any_writer`` (the caller holds a
    lock that no live writer of ``folder`` can be without), which deletes every temporary file but this process's.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if not match or (int(match.group(1)) == os.getpid() and match.group(2) in (None, HOST)):
            continue
        if any_writer or (match.group(2) in (None, HOST) and not _alive(int(match.group(1)))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create ``path`` (and its folder) by calling ``write(tmp)`` on a temporary path, then renaming it.

    The temporary path keeps ``path``'s suffix, so writers that pick a format by suffix (PIL,
    matplotlib, ``np.save``) behave as they would on ``path``. If ``write`` raises, nothing is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=path.suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes owner-only files; outputs get the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_folder(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create folder ``path`` by calling ``write(tmp)`` on a hidden temporary folder beside it, then renaming it;
    an existing ``path`` is kept as it is.

    It runs under the file lock ``.<name>.lock`` beside ``path``: a second process (two runs started together)
    waits, then finds the finished folder and reuses it. A killed writer leaves only its temporary folder, which
    the next writer removes, so a half-written folder is never taken for a whole one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        if path.is_dir():
            return path
        remove_stale_temps(path.parent)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path)))
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path

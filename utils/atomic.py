"""Writing files atomically: a temporary file in the target folder, then a rename.

A crash or a kill never leaves a half-written output, and readers only ever see whole files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create ``path`` (and its folder) by calling ``write(tmp)`` on a temporary path, then renaming it.

    The temporary path keeps ``path``'s suffix, so writers that pick a format by suffix (PIL,
    matplotlib, ``np.save``) behave as they would on ``path``. If ``write`` raises, nothing is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
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

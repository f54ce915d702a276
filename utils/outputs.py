"""The one rule of every command that writes files: never over an input, and one run per output place.

A command names, before its slow work starts, every file it may write and every input it reads (`Outputs`):

- a file that would land on an input (the same path, a link to it, or a file inside an input folder) is refused;
- an output folder (``--out DIR``), or an output file with its companions (``--out FILE``), holds one run: the
  run's files are listed in a manifest (``DIR/.outputs.json``, or ``.<FILE name>.outputs.json`` beside the file). The
  next run into the same place replaces that set: it removes the files of the previous manifest that it does not
  write again. It never removes a file no manifest lists, and refuses to write over one (it may be the user's)
  unless ``--overwrite`` is given;
- the files are written to hidden temporaries (named as `utils.atomic`'s, so that a killed run's are cleaned up) and
  renamed into place together at the end: a failed run leaves the previous run's files as they were.

Write errors (a full or read-only disk, a file where a folder should be) become one paragraph (`OutputError`).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from utils.atomic import TEMP_MARK, remove_stale_temps, write_text
from utils.errors import UserError

if TYPE_CHECKING:  # typing.Self is Python 3.11+; the project supports 3.10
    from typing import Self

MANIFEST = ".outputs.json"
OVERWRITE_FLAG = "--overwrite"
OVERWRITE_HELP = "write over existing files that no earlier run of this command wrote (never over an input)"

_HINTS = {
    errno.ENOSPC: "the disk is full: free some space, or give {flag} a path on another disk",
    errno.EDQUOT: "the disk quota is used up: free some space, or give {flag} a path on another disk",
    errno.EROFS: "the file system is read-only: give {flag} a path on a writable disk",
    errno.EACCES: "writing there is not allowed: give {flag} a path in a folder you can write to",
    errno.EPERM: "writing there is not allowed: give {flag} a path in a folder you can write to",
    errno.ENOTDIR: "a file stands where a folder is needed: give {flag} a path whose folders are folders",
    errno.EEXIST: "a file stands where a folder is needed: give {flag} a path whose folders are folders",
}


class OutputError(UserError):
    """An output that cannot or must not be written: an input in the way, a user's file, a full or read-only disk."""


NOTHING_KEPT = "Nothing of this run was kept."


def write_failure(err: OSError, target: Path, flag: str, kept: str = NOTHING_KEPT) -> OutputError:
    """The paragraph for ``err`` raised while writing ``target`` (set by option ``flag``); ``kept``: what is left."""
    hint = _HINTS.get(err.errno, "give {flag} a path on a writable disk").format(flag=flag)
    return OutputError(f"Cannot write {target} ({err.strerror or err}): {hint}. {kept}")


@contextmanager
def writing(target: Path, flag: str, kept: str = NOTHING_KEPT) -> Iterator[None]:
    """Turn an `OSError` raised inside the block (writing ``target``, set by ``flag``) into an `OutputError`."""
    try:
        yield
    except OSError as err:
        raise write_failure(err, target, flag, kept) from None


def check_folder(folder: Path, flag: str, given: Path | None = None) -> None:
    """OutputError unless ``folder`` is a folder, or can be created as one, that can be written to; ``given``: the
    value of ``flag`` when it is a file in ``folder`` (the message names it)."""
    given = folder if given is None else given
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            f"{flag} {given} cannot be written: {existing} is a file, not a folder. Give {flag} a path under "
            "folders (missing ones are created)."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(
            f"{flag} {given} cannot be written: {existing} is not writable. Give {flag} a path in a folder you can "
            "write to."
        )


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: the same resolved path, or (both existing) a hard link."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    return folder.is_dir() and path.resolve().is_relative_to(folder.resolve())


def _read_manifest(path: Path) -> set[str]:
    """The files a manifest lists (relative to its folder); an unreadable or malformed one lists none."""
    try:
        files = json.loads(path.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


class Outputs:
    """The files one run of a command writes, checked against the rule before the run's slow work.

    files: every file the run may write (it may write fewer), each with the option that sets it, or a sequence
        (all set by ``flag``). inputs: the files and folders it reads (None entries are skipped).
    folder: the output folder of a command that writes into one (``--out DIR``); without it the place is the first
        file's (``--out FILE``) and the manifest lies beside it.

    Use as a context manager: write each file to its `file` inside; leaving the block normally puts them all in place and
    removes the previous run's files this run did not write; leaving it by an exception keeps nothing.

    Raises:
        OutputError: a file would be written over an input, or over a file no earlier run wrote (without
            ``overwrite``), or cannot be created (a folder in its place, a file where a folder should be).
    """

    def __init__(
        self,
        files: Mapping[Path, str] | Sequence[Path],
        inputs: Sequence[str | os.PathLike | None],
        flag: str = "--out",
        folder: Path | None = None,
        overwrite: bool = False,
    ):
        self.flags = (
            {Path(f): fl for f, fl in files.items()} if isinstance(files, Mapping) else {Path(f): flag for f in files}
        )
        self.flag, self.folder = flag, folder
        anchor = next(iter(self.flags))
        self.manifest = folder / MANIFEST if folder is not None else anchor.with_name(f".{anchor.name}{MANIFEST}")
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.previous = _read_manifest(self.manifest)
        self.staged: dict[Path, Path] = {}
        self.created: list[Path] = []
        self._check(overwrite)

    def _relative(self, path: Path) -> str:
        return os.path.relpath(path.absolute(), self.manifest.parent.absolute())

    def _check(self, overwrite: bool) -> None:
        if self.folder is not None:
            check_folder(self.folder, self.flag)
        for target, flag in [*self.flags.items(), (self.manifest, self.flag)]:
            if self.folder is None or target.parent != self.folder:
                check_folder(target.parent, flag, target)
            if target.is_dir() and not target.is_symlink():
                raise OutputError(
                    f"{flag} {target} is a folder: give a file name, e.g. {flag} {target / ('out' + target.suffix)}."
                )
            for source in self.inputs:
                if _same(target, source) or _inside(target, source):
                    what = (
                        f"{target}, which is the input {source}"
                        if _same(target, source)
                        else f"{target} inside the input folder {source}"
                    )
                    raise OutputError(
                        f"{flag} {self.folder or target} would write {what}: give {flag} a path where no input lies; "
                        "a command never writes over its inputs."
                    )
        theirs = [t for t in self.flags if (t.exists() or t.is_symlink()) and self._relative(t) not in self.previous]
        if theirs and not overwrite:
            flag = self.flags[theirs[0]]
            shown = ", ".join(str(t) for t in theirs[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
            raise OutputError(
                f"{shown} already exist{'s' if len(theirs) == 1 else ''} and no earlier run of this command wrote "
                f"{'it' if len(theirs) == 1 else 'them'} (not listed in {self.manifest}): give {flag} another path, "
                f"or add {OVERWRITE_FLAG} to write over {'it' if len(theirs) == 1 else 'them'}."
            )

    @contextmanager
    def file(self, target: Path) -> Iterator[Path]:
        """The hidden temporary to write ``target`` (one of ``files``) to, keeping its suffix; it is put in place when
        the `Outputs` block ends. An `OSError` in the block becomes an `OutputError`."""
        target = Path(target)
        if target not in self.flags:
            raise ValueError(f"{target} is not one of the files this run declared.")
        staged = target.with_name(f".{target.name}{TEMP_MARK}{os.getpid()}-staged{target.suffix}")
        with writing(target, self.flags[target]):
            self._make_folder(target.parent)
            self.staged[target] = staged
            yield staged

    def _make_folder(self, folder: Path) -> None:
        missing = [p for p in [folder, *folder.parents] if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self.created.extend(reversed(missing))

    def _write_manifest(self, files: set[str]) -> None:
        write_text(self.manifest, json.dumps({"files": sorted(files)}, indent=1))

    def commit(self) -> None:
        """Put the written files in place, then remove the previous run's files that this run did not write.

        The manifest lists both sets while the files move, so a run killed in between leaves no file unlisted."""
        new = {self._relative(t) for t in self.staged}
        with writing(self.manifest, self.flag):
            self._make_folder(self.manifest.parent)
            self._write_manifest(self.previous | new)
            for target, staged in self.staged.items():
                os.replace(staged, target)
            self.staged.clear()
            for name in sorted(self.previous - new):
                stale = self.manifest.parent / name
                # only files of this folder, never an input
                if Path(name).is_absolute() or ".." in Path(name).parts or any(_same(stale, s) for s in self.inputs):
                    continue
                if stale.is_file() or stale.is_symlink():
                    stale.unlink(missing_ok=True)
            self._write_manifest(new)
            for folder in {t.parent for t in self.flags}:
                remove_stale_temps(folder)  # a killed run's temporaries

    def discard(self) -> None:
        """Remove the temporaries, and the folders this run created if they are left empty."""
        for staged in self.staged.values():
            staged.unlink(missing_ok=True)
        self.staged.clear()
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: object, err: object, tb: object) -> None:
        if kind is not None:
            self.discard()
            return
        try:
            self.commit()
        except BaseException:
            self.discard()
            raise

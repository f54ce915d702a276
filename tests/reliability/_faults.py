"""Runs a command line on a failing disk: ``python -m tests.reliability._faults FAULT WHERE MODULE [ARG ...]`` runs
``python -m MODULE ARG ...`` with one call made to fail with ``OSError(FAULT)`` (``ENOSPC``: a full disk, ``EROFS``:
a read-only one). WHERE: ``replace`` (every rename, so every atomic write), ``faiss`` (FAISS's index writer),
``savefig`` (matplotlib's figure writer) or ``lock`` (creating a ``*.lock`` file)."""

from __future__ import annotations

import errno
import os
import runpy
import sys


def main() -> None:
    fault, where, module, *args = sys.argv[1:]
    code = getattr(errno, fault)

    def fail(*_: object, **__: object) -> None:
        raise OSError(code, os.strerror(code))

    if where == "replace":
        os.replace = fail
    elif where == "faiss":
        import faiss

        faiss.write_index = fail
    elif where == "savefig":
        from matplotlib.figure import Figure

        Figure.savefig = fail
    elif where == "lock":
        real_open = os.open

        def open_unless_lock(path: object, *rest: object, **kwargs: object) -> int:
            if str(path).endswith(".lock"):
                fail()
            return real_open(path, *rest, **kwargs)

        os.open = open_unless_lock
    else:
        raise SystemExit(f"unknown WHERE {where!r}")
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

"""Reading a pickle as data: a restricted unpickler that runs no code and allocates no more than the file's size.

Python's pickles name functions to call when loaded, and their opcodes declare lengths the unpickler allocates before
reading: a pickle of a few dozen bytes can run a command or ask for terabytes. `load_data_pickle` admits only plain
containers, strings, numbers and numpy arrays, and refuses any size beyond the file's.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from typing import Any

import numpy as np

# What a numpy array (and a numpy scalar) needs to be rebuilt from a pickle, under the names numpy 1 and 2 write.
_MULTIARRAY = (getattr(np, "_core", None) or np.core).multiarray  # numpy 2 moved numpy.core to numpy._core
_NUMPY = {"_reconstruct": _MULTIARRAY._reconstruct, "scalar": _MULTIARRAY.scalar}
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, name): obj for m in ("numpy.core.multiarray", "numpy._core.multiarray") for name, obj in _NUMPY.items()},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """Protocol-2 pickles of numpy arrays carry their bytes as `_codecs.encode(text, "latin1")`; no other codec."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"it encodes bytes with {encoding!r}, which is refused (only latin1 is)")
    return text.encode("latin1")


ALLOWED_GLOBALS[("_codecs", "encode")] = _latin1_bytes
# protocol 2 names bytes by its Python 2 module (`Unpickler.find_class`'s own renaming is bypassed when overridden)
ALLOWED_GLOBALS.update({("__builtin__", "bytes"): bytes, ("builtins", "bytes"): bytes})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, strings, numbers and numpy arrays, none larger than the file.

    Plain values need no global; every global a pickle names goes through `find_class`, which admits the few that
    rebuild numpy arrays (`ALLOWED_GLOBALS`) and refuses any other, so that no code the file names is run. The two
    that allocate what their arguments ask for (``bytes(n)``, numpy's ``_reconstruct(ndarray, shape, dtype)``) are
    refused beyond ``max_bytes``: nothing a pickle of that size holds needs more (see `check_declared_sizes` for the
    lengths the pickle's own opcodes declare).
    """

    def __init__(self, file: io.BufferedIOBase, max_bytes: int) -> None:
        super().__init__(file)
        self.max_bytes = max_bytes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which is refused: the file may hold only lists, dicts, strings, numbers "
                "and numpy arrays (loading a pickle that names a function runs it)"
            )
        found = ALLOWED_GLOBALS[(module, name)]
        if found is bytes:
            return self._bytes
        return self._reconstruct if found is _MULTIARRAY._reconstruct else found

    def _refuse_above(self, n_bytes: int, what: str) -> None:
        if n_bytes > self.max_bytes:
            raise pickle.UnpicklingError(f"it asks for {what} of {n_bytes} bytes in a file of {self.max_bytes} bytes")

    def _bytes(self, *args: Any) -> bytes:
        if args and isinstance(args[0], int):
            self._refuse_above(args[0], "bytes")
        return bytes(*args)

    def _reconstruct(self, subtype: type, shape: Any, dtype: Any) -> np.ndarray:
        self._refuse_above(int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize, "an array")
        return _MULTIARRAY._reconstruct(subtype, shape, dtype)


_SIZED_OPCODES = {"FRAME", "PUT", "BINPUT", "LONG_BINPUT"}
"""Opcodes whose argument is a size the unpickler allocates for (a frame; a memo table grown up to the index)."""


def check_declared_sizes(raw: bytes) -> None:
    """Raise ValueError when an opcode of the pickle ``raw`` declares a length or memo index beyond its size.

    Python's unpickler allocates what a length says before reading that many bytes, and grows its memo table to
    any index a PUT names: a pickle of a few dozen bytes can ask for terabytes. `pickletools.genops` reads each
    opcode's argument without building anything and fails on a string or bytes longer than what is left.
    """
    for opcode, arg, _ in pickletools.genops(io.BytesIO(raw)):
        if opcode.name in _SIZED_OPCODES and int(arg) > len(raw):
            raise ValueError(f"its {opcode.name} opcode declares {arg}, more than the file's {len(raw)} bytes")


def load_data_pickle(raw: bytes) -> Any:
    """The object pickled in ``raw``, built by `RestrictedUnpickler` after `check_declared_sizes`.

    Raises:
        pickle.UnpicklingError, ValueError (and the other errors of a malformed pickle: EOFError, TypeError, ...):
            the pickle names a refused global, asks for more than its size, or is not a pickle.
    """
    check_declared_sizes(raw)
    return RestrictedUnpickler(io.BytesIO(raw), len(raw)).load()

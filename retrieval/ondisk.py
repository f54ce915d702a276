"""The `ondisk` index kind: an IVF index whose inverted lists are a file of their own beside the index file (FAISS's
`OnDiskInvertedLists`), built one chunk of vectors at a time and memory-mapped when read (`faiss_index.read_index`
finds the lists file beside the index, wherever the folder moved): neither building nor searching holds the
vectors in RAM, so a collection larger than RAM can be indexed and searched (docs/retrieval_scale.md).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from retrieval.faiss_index import (
    IVF_TRAIN_PER_LIST,
    NPROBE,
    check_matrix,
    ivf_index,
    ivf_lists,
    write_index,
    write_index_file,
)
from utils.atomic import temp_prefix

ONDISK_SUFFIX = ".ivfdata"
"""The lists file, beside the index file: `index.faiss` -> `index.ivfdata`."""
ONDISK_CHUNK = 1 << 18
"""`write_ondisk_index` adds this many vectors at a time: 0.4 GB of float32 vectors plus their lists at D = 384."""


def ondisk_training_rows(n: int, seed: int = 0) -> np.ndarray:
    """The sorted rows of `n` that `write_ondisk_index` trains its `ivf_lists(n)` centres on: IVF_TRAIN_PER_LIST per
    list, drawn at random (all of them for a small `n`)."""
    size = min(n, ivf_lists(n) * IVF_TRAIN_PER_LIST)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def ondisk_lists(path: str | os.PathLike) -> Path:
    """The lists file of the `ondisk` index file `path`: `index.faiss` -> `index.ivfdata` beside it."""
    return Path(path).with_suffix(ONDISK_SUFFIX)


def write_ondisk_index(
    train: np.ndarray,
    chunks: Iterable[np.ndarray],
    n: int,
    path: str | os.PathLike,
    *,
    nlist: int | None = None,
    nprobe: int = NPROBE,
    seed: int = 0,
) -> None:
    """Write the `ondisk` index of the `n` rows of `chunks` (`(n_i, D)` float32 each, in row order) to `path`, its
    inverted lists to `ondisk_lists(path)`.

    The lists' centres are trained on `train` `(T, D)` (a sample of the rows, T >= nlist). Each chunk's lists are
    built in memory and written to a temporary index file, then FAISS merges the files' lists into one
    `OnDiskInvertedLists` file (the `merge_ondisk` recipe), reading them memory-mapped: no step holds more than one
    chunk (small chunks are grouped into ONDISK_CHUNK rows, so that a billion rows are not a million files). A list holds its ids in increasing order whatever the chunks, so the files depend on the rows only. The
    two files replace the old ones by renames (lists first); the caller's fingerprints tell a pair that a crash
    between the renames mismatched.
    """
    path = Path(path)
    train = check_matrix(train, "training vectors")
    dim = train.shape[1]
    lists = ivf_lists(n) if nlist is None else nlist
    if nprobe < 1 or lists < 1 or lists > len(train):
        raise ValueError(
            f"nlist={lists} must be between 1 and the {len(train)} training vectors; nprobe={nprobe} >= 1."
        )
    index = ivf_index(dim, lists, "ondisk", n, seed)
    index.train(train)
    index.nprobe = min(nprobe, lists)
    data = ondisk_lists(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=temp_prefix(data)) as tmp:
        shards, start = [], 0
        for chunk in _batched(chunks, ONDISK_CHUNK):
            chunk = check_matrix(chunk, "vectors", dim)
            shard = faiss.clone_index(index)
            shard.add_with_ids(chunk, np.arange(start, start + len(chunk), dtype=np.int64))
            start += len(chunk)
            shards.append(Path(tmp) / f"{len(shards):05d}.faiss")
            write_index_file(shard, shards[-1])
            del shard
        if start != n:
            raise ValueError(f"the chunks hold {start} vectors, not the n={n} announced.")
        _merge_lists(index, shards, Path(tmp) / data.name)
        # the index file names its lists file; `read_index` looks for that name beside the index, wherever it is
        faiss.downcast_InvertedLists(index.invlists).filename = data.name
        os.replace(Path(tmp) / data.name, data)
        write_index(index, path)
    del index


def _batched(chunks: Iterable[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """`chunks` regrouped into arrays of about `rows` rows (whole chunks each; the last one smaller)."""
    held: list[np.ndarray] = []
    for chunk in chunks:
        held.append(chunk)
        if sum(len(c) for c in held) >= rows:
            yield np.concatenate(held)
            held = []
    if held:
        yield np.concatenate(held)


def _merge_lists(index: faiss.IndexIVF, shards: list[Path], target: Path) -> None:
    """Merge the lists of the index files `shards` into the `OnDiskInvertedLists` file `target`, now `index`'s lists.

    faiss.contrib.ondisk.merge_ondisk does the same but never frees its inputs' mapped lists (so their files' disk
    space stays taken until the process ends), and FAISS grows the target by truncating a sparse file, then writes it
    through a memory map, where a full disk is a SIGBUS, not an error: the free space is checked first.
    """
    readers = [faiss.read_index(str(shard), faiss.IO_FLAG_MMAP) for shard in shards]
    needed = sum(r.ntotal for r in readers) * (index.code_size + np.dtype(np.int64).itemsize)
    free = shutil.disk_usage(target.parent).free
    if needed > free:
        raise OSError(
            errno.ENOSPC, f"the inverted lists need {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB are free"
        )
    pointers = faiss.InvertedListsPtrVector()
    for reader in readers:
        pointers.push_back(reader.invlists)
    merged = faiss.OnDiskInvertedLists(index.nlist, index.code_size, str(target))
    with _stdout_silenced():  # FAISS prints "resizing <file> to <n> bytes" on stdout, unasked
        index.ntotal = merged.merge_from_multiple(pointers.data(), pointers.size(), False, False)
    index.replace_invlists(merged, True)
    merged.this.disown()  # the index owns (and frees) its lists now


@contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Send the process's file descriptor 1 to /dev/null for the block: FAISS's C++ printf, not Python's print."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)

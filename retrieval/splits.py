"""`python -m retrieval index SOURCE --out INDEX --part i/N`: one of N jobs (processes, machines, array tasks) that
embed one image list together, each its own share, into one index folder; `python -m retrieval build INDEX` merges
them once all are done (`retrieval.merging`).

Every job lists SOURCE itself and drops the images that earlier runs embedded (parts of other runs); the rest, in
order, is cut into shards of `--samples-per-shard` images, and job i takes the i-th of N runs of whole shards. Whole
shards: batches never cross a shard, so each image is embedded in the batch a one-process run puts it in, and the
merged index is that run's, byte for byte. The split is named by the listing's SHA-256 and N (each part's key.json),
so a job can tell its own run's parts (not "embedded earlier") from other runs'.

A job holds the index folder's lock (INDEX.lock) only while it reads and writes the folder's record and creates its
part folder, then its part's own lock (parts/<part>.lock) while it embeds: the N jobs run at once, a second job of
the same part waits and then finds it done, and a killed job resumes its finished shards when run again. Locks are
file locks (filelock): the index folder must be on a file system that honours them (local disks, NFS with locking).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from datamodules.feature_cache.store import KEY_FILE, MANIFEST_FILE, extraction_lock
from retrieval.building import Embedder, fill_part, part_directory, part_key
from retrieval.index_store import (
    SPEC_FILE,
    RetrievalError,
    check_index_folder,
    check_part_files,
    open_part,
    parts,
)
from utils.atomic import remove_stale_temps, write_text
from utils.outputs import writing


def split_rows(n_rows: int, samples_per_shard: int, part: int, parts_n: int) -> range:
    """The rows of part `part` (1..parts_n) of `n_rows`: the part-th of `parts_n` near-equal runs of whole shards."""
    shards = -(-n_rows // samples_per_shard)
    if parts_n > shards:
        raise RetrievalError(
            f"--part {part}/{parts_n}: the {n_rows} images to embed make {shards} shard(s) of --samples-per-shard "
            f"{samples_per_shard}, and a part is at least one shard. Give N <= {shards}, or a smaller "
            "--samples-per-shard (the same in every job)."
        )
    first, last = (part - 1) * shards // parts_n, part * shards // parts_n
    return range(first * samples_per_shard, min(last * samples_per_shard, n_rows))


def index_part(
    args: argparse.Namespace,
    record: dict[str, Any],
    paths: list[str],
    embedder: Embedder,
    make_trainer: Callable[[], Any],
) -> None:
    """Embed part `args.part` = (i, N) of the images of `paths` not yet in the index folder `args.out`."""
    out, (part, parts_n) = args.out, args.part
    rank_zero = rank_zero_only.rank == 0
    split = {"part": part, "parts": parts_n, "files_sha256": hashlib.sha256("\n".join(paths).encode()).hexdigest()}
    resume = "The shards embedded so far are kept: run the same command again to resume."
    with writing(out, "--out", resume):
        with extraction_lock(out, exclusive=rank_zero):
            stored = check_index_folder(out, record)
            done, _ = parts(out)
            check_part_files(out, stored, done)
            others = [d for d in done if not _of_split(d, split)]
            seen = {path for d in others for path in open_part(d)[1]}
            new = [path for path in paths if path not in seen]
            if not new:
                print(f"Every image of {args.source} is in {out} already: nothing to embed.")
                return
            rows = split_rows(len(new), args.samples_per_shard, part, parts_n)
            if rank_zero:
                out.mkdir(parents=True, exist_ok=True)
                remove_stale_temps(out)
                if not stored:
                    write_text(out / SPEC_FILE, json.dumps(record, indent=2))
            mine = new[rows.start : rows.stop]
            key = part_key(record, mine, args.samples_per_shard) | {"split": split}
            directory = part_directory(out, key, len(others))
        with extraction_lock(directory, exclusive=rank_zero):
            embedded = 0
            if not (directory / MANIFEST_FILE).is_file():
                loader = {k: getattr(args, k) for k in ("batch_size", "num_workers")}
                embedded = fill_part(directory, key, mine, make_trainer(), embedder, **loader)
    if rank_zero:
        print(
            f"Part {part}/{parts_n} of {out}: images {rows.start + 1} to {rows.stop} of the {len(new)} new ones "
            f"({embedded} embedded now) in {directory.name}. Once all {parts_n} parts are embedded: "
            f"python -m retrieval build {out}"
        )


def _of_split(directory: Path, split: dict[str, Any]) -> bool:
    """Whether the part `directory` belongs to the split run `split` (same listing, same N)."""
    try:
        found = json.loads((directory / KEY_FILE).read_text()).get("split") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return all(found.get(k) == split[k] for k in ("parts", "files_sha256"))

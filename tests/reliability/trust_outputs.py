"""Outputs (issue 23): no command writes over its inputs, an output folder holds one run, and every output-path
error (a file for a folder, a read-only or full disk) is one paragraph with nothing half-written."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import TINY_SAM
from tests.reliability import TINY_CHECKPOINT, Case, Result

TINY_CLI = ("--checkpoint", "{tiny}", "--embed-dim", "64", "--depth", "4", "--num-heads", "4", "--device", "cpu")
SAM_CLI = tuple(f"--sam-{key.replace('_', '-')}={value}" for key, value in TINY_SAM.items())
INDEX_CLI = (*TINY_CLI, "--size", "56", "--num-workers", "0")
FAULTS = ("-m", "tests.reliability._faults")


def photo(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def photos(tmp: Path) -> None:
    """a.png, b.png, and the hand-drawn mask ref_mask.png of a.png, with their digests in sums.txt."""
    photo(tmp / "a.png")
    photo(tmp / "b.png", 1)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 255
    Image.fromarray(mask).save(tmp / "ref_mask.png")
    shutil.copy(TINY_CHECKPOINT, tmp / "weights.pth")
    names = ("a.png", "b.png", "ref_mask.png", "weights.pth")
    (tmp / "sums.txt").write_text("\n".join(f"{n} {digest(tmp / n)}" for n in names))


def inputs_unchanged(tmp: Path, result: Result) -> None:
    for line in (tmp / "sums.txt").read_text().splitlines():
        name, sha = line.split()
        assert digest(tmp / name) == sha, f"the input {name} was written over"


def indexed(*runs: tuple[str, ...]) -> object:
    """Setup: six random images in tmp/images, their index in tmp/index, then the retrieval ``runs`` (argv after
    ``python -m retrieval``, ``{tmp}`` substituted)."""

    def setup(tmp: Path) -> None:
        from retrieval.cli import main

        for i in range(6):
            photo(tmp / "images" / f"{i}.png", i)
        options = [a.format(tiny=TINY_CHECKPOINT) for a in INDEX_CLI]
        assert main(["index", str(tmp / "images"), "--out", str(tmp / "index"), *options]) == 0
        for run in runs:
            assert main([a.format(tmp=tmp) for a in run]) == 0

    return setup


def no_stale_clusters(tmp: Path, result: Result) -> None:
    left = sorted(p.name for p in (tmp / "cl").glob("cluster_*.png") if int(p.stem[8:]) >= 2)
    assert not left, f"the first run's sheets are left beside the new ones: {left}"


def no_stale_groups(tmp: Path, result: Result) -> None:
    assert not (tmp / "dd" / "groups.png").exists(), "the first run's groups.png is left beside an empty result"


def query(out: str) -> tuple[str, ...]:
    return ("-m", "retrieval", "query", "{tmp}/index", "{tmp}/images/1.png", "--k", "2", "--out", out)


def a_file(name: str) -> object:
    def setup(tmp: Path) -> None:
        indexed()(tmp)
        (tmp / name).write_text("notes")

    return setup


# fmt: off
CASES = [
    # --- an input written over (every one exited 0 and replaced the user's file) ---
    Case("outputs-oneshot-out-holds-the-reference-mask", "lost",
         argv=("-m", "visualize.oneshot", "{tmp}/a.png", "{tmp}/ref_mask.png", "{tmp}/ref.png", "{tmp}/b.png",
               "--out", "{tmp}", *TINY_CLI, *SAM_CLI, "--sam-model-type", "vit_b", "--random-weights", "--size", "56"),
         setup=lambda tmp: (photos(tmp), shutil.copy(tmp / "a.png", tmp / "ref.png")),
         names=("{tmp}/ref_mask.png", "--out"), check=inputs_unchanged),
    Case("outputs-pca-out-is-an-input", "lost",
         argv=("-m", "visualize.pca", "{tmp}/a.png", "{tmp}/b.png", *TINY_CLI, "--out", "{tmp}/a.png"),
         setup=photos, names=("{tmp}/a.png", "--out"), check=inputs_unchanged),
    Case("outputs-match-json-is-an-input", "lost",
         argv=("-m", "visualize.match", "{tmp}/a.png", "{tmp}/b.png", *TINY_CLI, "--out", "{tmp}/m.png",
               "--json", "{tmp}/b.png"),
         setup=photos, names=("{tmp}/b.png", "--json"), check=inputs_unchanged, absent=("m.png",)),
    Case("outputs-explore-out-is-the-checkpoint", "lost",
         argv=("-m", "visualize.explore", "{tmp}/a.png", "--checkpoint", "{tmp}/weights.pth", "--embed-dim", "64",
               "--depth", "4", "--num-heads", "4", "--device", "cpu", "--out", "{tmp}/weights.pth"),
         setup=photos, names=("{tmp}/weights.pth", "--out"), check=inputs_unchanged),
    Case("outputs-query-out-is-the-index", "lost", argv=query("{tmp}/index"), setup=indexed(),
         names=("{tmp}/index", "--out")),
    # --- an output folder mixing runs (both exited 0 and said nothing) ---
    Case("outputs-cluster-fewer-clusters-into-a-used-folder", "lost",
         argv=("-m", "retrieval", "cluster", "{tmp}/index", "--k", "2", "--out", "{tmp}/cl"),
         setup=indexed(("cluster", "{tmp}/index", "--k", "5", "--out", "{tmp}/cl")), exit_code=0,
         check=no_stale_clusters),
    Case("outputs-dedup-no-groups-into-a-used-folder", "lost",
         argv=("-m", "retrieval", "dedup", "{tmp}/index", "--threshold", "1.0", "--out", "{tmp}/dd"),
         setup=indexed(("dedup", "{tmp}/index", "--threshold", "-1", "--out", "{tmp}/dd")), exit_code=0,
         check=no_stale_groups),
    Case("outputs-cluster-user-file-in-the-way", "lost",
         argv=("-m", "retrieval", "cluster", "{tmp}/index", "--k", "2", "--out", "{tmp}"),
         setup=a_file("clusters.csv"), names=("{tmp}/clusters.csv", "--overwrite")),
    # --- output-path errors (tracebacks) ---
    Case("outputs-cluster-out-is-a-file", "traceback",
         argv=("-m", "retrieval", "cluster", "{tmp}/index", "--k", "2", "--out", "{tmp}/notes"),
         setup=a_file("notes"), names=("--out {tmp}/notes", "is a file")),
    Case("outputs-query-out-under-a-file", "traceback", argv=query("{tmp}/notes/q"), setup=a_file("notes"),
         names=("{tmp}/notes", "is a file")),
    Case("outputs-dedup-read-only-disk", "traceback",
         argv=(*FAULTS, "EROFS", "replace", "retrieval", "dedup", "{tmp}/index", "--threshold", "0.9",
               "--out", "{tmp}/dd"),
         setup=indexed(), names=("Read-only file system", "--out"), absent=("dd",)),
    Case("outputs-query-read-only-disk", "traceback",
         argv=(*FAULTS, "EROFS", "replace", *query("{tmp}/q")[1:]),
         setup=indexed(), names=("Read-only file system", "--out"), absent=("q",)),
    Case("outputs-index-read-only-lock", "traceback",
         argv=(*FAULTS, "EROFS", "lock", "retrieval", "index", "{tmp}/images", "--out", "{tmp}/i2", *INDEX_CLI),
         setup=indexed(), names=("Read-only file system", "--out")),
    Case("outputs-index-full-disk-atomic-write", "traceback",
         argv=(*FAULTS, "ENOSPC", "replace", "retrieval", "index", "{tmp}/images", "--out", "{tmp}/i2", *INDEX_CLI),
         setup=indexed(), names=("No space left on device", "--out"), absent=("i2/**/.*.tmp-*",)),
    Case("outputs-index-full-disk-faiss", "traceback",
         argv=(*FAULTS, "ENOSPC", "faiss", "retrieval", "index", "{tmp}/images", "--out", "{tmp}/i2", *INDEX_CLI),
         setup=indexed(), names=("No space left on device", "--out", "run the same command again"),
         absent=("i2/index.faiss", "i2/.*.tmp-*")),
    Case("outputs-oneshot-full-disk-figure", "traceback",
         argv=(*FAULTS, "ENOSPC", "savefig", "visualize.oneshot", "{tmp}/a.png", "{tmp}/ref_mask.png", "{tmp}/b.png",
               "--out", "{tmp}/os", *TINY_CLI, *SAM_CLI, "--sam-model-type", "vit_b", "--random-weights",
               "--size", "56"),
         setup=photos, names=("No space left on device", "oneshot.png"), absent=("os/*",)),
    # said "The folder ... is empty": a wrong reason, counted as a wrong result
    Case("outputs-index-out-is-the-images-folder", "silent",
         argv=("-m", "retrieval", "index", "{tmp}/images", "--out", "{tmp}/images", *INDEX_CLI),
         setup=lambda tmp: [photo(tmp / "images" / f"{i}.png", i) for i in range(2)],
         names=("is the images folder", "--out {tmp}/images/index")),
]
# fmt: on

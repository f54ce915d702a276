"""Issue 23, third round: an index folder is one thing, random weights are seeded, an unwritable download cache and
a self-referencing override are one paragraph.

`before` is what commit 3d0908f did. The index cases tamper with copies of indexes built once per session (the tiny
fixture backbone, 4 generated images each, 56 px); the download cases never reach the network: the hub cache folder
cannot be made, or making its temporary file is refused, before anything is fetched.
"""

from __future__ import annotations

import atexit
import errno
import json
import shutil
import tempfile
from functools import cache
from pathlib import Path
from unittest import mock

from tests.conftest import TINY_SAM
from tests.fixture_paths import TINY_CHECKPOINT
from tests.reliability import Case, Result

TINY = ("--embed-dim", "64", "--depth", "4", "--num-heads", "4", "--size", "56", "--device", "cpu")
BUILD = ("--num-workers", "0", "--batch-size", "4")
QUERY = ("-m", "retrieval", "query", "{tmp}/index", "{tmp}/images/a.png", "--k", "2", "--out", "{tmp}/q")
SAM_TINY = tuple(part for name, value in TINY_SAM.items() for part in (f"--sam-{name.replace('_', '-')}", str(value)))


def write_images(folder: Path, hue: int) -> None:
    """Four distinct 64 px images (stripes of four widths in a colour picked by ``hue``)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    for name, width in zip("abcd", (2, 5, 11, 23)):
        pixels = np.zeros((64, 64, 3), np.uint8)
        pixels[:, (np.arange(64) // width) % 2 == 0] = ((hue * 97) % 256, (hue * 53 + 80) % 256, 200)
        Image.fromarray(pixels).save(folder / f"{name}.png")


@cache
def built() -> Path:
    """``index`` (images a-d), ``other`` (other images, same settings and count: an index.faiss of the same size) and
    ``narrow`` (embed_dim 32, random weights: vectors of another dimension), built once per session."""
    from retrieval.cli import main

    root = Path(tempfile.mkdtemp(prefix="trust_index_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for name, hue, weights in (
        ("index", 1, ("--checkpoint", str(TINY_CHECKPOINT), *TINY)),
        ("other", 2, ("--checkpoint", str(TINY_CHECKPOINT), *TINY)),
        ("narrow", 3, ("--random-weights", "--embed-dim", "32", "--depth", "1", "--num-heads", "4", "--size", "56")),
    ):
        write_images(root / f"{name}_images", hue)
        argv = ["index", str(root / f"{name}_images"), "--out", str(root / name), *weights, "--device", "cpu", *BUILD]
        assert main(argv) == 0, f"building the {name} index failed"
    return root


def index_copy(tmp: Path) -> Path:
    """A copy of the built index in ``tmp`` (its rows still the built images), and of its images to query with."""
    shutil.copytree(built() / "index_images", tmp / "images")
    return Path(shutil.copytree(built() / "index", tmp / "index"))


def faiss_of_same_count(tmp: Path) -> None:
    shutil.copy(built() / "other" / "index.faiss", index_copy(tmp) / "index.faiss")


def faiss_of_other_dimension(tmp: Path) -> None:
    shutil.copy(built() / "narrow" / "index.faiss", index_copy(tmp) / "index.faiss")


def truncated_vectors(tmp: Path) -> None:
    shard = next((index_copy(tmp) / "parts").glob("*/embedding_00000.npy"))
    shard.write_bytes(shard.read_bytes()[:-64])


def edited_paths(tmp: Path) -> None:
    """paths.json with two entries swapped: the same size, every row still an existing image."""
    path = index_copy(tmp) / "paths.json"
    paths = json.loads(path.read_text())
    paths[0], paths[1] = paths[1], paths[0]
    path.write_text(json.dumps(paths, indent=1))


def random_weights_index(tmp: Path) -> None:
    """An index built with --random-weights in this process; the case queries it from another one."""
    from retrieval.cli import main

    write_images(tmp / "images", 4)
    small = ("--random-weights", "--embed-dim", "32", "--depth", "1", "--num-heads", "4", "--size", "56")
    assert main(["index", str(tmp / "images"), "--out", str(tmp / "index"), *small, "--device", "cpu", *BUILD]) == 0


def finds_itself_first(tmp: Path, result: Result) -> None:
    """The query image is a best hit (random weights score several images alike: ties are allowed)."""
    results = json.loads((tmp / "q" / "a.json").read_text())["results"]
    best = [Path(r["path"]).name for r in results if r["score"] >= results[0]["score"] - 1e-4]
    assert "a.png" in best, results


def cache_is_a_file(tmp: Path) -> None:
    """TORCH_HOME (``tmp/torch_home`` in every case) is a regular file: the hub cache folder cannot be made."""
    (tmp / "torch_home").write_text("not a folder")
    write_images(tmp / "images", 5)


def refused_cache(code: int, load: str) -> object:
    """``load`` (``backbone`` or ``sam``) with a download allowed, while the hub cache refuses its temporary file
    with ``code`` (a read-only file system, no permission), as a shared or mounted cache does."""
    import os

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code), kwargs.get("dir"))

    with mock.patch("utils.atomic.tempfile.mkstemp", refuse):
        if load == "sam":
            from sam.model import load_sam

            return load_sam("vit_b", download=True, **TINY_SAM)
        from backbones import load_backbone

        return load_backbone("dinov2_vits14", download=True, embed_dim=64, depth=4, num_heads=4)


CACHE_FIX = ("torch_home/hub/checkpoints", "TORCH_HOME")

CASES = [
    # an index folder is one thing: a file of another index, or a changed one, is refused by name
    Case(
        "index-faiss-swapped-same-count",
        "silent",  # queried without complaint: the other index's rows, named with this index's paths
        argv=QUERY,
        setup=faiss_of_same_count,
        names=("{tmp}/index/index.faiss", "inconsistent", "`python -m retrieval index", "--out {tmp}/index"),
        absent=("q",),
    ),
    Case(
        "index-faiss-other-dimension",
        "traceback",  # a ValueError from the search
        argv=QUERY,
        setup=faiss_of_other_dimension,
        names=("{tmp}/index/index.faiss", "inconsistent"),
        absent=("q",),
    ),
    Case(
        "index-vectors-truncated",
        "clear",  # the shard's header no longer fit: the part folder was named as damaged
        argv=("-m", "retrieval", "dedup", "{tmp}/index", "--threshold", "0.9", "--out", "{tmp}/d"),
        setup=truncated_vectors,
        names=("embedding_00000.npy", "inconsistent", "delete the part folder"),
        absent=("d",),
    ),
    Case(
        "index-paths-edited",
        "silent",  # two rows answered with each other's file names
        argv=QUERY,
        setup=edited_paths,
        names=("{tmp}/index/paths.json", "inconsistent"),
        absent=("q",),
    ),
    # random weights are seeded: an index built with them can be queried with them, from another process
    Case(
        "index-random-weights-query",
        "clear",  # refused with one paragraph (the weights' hash differed) whose advice could not be followed
        argv=(*QUERY[:5], "--random-weights", *QUERY[5:], "--device", "cpu"),
        setup=random_weights_index,
        check=finds_itself_first,
        exit_code=0,
    ),
    # an unwritable download cache: the folder and the fix, in the syntax of the command
    Case(
        "download-cache-not-a-folder-train",
        "wrapped",  # "Error in call to target 'backbones.load_backbone': NotADirectoryError(20, 'Not a directory')"
        argv=("train.py", "head=linear_seg", "data=ade20k", "data.root={tmp}/ade", "backbone.download=true"),
        setup=cache_is_a_file,
        names=(*CACHE_FIX, "backbone.download=true", "backbone.checkpoint=PATH"),
    ),
    Case(
        "download-cache-not-a-folder-visualize",
        "traceback",  # four chained tracebacks, ending in NotADirectoryError
        argv=("-m", "visualize.pca", "{tmp}/images/a.png", "--out", "{tmp}/o.png", "--download", *TINY),
        setup=cache_is_a_file,
        names=(*CACHE_FIX, "--download", "--checkpoint PATH"),
        absent=("o.png",),
    ),
    Case(
        "download-cache-not-a-folder-sam",
        "traceback",
        argv=(
            "-m",
            "visualize.sam_masks",
            "{tmp}/images/a.png",
            "--out",
            "{tmp}/m",
            "--sam-model-type",
            "vit_b",
            "--sam-download",
            *SAM_TINY,
            "--device",
            "cpu",
        ),
        setup=cache_is_a_file,
        names=(*CACHE_FIX, "--sam-download", "--sam-checkpoint PATH"),
        absent=("m",),
    ),
    Case(
        "download-cache-read-only-sam",
        "traceback",  # OSError(30) only
        call=lambda tmp: refused_cache(errno.EROFS, "sam"),
        names=(*CACHE_FIX, "Read-only file system", "download=True"),
        absent=("torch_home",),
    ),
    Case(
        "download-cache-no-permission-backbone",
        "traceback",
        call=lambda tmp: refused_cache(errno.EACCES, "backbone"),
        names=(*CACHE_FIX, "Permission denied", "download=True"),
        absent=("torch_home",),
    ),
    # a Hydra interpolation of itself in an override
    Case(
        "train-override-refers-to-itself",
        "traceback",  # omegaconf's InterpolationResolutionError: "Recursive interpolation detected"
        argv=("train.py", "experiment=quickstart", "data.root={tmp}/ade", "data.batch_size=${{data.batch_size}}"),
        names=("data.batch_size=${{data.batch_size}}", "refers to itself"),
        absent=("ade",),
    ),
]

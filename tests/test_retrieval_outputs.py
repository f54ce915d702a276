"""utils.outputs in `python -m retrieval`: query, dedup and cluster replace their previous run's files as a set and
never write into the index; index names --out = the images folder; every output error (a file for a folder, a
read-only or full disk, a read-only lock) is one paragraph with nothing half-written."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from tests.test_outputs import TINY_CLI, photo, refused, visible


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    from retrieval.cli import main

    root = tmp_path_factory.mktemp("outputs_index")
    (root / "images").mkdir()
    for i in range(6):
        photo(root / "images" / f"{i}.png", i)
    assert main(index_args(root / "images", root / "index", tiny_checkpoint)) == 0
    return root / "index"


def index_args(source: Path, out: Path, checkpoint: Path) -> list[str]:
    tiny = ["--checkpoint", str(checkpoint), *TINY_CLI, "--size", "56", "--num-workers", "0"]
    return ["index", str(source), "--out", str(out), *tiny]


def test_cluster_and_dedup_replace_the_previous_runs_files(index: Path, tmp_path: Path) -> None:
    from retrieval.cli import main

    out = tmp_path / "cl"
    assert main(["cluster", str(index), "--k", "5", "--out", str(out)]) == 0
    assert {f"cluster_{c:03d}.png" for c in (2, 3, 4)} & set(visible(out))
    assert main(["cluster", str(index), "--k", "2", "--out", str(out)]) == 0
    assert not [n for n in visible(out) if n.startswith("cluster_") and int(n[8:11]) >= 2]
    assert json.loads((out / "clusters.json").read_text())["k"] == 2

    dedup = tmp_path / "dedup"
    assert main(["dedup", str(index), "--threshold", "-1", "--out", str(dedup)]) == 0  # one group of all
    assert "groups.png" in visible(dedup)
    assert main(["dedup", str(index), "--threshold", "1.0", "--out", str(dedup)]) == 0  # no group
    assert visible(dedup) == ["groups.csv", "groups.json", "keep_one.txt"]


def test_retrieval_output_errors_are_one_paragraph(
    index: Path, tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from retrieval.cli import main

    image = str(index.parent / "images" / "1.png")
    (tmp_path / "file").write_text("")
    refused(main(["cluster", str(index), "--k", "2", "--out", str(tmp_path / "file")]), capsys, "is a file")
    refused(main(["query", str(index), image, "--k", "2", "--out", str(tmp_path / "file" / "q")]), capsys, "is a file")
    refused(main(["query", str(index), image, "--k", "2", "--out", str(index)]), capsys, f"input folder {index}")
    refused(main(["dedup", str(index), "--threshold", "0.9", "--out", str(index)]), capsys, "input folder")
    images = index.parent / "images"
    refused(main(index_args(images, images, tiny_checkpoint)), capsys, "is the images folder", "--out")

    def read_only(*args: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only)
    for argv in (
        ["query", str(index), image, "--k", "2", "--out", str(tmp_path / "q")],
        ["dedup", str(index), "--threshold", "0.9", "--out", str(tmp_path / "d")],
        ["cluster", str(index), "--k", "2", "--out", str(tmp_path / "c")],
    ):
        refused(main(argv), capsys, "Read-only file system", "--out")
        assert not Path(argv[-1]).exists()


@pytest.mark.parametrize("where", ["spec.json", "index.faiss"])
def test_a_full_disk_while_indexing_is_one_paragraph(
    index: Path,
    tmp_path: Path,
    tiny_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    where: str,
) -> None:
    import faiss

    import utils.atomic
    from retrieval.cli import main

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(*((utils.atomic.os, "replace") if where == "spec.json" else (faiss, "write_index")), full_disk)
    out = tmp_path / "index"
    refused(main(index_args(index.parent / "images", out, tiny_checkpoint)), capsys, "No space left", "--out")
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_a_read_only_disk_for_the_index_lock_is_one_paragraph(
    index: Path, tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from retrieval.cli import main

    real_open = os.open

    def read_only(path: object, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    refused(main(index_args(index.parent / "images", tmp_path / "i", tiny_checkpoint)), capsys, "Read-only", "--out")

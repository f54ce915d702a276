"""An index folder is one thing (its files fingerprinted in spec.json, a changed one refused by name with the
command that rebuilds it), and an index of random weights can be queried with them (they are seeded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("skimage.data")

from retrieval.cli import main
from tests.test_retrieval_cli import PHOTOS, fails, index_args, write_photo


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> tuple[Path, Path]:
    """An index of 2 photographs x 5 versions, built with the tiny fixture backbone."""
    root = tmp_path_factory.mktemp("retrieval_trust")
    for name in PHOTOS[:2]:
        write_photo(root / "images", name)
    assert main(index_args(root / "images", root / "index", tiny_checkpoint)) == 0
    return root, root / "index"


def rebuild_command_in(message: str) -> list[str]:
    """The `python -m retrieval index ...` command a message gives, as `main`'s arguments."""
    command = message.split("`python -m retrieval ", 1)[1].split("`", 1)[0]
    return command.split()


def test_a_changed_index_file_is_refused_by_name_and_the_given_command_rebuilds_it(built, tmp_path, capsys) -> None:
    root, index = built
    copy = shutil.copytree(index, tmp_path / "copy")
    query = [
        "query",
        str(copy),
        str(root / "images" / f"{PHOTOS[0]}.png"),
        "--out",
        str(tmp_path / "q"),
        "--device",
        "cpu",
    ]
    paths = json.loads((copy / "paths.json").read_text())
    paths[0], paths[1] = paths[1], paths[0]  # the same size: only the hash tells
    (copy / "paths.json").write_text(json.dumps(paths, indent=1))
    capsys.readouterr()
    assert main(query) == 2
    message = capsys.readouterr().err
    assert (
        f"{copy / 'paths.json'} holds as many bytes as its build wrote, but other ones" in message
        and "inconsistent" in message
    ), message
    assert main([*rebuild_command_in(message), "--device", "cpu", "--num-workers", "0"]) == 0
    assert "(0 embedded now" in capsys.readouterr().out
    assert main(query) == 0 and json.loads((copy / "paths.json").read_text()) == json.loads(
        (index / "paths.json").read_text()
    )
    shard = next((copy / "parts").glob("*/embedding_00000.npy"))
    shard.write_bytes(shard.read_bytes()[:-2])
    fails(
        ["dedup", str(copy), "--threshold", "0.9", "--out", str(tmp_path / "d")], capsys, str(shard), "delete the part"
    )
    assert not (tmp_path / "d").exists()


def test_an_index_without_fingerprints_is_used_with_a_warning(built, tmp_path, capsys) -> None:
    """Indexes built before the files were fingerprinted still work (a rebuild needs their weights, which for random
    ones cannot be made again), with a warning giving the command that records them."""
    root, index = built
    copy = shutil.copytree(index, tmp_path / "copy")
    spec = json.loads((copy / "spec.json").read_text())
    old = {k: v for k, v in spec.items() if k not in ("files", "source", "index_kind")}
    (copy / "spec.json").write_text(json.dumps(old))
    capsys.readouterr()
    assert main(["dedup", str(copy), "--threshold", "0.9", "--out", str(tmp_path / "d")]) == 0
    warning = capsys.readouterr().err
    assert "records no fingerprints" in warning and f"index SOURCE --out {copy}" in warning, warning
    assert main(index_args(root / "images", copy, Path(spec["loading"]["checkpoint"]))) == 0
    assert json.loads((copy / "spec.json").read_text())["files"] == spec["files"]  # the same files again


def test_an_index_of_random_weights_can_be_queried_with_them(tmp_path, capsys) -> None:
    """Random weights are seeded: the query's weights are the index's, whatever random numbers were drawn between."""
    import torch

    write_photo(tmp_path / "images", PHOTOS[0])
    random = ["--random-weights", "--embed-dim", "32", "--depth", "1", "--num-heads", "4", "--size", "56"]
    build = ["index", str(tmp_path / "images"), "--out", str(tmp_path / "index"), *random, "--device", "cpu"]
    assert main([*build, "--num-workers", "0"]) == 0
    torch.rand(1000)
    image = str(tmp_path / "images" / f"{PHOTOS[0]}.png")
    capsys.readouterr()
    assert (
        main(["query", str(tmp_path / "index"), image, "--random-weights", "--k", "5", "--out", str(tmp_path / "q")])
        == 0
    )
    assert "Wrote" in capsys.readouterr().out
    spec = json.loads((tmp_path / "index" / "spec.json").read_text())
    (tmp_path / "index" / "spec.json").write_text(json.dumps(spec | {"weights_sha256": "0" * 64}))  # as if unseeded
    query = ["query", str(tmp_path / "index"), image, "--random-weights", "--k", "5", "--out", str(tmp_path / "r")]
    fails(query, capsys, "random weights that cannot be made again", "--random-weights")

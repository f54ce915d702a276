"""utils.outputs: no command writes over its inputs, an output place holds one run (the previous run's files are
replaced as a set), files no run wrote are refused without --overwrite, and write failures are one paragraph with
nothing half-written. The rule itself on plain files, then the visualize tools (retrieval: test_retrieval_outputs.py)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY
from utils.outputs import MANIFEST, OutputError, Outputs


def run(folder: Path | None, files: dict[str, str], inputs: list[Path] = (), overwrite: bool = False) -> Outputs:
    """One run writing ``files`` (name: text) into ``folder``."""
    targets = [folder / name for name in files]
    with Outputs(targets, inputs, folder=folder, overwrite=overwrite) as outputs:
        for target, text in zip(targets, files.values()):
            with outputs.file(target) as tmp:
                tmp.write_text(text)
    return outputs


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_a_second_run_replaces_the_first_runs_files_as_a_set(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(out, {"a.json": "1", "b.png": "1", "c.png": "1"})
    (out / "notes.txt").write_text("mine")
    run(out, {"a.json": "2"})
    assert visible(out) == ["a.json", "notes.txt"] and (out / "a.json").read_text() == "2"
    assert json.loads((out / MANIFEST).read_text()) == {"files": ["a.json"]}
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_a_file_no_run_wrote_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text("mine")
    with pytest.raises(OutputError, match="--overwrite") as err:
        run(out, {"a.json": "new", "b.json": "new"})
    assert str(out / "a.json") in str(err.value) and "no earlier run" in str(err.value)
    assert visible(out) == ["a.json"] and (out / "a.json").read_text() == "mine"
    run(out, {"a.json": "new"}, overwrite=True)
    assert (out / "a.json").read_text() == "new"
    run(out, {"b.json": "new"})  # now the run's own file: replaced as a set, no flag needed
    assert visible(out) == ["b.json"]


def test_a_damaged_manifest_lists_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(out, {"a.json": "1"})
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(OutputError, match="--overwrite"):
        run(out, {"a.json": "2"})


def test_files_outside_the_folder_are_never_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(out, {"a.json": "1"})
    (tmp_path / "precious.txt").write_text("mine")
    (out / MANIFEST).write_text(json.dumps({"files": ["a.json", "../precious.txt", str(tmp_path / "precious.txt")]}))
    run(out, {"a.json": "2"})
    assert (tmp_path / "precious.txt").read_text() == "mine"


@pytest.mark.parametrize("link", ["same path", "symlink", "hard link", "inside an input folder"])
def test_an_input_is_never_written_over(tmp_path: Path, link: str) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"photo")
    out = tmp_path / "out"
    out.mkdir()
    target, source = out / "x.png", photo
    if link == "same path":
        target = photo
    elif link == "symlink":
        target.symlink_to(photo)
    elif link == "hard link":
        os.link(photo, target)
    else:
        source = out
    with pytest.raises(OutputError) as err:
        Outputs([target], [source], overwrite=True)
    assert f"the input {source}" in str(err.value) or f"input folder {source}" in str(err.value)
    assert "--out" in str(err.value) and photo.read_bytes() == b"photo"


def test_a_failed_run_keeps_nothing_and_the_previous_run_stays(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(out, {"a.json": "1"})
    with pytest.raises(RuntimeError), Outputs([out / "a.json", out / "b.json"], [], folder=out) as outputs:
        with outputs.file(out / "a.json") as tmp:
            tmp.write_text("2")
        raise RuntimeError("the run failed after writing a.json")
    assert visible(out) == ["a.json"] and (out / "a.json").read_text() == "1"
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "a.json"]
    with pytest.raises(RuntimeError), Outputs([tmp_path / "new" / "a.json"], [], folder=tmp_path / "new"):
        raise RuntimeError
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_is_one_paragraph_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    import utils.atomic

    def refuse(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(utils.atomic.os, "replace", refuse)
    with pytest.raises(OutputError, match=os.strerror(code)) as err:
        run(tmp_path / "out", {"a.json": "1"})
    assert "--out" in str(err.value) and "Nothing of this run was kept" in str(err.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("where", ["an existing file", "under a file"])
def test_an_out_folder_that_is_a_file_is_one_paragraph(tmp_path: Path, where: str) -> None:
    (tmp_path / "notes.txt").write_text("")
    out = tmp_path / "notes.txt" if where == "an existing file" else tmp_path / "notes.txt" / "out"
    with pytest.raises(OutputError, match="is a file, not a folder"):
        Outputs([out / "a.json"], [], folder=out)


# ---- the commands ----------------------------------------------------------------------------------------------

TINY_CLI = [
    *(f"--{key.replace('_', '-')}={value}" for key, value in TINY.items()),
    "--device",
    "cpu",
]


def photo(path: Path, seed: int = 0, size: tuple[int, int] = (64, 48)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def refused(code: int, capsys: pytest.CaptureFixture, *words: str) -> str:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and all(w in err for w in words), err
    return err


def test_visualize_tools_refuse_to_write_over_an_input(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    from visualize.match import main as match_main
    from visualize.oneshot import main as oneshot_main
    from visualize.pca import main as pca_main

    a, b = photo(tmp_path / "a.png"), photo(tmp_path / "b.jpg", 1)
    before = {p: p.read_bytes() for p in (a, b)}
    tiny = ["--checkpoint", str(tiny_checkpoint), *TINY_CLI]
    refused(pca_main([str(a), str(b), "--out", str(a), *tiny]), capsys, f"the input {a}", "--out")
    refused(match_main([str(a), str(b), "--json", str(b), *tiny]), capsys, f"the input {b}", "--json")
    mask = tmp_path / "ref_mask.png"
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(mask)
    before[mask] = mask.read_bytes()
    argv = [str(a), str(mask), str(tmp_path / "ref.png"), "--out", str(tmp_path), "--random-weights", *tiny]
    (tmp_path / "ref.png").write_bytes(a.read_bytes())
    refused(oneshot_main(argv), capsys, f"the input {mask}", "--out")
    assert {p: p.read_bytes() for p in before} == before


def test_pca_features_of_an_earlier_run_are_replaced(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from visualize.pca import main as pca_main

    images = [str(photo(tmp_path / f"{i}.png", i)) for i in range(3)]
    out = tmp_path / "out" / "pca.png"
    tiny = ["--checkpoint", str(tiny_checkpoint), *TINY_CLI, "--save-features", "--keep-background"]
    assert pca_main([*images, "--out", str(out), *tiny]) == 0
    assert visible(out.parent) == ["pca.png", "pca_0_0.npy", "pca_1_1.npy", "pca_2_2.npy"]
    assert pca_main([images[0], "--out", str(out), *tiny]) == 0
    assert visible(out.parent) == ["pca.png", "pca_0_0.npy"]


def test_oneshot_masks_and_figure_appear_together_or_not_at_all(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import writers.oneshot
    from tests.conftest import TINY_SAM
    from visualize.oneshot import main as oneshot_main

    ref = photo(tmp_path / "ref.png", 0, (112, 84))
    mask = tmp_path / "mask.png"
    values = np.zeros((84, 112), np.uint8)
    values[20:60, 30:80] = 255
    Image.fromarray(values).save(mask)
    targets = [str(photo(tmp_path / f"t{i}.png", i + 1, (112, 84))) for i in range(2)]
    sam = [f"--sam-{key.replace('_', '-')}={value}" for key, value in TINY_SAM.items()]
    argv = [str(ref), str(mask), *targets, "--checkpoint", str(tiny_checkpoint), *TINY_CLI, *sam]
    argv += ["--random-weights", "--size", "112", "--sam-model-type", "vit_b", "--out", str(tmp_path / "out")]

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writers.oneshot.plt.Figure, "savefig", full_disk)
    refused(oneshot_main(argv), capsys, "No space left on device", "oneshot.png", "--out")
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    assert oneshot_main(argv) == 0
    assert visible(tmp_path / "out") == ["oneshot.png", "t0.json", "t0_mask.png", "t1.json", "t1_mask.png"]
    assert oneshot_main(argv[:3] + argv[4:]) == 0  # t0 alone: t1's mask and JSON go with the run they belong to
    assert visible(tmp_path / "out") == ["oneshot.png", "t0.json", "t0_mask.png"]

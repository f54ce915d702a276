"""Retrieval past one machine: `index --part i/N` jobs run as separate processes at once, merged by `build` into the
index one process makes, byte for byte; the ivfpq and ondisk kinds search as they should (measured against exact
search here); and every way of splitting wrongly is one paragraph and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from PIL import Image

from bench.retrieval_scale import clustered_embeddings, recall_at_k
from retrieval.cli import main
from retrieval.faiss_index import build_index, read_index, search
from retrieval.ondisk import write_ondisk_index

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 20  # 3 shards of 8: a 2-way split gives 8 and 12 images


def index_args(source: Path, out: Path, checkpoint: Path, *extra: str) -> list[str]:
    """`index SOURCE --out OUT` with the tiny fixture backbone at 28 px, GeM, shards of 8, batches of 4, on the CPU."""
    tiny = {"--checkpoint": checkpoint, "--embed-dim": 64, "--depth": 4, "--num-heads": 4, "--device": "cpu"}
    options = {"--pooling": "gem", "--size": 28, "--num-workers": 0, "--batch-size": 4, "--samples-per-shard": 8}
    flags = [str(part) for flag, value in (tiny | options).items() for part in (flag, value)]
    return ["index", str(source), "--out", str(out), *flags, *extra]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("parts") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def whole(images: Path, tiny_checkpoint: Path) -> Path:
    """The index one process makes of the images."""
    out = images.parent / "whole"
    assert main(index_args(images, out, tiny_checkpoint)) == 0
    return out


def part_vectors(index: Path) -> np.ndarray:
    """The stored fp16 descriptors of every part, in the parts' order."""
    shards = sorted((index / "parts").glob("*/embedding_*.npy"), key=lambda p: (p.parent.name, p.name))
    return np.concatenate([np.load(shard) for shard in shards])


def test_two_part_jobs_at_once_then_build_give_the_one_process_index_byte_for_byte(
    images: Path, whole: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "split"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "retrieval", *index_args(images, out, tiny_checkpoint, "--part", f"{i}/2")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (1, 2)
    ]
    results = [job.communicate(timeout=300) for job in jobs]
    for job, (stdout, stderr) in zip(jobs, results):
        assert job.returncode == 0, stderr
    assert "images 1 to 8 of the 20" in results[0][0] and "images 9 to 20 of the 20" in results[1][0]
    assert not (out / "index.faiss").exists()  # the jobs embed; `build` merges
    assert main(["build", str(out)]) == 0
    for name in ("index.faiss", "paths.json", "skipped.json"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert np.array_equal(part_vectors(out), part_vectors(whole))
    # the ondisk kind too: the same lists and ids in both files, wherever the parts' rows came from
    reference = shutil.copytree(whole, tmp_path / "whole")
    for index in (out, reference):
        assert main(["build", str(index), "--index-kind", "ondisk"]) == 0
    for name in ("index.faiss", "index.ivfdata", "paths.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert json.loads((out / "spec.json").read_text())["index_kind"] == "ondisk"


def test_ondisk_index_is_exact_search_when_every_list_is_probed_and_moves_with_its_folder(tmp_path: Path) -> None:
    data = clustered_embeddings(3100, 32, 200, seed=0)
    vectors, queries = data[:3000], data[3000:]
    folder = tmp_path / "a"
    folder.mkdir()
    chunks = (vectors[i : i + 700] for i in range(0, len(vectors), 700))
    write_ondisk_index(vectors[::2], chunks, len(vectors), folder / "index.faiss", nlist=40, nprobe=40)
    assert sorted(p.name for p in folder.iterdir()) == ["index.faiss", "index.ivfdata"]  # no temporary left behind
    assert (folder / "index.ivfdata").stat().st_size > (folder / "index.faiss").stat().st_size
    moved = folder.rename(tmp_path / "b")
    index = read_index(moved / "index.faiss")
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.read_only
    scores, ids = search(index, queries, 10)
    exact_scores, exact_ids = search(build_index(vectors, "flat"), queries, 10)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-6)
    # a short lists file is refused; it is a copy, since truncating the mapped file could kill this process with
    # SIGBUS while FAISS's prefetch threads still read the lists the search asked for
    short = tmp_path / "short"
    short.mkdir()
    shutil.copy(moved / "index.faiss", short / "index.faiss")
    (short / "index.ivfdata").write_bytes((moved / "index.ivfdata").read_bytes()[:1000])
    with pytest.raises(RuntimeError, match="holds 1000 bytes"):
        read_index(short / "index.faiss")


def test_ivfpq_ranks_by_its_decoded_vectors_and_finds_most_true_neighbours() -> None:
    data = clustered_embeddings(4100, 32, 200, seed=0)
    vectors, queries = data[:4000], data[4000:]
    index = build_index(vectors, "ivfpq")
    assert index.nprobe == index.nlist  # 63 lists at 4000 vectors, all probed: only the codes approximate
    scores, ids = search(index, queries, 10)
    index.make_direct_map()
    decoded = index.reconstruct_n(0, index.ntotal).astype(np.float64)
    products = queries.astype(np.float64) @ decoded.T
    np.testing.assert_allclose(scores, -np.sort(-products, axis=1)[:, :10], atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(products, ids, axis=1), scores, atol=1e-4)
    _, exact = search(build_index(vectors, "flat"), queries, 10)
    by_chance = recall_at_k(np.random.default_rng(0).integers(0, len(vectors), ids.shape), exact)
    found = recall_at_k(ids, exact)
    print(f"ivfpq recall@10 {found:.3f}, by chance {by_chance:.3f}")
    assert found > 0.5 > 100 * by_chance
    assert len(faiss.serialize_index(index)) < len(faiss.serialize_index(build_index(vectors, "flat"))) / 2


@pytest.mark.parametrize("kind", ["ivfpq", "ondisk"])
def test_query_dedup_and_cluster_read_the_new_kinds(
    kind: str, images: Path, whole: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = shutil.copytree(whole, tmp_path / "index")
    assert main(["build", str(index), "--index-kind", kind]) == 0
    moved = index.rename(tmp_path / "moved")  # an ondisk index finds its lists beside it
    image = str(images / "005.png")
    assert main(["query", str(moved), image, "--k", "3", "--out", str(tmp_path / "q"), "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "q" / "005.json").read_text())["results"]
    assert len(results) == 3 and (kind == "ivfpq" or results[0]["path"] == str(Path(image).absolute()))
    assert main(["dedup", str(moved), "--threshold", "0.999", "--out", str(tmp_path / "d")]) == 0
    assert main(["cluster", str(moved), "--k", "2", "--out", str(tmp_path / "c")]) == 0
    clusters = json.loads((tmp_path / "c" / "clusters.json").read_text())["clusters"]
    assert sum(c["size"] for c in clusters) == N_IMAGES
    if kind == "ondisk":
        assert "index.ivfdata" in json.loads((moved / "spec.json").read_text())["files"]
        lists = moved / "index.ivfdata"
        lists.write_bytes(lists.read_bytes()[:-8])
        capsys.readouterr()
        assert main(["query", str(moved), image, "--out", str(tmp_path / "q2"), "--device", "cpu"]) == 2
        assert "index.ivfdata" in capsys.readouterr().err
        assert main(["build", str(moved), "--index-kind", "flat"]) == 0  # another kind: the lists file goes
        assert not lists.exists() and "index.ivfdata" not in json.loads((moved / "spec.json").read_text())["files"]


def fails(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), err
    return err


@pytest.mark.parametrize("part", ["0/2", "3/2", "1/0", "2", "a/b"])
def test_a_part_out_of_range_is_a_usage_error(part: str, images: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(index_args(images, tmp_path / "out", tiny_checkpoint, "--part", part))
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()


def test_splitting_wrongly_is_one_paragraph_and_exit_2(
    images: Path, whole: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "split"
    fails(index_args(images, out, tiny_checkpoint, "--part", "1/4"), capsys, "3 shard(s)", "N <= 3")
    assert not out.exists()
    fails(["build", str(out)], capsys, "not an index folder")
    assert main(index_args(images, out, tiny_checkpoint, "--part", "1/2")) == 0
    err = fails(["build", str(out)], capsys, "part 2/2 was not started", "--part i/N", f"retrieval build {out}")
    assert "\n" not in err.strip()
    # a one-process run would embed part 2's images a second time: refused until the split is finished
    fails(index_args(images, out, tiny_checkpoint), capsys, "part 2/2 was not started")
    # parts gathered from another folder: other settings, or images that a part here holds already
    other = tmp_path / "other"
    assert main(index_args(images, other, tiny_checkpoint, "--part", "2/2", "--pooling", "cls")) == 0
    part = next(p for p in (other / "parts").glob("*part00002of00002*") if p.is_dir())
    foreign = shutil.copytree(part, out / "parts" / part.name)
    fails(["build", str(out)], capsys, "--pooling cls", "--pooling gem", foreign.name)
    shutil.rmtree(foreign)
    fails(index_args(images, out, tiny_checkpoint, "--part", "2/2", "--pooling", "cls"), capsys, "--pooling gem")
    part = next(p for p in (whole / "parts").iterdir() if p.is_dir())
    copied = shutil.copytree(part, out / "parts" / part.name)
    fails(["build", str(out)], capsys, "both hold", copied.name)
    shutil.rmtree(copied)
    assert main(index_args(images, out, tiny_checkpoint, "--part", "2/2")) == 0
    assert main(["build", str(out)]) == 0
    assert (out / "index.faiss").read_bytes() == (whole / "index.faiss").read_bytes()

"""`python -m retrieval index|query|dedup|cluster` on real photographs (scikit-image's) and their near-duplicates,
with the tiny fixture backbone on the CPU: grouping, resuming, adding, querying, and every bad input (exit 2).

The fixture backbone has random weights, so its descriptors barely tell photographs apart: with the class token,
a JPEG copy can be further from its original than another photograph is. GeM pooling at 84 px separates them
(the test checks that it does from the similarities it computes, then picks the threshold between them).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
skimage_data = pytest.importorskip("skimage.data")

from PIL import Image, ImageEnhance

from retrieval.cli import main

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "camera", "coins", "hubble_deep_field", "immunohistochemistry")
COPIES = ("jpeg", "small", "crop", "bright")


def index_args(source: Path, out: Path, checkpoint: Path, *extra: str) -> list[str]:
    """`index SOURCE --out OUT` with the tiny fixture backbone, GeM at 84 px, shards of 8 images, on the CPU."""
    tiny = {"--checkpoint": checkpoint, "--embed-dim": 64, "--depth": 4, "--num-heads": 4, "--device": "cpu"}
    options = {"--pooling": "gem", "--size": 84, "--num-workers": 0, "--batch-size": 4, "--samples-per-shard": 8}
    flags = [str(part) for flag, value in (tiny | options).items() for part in (flag, value)]
    return ["index", str(source), "--out", str(out), *flags, *extra]


def write_photo(folder: Path, name: str) -> list[Path]:
    """A photograph at 112 px and its four near-duplicates: JPEG quality 30, 3/4 size, 5% cropped, brightened."""
    image = Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
    image.thumbnail((112, 112))
    w, h = image.size
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=30)
    files = {
        f"{name}.png": image,
        f"{name}_small.png": image.resize((w * 3 // 4, h * 3 // 4), Image.BICUBIC),
        f"{name}_crop.png": image.crop((w // 20, h // 20, w - w // 20, h - h // 20)),
        f"{name}_bright.png": ImageEnhance.Brightness(image).enhance(1.2),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for file, img in files.items():
        img.save(folder / file)
    (folder / f"{name}_jpeg.jpg").write_bytes(buffer.getvalue())
    return sorted(folder.glob(f"{name}*"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> tuple[Path, Path]:
    """An index of 8 photographs x 5 versions, plus one unreadable file (skipped, not fatal)."""
    root = tmp_path_factory.mktemp("retrieval")
    for name in PHOTOS:
        write_photo(root / "images", name)
    (root / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    assert main(index_args(root / "images", root / "index", tiny_checkpoint)) == 0
    return root, root / "index"


def photo_of(path: str) -> str:
    stem = Path(path).stem
    return next(name for name in sorted(PHOTOS, key=len, reverse=True) if stem.startswith(name))


def test_index_lists_unreadable_files_and_near_duplicates_group_with_their_originals(built, tmp_path) -> None:
    from retrieval.index_store import open_index

    _, index = built
    skipped = json.loads((index / "skipped.json").read_text())
    assert [Path(s["path"]).name for s in skipped] == ["broken.jpg"] and "Cannot read" in skipped[0]["reason"]
    loaded = open_index(index)
    assert len(loaded.paths) == len(PHOTOS) * (1 + len(COPIES))
    vectors = loaded.vectors().astype(np.float64)
    scores = vectors @ vectors.T
    photo = np.array([photo_of(p) for p in loaded.paths])
    same = photo[:, None] == photo[None]
    original = {name: loaded.paths.index(next(p for p in loaded.paths if Path(p).stem == name)) for name in PHOTOS}
    to_original = min(scores[i, original[photo[i]]] for i in range(len(photo)))
    across = scores[~same].max()
    assert to_original > across, f"the fixture backbone cannot separate copies ({to_original}) from others ({across})"
    threshold = (to_original + across) / 2
    print(f"copy-to-original >= {to_original:.4f}, across photographs <= {across:.4f}: threshold {threshold:.4f}")
    assert main(["dedup", str(index), "--threshold", str(threshold), "--k", "10", "--out", str(tmp_path)]) == 0
    groups = json.loads((tmp_path / "groups.json").read_text())["groups"]
    expected = sorted(sorted(p for p in loaded.paths if photo_of(p) == name) for name in PHOTOS)
    assert sorted(g["paths"] for g in groups) == expected
    removed = (tmp_path / "keep_one.txt").read_text().split()
    assert sorted(removed) == sorted(p for group in expected for p in group[1:])
    assert all(Path(g["keep"]).stem in PHOTOS for g in groups)  # "chelsea.png" sorts before "chelsea_*"
    assert len((tmp_path / "groups.csv").read_text().splitlines()) == 1 + len(loaded.paths)
    assert (tmp_path / "groups.png").stat().st_size > 0


def test_query_finds_the_image_itself_first(built, tiny_checkpoint, tmp_path, capsys) -> None:
    root, index = built
    image = root / "images" / "rocket.png"
    assert main(["query", str(index), str(image), "--k", "5", "--out", str(tmp_path), "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "rocket.json").read_text())["results"]
    assert Path(result[0]["path"]) == image.absolute() and result[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert [r["score"] for r in result] == sorted((r["score"] for r in result), reverse=True)
    assert (tmp_path / "rocket.png").is_file() and str(image.absolute()) in capsys.readouterr().out


def test_cluster_writes_assignments_and_sheets(built, tmp_path) -> None:
    _, index = built
    assert main(["cluster", str(index), "--k", "4", "--out", str(tmp_path)]) == 0
    clusters = json.loads((tmp_path / "clusters.json").read_text())["clusters"]
    paths = json.loads((index / "paths.json").read_text())
    assert sorted(p for c in clusters for p in c["paths"]) == sorted(paths)
    assert len((tmp_path / "clusters.csv").read_text().splitlines()) == 1 + len(paths)
    assert len(list(tmp_path.glob("cluster_*.png"))) == sum(1 for c in clusters if c["size"])


def index_rows(index: Path) -> tuple[list[str], np.ndarray]:
    from retrieval.index_store import open_index

    loaded = open_index(index)
    return loaded.paths, loaded.index.reconstruct_n(0, loaded.index.ntotal)


def test_an_interrupted_build_resumes_to_the_same_index(tmp_path, tiny_checkpoint, monkeypatch) -> None:
    from datamodules.feature_cache.extraction import _OpenShard

    for name in PHOTOS[:4]:
        write_photo(tmp_path / "images", name)  # 20 images: 3 shards of 8
    assert main(index_args(tmp_path / "images", tmp_path / "whole", tiny_checkpoint)) == 0
    commit, done = _OpenShard.commit, []

    def commit_then_die(self: _OpenShard) -> None:
        commit(self)
        done.append(self.shard)
        if len(done) == 1:
            raise RuntimeError("killed")

    monkeypatch.setattr(_OpenShard, "commit", commit_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        main(index_args(tmp_path / "images", tmp_path / "resumed", tiny_checkpoint))
    assert not (tmp_path / "resumed" / "index.faiss").exists()
    assert main(index_args(tmp_path / "images", tmp_path / "resumed", tiny_checkpoint)) == 0
    assert len(done) == 3  # the first shard was kept: the resumed run wrote the other two
    paths, vectors = index_rows(tmp_path / "resumed")
    whole_paths, whole_vectors = index_rows(tmp_path / "whole")
    assert paths == whole_paths and np.array_equal(vectors, whole_vectors)


def test_adding_images_embeds_only_those(tmp_path, tiny_checkpoint, capsys) -> None:
    for name in PHOTOS[:2]:
        write_photo(tmp_path / "images", name)
    assert main(index_args(tmp_path / "images", tmp_path / "index", tiny_checkpoint)) == 0
    before, before_vectors = index_rows(tmp_path / "index")
    write_photo(tmp_path / "images", PHOTOS[2])
    capsys.readouterr()
    assert main(index_args(tmp_path / "images", tmp_path / "index", tiny_checkpoint)) == 0
    assert "(5 embedded now" in capsys.readouterr().out
    after, after_vectors = index_rows(tmp_path / "index")
    assert len(after) == 15 and set(before) < set(after)
    assert np.array_equal(after_vectors[[after.index(p) for p in before]], before_vectors)
    assert len(list((tmp_path / "index" / "parts").iterdir())) == 2


def fails(argv: list[str], capsys: pytest.CaptureFixture, *words: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), err


def test_bad_input_exits_2_and_writes_nothing(built, tmp_path, tiny_checkpoint, capsys) -> None:
    root, index = built
    (tmp_path / "empty").mkdir()
    fails(index_args(tmp_path / "empty", tmp_path / "out", tiny_checkpoint), capsys, "is empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("no images here")
    fails(index_args(tmp_path / "text", tmp_path / "out", tiny_checkpoint), capsys, "no image", "notes.txt")
    fails([*index_args(root / "images", tmp_path / "out", tiny_checkpoint), "--size", "100"], capsys, "use 98")
    fails([*index_args(root / "images", tmp_path / "out", tiny_checkpoint), "--index-kind", "lsh"], capsys, "lsh")
    assert not (tmp_path / "out").exists()
    spec = (index / "spec.json").read_text()
    other = [*index_args(root / "images", index, tiny_checkpoint), "--pooling", "cls"]
    fails(other, capsys, "--pooling gem", "--pooling cls")
    assert (index / "spec.json").read_text() == spec
    image = str(root / "images" / "coins.png")
    fails(["query", str(index), image, "--size", "56", "--out", str(tmp_path / "q")], capsys, "--size 84", "--size 56")
    fails(["query", str(index), image, "--k", "1000", "--out", str(tmp_path / "q")], capsys, "--k 1000")
    fails(["dedup", str(index), "--threshold", "1.5", "--out", str(tmp_path / "q")], capsys, "[-1, 1]")
    fails(["cluster", str(index), "--k", "1000", "--out", str(tmp_path / "q")], capsys, "--k 1000")
    fails(
        ["dedup", str(tmp_path / "nowhere"), "--threshold", "0.9", "--out", str(tmp_path / "q")],
        capsys,
        "does not exist",
    )
    assert not (tmp_path / "q").exists()


def test_damaged_shards_and_index_files_are_named(built, tmp_path, capsys) -> None:
    _, index = built
    copy = shutil.copytree(index, tmp_path / "copy")
    shard = next((copy / "parts").glob("*/embedding_00001.npy"))
    shard.write_bytes(shard.read_bytes()[:100])
    fails(["dedup", str(copy), "--threshold", "0.9", "--out", str(tmp_path / "q")], capsys, shard.parent.name)
    image = str(next(Path(p) for p in json.loads((copy / "paths.json").read_text())))
    record = json.loads((copy / "spec.json").read_text())
    (copy / "spec.json").write_text(json.dumps(record | {"weights_sha256": "0" * 64}))
    fails(["query", str(copy), image, "--out", str(tmp_path / "q"), "--device", "cpu"], capsys, "sha256 000000000000")
    (copy / "index.faiss").write_bytes(b"garbage")
    fails(["query", str(copy), str(copy / "paths.json"), "--out", str(tmp_path / "q")], capsys, "index.faiss")
    assert not (tmp_path / "q").exists()


def test_groups_are_the_connected_components_of_the_thresholded_similarities() -> None:
    """With k = N the k-NN graph is every pair: the groups are the components of (S >= T), found here by a direct
    flood fill over the float64 similarity matrix."""
    from retrieval.dedup import near_duplicate_groups
    from retrieval.faiss_index import build_index

    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 16))
    vectors = np.concatenate(
        [base, base[:6] + 0.05 * rng.normal(size=(6, 16)), base[:2] + 0.1 * rng.normal(size=(2, 16))]
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    threshold = 0.9
    linked = (vectors @ vectors.T) >= threshold
    expected, seen = [], set()
    for start in range(len(vectors)):
        if start in seen:
            continue
        component, frontier = {start}, [start]
        while frontier:
            new = set(np.flatnonzero(linked[frontier.pop()]).tolist()) - component
            component |= new
            frontier.extend(new)
        seen |= component
        if len(component) > 1:
            expected.append(sorted(component))
    groups = near_duplicate_groups(build_index(vectors.astype(np.float32), "flat"), vectors, threshold, len(vectors))
    assert sorted(groups) == sorted(expected) and len(expected) == 6


def test_a_file_list_indexes_its_lines_and_skips_missing_files(tmp_path, tiny_checkpoint) -> None:
    files = write_photo(tmp_path / "images", PHOTOS[0])
    listing = tmp_path / "list.txt"
    listing.write_text("# photographs\n" + "".join(f"images/{f.name}\n" for f in files[:3]) + "images/missing.png\n")
    assert main(index_args(listing, tmp_path / "index", tiny_checkpoint)) == 0
    paths = json.loads((tmp_path / "index" / "paths.json").read_text())
    assert paths == [str(f.absolute()) for f in files[:3]]
    skipped = json.loads((tmp_path / "index" / "skipped.json").read_text())
    assert [Path(s["path"]).name for s in skipped] == ["missing.png"]

"""One-shot segmentation data and metrics: the seeded episode sampler, the COCO-20i folds, the FSS-1000 / COCO-20i /
PerSeg readers on tiny layouts written here, HSNet's COCO-20i lists, the generated set, and mIoU / FB-IoU against a
transcription of HSNet's AverageMeter.

Longer than 300 lines: three readers, each on a tiny layout of its own written here, besides the sampler, the
generator and the metric.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from pycocotools import mask as mask_utils

from datamodules.errors import DatasetError
from datamodules.oneshot.base import sample_episodes
from datamodules.oneshot.readers import Coco20iDataModule, FSS1000DataModule, PerSegDataModule, coco20i_class_ids
from datamodules.synthetic import fss1000
from datamodules.synthetic.fss1000 import write_oneshot_like
from metrics.oneshot import OneShotIoU
from tests.helpers import compose_train
from utils.errors import hydra_style, option_style


def episodes_as_tuples(episodes: list) -> list[tuple]:
    return [(e.class_id, e.query, e.support) for e in episodes]


def all_batches(dm) -> list[dict]:
    return list(dm.test_dataloader())


def write_pair(image: Path, mask_path: Path, mask: np.ndarray, seed: int, mask_value: int = 255) -> None:
    image.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (*mask.shape, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(image)
    Image.fromarray(mask.astype(np.uint8) * mask_value).save(mask_path)


def box_mask(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask = np.zeros((h, w), bool)
    mask[y0 : y0 + h // 3, x0 : x0 + w // 3] = True
    return mask


# --- the sampler ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["random", "every_query"])
def test_sampler_is_reproducible_from_its_seed(protocol: str) -> None:
    sizes = {0: 5, 3: 7, 9: 4}
    draw = lambda seed: episodes_as_tuples(sample_episodes(sizes, 2, 40, seed, protocol))
    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_supports_are_distinct_images_of_the_class_and_never_the_query() -> None:
    sizes = {0: 3, 1: 6, 2: 8}
    for episode in sample_episodes(sizes, 2, 300, seed=0):
        assert len(set(episode.support)) == 2 and episode.query not in episode.support
        assert all(0 <= i < sizes[episode.class_id] for i in (episode.query, *episode.support))
    classes = [e.class_id for e in sample_episodes(sizes, 2, 300, seed=0)]
    assert set(classes) == set(sizes)  # every class is drawn (uniformly: 300 draws over 3 classes)


def test_every_query_and_reference_protocols() -> None:
    sizes = {0: 4, 1: 3}
    every = sample_episodes(sizes, 1, None, seed=0, protocol="every_query")
    assert [(e.class_id, e.query) for e in every] == [(c, q) for c in sizes for q in range(sizes[c])]
    few = sample_episodes(sizes, 1, 3, seed=0, protocol="every_query")
    assert len(few) == 3 and {(e.class_id, e.query) for e in few} <= {(e.class_id, e.query) for e in every}
    assert len(sample_episodes(sizes, 1, 10, seed=0, protocol="every_query")) == 10
    reference = sample_episodes(sizes, 2, None, seed=0, protocol="reference")
    assert [(e.class_id, e.query) for e in reference] == [(0, 2), (0, 3), (1, 2)]
    assert all(e.support == (0, 1) for e in reference)


def test_bad_sampler_options_name_the_option_and_the_fix() -> None:
    with option_style(hydra_style):
        with pytest.raises(DatasetError, match=r"data\.shots=0 .*data\.shots=1"):
            sample_episodes({0: 5}, 0, 10, 0)
        with pytest.raises(DatasetError, match=r"data\.shots=5 needs 6 images.*class id\(s\) \[1\].*data\.shots=2"):
            sample_episodes({0: 8, 1: 3}, 5, 10, 0)
        with pytest.raises(DatasetError, match=r"data\.n_episodes=0"):
            sample_episodes({0: 5}, 1, 0, 0)
        with pytest.raises(DatasetError, match=r"data\.fold=4"):
            Coco20iDataModule("unused", fold=4)
        with pytest.raises(DatasetError, match=r"at random: set data\.n_episodes=1000"):
            Coco20iDataModule("unused", n_episodes=None)
        with pytest.raises(DatasetError, match=r"data\.seed=-1 is not a seed"):
            FSS1000DataModule("unused", seed=-1)
        with pytest.raises(DatasetError, match=r"data\.split=train is not an FSS-1000 split"):
            FSS1000DataModule("unused", split="train")


# --- COCO-20i --------------------------------------------------------------------------------------------------------


def test_coco20i_folds_follow_the_published_rule() -> None:
    folds = [coco20i_class_ids(fold) for fold in range(4)]
    assert all(len(f) == 20 for f in folds)
    assert sorted(c for f in folds for c in f) == list(range(80))  # disjoint and covering
    for fold, ids in enumerate(folds):  # HSNet: class c (0-based) is in fold c mod 4
        assert ids == [c for c in range(80) if c % 4 == fold]


def write_coco(root: Path, n_categories: int = 8) -> dict[tuple[str, int], np.ndarray]:
    """Images 1..6 of 24x32 in root/val2014 with instances of categories 10, 20, ... (ids deliberately not 1..n);
    return the expected union mask of (file name, class index) for class indices 0 and 4 (fold 0's)."""
    h, w = 24, 32
    cats = [{"id": 10 * (i + 1), "name": f"cat{i}"} for i in range(n_categories)]
    images, anns, expected = [], [], {}
    plan = {1: [0, 0, 1], 2: [0, 4], 3: [4], 4: [0, 4, 4], 5: [1, 2], 6: [4, 3]}  # image id: class index per instance
    for image_id, classes in plan.items():
        name = f"COCO_val2014_{image_id:012d}.jpg"
        write_pair(root / "val2014" / name, root / "unused" / f"{image_id}.png", np.zeros((h, w), bool), image_id)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for k, c in enumerate(classes):
            mask = box_mask(h, w, seed=100 * image_id + k)
            if k % 2 == 0:  # RLE
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation = {"size": [h, w], "counts": rle["counts"].decode()}
            else:  # a polygon: the box outline, rasterised by pycocotools; compared through its own decoding
                ys, xs = np.nonzero(mask)
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                segmentation = [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]]
                mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))).astype(bool)
            bbox = [0.0, 0.0, float(w), float(h)]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cats[c]["id"],
                    "segmentation": segmentation,
                    "area": float(mask.sum()),
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
            if c in (0, 4):
                key = (name, c)
                expected[key] = expected.get(key, np.zeros((h, w), bool)) | mask
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2014.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    return expected


def test_coco20i_episodes_use_images_of_the_class_with_the_union_mask(tmp_path: Path) -> None:
    expected = write_coco(tmp_path)
    dm = Coco20iDataModule(str(tmp_path), shots=1, n_episodes=30, seed=0, num_workers=0, fold=0)
    dm.setup("test")
    assert dm.eval_class_ids == coco20i_class_ids(0, 8) and dm.class_names == ["cat0", "cat4"]
    assert dm.num_classes == 8 and dm.n_episodes == 30
    seen = set()
    for batch in all_batches(dm):
        c = batch["class_id"]
        paths = [batch["query_path"], *batch["support_paths"]]
        masks = [batch["query_mask"], *batch["support_masks"]]
        assert batch["query_path"] not in batch["support_paths"]
        for path, mask in zip(paths, masks):
            assert (Path(path).name, c) in expected  # the image contains the class
            np.testing.assert_array_equal(mask, expected[(Path(path).name, c)])
        assert batch["query_image"].shape == (24, 32, 3) and batch["query_image"].dtype == np.uint8
        seen.add(c)
    assert seen == {0, 4}


def test_coco20i_episodes_come_from_hsnets_lists_when_present(tmp_path: Path) -> None:
    expected = write_coco(tmp_path)
    lists = tmp_path / "splits" / "coco" / "val" / "fold0.pkl"
    lists.parent.mkdir(parents=True)
    chosen = {0: [1, 4], 4: [2, 3, 6]}  # the images HSNet lists per class: a subset of those with the class
    name = "val2014/COCO_val2014_{:012d}.jpg".format
    lists.write_bytes(pickle.dumps({c: [name(i) for i in ids] for c, ids in chosen.items()}, protocol=3))
    dm = Coco20iDataModule(str(tmp_path), shots=1, n_episodes=30, seed=0, num_workers=0, fold=0)
    dm.setup("test")
    used = {c: set() for c in chosen}
    for batch in all_batches(dm):
        for path, mask in zip(
            [batch["query_path"], *batch["support_paths"]], [batch["query_mask"], *batch["support_masks"]]
        ):
            used[batch["class_id"]].add(Path(path).name)
            np.testing.assert_array_equal(mask, expected[(Path(path).name, batch["class_id"])])
    assert used == {c: {Path(name(i)).name for i in ids} for c, ids in chosen.items()}


class RunsCode:
    def __reduce__(self):
        return (print, ("this must not be printed",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (pickle.dumps({0: [RunsCode()], 4: []}), r"names builtins\.print, which is refused"),
        (pickle.dumps({0: ["val2014/COCO_val2014_000000000001.jpg"]}), r"no image list for class index\(es\) \[4\]"),
        (pickle.dumps({0: [], 4: ["val2014/absent.jpg"]}), r"1 image\(s\) of class index 4 .* \(e\.g\. absent\.jpg\)"),
        (b"not a pickle", "not a readable pickle"),
    ],
)
def test_bad_hsnet_lists_are_named(tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes, message: str) -> None:
    write_coco(tmp_path)
    lists = tmp_path / "splits" / "coco" / "val" / "fold0.pkl"
    lists.parent.mkdir(parents=True)
    lists.write_bytes(content)
    with pytest.raises(DatasetError, match=rf"HSNet's episode lists .*fold0\.pkl .*{message}"):
        Coco20iDataModule(str(tmp_path), n_episodes=3, num_workers=0).setup("test")
    assert "must not be printed" not in capsys.readouterr().out


# --- FSS-1000, PerSeg, the generated set -----------------------------------------------------------------------------


def write_fss(root: Path, classes: dict[str, int]) -> dict[str, np.ndarray]:
    masks = {}
    for name, n in classes.items():
        for i in range(1, n + 1):
            mask = box_mask(20, 20, seed=len(masks))
            image = root / "fewshot_data" / name / f"{i}.jpg"
            write_pair(image, image.with_suffix(".png"), mask, len(masks))
            masks[str(image)] = mask
    (root / "splits").mkdir(parents=True, exist_ok=True)
    (root / "splits" / "test.txt").write_text("b_class\na_class\n")
    return masks


def test_fss_reader_every_query_once_with_masks(tmp_path: Path) -> None:
    masks = write_fss(tmp_path, {"a_class": 3, "b_class": 4, "not_in_split": 3})
    dm = FSS1000DataModule(str(tmp_path), shots=2, seed=1, num_workers=0)
    dm.setup("test")
    assert dm.class_names == ["a_class", "b_class"] and dm.eval_class_ids == [0, 1] and dm.n_episodes == 7
    batches = all_batches(dm)
    assert sorted(b["query_path"] for b in batches) == sorted(p for p in masks if "not_in_split" not in p)
    for b in batches:
        assert dm.class_names[b["class_id"]] == Path(b["query_path"]).parent.name
        assert len(b["support_paths"]) == 2 and b["query_path"] not in b["support_paths"]
        assert {Path(p).parent for p in b["support_paths"]} == {Path(b["query_path"]).parent}
        np.testing.assert_array_equal(b["query_mask"], masks[b["query_path"]])
        assert [m.dtype for m in b["support_masks"]] == [np.dtype(bool)] * 2


def test_episodes_are_the_same_for_any_number_of_workers(tmp_path: Path) -> None:
    write_fss(tmp_path, {"a_class": 3, "b_class": 4})
    runs = []
    for workers in (0, 2):
        dm = FSS1000DataModule(str(tmp_path), shots=1, n_episodes=9, seed=5, num_workers=workers)
        dm.setup("test")
        runs.append([(b["episode"], b["query_path"], b["support_paths"]) for b in all_batches(dm)])
    assert runs[0] == runs[1] and [r[0] for r in runs[0]] == list(range(9))


def test_ddp_processes_share_the_episodes_once(tmp_path: Path) -> None:
    write_fss(tmp_path, {"a_class": 3, "b_class": 4})
    shares = []
    for rank in range(3):
        dm = FSS1000DataModule(str(tmp_path), num_workers=0)
        dm.trainer = SimpleNamespace(world_size=3, global_rank=rank)
        dm.setup("test")
        shares.append(list(dm.test_dataloader().sampler))
    assert sorted(i for share in shares for i in share) == list(range(7))


def test_perseg_reference_is_the_first_image(tmp_path: Path) -> None:
    for obj, n in (("dog", 3), ("can", 4)):
        for i in range(n):
            image, mask = tmp_path / "Images" / obj / f"{i:02d}.jpg", tmp_path / "Annotations" / obj / f"{i:02d}.png"
            write_pair(image, mask, box_mask(16, 24, i), i, mask_value=128)
    dm = PerSegDataModule(str(tmp_path), num_workers=0)
    dm.setup("test")
    batches = all_batches(dm)
    assert dm.class_names == ["can", "dog"] and len(batches) == 5
    for b in batches:
        assert [Path(p).name for p in b["support_paths"]] == ["00.jpg"] and Path(b["query_path"]).name != "00.jpg"
        np.testing.assert_array_equal(b["query_mask"], box_mask(16, 24, int(Path(b["query_path"]).stem)))


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda root: FSS1000DataModule(root), r"fewshot_data/<class>/<n>\.jpg.*github\.com/HKUSTCV/FSS-1000"),
        (lambda root: PerSegDataModule(root), r"Images/<object>/<nn>\.jpg.*Personalize-SAM"),
        (lambda root: Coco20iDataModule(root), r"annotations/instances_val2014\.json.*images\.cocodataset\.org"),
    ],
)
def test_missing_dataset_names_the_layout_and_where_to_get_it(tmp_path: Path, make, named: str) -> None:
    with pytest.raises(DatasetError, match=f"(?s){named}"):
        make(str(tmp_path / "absent")).setup("test")


def test_missing_split_list_and_mask_are_named(tmp_path: Path) -> None:
    write_fss(tmp_path, {"a_class": 3, "b_class": 3})
    (tmp_path / "fewshot_data" / "a_class" / "2.png").unlink()
    with pytest.raises(DatasetError, match=r"a_class/2\.jpg has no mask"):
        FSS1000DataModule(str(tmp_path), num_workers=0).setup("test")
    with option_style(hydra_style), pytest.raises(DatasetError, match=r"splits/val\.txt not found.*data\.split=all"):
        FSS1000DataModule(str(tmp_path), split="val", num_workers=0).setup("test")


def test_generator_is_deterministic_and_serves_the_fss_reader(tmp_path: Path) -> None:
    out = write_oneshot_like(tmp_path / "a", n_classes=3, n_images=3, size=32, seed=2)
    write_oneshot_like(tmp_path / "b", n_classes=3, n_images=3, size=32, seed=2)
    write_oneshot_like(tmp_path / "c", n_classes=3, n_images=3, size=32, seed=3)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*") if p.name[0] != ".")
    assert len(files) == 3 * 3 * 2 + 1 and out == tmp_path / "a" / "fewshot_data"
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)
    dm = FSS1000DataModule(str(tmp_path / "a"), num_workers=0)
    dm.setup("test")
    assert dm.n_episodes == 9 and all(b["query_mask"].any() for b in all_batches(dm))


def test_generator_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fss1000._write_classes

    def killed(out: Path, *args) -> None:
        real(out, *args)
        raise RuntimeError("killed after writing")

    monkeypatch.setattr(fss1000, "_write_classes", killed)
    with pytest.raises(RuntimeError, match="killed"):
        write_oneshot_like(tmp_path, n_classes=2, n_images=2, size=16)
    assert not (tmp_path / "fewshot_data").exists()
    assert [p.name for p in tmp_path.iterdir() if "fewshot_data" in p.name and not p.name.endswith(".lock")] == []
    monkeypatch.setattr(fss1000, "_write_classes", real)
    dm = FSS1000DataModule(str(tmp_path), generate=True, num_workers=0)
    dm.prepare_data()
    dm.setup("test")
    assert dm.n_episodes == 36  # the config's default set (6 classes x 6 images)
    stamp = (tmp_path / "fewshot_data").stat().st_mtime_ns
    dm.prepare_data()  # an existing set is kept
    assert (tmp_path / "fewshot_data").stat().st_mtime_ns == stamp


# --- the metrics -----------------------------------------------------------------------------------------------------


def hsnet_average_meter(
    episodes: list[tuple[np.ndarray, np.ndarray, int]], nclass: int, class_ids: list[int]
) -> tuple[float, float]:
    """mIoU and FB-IoU as HSNet computes them, transcribed in float64 numpy from juhongm999/hsnet at commit
    6b1bc12b3ff9f3950f49c55ab6f089e8d9e0d191: common/evaluation.py `Evaluator.classify_prediction` (per episode, the
    intersection and union of the background (bin 0) and foreground (bin 1) pixels, union = pred + gt - inter) and
    common/logger.py `AverageMeter` (`update` adds them into [2, nclass] buffers at the episode's class;
    `compute_iou`: iou = inter / max(union, 1), kept for the fold's class_ids, mIoU = mean of the foreground row;
    FB-IoU = mean over the two rows of the fold's summed inter / summed union, with no guard), without its x 100."""
    inter, union = np.zeros((2, nclass)), np.zeros((2, nclass))
    for pred, gt, c in episodes:
        for row, (p, g) in enumerate(((~pred, ~gt), (pred, gt))):
            both = np.logical_and(p, g).sum()
            inter[row, c] += both
            union[row, c] += p.sum() + g.sum() - both
    iou = (inter / np.maximum(union, 1))[:, class_ids]
    with np.errstate(invalid="ignore"):
        fb_iou = (inter[:, class_ids].sum(1) / union[:, class_ids].sum(1)).mean()
    return float(iou[1].mean()), float(fb_iou)


def random_episodes(rng: np.random.Generator, n: int, classes: list[int]) -> list[tuple[np.ndarray, np.ndarray, int]]:
    episodes = []
    for _ in range(n):
        h, w = rng.integers(5, 30, 2)
        gt = rng.random((h, w)) < rng.uniform(0.05, 0.6)
        pred = np.where(rng.random((h, w)) < rng.uniform(0.05, 0.4), ~gt, gt)  # some pixels flipped
        episodes.append((pred, gt, int(rng.choice(classes))))
    return episodes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miou_and_fb_iou_are_hsnets_average_meter(seed: int) -> None:
    rng = np.random.default_rng(seed)
    episodes = random_episodes(rng, 40, [1, 3, 6])
    episodes.append((np.zeros((8, 8), bool), np.zeros((8, 8), bool), 2))  # class 2: only an empty-empty episode
    fold = [1, 2, 3, 5, 6, 9]  # 5 and 9: no episode, IoU 0 in HSNet's mean; 0, 4, 7, 8: another fold's
    episodes += random_episodes(rng, 5, [0, 4])  # another fold's classes: counted, but not in this fold's means
    metric = OneShotIoU(num_classes=10, class_ids=fold)
    for pred, gt, c in episodes:
        metric.update(torch.from_numpy(pred) if c == 3 else pred, gt.astype(np.uint8) if c == 6 else gt, c)
    result = metric.compute()
    miou, fb_iou = hsnet_average_meter(episodes, 10, fold)
    assert 0.1 < miou < 0.9 and 0.1 < fb_iou < 0.9
    assert result["mIoU"].item() == pytest.approx(miou, abs=1e-12)
    assert result["FB-IoU"].item() == pytest.approx(fb_iou, abs=1e-12)
    assert metric.unseen() == [5, 9]
    per_class = metric.class_iou()
    assert torch.isnan(per_class[[5, 7, 8, 9]]).all() and per_class[2] == 0  # no episode: NaN; empty: 0


def test_fb_iou_with_no_foreground_anywhere_is_nan_as_in_hsnet() -> None:
    episodes = [(np.zeros((6, 5), bool), np.zeros((6, 5), bool), c) for c in (0, 1, 1)]
    metric = OneShotIoU(num_classes=3)
    for pred, gt, c in episodes:
        metric.update(pred, gt, c)
    miou, fb_iou = hsnet_average_meter(episodes, 3, [0, 1, 2])
    assert np.isnan(fb_iou) and torch.isnan(metric.compute()["FB-IoU"])  # not (0 + 1) / 2
    assert metric.compute()["mIoU"].item() == miou == 0.0
    with pytest.raises(ValueError, match="class_ids must be some of 0..2"):
        OneShotIoU(num_classes=3, class_ids=[1, 3])


def test_metric_states_sum_across_processes_and_nothing_seen_is_nan() -> None:
    rng = np.random.default_rng(1)
    episodes = [(rng.random((9, 7)) < 0.5, rng.random((9, 7)) < 0.4, int(rng.integers(0, 4))) for _ in range(12)]
    whole, parts = OneShotIoU(4), [OneShotIoU(4), OneShotIoU(4)]
    for k, (pred, gt, c) in enumerate(episodes):
        whole.update(pred, gt, c)
        parts[k % 2].update(pred, gt, c)
    parts[0].merge_state(parts[1])  # what DDP's "sum" reduction does with the states
    assert {k: v.item() for k, v in parts[0].compute().items()} == {k: v.item() for k, v in whole.compute().items()}
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert all(torch.isnan(v) for v in OneShotIoU(4).compute().values())
    with pytest.raises(ValueError, match="differ in size"):
        whole.update(np.zeros((3, 3), bool), np.zeros((3, 4), bool), 0)
    with pytest.raises(ValueError, match="0/1"):
        whole.update(np.full((3, 3), 255), np.zeros((3, 3), bool), 0)
    with pytest.raises(ValueError, match="class_id 4"):
        whole.update(np.zeros((3, 3), bool), np.zeros((3, 3), bool), 4)


# --- the configs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["fss1000", "coco20i", "perseg", "oneshot_synthetic"])
def test_data_configs_build_their_datamodule(data: str, tmp_path: Path) -> None:
    cfg = compose_train([f"data={data}", "seed=7", f"data.root={tmp_path / 'data'}", "data.num_workers=0"], tmp_path)
    dm = instantiate(cfg.data)
    assert dm.seed == 7 and dm.shots == 1
    if data == "oneshot_synthetic":
        dm.prepare_data()
        dm.setup("test")
        assert dm.n_episodes == 36 and len(dm.class_names) == 6
    else:
        with pytest.raises(DatasetError, match="not found"):
            dm.setup("test")

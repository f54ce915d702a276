"""datamodules: layouts, label mappings, transforms, batches and the errors for bad inputs, on tiny sets in tmp_path.

Longer than 300 lines: every segmentation dataset's layout, transforms and errors, one short test each, sharing the generated sets.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import DatasetError, loaders
from datamodules.classification.imagefolder import ImageFolderDataModule
from datamodules.depth.files import load_depth
from datamodules.depth.nyu import NYUDataModule
from datamodules.files import image_size, load_image, load_label
from datamodules.loaders import available_cpus, usable_workers
from datamodules.sam.coco import CocoDataModule
from datamodules.segmentation import ADE20kDataModule, CityscapesDataModule, VOC2012DataModule
from datamodules.segmentation.ade20k import label_map as ade_label_map
from datamodules.synthetic.ade20k import write_ade20k_like
from datamodules.transforms import IGNORE_INDEX, cat_max_ratio_crop_box, eval_transform
from utils.errors import hydra_style, option_style

SMALL = ((40, 60), (50, 80))  # (min_h, max_h), (min_w, max_w) of the synthetic images


def ade(root: Path, **kwargs) -> ADE20kDataModule:
    defaults = {"batch_size": 2, "num_workers": 0, "crop_size": 64, "short_side": 64}
    return ADE20kDataModule(root=str(root), **defaults | kwargs)


def write_png(path: Path, array: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette:
        image = image.convert("P")
        image.putpalette([0] * 768)
    image.save(path)


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def write_jpg(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    write_ade20k_like(tmp_path, n_train=4, n_val=2, size_range=SMALL)
    return tmp_path


def test_generator_layout_and_determinism(tmp_path: Path):
    out = write_ade20k_like(tmp_path / "a", n_train=3, n_val=2, size_range=SMALL, seed=1)
    write_ade20k_like(tmp_path / "b", n_train=3, n_val=2, size_range=SMALL, seed=1)
    assert out == tmp_path / "a" / "ADEChallengeData2016"
    for split, n in (("training", 3), ("validation", 2)):
        images = sorted((out / "images" / split).glob("*.jpg"))
        labels = sorted((out / "annotations" / split).glob("*.png"))
        assert len(images) == n and [p.stem for p in images] == [p.stem for p in labels]
        for image, label in zip(images, labels):
            raw = read(label)
            assert raw.dtype == np.uint8 and raw.shape == read(image).shape[:2]
            assert set(np.unique(raw)) <= set(range(9)) and 0 in raw
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    sizes = {read(p).shape[:2] for p in out.rglob("*.jpg")}
    assert len(sizes) > 1 and all(h != w for h, w in sizes)


def test_ade_label_mapping(tmp_path: Path):
    path = tmp_path / "label.png"
    write_png(path, np.array([[0, 1, 2, 150]], dtype=np.uint8))
    label = load_label(path, ade_label_map(IGNORE_INDEX), tmp_path / "image.jpg", (1, 4))
    assert label.tolist() == [[255, 0, 1, 149]]


def test_train_batch(ade_root: Path):
    dm = ade(ade_root, num_workers=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (2, 64, 64) and batch["label"].dtype == torch.int64
    assert set(batch["label"].unique().tolist()) <= set(range(8)) | {255}


def test_val_keeps_label_size(ade_root: Path):
    dm = ade(ade_root)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert len(batches) == 2
    for batch in batches:
        label_file = Path(batch["path"][0].replace("images", "annotations")).with_suffix(".png")
        h, w = read(label_file).shape
        assert batch["label"].shape == (1, h, w) and batch["label"].dtype == torch.int64
        assert min(batch["image"].shape[2:]) == 64 and batch["image"].shape[2:] != (h, w)


def test_eval_resize_fits_mmseg_box():
    resize = eval_transform(512)
    assert resize(image=np.zeros((512, 683, 3), np.uint8))["image"].shape == (3, 512, 683)
    assert resize(image=np.zeros((300, 3000, 3), np.uint8))["image"].shape == (3, 205, 2048)
    assert resize(image=np.zeros((1000, 600, 3), np.uint8))["image"].shape == (3, 853, 512)


def test_cat_max_ratio_crop():
    label = np.zeros((64, 128), np.uint8)
    label[:, 64:] = 1  # a 64-wide crop at x0 passes only for 16 < x0 < 48, about half of all crops
    label[:8] = 255  # ignored rows do not count

    def passing(cat_max_ratio: float) -> int:
        boxes = [cat_max_ratio_crop_box(label, 64, cat_max_ratio, np.random.default_rng(s)) for s in range(50)]
        assert all((y0, x1 - x0, y1 - y0) == (0, 64, 64) for x0, y0, x1, y1 in boxes)
        return sum(16 < x0 < 48 for x0, *_ in boxes)

    assert passing(0.75) >= 48 and passing(1.0) <= 35  # 1.0 disables the check
    uniform = np.zeros((30, 200), np.uint8)  # never passes: keeps the last box, clipped to the image
    x0, y0, x1, y1 = cat_max_ratio_crop_box(uniform, 64, 0.75, np.random.default_rng(0))
    assert (y0, y1, x1 - x0) == (0, 30, 64) and 0 <= x0 <= 136


def test_voc_layout_and_labels(tmp_path: Path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for split, stem in (("train", "2007_000032"), ("val", "2007_000033")):
        write_jpg(base / "JPEGImages" / f"{stem}.jpg", 20, 30)
        label = np.zeros((20, 30), np.uint8)
        label[5:10, 5:10], label[10] = 15, 255
        write_png(base / "SegmentationClass" / f"{stem}.png", label, palette=True)
        (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(stem + "\n")
    dm = VOC2012DataModule(root=str(tmp_path), num_classes=21, num_workers=0, short_side=32)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["label"].shape == (1, 20, 30) and batch["label"].unique().tolist() == [0, 15, 255]
    assert dm.palette.shape == (21, 3) and dm.palette[15].tolist() == [192, 128, 128]


def test_cityscapes_layout_and_labels(tmp_path: Path):
    ids = np.array([[7, 26, 0, 33], [24, 1, 11, 23]], dtype=np.uint8)
    for city, name in (("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019")):
        write_png(tmp_path / "leftImg8bit" / "val" / city / f"{name}_leftImg8bit.png", np.zeros((2, 4, 3), np.uint8))
        write_png(tmp_path / "gtFine" / "val" / city / f"{name}_gtFine_labelIds.png", ids)
    write_png(tmp_path / "gtFine" / "val" / "bonn" / "bonn_000001_000019_gtFine_labelTrainIds.png", ids // 2)
    dm = CityscapesDataModule(root=str(tmp_path), num_workers=0, short_side=16)
    dm.setup("validate")
    aachen, bonn = list(dm.val_dataloader())
    assert aachen["label"][0].tolist() == [[0, 13, 255, 18], [11, 255, 2, 10]]
    assert bonn["label"][0].tolist() == (ids // 2).tolist()  # labelTrainIds used as they are
    assert dm.class_names[13] == "car" and dm.palette[0].tolist() == [128, 64, 128]


def test_predict_loader(tmp_path: Path):
    write_jpg(tmp_path / "pics" / "b.png", 40, 70)
    write_jpg(tmp_path / "pics" / "a.jpg", 50, 30)
    (tmp_path / "pics" / "notes.txt").write_text("not an image")
    dm = ade(tmp_path, predict_dir=str(tmp_path / "pics"))
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert [Path(b["path"][0]).name for b in batches] == ["a.jpg", "b.png"]
    assert [b["size"].tolist() for b in batches] == [[[50, 30]], [[40, 70]]]
    assert batches[0]["image"].shape == (1, 3, 107, 64)


@pytest.mark.parametrize(
    "array, red",
    [
        (np.full((6, 5), 90, np.uint8), 90),  # grey
        (np.full((6, 5, 4), 90, np.uint8), 90),  # RGBA
        (np.full((6, 5), 40000, np.uint16), 40000 >> 8),  # 16-bit grey
    ],
)
def test_odd_images_become_rgb(tmp_path: Path, array: np.ndarray, red: int):
    Image.fromarray(array).save(tmp_path / "odd.png")
    image = load_image(tmp_path / "odd.png")
    assert image.shape == (6, 5, 3) and image.dtype == np.uint8 and image[0, 0, 0] == red


def test_missing_dataset(tmp_path: Path):
    with pytest.raises(DatasetError, match=r"(?s)ADEChallengeData2016/images.*data\.download=true.*data\.generate"):
        ade(tmp_path).setup("fit")


def test_cityscapes_download_refused(tmp_path: Path):
    dm = CityscapesDataModule(root=str(tmp_path), download=True)
    with pytest.raises(DatasetError, match="leftImg8bit_trainvaltest.zip.*gtFine_trainvaltest.zip"):
        dm.prepare_data()


def test_wrong_num_classes(tmp_path: Path):
    with pytest.raises(DatasetError, match="num_classes=150"):
        ADE20kDataModule(root=str(tmp_path), num_classes=151)


def val_files(root: Path) -> tuple[Path, Path]:
    image = next((root / "ADEChallengeData2016" / "images" / "validation").glob("*.jpg"))
    return image, root / "ADEChallengeData2016" / "annotations" / "validation" / f"{image.stem}.png"


def load_val(root: Path) -> None:
    dm = ade(root)
    dm.setup("validate")
    list(dm.val_dataloader())


def test_label_size_mismatch(ade_root: Path):
    image, label = val_files(ade_root)
    write_png(label, np.ones((7, 9), np.uint8))
    with pytest.raises(DatasetError, match=rf"(?s){label.name} is 9x7.*{image.name} is"):
        load_val(ade_root)


def test_label_out_of_range(ade_root: Path):
    _, label = val_files(ade_root)
    raw = read(label)
    raw[0, :2] = (151, 200)
    write_png(label, raw)
    with pytest.raises(DatasetError, match=rf"{label.name} holds value\(s\) \[151, 200\]"):
        load_val(ade_root)


def test_unreadable_image(ade_root: Path):
    image, _ = val_files(ade_root)
    image.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=f"Cannot read image .*{image.name}"):
        load_val(ade_root)


def test_image_without_label(ade_root: Path):
    image, label = val_files(ade_root)
    label.unlink()
    with pytest.raises(DatasetError, match=f"Image .*{image.name} has no label file .*{label.name}"):
        load_val(ade_root)


def test_label_without_image(ade_root: Path):
    image, label = val_files(ade_root)
    image.unlink()
    with pytest.raises(DatasetError, match=f"Label .*{label.name} has no image file .*{image.name}"):
        load_val(ade_root)


def write_bomb(path: Path) -> Path:
    """14000 x 14000 pixels, over twice PIL.Image.MAX_IMAGE_PIXELS, in a 24 kB 1-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (14000, 14000)).save(path)
    return path


def test_decompression_bombs_are_refused_wherever_images_are_read(tmp_path: Path) -> None:
    bomb = write_bomb(tmp_path / "huge.png")
    for read_file, what in (
        (lambda: load_image(bomb), "image"),
        (lambda: load_label(bomb, ade_label_map(IGNORE_INDEX), bomb, (1, 1)), "label"),
        (lambda: load_depth(bomb, 1000.0, bomb, (1, 1)), "depth map"),
        (lambda: image_size(bomb), "image"),
    ):
        with pytest.raises(DatasetError, match=rf"The {what} {bomb} is too large.*196000000 pixels.*MAX_IMAGE_PIXELS"):
            read_file()


def test_decompression_bomb_in_predict_dir_is_named(tmp_path: Path) -> None:
    write_jpg(tmp_path / "photos" / "a.jpg", 20, 30)
    bomb = write_bomb(tmp_path / "photos" / "b.png")
    dm = ade(tmp_path, predict_dir=str(tmp_path / "photos"))
    dm.setup("predict")
    assert dm.predict_set[0]["size"].tolist() == [20, 30]
    with pytest.raises(DatasetError, match=f"{bomb} is too large"):
        dm.predict_set[1]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"num_workers": -1}, "num_workers=-1"),
        ({"crop_size": 0}, "crop_size=0"),
        ({"short_side": -64}, "short_side=-64"),
    ],
)
def test_invalid_loader_numbers_are_refused_when_built(tmp_path: Path, kwargs: dict, named: str) -> None:
    with pytest.raises(DatasetError, match=rf"^{named} is not a valid .*at least"):
        ade(tmp_path, **kwargs)


def test_invalid_loader_numbers_are_spelled_as_overrides_under_train_py() -> None:
    with option_style(hydra_style), pytest.raises(DatasetError, match=r"^data\.crop_size=\[416, 0\] "):
        NYUDataModule("nyu", crop_size=[416, 0])
    with option_style(hydra_style), pytest.raises(DatasetError, match=r"^data\.batch_size=0 "):
        ImageFolderDataModule("images", batch_size=0)
    with option_style(hydra_style), pytest.raises(DatasetError, match=r"^data\.num_workers=-2 "):
        CocoDataModule("coco", num_workers=-2)


def test_workers_never_exceed_the_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = available_cpus()
    assert ade(tmp_path, num_workers=cpus + 3).num_workers == cpus
    assert ade(tmp_path, num_workers=0).num_workers == 0
    monkeypatch.setattr(loaders, "available_cpus", lambda: 1)
    assert usable_workers(4) == 1 and usable_workers(1) == 1


def test_evaluation_under_ddp_sees_every_image_once(tmp_path: Path) -> None:
    """torch's DistributedSampler pads 7 images to 3 x 3 with repeats; each process must get its own, once."""
    from types import SimpleNamespace

    write_ade20k_like(tmp_path, n_train=4, n_val=7)
    shares = []
    for rank in range(3):
        dm = ade(tmp_path)
        dm.trainer = SimpleNamespace(world_size=3, global_rank=rank)
        dm.setup("validate")
        shares.append(list(dm.val_dataloader().sampler))
    assert sorted(i for share in shares for i in share) == list(range(7))
    dm.trainer = SimpleNamespace(world_size=8, global_rank=0)
    with pytest.raises(DatasetError, match="7 image"):
        dm.val_dataloader()

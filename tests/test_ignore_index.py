"""data.ignore_index: every segmentation datamodule marks unlabelled pixels with it, and nothing else changes.

Each test builds one small set in tmp_path and reads it twice, with the default ignore value and with another one,
under the same seed: the two runs must agree pixel by pixel once the ignore value is swapped.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import DatasetError
from datamodules.segmentation import ADE20kDataModule, CityscapesDataModule, VOC2012DataModule
from datamodules.segmentation.base import SegmentationDataModule
from datamodules.synthetic.ade20k import write_ade20k_like
from datamodules.transforms import IGNORE_INDEX, cat_max_ratio_crop_box
from utils.errors import hydra_style, option_style

OTHER = 200  # an ignore value that is neither the default nor a class id of any of the three datasets
SMALL = ((40, 60), (50, 80))  # (min_h, max_h), (min_w, max_w) of the synthetic images


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def eval_labels(dm: SegmentationDataModule) -> list[np.ndarray]:
    """The (H, W) labels of the validation split, as the val loader yields them."""
    dm.setup("validate")
    return [batch["label"][0].numpy() for batch in dm.val_dataloader()]


def train_labels(dm: SegmentationDataModule, seed: int = 0) -> list[np.ndarray]:
    """The (crop, crop) labels of two passes over the training split, augmented under `seed`."""
    torch.manual_seed(seed)  # setup ties the augmentation seed to torch's
    dm.setup("fit")
    return [dm.train_set[i]["label"].numpy() for _ in range(2) for i in range(len(dm.train_set))]


def assert_same_but_ignore(default: np.ndarray, other: np.ndarray) -> None:
    """`other` is `default` with IGNORE_INDEX replaced by OTHER, and holds no IGNORE_INDEX."""
    assert default.shape == other.shape
    assert ((default == IGNORE_INDEX) == (other == OTHER)).all()
    assert (default[default != IGNORE_INDEX] == other[other != OTHER]).all()
    assert not (other == IGNORE_INDEX).any()


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    write_ade20k_like(tmp_path, n_train=4, n_val=2, size_range=SMALL)
    return tmp_path


def ade(root: Path, **kwargs) -> ADE20kDataModule:
    defaults = {"batch_size": 1, "num_workers": 0, "crop_size": 64, "short_side": 64}
    return ADE20kDataModule(root=str(root), **defaults | kwargs)


def test_the_datamodule_keeps_its_ignore_index(ade_root: Path):
    assert ade(ade_root).ignore_index == IGNORE_INDEX
    assert ade(ade_root, ignore_index=OTHER).ignore_index == OTHER


def test_ade20k_other_becomes_the_ignore_index(ade_root: Path):
    default, other = eval_labels(ade(ade_root)), eval_labels(ade(ade_root, ignore_index=OTHER))
    files = sorted((ade_root / "ADEChallengeData2016" / "annotations" / "validation").glob("*.png"))
    for raw, a, b in zip((read(f) for f in files), default, other, strict=True):
        assert (raw == 0).any()  # the generator draws a patch of class 0 ("other") in every image
        assert ((raw == 0) == (b == OTHER)).all()
        assert_same_but_ignore(a, b)


@pytest.mark.parametrize(
    "scale_range, crop_size",
    [((0.5, 0.5), 64), ((2.0, 2.0), 48)],
    ids=["padded", "cropped"],  # images smaller than the crop (padding) / larger (cat_max_ratio draws boxes)
)
def test_ade20k_training_crops_pad_and_count_with_the_ignore_index(ade_root: Path, scale_range, crop_size):
    kwargs = {"scale_range": scale_range, "crop_size": crop_size}
    default = train_labels(ade(ade_root, **kwargs))
    other = train_labels(ade(ade_root, ignore_index=OTHER, **kwargs))
    for a, b in zip(default, other, strict=True):
        assert_same_but_ignore(a, b)
    if scale_range[1] < 1:  # short side 64 * 0.5 and long side below 64: the last row and column are padding
        assert all((b[-1] == OTHER).all() and (b[:, -1] == OTHER).all() for b in other)
    assert any((b == OTHER).any() for b in other)


def test_cat_max_ratio_skips_the_ignore_index():
    label = np.zeros((64, 128), np.uint8)
    label[:, 64:] = 1
    label[:8] = IGNORE_INDEX
    moved = np.where(label == IGNORE_INDEX, OTHER, label).astype(np.uint8)
    for seed in range(20):
        expected = cat_max_ratio_crop_box(label, 64, 0.75, np.random.default_rng(seed))
        got = cat_max_ratio_crop_box(moved, 64, 0.75, np.random.default_rng(seed), ignore_index=OTHER)
        assert got == expected


def test_cityscapes_unevaluated_ids_become_the_ignore_index(tmp_path: Path):
    ids = np.array([[7, 26, 0, 33], [24, 1, 11, 23]], dtype=np.uint8)  # 0 and 1 are not evaluated
    for city, name in (("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019")):
        write_png(tmp_path / "leftImg8bit" / "val" / city / f"{name}_leftImg8bit.png", np.zeros((2, 4, 3), np.uint8))
        write_png(tmp_path / "gtFine" / "val" / city / f"{name}_gtFine_labelIds.png", ids)
    train_ids = np.array([[0, 18, 255, 3], [255, 7, 1, 0]], dtype=np.uint8)  # 255: not evaluated
    write_png(tmp_path / "gtFine" / "val" / "bonn" / "bonn_000001_000019_gtFine_labelTrainIds.png", train_ids)

    def city(**kwargs) -> CityscapesDataModule:
        return CityscapesDataModule(root=str(tmp_path), num_workers=0, short_side=16, **kwargs)

    default, other = eval_labels(city()), eval_labels(city(ignore_index=OTHER))
    assert all((a == IGNORE_INDEX).any() for a in default)  # both file kinds hold ignored pixels
    for a, b in zip(default, other, strict=True):
        assert_same_but_ignore(a, b)
    assert ((train_ids == 255) == (other[1] == OTHER)).all()


def test_voc_border_becomes_the_ignore_index(tmp_path: Path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    label = np.zeros((20, 30), np.uint8)
    label[5:10, 5:10], label[10] = 15, 255  # 255: the object border
    write_png(base / "JPEGImages" / "2007_000033.jpg", np.zeros((20, 30, 3), np.uint8))
    write_png(base / "SegmentationClass" / "2007_000033.png", label)
    (base / "ImageSets" / "Segmentation" / "val.txt").parent.mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")

    def voc(**kwargs) -> VOC2012DataModule:
        return VOC2012DataModule(root=str(tmp_path), num_workers=0, short_side=32, **kwargs)

    (a,), (b,) = eval_labels(voc()), eval_labels(voc(ignore_index=OTHER))
    assert ((label == 255) == (b == OTHER)).all()
    assert_same_but_ignore(a, b)


@pytest.mark.parametrize("value", [3, 149, 300, -1, 200.0, "255", True])
def test_a_bad_ignore_index_is_refused(tmp_path: Path, value):
    with option_style(hydra_style), pytest.raises(DatasetError, match=r"^data\.ignore_index=") as err:
        ade(tmp_path, ignore_index=value)
    assert f"{len(ADE20kDataModule.class_names)}..255" in str(err.value)


def test_the_smallest_free_value_is_accepted(tmp_path: Path):
    dm = CityscapesDataModule(root=str(tmp_path), ignore_index=len(CityscapesDataModule.class_names))
    assert dm.ignore_index == dm.num_classes

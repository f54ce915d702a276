"""docs/architecture.md's "To add a dataset", followed as written: one module, one data config, and every head and the
feature cache work with it unchanged."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict
from PIL import Image

import train
from tests.helpers import tiny_run

# Step 1 of the guide: datamodules/<task>/<name>.py (here written to a temporary package, as a user's own would be).
MODULE = '''
"""Shapes: discs on a plain background, 3 classes; label files hold 0 (background), 1, 2 and 9 (unlabelled)."""

import numpy as np

from datamodules.segmentation.base import SegmentationDataModule
from datamodules.files import make_label_map


class ShapesDataModule(SegmentationDataModule):
    name = "Shapes"
    class_names = ("background", "red disc", "green disc")
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8)
    dirname = "shapes"
    layout = "  shapes/{train,val}/*.jpg with *.png labels beside them"
    how_to_get = "Write it with the test's generator."

    def _samples(self, split):
        folder = self.root / "shapes" / split
        self._require(folder)
        mapping = make_label_map({0: 0, 1: 1, 2: 2, 9: self.ignore_index}, "0, 1, 2 and 9 (unlabelled)")
        return [(image, image.with_suffix(".png"), mapping) for image in sorted(folder.glob("*.jpg"))]
'''

# Step 2 of the guide: configs/data/<name>.yaml.
CONFIG = """
_target_: shapes_data.ShapesDataModule
root: ROOT
num_classes: 3
ignore_index: 255
batch_size: 2
num_workers: 0
crop_size: 56
short_side: 56
"""


def write_shapes(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        folder = root / "shapes" / split
        folder.mkdir(parents=True)
        for index in range(count):
            label = np.zeros((60, 80), np.uint8)
            yy, xx = np.mgrid[:60, :80]
            for cls in (1, 2):
                cy, cx = rng.integers(10, 50), rng.integers(10, 70)
                label[(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = cls
            label[:2] = 9
            image = np.stack([label == 1, label == 2, label == 0], -1).astype(np.uint8) * 200 + 20
            Image.fromarray(image).save(folder / f"{index}.jpg", quality=95)
            Image.fromarray(label).save(folder / f"{index}.png")


@pytest.mark.parametrize("experiment", ["quickstart", "cached_quickstart"])
def test_a_dataset_added_as_the_guide_says_trains_a_head(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, experiment: str
) -> None:
    package = tmp_path / "user_code"
    package.mkdir()
    (package / "shapes_data.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.delitem(sys.modules, "shapes_data", raising=False)
    write_shapes(tmp_path / "data")
    cfg = tiny_run(tmp_path, tiny_checkpoint, "data.generate_n_train=4", experiment=experiment)
    with open_dict(cfg):
        cfg.data = OmegaConf.create(CONFIG.replace("ROOT", str(tmp_path / "data")))
    metrics = train.run(cfg)
    assert 0.0 <= metrics["test/mIoU"] <= 1.0 and cfg.head.num_classes == 3

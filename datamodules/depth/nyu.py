"""NYU-Depth v2 in the layout of the depth toolbox the DINOv2 evaluation reads (Eigen split)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.depth.base import DepthDataModule
from datamodules.depth.files import read_split
from datamodules.synthetic.nyu import write_nyu_like

DIRNAME = "nyu"


class NYUDataModule(DepthDataModule):
    """NYU-Depth v2 under root/nyu; 480x640 RGB + 16-bit depth PNGs in millimetres, 0.001-10 m, Eigen crop.

    generate=True makes prepare_data write a small synthetic set in this layout (generate_n_train /
    generate_n_test images of generate_size (H, W)) when root/nyu is absent.
    """

    name = "NYU-Depth v2"
    depth_scale = 1000.0
    layout = (
        "  nyu/nyu_train.txt, nyu/nyu_test.txt   (lines 'SCENE/rgb_00000.jpg SCENE/sync_depth_00000.png 518.8579',\n"
        "                                         paths relative to nyu/, a leading '/' allowed)\n"
        "  nyu/SCENE/rgb_*.jpg                   (RGB)\n"
        "  nyu/SCENE/sync_depth_*.png            (16-bit PNG, depth in millimetres, 0 = no depth)"
    )
    how_to_get = (
        "Get the toolbox's NYU archive (sync/ train set and official_splits/ test set with nyu_train.txt / "
        "nyu_test.txt, as Monocular-Depth-Estimation-Toolbox and BTS distribute it) and unpack it as data.root/nyu, "
        "or set data.generate=true to write a small synthetic set in this layout."
    )

    def __init__(
        self,
        root: str,
        *,
        generate: bool = False,
        generate_n_train: int = 24,
        generate_n_test: int = 8,
        generate_size: tuple[int, int] = (480, 640),
        **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        self.generate, self.generate_n_train, self.generate_n_test = generate, generate_n_train, generate_n_test
        self.generate_size = (int(generate_size[0]), int(generate_size[1]))

    def prepare_data(self) -> None:
        if self.generate and not (self.root / DIRNAME).is_dir():
            write_nyu_like(self.root, self.generate_n_train, self.generate_n_test, self.generate_size)

    def _samples(self, split: str) -> list[tuple[Path, Path]]:
        base = self.root / DIRNAME
        self._require(base)
        return read_split(base / f"nyu_{split}.txt", base, base, self.layout)

"""KITTI (Eigen split, projected LiDAR ground truth) in the layout of the depth toolbox the DINOv2 evaluation reads."""

from __future__ import annotations

from pathlib import Path

from datamodules.depth.base import DepthDataModule
from datamodules.depth.files import read_split

DIRNAME = "kitti"


class KITTIDataModule(DepthDataModule):
    """KITTI under root/kitti; 16-bit PNGs of depth x 256, 0.001-80 m, KB crop to 352x1216, Garg crop for metrics."""

    name = "KITTI"
    depth_scale = 256.0
    top_crop = (352, 1216)
    layout = (
        "  kitti/kitti_eigen_train.txt, kitti/kitti_eigen_test.txt\n"
        "      lines 'DATE/DRIVE_sync/image_02/data/0000000069.png DRIVE_sync/proj_depth/groundtruth/image_02/0000000069.png 721.5377'\n"
        "      (image relative to kitti/input/, depth relative to kitti/gt_depth/; depth 'None' lines are skipped)\n"
        "  kitti/input/DATE/DRIVE_sync/image_02/data/*.png          (raw RGB)\n"
        "  kitti/gt_depth/DRIVE_sync/proj_depth/groundtruth/image_02/*.png   (16-bit PNG, depth x 256, 0 = no depth)"
    )
    how_to_get = (
        "Download the KITTI raw sequences (input/) and the KITTI depth-completion annotated depth maps "
        "(gt_depth/) from https://www.cvlibs.net/datasets/kitti/ (needs a login), with the Eigen split files."
    )

    def _samples(self, split: str) -> list[tuple[Path, Path]]:
        base = self.root / DIRNAME
        self._require(base / "input")
        self._require(base / "gt_depth")
        return read_split(base / f"kitti_eigen_{split}.txt", base / "input", base / "gt_depth", self.layout)

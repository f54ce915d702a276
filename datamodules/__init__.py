"""LightningDataModules by task, fed to the frozen backbones.

- `segmentation/` ADE20k, Pascal VOC 2012, Cityscapes; `depth/` NYU-Depth v2, KITTI;
- `classification/` class folders and few-shot episodes; `sam/` COCO-format instances, interactive sets, BSDS500;
- `oneshot/` FSS-1000, COCO-20i, PerSeg episodes; `retrieval/` revisited Oxford and Paris;
- `synthetic/` small generated sets in those layouts (tests, quickstarts); `feature_cache/` tokens extracted once.

At the top, what the tasks share: file reading (`files`), loaders and their checks (`loaders`), datasets and
transforms, archive downloads, the data-only pickle reader, the fast extraction loader and `DatasetError`.
"""

import os

# albumentations asks PyPI for a newer version at import: up to 2 s of waiting and a warning on every offline run,
# from a data pipeline that should touch no network. Its documented switch turns that off (a user's setting wins).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from datamodules.errors import DatasetError

__all__ = ["DatasetError"]

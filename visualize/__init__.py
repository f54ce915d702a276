"""Dense-feature tools: PCA maps of patch features and patch matching across images.

CLIs: ``python -m visualize.pca`` and ``python -m visualize.match``. The Lightning callback that logs
PCA maps during validation is ``visualize.callback.PCAMapCallback``.

The names below are imported on first use, so that the CLIs' ``--help`` answers before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "patch_maps": "visualize.features",
    "Matches": "visualize.matching",
    "mutual_matches": "visualize.matching",
    "patch_centres": "visualize.matching",
    "spread_matches": "visualize.matching",
    "PCAMaps": "visualize.pca_maps",
    "foreground_masks": "visualize.pca_maps",
    "pca_rgb": "visualize.pca_maps",
}

__all__ = [
    "Matches",
    "PCAMaps",
    "foreground_masks",
    "mutual_matches",
    "patch_centres",
    "patch_maps",
    "pca_rgb",
    "spread_matches",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'visualize' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)

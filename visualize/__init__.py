"""Dense-feature tools: PCA maps of patch features and patch matching across images.

CLIs: ``python -m visualize.pca`` and ``python -m visualize.match``. The Lightning callback that logs
PCA maps during validation is ``visualize.callback.PCAMapCallback``.
"""

from visualize.features import patch_maps
from visualize.matching import Matches, mutual_matches, patch_centres, spread_matches
from visualize.pca_maps import PCAMaps, foreground_masks, pca_rgb

__all__ = ["Matches", "PCAMaps", "foreground_masks", "mutual_matches", "patch_centres", "patch_maps", "pca_rgb", "spread_matches"]

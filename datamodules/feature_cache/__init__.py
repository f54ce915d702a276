"""Feature cache: extract a frozen backbone's tokens once, then train heads from them many times.

One cache lives in ``root / <backbone>-<first 16 hex digits of the key's SHA-256>`` (layout and checks:
`datamodules.feature_cache.store`), beside its lock ``<backbone>-<digest>.lock``:

    key.json               the CacheKey; checked on every open, a mismatch is an error, never a reuse
    paths.json             the image path of every source sample
    {array}_{k:05d}.npy    shard k of each array, ``samples_per_shard`` rows (the last shard fewer):
                           tokens_{block} (n, C, h, w) float16, class_tokens_{block} (n, C) float16,
                           label (n, H, W) uint8 or depth (n, 1, H, W) float16
    shard_{k:05d}.json     written last, atomically: shard k is complete, and what it holds (key, rows, arrays)
    manifest.json          written once every shard is: the cache is complete and readable

Sample ``j`` of a cache is view ``j % V`` of source sample ``j // V`` (V = max(views, 1)). ``views=0`` is one
fixed view per image (resize + centre crop, no randomness); ``views=V`` are V draws of the datamodule's own
training augmentation, view v of sample i seeded by (seed, i, v), so that a resumed or repeated extraction
writes the same bytes.
"""

from .cache import FeatureCache
from .reading import CachedFeatureDataModule, CachedFeatures
from .store import FORMAT_VERSION, KEY_FILE, MANIFEST_FILE, PATHS_FILE, CacheError, CacheKey, ShardLayout

__all__ = [
    "FORMAT_VERSION",
    "KEY_FILE",
    "MANIFEST_FILE",
    "PATHS_FILE",
    "CacheError",
    "CacheKey",
    "CachedFeatureDataModule",
    "CachedFeatures",
    "FeatureCache",
    "ShardLayout",
]

"""Layer-state features: the on-disk cache (:mod:`.store`), live encoding (:mod:`.live`), the read side (:mod:`.features`)."""

from crossan.cache.features import FeatureSource, TensorFeatures
from crossan.cache.live import LiveFeatures
from crossan.cache.store import (
    CacheError,
    CacheMismatchError,
    CacheMissingError,
    build_cache,
    cache_command,
    cache_root,
    join_shards,
    open_cache,
    open_features,
)

__all__ = [
    "CacheError",
    "CacheMismatchError",
    "CacheMissingError",
    "FeatureSource",
    "LiveFeatures",
    "TensorFeatures",
    "build_cache",
    "cache_command",
    "cache_root",
    "join_shards",
    "open_cache",
    "open_features",
]

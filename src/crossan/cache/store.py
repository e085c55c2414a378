"""Older home of the cache code, now split into :mod:`crossan.cache` modules; these names stay importable."""

from crossan.cache.build import build_cache, cache_command  # noqa: F401
from crossan.cache.layout import cache_command_line, cache_root, default_cache_dir, preset_folder  # noqa: F401
from crossan.cache.manifest import expected_manifest, manifest_differences, read_manifest  # noqa: F401
from crossan.cache.read import open_cache, open_features  # noqa: F401
from crossan.cache.shards import join_shards  # noqa: F401
from crossan.cache.workarea import ModalityReport, WorkArea, batch_ranges, shard_span  # noqa: F401
from crossan.errors import CacheError, CacheMismatchError, CacheMissingError  # noqa: F401

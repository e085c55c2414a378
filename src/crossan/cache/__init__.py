"""Layer-state features: each item's pooled tapped states per modality, computed once and cached, or live.

Layout (``ROOT`` = ``cfg.cache.dir``, or :func:`~crossan.cache.layout.default_cache_dir`:
``$CROSSAN_CACHE_DIR/<dataset>-<item fingerprint>/<preset>``, with ``<preset>-<hash>`` instead of
``<preset>`` for a modality whose encoder settings the run changes; the item fingerprint hashes the item
ids in row order only, so editing a title or media file keeps the folder)::

    ROOT/
      <modality>/                    a completed cache, only ever replaced as a whole
        states.npy                   float16 [N+1, K, D]; row 0 (padding) and absent items are zeros
        present.npy                  bool [N+1]; False for row 0 and items without the modality
        sources.npy                  per row: what it was made from (the media file's size, mtime, SHA-256
                                     and path digest; the title's length and SHA-256)
        manifest.json                what produced the states (see below), with the arrays' checksums
        sources.next.npy             only while ``crossan cache`` records the new times of files touched
                                     with the same bytes: written first, named by the manifest, then renamed
                                     over sources.npy; a build killed in between finishes or drops it
                                     (:func:`~crossan.cache.workarea.recover_sources`), encoding nothing;
                                     until then readers and shards accept the old record once the
                                     manifest names this one (:func:`~crossan.cache.integrity.check_files`)
      <modality>.partial/            an interrupted single-process build; the next build resumes it
        states.npy, present.npy      preallocated ``open_memmap`` arrays, filled batch by batch
        done.npy                     bool [batches]: batches whose rows are flushed to disk
        corrupt.jsonl                corrupt files marked missing so far (``cache.on_corrupt=missing``)
        plan.json                    the build plan; a partial build is resumed only under an equal plan
      <modality>.shards/<i>-of-<n>/  shard i of an n-way build: the same files over the shard's rows,
                                     plus COMPLETE once finished; :func:`join_shards` assembles them
      <modality>.old/                the cache being replaced, for the instant between the two renames that
                                     install its replacement; a build killed there leaves it, and the next
                                     build puts it back (then installs the finished ``.partial``) or deletes it

Rows ``1..N`` are encoded in batches of ``encoders.batch_size`` (batch b: rows ``1 + b·B … (b+1)·B``);
shards take contiguous runs of whole batches, so every build — interrupted and resumed, sharded and
joined, or in one go — runs the same batches and writes the same bytes. A build never touches a
completed cache until its replacement is complete: the finished work folder (its manifest written last,
its build records deleted) is renamed into place. A build killed after the manifest is written leaves a
finished ``.partial`` that the next build of the same settings installs as it is, encoding nothing.

``manifest.json`` records the checkpoint, ``random_init``, family, layers, width, taps, pooling, the
preprocessing settings, the item-list fingerprint (:func:`~crossan.cache.layout.item_key`: the ids of rows
1..N in order, no titles or paths), N, presence counts, the corrupt files marked missing, the processor's
resolved settings, the library versions and ``build``: the batch size, the compute dtype the encoders ran
at (``precision`` resolved on the device: ``bfloat16`` or ``float32``) and the device type.
:func:`open_cache` compares the fields that determine the model and its inputs
(:data:`~crossan.cache.layout.COMPARED_FIELDS`) with what the current configuration would produce and
refuses a cache that differs (:class:`CacheMismatchError`).

``build`` is not compared there: the states are stored in float16 whatever computed them, so a run of any
``precision`` reads a cache built at another (``crossan cache`` reports ``up to date``, says how the cache
was built, and rebuilds nothing; remove the folder to build it again). It is part of a *build's* identity
instead, so that no cache mixes rows computed two ways: a partial build (or shard) started under another
compute dtype, device type or batch size is discarded, saying what changed; shards built under different
ones are not joined (:class:`CacheMismatchError` listing each shard's); and a cache whose titles or media
files changed is re-encoded in full, not batch by batch, when it was built another way (or by a crossan
that did not record it). Manifests of older crossan versions, without these keys, still open ("compute
dtype not recorded").

Integrity (:mod:`.integrity`): opening a cache checks each array's size and header against the manifest,
and its SHA-256 when ``states.npy`` is at most 256 MiB; an edited title, or a media file that appeared,
disappeared, moved to other bytes or changed size or mtime (and whose content hash differs) makes the
cache stale, and a run refuses it naming the items: ``crossan cache`` re-encodes only the batches holding
changed items, in the same folder (the result equals a fresh build), and rebuilds a damaged cache.
Adding, removing or reordering items changes the item fingerprint: another cache, built in full.
``crossan cache --verify`` hashes everything, scans every row for NaN/inf and re-hashes every media file.
A media file with a new mtime is hashed at each open until ``crossan cache`` records its new time (it
does so when the bytes are the same, finding the cache up to date).
A batch of non-finite states is refused when it is built, naming the modality and item.

Concurrent builds of the same modality into the same folder take turns (:mod:`.lock`: an ``flock`` on
``ROOT/.<modality>.lock``; the second ``crossan cache`` says it waits, then finds the cache up to date).
Shards of one build lock only their own shard, so they run side by side.

Modules: :mod:`.layout` (folders, file names, locations), :mod:`.manifest` (what built a cache; the
staleness check), :mod:`.workarea` (plans, resumable work folders, reports), :mod:`.integrity` (sources,
checksums, verification), :mod:`.build` (encoding, ``crossan cache``), :mod:`.lock` (one builder at a time), :mod:`.shards` (joining a sharded build),
:mod:`.listing` (what a cache folder holds; removing outdated caches), :mod:`.read` (opening a run's features),
:mod:`.features` (the feature sources: :class:`TensorFeatures` over the arrays, :class:`LiveFeatures`
over the encoders).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crossan.errors import CacheError, CacheMismatchError, CacheMissingError

_LAZY = {
    "build_cache": "build", "cache_command": "build",
    "FeatureSource": "features", "LiveFeatures": "features", "TensorFeatures": "features",
    "cache_root": "layout", "default_cache_dir": "layout", "modality_folder": "layout",
    "open_cache": "read", "open_features": "read",
    "join_shards": "shards",
}
"""Names imported from their submodule on first use (PEP 562), so that a light submodule
(``crossan.cache.layout``, ``.listing``) does not import torch through this package."""

if TYPE_CHECKING:
    from crossan.cache.build import build_cache, cache_command
    from crossan.cache.features import FeatureSource, LiveFeatures, TensorFeatures
    from crossan.cache.layout import cache_root, default_cache_dir, modality_folder
    from crossan.cache.read import open_cache, open_features
    from crossan.cache.shards import join_shards


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"crossan.cache.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'crossan.cache' has no attribute {name!r}")


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
    "default_cache_dir",
    "modality_folder",
    "join_shards",
    "open_cache",
    "open_features",
]

"""Reading the cache: a run's states after checking each manifest against the run, in memory when they fit
(``cache.memory_limit_gb``), memory-mapped otherwise; or the encoders live (``cached=false``)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crossan.cache.features import TensorFeatures
from crossan.cache.integrity import (
    VERIFY_ON_OPEN_BYTES,
    changed_rows,
    check_files,
    describe_changed,
    describe_rows,
    load_array,
    nonfinite_problems,
)
from crossan.cache.layout import (
    PRESENT,
    SOURCES,
    STATES,
    as_built,
    cache_command_line,
    cache_root,
    check_modalities,
    item_records,
    modality_folder,
)
from crossan.cache.lock import lock_path, read_lock
from crossan.cache.manifest import expected_manifest, manifest_differences, read_manifest
from crossan.errors import CacheError, CacheMismatchError, CacheMissingError

if TYPE_CHECKING:
    from crossan.config import Config

def open_cache(cfg: Config, data: Any, modalities: list[str], mmap: bool = True) -> TensorFeatures:
    """The cached states of ``modalities`` after checking each manifest against the run.

    ``mmap``: memory-map the state arrays (read-only; rows are read as they are gathered) rather than
    reading them into memory. A cache some of whose titles or media files changed since it was built is
    refused (:class:`CacheMismatchError` naming the items and the ``crossan cache`` command, which
    re-encodes only their batches), as is one that does not match the run or is damaged.
    """
    modalities = check_modalities(modalities)
    roots = {m: cache_root(cfg, data, m) for m in modalities}
    with ExitStack() as held:  # one build's manifest and arrays: a `crossan cache` writing them is waited for
        for m in modalities:
            held.enter_context(read_lock(lock_path(roots[m], m), f"the {m} cache in {roots[m]}"))
        return _open_cache(cfg, data, modalities, roots, mmap)


def _open_cache(cfg: Config, data: Any, modalities: list[str], roots: dict[str, Path], mmap: bool
                ) -> TensorFeatures:
    """:func:`open_cache`'s reading and checks, under its read locks."""
    from crossan.encoders import resolve_specs

    specs = resolve_specs(cfg, modalities)
    absent = [m for m in modalities if read_manifest(roots[m] / m) is None]
    if absent:
        partial = [m for m in absent  # <m>.old: a build killed while installing, finished by the next one
                   if any((roots[m] / f"{m}.{kind}").exists() for kind in ("partial", "shards", "old"))]
        hint = f" ({', '.join(partial)}: an unfinished build is there; the command resumes it)" if partial else ""
        where = ", ".join(str(roots[m] / m) for m in absent)
        raise CacheMissingError(
            f"no layer-state cache for {', '.join(absent)} ({where}){hint}. Build it with:\n"
            f"  {cache_command_line(cfg, absent)}\n(or run with cached=false to encode items live)"
        )
    diffs: list[str] = []
    manifests = {}
    for m in modalities:
        manifests[m] = read_manifest(roots[m] / m)
        diffs += manifest_differences(m, manifests[m], expected_manifest(m, specs[m], data))
    if diffs:
        where = ", ".join(dict.fromkeys(str(roots[m]) for m in modalities))
        command = cache_command_line(as_built(cfg, manifests, modalities), modalities)
        raise CacheMismatchError(f"the cache in {where} does not match this run:\n  " + "\n  ".join(diffs)
                                 + f"\nRebuild it with:\n  {command}", diffs)
    records = item_records(data)
    stale: dict[str, str] = {}  # every modality with changed items is named, and its update command covers them all
    for m in modalities:
        root = roots[m]
        problems = check_files(root / m, manifests[m])
        states_file = root / m / STATES
        if problems and states_file.is_file() and states_file.stat().st_size <= VERIFY_ON_OPEN_BYTES:
            problems += nonfinite_problems(m, root / m, records)  # name the items when the values are bad
        if problems:
            raise CacheError(f"the {m} cache in {root / m} is damaged: {'; '.join(problems)}; rebuild it with "
                             f"`{cache_command_line(as_built(cfg, manifests, [m]), [m])}`")
        changed, _ = changed_rows(load_array(root / m / SOURCES), m, records, data.catalogue)
        if len(changed):
            stale[m] = f"{m}: {describe_changed(m, len(changed))} since the cache was built: " \
                       f"{describe_rows(changed, records, m)}"
    if stale:
        where = ", ".join(dict.fromkeys(str(roots[m]) for m in stale))
        diffs, command = list(stale.values()), cache_command_line(as_built(cfg, manifests, list(stale)), list(stale))
        raise CacheMismatchError(f"the cache in {where} does not match the data:\n  " + "\n  ".join(diffs)
                                 + f"\nUpdate it with:\n  {command}", diffs)
    states, present = {}, {}
    for m in modalities:
        root = roots[m]
        shape = tuple(manifests[m]["shape"])
        states[m] = load_array(root / m / STATES, mmap=mmap, expected_shape=shape, dtype=np.float16)
        present[m] = load_array(root / m / PRESENT, expected_shape=shape[:1], dtype=np.bool_)
        if not present[m][1:].any():  # row 0 is the padding row
            raise CacheError(f"modality {m}: none of the {shape[0] - 1:,} items has {m} content in the cache at "
                             f"{root / m} (every file missing, or corrupt under cache.on_corrupt=missing); fix "
                             f"the files and update the cache, or leave {m} out of the modalities")
    return TensorFeatures(states, present)


def open_features(cfg: Config, data: Any, modalities: list[str], device: Any = "cpu") -> Any:
    """The feature source of a run: the cache (in memory when it fits ``cache.memory_limit_gb``) or live."""
    if not cfg.cached:
        from crossan.cache.features import LiveFeatures
        from crossan.encoders.factory import build_encoders

        return LiveFeatures(build_encoders(cfg, modalities, device), data.catalogue, data.item_ids,
                            batch_size=cfg.encoders.batch_size, on_corrupt=cfg.cache.on_corrupt)
    size = 0
    for m in modalities:
        manifest = read_manifest(modality_folder(cfg, data, m)) or {}
        size += int(np.prod(manifest.get("shape", [0]))) * 2  # float16
    if size <= cfg.cache.memory_limit_gb * 2**30:
        return open_cache(cfg, data, modalities, mmap=False).to_memory(device if cfg.cache.on_device else "cpu")
    return open_cache(cfg, data, modalities)

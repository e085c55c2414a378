"""Joining the shards of a multi-process build into one cache (the same bytes as a single-process build)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crossan.cache.integrity import SOURCE_DTYPE, checksums, load_array
from crossan.cache.layout import (
    COMPLETE,
    MANIFEST,
    PLAN,
    PRESENT,
    SOURCES,
    STATES,
    cache_command_line,
    cache_root,
    check_modalities,
    num_items,
)
from crossan.cache.lock import build_lock, lock_path
from crossan.cache.manifest import expected_manifest, manifest_differences, write_json
from crossan.cache.workarea import (
    ModalityReport,
    counts,
    install,
    print_reports,
    read_corrupt_log,
    report_from_manifest,
    reserve,
)
from crossan.config import EncoderSpec
from crossan.errors import CacheError, CacheMismatchError

if TYPE_CHECKING:
    from crossan.config import Config

def _shard_folders(shards_dir: Path) -> tuple[int, dict[int, Path]]:
    found: dict[int, dict[int, Path]] = {}
    for p in shards_dir.iterdir() if shards_dir.is_dir() else []:
        i, sep, n = p.name.partition("-of-")
        if sep and i.isdigit() and n.isdigit():
            found.setdefault(int(n), {})[int(i)] = p
    if not found:
        raise CacheError(f"no shards to join in {shards_dir}")
    if len(found) > 1:
        raise CacheError(f"{shards_dir} holds shards of builds with different --num-shards {sorted(found)}; "
                         "remove the stale ones")
    (n, folders), = found.items()
    return n, folders


def _checked_shard_plans(cfg: Config, data: Any, m: str, spec: EncoderSpec, root: Path) -> list[tuple[Path, dict]]:
    """The shard folders of ``m`` with their plans, after checking they are complete, current and tile 0..N."""
    shards_dir = root / f"{m}.shards"
    num_shards, folders = _shard_folders(shards_dir)
    missing = [i for i in range(num_shards) if i not in folders or not (folders[i] / COMPLETE).is_file()]
    if missing:
        raise CacheError(f"{m}: shards {missing} of {num_shards} in {shards_dir} are not complete; build them "
                         f"with `{cache_command_line(cfg, [m])} --shard I --num-shards {num_shards}`")
    shards = [(folders[i], json.loads((folders[i] / PLAN).read_text())) for i in range(num_shards)]
    expected = expected_manifest(m, spec, data)
    for folder, plan in shards:
        diffs = manifest_differences(m, plan["manifest"], expected)
        if diffs:
            raise CacheMismatchError(f"the shard in {folder} was built under other settings:\n  " + "\n  ".join(diffs),
                                     diffs)
    spans = [(p["lo"], p["hi"]) for _, p in shards]
    n = num_items(data)
    if spans[0][0] != 0 or spans[-1][1] != n + 1 or any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        raise CacheError(f"{m}: the shards in {shards_dir} do not tile rows 0..{n}: {spans}")
    return shards


def _join_modality(root: Path, m: str, shards: list[tuple[Path, dict]]) -> dict[str, Any]:
    """Copy the shards' rows into one work folder, write the manifest, move it into place."""
    base = shards[0][1]["manifest"]
    work = root / f"{m}.joining"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shape = tuple(base["shape"])
    states = np.lib.format.open_memmap(work / STATES, mode="w+", dtype=np.float16, shape=shape)
    present = np.lib.format.open_memmap(work / PRESENT, mode="w+", dtype=np.bool_, shape=(shape[0],))
    reserve(work / STATES)
    reserve(work / PRESENT)
    sources = np.zeros(shape[0], dtype=SOURCE_DTYPE)
    corrupt: list[dict[str, Any]] = []
    for folder, plan in shards:
        lo, hi = plan["lo"], plan["hi"]
        states[lo:hi] = load_array(folder / STATES, mmap=True, expected_shape=(hi - lo, *shape[1:]))
        present[lo:hi] = load_array(folder / PRESENT, expected_shape=(hi - lo,))
        sources[lo:hi] = load_array(folder / SOURCES, expected_shape=(shape[0],), dtype=SOURCE_DTYPE)[lo:hi]
        corrupt += read_corrupt_log(folder)
    states.flush()
    present.flush()
    np.save(work / SOURCES, sources)
    manifest = base | counts(np.asarray(present), sorted(corrupt, key=lambda e: e["row"]))
    del states, present
    manifest["checksums"] = checksums(work)
    write_json(work / MANIFEST, manifest)
    install(work, root / m)
    shutil.rmtree(root / f"{m}.shards")
    return manifest


def join_shards(cfg: Config, data: Any, modalities: list[str]) -> dict[str, ModalityReport]:
    """Assemble completed shards into each modality's cache (the same bytes as a single-process build)."""
    from crossan.encoders import resolve_specs

    modalities = check_modalities(modalities)
    root = cache_root(cfg, data)
    specs = resolve_specs(cfg, modalities)
    reports: dict[str, ModalityReport] = {}
    for m in modalities:
        with build_lock(lock_path(root, m), f"{m} cache in {root}"):
            t0 = time.perf_counter()
            manifest = _join_modality(root, m, _checked_shard_plans(cfg, data, m, specs[m], root))
        reports[m] = report_from_manifest(m, root / m, "joined", manifest)
        reports[m].seconds = time.perf_counter() - t0
    print_reports(reports)
    return reports

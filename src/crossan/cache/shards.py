"""Joining the shards of a multi-process build into one cache (the same bytes as a single-process build).

Shards are joined only when every one was built under the same ``build`` settings (batch size, compute
dtype, device type: :func:`~crossan.cache.manifest.build_settings`), so a joined cache never mixes rows
computed at two precisions. A modality with no shards whose completed cache is already up to date (a
re-run of a torchrun build: every rank found it current and built nothing) is reported ``up to date``;
the other modalities are joined either way, and the errors of any that cannot be are raised at the end. A join
takes every shard's lock, so it waits for a shard still being built rather than read it half-written."""

from __future__ import annotations

import contextlib
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
    find_shards,
    item_records,
    num_items,
    stale_shards_hint,
)
from crossan.cache.lock import build_lock, lock_path
from crossan.cache.manifest import (
    UNKNOWN,
    describe_compute,
    expected_manifest,
    manifest_differences,
    read_manifest,
    write_json,
)
from crossan.cache.read import open_cache
from crossan.cache.workarea import (
    ModalityReport,
    counts,
    install,
    print_reports,
    read_corrupt_log,
    record_touched,
    recover_install,
    recover_sources,
    report_from_manifest,
    reserve,
)
from crossan.config import PRECISION_OF_DTYPE, EncoderSpec
from crossan.errors import CacheError, CacheMismatchError

if TYPE_CHECKING:
    from crossan.config import Config

def _shard_folders(shards_dir: Path) -> tuple[int, dict[int, Path]]:
    found = find_shards(shards_dir)
    if not found:
        raise CacheError(f"no shards to join in {shards_dir}, and no up-to-date cache beside it")
    if len(found) > 1:
        raise CacheError(f"{shards_dir} holds shards of builds with different --num-shards {sorted(found)}; "
                         f"remove the stale ones: {stale_shards_hint(found)}")
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
        if diffs:  # a shard build under this run's settings discards the stale shard and encodes it again
            raise CacheMismatchError(
                f"the shard in {folder} was built under other settings:\n  " + "\n  ".join(diffs)
                + f"\nBuild the shards again with `{cache_command_line(cfg, [m])} --shard I --num-shards "
                f"{num_shards}` (each replaces its stale shard), then `--join` them", diffs)
    _check_same_build(cfg, m, num_shards, shards)
    spans = [(p["lo"], p["hi"]) for _, p in shards]
    n = num_items(data)
    if spans[0][0] != 0 or spans[-1][1] != n + 1 or any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        raise CacheError(f"{m}: the shards in {shards_dir} do not tile rows 0..{n}: {spans}")
    return shards


def _describe_build(build: Any) -> str:
    batch = build.get("batch_size", UNKNOWN) if isinstance(build, dict) else UNKNOWN
    return f"{describe_compute({'build': build})}, encoders.batch_size={batch}"


def _check_same_build(cfg: Config, m: str, num_shards: int, shards: list[tuple[Path, dict]]) -> None:
    """Refuse shards built under different ``build`` settings (compute dtype, device type, batch size):
    their rows would mix precisions in one cache. Shards of an older crossan record no compute dtype; they
    join only with each other."""
    builds = [plan["manifest"].get("build") for _, plan in shards]
    if all(b == builds[0] for b in builds):
        return
    lines = [f"{folder}: {_describe_build(b)}" for (folder, _), b in zip(shards, builds)]
    kinds: list[tuple[Path, Any]] = []  # each distinct build, with the first shard that has it
    for (folder, _), b in zip(shards, builds):
        if all(b != k for _, k in kinds):
            kinds.append((folder, b))
    how = [f"  like {folder.name}: `{_build_command(cfg, m, b)} --shard I --num-shards {num_shards}`"
           for folder, b in kinds]
    raise CacheMismatchError(
        f"{m}: the shards were built under different compute settings and are not joined (one cache holds "
        "rows of one precision):\n  " + "\n  ".join(lines) + "\nRemove the shards that differ from the build "
        "you want and build them again under its settings (on a device of its type), e.g.\n" + "\n".join(how),
        lines)


def _build_command(cfg: Config, m: str, build: Any) -> str:
    """The ``crossan cache`` command of ``m`` whose shards are built like ``build`` (a manifest's ``build``
    section): the join's settings with that build's batch size, and the precision that gives its compute dtype
    on any device (a build of an older crossan records neither: the join's own)."""
    import dataclasses

    if isinstance(build, dict) and "batch_size" in build:
        cfg = dataclasses.replace(cfg, encoders=dataclasses.replace(cfg.encoders, batch_size=int(build["batch_size"])))
    precision = PRECISION_OF_DTYPE.get(str((build or {}).get("compute_dtype")))
    return cache_command_line(cfg, [m]) + (f" precision={precision}" if precision else "")


def _current_cache(cfg: Config, data: Any, m: str, root: Path) -> dict[str, Any] | None:
    """The manifest of ``m``'s completed cache when a run could use it as it is (:func:`open_cache`'s
    checks: it matches the run, is undamaged, its media files are unchanged); None otherwise."""
    try:
        open_cache(cfg, data, [m])
    except CacheError:
        return None
    return read_manifest(root / m)


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
    """Assemble completed shards into each modality's cache (the same bytes as a single-process build).

    A modality without shards whose completed cache is up to date is reported ``up to date``. Every
    modality that can be joined is; a :class:`CacheError` of one (incomplete, mismatched or mixed shards,
    nothing to join) is raised after the others are done (several: one error listing them all)."""
    from crossan.encoders import resolve_specs

    modalities = check_modalities(modalities)
    specs = resolve_specs(cfg, modalities)
    reports: dict[str, ModalityReport] = {}
    errors: dict[str, CacheError] = {}
    for m in modalities:
        root = cache_root(cfg, data, m)
        try:
            with build_lock(lock_path(root, m), f"{m} cache in {root}"):
                t0 = time.perf_counter()
                recover_install(root / m)
                recover_sources(root / m)
                found = find_shards(root / f"{m}.shards")
                current = None if found else _current_cache(cfg, data, m, root)
                if current is not None:  # files with new times and the same bytes: recorded here, not by shards
                    record_touched(m, root / m, current, item_records(data), data.catalogue)
                    reports[m] = report_from_manifest(m, root / m, "up to date", current)
                    continue
                with contextlib.ExitStack() as held:  # a shard still being built is waited for, not read half-done
                    for n in found:
                        for i in range(n):
                            held.enter_context(build_lock(lock_path(root, m, i, n), f"{m} shard {i} of {n}"))
                    manifest = _join_modality(root, m, _checked_shard_plans(cfg, data, m, specs[m], root))
        except CacheError as e:
            errors[m] = e
            continue
        reports[m] = report_from_manifest(m, root / m, "joined", manifest)
        reports[m].seconds = time.perf_counter() - t0
    print_reports(reports)
    if len(errors) == 1:
        raise next(iter(errors.values()))
    if errors:
        raise CacheError(f"{len(errors)} modalities could not be joined:\n" + "\n".join(
            f"{m}: {e}" for m, e in errors.items()))
    return reports

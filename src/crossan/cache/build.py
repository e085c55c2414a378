"""Building the cache: each modality's items encoded once by its frozen encoder, batch by batch, resumable,
optionally as one shard of a multi-process build (:mod:`crossan.cache.shards` joins the shards)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crossan.cache.integrity import (
    changed_rows,
    check_files,
    check_finite,
    current_sources,
    describe_rows,
    load_array,
    verify_folder,
)
from crossan.cache.layout import (
    COMPLETE,
    PRESENT,
    SOURCES,
    STATES,
    as_built,
    cache_command_line,
    cache_root,
    check_modalities,
    find_shards,
    item_key,
    item_records,
    modality_folder,
    stale_shards_hint,
)
from crossan.cache.lock import READ_ONLY_ERRNOS, ReadOnlyFolderError, build_lock, lock_path
from crossan.cache.manifest import (
    FORMAT_VERSION,
    UNKNOWN,
    build_compute,
    build_settings,
    describe_compute,
    expected_manifest,
    jsonable,
    manifest_differences,
    num_items,
    read_manifest,
    versions,
)
from crossan.cache.workarea import (
    ModalityReport,
    WorkArea,
    batch_ranges,
    finish_single,
    print_reports,
    record_sources,
    recover_install,
    recover_sources,
    report_from_manifest,
    shard_span,
)
from crossan.config import EncoderSpec
from crossan.data.catalogue import ItemRecord
from crossan.data.media import MediaError
from crossan.errors import CacheError

if TYPE_CHECKING:
    from crossan.config import Config
    from crossan.encoders.base import LoadedMedia, ModalityEncoder


def _record_batch(records: list[ItemRecord], rows: tuple[int, int]) -> list[ItemRecord]:
    return records[rows[0] - 1 : rows[1] - 1]


def _corrupt_entries(loaded: LoadedMedia, rows: tuple[int, int], records: list[ItemRecord]) -> list[dict[str, Any]]:
    out = []
    for offset, err in enumerate(loaded.corrupt):
        if err is not None:
            out.append({"row": rows[0] + offset, "item_id": records[offset].item_id, "path": err.path,
                        "reason": err.reason})
    return out


def _run_batches(
    encoder: ModalityEncoder,
    area: WorkArea,
    records: list[ItemRecord],
    catalogue: Any,
    ranges: list[tuple[int, int]],
    on_corrupt: str,
    progress: bool,
    on_batch: Callable[[str, int], None] | None,
    prefetch: str = "ahead",
) -> None:
    """Encode the pending batches of ``area``. With ``prefetch="ahead"`` (``cache.prefetch``) the next batch is
    read, decoded and staged (:meth:`~crossan.encoders.base.ModalityEncoder.load_inputs`) in a thread while
    the current one runs through the model (Pillow, PyAV, soundfile and the tokenizers release the GIL); with
    ``on_demand`` each batch is read when it is needed, which leaves every core to the forward (faster for
    some encoders, slower for others: docs/results.md §3v, §3w)."""
    from tqdm.auto import tqdm

    modality = encoder.modality
    pending = area.pending()
    total = sum(ranges[b][1] - ranges[b][0] for b in area.batches)
    bar = tqdm(total=total, initial=area.rows_done(ranges), desc=f"cache {modality}", unit="item",
               disable=not progress, dynamic_ncols=True)

    def load(b: int) -> tuple[LoadedMedia, Any]:
        return encoder.load_inputs(_record_batch(records, ranges[b]), catalogue, on_corrupt)

    ahead = prefetch == "ahead"
    with ThreadPoolExecutor(max_workers=1) as pool, bar:
        future: Future[tuple[LoadedMedia, Any]] | None = None
        for i, b in enumerate(pending):
            loaded, staged = future.result() if future is not None else load(b)
            future = pool.submit(load, pending[i + 1]) if ahead and i + 1 < len(pending) else None
            try:
                out = encoder.encode_loaded(loaded, encoder.finish_loaded(staged))
                entries = _corrupt_entries(loaded, ranges[b], _record_batch(records, ranges[b]))
                states = out.states.float().numpy().astype(np.float16)  # what is stored: fp16 overflow is inf
                check_finite(modality, states, ranges[b][0], records)
                area.commit(b, ranges[b], states, out.present.numpy(), entries)
                bar.update(ranges[b][1] - ranges[b][0])
                if on_batch is not None:
                    on_batch(modality, b)
            except BaseException:
                if future is not None:
                    future.cancel()
                raise


def _base_manifest(encoder: ModalityEncoder, data: Any, build: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a build (less counts and checksums); ``build``: :func:`build_settings` — batch size,
    compute dtype and device type, which a resumed build or a joined shard must share."""
    return jsonable({
        "format_version": FORMAT_VERSION,
        "modality": encoder.modality,
        "dtype": "float16",
        **encoder.describe(),
        "item_fingerprint": item_key(data),  # the ids only: content changes are per row (sources.npy)
        "num_items": num_items(data),
        "shape": [num_items(data) + 1, encoder.num_taps, encoder.hidden_size],
        "build": build,
        "versions": versions(),
    })


@dataclass
class _BuildContext:
    """What every modality of one ``build_cache`` call shares."""

    cfg: Config
    data: Any
    root: Path
    records: list[ItemRecord]
    ranges: list[tuple[int, int]]
    device: str
    progress: bool
    on_batch: Callable[[str, int], None] | None
    build: dict[str, Any]
    """:func:`build_settings` of this call: batch size, resolved compute dtype, device type."""


def _open_work_area(ctx: _BuildContext, m: str, base: dict[str, Any], shape: tuple[int, int],
                    shard: int | None, num_shards: int, sources: np.ndarray,
                    update: _Update | None = None) -> WorkArea:
    n, bs = len(ctx.records), ctx.cfg.encoders.batch_size
    if shard is None:
        plan = {"manifest": base, "lo": 0, "hi": n + 1, "batches": list(range(len(ctx.ranges)))}
        seed = None
        if update is not None:
            plan["update"] = {"of": update.of, "batches": sorted(update.batches)}
            seed = (update.folder, update.batches, update.kept_corrupt)
        return WorkArea(ctx.root / f"{m}.partial", plan, (n + 1, *shape), sources, seed)
    shards_dir = ctx.root / f"{m}.shards"
    others = {k: v for k, v in find_shards(shards_dir).items() if k != num_shards}
    if others:  # found now, not by --join after every shard was encoded
        raise CacheError(f"{m}: {shards_dir} holds shards of a build with --num-shards {sorted(others)}, which "
                         f"cannot be joined with this build's {num_shards}; remove them ({stale_shards_hint(others)}) "
                         f"or build with --num-shards {min(others)}")
    lo, hi, batches = shard_span(n, bs, shard, num_shards)
    plan = {"manifest": base, "lo": lo, "hi": hi, "batches": batches, "shard": shard, "num_shards": num_shards}
    return WorkArea(ctx.root / f"{m}.shards" / f"{shard}-of-{num_shards}", plan, (hi - lo, *shape), sources)


@dataclass
class _Update:
    """A completed, current cache some of whose items' files changed: only their batches are encoded again."""

    folder: Path
    of: str
    """SHA-256 of the cache's states.npy (recorded in the plan: a resumed update starts from the same cache)."""
    batches: set[int]
    kept_corrupt: list[dict[str, Any]]


def _check_existing(ctx: _BuildContext, m: str, final: Path, existing: dict[str, Any],
                    sources: list[np.ndarray], record: bool) -> tuple[str, _Update | None]:
    """Whether a completed cache that matches the configuration is ``up to date``, needs an ``update``
    (some items' files changed) or a ``rebuild`` (damaged files). ``sources`` receives the current record.
    ``record``: an up-to-date cache whose files have new times records them (:func:`record_sources`; a shard
    does not write into the completed cache: it holds no lock on it, and its join records them)."""
    problems = check_files(final, existing)
    if problems:
        print(f"{m}: the cache at {final} is damaged ({'; '.join(problems)}); building it again")
        return "rebuild", None
    old = load_array(final / SOURCES)
    changed, now = changed_rows(old, m, ctx.records, ctx.data.catalogue)
    sources.append(now)
    if not len(changed):
        if record and not np.array_equal(old, now):
            record_sources(m, final, existing, old, now)
        return "up to date", None
    batches = {b for b, (a, z) in enumerate(ctx.ranges) if np.any((changed >= a) & (changed < z))}
    rows = {r for b in batches for r in range(*ctx.ranges[b])}
    kept = [e for e in existing.get("corrupt_items", []) if e["row"] not in rows]
    print(f"{m}: {len(changed)} item(s) changed since the cache was built ({describe_rows(changed, ctx.records, m)}); "
          f"encoding their {len(batches)} batch(es) again")
    return "update", _Update(final, existing["checksums"][STATES]["sha256"], batches, kept)


def _stop_at_corrupt_marked_missing(area: WorkArea, m: str, ranges: list[tuple[int, int]],
                                    on_corrupt: str) -> None:
    """Under ``cache.on_corrupt=error``, raise the :class:`MediaError` a build in one go would raise when the
    resumed build marked corrupt files missing before it was interrupted (it ran under ``missing`` then).

    ``cache.on_corrupt`` is not part of the plan on purpose: the usual sequence is a build stopped by a
    corrupt file under ``error`` and run again under ``missing``, and it should resume, not encode every
    batch again (its batches hold no corrupt file, so they are the same under either setting). The other
    way round, the batches done under ``missing`` read the corrupt files this build would stop at: it stops
    at the first of them (the lowest row, where the uninterrupted build stops, since batches are encoded in
    order) with the same error, naming item and path, and keeps the work area, so that the build resumes
    once the file is replaced (its sources differ: that batch is encoded again) or under ``missing``.
    Corrupt entries an update kept from the cache it started from lie outside the batches it encodes and
    do not count, as in an update in one go."""
    if on_corrupt != "error" or not area.resumed:
        return
    update = area.plan.get("update")
    encoded = update["batches"] if isinstance(update, dict) else area.batches
    rows = {r for b in encoded for r in range(*ranges[b])}
    found = [e for e in area.corrupt_entries() if e["row"] in rows]
    if found:
        first = found[0]
        print(f"{m}: the interrupted build at {area.path} marked {len(found)} corrupt file(s) missing under "
              "cache.on_corrupt=missing; this run has cache.on_corrupt=error and stops at the first, as a "
              "build in one go would (the finished batches are kept: replace the file, or run with "
              "cache.on_corrupt=missing)")
        raise MediaError(first["item_id"], first["path"], first["reason"])


def _finish_shard(area: WorkArea, m: str) -> ModalityReport:
    area.close()
    (area.path / COMPLETE).write_text("complete\n")
    present = np.load(area.path / PRESENT)
    corrupt = area.corrupt_entries()
    rows = max(0, area.hi - max(area.lo, 1))
    num_present = int(present.sum())
    return ModalityReport(m, str(area.path), "shard built", num_items=rows, num_present=num_present,
                          num_missing=rows - num_present - len(corrupt), num_corrupt=len(corrupt),
                          corrupt=corrupt, compute=describe_compute(area.plan["manifest"]))


def _read_only_refusal(m: str, final: Path, read_only: ReadOnlyFolderError, needs: str) -> CacheError:
    """The error of a build that must write (``needs``: what) into a read-only cache folder."""
    if not read_only.folder_read_only:  # the lock file alone cannot be written
        return CacheError(f"{m}: the cache at {final} {needs}, but {read_only}")
    return CacheError(f"{m}: the cache at {final} {needs}, but the cache folder {read_only.folder} is read-only "
                      f"({read_only.reason}); make it writable, or pass cache.dir= naming a writable folder")


def _build_modality(ctx: _BuildContext, m: str, spec: EncoderSpec, shard: int | None,
                    num_shards: int, read_only: ReadOnlyFolderError | None = None) -> ModalityReport:
    """Build, update or resume ``m``'s cache (or one shard of it), or report it up to date. ``read_only``: the
    cache folder cannot be written (its lock could not be taken); an up-to-date cache is reported as such
    without writing anything, anything else raises :class:`CacheError` naming the folder."""
    from crossan.encoders import build_encoder

    final = ctx.root / m
    if shard is None and read_only is None:  # a shard holds only its own lock, not the modality's
        recover_install(final)
        recover_sources(final)
    try:
        existing = read_manifest(final, missing_ok=True)
    except CacheError as e:
        print(f"{m}: {e}; building it again")
        existing = None
    update, sources = None, []
    if existing is not None:
        if not manifest_differences(m, existing, expected_manifest(m, spec, ctx.data)):
            state, update = _check_existing(ctx, m, final, existing, sources,
                                            record=shard is None and read_only is None)
            built, now_dtype = build_compute(existing)[0], ctx.build["compute_dtype"]
            if state == "up to date":
                abandoned = ctx.root / f"{m}.partial"
                if shard is None and read_only is None and abandoned.exists():
                    # an update that failed (a corrupt file, since restored): nothing would ever resume it
                    print(f"{m}: removing {abandoned}, an unfinished update of a cache that is up to date again")
                    shutil.rmtree(abandoned)
                if built not in (UNKNOWN, now_dtype):
                    print(f"{m}: the cache at {final} was built with {built} compute; this run's precision="
                          f"{ctx.cfg.precision} resolves to {now_dtype}. It is used as it is (the states are "
                          f"stored in float16 either way); remove {final} to build it again in {now_dtype}")
                return report_from_manifest(m, final, "up to date", existing)
            if shard is not None:
                update = None  # a shard covers its rows in full
            now_compute = (now_dtype, ctx.build["device"])
            recorded = existing.get("build")
            built_batch = recorded.get("batch_size") if isinstance(recorded, dict) else None
            if update is not None and (build_compute(existing) != now_compute
                                       or built_batch != ctx.build["batch_size"]):
                # the batch size is part of a build's identity too: a batch's padding (text: to its longest
                # title) and kernels depend on it, and the manifest records one batch size for every row
                how = "by a crossan that did not record its compute dtype" if built == UNKNOWN else \
                    f"with {describe_compute(existing)}, encoders.batch_size={built_batch}"
                print(f"{m}: the cache at {final} was built {how}; this build runs {now_compute[0]} compute "
                      f"on {now_compute[1]}, encoders.batch_size={ctx.build['batch_size']}: encoding every item "
                      "again rather than mixing rows computed two ways")
                update = None
        else:
            print(f"{m}: the cache at {final} was built under other settings; it is replaced once the new one "
                  "is complete")
    if read_only is not None:
        raise _read_only_refusal(m, final, read_only, "needs updating" if update is not None else
                                 "needs building" if existing is None else "needs building again")
    now = sources[0] if sources and update is not None else current_sources(m, ctx.records, ctx.data.catalogue)
    encoder = build_encoder(m, spec, device=ctx.device)
    base = _base_manifest(encoder, ctx.data, ctx.build)
    area = _open_work_area(ctx, m, base, (encoder.num_taps, encoder.hidden_size), shard, num_shards, now, update)
    from crossan.precision import autocast, compute_dtype, frozen_weights_in

    try:
        _stop_at_corrupt_marked_missing(area, m, ctx.ranges, ctx.cfg.cache.on_corrupt)
        if area.finished is not None:
            print(f"{m}: the build at {area.path} had finished and was killed while moving into place; "
                  "installing it")
        elif area.resumed:
            print(f"{m}: resuming the build at {area.path} ({int(area.done.sum())}/{len(area.done)} batches "
                  "done)")
        # the encoder forward in bf16 where `precision` says so, its frozen weights rounded once, not per batch
        with (autocast(ctx.cfg.precision, ctx.device),
              frozen_weights_in(encoder, compute_dtype(ctx.cfg.precision, ctx.device))):
            _run_batches(encoder, area, ctx.records, ctx.data.catalogue, ctx.ranges, ctx.cfg.cache.on_corrupt,
                         ctx.progress, ctx.on_batch, ctx.cfg.cache.prefetch)
    except BaseException:
        area.close()  # every finished batch is on disk: the next build resumes from here
        raise
    if shard is not None:
        return _finish_shard(area, m)
    return report_from_manifest(m, final, "updated" if update else "built", finish_single(area, final, base))


def build_cache(
    cfg: Config,
    data: Any,
    modalities: list[str],
    shard: int | None = None,
    num_shards: int = 1,
    progress: bool = True,
    on_batch: Callable[[str, int], None] | None = None,
) -> dict[str, ModalityReport]:
    """Build (or resume) the cache of each modality, or one shard of it; return a report per modality.

    ``shard``/``num_shards``: this process builds shard ``shard`` (rows of whole batches) into
    ``<modality>.shards/``; :func:`join_shards` assembles the shards. ``on_batch(modality, batch)`` is
    called after each batch is on disk (progress hooks, tests). A completed cache that already matches
    the configuration is left as it is. The encoders run on ``cfg.device``, on a CPU with glibc's ``malloc``
    retaining freed memory under ``train.malloc=auto`` (:func:`crossan.utils.configure_malloc`). Corrupt media
    stop the build with :class:`MediaError` (what was done so far stays resumable) unless ``cfg.cache.on_corrupt`` is
    ``missing``; the number marked missing is in the returned reports and printed. A build resumed under
    ``error`` stops the same way at a corrupt file its earlier run marked missing under ``missing``
    (:func:`_stop_at_corrupt_marked_missing`). Each modality (or shard)
    is built under a lock in the cache folder: a second ``crossan cache`` on the same dataset waits for the
    first (saying so) and then finds the cache up to date (:mod:`crossan.cache.lock`). In a read-only cache
    folder an up-to-date cache is reported up to date; one that must be written raises :class:`CacheError`
    naming the folder.
    """
    from crossan.encoders import resolve_specs
    from crossan.utils import configure_malloc, resolve_device

    modalities = check_modalities(modalities)
    if num_shards > 1 and shard is None:
        raise ValueError(f"num_shards={num_shards} needs a shard index (0..{num_shards - 1})")
    if cfg.cache.prefetch not in ("ahead", "on_demand"):  # a Config built in code skips load_config's check
        raise ValueError(f"cache.prefetch: expected ahead or on_demand, got {cfg.cache.prefetch!r}")
    specs = resolve_specs(cfg, modalities)
    records = item_records(data)
    device = str(resolve_device(cfg.device))
    configure_malloc(cfg.train.malloc, device)  # a CPU forward's maps come back as fresh pages otherwise
    reports: dict[str, ModalityReport] = {}
    for m in modalities:
        root = cache_root(cfg, data, m)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if e.errno not in READ_ONLY_ERRNOS:
                raise
            raise CacheError(f"{m}: cannot create the cache folder {root}: its parent folder is read-only "
                             f"({e.strerror}); pass cache.dir= naming a writable folder") from None
        ctx = _BuildContext(cfg, data, root, records, batch_ranges(len(records), cfg.encoders.batch_size), device,
                            progress, on_batch, build_settings(cfg.encoders.batch_size, cfg.precision, device))
        with ExitStack() as held:
            try:
                held.enter_context(build_lock(lock_path(root, m, shard, num_shards), f"{m} cache in {root}"))
                read_only = None
            except ReadOnlyFolderError as e:  # nothing can write there: an up-to-date cache is read without it
                read_only = e
            t0 = time.perf_counter()  # after any wait for another builder
            reports[m] = _build_modality(ctx, m, specs[m], shard, num_shards, read_only)
            reports[m].seconds = time.perf_counter() - t0
    print_reports(reports)
    return reports


def verify_cache(cfg: Config, data: Any, modalities: list[str]) -> dict[str, list[str]]:
    """``crossan cache --verify``: every check of :func:`crossan.cache.integrity.verify_folder` on each
    modality's completed cache (files hashed in full, every row scanned, every media file re-hashed);
    prints one line per modality and raises :class:`CacheError` when any check fails. Changes nothing."""
    from crossan.encoders import resolve_specs

    modalities = check_modalities(modalities)
    specs = resolve_specs(cfg, modalities)
    records = item_records(data)
    problems: dict[str, list[str]] = {}
    manifests: dict[str, dict[str, Any] | None] = {}
    for m in modalities:
        folder = modality_folder(cfg, data, m)
        try:
            manifest = read_manifest(folder, missing_ok=True)
        except CacheError as e:
            manifest, problems[m] = None, [str(e)]
        manifests[m] = manifest
        if m in problems:
            pass
        elif manifest is None:
            problems[m] = [f"no completed cache in {folder}"]
        else:
            problems[m] = manifest_differences(m, manifest, expected_manifest(m, specs[m], data))
            if not problems[m]:
                problems[m] = verify_folder(m, folder, manifest, records, data.catalogue)
        if problems[m]:
            print(f"{m}: FAILED at {folder}")
            for p in problems[m]:
                print(f"  {p}")
        else:
            size = sum((folder / f).stat().st_size for f in (STATES, PRESENT, SOURCES))
            shown = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.1f} KiB"
            media = ", titles unchanged" if m == "text" else ", media files unchanged"
            print(f"{m}: verified {folder} — {len(records)} items, checksums of {shown}, values "
                  f"finite{media}; {describe_compute(manifest)} "
                  f"({manifest.get('_verify_seconds', 0.0):.1f} s)")
    failed = [m for m, p in problems.items() if p]
    if failed:
        command = cache_command_line(as_built(cfg, manifests, failed), failed)
        raise CacheError(f"cache verification failed for {', '.join(failed)} (listed above); "
                         f"`{command}` re-encodes changed items and rebuilds damaged caches")
    return problems


def cache_command(cfg: Config, data: Any, modalities: list[str], shard: int | None, num_shards: int,
                  join: bool, verify: bool = False) -> None:
    """``crossan cache``: build (``--shard i --num-shards n`` for one shard), ``--join`` the shards, or
    ``--verify`` a completed cache."""
    if verify:
        if shard is not None or join:
            raise ValueError("--verify checks a completed cache; do not give --shard or --join with it")
        verify_cache(cfg, data, modalities)
        return
    if join:
        if shard is not None:
            raise ValueError("--join assembles all shards; do not give --shard with it")
        from crossan.cache.shards import join_shards

        join_shards(cfg, data, modalities)
        return
    if shard is not None and num_shards < 2:
        raise ValueError("--shard needs --num-shards of at least 2")
    reports = build_cache(cfg, data, modalities, shard=shard, num_shards=num_shards)
    empty = [r for r in reports.values() if r.num_items and not r.num_present and r.status != "shard built"]
    if empty:  # every file missing or corrupt (cache.on_corrupt=missing): written, but no run could use it
        raise CacheError("; ".join(f"{r.modality}: none of the {r.num_items:,} items has readable {r.modality} "
                                   f"content ({r.num_corrupt:,} corrupt, {r.num_missing:,} without a file)"
                                   for r in empty)
                         + " — the cache is written, but a run refuses a modality no item has; fix the files "
                           "(the build named the corrupt ones) or leave it out of the modalities")
    if shard is not None and any(r.status == "shard built" for r in reports.values()):
        print(f"shard {shard} of {num_shards} done; when all are, run `{cache_command_line(cfg, modalities)} --join`")

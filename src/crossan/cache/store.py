"""The layer-state cache: each item's pooled tapped states per modality, computed once, read memory-mapped.

Layout (``ROOT`` = ``cfg.cache.dir``, or :func:`default_cache_dir`)::

    ROOT/
      <modality>/                    a completed cache, only ever replaced as a whole
        states.npy                   float16 [N+1, K, D]; row 0 (padding) and absent items are zeros
        present.npy                  bool [N+1]; False for row 0 and items without the modality
        manifest.json                what produced the states (see below)
      <modality>.partial/            an interrupted single-process build; the next build resumes it
        states.npy, present.npy      preallocated ``open_memmap`` arrays, filled batch by batch
        done.npy                     bool [batches]: batches whose rows are flushed to disk
        corrupt.jsonl                corrupt files marked missing so far (``cache.on_corrupt=missing``)
        plan.json                    the build plan; a partial build is resumed only under an equal plan
      <modality>.shards/<i>-of-<n>/  shard i of an n-way build: the same files over the shard's rows,
                                     plus COMPLETE once finished; :func:`join_shards` assembles them

Rows ``1..N`` are encoded in batches of ``encoders.batch_size`` (batch b: rows ``1 + b·B … (b+1)·B``);
shards take contiguous runs of whole batches, so every build — interrupted and resumed, sharded and
joined, or in one go — runs the same batches and writes the same bytes. A build never touches a
completed cache until its replacement is complete: the finished work folder is renamed into place.

``manifest.json`` records the checkpoint, ``random_init``, family, layers, width, taps, pooling, the
preprocessing settings, the item-list fingerprint (:func:`fingerprint_items` of rows 1..N in order), N,
presence counts, the corrupt files marked missing, the processor's resolved settings and the library
versions. :func:`open_cache` compares the fields that determine the numbers with what the current
configuration would produce and refuses a cache that differs (:class:`CacheMismatchError`).

Concurrent builds of the same modality into the same folder are not supported (shards of one build are:
each writes only its own folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crossan.cache.features import TensorFeatures
from crossan.config import EncoderSpec
from crossan.data.catalogue import MODALITIES, ItemRecord, fingerprint_items

if TYPE_CHECKING:
    import torch

    from crossan.config import Config
    from crossan.encoders.base import LoadedMedia, ModalityEncoder

FORMAT_VERSION = 1
STATES = "states.npy"
PRESENT = "present.npy"
MANIFEST = "manifest.json"
DONE = "done.npy"
CORRUPT = "corrupt.jsonl"
PLAN = "plan.json"
COMPLETE = "COMPLETE"

COMPARED_FIELDS: tuple[str, ...] = (
    "format_version",
    "dtype",
    "checkpoint",
    "family",
    "model_type",
    "random_init",
    "num_layers",
    "hidden_size",
    "taps",
    "pooling",
    "preprocessing",
    "item_fingerprint",
    "num_items",
)
"""Manifest fields that must match the current configuration for a cache to be used."""


class CacheError(RuntimeError):
    """The cache cannot be used or built as asked."""


class CacheMissingError(CacheError, FileNotFoundError):
    """No completed cache for a modality; the message says which ``crossan cache`` command builds it."""


class CacheMismatchError(CacheError):
    """A completed cache was built under other settings; ``differences`` lists each differing field."""

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


# --------------------------------------------------------------------------------------------- data access
def item_records(data: Any) -> list[ItemRecord]:
    """Records of rows 1..N of ``data`` (``.item_ids`` with the padding row first, ``.catalogue``)."""
    return [data.catalogue[i] for i in data.item_ids[1:]]


def num_items(data: Any) -> int:
    return len(data.item_ids) - 1


# --------------------------------------------------------------------------------------------- locations
def _encoder_overrides(cfg: Config) -> dict[str, Any]:
    default = dataclasses.asdict(EncoderSpec())
    out = {}
    for m in MODALITIES:
        spec = dataclasses.asdict(getattr(cfg.encoders, m))
        changed = {k: v for k, v in spec.items() if v != default[k]}
        if changed:
            out[m] = changed
    return out


def preset_folder(cfg: Config) -> str:
    """``<preset>``, or ``<preset>-<hash>`` when the run changes encoder settings of the preset."""
    overrides = _encoder_overrides(cfg)
    if not overrides:
        return cfg.encoders.preset
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.encoders.preset}-{digest}"


def default_cache_dir(cfg: Config, data: Any) -> Path:
    """``$CROSSAN_CACHE_DIR`` (or ``~/.cache/crossan``) ``/<dataset folder name>-<fingerprint>/<preset>``."""
    base = Path(os.environ.get("CROSSAN_CACHE_DIR") or Path.home() / ".cache" / "crossan").expanduser()
    source = Path(cfg.data.path) if cfg.data.path else Path(data.catalogue.root)
    name = (source.stem if source.suffix else source.name) or "data"
    return base / f"{name}-{fingerprint_items(item_records(data))}" / preset_folder(cfg)


def cache_root(cfg: Config, data: Any) -> Path:
    """Where this run's cache lives (``cache.dir`` when set)."""
    return Path(cfg.cache.dir).expanduser() if cfg.cache.dir else default_cache_dir(cfg, data)


def cache_command_line(cfg: Config, modalities: list[str]) -> str:
    """The ``crossan cache`` command that builds what this run needs."""
    parts = ["crossan cache", f"--data {cfg.data.path or '<DATA>'}", f"--modalities {','.join(modalities)}",
             f"--preset {cfg.encoders.preset}"]
    if cfg.cache.dir:
        parts.append(f"cache.dir={cfg.cache.dir}")
    for m, changed in _encoder_overrides(cfg).items():
        parts += [f"encoders.{m}.{k}={v}" for k, v in changed.items()]
    if cfg.encoders.batch_size != 32:
        parts.append(f"encoders.batch_size={cfg.encoders.batch_size}")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------- manifests
def _versions() -> dict[str, str]:
    import torch
    import transformers

    import crossan

    return {"crossan": crossan.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__}


def _jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (so that plans compare equal after a round trip)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def expected_manifest(modality: str, spec: EncoderSpec, data: Any) -> dict[str, Any]:
    """The compared manifest fields the current configuration would produce (loads no weights)."""
    from crossan.encoders.base import describe_encoder
    from crossan.encoders.spec import describe_backbone

    info = describe_backbone(modality, spec)
    return _jsonable({
        "format_version": FORMAT_VERSION,
        "modality": modality,
        "dtype": "float16",
        **describe_encoder(modality, spec, info),
        "item_fingerprint": fingerprint_items(item_records(data)),
        "num_items": num_items(data),
    })


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


_LABELS = {"item_fingerprint": "item fingerprint", "num_items": "number of items"}


def manifest_differences(modality: str, cached: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """One line per compared field that differs: ``"<modality>: taps [..] in cache vs [..] in config"``."""
    diffs = []
    for name in COMPARED_FIELDS:
        a = _flatten({name: cached.get(name)}) if isinstance(cached.get(name), dict) else {name: cached.get(name)}
        b = _flatten({name: expected.get(name)}) if isinstance(expected.get(name), dict) else {name: expected.get(name)}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                where = "for the data" if name in ("item_fingerprint", "num_items") else "in config"
                label = _LABELS.get(key, key)
                diffs.append(f"{modality}: {label} {a.get(key)!r} in cache vs {b.get(key)!r} {where}")
    return diffs


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- plans
def batch_ranges(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Row ranges ``[a, b)`` of the batches over rows 1..n."""
    if batch_size < 1:
        raise ValueError(f"encoders.batch_size must be at least 1, got {batch_size}")
    return [(a, min(n + 1, a + batch_size)) for a in range(1, n + 1, batch_size)]


def shard_span(n: int, batch_size: int, shard: int, num_shards: int) -> tuple[int, int, list[int]]:
    """Rows ``[lo, hi)`` and batch indices of shard ``shard`` of ``num_shards`` (shard 0 holds row 0)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in 0..{num_shards - 1}")
    ranges = batch_ranges(n, batch_size)
    nb = len(ranges)
    first, last = shard * nb // num_shards, (shard + 1) * nb // num_shards
    lo = 0 if shard == 0 else (ranges[first][0] if first < nb else n + 1)
    hi = ranges[last - 1][1] if last > first else (1 if shard == 0 else lo)
    return lo, hi, list(range(first, last))


@dataclass
class ModalityReport:
    """What a build did for one modality."""

    modality: str
    path: str
    status: str
    """``built``, ``up to date``, ``shard built`` or ``joined``."""
    num_items: int = 0
    num_present: int = 0
    num_missing: int = 0
    num_corrupt: int = 0
    corrupt: list[dict[str, Any]] = field(default_factory=list)
    """Corrupt files marked missing: ``{"row", "item_id", "path", "reason"}``."""
    seconds: float = 0.0

    def summary(self) -> str:
        text = f"{self.modality}: {self.status} at {self.path}"
        if self.num_items:
            text += f" — {self.num_present}/{self.num_items} items present, {self.num_missing} missing"
        if self.num_corrupt:
            text += f", {self.num_corrupt} corrupt files marked missing"
        if self.seconds:
            text += f" ({self.seconds:.1f} s)"
        return text


class WorkArea:
    """A resumable build over rows ``[lo, hi)``: preallocated memmaps plus a per-batch done mask."""

    def __init__(self, path: Path, plan: dict[str, Any], shape: tuple[int, int, int]) -> None:
        self.path = path
        self.plan = _jsonable(plan)
        self.lo, self.hi = int(plan["lo"]), int(plan["hi"])
        self.batches: list[int] = list(plan["batches"])
        self.shape = shape  # (rows, K, D)
        self.resumed = False
        self._open()

    def _open(self) -> None:
        plan_file = self.path / PLAN
        if plan_file.is_file() and (self.path / DONE).is_file():
            try:
                old = json.loads(plan_file.read_text())
            except json.JSONDecodeError:
                old = None
            if old == self.plan:
                self.states = np.load(self.path / STATES, mmap_mode="r+")
                self.present = np.load(self.path / PRESENT, mmap_mode="r+")
                self.done = np.load(self.path / DONE)
                self.resumed = True
                return
            print(f"discarding the partial build at {self.path}: it was started under other settings")
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        rows, k, d = self.shape
        self.states = np.lib.format.open_memmap(self.path / STATES, mode="w+", dtype=np.float16, shape=(rows, k, d))
        self.present = np.lib.format.open_memmap(self.path / PRESENT, mode="w+", dtype=np.bool_, shape=(rows,))
        self.states.flush()
        self.present.flush()
        self.done = np.zeros(len(self.batches), dtype=np.bool_)
        self._save_done()
        _write_json(plan_file, self.plan)

    def _save_done(self) -> None:
        tmp = self.path / (DONE + ".tmp.npy")
        np.save(tmp, self.done)
        os.replace(tmp, self.path / DONE)

    @property
    def complete(self) -> bool:
        return (self.path / COMPLETE).is_file()

    def pending(self) -> list[int]:
        """Batch indices (global) not yet written."""
        return [b for b, done in zip(self.batches, self.done) if not done]

    def rows_done(self, ranges: list[tuple[int, int]]) -> int:
        return sum(ranges[b][1] - ranges[b][0] for b, done in zip(self.batches, self.done) if done)

    def commit(self, batch: int, rows: tuple[int, int], states: np.ndarray, present: np.ndarray,
               corrupt: list[dict[str, Any]]) -> None:
        """Write one batch's rows, flush them, then mark the batch done."""
        a, b = rows[0] - self.lo, rows[1] - self.lo
        self.states[a:b] = states.astype(np.float16)
        self.present[a:b] = present
        self.states.flush()
        self.present.flush()
        if corrupt:
            with open(self.path / CORRUPT, "a") as f:
                for entry in corrupt:
                    f.write(json.dumps(entry, sort_keys=True) + "\n")
                f.flush()
        self.done[self.batches.index(batch)] = True
        self._save_done()

    def corrupt_entries(self) -> list[dict[str, Any]]:
        return read_corrupt_log(self.path)

    def close(self) -> None:
        for name in ("states", "present"):
            arr = getattr(self, name, None)
            if arr is not None:
                arr.flush()
                setattr(self, name, None)


def read_corrupt_log(folder: Path) -> list[dict[str, Any]]:
    """Corrupt files logged in a work folder, one per row (a re-run batch may have logged its rows twice)."""
    path = folder / CORRUPT
    if not path.is_file():
        return []
    by_row = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            by_row[entry["row"]] = entry
    return [by_row[r] for r in sorted(by_row)]


def _install(src: Path, dst: Path) -> None:
    """Move a finished folder into place, replacing ``dst`` only now that ``src`` is complete."""
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def _counts(present: np.ndarray, corrupt: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(present) - 1
    num_present = int(present[1:].sum())
    return {
        "num_present": num_present,
        "num_missing": n - num_present - len(corrupt),
        "num_corrupt": len(corrupt),
        "corrupt_items": corrupt,
    }


def _finish_single(area: WorkArea, final: Path, base_manifest: dict[str, Any]) -> dict[str, Any]:
    """Turn a completed single-process work area into the final cache folder."""
    corrupt = area.corrupt_entries()
    manifest = base_manifest | _counts(np.asarray(area.present), corrupt)
    area.close()
    for name in (DONE, CORRUPT, PLAN):
        (area.path / name).unlink(missing_ok=True)
    _write_json(area.path / MANIFEST, manifest)
    _install(area.path, final)
    return manifest


# --------------------------------------------------------------------------------------------- building
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
) -> None:
    """Encode the pending batches of ``area``; the next batch is read, decoded and preprocessed in a thread
    while the current one runs through the model (Pillow, PyAV, soundfile and the tokenizers release the GIL)."""
    from tqdm.auto import tqdm

    modality = encoder.modality
    pending = area.pending()
    total = sum(ranges[b][1] - ranges[b][0] for b in area.batches)
    bar = tqdm(total=total, initial=area.rows_done(ranges), desc=f"cache {modality}", unit="item",
               disable=not progress, dynamic_ncols=True)

    def load(b: int) -> tuple[LoadedMedia, dict[str, torch.Tensor] | None]:
        loaded = encoder.load_media(_record_batch(records, ranges[b]), catalogue, on_corrupt)
        return loaded, encoder.process_loaded(loaded)

    with ThreadPoolExecutor(max_workers=1) as pool, bar:
        future: Future[tuple[LoadedMedia, dict[str, torch.Tensor] | None]] | None = (
            pool.submit(load, pending[0]) if pending else None)
        for i, b in enumerate(pending):
            assert future is not None
            loaded, inputs = future.result()
            future = pool.submit(load, pending[i + 1]) if i + 1 < len(pending) else None
            try:
                out = encoder.encode_loaded(loaded, inputs)
                entries = _corrupt_entries(loaded, ranges[b], _record_batch(records, ranges[b]))
                area.commit(b, ranges[b], out.states.numpy(), out.present.numpy(), entries)
                bar.update(ranges[b][1] - ranges[b][0])
                if on_batch is not None:
                    on_batch(modality, b)
            except BaseException:
                if future is not None:
                    future.cancel()
                raise


def _base_manifest(encoder: ModalityEncoder, data: Any, batch_size: int) -> dict[str, Any]:
    return _jsonable({
        "format_version": FORMAT_VERSION,
        "modality": encoder.modality,
        "dtype": "float16",
        **encoder.describe(),
        "item_fingerprint": fingerprint_items(item_records(data)),
        "num_items": num_items(data),
        "shape": [num_items(data) + 1, encoder.num_taps, encoder.hidden_size],
        "build": {"batch_size": batch_size},
        "versions": _versions(),
    })


def _check_modalities(modalities: list[str]) -> list[str]:
    modalities = list(modalities)
    for m in modalities:
        if m not in MODALITIES:
            raise ValueError(f"unknown modality {m!r}; expected one of {list(MODALITIES)}")
    return modalities


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


def _open_work_area(ctx: _BuildContext, m: str, base: dict[str, Any], shape: tuple[int, int],
                    shard: int | None, num_shards: int) -> WorkArea:
    n, bs = len(ctx.records), ctx.cfg.encoders.batch_size
    if shard is None:
        plan = {"manifest": base, "lo": 0, "hi": n + 1, "batches": list(range(len(ctx.ranges)))}
        return WorkArea(ctx.root / f"{m}.partial", plan, (n + 1, *shape))
    lo, hi, batches = shard_span(n, bs, shard, num_shards)
    plan = {"manifest": base, "lo": lo, "hi": hi, "batches": batches, "shard": shard, "num_shards": num_shards}
    return WorkArea(ctx.root / f"{m}.shards" / f"{shard}-of-{num_shards}", plan, (hi - lo, *shape))


def _finish_shard(area: WorkArea, m: str) -> ModalityReport:
    area.close()
    (area.path / COMPLETE).write_text("complete\n")
    present = np.load(area.path / PRESENT)
    corrupt = area.corrupt_entries()
    rows = max(0, area.hi - max(area.lo, 1))
    num_present = int(present.sum())
    return ModalityReport(m, str(area.path), "shard built", num_items=rows, num_present=num_present,
                          num_missing=rows - num_present - len(corrupt), num_corrupt=len(corrupt), corrupt=corrupt)


def _build_modality(ctx: _BuildContext, m: str, spec: EncoderSpec, shard: int | None,
                    num_shards: int) -> ModalityReport:
    from crossan.encoders import build_encoder

    final = ctx.root / m
    existing = read_manifest(final)
    if existing is not None:
        if not manifest_differences(m, existing, expected_manifest(m, spec, ctx.data)):
            return _report_from_manifest(m, final, "up to date", existing)
        print(f"{m}: the cache at {final} was built under other settings; it is replaced once the new one is complete")
    encoder = build_encoder(m, spec, device=ctx.device)
    base = _base_manifest(encoder, ctx.data, ctx.cfg.encoders.batch_size)
    area = _open_work_area(ctx, m, base, (encoder.num_taps, encoder.hidden_size), shard, num_shards)
    if area.resumed:
        print(f"{m}: resuming the build at {area.path} ({int(area.done.sum())}/{len(area.done)} batches done)")
    from crossan.precision import autocast

    try:
        with autocast(ctx.cfg.precision, ctx.device):  # the encoder forward in bf16 where `precision` says so
            _run_batches(encoder, area, ctx.records, ctx.data.catalogue, ctx.ranges, ctx.cfg.cache.on_corrupt,
                         ctx.progress, ctx.on_batch)
    except BaseException:
        area.close()  # every finished batch is on disk: the next build resumes from here
        raise
    if shard is not None:
        return _finish_shard(area, m)
    return _report_from_manifest(m, final, "built", _finish_single(area, final, base))


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
    the configuration is left as it is. The encoders run on ``cfg.device``. Corrupt media stop the build
    with :class:`MediaError` (what was done so far stays resumable) unless ``cfg.cache.on_corrupt`` is
    ``missing``; the number marked missing is in the returned reports and printed.
    """
    from crossan.encoders import resolve_specs
    from crossan.utils import resolve_device

    modalities = _check_modalities(modalities)
    if num_shards > 1 and shard is None:
        raise ValueError(f"num_shards={num_shards} needs a shard index (0..{num_shards - 1})")
    root = cache_root(cfg, data)
    root.mkdir(parents=True, exist_ok=True)
    specs = resolve_specs(cfg, modalities)
    records = item_records(data)
    ctx = _BuildContext(cfg, data, root, records, batch_ranges(len(records), cfg.encoders.batch_size),
                        str(resolve_device(cfg.device)), progress, on_batch)
    reports: dict[str, ModalityReport] = {}
    for m in modalities:
        t0 = time.perf_counter()
        reports[m] = _build_modality(ctx, m, specs[m], shard, num_shards)
        reports[m].seconds = time.perf_counter() - t0
    _print_reports(reports)
    return reports


def _report_from_manifest(m: str, folder: Path, status: str, manifest: dict[str, Any]) -> ModalityReport:
    return ModalityReport(
        m, str(folder), status, num_items=int(manifest["num_items"]), num_present=int(manifest["num_present"]),
        num_missing=int(manifest["num_missing"]), num_corrupt=int(manifest["num_corrupt"]),
        corrupt=list(manifest.get("corrupt_items", [])),
    )


def _print_reports(reports: dict[str, ModalityReport]) -> None:
    for r in reports.values():
        print(r.summary())
        for entry in r.corrupt[:10]:
            print(f"  corrupt, marked missing: item {entry['item_id']!r} {entry['path']}: {entry['reason']}")
        if len(r.corrupt) > 10:
            print(f"  … and {len(r.corrupt) - 10} more (listed in the manifest)")


# --------------------------------------------------------------------------------------------- joining shards
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
    corrupt: list[dict[str, Any]] = []
    for folder, plan in shards:
        lo, hi = plan["lo"], plan["hi"]
        states[lo:hi] = np.load(folder / STATES, mmap_mode="r")
        present[lo:hi] = np.load(folder / PRESENT)
        corrupt += read_corrupt_log(folder)
    states.flush()
    present.flush()
    manifest = base | _counts(np.asarray(present), sorted(corrupt, key=lambda e: e["row"]))
    del states, present
    _write_json(work / MANIFEST, manifest)
    _install(work, root / m)
    shutil.rmtree(root / f"{m}.shards")
    return manifest


def join_shards(cfg: Config, data: Any, modalities: list[str]) -> dict[str, ModalityReport]:
    """Assemble completed shards into each modality's cache (the same bytes as a single-process build)."""
    from crossan.encoders import resolve_specs

    modalities = _check_modalities(modalities)
    root = cache_root(cfg, data)
    specs = resolve_specs(cfg, modalities)
    reports: dict[str, ModalityReport] = {}
    for m in modalities:
        t0 = time.perf_counter()
        manifest = _join_modality(root, m, _checked_shard_plans(cfg, data, m, specs[m], root))
        reports[m] = _report_from_manifest(m, root / m, "joined", manifest)
        reports[m].seconds = time.perf_counter() - t0
    _print_reports(reports)
    return reports


# --------------------------------------------------------------------------------------------- reading
def open_cache(cfg: Config, data: Any, modalities: list[str], mmap: bool = True) -> TensorFeatures:
    """The cached states of ``modalities`` after checking each manifest against the run.

    ``mmap``: memory-map the state arrays (read-only; rows are read as they are gathered) rather than
    reading them into memory.
    """
    from crossan.encoders import resolve_specs

    modalities = _check_modalities(modalities)
    root = cache_root(cfg, data)
    specs = resolve_specs(cfg, modalities)
    absent = [m for m in modalities if read_manifest(root / m) is None]
    if absent:
        partial = [m for m in absent if (root / f"{m}.partial").exists() or (root / f"{m}.shards").exists()]
        hint = f" ({', '.join(partial)}: an unfinished build is there; the command resumes it)" if partial else ""
        raise CacheMissingError(
            f"no layer-state cache for {', '.join(absent)} in {root}{hint}. Build it with:\n"
            f"  {cache_command_line(cfg, absent)}\n(or run with cached=false to encode items live)"
        )
    diffs: list[str] = []
    manifests = {}
    for m in modalities:
        manifests[m] = read_manifest(root / m)
        diffs += manifest_differences(m, manifests[m], expected_manifest(m, specs[m], data))
    if diffs:
        raise CacheMismatchError(
            f"the cache in {root} does not match this run:\n  " + "\n  ".join(diffs)
            + f"\nRebuild it with:\n  {cache_command_line(cfg, modalities)}", diffs)
    states, present = {}, {}
    for m in modalities:
        states[m] = np.load(root / m / STATES, mmap_mode="r" if mmap else None)
        present[m] = np.load(root / m / PRESENT)
        shape = list(manifests[m]["shape"])
        if list(states[m].shape) != shape or present[m].shape != (shape[0],):
            raise CacheError(f"{root / m}: arrays of shape {states[m].shape} and {present[m].shape} do not match "
                             f"the manifest's {shape}; rebuild the cache")
    return TensorFeatures(states, present)


def open_features(cfg: Config, data: Any, modalities: list[str], device: Any = "cpu") -> Any:
    """The feature source of a run: the cache (in memory when it fits ``cache.memory_limit_gb``) or live."""
    if not cfg.cached:
        from crossan.cache.live import LiveFeatures
        from crossan.encoders import build_encoder, resolve_specs

        specs = resolve_specs(cfg, modalities)
        encoders = {m: build_encoder(m, specs[m], device=str(device)) for m in modalities}
        return LiveFeatures(encoders, data.catalogue, data.item_ids, batch_size=cfg.encoders.batch_size,
                            on_corrupt=cfg.cache.on_corrupt)
    size = 0
    for m in modalities:
        manifest = read_manifest(cache_root(cfg, data) / m) or {}
        size += int(np.prod(manifest.get("shape", [0]))) * 2  # float16
    if size <= cfg.cache.memory_limit_gb * 2**30:
        return open_cache(cfg, data, modalities, mmap=False).to_memory(device if cfg.cache.on_device else "cpu")
    return open_cache(cfg, data, modalities)


# --------------------------------------------------------------------------------------------- CLI
def cache_command(cfg: Config, data: Any, modalities: list[str], shard: int | None, num_shards: int,
                  join: bool) -> None:
    """``crossan cache``: build (``--shard i --num-shards n`` for one shard) or ``--join`` the shards."""
    if join:
        if shard is not None:
            raise ValueError("--join assembles all shards; do not give --shard with it")
        join_shards(cfg, data, modalities)
        return
    if shard is not None and num_shards < 2:
        raise ValueError("--shard needs --num-shards of at least 2")
    reports = build_cache(cfg, data, modalities, shard=shard, num_shards=num_shards)
    if shard is not None and all(r.status == "shard built" for r in reports.values()):
        print(f"shard {shard} of {num_shards} done; when all are, run `{cache_command_line(cfg, modalities)} --join`")

"""Cache integrity: what each item's states were made from, checksums of the stored arrays, and their checks.

Two records are written with every completed cache (single build, resumed build or joined shards):

* ``sources.npy`` — per row, what the row was made from when the build started (:data:`SOURCE_DTYPE`).
  Media modalities: the file's size (``-1``: no file; ``-2``: a path refused as outside the dataset root),
  its modification time in nanoseconds, the SHA-256 of its bytes for files of at most
  :data:`HASH_MAX_BYTES` (zeros when not hashed) and a digest of its path as the catalogue gives it
  (relative to the dataset root; zeros: no path). Text: the title's UTF-8 length, mtime 0 and the SHA-256
  of the title. The manifest's item fingerprint covers only the item ids in row order, so this record is
  what tells that a title or media file changed. ``crossan cache`` compares the current data with it
  (:func:`changed_rows`): a title counts as changed when its hash differs; a media row whose size, mtime
  or path changed is re-hashed and counts as changed unless its recorded hash still matches (the same
  bytes under another path are not re-encoded; a file too large to hash is changed once its path, size or
  mtime is). A file that appears or disappears changes the size. A path that is no regular file (a folder,
  a named pipe, a device) or cannot be read is recorded as no file (size -1, mtime 0), on every run alike:
  it is never opened (reading a named pipe blocks), and it is no change until it becomes a readable file.
  The batches holding changed rows are encoded again, and the result equals a fresh build; a run refuses the cache until then
  (:func:`crossan.cache.read.open_cache`). A file replaced by one of the same size whose mtime was also
  restored (``cp -p``) at the same path is only caught by ``crossan cache --verify``, which re-hashes
  every file of at most :data:`HASH_MAX_BYTES`.
* ``manifest["checksums"]`` — byte count and SHA-256 of ``states.npy``, ``present.npy`` and
  ``sources.npy``. Opening a cache always checks each file's size and ``.npy`` header (dtype, shape) and
  hashes the files in full when ``states.npy`` is at most :data:`VERIFY_ON_OPEN_BYTES`
  (about 0.4 s at the 600 MB/s SHA-256 of the project's shared 2-core machine); ``crossan cache --verify``
  always hashes in full, scans every row for non-finite values and checks that absent rows are zero.

Non-finite states are refused when a batch is encoded (:func:`check_finite`), naming modality and item.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np

from crossan.cache.layout import PRESENT, SOURCES, SOURCES_NEXT, STATES
from crossan.errors import CacheError

HASH_MAX_BYTES = 16 << 20
"""Media files up to this size are hashed (SHA-256) when the cache is built; larger ones are tracked by
size and mtime only."""

VERIFY_ON_OPEN_BYTES = 256 << 20
"""Opening a cache hashes its arrays in full when ``states.npy`` is at most this size; above it, only
sizes and headers are checked on open (``crossan cache --verify`` hashes any size)."""

SOURCE_DTYPE = np.dtype([("size", "<i8"), ("mtime_ns", "<i8"), ("sha256", "S32"), ("path", "S16")])
"""One row of ``sources.npy``; ``path``: the first 16 bytes of the SHA-256 of the item's media path (text
rows and items without a path: zeros)."""
NO_FILE, REFUSED = -1, -2
_EMPTY = np.zeros((), dtype="S32")
CHECKED_FILES = (STATES, PRESENT, SOURCES)


# --------------------------------------------------------------------------------------------- sources
def _media_path(catalogue: Any, record: Any, modality: str) -> Path | None | int:
    from crossan.data.media import MediaError

    try:
        return catalogue.path(record, modality)
    except MediaError:
        return REFUSED


def _hash_file(path: Path) -> bytes:
    """SHA-256 of a regular file's bytes; :class:`OSError` for anything else (opened without blocking: a
    named pipe put in the file's place after it was looked up is refused, not waited on)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        h = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def stat_sources(modality: str, records: list[Any], catalogue: Any) -> np.ndarray:
    """Rows ``0..N`` of size, mtime and path digest of each item's ``modality`` file (no file hashes yet;
    row 0 is padding); for text the complete record of each title (its length and hash)."""
    out = np.zeros(len(records) + 1, dtype=SOURCE_DTYPE)
    out["size"] = NO_FILE
    if modality == "text":  # the title is the item's text input: recorded whole (mtime 0)
        for row, record in enumerate(records, start=1):
            title = record.text.encode("utf-8")
            out[row]["size"], out[row]["sha256"] = len(title), hashlib.sha256(title).digest()
        return out
    for row, record in enumerate(records, start=1):
        rel = getattr(record, modality)
        if rel is not None:
            out[row]["path"] = hashlib.sha256(str(rel).encode("utf-8")).digest()[:16]
        path = _media_path(catalogue, record, modality)
        if isinstance(path, int):
            out[row]["size"] = path
        elif path is not None:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):  # a folder, a named pipe, a device: no file (never opened)
                out[row]["size"], out[row]["mtime_ns"] = st.st_size, st.st_mtime_ns
    return out


def hash_rows(sources: np.ndarray, rows: np.ndarray, modality: str, records: list[Any], catalogue: Any) -> None:
    """Fill in the SHA-256 of the given rows' files (those of at most :data:`HASH_MAX_BYTES`), in place
    (text rows are complete already)."""
    if modality == "text":
        return
    for row in rows:
        row = int(row)
        if sources[row]["size"] < 0 or sources[row]["size"] > HASH_MAX_BYTES:
            continue
        path = _media_path(catalogue, records[row - 1], modality)
        try:
            sources[row]["sha256"] = _hash_file(path)  # type: ignore[arg-type]
        except OSError:  # unreadable: recorded as no file, as stat_sources records one (the same on every run)
            sources[row]["size"], sources[row]["mtime_ns"] = NO_FILE, 0


def current_sources(modality: str, records: list[Any], catalogue: Any) -> np.ndarray:
    """What the build about to start reads: sizes, mtimes and hashes of every row's file."""
    sources = stat_sources(modality, records, catalogue)
    hash_rows(sources, np.arange(1, len(sources)), modality, records, catalogue)
    return sources


def changed_rows(old: np.ndarray, modality: str, records: list[Any], catalogue: Any,
                 rehash_all: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose title or file differs from the record ``old``, and the current record.

    Text: a row whose title hash (or length) differs. Media: a row whose size, mtime and path are unchanged
    is taken as unchanged (and keeps its recorded hash) unless ``rehash_all``; any other row is hashed and
    compared with the recorded hash when both exist, else counts as changed."""
    now = stat_sources(modality, records, catalogue)
    if len(old) != len(now) or old.dtype != SOURCE_DTYPE:
        hash_rows(now, np.arange(1, len(now)), modality, records, catalogue)
        return np.arange(1, len(now)), now
    if modality == "text":
        changed = np.flatnonzero((old["size"] != now["size"]) | (old["sha256"] != now["sha256"]))
        return changed[changed > 0], now
    same_stat = (old["size"] == now["size"]) & (old["mtime_ns"] == now["mtime_ns"]) & (old["path"] == now["path"])
    to_hash = np.arange(1, len(now)) if rehash_all else np.flatnonzero(~same_stat)
    now["sha256"][same_stat] = old["sha256"][same_stat]
    hash_rows(now, to_hash[to_hash > 0], modality, records, catalogue)
    # compared after hashing: a file that cannot be read is no file now, and no change if it was none before
    same_stat = (old["size"] == now["size"]) & (old["mtime_ns"] == now["mtime_ns"]) & (old["path"] == now["path"])
    hashed = (old["sha256"] != _EMPTY) & (now["sha256"] != _EMPTY)
    same_content = (old["size"] == now["size"]) & np.where(hashed, old["sha256"] == now["sha256"], same_stat)
    changed = np.flatnonzero(~same_content)
    return changed[changed > 0], now


def describe_rows(rows: np.ndarray, records: list[Any], modality: str, limit: int = 5) -> str:
    """``"'i3' (img/i3.jpg), 'i7' (img/i7.jpg) and 2 more"``; for text the title, cut to 40 characters."""
    def what(record: Any) -> str:
        if modality == "text":
            title = record.text
            return repr(title if len(title) <= 40 else title[:39] + "…")
        return getattr(record, modality, None) or "no file"

    names = [f"{records[r - 1].item_id!r} ({what(records[r - 1])})" for r in rows[:limit]]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(names) + more


def describe_changed(modality: str, count: int) -> str:
    """``"3 media file(s) changed"``, or ``"3 title(s) changed"`` for text."""
    return f"{count} {'title(s)' if modality == 'text' else 'media file(s)'} changed"


# --------------------------------------------------------------------------------------------- checksums
def file_checksum(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _hash_file(path).hex()}


def checksums(folder: Path) -> dict[str, dict[str, Any]]:
    """``{file: {"bytes", "sha256"}}`` of a finished folder's arrays (recorded in its manifest)."""
    return {name: file_checksum(folder / name) for name in CHECKED_FILES}


def load_array(path: Path, mmap: bool = False, expected_shape: tuple[int, ...] | None = None,
               dtype: Any = None) -> np.ndarray:
    """``np.load`` that names the file on any failure and checks shape and dtype against the manifest."""
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise CacheError(f"{path}: missing; rebuild the cache with `crossan cache`") from None
    except (ValueError, OSError, EOFError) as e:
        raise CacheError(f"{path}: not a readable .npy array ({str(e).splitlines()[0][:160]}); "
                         "rebuild the cache with `crossan cache`") from None
    if expected_shape is not None and tuple(arr.shape) != tuple(expected_shape):
        raise CacheError(f"{path}: shape {tuple(arr.shape)} does not match the manifest's {tuple(expected_shape)}; "
                         "rebuild the cache with `crossan cache`")
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise CacheError(f"{path}: dtype {arr.dtype} where the cache stores {np.dtype(dtype)}; rebuild the cache")
    return arr


def check_files(folder: Path, manifest: dict[str, Any], full: bool | None = None) -> list[str]:
    """Problems with a completed cache folder's arrays: sizes, headers and (``full``) SHA-256 checksums.

    ``full=None`` hashes when ``states.npy`` is at most :data:`VERIFY_ON_OPEN_BYTES`. A ``sources.npy`` that
    differs from the manifest's checksum while ``sources.next.npy`` matches it is no problem: a ``crossan
    cache`` recording the new times of files touched with the same bytes was killed after the manifest and
    before the rename (:func:`~crossan.cache.workarea.record_sources`), and the old record still describes
    those files' bytes; the next single-process build or join puts the new one in place
    (:func:`~crossan.cache.workarea.recover_sources`). Readers and shard builds, which hold no lock to do that,
    used to take such a cache for damaged: training refused it, and a sharded build encoded every item again."""
    recorded = manifest.get("checksums")
    if not isinstance(recorded, dict):
        return [f"{folder / 'manifest.json'}: no checksums recorded; rebuild the cache"]
    problems = []
    for name in CHECKED_FILES:
        path, want = folder / name, recorded.get(name) or {}
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != want.get("bytes"):
            problems.append(f"{path}: {path.stat().st_size} bytes where the build wrote {want.get('bytes')} "
                            "(truncated or replaced)")
    if problems:
        return problems
    shape = tuple(manifest.get("shape", ()))
    for name, exp, dtype in ((STATES, shape, np.float16), (PRESENT, shape[:1], np.bool_),
                             (SOURCES, shape[:1], SOURCE_DTYPE)):
        try:
            load_array(folder / name, mmap=True, expected_shape=exp, dtype=dtype)
        except CacheError as e:
            problems.append(str(e))
    if problems:
        return problems
    if full is None:
        full = (folder / STATES).stat().st_size <= VERIFY_ON_OPEN_BYTES
    if full:
        for name in CHECKED_FILES:
            if _hash_file(folder / name).hex() == recorded[name].get("sha256"):
                continue
            pending = folder / SOURCES_NEXT
            if name == SOURCES and pending.is_file() and file_checksum(pending) == recorded[name]:
                continue  # the record being put in place (see above)
            problems.append(f"{folder / name}: contents differ from the build (SHA-256 mismatch)")
    return problems


# --------------------------------------------------------------------------------------------- values
def nonfinite_rows(states: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Rows of ``states`` holding NaN or ±inf (read in chunks of rows: fits a memory-mapped array)."""
    bad = []
    for a in range(0, len(states), chunk):
        block = np.asarray(states[a:a + chunk])
        bad.append(np.flatnonzero(~np.isfinite(block).reshape(len(block), -1).all(1)) + a)
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def nonfinite_problems(modality: str, folder: Path, records: list[Any]) -> list[str]:
    """``[message]`` naming the items whose stored states hold NaN/inf (``[]`` if none, or unreadable)."""
    try:
        states = np.load(folder / STATES, mmap_mode="r", allow_pickle=False)
        rows = nonfinite_rows(states)
    except (ValueError, OSError, EOFError):
        return []
    rows = rows[(rows > 0) & (rows <= len(records))]
    if not len(rows):
        return []
    return [f"{folder / STATES}: non-finite values (NaN/inf) in {modality} states of item "
            f"{describe_rows(rows, records, modality)}"]


def check_finite(modality: str, states: np.ndarray, first_row: int, records: list[Any]) -> None:
    """Refuse a batch of (float16) states holding NaN or ±inf, naming modality, item and row."""
    bad = nonfinite_rows(states)
    if len(bad):
        rows = bad + first_row
        raise CacheError(f"{modality}: the encoder produced non-finite states (NaN/inf in float16) for item "
                         f"{describe_rows(rows, records, modality)} (row {int(rows[0])}): either NaN/inf from the "
                         "encoder itself, or values beyond ±65504, which overflow the cache's float16; nothing of "
                         "this batch is stored (earlier batches are kept and resumed)")


VERIFY_ROWS = 4096
"""Rows of states ``verify_folder`` reads at a time."""


def verify_folder(modality: str, folder: Path, manifest: dict[str, Any], records: list[Any],
                  catalogue: Any) -> list[str]:
    """Every check of a completed cache: files, full checksums, values, absent rows, sources re-hashed."""
    t0 = time.perf_counter()
    problems = check_files(folder, manifest, full=True)
    if any("missing" in p or "bytes where" in p or "not a readable" in p or "shape" in p for p in problems):
        return problems
    states = np.load(folder / STATES, mmap_mode="r")
    present = np.load(folder / PRESENT)
    problems += nonfinite_problems(modality, folder, records)
    if not np.isfinite(np.asarray(states[0])).all():
        problems.append(f"{folder / STATES}: non-finite values (NaN/inf) in the padding row 0")
    nonzero: list[int] = []
    for a in range(0, len(states), VERIFY_ROWS):  # chunks of rows: fits a memory-mapped array
        block, absent = states[a:a + VERIFY_ROWS], ~present[a:a + VERIFY_ROWS]
        held = np.asarray(block[absent]).any(axis=tuple(range(1, block.ndim)))  # none absent: an empty array
        nonzero += [int(r) + a for r in np.flatnonzero(absent)[held]]
    if nonzero:
        problems.append(f"{folder}: rows marked absent in present.npy hold states: row(s) {nonzero[:5]}")
    if present[0]:
        problems.append(f"{folder / PRESENT}: the padding row 0 is marked present")
    old = np.load(folder / SOURCES)
    changed, _ = changed_rows(old, modality, records, catalogue, rehash_all=True)
    if len(changed):
        problems.append(f"{modality}: {describe_changed(modality, len(changed))} since the build: "
                        f"{describe_rows(changed, records, modality)}; `crossan cache` re-encodes them")
    manifest["_verify_seconds"] = time.perf_counter() - t0
    return problems

"""Build plans and work areas: which rows a (shard of a) build covers, and the resumable folder it fills.

Rows ``1..N`` are encoded in batches of ``encoders.batch_size``; shards take contiguous runs of whole
batches. A :class:`WorkArea` preallocates the state arrays as memmaps and marks each batch done once its
rows are flushed, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossan.cache.integrity import changed_rows, check_files, checksums, file_checksum, load_array
from crossan.cache.layout import (
    COMPLETE,
    CORRUPT,
    DONE,
    MANIFEST,
    PLAN,
    PRESENT,
    SOURCES,
    SOURCES_NEXT,
    STATES,
)
from crossan.cache.manifest import describe_compute, flatten, jsonable, read_manifest, write_json
from crossan.errors import CacheError, WriteError
from crossan.utils import atomic_write, atomic_write_text, remove_stale_temporaries


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
    """``built``, ``updated`` (changed rows re-encoded), ``up to date``, ``shard built``, ``joined`` or
    ``verified``."""
    num_items: int = 0
    num_present: int = 0
    num_missing: int = 0
    num_corrupt: int = 0
    corrupt: list[dict[str, Any]] = field(default_factory=list)
    """Corrupt files marked missing: ``{"row", "item_id", "path", "reason"}``."""
    seconds: float = 0.0
    compute: str = ""
    """How the states were computed (:func:`~crossan.cache.manifest.describe_compute`), e.g. ``bfloat16
    compute on cpu``."""

    def summary(self) -> str:
        text = f"{self.modality}: {self.status} at {self.path}"
        if self.num_items:
            text += f" — {self.num_present}/{self.num_items} items present, {self.num_missing} missing"
        if self.num_corrupt:
            text += f", {self.num_corrupt} corrupt files marked missing"
        if self.compute:
            text += f"; {self.compute}"
        if self.seconds:
            text += f" ({self.seconds:.1f} s)"
        return text


class WorkArea:
    """A resumable build over rows ``[lo, hi)``: preallocated memmaps plus a per-batch done mask."""

    def __init__(self, path: Path, plan: dict[str, Any], shape: tuple[int, int, int],
                 sources: np.ndarray | None = None, seed: tuple[Path, set[int], list[dict[str, Any]]] | None = None) -> None:
        """``sources``: the rows' source record (:mod:`crossan.cache.integrity`), stored beside the states;
        its hash joins the plan, so a partial build started from other files resumes only once the batches
        holding the rows that changed are marked to be encoded again (:meth:`_changed_rows_only`). ``seed``:
        ``(completed cache folder, batches to encode again, its corrupt entries outside them)`` — an update
        copies that cache's arrays and marks every other batch done."""
        self.path = path
        self.sources = sources
        if sources is not None:
            plan = {**plan, "sources_sha256": hashlib.sha256(sources.tobytes()).hexdigest()}
        self.plan = jsonable(plan)
        self.lo, self.hi = int(plan["lo"]), int(plan["hi"])
        self.batches: list[int] = list(plan["batches"])
        self.shape = shape  # (rows, K, D)
        self.resumed = False
        self.finished: dict[str, Any] | None = None
        """The manifest of a finished build found here (:meth:`_finished_build`): nothing is left to encode,
        only the install."""
        self._open(seed)

    def _open(self, seed: tuple[Path, set[int], list[dict[str, Any]]] | None = None) -> None:
        self.finished = self._finished_build()
        if self.finished is not None:
            self.states = self.present = None
            self.done = np.ones(len(self.batches), dtype=np.bool_)
            self.resumed = True
            return
        plan_file = self.path / PLAN
        if plan_file.is_file() and (self.path / DONE).is_file():
            try:
                old = json.loads(plan_file.read_text())
            except json.JSONDecodeError:
                old = None
            if old == self.plan or self._changed_rows_only(old):
                remove_stale_temporaries(self.path)  # what writes killed mid-way left (the build lock is ours)
                reserve(self.path / STATES)  # a sparse file from an older crossan
                self.states = np.load(self.path / STATES, mmap_mode="r+")
                self.present = np.load(self.path / PRESENT, mmap_mode="r+")
                self.done = np.load(self.path / DONE)
                self.resumed = True
                if old != self.plan:
                    self._redo_changed_rows()
                return
            what = "; ".join(plan_differences(old, self.plan)) if isinstance(old, dict) else "unreadable plan"
            try:
                done = np.load(self.path / DONE)
                progress = f", {int(done.sum())}/{done.size} batches done"
            except (OSError, ValueError):
                progress = ""
            print(f"discarding the partial build at {self.path}: it was started under other settings "
                  f"({what}{progress})")
        if self.path.exists():
            shutil.rmtree(self.path)
        try:
            self._create(seed)
        except OSError as e:
            if isinstance(e, WriteError):
                raise
            raise WriteError(f"{self.path}: cannot create the build's files ({e.strerror or e}); free some space "
                             "or set cache.dir to another disk") from None

    def _changed_rows_only(self, old: Any) -> bool:
        """Whether a partial build's plan ``old`` differs from this one's in its rows' sources only (a title
        or media file changed since it started, such as a corrupt file replaced), with its ``sources.npy``
        readable: it is then resumed, its batches holding a changed row encoded again
        (:meth:`_redo_changed_rows`), not discarded with every batch it finished."""
        if self.sources is None or not isinstance(old, dict) or "sources_sha256" not in old:
            return False
        if {k: v for k, v in old.items() if k != "sources_sha256"} != \
                {k: v for k, v in self.plan.items() if k != "sources_sha256"}:
            return False
        try:
            before = load_array(self.path / SOURCES)
        except CacheError:
            return False
        return before.dtype == self.sources.dtype and before.shape == self.sources.shape

    def _redo_changed_rows(self) -> None:
        """Mark not done every batch holding a row whose source record differs from the one the partial
        build started from, drop those rows' corrupt entries, then record the current sources and plan. In
        that order, so a process killed in between finds the same rows changed the next time."""
        assert self.sources is not None
        changed = np.flatnonzero(load_array(self.path / SOURCES) != self.sources)
        bs = int(self.plan["manifest"]["build"]["batch_size"])
        redo = {int(r - 1) // bs for r in changed if r > 0}
        self.done &= np.array([b not in redo for b in self.batches], dtype=np.bool_)
        self._save_done()
        rows = {r for b in redo for r in range(1 + b * bs, 1 + (b + 1) * bs)}
        kept = [e for e in read_corrupt_log(self.path) if e["row"] not in rows]
        write_corrupt_log(self.path, kept)
        atomic_write(self.path / SOURCES, lambda tmp: np.save(tmp, self.sources), suffix=".npy")
        write_json(self.path / PLAN, self.plan)
        print(f"{self.path}: {len(changed)} item(s) changed since this partial build started; the batches "
              "holding them are encoded again, its other finished batches kept")

    def _finished_build(self) -> dict[str, Any] | None:
        """The manifest of a build that finished here and was killed before it was in place, when it is the
        build this one would make; None otherwise.

        :func:`finish_single` writes the manifest (with the arrays' checksums) last, then deletes the plan and
        done mask and renames the folder into place; a process killed in between leaves a finished folder
        whose plan may be gone. It is taken as this build's result, without encoding anything again, when its
        manifest (less the counts and checksums) equals this plan's, its ``sources.npy`` equals this build's
        sources and every checksum matches; a finished folder whose arrays no longer match their checksums
        is discarded (it cannot be resumed either: every batch was marked done)."""
        try:
            manifest = read_manifest(self.path, missing_ok=True)
        except CacheError:
            return None
        if manifest is None or self.sources is None or "shard" in self.plan:  # a shard finishes with COMPLETE
            return None
        built = {k: v for k, v in manifest.items() if k not in _RESULT_KEYS}
        if built != self.plan["manifest"]:
            return None
        try:
            same_sources = np.array_equal(load_array(self.path / SOURCES), self.sources)
        except CacheError:
            return None
        if not same_sources:
            return None
        problems = check_files(self.path, manifest, full=True)
        if problems:
            print(f"discarding the finished build at {self.path}: its files changed since it was hashed "
                  f"({'; '.join(problems)})")
            shutil.rmtree(self.path)
            return None
        return manifest

    def _create(self, seed: tuple[Path, set[int], list[dict[str, Any]]] | None) -> None:
        plan_file = self.path / PLAN
        self.path.mkdir(parents=True)
        rows, k, d = self.shape
        if seed is not None:  # an update: start from the completed cache, redo only the changed batches
            folder, redo, kept_corrupt = seed
            for name in (STATES, PRESENT):
                copy_file(folder / name, self.path / name)
            if kept_corrupt:
                write_corrupt_log(self.path, kept_corrupt)
            self.states = np.load(self.path / STATES, mmap_mode="r+")
            self.present = np.load(self.path / PRESENT, mmap_mode="r+")
            self.done = np.array([b not in redo for b in self.batches], dtype=np.bool_)
        else:
            self.states = np.lib.format.open_memmap(self.path / STATES, mode="w+", dtype=np.float16,
                                                    shape=(rows, k, d))
            self.present = np.lib.format.open_memmap(self.path / PRESENT, mode="w+", dtype=np.bool_, shape=(rows,))
            reserve(self.path / STATES)
            reserve(self.path / PRESENT)
            self.done = np.zeros(len(self.batches), dtype=np.bool_)
        self.states.flush()
        self.present.flush()
        if self.sources is not None:
            atomic_write(self.path / SOURCES, lambda tmp: np.save(tmp, self.sources), suffix=".npy")
        self._save_done()
        write_json(plan_file, self.plan)

    def _save_done(self) -> None:
        atomic_write(self.path / DONE, lambda tmp: np.save(tmp, self.done), suffix=".npy")

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
                os.fsync(f.fileno())  # on disk before done.npy says the batch is finished
        self.done[self.batches.index(batch)] = True
        self._save_done()

    def corrupt_entries(self) -> list[dict[str, Any]]:
        """Corrupt files marked missing so far, one per row (of a finished build: those of its manifest)."""
        if self.finished is not None:
            return list(self.finished.get("corrupt_items", []))
        return read_corrupt_log(self.path)

    def close(self) -> None:
        for name in ("states", "present"):
            arr = getattr(self, name, None)
            if arr is not None:
                arr.flush()
                setattr(self, name, None)


_RESULT_KEYS = frozenset({"num_present", "num_missing", "num_corrupt", "corrupt_items", "checksums"})
"""What :func:`finish_single` adds to the plan's manifest: the counts (:func:`counts`) and the checksums."""

_PLAN_LABELS = {
    "manifest.build.compute_dtype": "compute dtype",
    "manifest.build.device": "device type",
    "manifest.build.batch_size": "encoders.batch_size",
    "sources_sha256": "media files",
}


def plan_differences(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> list[str]:
    """What differs between a partial build's plan and the current one: ``"compute dtype 'float32' then,
    'bfloat16' now"`` (the first ``limit`` differences, compute settings first)."""
    a, b = flatten(old), flatten(new)
    differ = [k for k in set(a) | set(b) if a.get(k) != b.get(k)]
    keys = sorted(differ, key=lambda k: (k not in _PLAN_LABELS, k))
    lines = []
    for k in keys[:limit]:
        label = _PLAN_LABELS.get(k, k.removeprefix("manifest."))
        if k == "sources_sha256":
            lines.append("titles or media files changed")
        else:
            lines.append(f"{label} {a.get(k, 'not recorded')!r} then, {b.get(k, 'not recorded')!r} now")
    if len(keys) > limit:
        lines.append(f"{len(keys) - limit} more")
    return lines


def reserve(path: Path) -> None:
    """Allocate every block of ``path`` now. ``open_memmap`` makes a sparse file: when the disk fills while
    its pages are written back, the process dies of SIGBUS without a message; reserving the space up front
    turns that into :class:`WriteError` naming the file before any work is done. File systems without
    ``posix_fallocate`` keep the sparse file."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise WriteError(f"{path}: not enough disk space for the cache ({size:,} bytes to reserve, "
                             f"{free:,} free); free some space or set cache.dir to another disk "
                             "and run the command again (finished batches are kept)") from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise WriteError(f"{path}: cannot reserve space ({e.strerror})") from None
    finally:
        os.close(fd)


def copy_file(src: Path, dst: Path) -> None:
    """``shutil.copyfile`` that reports a full disk as :class:`WriteError` naming ``dst``."""
    try:
        shutil.copyfile(src, dst)
    except OSError as e:
        raise WriteError(f"{dst}: cannot copy {src} there ({e.strerror or e}); free some space or set cache.dir "
                         "to another disk") from None


def write_corrupt_log(folder: Path, entries: list[dict[str, Any]]) -> None:
    """Replace a work folder's corrupt-file log by ``entries`` (one JSON line each; atomically)."""
    atomic_write_text(folder / CORRUPT, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


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


def install(src: Path, dst: Path) -> None:
    """Move a finished folder into place, replacing ``dst`` only now that ``src`` is complete.

    ``dst`` is first renamed to ``<dst>.old``, so a process killed between the two renames leaves no
    ``dst`` but the previous cache whole in ``<dst>.old``; :func:`recover_install` puts it back."""
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def recover_install(dst: Path) -> None:
    """Undo what an :func:`install` killed mid-way left, before anything reads ``dst`` to build it: a
    ``<dst>.old`` beside a ``dst`` is the replaced cache not yet deleted (deleted now); a ``<dst>.old``
    without ``dst`` is the previous cache moved aside just before the kill (put back, whole: a build then
    finds it as if the install had not begun, and installs the finished work folder it left without
    encoding again, :meth:`WorkArea._finished_build`). Call it under the modality's build lock."""
    old = dst.with_name(dst.name + ".old")
    if not old.is_dir():
        return
    if dst.exists():
        shutil.rmtree(old)
    else:
        print(f"{dst}: a build was killed while replacing this cache; putting the previous one back from "
              f"{old}")
        os.replace(old, dst)


def record_sources(m: str, folder: Path, manifest: dict[str, Any], old: np.ndarray, now: np.ndarray) -> None:
    """Record in an up-to-date cache the new sizes and times of media files touched since it was built (new
    times, the same bytes: their hashes matched): ``sources.npy`` becomes ``now`` and the manifest its checksum;
    otherwise every later open would hash those files again. Call it under the modality's build lock.

    The new record is written beside the old one (``sources.next.npy``), the manifest then names its checksum,
    and it is renamed over ``sources.npy`` last. A process killed before the manifest is written leaves the
    cache as it was; one killed after it leaves the record the manifest names, put in place by the next build
    (:func:`recover_sources`). ``sources.npy`` used to be replaced first: a process killed before the manifest
    left a cache whose ``sources.npy`` no longer matched its checksum, and the next build took a small cache
    (hashed in full on open) for damaged and encoded every item again."""
    touched = int(np.count_nonzero(old != now))
    pending = folder / SOURCES_NEXT
    atomic_write(pending, lambda tmp: np.save(tmp, now), suffix=".npy")
    manifest["checksums"][SOURCES] = file_checksum(pending)
    write_json(folder / MANIFEST, manifest)
    os.replace(pending, folder / SOURCES)
    print(f"{m}: {touched} media file(s) have new times but the same bytes; recorded them in {folder / SOURCES} "
          "(no re-hashing at the next open)")


def record_touched(m: str, folder: Path, manifest: dict[str, Any], records: list[Any], catalogue: Any) -> None:
    """:func:`record_sources` for a completed cache found up to date, when only its files' times changed (a
    join finds the cache up to date with the sharded build's ranks gone; the shards do not write into it)."""
    old = load_array(folder / SOURCES)
    changed, now = changed_rows(old, m, records, catalogue)
    if not len(changed) and not np.array_equal(old, now):
        record_sources(m, folder, manifest, old, now)


def recover_sources(folder: Path) -> None:
    """Finish or undo what a :func:`record_sources` killed mid-way left in a completed cache, before anything
    reads it to build: a ``sources.next.npy`` whose checksum the manifest records is the new record, killed
    before its rename (put in place now: the cache is the one an uninterrupted record leaves); any other was
    written before its manifest (deleted: the cache is as it was, and the build records the times again).
    Temporary files of writes killed there are deleted too. Call it under the modality's build lock."""
    pending = folder / SOURCES_NEXT
    remove_stale_temporaries(folder)
    if not pending.is_file():
        return
    try:
        manifest = read_manifest(folder, missing_ok=True) or {}
    except CacheError:
        manifest = {}
    recorded = manifest.get("checksums")
    if isinstance(recorded, dict) and recorded.get(SOURCES) == file_checksum(pending):
        print(f"{folder}: a build was killed while recording its media files' new times; finishing that")
        os.replace(pending, folder / SOURCES)
    else:
        pending.unlink()


def counts(present: np.ndarray, corrupt: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(present) - 1
    num_present = int(present[1:].sum())
    return {
        "num_present": num_present,
        "num_missing": n - num_present - len(corrupt),
        "num_corrupt": len(corrupt),
        "corrupt_items": corrupt,
    }


def finish_single(area: WorkArea, final: Path, base_manifest: dict[str, Any]) -> dict[str, Any]:
    """Turn a completed single-process work area into the final cache folder.

    The arrays are hashed and the manifest written while the work area still holds its plan and done mask,
    so a process killed during the hashing (seconds for a large cache) resumes with every batch done instead
    of finding an unknown folder and encoding everything again. The manifest, written last, marks the folder
    finished: a process killed after it (while the build records are deleted or the folder is renamed into
    place) leaves a folder the next build installs as it is (:meth:`WorkArea._finished_build`,
    :func:`recover_install`). The records are deleted before the rename, so ``final`` never holds them."""
    if area.finished is not None:
        manifest = area.finished
    else:
        corrupt = area.corrupt_entries()
        manifest = base_manifest | counts(np.asarray(area.present), corrupt)
        area.close()
        manifest["checksums"] = checksums(area.path)
        write_json(area.path / MANIFEST, manifest)
    for name in (DONE, CORRUPT, PLAN):
        (area.path / name).unlink(missing_ok=True)
    remove_stale_temporaries(area.path)  # of writes killed before the build finished (the lock is ours)
    install(area.path, final)
    return manifest


def report_from_manifest(m: str, folder: Path, status: str, manifest: dict[str, Any]) -> ModalityReport:
    return ModalityReport(
        m, str(folder), status, num_items=int(manifest["num_items"]), num_present=int(manifest["num_present"]),
        num_missing=int(manifest["num_missing"]), num_corrupt=int(manifest["num_corrupt"]),
        corrupt=list(manifest.get("corrupt_items", [])), compute=describe_compute(manifest),
    )


def print_reports(reports: dict[str, ModalityReport]) -> None:
    for r in reports.values():
        print(r.summary())
        for entry in r.corrupt[:10]:
            print(f"  corrupt, marked missing: item {entry['item_id']!r} {entry['path']}: {entry['reason']}")
        if len(r.corrupt) > 10:
            print(f"  … and {len(r.corrupt) - 10} more (listed in the manifest)")

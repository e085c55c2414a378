"""What a cache folder holds (``crossan cache --list``), and removing what no crossan reads any more
(``crossan cache --remove-outdated``).

Caches accumulate: every dataset, item list and set of encoder settings gets a folder of its own
(:mod:`crossan.cache.layout`), and a cache of an older format version is rebuilt elsewhere, leaving the old
one behind. The listing walks a folder (``$CROSSAN_CACHE_DIR``, or ``cache.dir``) for the modality folders a
build writes — ``<modality>/`` (complete), ``<modality>.partial/`` (an interrupted build, resumed by the next
one) and ``<modality>.shards/`` — and says what each holds and its size on disk. Only caches of an older
format version are removed by ``--remove-outdated``: no crossan of this version opens them. Partial builds
are kept (the next build resumes them) and so are caches of other encoders or item lists (another run may
read them); remove those by hand if you no longer need them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossan.cache.layout import COMPLETE, DONE, FORMAT_VERSION, PLAN
from crossan.cache.lock import build_lock, lock_path
from crossan.cache.manifest import read_manifest
from crossan.data.catalogue import MODALITIES
from crossan.errors import CacheError


@dataclass
class CacheEntry:
    """One modality folder a build wrote."""

    path: Path
    modality: str
    state: str
    """``complete``, ``outdated (format N)``, ``partial (d of n batches)``, ``shards (c of n complete)``, or
    what makes it unreadable."""
    encoder: str = ""
    """The checkpoint (its last two path parts for a local folder), with ``(random)`` for random weights."""
    num_items: int | None = None
    size_bytes: int = 0
    modified: float = 0.0

    @property
    def outdated(self) -> bool:
        return self.state.startswith("outdated")


def _size_and_time(folder: Path) -> tuple[int, float]:
    size, modified = 0, 0.0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                st = os.stat(Path(root) / name)
            except OSError:
                continue
            size += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size  # on disk: sparse memmaps
            modified = max(modified, st.st_mtime)
    return size, modified


def _encoder(manifest: dict) -> str:
    checkpoint = str(manifest.get("checkpoint", "?"))
    parts = Path(checkpoint).parts
    short = "/".join(parts[-2:]) if Path(checkpoint).is_absolute() and len(parts) > 2 else checkpoint
    return short + (" (random)" if manifest.get("random_init") else "")


def _complete(folder: Path, modality: str) -> CacheEntry:
    try:
        manifest = read_manifest(folder, missing_ok=False)
    except CacheError as e:
        return CacheEntry(folder, modality, f"unreadable: {str(e).split(': ', 1)[-1]}")
    assert manifest is not None
    version = manifest.get("format_version", 1)
    state = "complete" if version == FORMAT_VERSION else f"outdated (format {version})"
    return CacheEntry(folder, modality, state, _encoder(manifest), manifest.get("num_items"))


def _partial(folder: Path, modality: str) -> CacheEntry:
    try:
        plan = json.loads((folder / PLAN).read_text())
        done = np.load(folder / DONE, mmap_mode="r")
        state = f"partial ({int(done.sum())} of {len(done)} batches)"
        manifest = plan["manifest"]
        return CacheEntry(folder, modality, state, _encoder(manifest), manifest.get("num_items"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return CacheEntry(folder, modality, f"partial, unreadable ({type(e).__name__})")


def _shards(folder: Path, modality: str) -> CacheEntry:
    shards = [d for d in folder.iterdir() if d.is_dir()] if folder.is_dir() else []
    complete = sum((d / COMPLETE).is_file() for d in shards)
    total = {d.name.split("-of-")[-1] for d in shards}
    of = next(iter(total)) if len(total) == 1 else "?"
    return CacheEntry(folder, modality, f"shards ({complete} of {of} complete)")


def find_caches(base: Path) -> list[CacheEntry]:
    """Every modality folder under ``base`` (``base`` itself included: ``cache.dir`` holds them directly),
    sorted by path."""
    readers = {"": _complete, "partial": _partial, "shards": _shards}
    entries: list[CacheEntry] = []
    for root, dirs, _ in os.walk(base):
        descend = []
        for d in sorted(dirs):
            modality, _, kind = d.partition(".")
            if modality in MODALITIES and kind in readers:
                entry = readers[kind](Path(root) / d, modality)
                entry.size_bytes, entry.modified = _size_and_time(entry.path)
                entries.append(entry)
            else:
                descend.append(d)
        dirs[:] = descend
    return entries


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def format_listing(base: Path, entries: list[CacheEntry]) -> str:
    """A table of ``entries``, paths relative to ``base``, with the total size."""
    if not entries:
        return f"no layer-state caches under {base}"
    rows = [("folder", "state", "encoder", "items", "size", "modified")]
    for e in entries:
        rel = e.path.relative_to(base) if e.path.is_relative_to(base) else e.path
        rows.append((str(rel), e.state, e.encoder, "" if e.num_items is None else f"{e.num_items:,}",
                     _human(e.size_bytes), time.strftime("%Y-%m-%d %H:%M", time.localtime(e.modified))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i in (3, 4) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             .rstrip() for r in rows]
    outdated = [e for e in entries if e.outdated]
    total = sum(e.size_bytes for e in entries)
    lines.append(f"{len(entries)} cache folders under {base}, {_human(total)}"
                 + (f"; {len(outdated)} outdated ({_human(sum(e.size_bytes for e in outdated))}): no crossan "
                    f"of this version reads them, `crossan cache --remove-outdated` deletes them" if outdated else ""))
    return "\n".join(lines)


def remove_outdated(entries: list[CacheEntry]) -> list[CacheEntry]:
    """Delete the outdated caches among ``entries``, each under its modality's build lock (a build into the
    same folder rewrites it meanwhile: then it is left). Returns those removed."""
    removed = []
    for e in entries:
        if not e.outdated:
            continue
        with build_lock(lock_path(e.path.parent, e.modality), f"{e.modality} cache {e.path}"):
            again = _complete(e.path, e.modality)
            if again.outdated:
                shutil.rmtree(e.path)
                removed.append(e)
    return removed

"""Readers for the supported interaction layouts. Each returns :class:`RawData`: per-user item sequences in
time order (original ids) plus the item :class:`~crossan.data.catalogue.Catalogue`.

Layouts
-------
``iisan`` (IISAN / MicroLens): a user file — ``users.tsv`` or ``*_pairs.tsv`` — with one line per user,
``user TAB item item …`` in time order; and ``items.tsv`` with ``item TAB title``. ``items.tsv`` may instead
start with a header ``item_id TAB title [TAB image] [TAB video] [TAB audio]`` whose media columns hold paths
relative to the dataset root (an empty cell: the item lacks it). Without media columns, media are found by
item id in ``images/`` or ``covers/`` (jpg, jpeg, png, webp), ``videos/`` (mp4, webm, mkv, avi, mov) and
``audio/`` (wav, flac, mp3, ogg).

``atomic`` (RecBole): ``NAME.inter`` with ``user_id``, ``item_id`` and ``timestamp`` columns (typed headers
such as ``user_id:token``) and optionally ``NAME.item`` whose text columns form the item text.

``csv``: a comma-separated file with a header naming user, item and timestamp columns (``user``/``user_id``,
``item``/``item_id``, ``timestamp``/``time``); an ``items.tsv`` beside it is read as the catalogue.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from crossan.config import DataConfig
from crossan.data.catalogue import Catalogue, ItemRecord


class DataError(ValueError):
    """Bad input data. The message names the file, line and offending value."""


@dataclass
class RawData:
    sequences: dict[str, list[str]]
    """User id → item ids in time order, as read (before filtering)."""
    catalogue: Catalogue
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows skipped under ``on_bad_rows=drop`` / ``on_unknown_items=drop``, by reason."""
    sources: list[str] = field(default_factory=list)


IMAGE_DIRS, IMAGE_EXT = ("images", "covers"), (".jpg", ".jpeg", ".png", ".webp")
VIDEO_DIRS, VIDEO_EXT = ("videos", "video"), (".mp4", ".webm", ".mkv", ".avi", ".mov")
AUDIO_DIRS, AUDIO_EXT = ("audio", "audios"), (".wav", ".flac", ".mp3", ".ogg")


class _Problems:
    """Raise or count bad rows according to the configured policy."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.dropped: dict[str, int] = defaultdict(int)

    def bad_row(self, where: str, msg: str) -> None:
        if self.cfg.on_bad_rows == "error":
            raise DataError(f"{where}: {msg} (set data.on_bad_rows=drop to skip and count such rows)")
        self.dropped["bad_rows"] += 1

    def unknown_item(self, where: str, item: str, catalogue: Catalogue) -> None:
        if self.cfg.on_unknown_items == "error":
            raise DataError(f"{where}: item {item!r} is not in the catalogue {catalogue.source} "
                            "(set data.on_unknown_items=drop to skip and count such interactions)")
        self.dropped["unknown_items"] += 1


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


# --------------------------------------------------------------------------------------------- catalogue
def _find_media(root: Path, dirs: tuple[str, ...], exts: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for d in dirs:
        folder = root / d
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() in exts and p.stem not in found:
                    found[p.stem] = f"{d}/{p.name}"
    return found


def read_items_tsv(path: Path, problems: _Problems) -> Catalogue:
    """``items.tsv``: ``item TAB title`` lines, or a header with ``item_id`` and media-path columns."""
    _check_file(path)
    root = path.parent
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    has_header = header[0].strip().lower() in ("item_id", "item", "item_id:token")
    cols = [h.split(":")[0].strip().lower() for h in header] if has_header else ["item_id", "title"]
    col = {name: i for i, name in enumerate(cols)}
    text_col = col.get("title", col.get("text"))
    media_cols = {m: col[m] for m in ("image", "video", "audio") if m in col}
    discovered = {}
    if not media_cols:
        discovered = {"image": _find_media(root, IMAGE_DIRS, IMAGE_EXT),
                      "video": _find_media(root, VIDEO_DIRS, VIDEO_EXT),
                      "audio": _find_media(root, AUDIO_DIRS, AUDIO_EXT)}
    records: list[ItemRecord] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines[1:] if has_header else lines, start=2 if has_header else 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        item = parts[0].strip()
        where = f"{path}:{lineno}"
        if not item:
            problems.bad_row(where, "empty item id")
            continue
        if item in seen:
            problems.bad_row(where, f"item {item!r} appears twice")
            continue
        seen.add(item)
        text = parts[text_col].strip() if text_col is not None and text_col < len(parts) else ""
        media = {}
        for m, i in media_cols.items():
            cell = parts[i].strip() if i < len(parts) else ""
            media[m] = cell or None
        for m, table in discovered.items():
            media[m] = table.get(item)
        records.append(ItemRecord(item, text, **media))
    if not records:
        raise DataError(f"{path}: no items")
    return Catalogue(root, records, source=str(path))


# --------------------------------------------------------------------------------------------- iisan
def _user_file(root: Path) -> Path:
    if (root / "users.tsv").is_file():
        return root / "users.tsv"
    pairs = sorted(root.glob("*_pairs.tsv"))
    if len(pairs) == 1:
        return pairs[0]
    if len(pairs) > 1:
        raise DataError(f"{root}: several *_pairs.tsv files ({', '.join(p.name for p in pairs)}); keep one")
    raise DataError(f"{root}: no users.tsv or *_pairs.tsv found")


def read_iisan(root: Path, cfg: DataConfig) -> RawData:
    problems = _Problems(cfg)
    catalogue = read_items_tsv(root / "items.tsv", problems)
    path = _user_file(root)
    _check_file(path)
    sequences: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            user, sep, rest = line.partition("\t")
            user = user.strip()
            items = rest.split()
            if not sep or not user:
                problems.bad_row(where, "expected 'user TAB item item …'")
                continue
            if not items:
                problems.bad_row(where, f"user {user!r} has no items")
                continue
            if user in sequences:
                problems.bad_row(where, f"user {user!r} appears on more than one line")
                continue
            kept = []
            for it in items:
                if it in catalogue:
                    kept.append(it)
                else:
                    problems.unknown_item(where, it, catalogue)
            if kept:
                sequences[user] = kept
    if not sequences:
        raise DataError(f"{path}: no usable user sequences")
    return RawData(sequences, catalogue, dict(problems.dropped), [str(path), catalogue.source])


# --------------------------------------------------------------------------------------------- atomic / csv
def _parse_time(value: str, where: str, problems: _Problems) -> float | None:
    try:
        t = float(value)
    except ValueError:
        t = math.nan
    if math.isnan(t) or math.isinf(t):
        problems.bad_row(where, f"malformed timestamp {value!r}")
        return None
    return t


def _sequences_from_rows(rows: list[tuple[str, str, float, int]]) -> dict[str, list[str]]:
    """Group (user, item, time, line) rows into per-user sequences ordered by time (ties: file order)."""
    by_user: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for user, item, t, lineno in rows:
        by_user[user].append((t, lineno, item))
    return {u: [it for _, _, it in sorted(v)] for u, v in by_user.items()}


def _read_interactions(path: Path, delimiter: str, catalogue: Catalogue | None, problems: _Problems,
                       ) -> tuple[dict[str, list[str]], set[str]]:
    _check_file(path)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: file is empty") from None
        names = [h.split(":")[0].strip().lower() for h in header]

        def find(*cands: str) -> int:
            for c in cands:
                if c in names:
                    return names.index(c)
            raise DataError(f"{path}:1: header {header} has no column named {' or '.join(cands)}")

        iu, ii, it = find("user_id", "user"), find("item_id", "item"), find("timestamp", "time")
        rows: list[tuple[str, str, float, int]] = []
        items: set[str] = set()
        for lineno, parts in enumerate(reader, start=2):
            if not parts or not any(p.strip() for p in parts):
                continue
            where = f"{path}:{lineno}"
            if len(parts) <= max(iu, ii, it):
                problems.bad_row(where, f"expected {len(names)} fields, got {len(parts)}")
                continue
            user, item = parts[iu].strip(), parts[ii].strip()
            if not user or not item:
                problems.bad_row(where, "empty user or item id")
                continue
            t = _parse_time(parts[it].strip(), where, problems)
            if t is None:
                continue
            if catalogue is not None and item not in catalogue:
                problems.unknown_item(where, item, catalogue)
                continue
            rows.append((user, item, t, lineno))
            items.add(item)
    if not rows:
        raise DataError(f"{path}: no usable interactions")
    return _sequences_from_rows(rows), items


def _read_atomic_items(path: Path, cfg: DataConfig, problems: _Problems) -> Catalogue:
    _check_file(path)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        names = [h.split(":")[0].strip() for h in header]
        types = [h.split(":")[1].strip() if ":" in h else "token" for h in header]
        if "item_id" not in names:
            raise DataError(f"{path}:1: header {header} has no item_id column")
        iid = names.index("item_id")
        if cfg.text_fields:
            unknown = [t for t in cfg.text_fields if t not in names]
            if unknown:
                raise DataError(f"data.text_fields: {unknown} not among the columns of {path}: {names}")
            text_cols = [names.index(t) for t in cfg.text_fields]
        else:
            text_cols = [i for i, t in enumerate(types) if i != iid and t in ("token", "token_seq")]
        records = []
        for lineno, parts in enumerate(reader, start=2):
            if not parts:
                continue
            if len(parts) != len(names):
                problems.bad_row(f"{path}:{lineno}", f"expected {len(names)} fields, got {len(parts)}")
                continue
            text = " ".join(parts[i].strip() for i in text_cols if parts[i].strip())
            records.append(ItemRecord(parts[iid].strip(), text))
    return Catalogue(path.parent, records, source=str(path))


def read_atomic(root: Path, cfg: DataConfig) -> RawData:
    problems = _Problems(cfg)
    inters = sorted(root.glob("*.inter"))
    if len(inters) != 1:
        raise DataError(f"{root}: expected exactly one .inter file, found {len(inters)}")
    items_files = sorted(root.glob("*.item"))
    catalogue = _read_atomic_items(items_files[0], cfg, problems) if items_files else None
    sequences, items = _read_interactions(inters[0], "\t", catalogue, problems)
    if catalogue is None:
        catalogue = Catalogue(root, (ItemRecord(i) for i in sorted(items)), source=str(inters[0]))
    return RawData(sequences, catalogue, dict(problems.dropped), [str(inters[0]), catalogue.source])


def read_csv(path: Path, cfg: DataConfig) -> RawData:
    problems = _Problems(cfg)
    items_tsv = path.parent / "items.tsv"
    catalogue = read_items_tsv(items_tsv, problems) if items_tsv.is_file() else None
    sequences, items = _read_interactions(path, ",", catalogue, problems)
    if catalogue is None:
        catalogue = Catalogue(path.parent, (ItemRecord(i) for i in sorted(items)), source=str(path))
    return RawData(sequences, catalogue, dict(problems.dropped), [str(path), catalogue.source])


def detect_format(path: Path) -> str:
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        if list(path.glob("*.inter")):
            return "atomic"
        if (path / "items.tsv").exists() or list(path.glob("*_pairs.tsv")) or (path / "users.tsv").exists():
            return "iisan"
        csvs = sorted(path.glob("*.csv"))
        if len(csvs) == 1:
            return "csv"
    raise DataError(f"{path}: cannot tell the data layout (expected users.tsv + items.tsv, a .inter file, "
                    "or a .csv); set data.format")


def read(cfg: DataConfig) -> RawData:
    """Read the dataset at ``cfg.path`` in its layout (``cfg.format``, detected when ``auto``)."""
    if not cfg.path:
        raise DataError("no dataset given: pass --data PATH (or data.path=PATH)")
    path = Path(cfg.path).expanduser()
    fmt = detect_format(path) if cfg.format == "auto" else cfg.format
    if fmt == "iisan":
        return read_iisan(path, cfg)
    if fmt == "atomic":
        return read_atomic(path, cfg)
    csv_path = path if path.is_file() else sorted(path.glob("*.csv"))[0]
    return read_csv(csv_path, cfg)

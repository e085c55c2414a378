"""Readers for the supported interaction layouts. Each returns :class:`RawData`: per-user item sequences in
time order plus the item :class:`~crossan.data.catalogue.Catalogue`.

Layouts
-------
``iisan`` (IISAN / MicroLens): a user file — ``users.tsv`` or ``*_pairs.tsv`` — with one line per user,
``user TAB item item …`` in time order (items separated by ASCII whitespace); and ``items.tsv``. Without a
header ``items.tsv`` holds ``item TAB title`` lines, and the title is **the rest of the line** (a tab inside
it is kept). It may instead start with a header ``item_id TAB title [TAB image] [TAB video] [TAB audio]``;
then every row must have exactly as many tab-separated fields as the header (a tab inside a title is an
error naming file and line), and the media columns hold paths relative to the dataset root (an empty cell:
the item lacks it). A header column other than these (``ITEM_COLUMNS``) is an error naming it, and so are
``title`` and ``text`` together (two names for the title). The id column may be named ``item_id``, ``item``
or ``id``, and any column may carry a type (``item_id:token``); a first line starting with ``item_id`` or
``item``, or with ``id`` and at least one other column name, is a header, and so is a first line whose other
fields all name columns (an error naming its first column when that is no id column). A modality without a
column of its own is found by item id in the folders of ``MEDIA_FOLDERS`` (``images/`` or ``covers/``,
``videos/`` or ``video/``, ``audio/`` or ``audios/``), among the extensions listed there; files of other
extensions named by an item id left without the modality are named in a warning, and an id with two files
there keeps the first in folder and name order (the extensions read before crossan 0.1.14 first), with a
warning.

``atomic`` (RecBole): ``NAME.inter`` with ``user_id``, ``item_id`` and ``timestamp`` columns (typed headers
such as ``user_id:token``) and optionally ``NAME.item`` whose text columns form the item text. Both files are
read with the same (csv) quoting, so ``"x"`` is the id ``x`` in each. A folder with several ``.inter`` or
``.item`` files is an error, as is ``data.format=csv`` on a folder with several ``.csv`` files, and (unless
``data.format`` names one) a folder whose ``.inter`` file and ``users.tsv``/``*_pairs.tsv`` both hold histories.

``csv``: a comma-separated file with a header naming user, item and timestamp columns (``user``/``user_id``,
``item``/``item_id``, ``timestamp``/``time``); an ``items.tsv`` beside it is read as the catalogue.

Every text file may start with a UTF-8 BOM (dropped) and must be UTF-8 (otherwise an error naming file and
line). Lines end in LF, CRLF or a lone CR (old Mac files); a run of CRs before an LF is one line end (CR CR LF:
a CRLF file converted again), so line numbers are those grep and sed show. Quoted fields (csv quoting) may span
lines in a text column, as pandas reads them; a user id, item id or timestamp that does (a stray double quote
merging rows) breaks a rule, and a quote left open at the end of the file is an error naming the line where its
record starts. So does a text field whose lines include one that reads as a row naming a user and an item of
the file (or, in a ``.item`` file, an item that an interaction names and no row of the file holds): rows a
stray quote swallowed; a review line that only looks like a row ("sizes 8, 9, 10, all fit") is kept. In ``.inter``/``.item``/CSV files every row must have as many fields as the header. Ids are
stripped of ASCII whitespace only (a no-break space is content, as in the users file) and hold at most
``MAX_ID_BYTES`` UTF-8 bytes; an ``items.tsv`` id holds no whitespace at all (a header-less line missing its tab is an error,
not an id with a space). Timestamps are ASCII numbers (Unicode digits are not); beyond 2**53, where float64
no longer holds every integer, they are ordered exactly from their text (see :func:`_exact_times`). A row
that breaks a rule is an error naming file and line, or is dropped and counted with ``data.on_bad_rows=drop``.
Item text is cut to ``data.max_text_chars`` characters. The interaction files are scanned as byte arrays with numpy
(:mod:`crossan.data.textscan`), so ten million interactions read in seconds; a CSV/``.inter`` file that
contains a double quote is read with Python's csv module instead (quoted fields; slower).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import shlex
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossan.config import DataConfig
from crossan.data import textscan as ts
from crossan.data.catalogue import Catalogue, ItemRecord
from crossan.errors import CrossanError

log = logging.getLogger("crossan")

MAX_ID_BYTES = 1024
"""User and item ids longer than this (in UTF-8 bytes) make a row malformed."""


class DataError(CrossanError, ValueError):
    """Bad input data. The message names the file, line and offending value."""


@dataclass
class Interactions:
    """Per-user item sequences in compressed form: user ``u``'s items, in time order, are
    ``items[offsets[u]:offsets[u + 1]]``, each a 0-based position in the catalogue's order."""

    users: list[str]
    offsets: np.ndarray
    """[U + 1] int64, starting at 0."""
    items: np.ndarray
    """[interactions] int32/int64 catalogue positions."""
    tied: np.ndarray | None = None
    """[interactions] bool: the interaction's time equals that of the one before it in the same user's sequence
    (their order is the file's); None where the layout holds no times (``users.tsv``)."""

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class RawData:
    """What a reader found: the interactions (before the protocol), the catalogue, and what was dropped.

    ``sequences`` may be given as a mapping ``user → item ids in time order`` (small, hand-made data) or as
    :class:`Interactions`; :attr:`interactions` is always available, :attr:`sequences` is built on demand.
    """

    def __init__(self, sequences: Mapping[str, Sequence[str]] | Interactions, catalogue: Catalogue,
                 dropped: dict[str, int] | None = None, sources: list[str] | None = None) -> None:
        self.catalogue = catalogue
        self.dropped = dict(dropped or {})
        self.sources = list(sources or [])
        if isinstance(sequences, Interactions):
            self.interactions = sequences
        else:
            pos = {item: k for k, item in enumerate(catalogue.ids())}
            users = list(sequences)
            try:
                flat = [pos[i] for u in users for i in sequences[u]]
            except KeyError as e:
                raise DataError(f"item {e.args[0]!r} of a sequence is not in the catalogue "
                                f"{catalogue.source or catalogue.root}") from None
            lengths = np.array([len(sequences[u]) for u in users], dtype=np.int64)
            self.interactions = Interactions(users, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                                             np.asarray(flat, dtype=np.int64))

    @property
    def sequences(self) -> dict[str, list[str]]:
        """User id → item ids in time order (built from :attr:`interactions`; for small data and tests)."""
        ids = np.asarray(self.catalogue.ids(), dtype=object)
        inter = self.interactions
        names = ids[inter.items] if len(inter.items) else np.zeros(0, dtype=object)
        return {u: names[inter.offsets[k]:inter.offsets[k + 1]].tolist() for k, u in enumerate(inter.users)}


IMAGE_DIRS, IMAGE_EXT = ("images", "covers"), (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
VIDEO_DIRS, VIDEO_EXT = ("videos", "video"), (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")
AUDIO_DIRS, AUDIO_EXT = ("audio", "audios"), (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac",
                                              ".aiff", ".aif")
"""Where media files named by item id are looked for (the first folder of each pair that exists wins per id)
and the extensions read there (any case); a path column of ``items.tsv`` may name a file of any extension."""
_READ_BEFORE_0_1_14 = frozenset({".jpg", ".jpeg", ".png", ".webp", ".mp4", ".webm", ".mkv", ".avi", ".mov", ".wav",
                                  ".flac", ".mp3", ".ogg"})
MEDIA_FOLDERS = {"image": (IMAGE_DIRS, IMAGE_EXT), "video": (VIDEO_DIRS, VIDEO_EXT),
                 "audio": (AUDIO_DIRS, AUDIO_EXT)}
ITEM_COLUMNS = ("title", "text", "image", "video", "audio")
"""The columns an ``items.tsv`` header may name after its id column (``title`` or ``text``: the title)."""
ITEM_ID_COLUMNS = ("item_id", "item", "id")
"""The names an ``items.tsv`` header's first column may have (a ``:type`` suffix, as ``item_id:token``, aside)."""


DROP_HINT = " (set data.on_bad_rows=drop to skip and count such rows)"
"""What a malformed row's error adds (``data.on_bad_rows=error``): the way to read on without it."""


class _Problems:
    """Raise or count bad rows according to the configured policy."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.dropped: dict[str, int] = defaultdict(int)

    def bad_row(self, where: str, msg: str) -> None:
        if self.cfg.on_bad_rows == "error":
            raise DataError(f"{where}: {msg}{DROP_HINT}")
        self.dropped["bad_rows"] += 1

    def unknown_item(self, where: str, item: str, catalogue: Catalogue) -> None:
        if self.cfg.on_unknown_items == "error":
            raise DataError(f"{where}: item {item!r} is not in the catalogue {catalogue.source} "
                            "(set data.on_unknown_items=drop to skip and count such interactions)")
        self.dropped["unknown_items"] += 1

    def count(self, reason: str, n: int) -> None:
        """Count ``n`` rows dropped for ``reason`` (after the first error, if any, was raised)."""
        if n:
            self.dropped[reason] += int(n)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def _bytes(path: Path) -> np.ndarray:
    """The checked bytes of a text file (BOM dropped, UTF-8 verified), as ``uint8``."""
    _check_file(path)
    try:
        buf = ts.read_text_bytes(path)
    except ts.TextError as e:
        raise DataError(str(e)) from None
    if not len(buf):
        raise DataError(f"{path}: file is empty")
    return buf


def _text(path: Path) -> str:
    """The checked text of a small file (BOM dropped, UTF-8 verified, line ends made ``\\n``)."""
    _check_file(path)
    try:
        text = ts.decode_text(path.read_bytes(), path)
    except ts.TextError as e:
        raise DataError(str(e)) from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


# --------------------------------------------------------------------------------------------- catalogue
def _is_file(entry: os.DirEntry) -> bool:
    """Whether a folder entry is (or links to) a file; a link that loops (ELOOP) or cannot be looked up is not."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _split_extension(name: str) -> tuple[str, str]:
    """``name`` as (item id, extension) at its last dot: ``..png`` is item ``.``'s (``os.path.splitext`` reads a
    name of leading dots as having no extension); a name starting with its only dot (``.png``) has none."""
    stem, dot, ext = name.rpartition(".")
    return (stem, f".{ext}") if dot and stem else (name, "")


def _find_media(root: Path, dirs: tuple[str, ...], exts: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str]]:
    """Item id → the media file named by it in the first of ``dirs`` (``images/i1.jpg``), and file stem → a file
    of another extension there (``images/i1.heic``: :func:`_warn_unread` names those whose stem is an item left
    without the modality). An id with several files (``i1.jpg`` and ``i1.png``) keeps the first in folder, then
    name order among the extensions read before crossan 0.1.14, then among the others (so a dataset read before
    reads the same files), with a warning naming them."""
    found: dict[str, str] = {}
    others: dict[str, list[str]] = {}
    unread: dict[str, str] = {}
    rank = {e: 0 if e in _READ_BEFORE_0_1_14 else 1 for e in exts}  # then name order, as before 0.1.14
    not_files: list[str] = []
    for d in dirs:
        folder = root / d
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:  # is_file() from the directory entry: no stat per file
            entries = [(*_split_extension(e.name), e.name, _is_file(e)) for e in it]
        for stem, ext, name, is_file in sorted(entries, key=lambda e: (e[0], rank.get(e[1].lower(), 0), e[2])):
            suffix = ext.lower()
            if suffix in rank and not is_file:  # a folder or a link to nothing: no item's file (said below)
                not_files.append(f"{d}/{name}")
            elif suffix in rank:
                if stem in found:
                    others.setdefault(stem, []).append(f"{d}/{name}")
                else:
                    found[stem] = f"{d}/{name}"
            elif suffix and is_file and not name.startswith("."):
                unread.setdefault(stem, f"{d}/{name}")
    if not_files:  # it hid an item's real file, or a link to an unmounted drive lost the item's media in silence
        log.warning("%s: %d entr%s named like media files %s not files (folders, or links that lead to no file) "
                    "and %s not read: %s%s", root, len(not_files), "y" if len(not_files) == 1 else "ies",
                    "is" if len(not_files) == 1 else "are", "is" if len(not_files) == 1 else "are",
                    ", ".join(not_files[:5]), " …" if len(not_files) > 5 else "")
    if others:
        shown = "; ".join(f"{found[i]} (not {', '.join(o)})" for i, o in list(others.items())[:3])
        log.warning("%s: %d item id(s) have more than one file; the first in folder and name order is used (the "
                    "extensions of crossan before 0.1.14 first): %s%s", root, len(others), shown,
                    " …" if len(others) > 3 else "")
    return found, unread


def _warn_unread(root: Path, modality: str, unread: dict[str, str], records: list[ItemRecord]) -> None:
    """Warn about files named by an item id in ``modality``'s folders whose extension is not read, for the items
    left without that modality (a sidecar ``i1.json`` beside ``i1.jpg`` is not named)."""
    missed = [unread[r.item_id] for r in records if r.item_id in unread and getattr(r, modality) is None]
    if missed:
        dirs, exts = MEDIA_FOLDERS[modality]
        suffixes = sorted({Path(u).suffix.lower() for u in missed})
        log.warning("%s: %d item(s) have no %s although a file named by their id is in %s: its extension (%s) is "
                    "not one of %s (%s%s); convert or rename them, or name them in an items.tsv %s column", root,
                    len(missed), modality, " or ".join(f"{d}/" for d in dirs), ", ".join(suffixes), " ".join(exts),
                    ", ".join(missed[:3]), " …" if len(missed) > 3 else "", modality)


_SPACE_CHARS = frozenset(ts.SPACES)


def _item_id_problem(item: str, has_header: bool, spaces_ok: bool = False) -> str | None:
    """What makes ``item`` (stripped) unusable as an ``items.tsv`` id, or None: empty, holding whitespace
    (the users file splits its items at whitespace, so no interaction could name it; ``spaces_ok`` where the
    interactions come from a CSV file, whose fields may hold spaces) or too long."""
    if not item:
        return "empty item id"
    if not spaces_ok and not _SPACE_CHARS.isdisjoint(item):
        hint = "" if has_header else "; a line is 'item TAB title': is its tab missing?"
        return f"item id {item[:60]!r} contains whitespace{hint}"
    if len(item.encode("utf-8")) > MAX_ID_BYTES:
        return f"item id longer than {MAX_ID_BYTES} bytes"
    return None


def read_items_tsv(path: Path, problems: _Problems, spaces_ok: bool = False) -> Catalogue:
    """``items.tsv``: ``item TAB title`` lines (title = rest of the line), or a header with ``item_id`` and
    media-path columns (every row then has exactly the header's number of fields; see the module docstring
    for what makes line 1 a header). An id longer than
    ``MAX_ID_BYTES``, or with whitespace inside (unless ``spaces_ok``: beside a CSV file of interactions, or a
    catalogue of new items), makes its row bad (see :class:`_Problems`)."""
    cfg = problems.cfg
    root = path.parent
    lines = _lines(_text(path))
    header = lines[0].split("\t")
    names = [h.split(":")[0].strip().lower() for h in header]
    # a header: an item-id column first (``id`` with at least one known column after it: an item may be called
    # id), or a first line whose other fields all name known columns
    has_header = names[0] in ("item_id", "item") or (
        names[0] == "id" and any(c in ITEM_COLUMNS for c in names[1:])) or (
        len(names) > 1 and all(c in ITEM_COLUMNS for c in names[1:] if c) and any(names[1:]))
    if has_header and names[0] not in ITEM_ID_COLUMNS:  # the header would be read as an item
        raise DataError(f"{path}:1: line 1 reads as a header (its other fields name columns: "
                        f"{', '.join(h.strip() for h in header[1:])}) but its first column {header[0].strip()!r} "
                        f"is not an item-id column; name it {', '.join(ITEM_ID_COLUMNS)} (if line 1 is an item, "
                        "start the file with the header 'item_id TAB title')")
    cols = names if has_header else ["item_id", "title"]
    empty = [i + 1 for i, c in enumerate(cols) if not c]
    if has_header and empty:  # '' would read as an unknown column: say what usually makes one
        raise DataError(f"{path}:1: header column {empty[0]} of {len(cols)} has no name (a tab at the end of the "
                        "line, or two tabs in a row?); remove it, or name it")
    unknown = [h.strip() for h, c in zip(header[1:], cols[1:]) if c not in ITEM_COLUMNS]
    if has_header and unknown:  # a misnamed column was dropped in silence, and its content with it
        raise DataError(f"{path}:1: header column{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                        f"not known; the columns after {header[0].strip()!r} may be {', '.join(ITEM_COLUMNS)} "
                        "(rename the column, or remove it)")
    col = {name: i for i, name in enumerate(cols)}
    repeated = sorted({c for c in cols if cols.count(c) > 1})
    if has_header and repeated:
        raise DataError(f"{path}:1: header column {repeated[0]!r} appears twice")
    if has_header and "title" in col and "text" in col:  # one would be dropped in silence
        raise DataError(f"{path}:1: header has both a 'title' and a 'text' column; both name the item's title, "
                        "keep one")
    text_col = col.get("title", col.get("text"))
    media_cols = {m: col[m] for m in ("image", "video", "audio") if m in col}
    # media without a column of their own are found by item id in their folders (as without a header)
    discovered = {m: _find_media(root, dirs, exts) for m, (dirs, exts) in MEDIA_FOLDERS.items()
                  if m not in media_cols}
    records: list[ItemRecord] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines[1:] if has_header else lines, start=2 if has_header else 1):
        if not line.strip(ts.SPACES):
            continue
        where = f"{path}:{lineno}"
        if has_header:
            parts = line.split("\t")
            if len(parts) != len(cols):
                problems.bad_row(where, f"expected {len(cols)} tab-separated fields (as the header), got "
                                        f"{len(parts)}; a title may not contain a tab")
                continue
        else:
            item_part, _, title = line.partition("\t")
            parts = [item_part, title]
        item = parts[0].strip(ts.SPACES)
        problem = _item_id_problem(item, has_header, spaces_ok)
        if problem:
            problems.bad_row(where, problem)
            continue
        if item in seen:
            problems.bad_row(where, f"item {item!r} appears twice")
            continue
        seen.add(item)
        text = parts[text_col].strip()[: cfg.max_text_chars] if text_col is not None else ""
        media = {m: parts[i].strip() or None for m, i in media_cols.items()}
        for m, (table, _) in discovered.items():
            media[m] = table.get(item)
        records.append(ItemRecord(item, text, **media))
    if not records:
        raise DataError(f"{path}: no items")
    for m, (_, unread) in discovered.items():
        _warn_unread(root, m, unread, records)
    return Catalogue(root, records, source=str(path), media_roots=cfg.media_roots)


# --------------------------------------------------------------------------------------------- iisan
def _user_file(root: Path) -> Path:
    """The one user file of an ``iisan`` folder: ``users.tsv`` or a single ``*_pairs.tsv``; several are an error
    (which one holds the histories is not the reader's to guess)."""
    pairs = sorted(root.glob("*_pairs.tsv"))
    if (root / "users.tsv").is_file():
        if pairs:
            raise DataError(f"{root}: both users.tsv and {', '.join(p.name for p in pairs)} hold user histories; "
                            "keep one")
        return root / "users.tsv"
    if len(pairs) == 1:
        return pairs[0]
    if len(pairs) > 1:
        raise DataError(f"{root}: several *_pairs.tsv files ({', '.join(p.name for p in pairs)}); keep one")
    csvs = sorted(root.glob("*.csv"))
    hint = (f" (for the CSV layout pass the file itself: --data {shlex.quote(str(csvs[0]))})" if len(csvs) == 1 else "")
    raise DataError(f"{root}: no users.tsv or *_pairs.tsv found{hint}")


def _first_line(mask: np.ndarray) -> int:
    """Index of the first True in ``mask`` (len(mask) when none)."""
    hit = np.flatnonzero(mask)
    return int(hit[0]) if len(hit) else len(mask)


def _repeats(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, lines: np.ndarray, has_known: np.ndarray,
             names: list[str]) -> np.ndarray:
    """Which of these lines (ascending) repeat a user whose *accepted* line came earlier: the accepted line
    of a user is its first line with at least one known item (as a line-by-line reading decides)."""
    if len(lines) and int((ends - starts).max()) <= 64:
        keys = ts.byte_keys(buf, starts, ends)
        uniq, inverse = np.unique(keys, return_inverse=True)
        accepted_at = np.full(len(uniq), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(accepted_at, inverse[has_known], lines[has_known])
        return accepted_at[inverse] < lines
    first: dict[str, int] = {}
    for line, name, k in zip(lines.tolist(), names, has_known.tolist()):
        if k and name not in first:
            first[name] = line
    return np.fromiter((first.get(n, -1) != -1 and first[n] < line for line, n in zip(lines.tolist(), names)),
                       dtype=bool, count=len(lines))


def read_user_sequences(path: Path, catalogue: Catalogue, problems: _Problems) -> Interactions:
    """Read a ``user TAB item item …`` file, vectorised (see the module docstring for the rules).

    Problems are found for all lines at once; the first one in file order whose policy is ``error`` is
    raised with the message the line-by-line reading gives: no tab or no user (``expected 'user TAB item
    item …'``), no items, a user on a second line, an item missing from the catalogue.
    """
    buf = _bytes(path)
    starts = ts.line_starts(buf)
    n_lines = len(starts)
    tok_s, tok_e = ts.tokens(ts.WHITESPACE[buf])
    tok_line = ts.token_lines(buf, tok_s)
    tabs = np.flatnonzero(buf == ts.TAB)
    tab_line = ts.line_of(starts, tabs)
    first = ts.first_per_group(tab_line)
    no_tab = np.iinfo(np.int64).max
    first_tab = np.full(n_lines, no_tab, dtype=np.int64)
    first_tab[tab_line[first]] = tabs[first]
    del tabs, tab_line, first
    nonblank = np.bincount(tok_line, minlength=n_lines) > 0

    # the user field: from the first to the last token before the line's first tab
    is_user = tok_s < first_tab[tok_line]
    ut = np.flatnonzero(is_user)
    ul = tok_line[ut]
    user_s = np.zeros(n_lines, dtype=np.int64)
    user_e = np.zeros(n_lines, dtype=np.int64)
    f, la = ts.first_per_group(ul), ts.last_per_group(ul)
    user_s[ul[f]], user_e[ul[la]] = tok_s[ut[f]], tok_e[ut[la]]
    has_user = np.zeros(n_lines, dtype=bool)
    has_user[ul] = True
    del ut, ul, f, la
    bad_format = nonblank & ((first_tab == no_tab) | ~has_user | (user_e - user_s > MAX_ID_BYTES))

    it = np.flatnonzero(~is_user)  # item tokens: after the first tab
    del is_user
    it_line = tok_line[it]
    pos = ts.KeyTable(catalogue.ids()).lookup(buf, tok_s[it], tok_e[it]) if len(it) else np.zeros(0, np.int64)
    known = pos >= 0
    n_known = np.bincount(it_line[known], minlength=n_lines)
    n_items = np.bincount(it_line, minlength=n_lines)
    no_items = nonblank & ~bad_format & (n_items == 0)
    candidate = nonblank & ~bad_format & ~no_items

    # a user's accepted line is its first candidate line with a known item; later candidates are repeats
    cand = np.flatnonzero(candidate)
    names = ts.decode_ranges(buf, user_s[cand], user_e[cand])
    repeat = np.zeros(n_lines, dtype=bool)
    repeat[cand] = _repeats(buf, user_s[cand], user_e[cand], cand, n_known[cand] > 0, names)
    accepted = candidate & ~repeat
    unknown_line = accepted & (n_items > n_known)

    cfg = problems.cfg
    bad = bad_format | no_items | repeat
    first_bad = _first_line(bad) if cfg.on_bad_rows == "error" else n_lines
    first_unknown = _first_line(unknown_line) if cfg.on_unknown_items == "error" else n_lines
    if min(first_bad, first_unknown) < n_lines:
        line = min(first_bad, first_unknown)
        where = f"{path}:{line + 1}"
        user = ts.decode_ranges(buf, user_s[line:line + 1], user_e[line:line + 1])[0] if has_user[line] else ""
        if line == first_bad:
            problems.bad_row(where, f"user {user!r} has no items" if no_items[line]
                             else f"user {user!r} appears on more than one line" if repeat[line]
                             else f"user id longer than {MAX_ID_BYTES} bytes" if has_user[line] and
                             first_tab[line] != no_tab else "expected 'user TAB item item …'")
        j = np.flatnonzero((it_line == line) & ~known)[0]
        problems.unknown_item(where, bytes(buf[tok_s[it[j]]:tok_e[it[j]]]).decode("utf-8"), catalogue)
    problems.count("bad_rows", bad.sum())
    problems.count("unknown_items", (~known & accepted[it_line]).sum())

    keep_line = accepted & (n_known > 0)
    keep = known & keep_line[it_line]
    kept_lines = np.flatnonzero(keep_line)
    lengths = np.bincount(it_line[keep], minlength=n_lines)[kept_lines]
    users = [n for line, n in zip(cand.tolist(), names) if keep_line[line]]
    items = pos[keep].astype(np.int32 if len(catalogue) < 2**31 else np.int64)
    return Interactions(users, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), items)


def read_iisan(root: Path, cfg: DataConfig) -> RawData:
    problems = _Problems(cfg)
    # the user file first: a folder holding a CSV of interactions beside its items.tsv is told to pass the .csv,
    # instead of failing on an items.tsv row only the IISAN layout refuses (an item id with a space)
    path = _user_file(root)
    catalogue = read_items_tsv(root / "items.tsv", problems)
    inter = read_user_sequences(path, catalogue, problems)
    if not inter.users:
        raise DataError(f"{path}: no usable user sequences")
    return RawData(inter, catalogue, dict(problems.dropped), [str(path), catalogue.source])


# --------------------------------------------------------------------------------------------- atomic / csv
@dataclass
class _Rows:
    """Interaction rows as read (kept rows only): user and item keys, times, line numbers."""

    user_keys: np.ndarray
    item_keys: np.ndarray | None
    item_pos: np.ndarray | None
    """Catalogue positions when a catalogue was given (else None and ``item_keys`` holds the ids)."""
    times: np.ndarray
    lines: np.ndarray
    exact_times: tuple[np.ndarray, np.ndarray | None] | None = None
    """Integer parts (int64) and fractions (float64, None when all are integers) of the times where float64
    cannot order them (:func:`_exact_times`), else None."""


@contextmanager
def _long_fields() -> Iterator[None]:
    """Let the csv module read fields of any length while inside (its default limit, 131,072 characters, is
    below a long item description); the process's limit is restored after."""
    old = csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _csv_records(path: Path, reader: Any, text: str | None = None) -> Iterator[list[str]]:
    """The records of a ``csv.reader`` over ``path``; a malformed one is a :class:`DataError` naming the file
    and line. ``text``: what the reader reads (lines ending in ``\\n``), to tell a last record that ends inside
    a quoted field, which the csv module reads as closed there (pandas calls it "EOF inside string")."""
    last = 1  # the line where the last record read starts
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            if text is not None and last <= reader.line_num and _ends_in_quotes(text, reader.line_num - last + 1,
                                                                                  reader.dialect):
                raise DataError(f"{path}:{last}: a double quote opened in this record is never closed: the "
                                f"record runs to the end of the file (line {reader.line_num})") from None
            return
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed record ({e})") from None
        last = start
        yield record


def _ends_in_quotes(text: str, lines: int, dialect: Any) -> bool:
    """Whether the last ``lines`` lines of ``text`` (one record) end inside a quoted field."""
    pos = len(text) - 1 if text.endswith("\n") else len(text)
    for _ in range(lines):  # found from the end: no copy of the lines before
        pos = text.rfind("\n", 0, pos)
    tail = text[pos + 1:]
    try:
        for _ in csv.reader(io.StringIO(tail, newline=""), dialect, strict=True):
            pass
    except csv.Error as e:
        return "unexpected end of data" in str(e)
    return False


def _header(path: Path, text: str, delimiter: str) -> tuple[list[str], list[str], tuple[int, int, int]]:
    header = next(_csv_records(path, csv.reader([text], delimiter=delimiter)), [])
    names = _column_names(header)
    return header, names, (_column(path, header, names, "user_id", "user"),
                           _column(path, header, names, "item_id", "item"),
                           _column(path, header, names, "timestamp", "time"))


def _column_names(header: list[str]) -> list[str]:
    """A ``.inter``/``.item``/CSV header's column names: case-insensitive, RecBole's ``:type`` suffix dropped."""
    return [h.split(":")[0].strip().lower() for h in header]


def _column(path: Path, header: list[str], names: list[str], *cands: str) -> int:
    """The index of the first of ``cands`` among ``names`` (:func:`_column_names`), which must appear once."""
    for c in cands:
        if names.count(c) > 1:  # which of the two holds the ids is not ours to guess (items.tsv: the same)
            raise DataError(f"{path}:1: header column {c!r} appears twice")
        if c in names:
            return names.index(c)
    raise DataError(f"{path}:1: header {header} has no column named {' or '.join(cands)}")


_TIME_HINT = " (expected a number, such as Unix seconds; dates like 2020-09-13 12:26:40 are not read)"
"""Said with a malformed timestamp: a file of ISO dates otherwise fails at line 2 as if that row alone were bad."""


def _scan_rows(path: Path, buf: np.ndarray, delimiter: str, catalogue: Catalogue | None,
               problems: _Problems) -> _Rows:
    """Split a delimited file without quotes into fields, vectorised, and check every row."""
    starts = ts.line_starts(buf)
    n_lines = len(starts)
    ends = np.empty(n_lines, dtype=np.int64)
    ends[:-1] = starts[1:] - 1
    ends[-1] = len(buf) - 1 if buf[-1] == ts.NEWLINE else len(buf)
    head = buf[starts[0]:ends[0]].tobytes().decode("utf-8").rstrip("\r")
    _, names, (iu, ii, it) = _header(path, head, delimiter)
    n_fields = len(names)
    dcode = ord(delimiter)
    sep = ts.WHITESPACE[buf]
    content = ~sep & (buf != dcode)
    nonblank = np.logical_or.reduceat(content, starts) if len(buf) else np.zeros(0, bool)
    del content
    delims = np.flatnonzero(buf == dcode)
    d_line = ts.line_of(starts, delims)
    got = np.bincount(d_line, minlength=n_lines) + 1
    body = np.arange(n_lines) > 0
    wrong_count = body & nonblank & (got != n_fields)
    good = np.flatnonzero(body & nonblank & ~wrong_count)
    first_d = np.searchsorted(d_line, good)  # index of each good line's first delimiter

    def field(k: int) -> tuple[np.ndarray, np.ndarray]:
        s = starts[good].astype(np.int64) if k == 0 else delims[first_d + k - 1].astype(np.int64) + 1
        e = ends[good] if k == n_fields - 1 else delims[first_d + k].astype(np.int64)
        return ts.strip_ranges(sep, s, e)

    (us, ue), (is_, ie), (tsb, teb) = field(iu), field(ii), field(it)
    empty_id = (us == ue) | (is_ == ie)
    long_id = (ue - us > MAX_ID_BYTES) | (ie - is_ > MAX_ID_BYTES)
    times, unparsed = ts.parse_numbers(buf, tsb, teb)
    bad_time = ~empty_id & ~long_id & (unparsed | ~np.isfinite(times))
    ok = ~empty_id & ~long_id & ~bad_time
    pos = None
    unknown = np.zeros(len(good), dtype=bool)
    if catalogue is not None:
        pos = np.full(len(good), -1, dtype=np.int64)
        pos[ok] = ts.KeyTable(catalogue.ids()).lookup(buf, is_[ok], ie[ok])
        unknown = ok & (pos < 0)

    cfg = problems.cfg
    line_bad = np.zeros(n_lines, dtype=bool)
    line_bad[good] = ~ok
    line_bad |= wrong_count
    first_bad = _first_line(line_bad) if cfg.on_bad_rows == "error" else n_lines
    first_unknown = int(good[unknown][0]) if cfg.on_unknown_items == "error" and unknown.any() else n_lines
    line = min(first_bad, first_unknown)
    if line < n_lines:
        where = f"{path}:{line + 1}"
        if wrong_count[line]:
            problems.bad_row(where, f"expected {n_fields} fields, got {int(got[line])}")
        j = int(np.searchsorted(good, line))
        if empty_id[j]:
            problems.bad_row(where, "empty user or item id")
        if long_id[j]:
            problems.bad_row(where, f"user or item id longer than {MAX_ID_BYTES} bytes")
        if bad_time[j]:
            problems.bad_row(where, f"malformed timestamp {bytes(buf[tsb[j]:teb[j]]).decode('utf-8')!r}{_TIME_HINT}")
        problems.unknown_item(where, bytes(buf[is_[j]:ie[j]]).decode("utf-8"), catalogue)
    problems.count("bad_rows", line_bad.sum())
    problems.count("unknown_items", unknown.sum())
    keep = ok & ~unknown
    width = int(max((ue - us)[keep].max(initial=1), 1))
    item_keys = None if pos is not None else ts.byte_keys(buf, is_[keep], ie[keep])
    user_keys = ts.byte_keys(buf, us[keep], ue[keep], width)
    lines = good[keep] + 1
    exact = _exact_times(path, lambda: ts.decode_ranges(buf, tsb[keep], teb[keep]), times[keep], lines,
                         lambda: ts.parse_integers(buf, tsb[keep], teb[keep]))
    return _Rows(user_keys, item_keys, None if pos is None else pos[keep], times[keep], lines, exact)


EXACT_FROM = 2.0**53
"""From here on float64 no longer holds every integer: two timestamps a few units apart (19-digit
nanosecond epochs) would read as equal and be ordered by line instead of by time."""

_INT64_DIGITS = str(np.iinfo(np.int64).max)


def _exact_times(path: Path, texts: Callable[[], list[str]], times: np.ndarray, lines: np.ndarray,
                 integers: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Exact order keys for the timestamps when some lie beyond :data:`EXACT_FROM` (None otherwise: the
    float64 values order them): their integer parts (floored) as int64 and, unless every one is an integer,
    their fractions as float64 (a tie-break). Both are read from the text (``texts()``, as written), so
    ``1600000000000000003.5`` orders after ``1600000000000000003``; a timestamp written otherwise (an
    exponent) is taken from its float64 value where that is below :data:`EXACT_FROM`. One beyond it that
    is not a plain decimal, or beyond int64, is an error naming file and line (``lines``).

    ``integers()`` (the fast path: :func:`~crossan.data.textscan.parse_integers` over the file's bytes) gives
    the values when every timestamp is a plain integer, as 19-digit nanosecond epochs are, without a Python
    string per row (``texts()`` built one: gigabytes and tens of seconds for ten million rows)."""
    if not len(times) or float(np.abs(times).max()) < EXACT_FROM:
        return None
    if integers is not None:
        values, plain = integers()
        if plain.all():
            return values, None
    text = np.asarray([t.strip(ts.SPACES) for t in texts()], dtype=str)
    try:
        return text.astype(np.int64), None
    except (ValueError, OverflowError):
        pass
    head, _, frac = np.char.partition(text, ".").T
    digits = np.char.lstrip(head, "+-")
    n = np.char.str_len(digits)
    plain = (np.char.isdigit(digits) & (np.char.str_len(head) - n <= 1) & (np.char.isdigit(frac) | (frac == ""))
             & ((n < len(_INT64_DIGITS)) | ((n == len(_INT64_DIGITS)) & (digits <= _INT64_DIGITS))))
    wrong = ~plain & (np.abs(times) >= EXACT_FROM)
    if wrong.any():
        k = int(np.flatnonzero(wrong)[0])
        raise DataError(f"{path}:{int(lines[k])}: timestamp {str(text[k])!r} cannot be ordered exactly among "
                        "timestamps beyond 2**53 (float64 rounds them); write it as a plain integer or decimal "
                        "number within int64")
    whole = np.floor(times).astype(np.int64)  # exact below EXACT_FROM, where it is used
    part = times - np.floor(times)
    whole[plain] = head[plain].astype(np.int64)
    part[plain] = np.char.add("0.", np.where(frac[plain] == "", "0", frac[plain])).astype(np.float64)
    below = plain & np.char.startswith(head, "-") & (part > 0)  # -3.25 is -4 + 0.75
    whole[below] -= 1
    part[below] = 1.0 - part[below]
    return whole, part


def _number(text: str) -> float:
    """``text`` as a float, as :func:`~crossan.data.textscan.parse_numbers` reads it (ASCII only: no Unicode
    digits), or NaN when it is not a number."""
    try:
        return float(text) if text.isascii() else math.nan
    except ValueError:
        return math.nan


def _row_like_lines(parts: list[str], delimiter: str, ids: tuple[int, ...], time_col: int | None
                    ) -> list[tuple[int, tuple[str, ...]]]:
    """The lines inside a record's multi-line fields that read as records of their own — as many fields as the
    header, its id fields filled and (``time_col``) a number in its time field — as ``(offset from the
    record's first line, their ids)``. Whether they are records swallowed by a double quote left open or lines
    of a review that happen to look like rows ("Bought sizes 8, 9, 10, all fit") is for the caller to judge
    (:func:`_swallowed`)."""
    found, offset = [], 0
    for value in parts:
        lines = value.split("\n")
        for k, line in enumerate(lines[1:], 1):
            fields = next(csv.reader([line], delimiter=delimiter), [])
            if (len(fields) == len(parts) and all(fields[i].strip(ts.SPACES) for i in ids)
                    and (time_col is None or math.isfinite(_number(fields[time_col].strip(ts.SPACES))))):
                found.append((offset + k, tuple(fields[i].strip(ts.SPACES) for i in ids)))
        offset += len(lines) - 1
    return found


def _swallowed(candidates: list[tuple[int, tuple[str, ...]]], known: tuple[set[str] | Catalogue, ...]) -> int | None:
    """The offset of the first of :func:`_row_like_lines`' ``candidates`` whose ids are all ``known`` (the
    file's user ids, its item ids or the catalogue's): a record swallowed by a double quote left open. A line
    that only looks like a row names a user and an item the file does not otherwise have."""
    for offset, ids in candidates:
        if all(i in k for i, k in zip(ids, known)):
            return offset
    return None


def _parse_rows(path: Path, text: str, delimiter: str, catalogue: Catalogue | None, problems: _Problems) -> _Rows:
    """The same checks as :func:`_scan_rows`, through Python's csv module (files with quoted fields)."""
    with _long_fields():
        return _parse_records(path, text, delimiter, catalogue, problems)


def _parse_records(path: Path, text: str, delimiter: str, catalogue: Catalogue | None, problems: _Problems
                   ) -> _Rows:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records = _csv_records(path, reader, text)
    header = next(records, None)
    if header is None:
        raise DataError(f"{path}: empty file")
    _, names, (iu, ii, it) = _header(path, delimiter.join(header), delimiter)
    users, items, times, lines, stamps = [], [], [], [], []
    suspects: list[tuple[int, str, int, int, list[tuple[int, tuple[str, ...]]]]] = []
    end = reader.line_num  # physical lines read so far: a quoted field may span lines

    def judge() -> list[int]:
        """The suspects whose row-like lines name the file's own user and item (rows read so far): each a bad
        row (raised under data.on_bad_rows=error), returned as indices into the rows to drop."""
        known = (set(users), set(items) if catalogue is None else catalogue)
        gone = []
        for k, where, first, last, row_like in suspects:
            inner = _swallowed(row_like, known)
            if inner is not None:
                problems.bad_row(where, f"a quoted field runs over lines {first}–{last}, and its line {first + inner} "
                                        "reads as a record of its own (an unbalanced double quote?)")
                gone.append(k)
        return gone

    try:
        for parts in records:
            lineno, end = end + 1, reader.line_num  # the record starts on the line after the previous one ends
            if not parts or not any(p.strip(ts.SPACES) for p in parts):
                continue
            where = f"{path}:{lineno}"
            if len(parts) != len(names):
                problems.bad_row(where, f"expected {len(names)} fields, got {len(parts)}")
                continue
            user, item, stamp = (parts[k].strip(ts.SPACES) for k in (iu, ii, it))
            if end > lineno and any("\n" in v for v in (user, item, stamp)):  # a quote left open merges lines
                problems.bad_row(where, f"a quoted field runs over lines {lineno}–{end} into the user id, item id "
                                        "or timestamp (an unbalanced double quote?)")
                continue
            row_like = _row_like_lines(parts, delimiter, (iu, ii), it) if end > lineno else []
            if not user or not item:
                problems.bad_row(where, "empty user or item id")
                continue
            if len(user.encode("utf-8")) > MAX_ID_BYTES or len(item.encode("utf-8")) > MAX_ID_BYTES:
                problems.bad_row(where, f"user or item id longer than {MAX_ID_BYTES} bytes")
                continue
            t = _number(stamp)
            if not math.isfinite(t):
                problems.bad_row(where, f"malformed timestamp {stamp!r}{_TIME_HINT}")
                continue
            if catalogue is not None and item not in catalogue:
                problems.unknown_item(where, item, catalogue)
                continue
            if row_like:  # judged once every row is read (_swallowed): are its lines the file's own rows?
                suspects.append((len(users), where, lineno, end, row_like))
            users.append(user)
            items.append(item)
            times.append(t)
            stamps.append(stamp)
            lines.append(lineno)
    except DataError:  # a later row's error: a stray quote before it is the likelier cause, and said first
        if suspects:
            judge()
        raise
    if suspects:
        gone = judge()
        if gone:
            keep = np.ones(len(users), dtype=bool)
            keep[gone] = False
            users, items, times, stamps, lines = ([v for v, kept in zip(column, keep) if kept]
                                                  for column in (users, items, times, stamps, lines))
    pos = None if catalogue is None else ts.KeyTable(catalogue.ids()).lookup_strings(items)
    values, line_nos = np.asarray(times, dtype=np.float64), np.asarray(lines, dtype=np.int64)
    return _Rows(ts.keys_of_strings(users), None if catalogue is not None else ts.keys_of_strings(items), pos,
                 values, line_nos, _exact_times(path, lambda: stamps, values, line_nos))


def _group(rows: _Rows) -> tuple[Interactions, list[str] | None]:
    """Per-user sequences ordered by time (ties: file order); users in order of first appearance.

    Returns the interactions and, when the rows carry item ids rather than catalogue positions, the sorted
    distinct item ids (the positions then index that list)."""
    uniq, first, inverse = np.unique(rows.user_keys, return_index=True, return_inverse=True)
    order_u = np.argsort(first, kind="stable")
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order_u] = np.arange(len(uniq))
    user_rank = rank[inverse.ravel()]
    item_ids = None
    if rows.item_pos is not None:
        pos = rows.item_pos
    else:
        item_uniq, pos = np.unique(rows.item_keys, return_inverse=True)
        item_ids = ts.keys_to_strings(item_uniq)
    if rows.exact_times is None:
        time_keys: tuple[np.ndarray, ...] = (rows.times,)
    else:
        whole, part = rows.exact_times
        time_keys = (whole,) if part is None else (part, whole)
    order = np.lexsort((rows.lines, *time_keys, user_rank))
    lengths = np.bincount(user_rank, minlength=len(uniq))
    items = pos.ravel()[order].astype(np.int64)
    users = ts.keys_to_strings(uniq[order_u])
    tied = np.zeros(len(order), dtype=bool)  # equal time to the interaction before, same user
    if len(order) > 1:
        sorted_keys = user_rank[order]
        tied[1:] = sorted_keys[1:] == sorted_keys[:-1]
        for key in time_keys:
            sorted_keys = key[order]
            tied[1:] &= sorted_keys[1:] == sorted_keys[:-1]
        del sorted_keys
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Interactions(users, offsets, items, tied), item_ids


def _read_interactions(path: Path, delimiter: str, catalogue: Catalogue | None, problems: _Problems,
                       ) -> tuple[Interactions, list[str] | None]:
    buf = _bytes(path)
    if (buf == ord('"')).any():
        # one "\n" per line end, so that the csv module counts lines as grep does: the CRs read_text_bytes left
        # are those before an LF (lone ones became LFs)
        rows = _parse_rows(path, buf.tobytes().replace(b"\r", b"").decode("utf-8"), delimiter, catalogue, problems)
    else:
        rows = _scan_rows(path, buf, delimiter, catalogue, problems)
    if not len(rows.lines):
        raise DataError(f"{path}: no usable interactions")
    return _group(rows)


def _read_atomic_items(path: Path, cfg: DataConfig, problems: _Problems
                       ) -> tuple[Catalogue, dict[str, tuple[str, str, str]]]:
    with _long_fields():
        return _atomic_items(path, cfg, problems)


def _atomic_items(path: Path, cfg: DataConfig, problems: _Problems
                  ) -> tuple[Catalogue, dict[str, tuple[str, str, str]]]:
    """The catalogue of a ``.item`` file, and the lines inside its multi-line fields that read as items of their
    own: ``{their id: (where, why, the item whose field holds them)}`` (judged by :func:`read_atomic`)."""
    # quoted fields as in the .inter file (see _read_interactions), so that an id reads the same in both files
    text = _text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    rows = _csv_records(path, reader, text)
    header = next(rows, None)
    if header is None:
        raise DataError(f"{path}: empty file")
    names = _column_names(header)  # the .inter header's rules: case-insensitive, ``item`` for ``item_id``
    types = [h.split(":")[1].strip() if ":" in h else "token" for h in header]
    iid = _column(path, header, names, "item_id", "item")
    if cfg.text_fields:
        unknown = [t for t in cfg.text_fields if t.lower() not in names]
        if unknown:
            raise DataError(f"data.text_fields: {unknown} not among the columns of {path}: {names}")
        text_cols = [names.index(t.lower()) for t in cfg.text_fields]
    else:
        text_cols = [i for i, t in enumerate(types) if i != iid and t in ("token", "token_seq")]
    records = []
    seen: set[str] = set()
    swallowed: dict[str, tuple[str, str, str]] = {}
    end = reader.line_num
    for parts in rows:
        lineno, end = end + 1, reader.line_num  # a quoted field may span lines: name the record's first
        if not parts or not any(p.strip(ts.SPACES) for p in parts):  # a no-break space is content, as in ids
            continue
        where = f"{path}:{lineno}"
        if len(parts) != len(names):
            problems.bad_row(where, f"expected {len(names)} fields, got {len(parts)}")
            continue
        item = parts[iid].strip(ts.SPACES)
        if "\n" in item:  # a quote left open merges lines
            problems.bad_row(where, f"a quoted field runs over lines {lineno}–{end} into the item id (an "
                                    "unbalanced double quote?)")
            continue
        for inner, (other,) in _row_like_lines(parts, "\t", (iid,), None) if end > lineno else []:
            # an item of its own or a title's line? Judged by whether the interactions name it (read_atomic)
            swallowed.setdefault(other, (where, f"a quoted field runs over lines {lineno}–{end}, and its line "
                                                f"{lineno + inner} reads as an item of its own, one that the "
                                                "interactions name (an unbalanced double quote?)", item))
        if not item or item in seen:
            problems.bad_row(where, f"item {item!r} appears twice" if item else "empty item id")
            continue
        if len(item.encode("utf-8")) > MAX_ID_BYTES:
            problems.bad_row(where, f"item id longer than {MAX_ID_BYTES} bytes")
            continue
        seen.add(item)
        text = " ".join(parts[i].strip() for i in text_cols if parts[i].strip())
        records.append(ItemRecord(item, text[: cfg.max_text_chars]))
    catalogue = Catalogue(path.parent, records, source=str(path), media_roots=cfg.media_roots)
    return catalogue, {i: why for i, why in swallowed.items() if i not in catalogue}


def _drop_swallowing_items(inter: Path, cfg: DataConfig, catalogue: Catalogue,
                           swallowed: dict[str, tuple[str, str, str]], problems: _Problems) -> Catalogue:
    """The catalogue without the ``.item`` records whose multi-line field swallowed items that the interactions
    in ``inter`` name (a bad row each: an error, or dropped and counted with ``data.on_bad_rows=drop``). Which
    ids the interactions name is read once more, without the catalogue, only where such lines exist."""
    named = _read_interactions(inter, "\t", None, _Problems(dataclasses.replace(cfg, on_bad_rows="drop")))[1]
    named_set = set(named or [])
    bad: dict[str, tuple[str, str]] = {}
    for other, (where, why, holder) in swallowed.items():
        if other in named_set:
            bad.setdefault(holder, (where, why))
    for where, why in bad.values():  # in file order: swallowed was filled so, one holder's lines together
        problems.bad_row(where, why)
    if not bad:
        return catalogue
    return Catalogue(catalogue.root, [r for r in catalogue if r.item_id not in bad], source=catalogue.source,
                     media_roots=catalogue.media_roots)


def _with_catalogue(path: Path, root: Path, cfg: DataConfig, catalogue: Catalogue | None, problems: _Problems,
                    delimiter: str) -> RawData:
    inter, item_ids = _read_interactions(path, delimiter, catalogue, problems)
    if catalogue is None:
        catalogue = Catalogue(root, (ItemRecord(i) for i in item_ids or []), source=str(path),
                              media_roots=cfg.media_roots)
    return RawData(inter, catalogue, dict(problems.dropped), [str(path), catalogue.source])


def read_atomic(root: Path, cfg: DataConfig) -> RawData:
    problems = _Problems(cfg)
    inters = sorted(root.glob("*.inter"))
    if len(inters) != 1:
        raise DataError(f"{root}: expected exactly one .inter file, found {len(inters)}")
    items_files = sorted(root.glob("*.item"))
    if len(items_files) > 1:
        raise DataError(f"{root}: several .item files ({', '.join(p.name for p in items_files)}); keep one")
    catalogue = None
    if items_files:
        catalogue, swallowed = _read_atomic_items(items_files[0], cfg, problems)
        if swallowed:
            catalogue = _drop_swallowing_items(inters[0], cfg, catalogue, swallowed, problems)
    return _with_catalogue(inters[0], root, cfg, catalogue, problems, "\t")


def read_csv(path: Path, cfg: DataConfig) -> RawData:
    problems = _Problems(cfg)
    items_tsv = path.parent / "items.tsv"
    catalogue = read_items_tsv(items_tsv, problems, spaces_ok=True) if items_tsv.is_file() else None
    return _with_catalogue(path, path.parent, cfg, catalogue, problems, ",")


def detect_format(path: Path) -> str:
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and (path.suffix.lower() in (".inter", ".item") or path.name in ("users.tsv", "items.tsv")
                           or path.name.endswith("_pairs.tsv")):
        raise DataError(f"{path} is a file: a dataset in this layout is the folder that holds its files; pass "
                        f"the folder, {shlex.quote(str(path.parent))} (to --data, --run-data or data.path)")
    if path.is_dir():
        inters = sorted(path.glob("*.inter"))
        if inters:
            histories = [p.name for p in (path / "users.tsv", *sorted(path.glob("*_pairs.tsv"))) if p.is_file()]
            if histories:  # which layout holds the histories to train on is not the reader's to guess
                raise DataError(f"{path}: both {', '.join(histories)} (IISAN layout) and {inters[0].name} (RecBole "
                                "atomic) hold user histories; keep one, or set data.format=iisan or atomic")
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
    if cfg.text_fields and fmt != "atomic":
        raise DataError(f"data.text_fields: {cfg.text_fields} names columns of a RecBole .item file, but {path} is "
                        f"read as {fmt} (its items.tsv has one title column); drop the key")
    if fmt in ("iisan", "atomic") and path.is_file():
        raise DataError(f"{path} is a file: the {fmt} layout is read from the folder that holds its files; pass "
                        f"the folder, {shlex.quote(str(path.parent))} (to --data, --run-data or data.path)")
    if fmt == "iisan":
        return read_iisan(path, cfg)
    if fmt == "atomic":
        return read_atomic(path, cfg)
    if path.is_file():
        return read_csv(path, cfg)
    csvs = sorted(path.glob("*.csv"))
    if not csvs:
        raise DataError(f"{path}: data.format=csv but no .csv file found")
    if len(csvs) > 1:
        raise DataError(f"{path}: data.format=csv but several .csv files ({', '.join(p.name for p in csvs)}); "
                        f"pass one: --data {shlex.quote(str(csvs[0]))}")
    return read_csv(csvs[0], cfg)

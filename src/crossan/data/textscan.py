"""Vectorised scanning of large text files (numpy over the raw bytes; no per-interaction Python loop).

The interaction files of a MicroLens-1M-sized dataset hold ten million item ids; splitting them into
Python strings costs tens of seconds and gigabytes. These helpers work on the file's bytes as one
``uint8`` array instead:

* :func:`read_text_bytes` — the file's bytes with a UTF-8 BOM removed and lone CR line ends made LF (CRs
  before an LF stay: whitespace of that line's end), checked to be UTF-8 (an invalid byte is an error naming
  the file and line);
* :func:`line_starts` / :func:`line_of` — line boundaries and the line of any byte position;
* :func:`tokens` — maximal runs of non-separator bytes (start, end);
* :func:`byte_keys` — byte ranges as sortable fixed-width keys (``uint64`` when at most 8 bytes long, else
  ``S{width}``), whose order is the byte-wise (= code point) order of the strings;
* :func:`KeyTable` — look keys up in a table of known ids (the item catalogue);
* :func:`parse_numbers` — byte ranges as float64 (plain digit runs in one vectorised pass, anything else
  through numpy's string-to-float cast).
* :func:`parse_integers` — byte ranges as exact int64 where they are plain integers (19-digit timestamps).

Whitespace is ASCII whitespace as Python's ``str.split()`` sees it: space, ``\\t \\n \\v \\f \\r`` and
``\\x1c``–``\\x1f``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

UTF8_BOM = b"\xef\xbb\xbf"
SPACES = "\t\n\v\f\r\x1c\x1d\x1e\x1f "
"""ASCII whitespace, as a string: ``text.strip(SPACES)`` strips what the byte scans strip."""
WHITESPACE = np.zeros(256, dtype=bool)
WHITESPACE[[ord(c) for c in SPACES]] = True
NEWLINE, TAB, CR = 10, 9, 13
CRLF_RUN = re.compile(rb"\r+\n")
"""One line end: CRs before an LF (CRLF, or CR CR LF where a CRLF file was converted again)."""
CHUNK = 1 << 20
"""Ranges handled per block by the lookups (bounds their temporary arrays)."""


class TextError(ValueError):
    """A text file is not what the readers need (not UTF-8 …); the message names the file and line."""


def index_dtype(n: int) -> type:
    """The narrowest integer type that holds positions below ``n``."""
    return np.int32 if n < 2**31 - 1 else np.int64


def read_text_bytes(path: Path) -> np.ndarray:
    """The bytes of ``path`` as ``uint8`` without a leading UTF-8 BOM, lone CR made LF, checked UTF-8."""
    raw = path.read_bytes()
    start = len(UTF8_BOM) if raw.startswith(UTF8_BOM) else 0
    buf = np.frombuffer(raw, dtype=np.uint8)[start:]
    cr = np.flatnonzero(buf == CR)
    if len(cr):
        # an LF right after a run of CRs makes the whole run part of one line end (CRLF, or CR CR LF where a
        # CRLF file was converted again), as grep and sed count lines
        last = np.ones(len(cr), dtype=bool)  # the last CR of its run
        last[:-1] = cr[1:] != cr[:-1] + 1
        nxt = cr[last] + 1
        crlf_run = nxt < len(buf)
        crlf_run[crlf_run] = buf[nxt[crlf_run]] == NEWLINE
        run = np.cumsum(np.r_[True, last[:-1]]) - 1  # the run of each CR
        lone = cr[~crlf_run[run]]
        if len(lone):  # old Mac line ends: a CR alone ends a line, as Python's universal newlines read it
            buf = buf.copy()
            buf[lone] = NEWLINE
    check_utf8(buf, path)
    return buf


def check_utf8(buf: np.ndarray, path: Path, first_line: int = 1) -> None:
    """Raise :class:`TextError` naming ``path`` and the line of the first byte that is not UTF-8 text
    (a NUL byte counts as not text: ids compare as NUL-padded keys, and no text file holds one)."""
    nul = np.flatnonzero(buf == 0)
    if len(nul):
        line = first_line + int(np.count_nonzero(buf[: nul[0]] == NEWLINE))
        raise TextError(f"{path}:{line}: a NUL byte (0x00): not a text file, or a damaged one")
    if not (buf >= 0x80).any():
        return
    try:
        buf.tobytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + int(np.count_nonzero(buf[: e.start] == NEWLINE))
        raise TextError(f"{path}:{line}: not valid UTF-8 text (byte 0x{int(buf[e.start]):02x}); "
                        "save the file as UTF-8") from None


def decode_text(raw: bytes, path: Path) -> str:
    """``raw`` as text: BOM removed, line ends made ``\\n``, UTF-8 checked (error naming file and line).

    Line ends are made ``\\n`` before the check: an error in a file with bare-CR line ends names its line. A run
    of CRs before an LF is one line end (CR CR LF: a CRLF file converted again), as :func:`read_text_bytes`
    reads it."""
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM):]
    # a CR byte is never part of a UTF-8 sequence; the regular expression only where CRs repeat (it is slower)
    raw = (CRLF_RUN.sub(b"\n", raw) if b"\r\r" in raw else raw.replace(b"\r\n", b"\n")).replace(b"\r", b"\n")
    check_utf8(np.frombuffer(raw, dtype=np.uint8), path)
    return raw.decode("utf-8")


def line_starts(buf: np.ndarray) -> np.ndarray:
    """Start offset of every line (a final line without a newline counts; nothing after a final newline)."""
    nl = np.flatnonzero(buf == NEWLINE)
    dt = index_dtype(len(buf) + 1)
    starts = np.empty(len(nl) + 1, dtype=dt)
    starts[0] = 0
    starts[1:] = nl + 1
    if len(buf) and buf[-1] == NEWLINE or len(buf) == 0:
        starts = starts[:-1]
    return starts


def line_of(starts: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """0-based line index of each byte position (``starts`` from :func:`line_starts`)."""
    return (np.searchsorted(starts, positions, side="right") - 1).astype(index_dtype(len(starts) + 1))


def token_lines(buf: np.ndarray, tok_starts: np.ndarray) -> np.ndarray:
    """0-based line of each token (``tok_starts`` sorted; newlines are separators). One search per line
    instead of one per token: the first token after each newline starts the next line."""
    nl = np.flatnonzero(buf == NEWLINE)
    first_after = np.searchsorted(tok_starts, nl)
    marks = np.bincount(first_after, minlength=len(tok_starts) + 1)[: len(tok_starts)]
    return np.cumsum(marks, dtype=index_dtype(len(nl) + 2))


def tokens(separator: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of each maximal run of bytes where ``separator`` is False (end exclusive)."""
    dt = index_dtype(len(separator) + 1)
    if not len(separator):
        return np.zeros(0, dt), np.zeros(0, dt)
    content = ~separator
    begins = content[1:] > content[:-1]  # content after a separator
    starts = (np.flatnonzero(begins) + 1).astype(dt)
    if content[0]:
        starts = np.concatenate([np.zeros(1, dt), starts])
    begins = content[1:] < content[:-1]  # a separator after content: the run ended
    ends = (np.flatnonzero(begins) + 1).astype(dt)
    if content[-1]:
        ends = np.concatenate([ends, np.full(1, len(separator), dt)])
    return starts, ends


def first_per_group(groups: np.ndarray) -> np.ndarray:
    """Mask of the first element of each run of equal values in a sorted ``groups`` array."""
    out = np.ones(len(groups), dtype=bool)
    if len(groups) > 1:
        out[1:] = groups[1:] != groups[:-1]
    return out


def last_per_group(groups: np.ndarray) -> np.ndarray:
    """Mask of the last element of each run of equal values in a sorted ``groups`` array."""
    out = np.ones(len(groups), dtype=bool)
    if len(groups) > 1:
        out[:-1] = groups[1:] != groups[:-1]
    return out


def byte_keys(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int | None = None) -> np.ndarray:
    """Fixed-width sortable keys of the byte ranges [starts, ends), cut to ``width`` bytes (default: the
    longest range). Keys of at most 8 bytes are big-endian ``uint64`` (fast to sort and search); longer ones
    are ``S{width}``. Either way key order is the byte-wise order of the strings (ids hold no NUL byte)."""
    if width is None:
        width = int((ends - starts).max()) if len(starts) else 1
    width = max(1, width)
    mat = byte_matrix(buf, starts, ends, width, 8 if width <= 8 else width)
    if mat.shape[1] == 8:
        return mat.view(">u8").ravel().astype(np.uint64)
    return mat.view(f"S{mat.shape[1]}").ravel()


def byte_matrix(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int, columns: int = 0) -> np.ndarray:
    """[n, max(width, columns)] ``uint8``: the first ``width`` bytes of each range, zero past its end."""
    lengths = (ends - starts).astype(np.int64)
    mat = np.zeros((len(starts), max(width, columns)), dtype=np.uint8)
    if not len(buf):
        return mat
    last = len(buf) - 1
    s64 = starts.astype(np.int64)
    for k in range(width):
        col = buf[np.minimum(s64 + k, last)]
        col[lengths <= k] = 0
        mat[:, k] = col
    return mat


def keys_of_strings(values: list[str], width: int | None = None) -> np.ndarray:
    """:func:`byte_keys` of Python strings (their UTF-8 bytes)."""
    encoded = [v.encode("utf-8") for v in values]
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    ends = np.cumsum(lengths)
    return byte_keys(buf, ends - lengths, ends, width)


def canonical_numbers(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_digits: int,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Integer value of each range and whether the range is a canonical decimal number (digits only, no
    leading zero, at most ``max_digits`` ≤ 18 digits) — i.e. whether ``str(value)`` gives the range back."""
    lengths = (ends - starts).astype(np.int32)
    ok = (lengths >= 1) & (lengths <= max_digits)
    acc = np.zeros(len(starts), dtype=np.int64)
    s64 = starts.astype(np.int64)
    last = max(0, len(buf) - 1)
    for k in range(max_digits):  # one pass per digit position, in place
        take = lengths > k
        b = buf[np.minimum(s64 + k, last)].view(np.int8) - np.int8(48)
        ok &= ~take | ((b >= 0) & (b <= 9))
        if k == 0:
            ok &= (b != 0) | (lengths == 1)
        np.multiply(acc, 10, out=acc, where=take)
        np.add(acc, b, out=acc, where=take)
    return np.where(ok, acc, 0), ok


def _dense_numeric(ids: list[str], limit: int = 50_000_000) -> np.ndarray | None:
    """``value → position`` array when every id is a canonical decimal number below ``limit`` and the array
    is not much longer than the list (at most 1M + 64 entries per id: a few sparse large ids, such as three
    items numbered up to 49,999,999, would have taken 400 MB), else None (the sorted lookup serves)."""
    if not ids or not all(i.isascii() and i.isdigit() and (i == "0" or i[0] != "0") and len(i) <= 9 for i in ids):
        return None
    values = np.array([int(i) for i in ids], dtype=np.int64)
    if values.max() >= min(limit, 1_000_000 + 64 * len(ids)):
        return None
    dense = np.full(int(values.max()) + 1, -1, dtype=np.int64)
    dense[values] = np.arange(len(ids))
    return dense


class KeyTable:
    """Vectorised ``id → position`` lookup for a list of string ids (e.g. the catalogue's item ids)."""

    def __init__(self, ids: list[str]) -> None:
        lengths = [len(i.encode("utf-8")) for i in ids]
        self.width = max(lengths, default=1)
        keys = keys_of_strings(ids, self.width)
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]
        self.dense = _dense_numeric(ids)

    def lookup(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Position of each byte range's string in the id list, or -1 where it is not there."""
        if not len(starts):
            return np.full(0, -1, dtype=np.int64)
        if len(starts) > CHUNK:  # blocks keep the temporaries small (and in cache)
            return np.concatenate([self.lookup(buf, starts[i:i + CHUNK], ends[i:i + CHUNK])
                                   for i in range(0, len(starts), CHUNK)])
        if self.dense is not None:  # every id is a plain decimal number: index an array by its value
            values, canonical = canonical_numbers(buf, starts, ends, len(str(len(self.dense) - 1)))
            inside = canonical & (values < len(self.dense))
            out = np.full(len(starts), -1, dtype=np.int64)
            out[inside] = self.dense[values[inside]]
            return out
        fits = (ends - starts) <= self.width
        return self._find(byte_keys(buf, starts, ends, self.width), fits)

    def lookup_strings(self, values: list[str]) -> np.ndarray:
        """Position of each string in the id list, or -1 where it is not there."""
        fits = np.array([len(v.encode("utf-8")) <= self.width for v in values], dtype=bool)
        return self._find(keys_of_strings(values, self.width), fits)

    def _find(self, keys: np.ndarray, fits: np.ndarray) -> np.ndarray:
        out = np.full(len(keys), -1, dtype=np.int64)
        if not len(self.sorted) or not len(keys):
            return out
        idx = np.minimum(np.searchsorted(self.sorted, keys), len(self.sorted) - 1)
        found = fits & (self.sorted[idx] == keys)
        out[found] = self.order[idx[found]]
        return out


def keys_to_strings(keys: np.ndarray) -> list[str]:
    """Inverse of :func:`byte_keys` for keys holding whole strings."""
    raw = keys.astype(">u8").view("S8") if keys.dtype == np.uint64 else keys  # S drops the zero padding
    return [b.decode("utf-8") for b in raw.tolist()]


def decode_ranges(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[str]:
    """The byte ranges as Python strings (one per range: for user ids and other per-row names)."""
    if not len(starts):
        return []
    if int((ends - starts).max()) <= 64:
        return keys_to_strings(byte_keys(buf, starts, ends))
    return [buf[s:e].tobytes().decode("utf-8") for s, e in zip(starts.tolist(), ends.tolist())]


def strip_ranges(separator: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[starts, ends) without leading and trailing separator bytes (as ``str.strip()`` on each range).

    One vectorised pass per stripped byte, up to 32; ranges with longer runs finish one by one."""
    s, e = starts.astype(np.int64), ends.astype(np.int64)
    last = max(0, len(separator) - 1)
    for side in (0, 1):
        for step in range(33):
            at = s if side == 0 else np.clip(e - 1, 0, last)
            move = (s < e) & separator[np.minimum(at, last)]
            if not move.any():
                break
            if step == 32:
                for j in np.flatnonzero(move).tolist():
                    while s[j] < e[j] and separator[s[j] if side == 0 else e[j] - 1]:
                        if side == 0:
                            s[j] += 1
                        else:
                            e[j] -= 1
                break
            if side == 0:
                s[move] += 1
            else:
                e[move] -= 1
    return s, e


INT64_MAX = np.uint64(2**63 - 1)


def parse_integers(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 values of the byte ranges and a mask of those that are plain integers: an optional ``+``/``-``
    and 1 to 19 ASCII digits, at most 2**63 - 1 in size (0 where not). Vectorised, one pass per digit
    position: exact where float64 is not (19-digit nanosecond epochs), without a Python string per range."""
    n = len(starts)
    if n == 0 or not len(buf):
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    s64, last = starts.astype(np.int64), len(buf) - 1
    first = buf[np.minimum(s64, last)]
    negative = first == ord("-")
    signed = negative | (first == ord("+"))
    digits_at = s64 + signed
    lengths = ends.astype(np.int64) - digits_at
    ok = (lengths >= 1) & (lengths <= 19)
    acc = np.zeros(n, dtype=np.uint64)  # 19 digits stay below 2**64
    for k in range(19):
        take = lengths > k
        if not take.any():
            break
        b = buf[np.minimum(digits_at + k, last)].astype(np.int64) - 48
        ok &= ~take | ((b >= 0) & (b <= 9))
        acc = np.where(take, acc * np.uint64(10) + np.clip(b, 0, 9).astype(np.uint64), acc)
    ok &= acc <= INT64_MAX
    values = np.where(ok, acc, np.uint64(0)).astype(np.int64)
    return np.where(negative, -values, values), ok


def parse_numbers(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 values of the byte ranges and a mask of those that do not parse as a number.

    Plain runs of at most 18 ASCII digits are converted in one vectorised pass (exact); anything else
    (signs, decimals, exponents) goes through numpy's string-to-float cast, range by range only for the
    ranges that fail as a whole.
    """
    n = len(starts)
    values = np.zeros(n, dtype=np.float64)
    bad = np.zeros(n, dtype=bool)
    if n == 0:
        return values, bad
    lengths = (ends - starts).astype(np.int64)
    width = int(lengths.max())
    digits_only = (lengths > 0) & (lengths <= 18)
    acc = np.zeros(n, dtype=np.int64)
    s64 = starts.astype(np.int64)
    for k in range(min(width, 18)):
        take = lengths > k
        b = buf[np.minimum(s64 + k, len(buf) - 1)].astype(np.int64)
        is_digit = (b >= 48) & (b <= 57)
        digits_only &= ~take | is_digit
        acc = np.where(take, acc * 10 + (b - 48), acc)
    values[digits_only] = acc[digits_only].astype(np.float64)
    rest = np.flatnonzero(~digits_only)
    if len(rest):
        keys = byte_keys(buf, starts[rest], ends[rest])
        texts = keys.astype(">u8").view("S8") if keys.dtype == np.uint64 else keys
        try:
            values[rest] = texts.astype(np.float64)
        except ValueError:
            for j, t in zip(rest.tolist(), texts.tolist()):
                try:
                    values[j] = float(t)
                except ValueError:
                    bad[j] = True
    return values, bad

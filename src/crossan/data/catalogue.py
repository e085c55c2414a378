"""Item catalogue: what each item *is* (its raw content), independent of who interacted with it.

A catalogue maps an original item id (string) to an :class:`ItemRecord` holding the item's text and the
paths of its cover image, video and audio clip, each relative to the dataset root and each optional.

Media paths are confined: :meth:`Catalogue.path` hands out a file only when it lies, after resolving
symlinks, inside the dataset root or one of the extra ``media_roots`` (config ``data.media_roots``).
Anything else — an absolute path elsewhere, ``../`` out of the root, a symlink pointing out of it — raises
:class:`~crossan.data.media.MediaError` naming the item, the column and the path; the cache counts it as
a missing modality under ``cache.on_corrupt=missing`` like any unreadable file.

Item text is cut to ``data.max_text_chars`` characters (default :data:`MAX_TEXT_CHARS_DEFAULT`) by the
readers, so no tokeniser is ever handed a megabyte title.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from crossan.data.media import MediaError

MODALITIES: tuple[str, ...] = ("text", "image", "video", "audio")
MAX_TEXT_CHARS_DEFAULT = 2000
"""Characters of item text kept when reading (about 400–500 BERT tokens of English: more than any encoder
here reads; the tokeniser truncates to its own token limit afterwards)."""


@dataclass(frozen=True)
class ItemRecord:
    """Raw content of one item. ``image``/``video``/``audio`` are paths relative to the dataset root."""

    item_id: str
    text: str = ""
    image: str | None = None
    video: str | None = None
    audio: str | None = None

    def has(self, modality: str) -> bool:
        """Whether the item declares content for ``modality`` (the file may still be unreadable)."""
        if modality == "text":
            return bool(self.text.strip())
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        return getattr(self, modality) is not None


class Catalogue:
    """An ordered collection of :class:`ItemRecord` keyed by original item id, rooted at a folder.

    ``media_roots``: extra folders (absolute, or relative to ``root``) that media paths may point into.
    """

    def __init__(self, root: str | Path, records: Iterable[ItemRecord], source: str = "",
                 media_roots: Iterable[str | Path] = ()) -> None:
        self.root = Path(root)
        self.source = source  # file the records were read from, for error messages
        self.media_roots = [str(r) for r in media_roots]
        self._records: dict[str, ItemRecord] = {}
        self._allowed: list[Path] | None = None
        for r in records:
            self._records[r.item_id] = r

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._records

    def __getitem__(self, item_id: str) -> ItemRecord:
        try:
            return self._records[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in the catalogue {self.source or self.root}") from None

    def __iter__(self) -> Iterator[ItemRecord]:
        return iter(self._records.values())

    def ids(self) -> list[str]:
        return list(self._records)

    def allowed_roots(self) -> list[Path]:
        """The folders media may lie in, symlinks resolved: the dataset root, then ``media_roots``."""
        if self._allowed is None:
            extra = [self.root / Path(r).expanduser() for r in self.media_roots]
            self._allowed = [Path(os.path.realpath(p)) for p in [self.root, *extra]]
        return self._allowed

    def path(self, record: ItemRecord, modality: str) -> Path | None:
        """Absolute path of ``record``'s file for a media modality, or None when the item has none.

        Raises :class:`MediaError` when the file, after resolving symlinks, lies outside the dataset root
        and every ``media_roots`` folder (nothing outside them is ever opened)."""
        rel = getattr(record, modality)
        if rel is None:
            return None
        path = self.root / rel
        real = Path(os.path.realpath(path))
        if not any(real == r or r in real.parents for r in self.allowed_roots()):
            shown = rel if str(real) == str(path) else f"{rel} (resolves to {real})"
            raise MediaError(record.item_id, shown,
                             f"the {modality} path lies outside the dataset root {self.allowed_roots()[0]} "
                             "after resolving symlinks; to allow another folder add it to data.media_roots")
        return path

    def subset(self, item_ids: Iterable[str]) -> Catalogue:
        return Catalogue(self.root, (self[i] for i in item_ids), self.source, self.media_roots)


def fingerprint_ids(item_ids: Iterable[str]) -> str:
    """A stable hash of an ordered list of item ids (rows 1..N), and nothing of their content.

    It names a cache's folder and is its manifest's compared ``item_fingerprint``: two caches with equal
    fingerprints (and N) hold rows for the same items in the same order, so a changed title or media file
    is an update of some rows (:mod:`crossan.cache.integrity`), not another cache. The same hash as a run's
    ``item_fingerprint`` (:func:`crossan.ranking.item_fingerprint`, ids joined by newlines), so the
    default cache folder ``<dataset>-<fingerprint>`` names the run fingerprint of the items it holds."""
    return hashlib.sha256("\n".join(item_ids).encode()).hexdigest()[:16]


def fingerprint_items(records: Iterable[ItemRecord]) -> str:
    """A stable hash of an ordered item list and its content references (ids, text, media paths): any
    edit of a title or a media path changes it. Not the cache's identity (:func:`fingerprint_ids` is:
    a content change there re-encodes only the changed rows)."""
    h = hashlib.sha256()
    for r in records:
        for part in (r.item_id, r.text, r.image or "", r.video or "", r.audio or ""):
            h.update(part.encode("utf-8"))
            h.update(b"\x1f")
        h.update(b"\x1e")
    return h.hexdigest()[:16]

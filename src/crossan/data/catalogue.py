"""Item catalogue: what each item *is* (its raw content), independent of who interacted with it.

A catalogue maps an original item id (string) to an :class:`ItemRecord` holding the item's text and the
paths of its cover image, video and audio clip, each relative to the dataset root and each optional.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MODALITIES: tuple[str, ...] = ("text", "image", "video", "audio")


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
    """An ordered collection of :class:`ItemRecord` keyed by original item id, rooted at a folder."""

    def __init__(self, root: str | Path, records: Iterable[ItemRecord], source: str = "") -> None:
        self.root = Path(root)
        self.source = source  # file the records were read from, for error messages
        self._records: dict[str, ItemRecord] = {}
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

    def path(self, record: ItemRecord, modality: str) -> Path | None:
        """Absolute path of ``record``'s file for a media modality, or None when the item has none."""
        rel = getattr(record, modality)
        return None if rel is None else self.root / rel

    def subset(self, item_ids: Iterable[str]) -> Catalogue:
        return Catalogue(self.root, (self[i] for i in item_ids), self.source)


def fingerprint_items(records: Iterable[ItemRecord]) -> str:
    """A stable hash of an ordered item list and its content references (ids, text, media paths).

    Two caches built for the same fingerprint hold rows for the same items in the same order.
    """
    h = hashlib.sha256()
    for r in records:
        for part in (r.item_id, r.text, r.image or "", r.video or "", r.audio or ""):
            h.update(part.encode("utf-8"))
            h.update(b"\x1f")
        h.update(b"\x1e")
    return h.hexdigest()[:16]

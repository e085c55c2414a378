"""The IISAN / MicroLens data protocol (METHOD.md §2): filter, truncate, re-index, leave-one-out split.

* drop users with fewer than ``min_interactions`` items;
* keep each user's last ``max_seq_len + 3`` items;
* re-index the surviving items 1..N in catalogue order (0 = padding);
* train = seq[:-2], validation target = seq[-2], test target = seq[-1]; each input window holds the
  ``max_seq_len`` items before its target (left-padded with 0);
* training predicts the next item at every position of the training window.

Everything is vectorised over users (numpy on the readers' compressed :class:`Interactions`): a million
users and ten million interactions take seconds, not minutes.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossan.config import DataConfig
from crossan.data.catalogue import Catalogue
from crossan.data.media import special_file_kind
from crossan.data.readers import MEDIA_FOLDERS, DataError, RawData, read


@dataclass
class SplitArrays:
    """Evaluation inputs for one split. All arrays are row-aligned by user."""

    inputs: np.ndarray
    """[U, L] item rows before the target, left-padded with 0."""
    targets: np.ndarray
    """[U] the held-out item row."""
    history: np.ndarray
    """[U, H] every item the user interacted with before the target (left-padded with 0); masked in ranking."""


@dataclass
class SequentialData:
    """A dataset after the protocol: integer item rows 1..N and the three splits."""

    name: str
    root: Path
    item_ids: list[str]
    """Row → original item id; ``item_ids[0] == ""`` (padding)."""
    catalogue: Catalogue
    """The records of rows 1..N, in row order."""
    users: list[str]
    train_inputs: np.ndarray
    """[U, L] training windows, left-padded."""
    train_targets: np.ndarray
    """[U, L] next item at each window position (0 where the input is padding)."""
    valid: SplitArrays
    test: SplitArrays
    item_counts: np.ndarray
    """[N+1] occurrences of each item in the training part (row 0: 0); used for popularity correction."""
    dropped: dict[str, int] = field(default_factory=dict)
    raw_stats: dict[str, float] = field(default_factory=dict)
    tied_targets: dict[str, int] = field(default_factory=dict)
    """Per split (``valid``, ``test``): the users whose target's time equals that of a neighbouring interaction
    in their sequence, so that the file's order, not time, chose it (METHOD.md §2); empty where the layout holds
    no times."""

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def max_seq_len(self) -> int:
        return self.train_inputs.shape[1]

    def check_media_files(self, modalities: list[str]) -> None:
        """:class:`DataError` listing the items whose declared media file of one of ``modalities`` does not
        exist, before any encoding starts: a cache build otherwise met the first one only when it reached it,
        hours into a build at scale (``cache.on_corrupt=error``). A path outside the dataset root is the
        catalogue's own :class:`~crossan.data.media.MediaError`, naming item, modality and path."""
        for m in (m for m in modalities if m != "text"):
            kinds = [(r, _file_kind(self.catalogue.path(r, m))) for r in self.catalogue if r.has(m)]
            absent = [r for r, kind in kinds if kind == "missing"]
            special = [(r, kind) for r, kind in kinds if kind not in ("file", "missing")]
            found = []
            if absent:
                shown = ", ".join(f"{r.item_id!r} ({getattr(r, m)})" for r in absent[:5])
                found.append(f"{len(absent):,} of the items' {m} files cannot be found: {shown}"
                             f"{' …' if len(absent) > 5 else ''}")
            if special:  # the path exists: "cannot be found" sent users looking for a file that is there
                shown = ", ".join(f"{r.item_id!r} ({getattr(r, m)}: {kind})" for r, kind in special[:5])
                found.append(f"{len(special):,} of the items' {m} paths are not regular files: {shown}"
                             f"{' …' if len(special) > 5 else ''}")
            if found:
                raise DataError(f"{self.catalogue.source or self.root}: {'; '.join(found)}; fix the paths, or "
                                "pass cache.on_corrupt=missing to cache those items without it")

    def check_content(self, modalities: list[str]) -> None:
        """:class:`DataError` when no item of rows 1..N has content for one of ``modalities``: training on
        it, or caching it, would run without a word on zeros only (a misnamed ``items.tsv`` header column did
        that). Says where that content is looked for: media only through an ``items.tsv`` (the IISAN layout, or
        one beside a CSV file), never beside a RecBole ``.item`` file or a CSV file without one."""
        for m in modalities:
            if not any(r.has(m) for r in self.catalogue):
                source = self.catalogue.source or self.root
                if m == "text":
                    where = ("a title: an items.tsv header needs a column named title (or text); a RecBole .item "
                             "file, token columns or data.text_fields")
                elif Path(str(source)).name == "items.tsv":
                    dirs, exts = MEDIA_FOLDERS[m]
                    where = (f"a file: an items.tsv header column named {m}, or files named by item id in "
                             f"{' or '.join(d + '/' for d in dirs)} with an extension among {' '.join(exts)}")
                else:  # a .item file or a CSV file's own ids: the readers look for no media files at all
                    where = ("media files only through an items.tsv, in its columns or in folders named by item "
                             "id: the IISAN layout, or an items.tsv beside a CSV file; the RecBole layout and a CSV "
                             "file alone read no media")
                raise DataError(f"modality {m}: none of the {self.num_items:,} items of {source} has {m} content "
                                f"(looked for {where}); leave {m} out of the modalities")


def sequence_stats(lengths: np.ndarray, num_items: int) -> dict[str, float]:
    n_users, n_inter = len(lengths), int(lengths.sum())
    return {
        "users": n_users,
        "items": num_items,
        "interactions": n_inter,
        "sparsity": 1.0 - n_inter / max(1, n_users * num_items),
        "seq_len_min": int(lengths.min()) if n_users else 0,
        "seq_len_median": float(np.median(lengths)) if n_users else 0.0,
        "seq_len_mean": float(lengths.mean()) if n_users else 0.0,
        "seq_len_p90": float(np.percentile(lengths, 90)) if n_users else 0.0,
        "seq_len_max": int(lengths.max()) if n_users else 0,
    }


def _file_kind(path: Path | None) -> str:
    """``"file"`` for a regular file; ``"missing"`` for no path, a path that does not exist or one the system
    cannot look up (a name too long, a folder without permission: reported with the missing files, naming the
    item and path); else what the path is (``"a folder"``, ``"a named pipe (FIFO)"`` …)."""
    if path is None:
        return "missing"
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return "file" if stat.S_ISREG(st.st_mode) else special_file_kind(st.st_mode)


def kept_matrix(offsets: np.ndarray, items: np.ndarray, keep: np.ndarray, width: int) -> np.ndarray:
    """[U_kept, width] the last ``width`` items of each kept user, right-aligned, left-padded with -1."""
    ends = offsets[1:][keep]
    lengths = np.minimum(ends - offsets[:-1][keep], width)
    out = np.full((len(ends), width), -1, dtype=np.int64)
    longest = int(lengths.max(initial=0))
    for c in range(width - longest, width):  # column c holds item ends - (width - c) where the user has that
        # many (the columns left of the longest kept sequence are padding for every user)
        has = lengths >= width - c
        out[has, c] = items[ends[has] - (width - c)]
    return out


def apply_protocol(raw: RawData, cfg: DataConfig, name: str = "", root: Path | None = None) -> SequentialData:
    """Filter, truncate, re-index and split ``raw`` (METHOD.md §2), vectorised over users.

    All splits are slices of one matrix ``P`` [U, L + 3] of each kept user's last L + 3 item rows,
    right-aligned and left-padded with 0: test target ``P[:, -1]``, validation target ``P[:, -2]``, the
    training part ``P[:, :L + 1]`` (seq[:-2], at most L + 1 items), and windows are column slices of it.
    """
    L = cfg.max_seq_len
    if cfg.min_interactions < 3:
        raise DataError(f"data.min_interactions: leave-one-out needs at least 3 interactions per user, "
                        f"got {cfg.min_interactions}")
    inter = raw.interactions
    n_cat = len(raw.catalogue)
    raw_lengths = inter.lengths
    raw_items = int(np.count_nonzero(np.bincount(inter.items, minlength=n_cat))) if len(inter.items) else 0
    keep = raw_lengths >= cfg.min_interactions
    if not keep.any():
        raise DataError(f"{raw.sources[0] if raw.sources else cfg.path}: no user has at least "
                        f"{cfg.min_interactions} interactions (data.min_interactions)")
    W = L + 3
    P = kept_matrix(inter.offsets, inter.items, keep, W)  # catalogue positions, -1 = padding
    surviving = np.zeros(n_cat, dtype=bool)
    surviving[P[P >= 0]] = True
    row_of = np.cumsum(surviving)  # catalogue position -> row 1..N (valid where surviving)
    catalogue_ids = raw.catalogue.ids()
    ordered = [catalogue_ids[k] for k in np.flatnonzero(surviving).tolist()]
    pad = P < 0
    P = row_of[np.maximum(P, 0)].astype(np.int64)
    P[pad] = 0
    del pad
    users = [u for u, k in zip(inter.users, keep.tolist()) if k]

    part = P[:, : L + 1]  # the training part seq[:-2], right-aligned
    train_inputs = np.ascontiguousarray(part[:, :L])
    train_targets = np.where(train_inputs > 0, part[:, 1:], 0)
    H = L + 2
    valid_history = np.zeros((len(users), H), dtype=np.int64)
    valid_history[:, 1:] = part
    valid = SplitArrays(np.ascontiguousarray(part[:, 1:]), np.ascontiguousarray(P[:, -2]), valid_history)
    test = SplitArrays(np.ascontiguousarray(P[:, 2 : L + 2]), np.ascontiguousarray(P[:, -1]),
                       np.ascontiguousarray(P[:, : L + 2]))
    tied_targets: dict[str, int] = {}
    if inter.tied is not None:
        end = inter.offsets[1:][keep]  # one past each kept user's last interaction (at least 3 of them)
        last = inter.tied[end - 1]  # the test target's time equals the validation target's
        tied_targets = {"valid": int((inter.tied[end - 2] | last).sum()), "test": int(last.sum())}
    counts = np.bincount(part.ravel(), minlength=len(ordered) + 1)
    counts[0] = 0
    del P, part
    root = root if root is not None else raw.catalogue.root
    return SequentialData(
        name=name or root.name,
        root=root,
        item_ids=[""] + ordered,
        catalogue=raw.catalogue.subset(ordered),
        users=users,
        train_inputs=train_inputs,
        train_targets=train_targets,
        valid=valid,
        test=test,
        item_counts=counts,
        dropped=dict(raw.dropped),
        raw_stats=sequence_stats(raw_lengths, raw_items),
        tied_targets=tied_targets,
    )


def repeat_targets(targets: np.ndarray, history: np.ndarray) -> int:
    """How many targets repeat an item of their user's history (masked, so never a hit, by default)."""
    targets = np.asarray(targets)
    if len(targets) == 0:
        return 0
    return int((np.asarray(history) == targets[:, None]).any(axis=1).sum())


def prepare(cfg: DataConfig) -> SequentialData:
    """Read ``cfg.path`` and apply the protocol."""
    raw = read(cfg)
    path = Path(cfg.path).expanduser().resolve()
    root = path if path.is_dir() else path.parent
    return apply_protocol(raw, cfg, name=root.name if path.is_dir() else path.stem, root=root)


def stats(data: SequentialData) -> dict[str, float]:
    """Statistics after the protocol (kept, truncated sequences)."""
    lengths = (data.test.history > 0).sum(axis=1) + 1
    return sequence_stats(lengths, data.num_items)

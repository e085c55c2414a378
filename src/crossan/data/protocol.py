"""The IISAN / MicroLens data protocol (METHOD.md §2): filter, truncate, re-index, leave-one-out split.

* drop users with fewer than ``min_interactions`` items;
* keep each user's last ``max_seq_len + 3`` items;
* re-index the surviving items 1..N in catalogue order (0 = padding);
* train = seq[:-2], validation target = seq[-2], test target = seq[-1]; each input window holds the
  ``max_seq_len`` items before its target (left-padded with 0);
* training predicts the next item at every position of the training window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossan.config import DataConfig
from crossan.data.catalogue import Catalogue, fingerprint_items
from crossan.data.readers import DataError, RawData, read


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

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def max_seq_len(self) -> int:
        return self.train_inputs.shape[1]

    def fingerprint(self) -> str:
        return fingerprint_items(self.catalogue)


def _left_pad(seqs: list[list[int]], width: int) -> np.ndarray:
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-width:]
        if s:
            out[i, width - len(s):] = s
    return out


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


def apply_protocol(raw: RawData, cfg: DataConfig, name: str = "", root: Path | None = None) -> SequentialData:
    """Filter, truncate, re-index and split ``raw`` (METHOD.md §2)."""
    L = cfg.max_seq_len
    raw_lengths = np.array([len(s) for s in raw.sequences.values()])
    raw_items = len({i for s in raw.sequences.values() for i in s})
    kept = {u: s[-(L + 3):] for u, s in raw.sequences.items() if len(s) >= cfg.min_interactions}
    if not kept:
        raise DataError(f"{raw.sources[0] if raw.sources else cfg.path}: no user has at least "
                        f"{cfg.min_interactions} interactions (data.min_interactions)")
    surviving = {i for s in kept.values() for i in s}
    ordered = [r.item_id for r in raw.catalogue if r.item_id in surviving]
    row = {item: k + 1 for k, item in enumerate(ordered)}
    users = list(kept)
    seqs = [[row[i] for i in kept[u]] for u in users]

    train_parts = [s[:-2] for s in seqs]
    windows = [t[-(L + 1):] for t in train_parts]
    train_inputs = _left_pad([w[:-1] for w in windows], L)
    train_targets = _left_pad([w[1:] for w in windows], L)
    H = L + 2
    valid = SplitArrays(_left_pad(train_parts, L), np.array([s[-2] for s in seqs], dtype=np.int64),
                        _left_pad(train_parts, H))
    test = SplitArrays(_left_pad([s[:-1] for s in seqs], L), np.array([s[-1] for s in seqs], dtype=np.int64),
                       _left_pad([s[:-1] for s in seqs], H))
    counts = np.bincount(np.concatenate([np.asarray(t, dtype=np.int64) for t in train_parts]),
                         minlength=len(ordered) + 1)
    counts[0] = 0
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
    )


def prepare(cfg: DataConfig) -> SequentialData:
    """Read ``cfg.path`` and apply the protocol."""
    raw = read(cfg)
    path = Path(cfg.path).expanduser().resolve()
    root = path if path.is_dir() else path.parent
    return apply_protocol(raw, cfg, name=root.name if path.is_dir() else path.stem, root=root)


def stats(data: SequentialData) -> dict[str, float]:
    """Statistics after the protocol (kept, truncated sequences)."""
    lengths = np.array([int((h > 0).sum()) + 1 for h in data.test.history])
    return sequence_stats(lengths, data.num_items)

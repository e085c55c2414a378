"""Scoring a trained recommender on a split: the item table check, strict full-ranking ranks and their mean
metrics (the metric functions themselves are :mod:`crossan.evaluation`), and what results.json says about
the splits."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from crossan.config import Config
from crossan.data import SequentialData
from crossan.errors import NonFiniteError
from crossan.evaluation import mean_metrics, rank_split, repeat_targets
from crossan.recommender import Recommender


def check_finite_table(table: torch.Tensor, item_ids: list[str], where: str) -> None:
    """Refuse an item table with NaN/inf rows, naming the first rows (and their item ids)."""
    bad = (~torch.isfinite(table).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        named = ", ".join(f"{r} ({item_ids[r]!r})" if r < len(item_ids) else str(r) for r in bad[:5])
        raise NonFiniteError(f"{where}: the item table has {len(bad)} non-finite row(s), e.g. rows {named}; "
                             "check the cache (crossan cache --verify) and lower the learning rates")


@torch.no_grad()
def evaluate_ranks(model: Recommender, data: SequentialData, split: str, cfg: Config,
                   item_table: torch.Tensor | None = None, where: str = "evaluation", collective: bool = False,
                   progress: bool = False) -> torch.Tensor:
    """Strict full-ranking ranks [U] of every user's ``split`` (``valid`` or ``test``) target (METHOD.md §2).

    ``collective``: called on every rank of a torchrun job, which share the item table and the users and
    gather them (training's validation and test); by default this process computes everything and calls no
    collective, so one rank of a torchrun script may call it alone (``ItemTower.embed_all``, :func:`rank_split`).
    ``progress``: a progress bar of the users' batches once the ranking takes over 2 s (:func:`rank_split`).
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split: {split!r} is not 'valid' or 'test'")
    model.eval()
    if item_table is None:
        model.tower.reset_stats()
        item_table = model.tower.embed_all(cfg.eval.batch_size, collective=collective)
    check_finite_table(item_table, data.item_ids, where)
    arrays = getattr(data, split)
    return rank_split(lambda x: model.user_vectors(x, item_table), item_table, arrays.inputs, arrays.targets,
                      arrays.history, cfg.eval.batch_size, cfg.eval.mask_history, collective, progress,
                      f"{where}: ranking {split}")


def evaluate(model: Recommender, data: SequentialData, split: str, cfg: Config,
             item_table: torch.Tensor | None = None, where: str = "evaluation", collective: bool = False,
             progress: bool = False) -> dict[str, float]:
    """Mean full-ranking metrics of ``split`` (``collective``, ``progress``: see :func:`evaluate_ranks`)."""
    return mean_metrics(evaluate_ranks(model, data, split, cfg, item_table, where, collective, progress),
                        cfg.eval.ks)


def split_report(data: SequentialData) -> dict[str, Any]:
    """Per split: users, and how many targets repeat an item of the user's history (masked by default)."""
    out: dict[str, Any] = {}
    for name, arr in (("valid", data.valid), ("test", data.test)):
        n, rep = len(arr.targets), repeat_targets(arr.targets, arr.history)
        out[name] = {"users": n, "targets_repeating_history": rep, "share": rep / n if n else 0.0}
    return out


def item_fingerprint(data: SequentialData) -> str:
    """A hash of the item ids in row order (rows 1..N): a run's weights index items by row, so a run read
    against a dataset with another fingerprint would score other items than it learned."""
    return hashlib.sha256("\n".join(data.item_ids[1:]).encode()).hexdigest()[:16]


def split_fingerprint(data: SequentialData) -> str:
    """A hash of the users, in their order, and their validation/test targets and histories: two runs with
    equal fingerprints can be compared user by user (paired tests). The users' order is the file's (first
    appearance), so the same histories written in another order (sorted by time, not by user) give another
    fingerprint: another split to a suite's pairing, and another order of training batches."""
    h = hashlib.sha256()
    h.update("\n".join(data.users).encode())
    for arr in (data.valid, data.test):
        h.update(np.ascontiguousarray(arr.targets, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(arr.history, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]

"""Serving a trained run: top-K recommendations for histories.

Python API::

    from crossan.serve import load_recommender

    rec = load_recommender("runs/x")                 # config + best weights; the item table is computed once
    rec.recommend(["i12", "i7", "i30"], k=10)        # [Recommendation(item_id, title, score), ...]
    rec.recommend_many([["i1", "i2"], ["i9"]], k=5)  # one matmul per batch of histories

Scores are the evaluator's (:mod:`crossan.evaluation`): the user vector is the SASRec output at the last
position of the history's last ``data.max_seq_len`` items (left-padded with the padding row 0), every item
is scored by the dot product with its row of the item table, and the padding row is never a candidate.

History exclusion follows the run's ``eval.mask_history`` unless ``exclude_history`` says otherwise, but
it is not the same set of items: serving excludes *every* item of the history it is given, while the
evaluator masks only the part of each user's history that the data protocol keeps (the items before the
target among the user's last ``data.max_seq_len + 3`` interactions; older ones are dropped). Rankings
are the same for histories no longer than that window; for longer ones serving also excludes the older
items, which evaluation may rank.

Cold-start items added by ``crossan embed-items`` (:mod:`crossan.coldstart`) are appended to the item table
(rows N+1 … N+E). The run folder is checked first (:func:`crossan.runs.check_run_folder`: complete, written
by a compatible crossan; the dataset read is the one it was trained on). An unfinished run (no
results.json) is served with its best weights so far and an :class:`~crossan.runs.UnfinishedRunWarning`;
its trainer replaces ``best.safetensors`` at each new best epoch, so the file is read once and the model
built from those bytes, beside extra items embedded with that very checkpoint (``weights_sha256``).
Serving writes nothing; the command line is :mod:`crossan.cli_serving`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from crossan.coldstart import (  # noqa: F401  (re-exported: the serving API in one import)
    EXTRA_DIR,
    EXTRA_EMBEDDINGS,
    EXTRA_ITEMS,
    ExtraItems,
    check_extra_weights,
    embed_items,
    read_extra_items,
    read_new_catalogue,
)
from crossan.config import Config
from crossan.errors import ServeError, UnknownItemError
from crossan.precision import full_precision
from crossan.ranking import check_finite_table
from crossan.runs import (  # noqa: F401
    REQUIRED_FILES,
    WEIGHTS,
    NonFiniteScoreWarning,
    UnfinishedRunWarning,
    check_run_folder,
    load_run,
    read_weights,
    version_compatible,
    warn_if_unfinished,
)
from crossan.utils import resolve_device


class Recommendation(NamedTuple):
    item_id: str
    title: str
    score: float


# --------------------------------------------------------------------------------------------- recommender
class TrainedRecommender:
    """A trained run ready to serve: item table computed once, batched top-K with history exclusion.

    ``exclude_history`` of the scoring methods: ``None`` (the default) follows :attr:`mask_history`, the
    run's ``eval.mask_history``; ``True`` excludes every item of the given history, ``False`` none.

    Attributes:
        item_ids: row → item id; row 0 is padding (``""``), rows 1..N the training items, then the extra
            (cold-start) items.
        titles: row → title (the item's text).
        item_table: FloatTensor [N+1+E, d] on :attr:`device`; row 0 is zero.
        num_train_items: N.
        max_seq_len: how many of a history's last items the user encoder reads.
        mask_history: the run's ``eval.mask_history``: whether history items are excluded by default.
        weights_sha256: SHA-256 of the ``best.safetensors`` bytes the model was loaded from (and the extra
            items were embedded with): which checkpoint is served, for a run that still trains.
    """

    def __init__(self, run_dir: Path, cfg: Config, data: Any, model: Any, extra: ExtraItems,
                 device: torch.device, weights_sha256: str = "") -> None:
        self.run_dir, self.cfg, self.data, self.model, self.device = run_dir, cfg, data, model, device
        self.weights_sha256 = weights_sha256
        self.max_seq_len = cfg.data.max_seq_len
        self.mask_history: bool = bool(cfg.eval.mask_history)
        self.num_train_items = data.num_items
        model.eval()
        model.tower.reset_stats()
        with torch.no_grad():
            table = model.tower.embed_all(cfg.eval.batch_size)
        titles = [""] + [data.catalogue[i].text for i in data.item_ids[1:]]
        ids = list(data.item_ids)
        if len(extra):
            table = torch.cat([table, extra.embeddings.to(table.device, table.dtype)])
            ids += extra.ids
            titles += [r.get("title", "") for r in extra.records]
        check_finite_table(table, ids, str(run_dir))  # a NaN row would otherwise be served as a top item
        self.item_table: torch.Tensor = table
        self.item_ids: list[str] = ids
        self.titles: list[str] = titles
        self.extra_ids: list[str] = list(extra.ids)
        self._row = {item: r for r, item in enumerate(ids) if r > 0}

    # ------------------------------------------------------------------ helpers
    @property
    def num_candidates(self) -> int:
        return len(self.item_ids) - 1

    def known(self, history: Sequence[str]) -> tuple[list[str], list[str]]:
        """``history`` split into the ids this run can score, in order, and the unknown ones (distinct, in order
        of first appearance): items the data protocol dropped (seen only before every kept window) or that
        never were in the catalogue."""
        ids = [str(i) for i in history]
        return [i for i in ids if i in self._row], list(dict.fromkeys(i for i in ids if i not in self._row))

    def rows(self, history: Sequence[str], where: str = "history") -> list[int]:
        """Item rows of ``history``; :class:`UnknownItemError` names every unknown id."""
        if isinstance(history, str):
            raise ServeError(f"{where}: expected a list of item ids, got the string {history!r}")
        if not isinstance(history, Sequence | np.ndarray):
            # a set has no order (and a user vector depends on it); a generator or other iterable, no length
            raise ServeError(f"{where}: expected a list of item ids, oldest first (an ordered sequence), got "
                             f"{type(history).__name__}")
        if len(history) == 0:
            raise ServeError(f"{where}: the history is empty; give at least one item id")
        unknown = list(dict.fromkeys(str(i) for i in history if str(i) not in self._row))
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10
                                                                else "")
            raise UnknownItemError(f"{where}: unknown item id{'s' if len(unknown) > 1 else ''} {shown} (not among the "
                                   f"run's {self.num_train_items} training items or {len(self.extra_ids)} extra "
                                   "items)", unknown)
        return [self._row[str(i)] for i in history]

    def _windows(self, rows: list[list[int]]) -> torch.Tensor:
        """Input windows [B, L]: each history's last L rows, left-padded with the padding row 0."""
        L = self.max_seq_len
        inputs = torch.zeros(len(rows), L, dtype=torch.long)
        for b, r in enumerate(rows):
            last = r[-L:]
            inputs[b, L - len(last):] = torch.as_tensor(last)
        return inputs.to(self.device)

    def _history_cells(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch index, item row) of every history entry, flat: as much memory as the histories hold (a
        [B, longest history] table grew with one long history to B times its length)."""
        b = torch.repeat_interleave(torch.arange(len(rows)), torch.as_tensor([len(r) for r in rows]))
        items = torch.as_tensor([i for r in rows for i in r], dtype=torch.long)
        return b.to(self.device), items.to(self.device)

    def _exclude(self, exclude_history: bool | None) -> bool:
        """``exclude_history`` as given, or the run's ``eval.mask_history`` for ``None``; anything but a bool is
        refused (the string ``"false"`` is truthy: it excluded)."""
        if exclude_history is None:
            return self.mask_history
        if not isinstance(exclude_history, (bool, np.bool_)):
            raise ServeError(f"exclude_history must be True, False or None, got {exclude_history!r}")
        return bool(exclude_history)

    @torch.no_grad()
    def _scores_rows(self, rows: list[list[int]], exclude_history: bool | None,
                     names: list[str] | None = None, keep_non_finite: bool = False) -> torch.Tensor:
        """Scores [B, rows] of histories given as item rows: excluded rows (padding, history) ``-inf``;
        non-finite scores of the other rows (NaN, ±inf) ``-inf`` too, or with ``keep_non_finite`` the lowest
        finite value of the dtype (below every other candidate, still one), with a warning."""
        exclude_history = self._exclude(exclude_history)
        users = self.model.user_vectors(self._windows(rows), self.item_table)
        with full_precision(users.device):  # float32 even inside a caller's autocast (as evaluation scores)
            scores = users @ self.item_table.T  # [B, rows]
        bad = None
        if not bool(torch.isfinite(scores[:, 1:]).all()):  # one pass; the padding row is never a candidate
            bad = ~torch.isfinite(scores)
            bad[:, 0] = False
        scores[:, 0] = -torch.inf
        if exclude_history:
            cells = self._history_cells(rows)
            scores[cells] = -torch.inf
            if bad is not None:
                bad[cells] = False  # an excluded item is no candidate, whatever it scores
        if bad is not None and bool(bad.any()):  # torch.topk would put NaN and +inf first
            last = torch.finfo(scores.dtype).min if keep_non_finite else -math.inf
            self._non_finite(scores, bad, names or [f"history {b}" for b in range(len(rows))], last)
        return scores

    def _non_finite(self, scores: torch.Tensor, bad: torch.Tensor, names: list[str], last: float) -> None:
        """Rank NaN and ±inf scores last, in place (``last``), as the evaluator does (a warning says how many);
        a history whose every candidate scores so is an error: its user vector is not finite."""
        per_row = bad.sum(1).tolist()
        finite = (scores > -torch.inf) & ~bad
        for b, n in enumerate(per_row):
            if n and not bool(finite[b].any()):
                raise ServeError(f"{names[b]}: the model scores all {n:,} candidates NaN or infinite (its user "
                                 f"vector is not finite): the weights in {self.run_dir} are damaged, or "
                                 "overflow on this history")
        warnings.warn(f"{sum(per_row):,} score(s) of {sum(1 for n in per_row if n)} history(ies) were NaN or "
                      f"infinite (item embeddings too large, or damaged weights in {self.run_dir}); those items "
                      "are ranked last, as the evaluator ranks them", NonFiniteScoreWarning, stacklevel=3)
        scores.masked_fill_(bad, last)

    # ------------------------------------------------------------------ public
    def user_vectors(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """User vectors [B, d] of ``histories`` (lists of item ids); [0, d] for none."""
        rows = [self.rows(h, f"history {b}") for b, h in enumerate(histories)]
        with torch.no_grad():
            if not rows:
                return self.item_table.new_zeros(0, self.item_table.shape[1])
            return self.model.user_vectors(self._windows(rows), self.item_table)

    def scores(self, histories: Sequence[Sequence[str]], exclude_history: bool | None = None) -> torch.Tensor:
        """Scores [B, N+1+E] of every row for each history ([0, N+1+E] for none); excluded rows (padding,
        history) are ``-inf``, and so are NaN and ±inf scores (ranked last, as the evaluator ranks them; a
        warning says so)."""
        rows = [self.rows(h, f"history {b}") for b, h in enumerate(histories)]
        if not rows:
            return self.item_table.new_zeros(0, self.item_table.shape[0])
        return self._scores_rows(rows, exclude_history)

    def recommend(self, history: Sequence[str], k: int = 10,
                  exclude_history: bool | None = None) -> list[Recommendation]:
        """The top ``k`` items for one history (item ids, oldest first), best first."""
        return self.recommend_many([history], k, exclude_history, _names=["history"])[0]  # not "history 0"

    def recommend_many(self, histories: Sequence[Sequence[str]] | Mapping[str, Sequence[str]], k: int = 10,
                       exclude_history: bool | None = None, batch_size: int | None = None,
                       _names: list[str] | None = None
                       ) -> list[list[Recommendation]] | dict[str, list[Recommendation]]:
        """Top ``k`` for many histories: a list (or a mapping user → history, answered as a dict).

        Histories are scored in batches of ``batch_size`` (default ``eval.batch_size``): one matmul per batch
        against the whole table, history exclusion by scatter, :func:`top_k` (equal scores in row order, so a
        ranking is repeatable); no loop over candidates.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ServeError(f"k must be an integer of at least 1, got {k!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                       or batch_size < 1):  # -1 gave no batch at all: an empty answer
            raise ServeError(f"batch_size must be an integer of at least 1 (or None), got {batch_size!r}")
        keys = list(histories) if isinstance(histories, Mapping) else None
        seqs = [histories[u] for u in keys] if keys is not None else list(histories)
        names = _names or ([f"user {u!r}" for u in keys] if keys is not None
                           else [f"history {b}" for b in range(len(seqs))])
        rows = [self.rows(h, names[b]) for b, h in enumerate(seqs)]  # all validated before any scoring
        bs = batch_size or self.cfg.eval.batch_size
        out: list[list[Recommendation]] = []
        kk = min(k, self.num_candidates)
        for start in range(0, len(rows), bs):
            scores = self._scores_rows(rows[start:start + bs], exclude_history, names[start:start + bs],
                                       keep_non_finite=True)  # ranked last, not dropped with the excluded
            last = torch.finfo(scores.dtype).min
            top_s, top_i = top_k(scores, kk)
            for s_row, i_row in zip(top_s.cpu().tolist(), top_i.cpu().tolist()):
                out.append([Recommendation(self.item_ids[i], self.titles[i], math.nan if s == last else float(s))
                            for s, i in zip(s_row, i_row) if s != float("-inf")])
        return dict(zip(keys, out)) if keys is not None else out


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best columns of each row of ``scores`` [B, N], best first, equal scores in column (item row)
    order: what a stable sort of the whole row gives, at ``torch.topk``'s cost. ``topk`` alone orders equal
    scores arbitrarily, differently from one row to the next, and exact ties are common here (a cold-start item
    with a training item's content gets that item's embedding). Only a row with more items at its k-th score
    than the top ``k`` hold is sorted whole."""
    vals, idx = torch.topk(scores, k, dim=1)
    by_item = torch.argsort(idx, dim=1)  # within the top k: by item row, then stably by score
    vals, idx = vals.gather(1, by_item), idx.gather(1, by_item)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    kth = vals[:, -1:]
    cut = ((scores == kth).sum(1) > (vals == kth).sum(1)).nonzero().flatten()  # ties across the cut
    if len(cut):
        full_v, full_i = torch.sort(scores[cut], dim=1, descending=True, stable=True)
        vals[cut], idx[cut] = full_v[:, :k], full_i[:, :k]
    return vals, idx


def load_recommender(run_dir: str | Path, device: str = "auto", data_path: str | None = None,
                     include_extra: bool = True) -> TrainedRecommender:
    """Load a run folder for serving (config, training data, best weights, extra items).

    ``data_path`` points at the training dataset when it moved since training (the item ids and titles, and
    for content methods the layer-state cache, come from it); a dataset with other items than the run was
    trained on is refused. ``device="auto"``: CUDA when available. An unfinished run (no results.json) is
    loaded with an :class:`~crossan.runs.UnfinishedRunWarning`.

    ``best.safetensors`` is read once, and the model is built from those bytes: a run that still trains
    replaces the file at each new best epoch, and the extra items are served only beside the checkpoint they
    were embedded with (their ``weights_sha256`` is that of the bytes read; else :class:`ServeError` naming
    both files: embed them again).
    """
    run_dir = Path(run_dir)
    cfg = check_run_folder(run_dir)
    warn_if_unfinished(run_dir)
    dev = str(resolve_device(device))
    # best.safetensors read once: the extra items are checked against these bytes and these are loaded (a run
    # that still trains replaces the file at a new best epoch; a second read could serve another checkpoint)
    weights = read_weights(run_dir / WEIGHTS)
    extra = read_extra_items(run_dir) if include_extra else ExtraItems()
    sha = weights.sha256
    check_extra_weights(run_dir, extra, sha)
    cfg, data, model = load_run(run_dir, dev, data_path, cfg=cfg, weights=weights)
    del weights  # the model holds them now: the file's bytes are not kept through embedding the catalogue
    if len(extra):
        train_ids = set(data.item_ids)
        clash = [i for i in extra.ids if i in train_ids]
        if clash:
            raise ServeError(f"{run_dir / EXTRA_DIR}: extra items {clash[:10]} are also training items of "
                             f"{cfg.data.path}")
        if extra.embeddings.shape[1] != model.tower.dim:
            raise ServeError(f"{run_dir / EXTRA_DIR}: embeddings of width {extra.embeddings.shape[1]}, the item "
                             f"tower's is {model.tower.dim}")
    return TrainedRecommender(run_dir, cfg, data, model, extra, torch.device(dev), sha)

"""Full-ranking evaluation (METHOD.md §2): every item is a candidate except padding and — by default — every
item of the user's history, **whatever the target is** (IISAN's rule, ``score[history] = -inf``): a target that
repeats a history item is masked too and can never be a hit. No rule depends on the target's identity.

rank = 1 + #{j ≠ target, j a candidate : score_j ≥ score_target}       (ties never help the target)
rank = inf when the target is not a candidate (it repeats a masked history item)
a non-finite score (NaN, ±inf) ranks last: it is treated as -inf, and a -inf target ties with every candidate
HR@K = [rank ≤ K]; NDCG@K = [rank ≤ K] / log2(rank + 1); MRR = 1 / rank (no cut-off; 0 for rank inf).

Everything is batched: one matmul per batch of users, masking by scatter, and on a CPU the count in blocks of
about a million scores (:func:`_count_at_least`); no Python loop over single users or items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from crossan.config import metric_names  # noqa: F401  (defined torch-free beside train.metric)
from crossan.data.protocol import repeat_targets  # noqa: F401  (re-exported; torch-free home)


def strict_ranks(scores: torch.Tensor, targets: torch.Tensor, history: torch.Tensor | None = None,
                 mask_history: bool = True, overwrite: bool = False) -> torch.Tensor:
    """Ranks (1-based, float64) of ``targets`` [B] among ``scores`` [B, N+1] (column 0 = padding, never a
    candidate).

    ``history`` [B, H] holds the user's history item rows (0 = none). With ``mask_history`` (the default)
    they are not candidates, the target included when it repeats one (its rank is then ``inf``: never a hit);
    without it the history stays in the ranking. Non-finite scores rank last. Scores are compared in float32, or
    in float64 when given so (a float32 copy would tie 1 + 1e-12 with 1 and overflow 1e39). ``overwrite``:
    ``scores`` may be used as working memory (the caller's fresh fp32 score matrix; saves a copy of it).

    How, in two passes over the [B, N+1] scores: non-finite scores and every non-candidate (padding, masked
    history) become −inf; a candidate target with a finite score then has rank = #{j : score_j ≥ its score}
    (itself included, ties counted against it, −inf never counted), and a target whose own score is −inf ties
    with every candidate: rank = its row's number of candidates.
    """
    B, C = scores.shape
    inf = torch.inf
    if scores.dtype != torch.float64:  # half precisions to float32; float64 kept (no ties or overflows made)
        scores = scores.float()
    if overwrite:
        s = scores.nan_to_num_(nan=-inf, posinf=-inf, neginf=-inf)
    else:
        s = torch.nan_to_num(scores, nan=-inf, posinf=-inf, neginf=-inf)
    rows = torch.arange(B, device=s.device)
    targets = targets.to(s.device)
    target_score = s[rows, targets]
    candidate_target = targets != 0
    candidates = torch.full((B,), C - 1, dtype=torch.int64, device=s.device)
    if history is not None and mask_history:
        history = history.to(s.device)
        candidate_target &= ~(history == targets[:, None]).any(dim=1)
        candidates -= _distinct_items(history)
        s.scatter_(1, history, -inf)
    s[:, 0] = -inf
    at_least = _count_at_least(s, target_score)
    ranks = torch.where(torch.isfinite(target_score), at_least, candidates).double()
    return torch.where(candidate_target, ranks, torch.full_like(ranks, inf))


def _distinct_items(history: torch.Tensor) -> torch.Tensor:
    """Number of distinct non-zero entries of each row of ``history`` [B, H] (int64 [B])."""
    h = history.sort(dim=1).values  # zeros (padding) first
    first = h[:, :1] != 0
    new = (h[:, 1:] != h[:, :-1]) & (h[:, 1:] != 0)
    return first.sum(dim=1) + new.sum(dim=1)


COUNT_BLOCK = 1 << 20
"""Score entries compared per block on a CPU (:func:`_count_at_least`)."""


def _count_at_least(s: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``(s >= threshold[:, None]).sum(1)`` as int64 [B]. On a CPU a few rows at a time (about
    :data:`COUNT_BLOCK` entries), counted in int32: the comparison's result stays in cache and is never
    widened to int64 entry by entry, several times faster on a [512, 91k] score matrix than the one-line form."""
    if s.device.type != "cpu":
        return (s >= threshold[:, None]).sum(dim=1)
    step = max(1, COUNT_BLOCK // max(1, s.shape[1]))
    counts = [(s[i:i + step] >= threshold[i:i + step, None]).sum(dim=1, dtype=torch.int32)
              for i in range(0, s.shape[0], step)]
    return torch.cat(counts).long() if counts else torch.zeros(0, dtype=torch.int64)


def metrics_from_ranks(ranks: torch.Tensor, ks: Iterable[int]) -> dict[str, torch.Tensor]:
    """Per-user metric values [B] for each metric name."""
    ranks = ranks.double()
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = ranks <= k
        out[f"HR@{k}"] = hit.double()
        out[f"NDCG@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
    out["MRR"] = 1.0 / ranks  # rank inf (a masked target) gives exactly 0
    return out


def mean_metrics(ranks: torch.Tensor, ks: Iterable[int]) -> dict[str, float]:
    """Mean of each metric over users, computed from the full vector of ranks (order-independent)."""
    if len(ranks) == 0:
        return {name: 0.0 for name in metric_names(ks)}
    return {name: float(v.mean()) for name, v in metrics_from_ranks(ranks, ks).items()}


@torch.no_grad()
def rank_split(user_fn: Callable[[torch.Tensor], torch.Tensor], item_table: torch.Tensor, inputs: np.ndarray,
               targets: np.ndarray, history: np.ndarray, batch_size: int = 512, mask_history: bool = True,
               collective: bool = False, progress: bool = False, desc: str = "ranking") -> torch.Tensor:
    """Strict ranks [U] of every user's target against the full ``item_table`` [N+1, d].

    ``user_fn`` maps input windows [B, L] to user vectors [B, d]. Users are scored in batches of
    ``batch_size``. ``collective`` (training's evaluation, called on every rank under torchrun): batch b is
    scored by rank b mod world size and the ranks are gathered, so every rank returns exactly the vector a
    single process computes (no padding duplicates). Without it (the default) this process scores every user
    and calls no collective, whether or not a process group is joined (:func:`crossan.distributed.split`).
    ``progress``: a progress bar of the batches (``desc``), shown once the ranking has taken 2 s (a million users
    take minutes).
    """
    from tqdm.auto import tqdm

    from crossan import distributed as dist
    from crossan.precision import full_precision

    device = item_table.device
    starts = list(range(0, len(targets), batch_size))
    rank, world = dist.split(collective)
    mine = starts[rank::world]
    out = []
    # scores in float32 into one buffer reused by every batch (a fresh [B, N+1] matrix per batch costs page
    # faults), against the table transposed once (a contiguous right operand: the faster matmul on a CPU)
    table_t = item_table.float().T.contiguous()
    buffer = None
    for start in tqdm(mine, desc=desc, unit="batch", leave=False, delay=2.0, disable=not progress):
        sl = slice(start, start + batch_size)
        x = torch.as_tensor(inputs[sl], device=device)
        t = torch.as_tensor(targets[sl], device=device)
        h = torch.as_tensor(history[sl], device=device)
        u = user_fn(x).float()
        if buffer is None:
            buffer = torch.empty(min(batch_size, len(targets)), table_t.shape[1], device=device)
        with full_precision(device):
            scores = torch.matmul(u, table_t, out=buffer[: len(u)])
        out.append(strict_ranks(scores, t, h, mask_history, overwrite=True))
    local = torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=device)
    if world == 1:
        return local.cpu()
    per_rank = [g.cpu() for g in dist.all_gather_rows(local)]
    # undo the round-robin: batch b is the (b // W)-th batch of rank b % W
    pieces, offsets = [], [0] * len(per_rank)
    for b, start in enumerate(starts):
        r = b % len(per_rank)
        size = min(batch_size, len(targets) - start)
        pieces.append(per_rank[r][offsets[r]: offsets[r] + size])
        offsets[r] += size
    return torch.cat(pieces)


def evaluate_split(user_fn: Callable[[torch.Tensor], torch.Tensor], item_table: torch.Tensor, inputs: np.ndarray,
                   targets: np.ndarray, history: np.ndarray, ks: Iterable[int], batch_size: int = 512,
                   mask_history: bool = True, collective: bool = False) -> dict[str, float]:
    """Mean full-ranking metrics of a split (see :func:`rank_split`)."""
    return mean_metrics(rank_split(user_fn, item_table, inputs, targets, history, batch_size, mask_history,
                                   collective), ks)

"""Full-ranking evaluation (METHOD.md §2): every item is a candidate, the user's history is masked, ranks are
strict — an item tied with the target counts as ranked above it, so ties never help the target.

rank = 1 + #{j ≠ target, j not masked : score_j ≥ score_target}
HR@K = [rank ≤ K]; NDCG@K = [rank ≤ K] / log2(rank + 1); MRR = 1 / rank (no cut-off).

Everything is batched: one matmul per batch of users, masking by scatter, no Python loop over users/items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch


def metric_names(ks: Iterable[int]) -> list[str]:
    ks = list(ks)
    return [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + ["MRR"]


def strict_ranks(scores: torch.Tensor, targets: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
    """Ranks (1-based) of ``targets`` [B] among ``scores`` [B, N+1] (column 0 = padding, never a candidate).

    ``history`` [B, H] holds item rows to exclude (0 = none); the target itself is never excluded.
    """
    rows = torch.arange(len(targets), device=scores.device)
    target_score = scores[rows, targets]  # taken before masking: the target is never excluded
    masked = scores.clone()
    masked[:, 0] = -torch.inf
    if history is not None:
        masked.scatter_(1, history, -torch.inf)
    not_beaten = masked >= target_score[:, None]
    not_beaten[rows, targets] = False
    return 1 + not_beaten.sum(dim=1)


def metrics_from_ranks(ranks: torch.Tensor, ks: Iterable[int]) -> dict[str, torch.Tensor]:
    """Per-user metric values [B] for each metric name."""
    ranks = ranks.double()
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = ranks <= k
        out[f"HR@{k}"] = hit.double()
        out[f"NDCG@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
    out["MRR"] = 1.0 / ranks
    return out


class MetricAccumulator:
    """Sums per-user metric values over batches (and, in distributed runs, over ranks)."""

    def __init__(self, ks: Iterable[int]) -> None:
        self.ks = list(ks)
        self.sums = {name: 0.0 for name in metric_names(self.ks)}
        self.count = 0

    def add_ranks(self, ranks: torch.Tensor) -> None:
        for name, v in metrics_from_ranks(ranks, self.ks).items():
            self.sums[name] += float(v.sum())
        self.count += len(ranks)

    def result(self) -> dict[str, float]:
        return {name: s / max(1, self.count) for name, s in self.sums.items()}


@torch.no_grad()
def evaluate_split(user_fn: Callable[[torch.Tensor], torch.Tensor], item_table: torch.Tensor, inputs: np.ndarray,
                   targets: np.ndarray, history: np.ndarray, ks: Iterable[int], batch_size: int = 512,
                   user_slice: slice | None = None, return_ranks: bool = False
                   ) -> dict[str, float] | tuple[dict[str, float], torch.Tensor]:
    """Score users against the full ``item_table`` [N+1, d] and return the mean metrics.

    ``user_fn`` maps input windows [B, L] to user vectors [B, d]. ``user_slice`` restricts to a contiguous
    block of users (distributed evaluation splits users by rank).
    """
    device = item_table.device
    if user_slice is not None:
        inputs, targets, history = inputs[user_slice], targets[user_slice], history[user_slice]
    acc = MetricAccumulator(ks)
    all_ranks = []
    for start in range(0, len(targets), batch_size):
        sl = slice(start, start + batch_size)
        x = torch.as_tensor(inputs[sl], device=device)
        t = torch.as_tensor(targets[sl], device=device)
        h = torch.as_tensor(history[sl], device=device)
        scores = user_fn(x) @ item_table.T
        ranks = strict_ranks(scores, t, h)
        acc.add_ranks(ranks)
        if return_ranks:
            all_ranks.append(ranks.cpu())
    if return_ranks:
        return acc.result(), torch.cat(all_ranks) if all_ranks else torch.zeros(0, dtype=torch.long)
    return acc.result()

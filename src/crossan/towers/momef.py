"""MOMEF — Mixture of Modality Expert Fusion (METHOD.md §7), CROSSAN's fusion of per-modality embeddings.

::

    logits = W_r · [e_1; …; e_M] + b_r          one logit per modality expert
    logits_m = −inf where the item lacks modality m
    p = softmax(logits / T)                     optionally only the top-k kept, renormalised
    E_m(e) = e + W2_m · GELU(W1_m · e)          a residual MLP per modality
    item = Σ_m p_m · E_m(e_m)

Rules chosen here:

* A missing modality gets exactly zero weight. An item lacking *every* modality is routed uniformly over
  all M experts, which then read their (zeroed) inputs — a learned "no content" embedding, never NaN.
* With M = 1 there is nothing to route (p ≡ 1): no router parameters are created.
* Top-k (``top_k > 0``): the k largest weights are kept and renormalised to sum to 1; gradients flow
  through the kept ones. Items with fewer than k present modalities keep only those; items with none stay
  uniform over all M. k ≥ M keeps every expert: routing and load balancing are then the dense ones. With
  k = 1 the kept weight is always 1, so the task loss gives the router no gradient: it then learns only
  through the load-balancing loss (configs refuse k = 1 without it).
* Load balancing (Switch-Transformer style, Fedus et al. 2021): ``M · Σ_m f_m · P_m`` over the batch's items
  with at least one modality, where ``P_m`` is the mean router weight of expert m *before* top-k
  (differentiable) and ``f_m`` the share of items dispatched to m (not differentiable): the item's largest
  weight without top-k; with top-k, each item counts 1/k' to each of its k' kept experts. It is 1 at perfect
  balance and grows as routing concentrates; scaled by ``load_balance_weight`` (0 by default: no loss at
  all) and exposed through :meth:`MOMEF.aux_loss` after each forward.
* Router statistics: :attr:`MOMEF.last_weights` holds the last forward's p [U, M] (detached). Over every
  forward since :meth:`MOMEF.reset_stats` (the trainer resets before ``embed_all``, so at evaluation that is
  exactly the N items of the catalogue), :meth:`MOMEF.stats` reports ``router_weight`` — the mean of p_m
  over the items with at least one modality (a missing modality counting as 0, so the means sum to 1) —
  and ``router_weight_when_present`` — the mean of p_m over the items that have modality m.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from crossan.precision import full_precision
from crossan.towers.sanb import masked_softmax


class ModalityExpert(nn.Module):
    """``E(e) = e + W2 · GELU(W1 · e)`` with hidden width ``hidden``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e + self.fc2(F.gelu(self.fc1(e)))


class MOMEF(nn.Module):
    """Mixture of Modality Expert Fusion over M modality embeddings of width ``dim`` (METHOD.md §7)."""

    def __init__(self, modalities: list[str], dim: int, temperature: float = 1.0, top_k: int = 0,
                 expert_mult: int = 1, load_balance_weight: float = 0.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"MOMEF temperature must be positive, got {temperature}")
        if top_k < 0:
            raise ValueError(f"MOMEF top_k must be >= 0, got {top_k}")
        self.modalities = list(modalities)
        M = len(self.modalities)
        self.temperature, self.top_k, self.load_balance_weight = temperature, top_k, load_balance_weight
        self.router = nn.Linear(M * dim, M) if M >= 2 else None
        self.experts = nn.ModuleList(ModalityExpert(dim, expert_mult * dim) for _ in range(M))
        self.last_weights: torch.Tensor | None = None
        self._aux: torch.Tensor | None = None
        self.register_buffer("_weight_sum", torch.zeros(M), persistent=False)
        self.register_buffer("_present_count", torch.zeros(M), persistent=False)
        self.register_buffer("_item_count", torch.zeros(()), persistent=False)

    def effective_top_k(self, M: int) -> int:
        """``top_k``, or 0 (dense) when it keeps every one of the M experts: routing and load balancing are
        then the dense ones (balancing top-M as top-k would count each expert 1/M, a constant loss)."""
        return self.top_k if 0 < self.top_k < M else 0

    def routing(self, e: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Router weights p [U, M] for embeddings ``e`` [U, M, d] and presence Bool[U, M]."""
        return self._route(e, present)[1]

    def _route(self, e: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(p_all, p)``: the router's softmax over the present modalities, and the weights used (p_all with
        only the top k kept and renormalised, or p_all itself without top-k)."""
        U, M, _ = e.shape
        if self.router is None:
            ones = e.new_ones(U, M)
            return ones, ones
        # the router (a small product), its softmax, the top-k choice, the balance loss and the statistics in
        # float32 whatever the compute dtype: under CPU autocast a softmax of bf16 logits stays bf16 (rows summing
        # to 1 ± 0.006), and bf16 logits tie, which changes top-k choices
        with full_precision(e.device):
            logits = self.router(e.flatten(1).float()) / self.temperature
        p_all = masked_softmax(logits, present)
        has_any = present.any(1, keepdim=True)
        p_all = torch.where(has_any, p_all, torch.full_like(p_all, 1 / M))  # nothing present: uniform
        k = self.effective_top_k(M)
        if not k:
            return p_all, p_all
        keep = torch.zeros_like(present).scatter(1, p_all.topk(k, dim=1).indices, True) | ~has_any
        p = p_all * keep
        return p_all, p / p.sum(1, keepdim=True)  # the largest weight is > 0, so the sum is too

    def forward(self, e: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``e``: [U, M, d] modality embeddings, ``present``: Bool[U, M] → fused item embeddings [U, d]."""
        p_all, p = self._route(e, present)
        experts = torch.stack([expert(e[:, i]) for i, expert in enumerate(self.experts)], 1)  # [U, M, d]
        self._record(p_all, p, present)
        return (p.to(experts.dtype)[..., None] * experts).sum(1)  # in the experts' (compute) dtype

    def _record(self, p_all: torch.Tensor, p: torch.Tensor, present: torch.Tensor) -> None:
        self.last_weights = p.detach()
        self._aux = None
        M = p.shape[1]
        has_any = present.any(1)
        if self.load_balance_weight > 0 and M >= 2 and torch.is_grad_enabled() and bool(has_any.any()):
            k = self.effective_top_k(M)
            self._aux = self.load_balance_weight * load_balance(p_all[has_any], p[has_any], k)
        with torch.no_grad():
            self._weight_sum += (p * has_any[:, None]).sum(0)
            self._present_count += present.sum(0)
            self._item_count += has_any.sum()

    def aux_loss(self) -> torch.Tensor | None:
        """The weighted load-balancing loss of the last forward (None when its weight is 0 or M = 1)."""
        return self._aux

    def reset_stats(self) -> None:
        self._weight_sum.zero_()
        self._present_count.zero_()
        self._item_count.zero_()

    def stat_buffers(self) -> list[torch.Tensor]:
        return [self._weight_sum, self._present_count, self._item_count]

    def stats(self) -> dict[str, Any]:
        n = self._item_count.clamp_min(1)
        mean = (self._weight_sum / n).tolist()
        when_present = (self._weight_sum / self._present_count.clamp_min(1)).tolist()
        return {"router_weight": dict(zip(self.modalities, mean)),
                "router_weight_when_present": dict(zip(self.modalities, when_present)),
                "router_items": int(self._item_count.item())}

    @staticmethod
    def num_params(num_modalities: int, dim: int, expert_mult: int = 1) -> int:
        M, h = num_modalities, expert_mult * dim
        router = M * dim * M + M if M >= 2 else 0
        return router + M * (dim * h + h + h * dim + dim)


def load_balance(p_all: torch.Tensor, p: torch.Tensor, top_k: int = 0) -> torch.Tensor:
    """Switch-Transformer load balance ``M · Σ_m f_m · P_m`` for router weights before (``p_all``) and after
    (``p``) top-k, both [U, M]: ``P`` is the mean of ``p_all`` (the gradient's path), ``f`` the share of items
    dispatched to each expert (the argmax without top-k; 1/k' to each of an item's k' kept experts with it)."""
    M = p_all.shape[1]
    if top_k > 0:
        kept = (p > 0).float()
        frac = (kept / kept.sum(1, keepdim=True)).mean(0)
    else:
        frac = F.one_hot(p_all.argmax(1), M).float().mean(0)
    return M * (frac.detach() * p_all.mean(0)).sum()

"""CROSSAN — Cross-modal Side Adapter Network (METHOD.md §6), with MOMEF fusion (§7).

One side chain per modality (linear in M, where IISAN is quadratic), exchanging state at every depth::

    s_m^0 = 0
    for k = 1..K:
        c_m^k = Σ_{n≠m} π_{m,n}^k · s_n^{k−1}          π_{m,·}^k = softmax(b_{m,·}^k), b init 0
        z_m^k = g_m^k · h_m^{l_k} + (1 − g_m^k) · s_m^{k−1} + λ_m^k · c_m^k
        s_m^k = SANB_{k,m}(z_m^k)
    e_m  = W_m · s_m^K + b_m                            (d_s → d)
    item = MOMEF(e_1 … e_M)                             (or concat / mean)

g and λ are gates ``sigmoid(a / T)`` (a init 0, §4). Since s^0 = 0, c^1 ≡ 0: exchange parameters (λ, b)
exist for depths 2..K only. With M = 2 each chain has a single partner, so π ≡ 1 and no logits b are
created (they would never receive a gradient); with M = 1 there is no exchange at all.

Ablations (``CrossanConfig``): ``exchange: none`` — no λ/b, fully independent chains; ``share_adapters`` —
one SANB per depth shared by all modalities (the adapters' parameter count does not grow with M; gates
and heads stay per modality); ``fusion`` — ``momef`` | ``concat`` (``Linear(M·d → d)``) | ``mean``.

Missing modalities (the same rule at train and eval time), for an item lacking modality n:

* its states are exact zeros (see :mod:`crossan.towers.content`) and its embedding is set to e_n = 0;
* n's chain state never reaches another chain: π over the partners is renormalised over the *present*
  ones (c = 0 when none is present);
* fusion: MOMEF gives n exactly zero weight (all missing → uniform over the experts reading zeros);
  ``concat`` sees zeros for n; ``mean`` averages the present modalities only (zeros if none).

Optimiser groups: ``side`` (input projections, SANBs, gates, exchange logits) at ``train.lr_adapter``;
``heads`` (W_m) and ``fusion`` (MOMEF / concat layer) at ``train.lr``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crossan.cache.features import FeatureSource
from crossan.config import TrainConfig
from crossan.towers.base import TowerContext, register
from crossan.towers.configs import CrossanConfig
from crossan.towers.content import ContentTower, Features, features_from_context, finish
from crossan.towers.momef import MOMEF
from crossan.towers.sanb import SANB, Gate, ModalityProjection, masked_softmax


class Exchange(nn.Module):
    """Cross-modal exchange ``λ_m^k · Σ_{n≠m} π_{m,n}^k · s_n^{k−1}`` for depths k = 2..K (METHOD.md §6)."""

    def __init__(self, depths: int, num_modalities: int, temperature: float = 0.1) -> None:
        super().__init__()
        M = num_modalities
        self.mix = Gate(depths, M, temperature=temperature)  # λ
        # b_{m,·}: one logit per (target m, partner n ≠ m); constant π ≡ 1 needs none (M = 2)
        self.logits = nn.Parameter(torch.zeros(depths, M, M - 1)) if M >= 3 else None
        partners = torch.tensor([[n for n in range(M) if n != m] for m in range(M)], dtype=torch.long)
        self.register_buffer("partners", partners.reshape(M, M - 1), persistent=False)

    def forward(self, s: torch.Tensor, present: torch.Tensor, j: int) -> torch.Tensor:
        """``s``: previous states [U, M, d_s]; ``present``: Bool[U, M]; ``j``: exchange depth index (k − 2)."""
        U, M, _ = s.shape
        allowed = present[:, self.partners]  # [U, M, M-1]: partner present
        logits = self.logits[j] if self.logits is not None else s.new_zeros(M, M - 1)
        pi = masked_softmax(logits.expand(U, M, M - 1), allowed)
        c = (pi[..., None] * s[:, self.partners]).sum(2)  # [U, M, d_s]
        return self.mix()[j][:, None] * c


class ConcatFusion(nn.Module):
    """``Linear(concat(e_1 … e_M) → d)``; missing modalities enter as zeros."""

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(num_modalities * dim, dim)

    def forward(self, e: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return self.proj(e.flatten(1))


class MeanFusion(nn.Module):
    """Mean of the present modalities' embeddings (zeros when none is present); no parameters."""

    def forward(self, e: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        w = present.to(e.dtype)
        return (w[..., None] * e).sum(1) / w.sum(1, keepdim=True).clamp_min(1)


class CrossanTower(ContentTower):
    """CROSSAN item tower (METHOD.md §6–7); see the module docstring for options and the missing rule."""

    def __init__(self, features: FeatureSource, modalities: list[str], num_items: int, dim: int,
                 cfg: CrossanConfig | None = None) -> None:
        super().__init__(features, modalities, num_items, dim)
        self.cfg = cfg = cfg if cfg is not None else CrossanConfig()
        K, M, ds = self.num_taps, len(self.modalities), cfg.side_dim

        def sanb() -> SANB:
            return SANB(ds, cfg.bottleneck, cfg.dropout, cfg.init_std)

        self.proj = ModalityProjection(self.dims, ds)
        self.adapters = nn.ModuleList(
            sanb() if cfg.share_adapters else nn.ModuleDict({m: sanb() for m in self.modalities})
            for _ in range(K))
        self.gate = Gate(K, M, temperature=cfg.gate_temperature)
        self.exchange = (Exchange(K - 1, M, cfg.gate_temperature)
                         if cfg.exchange == "softmax" and M >= 2 and K >= 2 else None)
        self.heads = nn.ModuleDict({m: nn.Linear(ds, dim) for m in self.modalities})
        self.fusion: nn.Module
        if cfg.fusion == "momef":
            self.fusion = MOMEF(self.modalities, dim, cfg.momef_temperature, cfg.momef_top_k,
                                cfg.momef_expert_mult, cfg.load_balance_weight)
        elif cfg.fusion == "concat":
            self.fusion = ConcatFusion(M, dim)
        elif cfg.fusion == "mean":
            self.fusion = MeanFusion()
        else:
            raise ValueError(f"crossan.fusion: unknown fusion {cfg.fusion!r}")

    def _adapt(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """Apply the depth-k SANB(s) to ``z`` [U, M, d_s]."""
        block = self.adapters[k]
        if isinstance(block, SANB):  # shared by all modalities
            return block(z)
        return torch.stack([block[m](z[:, i]) for i, m in enumerate(self.modalities)], 1)

    def modality_embeddings(self, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-modality embeddings e [U, M, d] (exact zeros for missing modalities) and presence Bool[U, M]."""
        states, present = self.side_inputs(feats)
        h = torch.stack([self.proj(m, s) for m, s in zip(self.modalities, states)], 1)  # [U, M, K, d_s]
        g = self.gate()[..., None]  # [K, M, 1]
        s = torch.zeros_like(h[:, :, 0])
        for k in range(self.num_taps):
            z = g[k] * h[:, :, k] + (1 - g[k]) * s
            if self.exchange is not None and k > 0:
                z = z + self.exchange(s, present, k - 1)
            s = self._adapt(k, z)
        e = torch.stack([self.heads[m](s[:, i]) for i, m in enumerate(self.modalities)], 1)
        return torch.where(present[..., None], e, torch.zeros_like(e)), present

    def encode(self, feats: Features) -> torch.Tensor:
        return self.fusion(*self.modality_embeddings(feats))

    def side_modules(self) -> list[nn.Module]:
        """The side network proper: input projections, SANBs, gates, exchange."""
        return [m for m in (self.proj, self.adapters, self.gate, self.exchange) if m is not None]

    def param_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        groups = [
            {"name": "side", "params": [p for m in self.side_modules() for p in m.parameters()],
             "lr": train.lr_adapter},
            {"name": "heads", "params": list(self.heads.parameters()), "lr": train.lr},
            {"name": "fusion", "params": list(self.fusion.parameters()), "lr": train.lr},
        ]
        return [g for g in groups if g["params"]]

    def aux_loss(self) -> torch.Tensor | None:
        return self.fusion.aux_loss() if isinstance(self.fusion, MOMEF) else None

    def reset_stats(self) -> None:
        if isinstance(self.fusion, MOMEF):
            self.fusion.reset_stats()

    def stats(self) -> dict[str, Any]:
        return self.fusion.stats() if isinstance(self.fusion, MOMEF) else {}


@register("crossan")
def build(ctx: TowerContext) -> CrossanTower:
    """CROSSAN over ``ctx.config.modalities``; the FeatureSource comes from ``ctx.extras["features"]``."""
    cfg = ctx.config
    return finish(CrossanTower(features_from_context(ctx), cfg.modalities, ctx.num_items, cfg.user.dim, cfg.crossan), ctx)

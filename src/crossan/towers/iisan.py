"""IISAN (SIGIR 2024) as a side network over cached layer states, generalised to M modalities (METHOD.md §5).

For modalities 1..M with tapped states ``h_m^{l_1} … h_m^{l_K}`` (projected to d_s where needed, §4)::

    intra chain per modality m:   s^0 = 0,  s^k = SANB_k(g_k·h_m^{l_k} + (1−g_k)·s^{k−1})
    inter chain per pair (m, n):  t^0 = 0,  t^k = SANB_k(t^{k−1} + g_k·h_m^{l_k} + (1−g_k)·h_n^{l_k})
    each chain:                   o = Linear(d_s→d)(Linear(d_s→d_s)(last state))
    item                          = Linear(concat of all chain outputs → d)

``inter: pairs`` builds C(M, 2) inter chains (M = 2 is exactly IISAN); ``inter: single`` builds one inter
chain over all modalities whose input at depth k is ``Σ_m w_m^k · h_m^{l_k}``, ``w^k = softmax(a^k / T)``
over the modalities (a init 0). M = 1 has the intra chain only.

Missing modalities (the same rule at train and eval time), for an item lacking modality m:

* the intra chain of m outputs zeros (its head output is zeroed, not just its input);
* an inter pair (m, n) with n present reads n on both sides (``h_m := h_n``, so the gate mixes n with
  itself); a pair lacking both outputs zeros;
* the single inter chain renormalises its softmax gate over the present modalities; with none present it
  outputs zeros.

So every chain output depends only on present modalities; an item lacking everything embeds to the
fusion bias (a learned "no content" vector).

Optimiser groups: ``side`` (input projections, SANBs, gates) at ``train.lr_adapter``; ``heads`` (chain
heads and the fusion layer) at ``train.lr``.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import torch
from torch import nn

from crossan.cache.features import FeatureSource
from crossan.config import TrainConfig
from crossan.towers.base import TowerContext, register
from crossan.towers.configs import IISANConfig
from crossan.towers.content import ContentTower, Features, features_from_context, finish
from crossan.towers.sanb import SANB, Gate, ModalityProjection, masked_softmax


def _adapters(cfg: IISANConfig, depth: int) -> nn.ModuleList:
    return nn.ModuleList(SANB(cfg.side_dim, cfg.bottleneck, cfg.dropout, cfg.init_std) for _ in range(depth))


class IntraChain(nn.Module):
    """One modality's chain: ``s^k = SANB_k(g_k·h^{l_k} + (1−g_k)·s^{k−1})``, s^0 = 0 (METHOD.md §5)."""

    def __init__(self, cfg: IISANConfig, depth: int) -> None:
        super().__init__()
        self.adapters = _adapters(cfg, depth)
        self.gate = Gate(depth, temperature=cfg.gate_temperature)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h``: [U, K, d_s] → last state [U, d_s]."""
        g = self.gate()
        s = torch.zeros_like(h[:, 0])
        for k, adapter in enumerate(self.adapters):
            s = adapter(g[k] * h[:, k] + (1 - g[k]) * s)
        return s


class PairChain(nn.Module):
    """An inter chain of two modalities: ``t^k = SANB_k(t^{k−1} + g_k·h_m + (1−g_k)·h_n)`` (METHOD.md §5)."""

    def __init__(self, cfg: IISANConfig, depth: int) -> None:
        super().__init__()
        self.adapters = _adapters(cfg, depth)
        self.gate = Gate(depth, temperature=cfg.gate_temperature)

    def forward(self, h_m: torch.Tensor, h_n: torch.Tensor) -> torch.Tensor:
        """``h_m``, ``h_n``: [U, K, d_s] → last state [U, d_s]."""
        g = self.gate()
        t = torch.zeros_like(h_m[:, 0])
        for k, adapter in enumerate(self.adapters):
            t = adapter(t + g[k] * h_m[:, k] + (1 - g[k]) * h_n[:, k])
        return t


class SingleInterChain(nn.Module):
    """One inter chain over all M modalities: ``t^k = SANB_k(t^{k−1} + Σ_m w_m^k·h_m^{l_k})``.

    ``w^k = softmax(a^k / T)`` over the modalities present for the item (a: [K, M], init 0).
    """

    def __init__(self, cfg: IISANConfig, depth: int, num_modalities: int) -> None:
        super().__init__()
        self.adapters = _adapters(cfg, depth)
        self.temperature = cfg.gate_temperature
        self.logits = nn.Parameter(torch.zeros(depth, num_modalities))

    def forward(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``h``: [U, M, K, d_s], ``present``: Bool[U, M] → last state [U, d_s]."""
        t = torch.zeros_like(h[:, 0, 0])
        for k, adapter in enumerate(self.adapters):
            w = masked_softmax((self.logits[k] / self.temperature).expand_as(present), present)  # [U, M]
            t = adapter(t + (w[..., None] * h[:, :, k]).sum(1))
        return t


def _head(side_dim: int, dim: int) -> nn.Sequential:
    """Chain head of IISAN: ``Linear(d_s→d_s)`` then ``Linear(d_s→d)`` (no activation between, §5)."""
    return nn.Sequential(nn.Linear(side_dim, side_dim), nn.Linear(side_dim, dim))


class IISANTower(ContentTower):
    """IISAN item tower over M modalities (METHOD.md §5); see the module docstring for the missing rule."""

    def __init__(self, features: FeatureSource, modalities: list[str], num_items: int, dim: int,
                 cfg: IISANConfig | None = None) -> None:
        super().__init__(features, modalities, num_items, dim)
        self.cfg = cfg = cfg if cfg is not None else IISANConfig()
        K, M = self.num_taps, len(self.modalities)
        self.proj = ModalityProjection(self.dims, cfg.side_dim)
        self.intra = nn.ModuleDict({m: IntraChain(cfg, K) for m in self.modalities})
        self.pairs = list(combinations(range(M), 2))
        self.inter: nn.ModuleDict | SingleInterChain | None = None
        if M >= 2 and cfg.inter == "pairs":
            self.inter = nn.ModuleDict(
                {self._pair_name(i, j): PairChain(cfg, K) for i, j in self.pairs})
        elif M >= 2:
            self.inter = SingleInterChain(cfg, K, M)
        self.chain_names = list(self.modalities)
        if isinstance(self.inter, nn.ModuleDict):
            self.chain_names += list(self.inter.keys())
        elif self.inter is not None:
            self.chain_names.append("inter")
        self.heads = nn.ModuleDict({c: _head(cfg.side_dim, dim) for c in self.chain_names})
        self.fusion = nn.Linear(len(self.chain_names) * dim, dim)

    def _pair_name(self, i: int, j: int) -> str:
        return f"{self.modalities[i]}_{self.modalities[j]}"

    def chain_outputs(self, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """Every chain's head output [U, C, d] (zero where the chain has no input) and its validity Bool[U, C],
        chains in :attr:`chain_names` order (intra chains in modality order, then inter chains)."""
        states, present = self.side_inputs(feats)
        h = [self.proj(m, s) for m, s in zip(self.modalities, states)]  # M × [U, K, d_s]
        last = [self.intra[m](h[i]) for i, m in enumerate(self.modalities)]
        valid = [present[:, i] for i in range(len(self.modalities))]
        if isinstance(self.inter, nn.ModuleDict):
            for i, j in self.pairs:
                pi, pj = present[:, i, None, None], present[:, j, None, None]
                h_i = torch.where(pi, h[i], h[j])  # a missing side reads the present one
                h_j = torch.where(pj, h[j], h[i])
                last.append(self.inter[self._pair_name(i, j)](h_i, h_j))
                valid.append(present[:, i] | present[:, j])
        elif self.inter is not None:
            last.append(self.inter(torch.stack(h, 1), present))
            valid.append(present.any(1))
        out = torch.stack([self.heads[c](s) for c, s in zip(self.chain_names, last)], 1)
        valid_t = torch.stack(valid, 1)
        return torch.where(valid_t[..., None], out, torch.zeros_like(out)), valid_t

    def encode(self, feats: Features) -> torch.Tensor:
        out, _ = self.chain_outputs(feats)
        return self.fusion(out.flatten(1))

    def side_modules(self) -> list[nn.Module]:
        """The side network proper: input projections, chains (SANBs and gates)."""
        return [m for m in (self.proj, self.intra, self.inter) if m is not None]

    def param_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        side = [p for mod in self.side_modules() for p in mod.parameters()]
        heads = [*self.heads.parameters(), *self.fusion.parameters()]
        return [{"name": "side", "params": side, "lr": train.lr_adapter},
                {"name": "heads", "params": heads, "lr": train.lr}]


@register("iisan")
def build(ctx: TowerContext) -> IISANTower:
    """IISAN over ``ctx.config.modalities``; the FeatureSource comes from ``ctx.extras["features"]``."""
    cfg = ctx.config
    return finish(IISANTower(features_from_context(ctx), cfg.modalities, ctx.num_items, cfg.user.dim, cfg.iisan), ctx)

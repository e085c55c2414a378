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

Implementation: all chains advance together, as in CROSSAN. At depth k the C = M + (inter chains) inputs
are stacked into one tensor [C, U, d_s] and the C SANBs of that depth run as one
:class:`~crossan.towers.sanb.GroupedSANB`; the two-layer heads are two
:class:`~crossan.towers.sanb.GroupedLinear`. The numbers are those of the chain-by-chain loop above (a test
checks it against a per-chain reference); batching both side networks the same way keeps the IISAN/CROSSAN
cost comparison about the architectures, not the implementations.

Optimiser groups: ``side`` (input projections, SANBs, gates) at ``train.lr_adapter``; ``heads`` (chain
heads and the fusion layer) at ``train.lr``. ``iisan.lr_groups: official`` declares the official code's
rates instead (``IISANConfig``; the first head layer and the gates then hold one tensor per chain).

Fidelity switches (``IISANConfig``, docs/method.md): ``missing: zeros`` feeds a missing modality's zero
states through every chain as the official code does (no output zeroed, pairs read both sides as they
are); ``image_head_init: xavier`` initialises the image chain's last head layer Xavier-normal.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import torch
from torch import nn

from crossan.cache.features import FeatureSource
from crossan.config import TrainConfig
from crossan.towers.base import TowerContext, register
from crossan.towers.chainsplit import SplitGate, SplitGroupedLinear, split_gate, split_grouped_linear
from crossan.towers.content import ContentTower, Features, features_from_context, finish
from crossan.towers.options import IISANConfig
from crossan.towers.sanb import (
    Gate,
    GroupedLinear,
    GroupedSANB,
    ModalityProjection,
    masked_softmax,
    sanb_step,
)


class SingleInterGate(nn.Module):
    """Input weights of the single inter chain: ``w^k = softmax(a^k / T)`` over the present modalities."""

    def __init__(self, depth: int, num_modalities: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.logits = nn.Parameter(torch.zeros(depth, num_modalities))

    def forward(self, present: torch.Tensor) -> torch.Tensor:
        """Weights [K, M, U, 1] for presence Bool[U, M] (all zero for an item with nothing present)."""
        K, M = self.logits.shape
        w = masked_softmax((self.logits / self.temperature)[:, None, :].expand(K, *present.shape), present)
        return w.permute(0, 2, 1)[..., None]


def iisan_chains(h: torch.Tensor, g: torch.Tensor, inter: tuple[torch.Tensor, ...] | None,
                 blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                 masks: list[torch.Tensor | None], scale: float) -> torch.Tensor:
    """Every chain through every depth: the states [C, U, d_s] (intra chains in modality order, then the inter
    chains) from the side inputs ``h`` [K, M, U, d_s] and gates ``g`` [K, M + P, 1, 1]. ``inter``: the pairs'
    two sides ``(h_l, h_r)`` [K, P, U, d_s], or the single inter chain's weights ``(w,)`` [K, M, U, 1], or
    None (M = 1). ``blocks[k]``: depth k's SANB weights, ``masks[k]`` its keep masks
    (:func:`~crossan.towers.sanb.sanb_step`). A function of tensors only, so that ``torch.compile``
    (``train.compile``) makes one graph of the whole side network, forward and backward."""
    M = h.shape[1]
    s = None  # all chains' states [C, U, d_s]; s^0 = 0
    for k, (dw, db, uw, ub) in enumerate(blocks):
        # intra: g·h + (1−g)·s (one pass: lerp)
        z = [g[k, :M] * h[k] if s is None else torch.lerp(s[:M], h[k], g[k, :M])]
        if inter is not None and len(inter) == 2:  # pair: t + g·h_m + (1−g)·h_n
            zp = torch.lerp(inter[1][k], inter[0][k], g[k, M:])
            z.append(zp if s is None else zp + s[M:])
        elif inter is not None:  # single: t + Σ_m w_m·h_m
            # summed in float32 and cast back: CUDA's autocast runs `sum` in float32, and a float32 chain would
            # then meet the bf16 side inputs in the next depth's lerp, which refuses mixed dtypes
            zi = (inter[0][k] * h[k]).sum(0, keepdim=True, dtype=torch.float32).to(h.dtype)
            z.append(zi if s is None else zi + s[M:])
        s = sanb_step(torch.cat(z, 0) if len(z) > 1 else z[0], dw, db, uw, ub, masks[k], scale)
    return s


class IISANTower(ContentTower):
    """IISAN item tower over M modalities (METHOD.md §5); see the module docstring for the missing rule."""

    reads_tap_major = True
    compilable = True

    def __init__(self, features: FeatureSource, modalities: list[str], num_items: int, dim: int,
                 cfg: IISANConfig | None = None) -> None:
        super().__init__(features, modalities, num_items, dim)
        self.cfg = cfg = cfg if cfg is not None else IISANConfig()
        K, M, ds = self.num_taps, len(self.modalities), cfg.side_dim
        self.proj = ModalityProjection(self.dims, ds)
        self.pairs = list(combinations(range(M), 2)) if M >= 2 and cfg.inter == "pairs" else []
        self.chain_names = list(self.modalities)
        self.chain_names += [f"{self.modalities[i]}_{self.modalities[j]}" for i, j in self.pairs]
        if M >= 2 and cfg.inter == "single":
            self.chain_names.append("inter")
        C = len(self.chain_names)
        # depth k: one SANB per chain (intra chains in modality order, then the inter chains)
        self.adapters = nn.ModuleList(
            GroupedSANB(C, ds, cfg.bottleneck, cfg.dropout, cfg.init_std) for _ in range(K))
        self.gate = Gate(K, M + len(self.pairs), temperature=cfg.gate_temperature)  # intra, then pair gates
        self.inter = (SingleInterGate(K, M, cfg.gate_temperature)
                      if M >= 2 and cfg.inter == "single" else None)
        # each chain's head: Linear(d_s→d_s) then Linear(d_s→d), no activation between (§5)
        self.heads = nn.Sequential(GroupedLinear(C, ds, ds), GroupedLinear(C, ds, dim))
        self.fusion = nn.Linear(C * dim, dim)
        if cfg.image_head_init == "xavier" and "image" in self.modalities:
            i = self.modalities.index("image")  # the official code's image classifier head: Xavier-normal
            with torch.no_grad():
                w = torch.empty(dim, ds)  # as nn.Linear(d_s → d) stores it
                nn.init.xavier_normal_(w)
                self.heads[1].weight[i].copy_(w.T)
                self.heads[1].bias[i].zero_()
        if cfg.lr_groups == "official":  # chains at different rates need their own tensors
            self.heads[0] = split_grouped_linear(self.heads[0])
            self.gate = split_gate(self.gate)
        if self.pairs:
            self.register_buffer("pair_left", torch.tensor([i for i, _ in self.pairs]), persistent=False)
            self.register_buffer("pair_right", torch.tensor([j for _, j in self.pairs]), persistent=False)

    def chain_outputs(self, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """Every chain's head output [U, C, d] (zero where the chain has no input) and its validity Bool[U, C],
        chains in :attr:`chain_names` order (intra chains in modality order, then inter chains)."""
        h, present = self.tap_major_inputs(feats, self.proj)  # [K, M, U, d_s] in the compute dtype
        if self.cfg.missing == "zeros":  # official code: a missing modality's zero states run like real ones
            h = h * present.T.to(h.dtype)[None, :, :, None]  # exact zeros (also after a projection's bias)
            present = torch.ones_like(present)
        g = self.gate().to(h.dtype)[..., None, None]  # [K, M + P, 1, 1]; everything below stays in h's dtype
        valid = [present.T]
        if self.pairs:
            pl, pr = present.T[self.pair_left, :, None], present.T[self.pair_right, :, None]  # [P, U, 1]
            h_l, h_r = h[:, self.pair_left], h[:, self.pair_right]  # [K, P, U, d_s]
            h_l, h_r = torch.where(pl, h_l, h_r), torch.where(pr, h_r, h_l)  # a missing side reads the other
            valid.append((pl | pr)[..., 0])
        elif self.inter is not None:
            w = self.inter(present).to(h.dtype)  # [K, M, U, 1]
            valid.append(present.any(1)[None])
        inter = (h_l, h_r) if self.pairs else (w,) if self.inter is not None else None
        masks, scale = self.branch_masks(len(self.chain_names), h, self.cfg.dropout)
        s = self.side_step(iisan_chains, h)(h, g, inter, self.sanb_weights(), masks, scale)
        valid_t = torch.cat(valid, 0)  # [C, U]
        out = self.heads(s) * valid_t[..., None].to(s.dtype)
        return out.transpose(0, 1), valid_t.T

    def encode(self, feats: Features) -> torch.Tensor:
        out, _ = self.chain_outputs(feats)
        return self.fusion(out.flatten(1))

    def side_modules(self) -> list[nn.Module]:
        """The side network proper: input projections, SANBs, gates."""
        return [m for m in (self.proj, self.adapters, self.gate, self.inter) if m is not None]

    def param_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        if self.cfg.lr_groups == "official":
            return self._official_param_groups(train)
        side = [p for mod in self.side_modules() for p in mod.parameters()]
        heads = [*self.heads.parameters(), *self.fusion.parameters()]
        return [{"name": "side", "params": side, "lr": train.lr_adapter},
                {"name": "heads", "params": heads, "lr": train.lr}]

    def _official_param_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """``iisan.lr_groups: official`` (see :class:`~crossan.towers.options.IISANConfig`): the rates that the
        official code's name-substring grouping gives, declared per module and chain. The first head layer
        and the gates hold one parameter per chain here (:mod:`crossan.towers.chainsplit`)."""
        cfg, M = self.cfg, len(self.modalities)
        head0, gate = self.heads[0], self.gate
        assert isinstance(head0, SplitGroupedLinear) and isinstance(gate, SplitGate)
        text = [p for i, m in enumerate(self.modalities) if m == "text" for p in head0.chain_parameters(i)]
        other = [p for i, m in enumerate(self.modalities) if m != "text"
                 for p in [*head0.chain_parameters(i), *gate.chain_parameters(i)]]
        base = [p for i, m in enumerate(self.modalities) if m == "text" for p in gate.chain_parameters(i)]
        base += [p for c in range(M, len(self.chain_names)) for p in head0.chain_parameters(c)]
        base += [p for c in range(M, gate.logit.shape[1]) for p in gate.chain_parameters(c)]
        base += [*(self.inter.parameters() if self.inter is not None else []), *self.heads[1].parameters(),
                 *self.fusion.parameters()]
        side = [*self.proj.parameters(), *self.adapters.parameters()]
        groups = [{"name": "side", "params": side, "lr": train.lr_adapter},
                  {"name": "heads", "params": base, "lr": train.lr},
                  {"name": "text_head", "params": text, "lr": cfg.official_lr_text_head},
                  {"name": "image_head", "params": other, "lr": cfg.official_lr_image_head}]
        return [g for g in groups if g["params"]]


@register("iisan")
def build(ctx: TowerContext) -> IISANTower:
    """IISAN over ``ctx.config.modalities``; the FeatureSource comes from ``ctx.features``."""
    cfg = ctx.config
    return finish(IISANTower(features_from_context(ctx), cfg.modalities, ctx.num_items, cfg.user.dim, cfg.iisan), ctx)

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

Ablations (``CrossanConfig``): ``exchange: none`` — no λ/b, fully independent chains; ``exchange: inputs``
— no λ/b; instead chain t's input is ``Σ_m α_{t,m}^k·h_m^{l_k} + (1 − g_t^k)·s_t^{k−1}`` with α a softmax over
the present modalities (:class:`InputMix`, logits own 0 / others −2; g exists for depths 2..K); ``share_adapters`` —
one SANB per depth shared by all modalities (the adapters' parameter count does not grow with M; gates
and heads stay per modality); ``fusion`` — ``momef`` | ``concat`` (``Linear(M·d → d)``) | ``mean``.

Missing modalities (the same rule at train and eval time), for an item lacking modality n:

* its states are exact zeros (see :mod:`crossan.towers.content`) and its embedding is set to e_n = 0;
* n's chain state never reaches another chain: π over the partners is renormalised over the *present*
  ones (c = 0 when none is present);
* fusion: MOMEF gives n exactly zero weight (all missing → uniform over the experts reading zeros);
  ``concat`` sees zeros for n; ``mean`` averages the present modalities only (zeros if none).

Implementation: all chains advance together. The states of one depth live in one tensor [M, U, d_s]; the
M SANBs of a depth run as one :class:`~crossan.towers.sanb.GroupedSANB` (two batched matmuls), the heads as
one :class:`~crossan.towers.sanb.GroupedLinear`, and the exchange as a matmul over the modality axis (the
softmax over present partners written as ``E·(a⊙s) / E·a`` with ``E = exp(b)`` off the diagonal and ``a`` the
presence; with M = 2 a flip of the modality axis). Numerically this is the loop above (a test checks it
against a per-modality reference). Everything runs in the compute dtype of the tower's inputs (bf16 under
``precision`` auto/bf16, see :mod:`crossan.precision`), the gates cast to it, so no op mixes dtypes.

Optimiser groups: ``side`` (input projections, SANBs, gates, exchange logits) at ``train.lr_adapter``;
``heads`` (W_m) and ``fusion`` (MOMEF / concat layer) at ``train.lr``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crossan.cache.features import FeatureSource
from crossan.config import TrainConfig
from crossan.precision import full_precision
from crossan.towers.base import TowerContext, register
from crossan.towers.content import ContentTower, Features, features_from_context, finish
from crossan.towers.momef import MOMEF
from crossan.towers.options import CrossanConfig
from crossan.towers.sanb import Gate, GroupedLinear, GroupedSANB, ModalityProjection, sanb_step


class Exchange(nn.Module):
    """Cross-modal exchange ``λ_m^k · Σ_{n≠m} π_{m,n}^k · s_n^{k−1}`` for depths k = 2..K (METHOD.md §6)."""

    def __init__(self, depths: int, num_modalities: int, temperature: float = 0.1) -> None:
        super().__init__()
        M = num_modalities
        self.mix = Gate(depths, M, temperature=temperature)  # λ
        # b_{m,·}: one logit per (target m, partner n ≠ m); constant π ≡ 1 needs none (M = 2)
        self.logits = nn.Parameter(torch.zeros(depths, M, M - 1)) if M >= 3 else None
        off = ~torch.eye(M, dtype=torch.bool)
        self.register_buffer("off_diagonal", off, persistent=False)

    def weights(self, j: int) -> torch.Tensor:
        """``E`` [M, M]: exp(b) for partners (row max subtracted, so every entry is in (0, 1]), 0 on the diagonal."""
        M = self.off_diagonal.shape[0]
        if self.logits is None:
            return self.off_diagonal.float()
        b = self.logits[j]
        e = torch.exp(b - b.max(1, keepdim=True).values.detach())  # [M, M-1]
        return torch.zeros(M, M, dtype=e.dtype, device=e.device).masked_scatter(self.off_diagonal, e)

    def coefficients(self, a: torch.Tensor, j: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """What :func:`exchange_into` needs at depth index ``j`` for presence ``a`` [M, U, 1] (small tensors).

        π renormalised over the present partners is ``E_mn a_n / Σ_n' E_mn' a_n'``; with no partner present
        the numerator is 0 and so is the exchange. With M = 2 (π ≡ 1) chain m reads its one partner:
        ``λ_m · a_n · s_n``, a flip of the modality axis (a matmul with a 2 × 2 matrix runs several times
        slower in bf16 on a CPU): ``(λ · a flipped,)``. Otherwise ``(E, a, λ / Σ E·a)`` for one matmul over
        the modality axis.
        """
        M, U = a.shape[0], a.shape[1]
        lam = self.mix()[j].to(dtype)[:, None, None]  # λ [M, 1, 1]
        if self.logits is None and M == 2:
            return (a.flip(0) * lam,)
        E = self.weights(j)
        with full_precision(a.device):  # [M, U] in float32 (small): the renormalised weights sum to 1
            den = E @ a.view(M, U).to(E.dtype)
        scale = lam * (1 / torch.where(den > 0, den, torch.ones_like(den))).to(dtype)[..., None]
        return E.to(dtype), a, scale


def exchange_into(z: torch.Tensor, s: torch.Tensor, coefficients: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``z`` + the exchange from states ``s`` [M, U, d_s] with :meth:`Exchange.coefficients`."""
    if len(coefficients) == 1:  # M = 2: the partner is the other chain
        return torch.addcmul(z, s.flip(0), coefficients[0])
    E, a, scale = coefficients
    M, U, d = s.shape
    num = (E @ (s * a).view(M, U * d)).view(M, U, d)
    return torch.addcmul(z, num, scale)


def crossan_chains(h: torch.Tensor, g: torch.Tensor, mixes: list[tuple[torch.Tensor, ...] | None],
                   blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                   masks: list[torch.Tensor | None], scale: float) -> torch.Tensor:
    """Every chain through every depth: the states s^K [M, U, d_s] from the side inputs ``h`` [K, M, U, d_s]
    and gates ``g`` [K, M, 1, 1]. At depth k: ``z = g·h + (1 − g)·s`` (``g·h`` at the first, s^0 = 0), plus
    the exchange (``mixes[k]``: :meth:`Exchange.coefficients`, None without), through the depth's SANBs
    (``blocks[k]``: down weight and bias, up weight and bias) with keep masks ``masks[k]``
    (:func:`~crossan.towers.sanb.sanb_step`). A function of tensors only, so that ``torch.compile``
    (``train.compile``) makes one graph of the whole side network, forward and backward."""
    s = None
    for k, (dw, db, uw, ub) in enumerate(blocks):
        if s is None:
            z = g[k] * h[k]
        else:
            z = torch.lerp(s, h[k], g[k])  # g·h + (1 − g)·s in one pass
            if mixes[k] is not None:
                z = exchange_into(z, s, mixes[k])
        s = sanb_step(z, dw, db, uw, ub, masks[k], scale)
    return s


class InputMix(nn.Module):
    """``exchange: inputs`` (METHOD.md §1, §6): chain t's input at depth k mixes the tapped states of every
    *present* modality, ``Σ_m α_{t,m}^k · h_m^{l_k}`` with ``α_{t,·}^k = softmax(a_{t,·}^k)`` renormalised over
    the modalities the item has (0 when it has none). Logits ``a`` [K, M, M] start at 0 on the diagonal (own
    modality) and ``other_logit`` (−2 by default) elsewhere, so each chain starts mostly on its own modality.
    With M = 1 there is nothing to mix (α ≡ 1 on the present modality) and no logits are created.
    """

    def __init__(self, depths: int, num_modalities: int, other_logit: float = -2.0) -> None:
        super().__init__()
        M = num_modalities
        self.logits = None
        if M >= 2:
            init = torch.full((depths, M, M), float(other_logit))
            init[:, torch.arange(M), torch.arange(M)] = 0.0
            self.logits = nn.Parameter(init)

    def forward(self, h: torch.Tensor, a: torch.Tensor, k: int) -> torch.Tensor:
        """The mixed inputs [M, U, d_s] of depth ``k`` from that depth's states ``h`` [M, U, d_s] and presence
        ``a`` as 0/1 [M, U, 1] (one dtype): ``E·(a⊙h) / E·a`` with ``E = exp(a_k − rowmax)``, one matmul."""
        M, U, d = h.shape
        if self.logits is None:
            return h * a
        b = self.logits[k]
        E = torch.exp(b - b.max(1, keepdim=True).values.detach())  # [M, M], entries in (0, 1]
        with full_precision(a.device):  # [M, U] in float32
            den = E @ a.view(M, U).to(E.dtype)
        inv = torch.where(den > 0, 1 / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
        num = (E.to(h.dtype) @ (h * a).view(M, U * d)).view(M, U, d)
        return num * inv.to(h.dtype)[..., None]


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

    reads_tap_major = True

    def __init__(self, features: FeatureSource, modalities: list[str], num_items: int, dim: int,
                 cfg: CrossanConfig | None = None) -> None:
        super().__init__(features, modalities, num_items, dim)
        self.cfg = cfg = cfg if cfg is not None else CrossanConfig()
        K, M, ds = self.num_taps, len(self.modalities), cfg.side_dim
        self.proj = ModalityProjection(self.dims, ds)
        # one SANB per (depth, modality); with share_adapters one per depth, applied to every modality
        self.adapters = nn.ModuleList(
            GroupedSANB(1 if cfg.share_adapters else M, ds, cfg.bottleneck, cfg.dropout, cfg.init_std)
            for _ in range(K))
        # exchange "inputs": z^k = Σ α·h + (1 − g)·s, so the gate acts from depth 2 on (s^0 = 0): K − 1 gates
        self.input_mix = InputMix(K, M, cfg.inputs_other_logit) if cfg.exchange == "inputs" else None
        self.compilable = self.input_mix is None  # exchange "inputs" runs its own loop, never compiled
        self.gate = Gate(K - 1 if self.input_mix is not None else K, M, temperature=cfg.gate_temperature)
        self.exchange = (Exchange(K - 1, M, cfg.gate_temperature)
                         if cfg.exchange == "softmax" and M >= 2 and K >= 2 else None)
        self.heads = GroupedLinear(M, ds, dim)  # W_m, one per modality
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

    def modality_embeddings(self, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-modality embeddings e [U, M, d] (exact zeros for missing modalities) and presence Bool[U, M]."""
        h, present = self.tap_major_inputs(feats, self.proj)  # [K, M, U, d_s] in the compute dtype
        a = present.T.to(h.dtype)[..., None]  # [M, U, 1]
        g = self.gate().to(h.dtype)[..., None, None]  # [K, M, 1, 1]; everything below stays in h's dtype
        s = None  # s^0 = 0
        if self.input_mix is not None:  # exchange "inputs": z^k = Σ_m α_m^k·h_m^k + (1 − g^k)·s^{k−1}
            for k in range(self.num_taps):
                z = self.input_mix(h[k], a, k)
                s = self.adapters[k](z if s is None else torch.addcmul(z, 1 - g[k - 1], s))
            e = self.heads(s) * a
            return e.transpose(0, 1), present
        mixes = [self.exchange.coefficients(a, k - 1, h.dtype) if self.exchange is not None and k > 0 else None
                 for k in range(self.num_taps)]
        masks, scale = self.branch_masks(h.shape[1], h, self.cfg.dropout)
        s = self.side_step(crossan_chains, h)(h, g, mixes, self.sanb_weights(), masks, scale)
        e = self.heads(s) * a  # [M, U, d], zeros for missing modalities
        return e.transpose(0, 1), present

    def encode(self, feats: Features) -> torch.Tensor:
        return self.fusion(*self.modality_embeddings(feats))

    def side_modules(self) -> list[nn.Module]:
        """The side network proper: input projections, SANBs, gates, exchange."""
        return [m for m in (self.proj, self.adapters, self.gate, self.exchange, self.input_mix)
                if m is not None]

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

    def stat_buffers(self) -> list[torch.Tensor]:
        return self.fusion.stat_buffers() if isinstance(self.fusion, MOMEF) else []


@register("crossan")
def build(ctx: TowerContext) -> CrossanTower:
    """CROSSAN over ``ctx.config.modalities``; the FeatureSource comes from ``ctx.features``."""
    cfg = ctx.config
    return finish(CrossanTower(features_from_context(ctx), cfg.modalities, ctx.num_items, cfg.user.dim, cfg.crossan), ctx)

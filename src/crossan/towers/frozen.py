"""Frozen features (METHOD.md §9): a trainable head over each modality's last-layer pooled state.

::

    u_m  = GELU(Linear(D_m → d)(h_m^{L}))        h_m^{L}: the last tap of the cache
    item = Linear(concat(u_1 … u_M) → d)

:class:`ModalityFusionHead` is the same fusion the embedded baselines (FFT, Adapter, LoRA) use over their
pooled last states. Missing modality: its part ``u_m`` is zeros (same at train and eval time).
The whole head trains at ``train.lr`` (group ``heads``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crossan.cache.features import FeatureSource
from crossan.config import TrainConfig
from crossan.towers.base import TowerContext, register
from crossan.towers.content import ContentTower, Features, features_from_context, finish


class ModalityFusionHead(nn.Module):
    """Per modality ``GELU(Linear(D_m → d))``, then ``Linear(concat → d)``; missing parts are zeros (§9)."""

    def __init__(self, dims: dict[str, int], dim: int) -> None:
        super().__init__()
        self.modalities = list(dims)
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, dim), nn.GELU()) for m, d in dims.items()})
        self.fusion = nn.Linear(len(dims) * dim, dim)

    def forward(self, pooled: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """``pooled``: per modality (in ``modalities`` order) [U, D_m]; ``present``: Bool[U, M] → [U, d]."""
        parts = torch.stack([self.proj[m](x) for m, x in zip(self.modalities, pooled)], 1)  # [U, M, d]
        parts = torch.where(present[..., None], parts, torch.zeros_like(parts))
        return self.fusion(parts.flatten(1))

    @staticmethod
    def num_params(dims: list[int], dim: int) -> int:
        return sum(D * dim + dim for D in dims) + len(dims) * dim * dim + dim


class FrozenTower(ContentTower):
    """Frozen-feature baseline: :class:`ModalityFusionHead` over the last tapped state of each modality."""

    def __init__(self, features: FeatureSource, modalities: list[str], num_items: int, dim: int) -> None:
        super().__init__(features, modalities, num_items, dim)
        self.head = ModalityFusionHead(self.dims, dim)

    input_taps = slice(-1, None)  # the last tap only
    input_taps_text = "last-layer states"

    def encode(self, feats: Features) -> torch.Tensor:
        states, present = self.side_inputs(feats, taps=self.input_taps)
        return self.head([s[:, 0] for s in states], present)

    def param_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        return [{"name": "heads", "params": list(self.head.parameters()), "lr": train.lr}]


@register("frozen")
def build(ctx: TowerContext) -> FrozenTower:
    """Frozen features over ``ctx.config.modalities``; the FeatureSource comes from ``ctx.features``."""
    cfg = ctx.config
    return finish(FrozenTower(features_from_context(ctx), cfg.modalities, ctx.num_items, cfg.user.dim), ctx)

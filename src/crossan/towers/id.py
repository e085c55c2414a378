"""ID item tower: a learned embedding per item row (SASRec's item table). The content-free baseline."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crossan.config import TrainConfig
from crossan.towers.base import ItemTower, TowerContext, register


class IDTower(ItemTower):
    def __init__(self, num_items: int, dim: int) -> None:
        super().__init__()
        self.num_items, self.dim = num_items, dim
        self.embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.embedding(items)

    def param_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        return [{"name": "item_embedding", "params": list(self.embedding.parameters()), "lr": train.lr}]


@register("id")
def build(ctx: TowerContext) -> IDTower:
    return IDTower(ctx.num_items, ctx.config.user.dim)

"""Houlsby bottleneck adapters (``method=adapter``, METHOD.md §9), written by hand.

Two adapters per transformer layer of every backbone: one on the attention sublayer's output, one on the
FFN sublayer's output. Houlsby et al. (2019) place the adapter on the sublayer output *before* the residual
add (and, in post-LN models, before the LayerNorm); wrapping the sublayer's output projection as
``y ↦ y + adapter(y)`` does exactly that in every family::

    adapter(y) = W_up · act(W_down · y + b_down) + b_up        D → r → D (r = adapter.bottleneck)

Insertion points, relative to each layer (transformers 5; the 4.x names of ViT/AST are accepted too):

==========  ==========================  ===========================
family      attention output            FFN output
==========  ==========================  ===========================
bert        ``attention.output.dense``  ``output.dense``
videomae    ``attention.output.dense``  ``output.dense``
vit, ast    ``attention.o_proj``        ``mlp.fc2``
whisper     ``self_attn.out_proj``      ``fc2``
==========  ==========================  ===========================

(BERT adds the residual and LayerNorm inside its ``*Output`` modules, after ``dense``; VideoMAE, ViT, AST
and Whisper add the residual in the layer's forward. The output projection is the last op of each
sublayer before that add in all of them. In BERT the sublayer's dropout follows ``dense``, so here it acts on
the adapted output at train time; Houlsby's implementation (and IISAN's) applies the adapter after that
dropout instead. The two orders are the same function at evaluation time and differ only in where training's
dropout falls; this is a known deviation, kept so that published Adapter figures stay reproducible.)

The backbone stays frozen; adapters train at ``train.lr_peft`` (group ``adapters``), the head at
``train.lr``. Weights start from N(0, ``adapter.init_std``²) and biases at zero, so each adapter is near
the identity; ``adapter.zero_init_up=true`` makes the up-projection exactly zero (the adapted backbone then
gives exactly the original outputs). Trainable parameters per insertion: 2·D·r + r + D.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crossan.config import TrainConfig
from crossan.encoders.base import ModalityEncoder
from crossan.towers.base import TowerContext, register
from crossan.towers.endtoend import EndToEndTower, build_endtoend, layer_prefix, layer_stack
from crossan.towers.options import AdapterConfig

ATTENTION_OUTPUT: dict[str, tuple[str, ...]] = {
    "bert": ("attention.output.dense",),
    "videomae": ("attention.output.dense",),
    "vit": ("attention.o_proj", "attention.output.dense"),
    "ast": ("attention.o_proj", "attention.output.dense"),
    "whisper": ("self_attn.out_proj",),
}
"""Per family, candidate paths (relative to a layer) of the attention sublayer's output projection."""

FFN_OUTPUT: dict[str, tuple[str, ...]] = {
    "bert": ("output.dense",),
    "videomae": ("output.dense",),
    "vit": ("mlp.fc2", "output.dense"),
    "ast": ("mlp.fc2", "output.dense"),
    "whisper": ("fc2",),
}
"""Per family, candidate paths (relative to a layer) of the FFN sublayer's output projection."""


class BottleneckAdapter(nn.Module):
    """``W_up · act(W_down · y + b_down) + b_up`` (the residual is added by :class:`AdaptedLinear`)."""

    def __init__(self, dim: int, bottleneck: int, activation: str = "gelu", init_std: float = 0.01,
                 zero_init_up: bool = False) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = {"gelu": nn.GELU, "relu": nn.ReLU}[activation]()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        if zero_init_up:
            nn.init.zeros_(self.up.weight)
        else:
            nn.init.normal_(self.up.weight, std=init_std)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(y)))

    @staticmethod
    def num_params(dim: int, bottleneck: int) -> int:
        return 2 * dim * bottleneck + bottleneck + dim


class AdaptedLinear(nn.Module):
    """A frozen output projection followed by an adapter: ``y = base(x); y + adapter(y)``."""

    def __init__(self, base: nn.Linear, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.adapter(y)


def insertion_points(model: nn.Module, family: str, num_layers: int) -> list[str]:
    """Full module names of the output projections to adapt: per layer, attention then FFN."""
    if family not in ATTENTION_OUTPUT:
        raise ValueError(f"no adapter insertion points known for family {family!r}")
    prefix = layer_prefix(model, num_layers)
    names = []
    for i, layer in enumerate(layer_stack(model, num_layers)):
        for kind, candidates in (("attention", ATTENTION_OUTPUT[family]), ("FFN", FFN_OUTPUT[family])):
            for rel in candidates:
                try:
                    sub = layer.get_submodule(rel)
                except AttributeError:
                    continue
                if isinstance(sub, (nn.Linear, AdaptedLinear)):
                    names.append(f"{prefix}.{i}.{rel}")
                    break
            else:
                raise ValueError(f"{type(layer).__name__} (layer {i} of a {family} model): no {kind} output "
                                 f"projection at any of {list(candidates)}")
    return names


def insert_adapters(model: nn.Module, family: str, num_layers: int, options: AdapterConfig) -> list[BottleneckAdapter]:
    """Wrap every insertion point of ``model`` (in place) and return the new adapters in order."""
    adapters = []
    for name in insertion_points(model, family, num_layers):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        if isinstance(base, AdaptedLinear):
            raise ValueError(f"{name} already carries an adapter")
        adapter = BottleneckAdapter(base.out_features, options.bottleneck, options.activation, options.init_std,
                                    options.zero_init_up)
        adapter.to(device=base.weight.device, dtype=base.weight.dtype)
        setattr(parent, child, AdaptedLinear(base, adapter))
        adapters.append(adapter)
    return adapters


class AdapterTower(EndToEndTower):
    """Frozen backbones with Houlsby adapters in every layer, under :class:`ModalityFusionHead`."""

    method = "adapter"

    def adapt(self, modality: str, encoder: ModalityEncoder) -> list[BottleneckAdapter]:
        options: AdapterConfig = self.options  # type: ignore[assignment]
        found = insert_adapters(encoder.model, encoder.family, encoder.num_layers, options)
        for a in found:
            a.requires_grad_(True)
        # kept in the plain dict self.adapted, not as submodules: registering them twice would duplicate
        # their state-dict entries
        return found

    def adapter_modules(self, modality: str) -> list[BottleneckAdapter]:
        """The adapters inserted into ``modality``'s backbone, per layer attention then FFN."""
        return list(self.adapted[modality])

    def backbone_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        params = [p for m in self.modalities for a in self.adapted[m] for p in a.parameters()]
        return [{"name": "adapters", "params": params, "lr": train.lr_peft}]


@register("adapter")
def build(ctx: TowerContext) -> AdapterTower:
    """Adapters over ``ctx.config.modalities`` (options ``ctx.config.adapter``)."""
    return build_endtoend(AdapterTower, ctx)  # type: ignore[return-value]

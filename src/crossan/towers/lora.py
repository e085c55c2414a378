"""LoRA (``method=lora``, METHOD.md §9) through ``peft``: rank-r updates on every layer's query and value.

``peft.inject_adapter_in_model`` wraps each target ``nn.Linear`` in place as ``W x + (α/r) · B A dropout(x)``
with ``A`` drawn (Kaiming-uniform) and ``B = 0``: the pretrained weights are kept as they are (moved under
``base_layer``, never re-initialised) and a freshly wrapped model gives exactly the original outputs.

Targets, resolved per family inside each layer of the backbone (transformers 5):

==========================  ======================
family                      query, value
==========================  ======================
bert, videomae              ``query``, ``value``
vit, ast, whisper           ``q_proj``, ``v_proj``
==========================  ======================

``lora.targets`` overrides them with module names matched as peft matches them (full name equal to, or
ending in, ``.NAME``); each backbone takes the names that match in it. The backbone stays frozen; the LoRA
matrices train at ``train.lr_peft`` (group ``lora``), the head at ``train.lr``. Trainable parameters per
target: r · (in + out).
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from crossan.config import TrainConfig
from crossan.encoders.base import ModalityEncoder
from crossan.towers.base import TowerContext, register
from crossan.towers.endtoend import EndToEndTower, build_endtoend, layer_prefix, layer_stack
from crossan.towers.options import LoRAConfig

QUERY_VALUE: tuple[tuple[str, ...], tuple[str, ...]] = (("query", "q_proj"), ("value", "v_proj"))
"""Names of the query and value projections across families (BERT/VideoMAE; ViT/AST/Whisper)."""


def default_targets(model: nn.Module, num_layers: int) -> list[str]:
    """Full names of each layer's query and value ``nn.Linear`` (exactly one of each per layer)."""
    prefix = layer_prefix(model, num_layers)
    names = []
    for i, layer in enumerate(layer_stack(model, num_layers)):
        for kind, candidates in zip(("query", "value"), QUERY_VALUE):
            hits = [n for n, mod in layer.named_modules()
                    if isinstance(mod, nn.Linear) and n.rpartition(".")[2] in candidates]
            if len(hits) != 1:
                raise ValueError(f"{type(layer).__name__} (layer {i}): expected one {kind} projection named one of "
                                 f"{list(candidates)}, found {hits}")
            names.append(f"{prefix}.{i}.{hits[0]}")
    return names


def matching_modules(model: nn.Module, targets: list[str]) -> list[str]:
    """Names of the modules of ``model`` that peft would match with ``targets``."""
    return [n for n, _ in model.named_modules() if n and any(n == t or n.endswith("." + t) for t in targets)]


def lora_layers(model: nn.Module) -> list[nn.Module]:
    """The peft LoRA layers inside ``model``."""
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA matrices (``lora_A``, ``lora_B``, and embedding variants) of every LoRA layer of ``model``."""
    params: list[nn.Parameter] = []
    for layer in lora_layers(model):
        for attr in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
            holder = getattr(layer, attr, None)
            if isinstance(holder, (nn.ModuleDict, nn.ParameterDict)):
                params += list(holder.parameters())
    return params


def inject_lora(model: nn.Module, targets: list[str], options: LoRAConfig) -> list[str]:
    """Wrap ``targets`` (full module names) of ``model`` in place; returns them."""
    config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=list(targets), bias="none")
    inject_adapter_in_model(config, model)
    return targets


class LoRATower(EndToEndTower):
    """Frozen backbones with LoRA on query/value of every layer, under :class:`ModalityFusionHead`."""

    method = "lora"

    @property
    def targets(self) -> dict[str, list[str]]:
        """Per modality, the full names of the wrapped modules inside its backbone."""
        return self.adapted

    def adapt(self, modality: str, encoder: ModalityEncoder) -> list[str]:
        options: LoRAConfig = self.options  # type: ignore[assignment]
        model = encoder.model
        if options.targets:
            names = [n for n in matching_modules(model, options.targets) if isinstance(model.get_submodule(n), nn.Linear)]
            if not names:
                raise ValueError(f"lora.targets={options.targets} match no linear layer of the {modality} encoder "
                                 f"{encoder.name} ({encoder.family})")
        else:
            names = default_targets(model, encoder.num_layers)
        inject_lora(model, names, options)
        model.requires_grad_(False)
        for p in lora_parameters(model):
            p.requires_grad_(True)
        if options.targets:  # a pattern can also match modules off the item's path (BERT's and ViT's pooler)
            from crossan.towers.fft import unreachable_parameters

            # the probe's forward runs peft's dropout, which draws from the generators: forked, so that naming
            # the default targets trains exactly as leaving them to the default does
            cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
            with torch.random.fork_rng(devices=cuda):
                idle = sorted({n.rsplit(".lora_", 1)[0] for n in unreachable_parameters(encoder)})
            if idle:
                raise ValueError(f"lora.targets={options.targets} wrap modules of the {modality} encoder that never "
                                 f"reach the item embedding ({', '.join(idle[:5])}): their LoRA weights would be "
                                 "counted as trainable but never train; narrow the targets")
        return names

    def backbone_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        params = [p for e in self.encoders.values() for p in lora_parameters(e.model)]
        return [{"name": "lora", "params": params, "lr": train.lr_peft}]


@register("lora")
def build(ctx: TowerContext) -> LoRATower:
    """LoRA over ``ctx.config.modalities`` (options ``ctx.config.lora``)."""
    return build_endtoend(LoRATower, ctx)  # type: ignore[return-value]

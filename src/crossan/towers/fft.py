"""Full fine-tuning (``method=fft``, METHOD.md §9): every backbone parameter trains.

Each modality's backbone runs forward and backward at every step; its parameters train at
``train.lr_backbone`` (one group per modality, ``backbone.<modality>``), the fusion head at ``train.lr``.

Two kinds of backbone parameter stay frozen, both listed in :attr:`FFTTower.frozen`:

* parameters the model itself keeps fixed (Whisper's sinusoidal position table), and
* parameters that cannot reach the item embedding, found by one probe forward/backward at build time: the
  item embedding reads ``hidden_states[L]``, so a pooler (BERT, ViT) and a final LayerNorm applied after the
  last layer (ViT, AST) are never on its path. Training them would change nothing, and
  DistributedDataParallel refuses trainable parameters that receive no gradient.

``fft.gradient_checkpointing=true`` recomputes layer activations in the backward pass.
"""

from __future__ import annotations

from typing import Any

import torch

from crossan.config import TrainConfig
from crossan.encoders.base import ModalityEncoder
from crossan.towers.base import TowerContext, register
from crossan.towers.endtoend import EndToEndTower, build_endtoend, pooled_last_state, split_inputs

FIXED_BY_MODEL: dict[str, tuple[str, ...]] = {"whisper": ("embed_positions",)}
"""Per family, submodules the transformers model itself freezes (``requires_grad_(False)`` in its code)."""


def unreachable_parameters(encoder: ModalityEncoder) -> list[str]:
    """Names of trainable parameters that get no gradient from the pooled last state (one placeholder item)."""
    inputs = split_inputs(encoder, encoder.process([encoder.placeholder()]))[0]
    params = [(n, p) for n, p in encoder.model.named_parameters() if p.requires_grad]
    with torch.enable_grad():
        pooled_last_state(encoder, inputs).sum().backward()
    names = [n for n, p in params if p.grad is None]
    for _, p in params:
        p.grad = None
    return names


class FFTTower(EndToEndTower):
    """Full fine-tuning of every modality's backbone under :class:`ModalityFusionHead`."""

    method = "fft"

    @property
    def frozen(self) -> dict[str, list[str]]:
        """Per modality, the backbone parameters left frozen (see the module docstring)."""
        return self.adapted

    def adapt(self, modality: str, encoder: ModalityEncoder) -> list[str]:
        model = encoder.model
        model.requires_grad_(True)
        fixed = []
        for path in FIXED_BY_MODEL.get(encoder.family, ()):
            try:
                sub = model.get_submodule(path)
            except AttributeError:
                continue
            sub.requires_grad_(False)
            fixed += [f"{path}.{n}" for n, _ in sub.named_parameters()]
        unused = unreachable_parameters(encoder)
        for name in unused:
            model.get_parameter(name).requires_grad_(False)
        return fixed + unused

    def backbone_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        text_lr = getattr(self.options, "lr_text", None)
        return [
            {"name": f"backbone.{m}", "params": [p for p in e.parameters() if p.requires_grad],
             "lr": text_lr if m == "text" and text_lr is not None else train.lr_backbone}
            for m, e in self.encoders.items()
        ]


@register("fft")
def build(ctx: TowerContext) -> FFTTower:
    """FFT over ``ctx.config.modalities`` (encoders from ``ctx.config.encoders``; options ``ctx.config.fft``)."""
    return build_endtoend(FFTTower, ctx)  # type: ignore[return-value]

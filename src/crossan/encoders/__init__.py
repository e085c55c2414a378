"""Frozen per-modality encoders: text (BERT-like), image (ViT, EfficientNet-Lite0), video (VideoMAE, or an image
CNN per frame), audio (AST, Whisper).

``build_encoder(modality, spec)`` gives a :class:`ModalityEncoder`; ``resolve_specs(cfg)`` turns a run
configuration (preset + overrides) into the spec per modality. See :mod:`crossan.encoders.base` for the
interface and :mod:`crossan.encoders.backbones` for how a spec names a model.
"""

from __future__ import annotations

from crossan.config import EncoderSpec
from crossan.encoders.backbones import (
    FAMILIES,
    BackboneInfo,
    EncoderSpecError,
    describe_backbone,
    load_backbone,
    parse_config_spec,
)
from crossan.encoders.base import (
    EncodedBatch,
    LoadedMedia,
    ModalityEncoder,
    describe_encoder,
    pool,
    resolve_pooling,
    tap_indices,
)
from crossan.encoders.presets import PRESETS, preset_specs, resolve_specs

__all__ = [
    "FAMILIES",
    "PRESETS",
    "BackboneInfo",
    "EncodedBatch",
    "EncoderSpecError",
    "LoadedMedia",
    "ModalityEncoder",
    "build_encoder",
    "describe_backbone",
    "describe_encoder",
    "encoder_class",
    "load_backbone",
    "parse_config_spec",
    "pool",
    "preset_specs",
    "resolve_pooling",
    "resolve_specs",
    "tap_indices",
]


def encoder_class(modality: str, family: str | None = None) -> type[ModalityEncoder]:
    """The wrapper class of a modality (and backbone family: a CNN has its own wrappers)."""
    from crossan.encoders.audio import AudioEncoder
    from crossan.encoders.text import TextEncoder
    from crossan.encoders.vision import ImageEncoder, VideoEncoder

    if family == "efficientnet" and modality in ("image", "video"):
        from crossan.encoders.cnn import CNNImageEncoder, CNNVideoEncoder

        return CNNImageEncoder if modality == "image" else CNNVideoEncoder

    classes: dict[str, type[ModalityEncoder]] = {
        "text": TextEncoder,
        "image": ImageEncoder,
        "video": VideoEncoder,
        "audio": AudioEncoder,
    }
    if modality not in classes:
        raise ValueError(f"unknown modality {modality!r}; expected one of {list(classes)}")
    return classes[modality]


def build_encoder(modality: str, spec: EncoderSpec, device: str = "cpu") -> ModalityEncoder:
    """Load (or build) the backbone that ``spec`` names, with its preprocessing, in eval mode."""
    info = describe_backbone(modality, spec)
    encoder = encoder_class(modality, info.family)(info, spec)
    return encoder.to(device).eval()

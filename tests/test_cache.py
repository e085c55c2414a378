"""The layer-state cache: contents, resumption, sharding, verification, bad media, live features."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crossan.cache import (
    CacheMismatchError,
    CacheMissingError,
    LiveFeatures,
    TensorFeatures,
    build_cache,
    cache_command,
    default_cache_dir,
    join_shards,
    open_cache,
    open_features,
)
from crossan.cache.layout import cache_command_line
from crossan.cache.workarea import shard_span
from crossan.config import Config
from crossan.data.catalogue import MODALITIES, Catalogue, ItemRecord
from crossan.data.media import MediaError
from crossan.encoders import build_encoder, resolve_specs
from crossan.errors import CacheError
from media_helpers import FakeData, make_dataset, write_image

ALL = list(MODALITIES)
WHISPER = ("config:whisper:d_model=64,encoder_layers=2,encoder_attention_heads=2,encoder_ffn_dim=128,"
           "num_mel_bins=16,max_source_positions=50,decoder_layers=1,decoder_attention_heads=2")
FILES = ("states.npy", "present.npy", "manifest.json")


class Interrupted(Exception):
    """Stands in for a killed process."""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> FakeData:
    return make_dataset(tmp_path_factory.mktemp("dataset"), n=10)


def make_cfg(cache_dir: Path, data: FakeData | None = None, **encoders: object) -> Config:
    cfg = Config()
    cfg.encoders.preset = "tiny"
    cfg.encoders.batch_size = 3  # 10 items: batches of rows 1-3, 4-6, 7-9, 10
    cfg.cache.dir = str(cache_dir)
    cfg.precision = "fp32"  # states are compared with direct fp32 forwards; bf16 caches: tests/test_bf16.py
    if data is not None:
        cfg.data.path = str(data.catalogue.root)
    for key, value in encoders.items():
        modality, name = key.split("__")
        setattr(getattr(cfg.encoders, modality), name, value)
    return cfg


def read_bytes(folder: Path, modality: str) -> dict[str, bytes]:
    return {f: (folder / modality / f).read_bytes() for f in FILES}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, data: FakeData) -> Path:
    """An uninterrupted single-process build of all four modalities: the reference."""
    root = tmp_path_factory.mktemp("cache_ref")
    build_cache(make_cfg(root), data, ALL, progress=False)
    return root


# --------------------------------------------------------------------------------------------- contents
def test_layout_manifest_and_presence(built: Path, data: FakeData) -> None:
    for m in ALL:
        states = np.load(built / m / "states.npy", mmap_mode="r")
        present = np.load(built / m / "present.npy")
        manifest = json.loads((built / m / "manifest.json").read_text())
        assert states.dtype == np.float16 and states.shape == (11, 3, 64)
        assert present.dtype == np.bool_ and not present[0] and not states[0].any()
        missing_row = {"text": 2, "image": 3, "video": 4, "audio": 5}[m]
        assert not present[missing_row] and not states[missing_row].any()
        assert present.sum() == 9 and all(states[r].any() for r in range(1, 11) if present[r])
        assert manifest["taps"] == [0, 1, 2] and manifest["random_init"] is True
        assert manifest["num_items"] == 10 and manifest["num_present"] == 9 and manifest["num_missing"] == 1
        assert manifest["pooling"] == ("mean" if m == "video" else "cls")
        assert set(manifest["versions"]) >= {"torch", "transformers"}
        assert len(manifest["item_fingerprint"]) == 16 and "preprocessing" in manifest
    assert not list(built.glob("*.partial")) and not list(built.glob("*.shards"))


@pytest.mark.parametrize("modality", ALL)
def test_cached_states_equal_direct_forward(built: Path, data: FakeData, modality: str) -> None:
    features = open_cache(make_cfg(built), data, [modality])
    encoder = build_encoder(modality, resolve_specs(make_cfg(built), [modality])[modality])
    records = [data.catalogue[i] for i in data.item_ids[1:]]
    inputs, present = encoder.prepare(records, data.catalogue)
    with torch.no_grad():
        direct = encoder(inputs)  # one batch of all items, placeholders included
    states, cached_present = features.gather(torch.arange(1, 11))[modality]
    assert torch.equal(cached_present, present)
    direct[~present] = 0
    torch.testing.assert_close(states, direct, atol=2e-3, rtol=2e-3)


def test_whisper_family_cache_equals_direct_forward(tmp_path: Path, data: FakeData) -> None:
    cfg = make_cfg(tmp_path, audio__model=WHISPER, audio__num_taps=3, audio__audio_seconds=1.0)
    build_cache(cfg, data, ["audio"], progress=False)
    manifest = json.loads((tmp_path / "audio" / "manifest.json").read_text())
    assert manifest["family"] == "whisper" and manifest["pooling"] == "mean"
    states, present = open_cache(cfg, data, ["audio"]).gather(torch.arange(11))["audio"]
    encoder = build_encoder("audio", resolve_specs(cfg, ["audio"])["audio"])
    records = [data.catalogue[i] for i in data.item_ids[1:]]
    direct = encoder.encode(records, data.catalogue)
    assert torch.equal(present[1:], direct.present) and not present[0]
    torch.testing.assert_close(states[1:], direct.states, atol=2e-3, rtol=2e-3)


# --------------------------------------------------------------------------------------------- builds
def test_listing_names_every_cache_and_removes_only_outdated_ones(tmp_path: Path, data: FakeData, built: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`crossan cache --list` finds complete, partial and outdated caches; `--remove-outdated` deletes only the
    one of an older format version (no crossan of this version opens it), not a partial build (the next build
    resumes it) nor a current cache."""
    import shutil

    from crossan.cache.layout import FORMAT_VERSION
    from crossan.cache.listing import find_caches
    from crossan.cli import main

    def kill(modality: str, batch: int) -> None:
        if modality == "image" and batch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        build_cache(make_cfg(tmp_path / "now"), data, ["text", "image"], progress=False, on_batch=kill)
    shutil.copytree(built / "audio", tmp_path / "old" / "nested" / "audio")
    manifest_path = tmp_path / "old" / "nested" / "audio" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = FORMAT_VERSION - 1
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "notes").mkdir()  # not a cache: neither listed nor touched

    entries = {e.path.relative_to(tmp_path).as_posix(): e for e in find_caches(tmp_path)}
    assert set(entries) == {"now/text", "now/image.partial", "old/nested/audio"}
    assert entries["now/text"].state == "complete" and entries["now/text"].num_items == 10
    assert entries["now/image.partial"].state == "partial (2 of 4 batches)"
    assert entries["old/nested/audio"].state == f"outdated (format {FORMAT_VERSION - 1})"
    states = (built / "text" / "states.npy").stat().st_size
    assert entries["now/text"].size_bytes >= states

    assert main(["cache", "--list", f"cache.dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "now/image.partial" in out and "3 cache folders" in out and "1 outdated" in out
    assert main(["cache", "--remove-outdated", f"cache.dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "removed" in out and "2 cache folders" in out
    assert not (tmp_path / "old" / "nested" / "audio").exists()
    assert (tmp_path / "now" / "text" / "states.npy").is_file() and (tmp_path / "now" / "image.partial").is_dir()
    assert (tmp_path / "notes").is_dir()


def test_killed_build_resumes_to_identical_bytes(tmp_path: Path, data: FakeData, built: Path) -> None:
    cfg = make_cfg(tmp_path)
    calls: list[tuple[str, int]] = []

    def kill_after_two(modality: str, batch: int) -> None:
        calls.append((modality, batch))
        if modality == "video" and batch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        build_cache(cfg, data, ALL, progress=False, on_batch=kill_after_two)
    assert (tmp_path / "video.partial").is_dir() and not (tmp_path / "video").exists()
    assert (tmp_path / "text").is_dir() and (tmp_path / "image").is_dir()
    with pytest.raises(CacheMissingError, match="unfinished build"):
        open_cache(cfg, data, ["video"])

    calls.clear()
    build_cache(cfg, data, ALL, progress=False, on_batch=lambda m, b: calls.append((m, b)))
    assert calls == [("video", 2), ("video", 3), ("audio", 0), ("audio", 1), ("audio", 2), ("audio", 3)]
    for m in ALL:
        assert read_bytes(tmp_path, m) == read_bytes(built, m), m
    assert not list(tmp_path.glob("*.partial"))

    calls.clear()  # a completed, matching cache is left alone
    reports = build_cache(cfg, data, ALL, progress=False, on_batch=lambda m, b: calls.append((m, b)))
    assert calls == [] and {r.status for r in reports.values()} == {"up to date"}


def test_build_killed_while_hashing_its_arrays_resumes_with_every_batch_done(
        tmp_path: Path, data: FakeData, built: Path, monkeypatch) -> None:
    """The finish deleted the plan and done mask before hashing the arrays, so a kill during the hashing
    (seconds for a large cache) left a folder the next run did not know and encoded again from scratch."""
    import crossan.cache.workarea as workarea

    cfg = make_cfg(tmp_path)
    real_checksums = workarea.checksums

    def killed(folder: Path) -> dict:
        raise Interrupted

    monkeypatch.setattr(workarea, "checksums", killed)
    with pytest.raises(Interrupted):
        build_cache(cfg, data, ["text"], progress=False)
    monkeypatch.setattr(workarea, "checksums", real_checksums)
    (tmp_path / "text.partial" / ".done.npy.0123456789ab.npy").write_bytes(b"a write killed mid-way")
    calls: list[tuple[str, int]] = []
    build_cache(cfg, data, ["text"], progress=False, on_batch=lambda m, b: calls.append((m, b)))
    assert calls == []  # resumed with every batch done: nothing encoded again
    assert read_bytes(tmp_path, "text") == read_bytes(built, "text")
    assert not (tmp_path / "text.partial").exists()
    assert not {"done.npy", "plan.json", "corrupt.jsonl"} & {p.name for p in (tmp_path / "text").iterdir()}
    assert not list((tmp_path / "text").glob(".*"))  # nor a temporary file of a killed write


def kill_when(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, hit: Callable[..., bool]) -> None:
    """Make ``owner.name`` raise :class:`Interrupted` (the process is killed there) when ``hit(*args)``."""
    real = getattr(owner, name)

    def killed(*args: Any, **kwargs: Any) -> Any:
        if hit(*args, **kwargs):
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, killed)


INSTALL_STEPS: dict[str, tuple[Any, str, Callable[..., bool], str]] = {
    # step of finish_single / install: (owner, function, when it is killed, the next build's status)
    "deleting the plan": (Path, "unlink", lambda path, **kw: path.name == "plan.json", "built"),
    "moving the old cache aside": (os, "replace", lambda src, dst: Path(dst).name == "text.old", "built"),
    "moving the new cache in": (os, "replace", lambda src, dst: Path(src).name == "text.partial", "built"),
    "deleting the old cache": (shutil, "rmtree", lambda path, **kw: Path(path).name == "text.old", "up to date"),
}


@pytest.mark.parametrize("step", list(INSTALL_STEPS))
def test_build_killed_while_installing_finishes_the_install_without_encoding(
        tmp_path: Path, data: FakeData, built: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """A rebuild (the cache is damaged) killed at each step of moving its finished folder into place. The
    plan and done mask were deleted before the renames, so a kill from then on left a finished folder the
    next build did not know: it encoded every batch again (and a ``text.old`` could stay behind). Now the
    next build installs the finished folder, or finds the install done, and encodes nothing; meanwhile the
    cache folder is the old cache, absent or the new one, never a folder holding build records."""
    cfg = make_cfg(tmp_path)
    build_cache(cfg, data, ["text"], progress=False)
    states = tmp_path / "text" / "states.npy"
    damaged = bytearray(states.read_bytes())
    damaged[-1] ^= 0xFF
    states.write_bytes(bytes(damaged))
    owner, name, hit, status = INSTALL_STEPS[step]
    kill_when(monkeypatch, owner, name, hit)
    with pytest.raises(Interrupted):
        build_cache(cfg, data, ["text"], progress=False)
    monkeypatch.undo()
    cache_files = sorted(["states.npy", "present.npy", "sources.npy", "manifest.json"])
    if (tmp_path / "text").exists():
        assert sorted(p.name for p in (tmp_path / "text").iterdir()) == cache_files
    else:
        with pytest.raises(CacheMissingError, match="unfinished build"):
            open_cache(cfg, data, ["text"])

    calls: list[tuple[str, int]] = []
    reports = build_cache(cfg, data, ["text"], progress=False, on_batch=lambda m, b: calls.append((m, b)))
    assert calls == [] and reports["text"].status == status
    assert read_bytes(tmp_path, "text") == read_bytes(built, "text")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["text"]
    assert sorted(p.name for p in (tmp_path / "text").iterdir()) == cache_files
    open_cache(cfg, data, ["text"])


def test_sharded_build_joins_to_identical_bytes(tmp_path: Path, data: FakeData, built: Path) -> None:
    cfg = make_cfg(tmp_path)
    assert [shard_span(10, 3, i, 3)[:2] for i in range(3)] == [(0, 4), (4, 7), (7, 11)]
    for shard in (2, 0, 1):
        cache_command(cfg, data, ALL, shard=shard, num_shards=3, join=False)
    assert not (tmp_path / "text").exists()
    cache_command(cfg, data, ALL, shard=None, num_shards=1, join=True)
    for m in ALL:
        assert read_bytes(tmp_path, m) == read_bytes(built, m), m
    assert not list(tmp_path.glob("*.shards"))


def test_join_refuses_incomplete_shards(tmp_path: Path, data: FakeData) -> None:
    cfg = make_cfg(tmp_path)
    build_cache(cfg, data, ["text"], shard=0, num_shards=2, progress=False)
    with pytest.raises(RuntimeError, match=r"shards \[1\] of 2"):
        join_shards(cfg, data, ["text"])


def test_a_shard_build_beside_shards_of_another_count_is_refused_before_it_encodes(tmp_path: Path,
                                                                                   data: FakeData) -> None:
    """Shards of a build with another --num-shards were found only by the --join, after every rank had encoded
    its shard, and the message did not name the folders to remove."""
    cfg = make_cfg(tmp_path)
    build_cache(cfg, data, ["text"], shard=0, num_shards=2, progress=False)
    stale = tmp_path / "text.shards" / "0-of-2"
    with pytest.raises(CacheError, match=rf"holds shards of a build with --num-shards \[2\], which cannot be joined "
                                         rf"with this build's 3; remove them \(--num-shards 2: rm -r {stale}\) or "
                                         r"build with --num-shards 2$"):
        build_cache(cfg, data, ["text"], shard=1, num_shards=3, progress=False)
    assert not (tmp_path / "text.shards" / "1-of-3").exists()
    (tmp_path / "text.shards" / "1-of-3").mkdir()  # as an older crossan left it
    with pytest.raises(CacheError, match=rf"different --num-shards \[2, 3\]; remove the stale ones: --num-shards "
                                         rf"2: rm -r {stale}; --num-shards 3: rm -r {stale.parent / '1-of-3'}$"):
        join_shards(cfg, data, ["text"])


@pytest.mark.subprocess
def test_a_reader_waits_for_a_builder_writing_the_cache(built: Path, data: FakeData, capsys) -> None:
    """A training or evaluation opening the cache while `crossan cache` installed or re-recorded it read the
    manifest of one build and the arrays of another: "damaged … rebuild it" for a healthy cache, a missing
    states.npy, or an AttributeError traceback. Readers take the modality's lock shared and wait for a writer."""
    import subprocess
    import sys
    import time

    from crossan.cache.lock import lock_path

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from crossan.cache.lock import build_lock\n"
         "with build_lock(Path(sys.argv[1]), 'text'):\n    print('held', flush=True); time.sleep(1.5)",
         str(lock_path(built, "text"))], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t0 = time.perf_counter()
    features = open_cache(make_cfg(built), data, ["text"])
    waited = time.perf_counter() - t0
    holder.wait(10)
    assert waited > 0.5 and features.modalities == ["text"]
    assert "is writing it; waiting for it to finish before reading" in capsys.readouterr().err


def test_join_of_stale_shards_says_how_to_rebuild_them(tmp_path: Path, data: FakeData) -> None:
    """Shards of an older crossan (an image shard's plan without the ``transparency`` entry of 0.1.10) are
    refused by the join, which said only which field differed; it now gives the shard command that replaces
    them, and a shard built by it joins."""
    cfg = make_cfg(tmp_path, data)
    for shard in (0, 1):
        build_cache(cfg, data, ["image"], shard=shard, num_shards=2, progress=False)
    plan_file = tmp_path / "image.shards" / "0-of-2" / "plan.json"
    plan = json.loads(plan_file.read_text())
    assert plan["manifest"]["preprocessing"].pop("transparency") == "over_white"
    plan_file.write_text(json.dumps(plan))
    with pytest.raises(CacheMismatchError) as err:
        join_shards(cfg, data, ["image"])
    assert err.value.differences == ["image: preprocessing.transparency None in cache vs 'over_white' in config"]
    assert str(err.value).endswith(f"Build the shards again with `{cache_command_line(cfg, ['image'])} --shard I "
                                   "--num-shards 2` (each replaces its stale shard), then `--join` them")
    build_cache(cfg, data, ["image"], shard=0, num_shards=2, progress=False)
    assert join_shards(cfg, data, ["image"])["image"].status == "joined"


# --------------------------------------------------------------------------------------------- verification
def test_mismatched_manifest_names_the_field(built: Path, data: FakeData) -> None:
    cfg = make_cfg(built, text__num_taps=2)
    with pytest.raises(CacheMismatchError) as err:
        open_cache(cfg, data, ["text", "image"])
    assert err.value.differences == ["text: taps [0, 1, 2] in cache vs [0, 2] in config"]
    assert "crossan cache" in str(err.value)

    cfg = make_cfg(built, image__pooling="mean")
    with pytest.raises(CacheMismatchError, match="image: pooling 'cls' in cache vs 'mean' in config"):
        open_cache(cfg, data, ["image"])

    fewer = FakeData(data.item_ids[:-1], data.catalogue)
    with pytest.raises(CacheMismatchError) as err:
        open_cache(make_cfg(built), fewer, ["video"])
    assert any(d.startswith("video: item fingerprint") for d in err.value.differences)
    assert any(d.startswith("video: number of items 10 in cache vs 9") for d in err.value.differences)


@pytest.mark.parametrize("modality", ["image", "video"])
def test_an_image_or_video_cache_of_older_crossan_is_stale(tmp_path: Path, built: Path, data: FakeData,
                                                          modality: str) -> None:
    """Transparent pixels are composited onto white, in images since crossan 0.1.6 and in video frames since
    0.1.10; older caches hold states of the colour stored under them and nothing else in their manifest
    differed, so they were read as current. A manifest without the ``transparency`` entry (as crossan 0.1.9
    wrote it) is now refused by the reader and rebuilt by the builder, to the bytes of a fresh build; the
    other modalities' caches stay in use."""
    old = tmp_path / "old"
    shutil.copytree(built, old)
    manifest = json.loads((old / modality / "manifest.json").read_text())
    assert manifest["preprocessing"].pop("transparency") == "over_white"
    (old / modality / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatchError) as err:
        open_cache(make_cfg(old), data, ["text", modality])
    assert err.value.differences == [
        f"{modality}: preprocessing.transparency None in cache vs 'over_white' in config"]
    reports = build_cache(make_cfg(old), data, ["text", modality], progress=False)
    assert {m: r.status for m, r in reports.items()} == {"text": "up to date", modality: "built"}
    fresh, rebuilt = read_bytes(built, modality), read_bytes(old, modality)
    assert {f: rebuilt[f] == fresh[f] for f in ("states.npy", "present.npy")} == {"states.npy": True,
                                                                                  "present.npy": True}
    open_cache(make_cfg(old), data, ["text", modality])


def test_an_image_cache_from_before_short_pngs_were_refused_is_stale(tmp_path: Path, built: Path,
                                                                     data: FakeData) -> None:
    """Until crossan 0.1.15 a PNG whose data ends after whole rows was encoded with black rows; a cache of such a
    crossan said "up to date" and passed --verify. Its manifest lacks ``short_png`` and is rebuilt once."""
    old = tmp_path / "old"
    shutil.copytree(built, old)
    manifest = json.loads((old / "image" / "manifest.json").read_text())
    assert manifest["preprocessing"].pop("short_png") == "refused"
    (old / "image" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatchError) as err:
        open_cache(make_cfg(old), data, ["image"])
    assert err.value.differences == ["image: preprocessing.short_png None in cache vs 'refused' in config"]
    assert build_cache(make_cfg(old), data, ["image"], progress=False)["image"].status == "built"
    assert read_bytes(old, "image")["states.npy"] == read_bytes(built, "image")["states.npy"]


def test_missing_cache_says_how_to_build_it(tmp_path: Path, data: FakeData) -> None:
    cfg = make_cfg(tmp_path / "empty", data)
    with pytest.raises(CacheMissingError) as err:
        open_cache(cfg, data, ["image", "audio"])
    message = str(err.value)
    assert "crossan cache --data" in message and "--modalities image,audio" in message and "--preset tiny" in message


def test_default_cache_dir(tmp_path: Path, data: FakeData, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSAN_CACHE_DIR", str(tmp_path / "caches"))
    cfg = make_cfg(tmp_path, data)
    cfg.cache.dir = ""
    folder = default_cache_dir(cfg, data)
    assert folder.parent.parent == tmp_path / "caches" and folder.name == "tiny"
    assert folder.parent.name.startswith(data.catalogue.root.name + "-")
    cfg.encoders.text.num_taps = 2  # a changed encoder setting gets its own folder
    assert default_cache_dir(cfg, data).name.startswith("tiny-")
    assert default_cache_dir(cfg, data, "text").name.startswith("tiny-")
    assert default_cache_dir(cfg, data, "image") == folder  # ... for that modality only


def test_changing_one_encoder_leaves_the_other_modalities_caches_in_use(
        tmp_path: Path, data: FakeData, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``cache.dir``, a run that changes the audio encoder finds the text cache built before it."""
    monkeypatch.setenv("CROSSAN_CACHE_DIR", str(tmp_path / "caches"))
    cfg = make_cfg(tmp_path, data)
    cfg.cache.dir = ""
    build_cache(cfg, data, ["text"], progress=False)
    text_files = read_bytes(default_cache_dir(cfg, data, "text"), "text")
    changed = make_cfg(tmp_path, data, audio__audio_seconds=0.5)
    changed.cache.dir = ""
    reports = build_cache(changed, data, ["text", "audio"], progress=False)
    assert reports["text"].status == "up to date" and reports["audio"].status != "up to date"
    assert read_bytes(default_cache_dir(changed, data, "text"), "text") == text_files
    audio_root = default_cache_dir(changed, data, "audio")
    assert audio_root != default_cache_dir(changed, data, "text") and (audio_root / "audio").is_dir()
    open_cache(changed, data, ["text", "audio"])
    with pytest.raises(CacheMissingError, match="no layer-state cache for audio"):
        open_cache(cfg, data, ["text", "audio"])  # the preset's audio was never built


# --------------------------------------------------------------------------------------------- bad media
@pytest.fixture
def corrupt_data(tmp_path: Path, data: FakeData) -> FakeData:
    """The dataset plus item 'bad' whose jpg, mp4 and wav are corrupt."""
    root = data.catalogue.root
    for name, content in [("bad.jpg", b"\xff\xd8\xff\xe0 not a jpeg"), ("bad.mp4", b"\x00\x00\x00\x18ftypmp42 junk"),
                          ("bad.wav", b"RIFF\x10\x00\x00\x00WAVEfmt junk")]:
        (root / name).write_bytes(content)
    records = list(data.catalogue) + [ItemRecord("bad", "a fine title", "bad.jpg", "bad.mp4", "bad.wav")]
    return FakeData(data.item_ids + ["bad"], Catalogue(root, records))


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_corrupt_file_stops_build_naming_item(tmp_path: Path, corrupt_data: FakeData, modality: str) -> None:
    cfg = make_cfg(tmp_path)
    good = FakeData(corrupt_data.item_ids[:-1], corrupt_data.catalogue)
    build_cache(cfg, good, [modality], progress=False)  # a completed cache of another item list
    before = read_bytes(tmp_path, modality)
    with pytest.raises(MediaError) as err:
        build_cache(cfg, corrupt_data, [modality], progress=False)
    assert "'bad'" in str(err.value) and f"bad.{ {'image': 'jpg', 'video': 'mp4', 'audio': 'wav'}[modality]}" in str(err.value)
    assert read_bytes(tmp_path, modality) == before  # the completed cache is untouched


def test_corrupt_files_marked_missing_and_counted(tmp_path: Path, corrupt_data: FakeData,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_cfg(tmp_path)
    cfg.cache.on_corrupt = "missing"
    reports = build_cache(cfg, corrupt_data, ALL, progress=False)
    out = capsys.readouterr().out
    for m in ("image", "video", "audio"):
        assert reports[m].num_corrupt == 1 and reports[m].corrupt[0]["item_id"] == "bad"
        assert reports[m].num_present == 9 and reports[m].num_missing == 1
        present = np.load(tmp_path / m / "present.npy")
        assert not present[11] and not np.load(tmp_path / m / "states.npy")[11].any()
        assert json.loads((tmp_path / m / "manifest.json").read_text())["num_corrupt"] == 1
        assert f"{m}: built" in out and "1 corrupt files marked missing" in out
    assert reports["text"].num_corrupt == 0 and reports["text"].num_present == 10
    assert "item 'bad'" in out


def test_build_resumed_under_on_corrupt_error_stops_as_a_build_in_one_go(tmp_path: Path,
                                                                        corrupt_data: FakeData) -> None:
    """``cache.on_corrupt`` was not part of the plan: a build killed under ``missing`` after marking a
    corrupt file missing, resumed under ``error``, completed with the file marked missing, where a build in
    one go under ``error`` stops naming it. Now the resumed build stops with the same error and keeps its
    batches: run again under ``missing``, it encodes only those left."""
    ids = corrupt_data.item_ids
    early = FakeData(ids[:2] + ["bad"] + ids[2:-1], corrupt_data.catalogue)  # 'bad' is row 2, in batch 0 of 4
    straight = make_cfg(tmp_path / "straight")
    with pytest.raises(MediaError) as stopped:
        build_cache(straight, early, ["image"], progress=False)

    cfg = make_cfg(tmp_path / "resumed")
    cfg.cache.on_corrupt = "missing"

    def killed_after_batch_1(modality: str, batch: int) -> None:
        if batch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        build_cache(cfg, early, ["image"], progress=False, on_batch=killed_after_batch_1)
    cfg.cache.on_corrupt = "error"
    with pytest.raises(MediaError) as err:
        build_cache(cfg, early, ["image"], progress=False)
    assert str(err.value) == str(stopped.value)
    assert err.value.item_id == "bad" and err.value.path == str(corrupt_data.catalogue.root / "bad.jpg")
    assert (tmp_path / "resumed" / "image.partial").is_dir() and not (tmp_path / "resumed" / "image").exists()

    cfg.cache.on_corrupt = "missing"
    calls: list[tuple[str, int]] = []
    reports = build_cache(cfg, early, ["image"], progress=False, on_batch=lambda m, b: calls.append((m, b)))
    assert calls == [("image", 2), ("image", 3)]
    assert reports["image"].num_corrupt == 1 and reports["image"].corrupt[0]["row"] == 2
    whole = make_cfg(tmp_path / "whole")
    whole.cache.on_corrupt = "missing"
    build_cache(whole, early, ["image"], progress=False)
    assert read_bytes(tmp_path / "resumed", "image") == read_bytes(tmp_path / "whole", "image")


def test_build_stopped_by_a_corrupt_file_resumes_under_missing(tmp_path: Path, corrupt_data: FakeData) -> None:
    """The other way round: the batches a build finished under ``error`` hold no corrupt file, so the run
    under ``missing`` that follows resumes them (on_corrupt is not part of the plan) instead of starting over."""
    cfg = make_cfg(tmp_path)
    with pytest.raises(MediaError, match="'bad'"):
        build_cache(cfg, corrupt_data, ["image"], progress=False)  # 'bad' is row 11, in batch 3
    cfg.cache.on_corrupt = "missing"
    calls: list[tuple[str, int]] = []
    reports = build_cache(cfg, corrupt_data, ["image"], progress=False,
                          on_batch=lambda m, b: calls.append((m, b)))
    assert calls == [("image", 3)] and reports["image"].num_corrupt == 1


def test_a_partial_build_resumes_once_its_corrupt_file_is_replaced(tmp_path: Path, corrupt_data: FakeData) -> None:
    """A build stopped by a corrupt file keeps its finished batches, but once the file was replaced the next
    build discarded them all ("started under other settings (titles or media files changed)") and encoded
    every item again: at scale, hours lost for one file. Now only the batches holding a changed item are
    encoded again, the cache equals a build in one go, and a corrupt entry logged under ``missing`` for the
    replaced file goes with its batch (resumed under ``error``, the build does not stop at it)."""
    root = Path(shutil.copytree(corrupt_data.catalogue.root, tmp_path / "media"))
    ids = corrupt_data.item_ids
    data = FakeData(ids, Catalogue(root, list(corrupt_data.catalogue)))  # 'bad' is row 11, in batch 3
    early = FakeData(ids[:2] + ["bad"] + ids[2:-1], data.catalogue)  # 'bad' is row 2, in batch 0
    cfg, killed = make_cfg(tmp_path / "stopped"), make_cfg(tmp_path / "killed")
    with pytest.raises(MediaError, match="'bad'"):
        build_cache(cfg, data, ["image"], progress=False)  # batches 0-2 done

    def kill_after_batch_1(modality: str, batch: int) -> None:
        if batch == 1:
            raise Interrupted

    killed.cache.on_corrupt = "missing"
    with pytest.raises(Interrupted):  # batches 0-1 done, 'bad' logged corrupt
        build_cache(killed, early, ["image"], progress=False, on_batch=kill_after_batch_1)
    write_image(root / "bad.jpg", (10, 200, 30))
    killed.cache.on_corrupt = "error"
    calls: list[tuple[str, int]] = []
    for c, d, redone in ((cfg, data, [3]), (killed, early, [0, 2, 3])):
        calls.clear()
        reports = build_cache(c, d, ["image"], progress=False, on_batch=lambda m, b: calls.append((m, b)))
        assert calls == [("image", b) for b in redone]
        assert reports["image"].num_corrupt == 0
        whole = make_cfg(tmp_path / f"whole-{len(redone)}")
        build_cache(whole, d, ["image"], progress=False)
        assert read_bytes(Path(c.cache.dir), "image") == read_bytes(Path(whole.cache.dir), "image")


def test_an_update_stopped_by_a_corrupt_file_is_removed_once_the_cache_is_up_to_date_again(
        tmp_path: Path, data: FakeData) -> None:
    """A cover replaced by a corrupt file stops the update (right), leaving ``image.partial``; with the cover
    restored the cache is up to date, and that partial build, which nothing would ever resume, stayed on disk
    for good (``crossan cache --list`` showed it beside the complete cache). It is removed now, and the cache
    is the one built before."""
    cfg = make_cfg(tmp_path)
    build_cache(cfg, data, ["image"], progress=False)
    before = read_bytes(tmp_path, "image")
    cover = data.catalogue.root / next(r.image for r in data.catalogue if r.image)
    good = cover.read_bytes()
    cover.write_bytes(good[: len(good) // 3])  # a download cut short
    with pytest.raises(MediaError):
        build_cache(cfg, data, ["image"], progress=False)
    assert len(list(tmp_path.rglob("image.partial"))) == 1
    cover.write_bytes(good)
    calls: list[tuple[str, int]] = []
    reports = build_cache(cfg, data, ["image"], progress=False, on_batch=lambda m, b: calls.append((m, b)))
    assert reports["image"].status == "up to date" and calls == []
    after = read_bytes(tmp_path, "image")
    assert list(tmp_path.rglob("image.partial")) == []
    assert {k: v for k, v in after.items() if k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"}  # the manifest records the file's new date


def test_a_modality_whose_every_file_is_corrupt_is_refused_by_the_cache_command_and_by_runs(
        tmp_path: Path, data: FakeData) -> None:
    """Under ``cache.on_corrupt=missing`` a cover folder of nothing but broken files built a cache with "0/N
    items present", exit 0, and a run then trained on zeros with the modality listed in results.json (or, with
    standardisation, failed blaming the encoder for states all alike): the README says a modality no item has
    is an error when you train or cache it. It is, at both, naming the modality and the way out."""
    from crossan.cache import open_cache
    from crossan.cache.build import cache_command
    from crossan.errors import CacheError

    root = Path(shutil.copytree(data.catalogue.root, tmp_path / "media"))
    records = [dataclasses.replace(r, image="broken.jpg") for r in data.catalogue]
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    broken = FakeData(data.item_ids, Catalogue(root, records))
    cfg = make_cfg(tmp_path / "cache")
    cfg.cache.on_corrupt = "missing"
    n = len(records)
    with pytest.raises(CacheError, match=f"image: none of the {n} items has readable image content \\({n} corrupt, "
                                         "0 without a file\\) — the cache is written, but a run refuses"):
        cache_command(cfg, broken, ["image"], shard=None, num_shards=1, join=False)
    with pytest.raises(CacheError, match=f"modality image: none of the {n} items has image content in the cache"):
        open_cache(cfg, broken, ["image"])
    cache_command(cfg, broken, ["text"], shard=None, num_shards=1, join=False)  # the other modality is fine
    assert open_cache(cfg, broken, ["text"]) is not None


def test_resumed_update_under_error_keeps_the_corrupt_files_its_cache_marked_missing(
        tmp_path: Path, corrupt_data: FakeData) -> None:
    """An update encodes only the changed batches; the corrupt files the cache marked missing elsewhere stay
    marked under ``error`` (no file of theirs is read), resumed or not: the same bytes as an update in one go."""
    root = corrupt_data.catalogue.root
    write_image(root / "changed.jpg", (9, 99, 199))
    records = [dataclasses.replace(r, image="changed.jpg") if r.item_id == "i1" else r
               for r in corrupt_data.catalogue]
    now = FakeData(corrupt_data.item_ids, Catalogue(root, records))  # i1 (row 1, batch 0) has a new image
    calls: list[tuple[str, int]] = []

    def killed(modality: str, batch: int) -> None:
        raise Interrupted

    for folder in ("straight", "resumed"):
        cfg = make_cfg(tmp_path / folder)
        cfg.cache.on_corrupt = "missing"
        build_cache(cfg, corrupt_data, ["image"], progress=False)  # 'bad' (row 11) marked missing
        cfg.cache.on_corrupt = "error"
        if folder == "resumed":  # killed once its one batch is done
            with pytest.raises(Interrupted):
                build_cache(cfg, now, ["image"], progress=False, on_batch=killed)
        calls.clear()
        reports = build_cache(cfg, now, ["image"], progress=False, on_batch=lambda m, b: calls.append((m, b)))
        assert calls == ([] if folder == "resumed" else [("image", 0)])
        assert reports["image"].status == "updated" and reports["image"].num_corrupt == 1
    assert read_bytes(tmp_path / "resumed", "image") == read_bytes(tmp_path / "straight", "image")


# --------------------------------------------------------------------------------------------- live features
def test_live_features_match_cache(built: Path, data: FakeData) -> None:
    cfg = make_cfg(built)
    cached = open_features(cfg, data, ALL, "cpu")
    assert isinstance(cached, TensorFeatures)
    cfg.cached = False
    live = open_features(cfg, data, ALL, "cpu")
    assert isinstance(live, LiveFeatures) and live.num_taps == 3 and live.dims == cached.dims
    items = torch.tensor([[0, 3, 1, 3], [10, 2, 5, 4]])
    a, b = cached.gather(items), live.gather(items)
    for m in ALL:
        assert a[m][0].shape == b[m][0].shape == (2, 4, 3, 64)
        assert torch.equal(a[m][1], b[m][1])
        torch.testing.assert_close(b[m][0], a[m][0], atol=2e-3, rtol=2e-3)


def test_open_features_memory_maps_large_caches(built: Path, data: FakeData) -> None:
    cfg = make_cfg(built)
    cfg.cache.memory_limit_gb = 0.0
    mapped = open_features(cfg, data, ["image"], "cpu")
    assert isinstance(mapped._states["image"], np.memmap)
    in_memory = open_features(make_cfg(built), data, ["image"], "cpu")
    assert isinstance(in_memory._states["image"], torch.Tensor)
    items = torch.tensor([3, 0, 7])
    torch.testing.assert_close(mapped.gather(items)["image"][0], in_memory.gather(items)["image"][0])


def test_cache_on_device_switch(built: Path, data: FakeData) -> None:
    # "meta" stands in for an accelerator: the in-memory cache follows the training device unless told not to
    on_device = open_features(make_cfg(built), data, ["image"], "meta")
    assert on_device._states["image"].device.type == "meta"
    cfg = make_cfg(built)
    cfg.cache.on_device = False
    host = open_features(cfg, data, ["image"], "meta")
    assert host._states["image"].device.type == "cpu" and host._present["image"].device.type == "cpu"


def test_live_features_batch_size_does_not_matter(data: FakeData, tmp_path: Path) -> None:
    specs = resolve_specs(make_cfg(tmp_path), ["text"])
    encoders = {"text": build_encoder("text", dataclasses.replace(specs["text"]))}
    items = torch.arange(11)
    one = LiveFeatures(encoders, data.catalogue, data.item_ids, batch_size=1).gather(items)["text"]
    many = LiveFeatures(encoders, data.catalogue, data.item_ids, batch_size=64).gather(items)["text"]
    torch.testing.assert_close(one[0], many[0], atol=1e-5, rtol=1e-4)


def test_a_long_dataset_folder_name_still_names_a_cache_folder(tmp_path: Path) -> None:
    """A second reader (2026-12-04): `crossan cache --data DDD…` of a 245-byte folder name failed with a raw
    "[Errno 36] File name too long": the cache folder is the dataset's name plus 17 bytes. Names over 238
    bytes are cut to fit; shorter ones are kept as they were (their caches stay where they are)."""
    from conftest import random_dataset
    from crossan.cache.layout import default_cache_dir
    from crossan.config import load_config
    from crossan.data import prepare

    for name, kept in (("d" * 245, "d" * 238), ("é" * 125, "é" * 119), ("d" * 238, "d" * 238), ("short", "short")):
        data = random_dataset(tmp_path / name, n_users=20, n_items=10)
        cfg = load_config([], [f"data.path={data}", "encoders.preset=tiny"])
        folder = default_cache_dir(cfg, prepare(cfg.data), "text")
        assert folder.parent.name.startswith(f"{kept}-") and len(folder.parent.name.encode()) == len(kept.encode()) + 17
        folder.mkdir(parents=True, exist_ok=True)  # the file system takes it


@pytest.mark.parametrize("setting", ["auto", "system"])
def test_a_build_sets_the_allocator_as_training_does(tmp_path: Path, data: FakeData, setting: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``crossan cache`` on a CPU applies ``train.malloc`` as training does (an encoder forward's feature maps
    otherwise came back as fresh, zero-filled pages at every batch); the effect itself is measured in
    tests/test_utils.py, and the states are the same bytes either way (docs/results.md §3v)."""
    import crossan.utils

    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(crossan.utils, "configure_malloc", lambda s, d: seen.append((s, str(d))) or "system")
    cfg = make_cfg(tmp_path)
    cfg.train.malloc = setting
    build_cache(cfg, data, ["text"], progress=False)
    assert seen == [(setting, "cpu")]


def test_builds_reading_ahead_or_on_demand_write_the_same_bytes(tmp_path: Path) -> None:
    """When a batch is read changes no state: a build reading each batch ahead in a thread and one reading it on
    demand give the same files; a setting that is neither is refused naming the key, before anything is written."""
    data = make_dataset(tmp_path / "data", n=7)
    files = {}
    for setting in ("ahead", "on_demand"):
        cfg = make_cfg(tmp_path / setting)
        cfg.encoders.batch_size = 2
        cfg.cache.prefetch = setting
        build_cache(cfg, data, ["image", "audio"], progress=False)
        files[setting] = {(m, f): v for m in ("image", "audio")
                          for f, v in read_bytes(tmp_path / setting, m).items() if f != "manifest.json"}
    assert files["ahead"] == files["on_demand"]
    cfg = make_cfg(tmp_path / "bad")
    cfg.cache.prefetch = "always"
    with pytest.raises(ValueError, match="cache.prefetch: expected ahead or on_demand, got 'always'"):
        build_cache(cfg, data, ["image"], progress=False)
    assert not (tmp_path / "bad").exists()  # refused before any folder or encoder


def test_prefetch_off_on_the_command_line_is_named_as_a_choice() -> None:
    """YAML reads ``off`` as false: the setting is called ``on_demand``, and a command line saying
    ``cache.prefetch=off`` gets an error naming the key and its choices, not a silent boolean."""
    from crossan.config import load_config
    from crossan.errors import ConfigError

    assert load_config([], ["cache.prefetch=on_demand"]).cache.prefetch == "on_demand"
    with pytest.raises(ConfigError, match=r"cache.prefetch.*ahead.*on_demand.*YAML reads an unquoted on/off"):
        load_config([], ["cache.prefetch=off"])

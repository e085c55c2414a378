"""Tests of the synthetic multimodal dataset generator (crossan.data.synth), on the ``tiny`` size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from crossan.data import synth
from crossan.data.synth import (
    ATTRIBUTE_KEYS,
    ATTRIBUTES,
    AUDIO_RATE,
    AUDIO_SECONDS,
    IMAGE_SIZE,
    SIZES,
    VIDEO_FRAMES,
    VIDEO_SIZE,
    SynthError,
    generate,
    item_attribute_table,
    synth_digest,
)
from crossan.data.synth.files import dataset_digest

MEDIA = ("image", "video", "audio")
EXTENSIONS = {"image": "png", "video": "mp4", "audio": "wav"}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_items(root: Path) -> tuple[list[str], list[list[str]]]:
    lines = (root / "items.tsv").read_text(encoding="utf-8").splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def _read_users(root: Path) -> dict[str, list[str]]:
    users = {}
    for line in (root / "users.tsv").read_text(encoding="utf-8").splitlines():
        user, items = line.split("\t")
        users[user] = items.split(" ")
    return users


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(
        tmp_path_factory.mktemp("a") / "tiny", size="tiny", seed=0, missing_rate=0.3, progress=False
    )


@pytest.fixture(scope="module")
def dominant_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dom") / "tiny"
    return generate(out, size="tiny", seed=3, missing_rate=0.0, dominant="image", progress=False)


def test_same_seed_same_bytes_other_seed_differs(tiny: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", size="tiny", seed=0, missing_rate=0.3, progress=False)
    first, second = _tree_bytes(tiny), _tree_bytes(again)
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []  # clips included
    assert [name for name in first if name.endswith(".mp4")]

    other = _tree_bytes(generate(tmp_path / "other", size="tiny", seed=1, missing_rate=0.3, progress=False))
    assert other["users.tsv"] != first["users.tsv"]
    assert other["items.tsv"] != first["items.tsv"]


def test_meta_records_a_digest_of_every_file(tiny: Path, tmp_path: Path) -> None:
    """meta.json's digest covers every file but itself (not the in-progress marker it was computed beside), so
    a copy has it and a copy with one media byte changed does not."""
    meta = json.loads((tiny / "meta.json").read_text(encoding="utf-8"))
    assert meta["digest"].startswith("sha256:") and len(meta["digest"]) == 7 + 64
    assert synth_digest(tiny) == dataset_digest(tiny) == meta["digest"]
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    assert dataset_digest(copy) == meta["digest"]
    clip = next(copy.glob("videos/*.mp4"))
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 1
    clip.write_bytes(bytes(data))
    assert dataset_digest(copy) != meta["digest"]
    data[len(data) // 2] ^= 1
    clip.write_bytes(bytes(data))
    assert dataset_digest(copy) == meta["digest"]  # restored
    clip.rename(clip.with_suffix(".bak"))  # the same bytes under another path
    assert dataset_digest(copy) != meta["digest"]
    assert synth_digest(tmp_path / "absent") is None


def test_a_changed_dataset_is_refused_not_reported_under_its_recorded_digest(tiny: Path, tmp_path: Path) -> None:
    """The audit's repro: one byte appended to a cover and one audio file deleted, and ``crossan data synth``
    still said "dataset written (content digest <the recorded one>)", which reports then printed."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    cover = next(copy.glob("images/*.png"))
    cover.write_bytes(cover.read_bytes() + b"\0")
    next(copy.glob("audio/*.wav")).unlink()
    with pytest.raises(SynthError, match=r"copy: its files differ from what .* wrote \(content digest recorded "
                                         r"in meta.json sha256:[0-9a-f]{64}, of the files now sha256:"):
        synth_digest(copy)
    with pytest.raises(SynthError, match="its files differ"):
        generate(copy, size="tiny", seed=0, missing_rate=0.3, progress=False)


def test_layout_and_tables(tiny: Path) -> None:
    for name in ("items.tsv", "users.tsv", "items_meta.json", "users_meta.json", "meta.json", "README.md"):
        assert (tiny / name).is_file(), name
    assert not tiny.with_name(tiny.name + ".partial").exists()
    header, rows = _read_items(tiny)
    assert header == ["item_id", "title", "image", "video", "audio"]
    assert len(rows) == SIZES["tiny"].n_items
    assert all(len(r) == 5 and r[1].strip() for r in rows)  # text present for every item
    assert len({r[0] for r in rows}) == len(rows)
    meta = json.loads((tiny / "meta.json").read_text())
    assert meta["complete"] is True and meta["version"] == synth.GENERATOR_VERSION
    assert meta["params"] == {"size": "tiny", "seed": 0, "missing_rate": 0.3, "dominant": None}


def test_media_decode_to_expected_sizes(tiny: Path) -> None:
    _, rows = _read_items(tiny)
    for _item_id, _title, image, video, audio in rows[:12]:
        if image:
            with Image.open(tiny / image) as img:
                assert img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"
        if video:
            with av.open(str(tiny / video)) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            assert len(frames) == VIDEO_FRAMES
            assert frames[0].shape == (VIDEO_SIZE, VIDEO_SIZE, 3)
            assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).max() > 50  # the blob moved
        if audio:
            data, rate = soundfile.read(str(tiny / audio))
            assert rate == AUDIO_RATE and data.ndim == 1
            assert len(data) == int(AUDIO_RATE * AUDIO_SECONDS)
            assert 0.1 < np.abs(data).max() <= 1.0


def test_missing_items_have_empty_cells_and_no_files(tiny: Path) -> None:
    _, rows = _read_items(tiny)
    items_meta = json.loads((tiny / "items_meta.json").read_text())
    folders = {"image": "images", "video": "videos", "audio": "audio"}
    n_missing = 0
    for row in rows:
        item_id = row[0]
        for cell, modality in zip(row[2:], MEDIA):
            expected = tiny / folders[modality] / f"{item_id}.{EXTENSIONS[modality]}"
            assert (modality in items_meta[item_id]["present"]) == bool(cell)
            if cell:
                assert (tiny / cell).is_file() and tiny / cell == expected
            else:
                n_missing += 1
                assert not expected.exists()
    total = len(rows) * len(MEDIA)
    assert 0.1 * total < n_missing < 0.5 * total  # missing_rate 0.3
    n_files = sum(1 for f in folders.values() for _ in (tiny / f).iterdir())
    assert n_files == total - n_missing


def test_users_histories(tiny: Path) -> None:
    _, rows = _read_items(tiny)
    item_ids = {r[0] for r in rows}
    users = _read_users(tiny)
    assert len(users) == SIZES["tiny"].n_users
    for items in users.values():
        assert len(items) >= 5
        assert len(set(items)) == len(items)  # no repeats
        assert set(items) <= item_ids
    users_meta = json.loads((tiny / "users_meta.json").read_text())
    assert list(users_meta) == list(users)
    for entry in users_meta.values():  # default tastes span two or more modalities
        assert len({slot["modality"] for slot in entry["taste"]}) >= 2


def _agreement_lift(root: Path) -> dict[tuple[str, str], float]:
    """Per attribute: how often consecutive items share its value, divided by the chance rate."""
    ids, table = item_attribute_table(json.loads((root / "items_meta.json").read_text()))
    row = {item_id: k for k, item_id in enumerate(ids)}
    pairs = [(row[a], row[b]) for h in _read_users(root).values() for a, b in zip(h[:-1], h[1:])]
    left, right = (np.array(side) for side in zip(*pairs))
    lift = {}
    for j, (m, a) in enumerate(ATTRIBUTE_KEYS):
        counts = np.bincount(table[:, j], minlength=len(ATTRIBUTES[m][a])) / len(ids)
        lift[(m, a)] = float((table[left, j] == table[right, j]).mean() / (counts**2).sum())
    return lift


def test_dominant_modality_carries_the_signal(dominant_image: Path) -> None:
    users_meta = json.loads((dominant_image / "users_meta.json").read_text())
    for entry in users_meta.values():
        image_slots = [s for s in entry["taste"] if s["modality"] == "image"]
        others = [s for s in entry["taste"] if s["modality"] != "image"]
        assert len(image_slots) == 2
        assert all(o["weight"] < min(s["weight"] for s in image_slots) for o in others)
    lift = _agreement_lift(dominant_image)
    dominant = [v for (m, _), v in lift.items() if m == "image"]
    others = [v for (m, _), v in lift.items() if m != "image"]
    assert min(dominant) > 2.0
    assert min(dominant) > 1.5 * max(others)


def test_default_signal_spread_over_modalities(tiny: Path) -> None:
    lift = _agreement_lift(tiny)
    best = {m: max(v for (mm, _), v in lift.items() if mm == m) for m in ("text", "image", "video", "audio")}
    assert sum(v > 1.1 for v in best.values()) >= 3, best


def test_existing_output(tiny: Path, tmp_path: Path) -> None:
    stamp = (tiny / "meta.json").stat().st_mtime_ns
    assert generate(tiny, size="tiny", seed=0, missing_rate=0.3, progress=False) == tiny
    assert (tiny / "meta.json").stat().st_mtime_ns == stamp  # no rework
    assert synth.is_complete(tiny)

    with pytest.raises(SynthError, match="other parameters"):
        generate(tiny, size="tiny", seed=5, missing_rate=0.3, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(SynthError, match="not a complete dataset"):
        generate(foreign, size="tiny", progress=False)

    stale = tmp_path / "out.partial"
    stale.mkdir()
    with pytest.raises(SynthError, match="not made by"):
        generate(tmp_path / "out", size="tiny", progress=False)
    (stale / ".synth-partial").write_text("")
    (stale / "junk").write_text("left over")
    out = generate(tmp_path / "out", size="tiny", missing_rate=0.5, progress=False)
    assert synth.is_complete(out) and not stale.exists()


@pytest.mark.parametrize(
    "kwargs",
    [{"size": "huge"}, {"missing_rate": 1.0}, {"missing_rate": -0.1}, {"dominant": "smell"}, {"seed": -1}],
)
def test_bad_parameters(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


_CLIPS = """
import hashlib, sys, tempfile
from pathlib import Path
import numpy as np
if sys.argv[1] == "torch":  # another process state: torch imported, flush-denormal mode on
    import torch
    torch.set_flush_denormal(True)
from crossan.data.synth.media import _video_codec, _write_video
from crossan.data.synth.vocab import MOTIONS, SPEEDS
with tempfile.TemporaryDirectory() as tmp:
    for i in range(150):
        path = Path(tmp) / f"{i}.mp4"
        _write_video(path, MOTIONS[i % len(MOTIONS)], list(SPEEDS)[i % len(SPEEDS)], np.random.default_rng(i), _video_codec())
        print(hashlib.sha256(path.read_bytes()).hexdigest())
"""


def test_clips_have_the_same_bytes_in_another_process_state() -> None:
    """The same frames give the same mp4 bytes whatever the process did before. With CRF rate control
    (GENERATOR_VERSION 2) 4-8% of the clips changed when torch was imported or its flush-denormal mode
    set (see the synth module docstring); 150 clips would almost surely have shown it."""
    import subprocess
    import sys

    from crossan.data.synth.media import _video_codec

    if _video_codec() != "libx264":
        pytest.skip("PyAV without libx264")
    plain, other = (subprocess.run([sys.executable, "-c", _CLIPS, env], capture_output=True, text=True,
                                   check=True).stdout.split() for env in ("plain", "torch"))
    assert len(plain) == 150 and len(set(plain)) == 150
    assert plain == other


def test_two_writers_of_one_dataset_wait_for_each_other(tmp_path: Path) -> None:
    # a second writer used to remove the first one's partial folder under it (or write into it)
    import subprocess
    import sys
    import time

    out = tmp_path / "shared"
    first = subprocess.Popen([sys.executable, "-m", "crossan", "data", "synth", "--size", "tiny", "--seed", "4",
                              "--missing-rate", "0.2", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = out.with_name("shared.partial")
    deadline = time.monotonic() + 120
    while not (partial / "images").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.poll() is None, "the first writer ended before the second could start beside it"
    assert generate(out, size="tiny", seed=4, missing_rate=0.2, progress=False) == out
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert synth.is_complete(out) and not partial.exists()
    alone = generate(tmp_path / "alone", size="tiny", seed=4, missing_rate=0.2, progress=False)
    assert _tree_bytes(out) == _tree_bytes(alone)


def test_a_full_disk_is_named_not_a_media_libraries_traceback(tmp_path: Path, monkeypatch) -> None:
    """soundfile's "LibsndfileError: System error." (a full disk or `ulimit -f`) ended `data synth` with a
    traceback naming no file; the next run starts the partial folder over."""
    import errno

    import soundfile

    from crossan.errors import WriteError

    for fail in (OSError(errno.ENOSPC, "No space left on device"), soundfile.LibsndfileError(2, "System error.")):
        def broken(*args, fail=fail, **kwargs):
            raise fail

        monkeypatch.setattr(synth, "_write_tables", broken)
        with pytest.raises(WriteError, match=rf"^{tmp_path / 'd'}: cannot write the dataset \("):
            generate(tmp_path / "d", size="tiny", progress=False)
    monkeypatch.undo()
    assert synth.is_complete(generate(tmp_path / "d", size="tiny", progress=False))

"""Updating a cache after the data changed: an edited title or a new media file re-encodes only the batches
holding those items, in the same folder, to the bytes of a fresh build; a run refuses the cache until then.
The folder and the manifest's compared identity depend on the item ids in row order only."""

from __future__ import annotations

import copy
import dataclasses
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import random_dataset
from crossan.cache import CacheMismatchError, CacheMissingError, build_cache, default_cache_dir, open_cache
from crossan.cache.build import verify_cache
from crossan.cache.integrity import changed_rows, current_sources
from crossan.cache.layout import cache_command_line, modality_folder
from crossan.cli import main
from crossan.config import Config, load_config
from crossan.data import prepare
from crossan.data.catalogue import Catalogue, ItemRecord
from crossan.errors import CacheError
from media_helpers import FakeData, build_statuses, dataset_with_own_cache, write_image

MODS = ["text", "image"]
FILES = ("states.npy", "present.npy", "sources.npy", "manifest.json")

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    """Stands in for a killed process."""


def make_cfg(data: FakeData, cache_dir: str = "") -> Config:
    """The tiny preset in fp32 on the CPU, batches of 3 rows (10 items: rows 1-3, 4-6, 7-9, 10); without
    ``cache_dir`` the cache goes to its default folder under ``$CROSSAN_CACHE_DIR``."""
    cfg = Config()
    cfg.encoders.preset = "tiny"
    cfg.encoders.batch_size = 3
    cfg.cache.dir = cache_dir
    cfg.precision = "fp32"
    cfg.device = "cpu"
    cfg.data.path = str(data.catalogue.root)
    return cfg


def edited(data: FakeData, item: str, **fields: object) -> FakeData:
    """``data`` with one item's record changed (what editing items.tsv gives once it is read again)."""
    records = [dataclasses.replace(r, **fields) if r.item_id == item else r for r in data.catalogue]
    return FakeData(list(data.item_ids), Catalogue(data.catalogue.root, records))


def with_ids(data: FakeData, ids: list[str]) -> FakeData:
    return FakeData([""] + ids, data.catalogue)


def files(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in FILES}


build = build_statuses


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeData:
    return dataset_with_own_cache(tmp_path, monkeypatch)


def assert_equals_fresh(tmp_path: Path, cfg: Config, data: FakeData, modalities: list[str]) -> None:
    """The updated cache holds the bytes a build from nothing writes (states, presence, sources, manifest)."""
    fresh = copy.deepcopy(cfg)
    fresh.cache.dir = str(tmp_path / "fresh")
    build_cache(fresh, data, modalities, progress=False)
    for m in modalities:
        assert files(modality_folder(cfg, data, m)) == files(tmp_path / "fresh" / m), m


# --------------------------------------------------------------------------------------------- updates
def test_edited_title_re_encodes_only_its_batch_in_the_same_folder(tmp_path: Path, data: FakeData) -> None:
    cfg = make_cfg(data)
    build(cfg, data, MODS)
    folder = default_cache_dir(cfg, data)
    image_before = files(folder / "image")

    now = edited(data, "i5", text=data.catalogue["i5"].text + " (2nd edition)")
    assert default_cache_dir(cfg, now) == folder  # the same items: the same folder
    with pytest.raises(CacheMismatchError) as err:  # a run refuses the stale rows until they are re-encoded
        open_cache(cfg, now, ["text"])
    message = str(err.value)
    assert "1 title(s) changed since the cache was built" in message and "'i5'" in message
    assert "crossan cache --data" in message and "--modalities text" in message

    status, batches = build(cfg, now, MODS)
    assert status == {"text": "updated", "image": "up to date"}
    assert batches == [("text", 1)]  # rows 4-6 only
    assert sorted(p.name for p in (tmp_path / "caches").iterdir()) == [folder.parent.name]  # no second folder
    assert files(folder / "image") == image_before
    open_cache(cfg, now, MODS)
    assert_equals_fresh(tmp_path, cfg, now, MODS)


def test_update_killed_between_its_two_renames_is_installed_without_encoding_again(
        tmp_path: Path, data: FakeData, monkeypatch: pytest.MonkeyPatch) -> None:
    """An update killed once the cache was moved aside and before the finished folder was moved in. Its plan
    was already deleted, so the next build found no cache (an update no more) and a folder it did not know:
    it encoded every batch again. Now the previous cache is put back, the update is found again and the
    finished folder is installed as it is."""
    cfg = make_cfg(data)
    build(cfg, data, ["text"])
    folder = default_cache_dir(cfg, data)
    now = edited(data, "i5", text=data.catalogue["i5"].text + " (2nd edition)")
    real_replace = os.replace

    def killed_moving_in(src: Path, dst: Path) -> None:
        if Path(src).name == "text.partial":
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_moving_in)
    with pytest.raises(Killed):
        build(cfg, now, ["text"])
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (folder / "text").exists()
    assert (folder / "text.old").is_dir() and (folder / "text.partial").is_dir()

    status, batches = build(cfg, now, ["text"])
    assert status == {"text": "updated"} and batches == []
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["text"]
    open_cache(cfg, now, ["text"])
    assert_equals_fresh(tmp_path, cfg, now, ["text"])


def test_touched_media_files_are_recorded_so_later_opens_do_not_hash_them(
        tmp_path: Path, data: FakeData, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files with new times and the same bytes (a copied or checked-out dataset): `crossan cache` finds the
    cache up to date, as before, and now records their new times, so that a run's open hashes none of them;
    before, every open hashed every touched file again."""
    import crossan.cache.integrity as integrity

    cfg = make_cfg(data)
    build(cfg, data, ["image"])
    folder = default_cache_dir(cfg, data) / "image"
    for name in ("i1.jpg", "i7.jpg"):
        os.utime(data.catalogue.root / "img" / name, ns=(2_000_000_000, 2_000_000_000))
    states_before = (folder / "states.npy").read_bytes()
    hashed: list[Path] = []
    real_hash = integrity._hash_file
    monkeypatch.setattr(integrity, "_hash_file", lambda path: hashed.append(Path(path)) or real_hash(path))

    status, batches = build(cfg, data, ["image"])
    assert status == {"image": "up to date"} and batches == []
    assert sorted(p.name for p in hashed if p.parent.name == "img") == ["i1.jpg", "i7.jpg"]
    assert (folder / "states.npy").read_bytes() == states_before
    assert np.load(folder / "sources.npy")["mtime_ns"][[1, 7]].tolist() == [2_000_000_000] * 2
    hashed.clear()
    open_cache(cfg, data, ["image"])  # checks the arrays' checksums, then the sources: none of the media
    assert [p for p in hashed if p.parent.name == "img"] == []
    assert_equals_fresh(tmp_path, cfg, data, ["image"])  # what a build from nothing writes now


@pytest.mark.parametrize("killed_at", ["manifest", "rename"])
def test_a_build_killed_while_recording_touched_files_resumes_without_encoding(
        tmp_path: Path, data: FakeData, monkeypatch: pytest.MonkeyPatch, killed_at: str) -> None:
    """Recording the new times of touched files writes ``sources.npy`` and the manifest's checksum of it. It
    replaced ``sources.npy`` first: killed before the manifest was written, the (small, so hashed in full)
    cache no longer matched its checksum, and the next build took it for damaged and encoded all 4 batches
    again. Now the new record is written beside the old one and renamed into place after the manifest: killed
    before the manifest, the next build finds the cache as it was and records the times; killed before the
    rename, it puts the record the manifest names in place. Either way nothing is encoded, and the folder
    holds the bytes of a build from nothing."""
    import crossan.cache.manifest as manifest_module

    cfg = make_cfg(data)
    build(cfg, data, ["image"])
    folder = default_cache_dir(cfg, data) / "image"
    states_before = (folder / "states.npy").read_bytes()
    for name in ("i1.jpg", "i7.jpg"):
        os.utime(data.catalogue.root / "img" / name, ns=(2_000_000_000, 2_000_000_000))
    real_write, real_replace = manifest_module.atomic_write_json, os.replace

    def write_json(path: Path, obj: object, **kwargs: object) -> None:
        if killed_at == "manifest" and Path(path) == folder / "manifest.json":
            raise Killed
        real_write(path, obj, **kwargs)

    def replace(src: object, dst: object) -> None:
        if killed_at == "rename" and Path(src) == folder / "sources.next.npy":
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(manifest_module, "atomic_write_json", write_json)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        build(cfg, data, ["image"])
    monkeypatch.undo()
    monkeypatch.setenv("CROSSAN_CACHE_DIR", str(tmp_path / "caches"))

    status, batches = build(cfg, data, ["image"])
    assert status == {"image": "up to date"} and batches == []  # before: "built", all 4 batches encoded
    assert (folder / "states.npy").read_bytes() == states_before
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # no sources.next.npy, no temporaries
    assert np.load(folder / "sources.npy")["mtime_ns"][[1, 7]].tolist() == [2_000_000_000] * 2
    assert_equals_fresh(tmp_path, cfg, data, ["image"])


def test_shards_leave_touched_times_to_the_join(tmp_path: Path, data: FakeData) -> None:
    """A shard build holds no lock on the completed cache, so it does not write into it (its ranks would
    record the same times at once); the join, under the modality's lock, records them."""
    from crossan.cache.shards import join_shards

    cfg = make_cfg(data)
    build(cfg, data, ["image"])
    folder = default_cache_dir(cfg, data) / "image"
    before = files(folder)
    os.utime(data.catalogue.root / "img" / "i4.jpg", ns=(2_000_000_000, 2_000_000_000))
    for shard in range(2):
        reports = build_cache(cfg, data, ["image"], shard=shard, num_shards=2, progress=False)
        assert reports["image"].status == "up to date"
    assert files(folder) == before
    assert join_shards(cfg, data, ["image"])["image"].status == "up to date"
    assert np.load(folder / "sources.npy")["mtime_ns"][4] == 2_000_000_000
    assert_equals_fresh(tmp_path, cfg, data, ["image"])


def test_same_length_title_edit_is_a_changed_row(data: FakeData) -> None:
    records = [data.catalogue[i] for i in data.item_ids[1:]]
    old = current_sources("text", records, data.catalogue)
    text = data.catalogue["i8"].text
    now = edited(data, "i8", text=text[:-1] + ("x" if text[-1] != "x" else "y"))
    rows, _ = changed_rows(old, "text", [now.catalogue[i] for i in now.item_ids[1:]], now.catalogue)
    assert rows.tolist() == [8]


def test_new_image_for_an_item_without_one_re_encodes_only_its_batch(tmp_path: Path, data: FakeData) -> None:
    cfg = make_cfg(data)
    build(cfg, data, MODS)
    folder = default_cache_dir(cfg, data)
    assert data.catalogue["i3"].image is None
    write_image(tmp_path / "data" / "img" / "i3.png", (10, 220, 30))
    now = edited(data, "i3", image="img/i3.png")
    assert default_cache_dir(cfg, now) == folder

    with pytest.raises(CacheMismatchError) as err:  # the same refusal as for an edited title
        open_cache(cfg, now, ["image"])
    assert "1 media file(s) changed" in str(err.value) and "'i3' (img/i3.png)" in str(err.value)

    status, batches = build(cfg, now, MODS)
    assert status == {"text": "up to date", "image": "updated"} and batches == [("image", 0)]  # rows 1-3
    assert np.load(folder / "image" / "present.npy")[3]
    assert_equals_fresh(tmp_path, cfg, now, MODS)



def test_the_update_command_for_a_cache_built_with_corrupt_files_marked_missing_runs(
        tmp_path: Path, data: FakeData) -> None:
    """A cache built under ``cache.on_corrupt=missing`` (one cover corrupt), then a run without the option after
    another cover changed: the printed update command left the option out and stopped at the corrupt file
    ("fix the paths, or pass cache.on_corrupt=missing"). It now carries it, and runs."""
    (tmp_path / "data" / data.catalogue["i1"].image).write_bytes(b"not an image")
    built = make_cfg(data)
    built.cache.on_corrupt = "missing"
    build(built, data, ["image"])
    write_image(tmp_path / "data" / data.catalogue["i5"].image, (1, 2, 3))
    with pytest.raises(CacheMismatchError) as err:
        open_cache(make_cfg(data), data, ["image"])
    command = str(err.value).split("Update it with:\n  ")[1]
    assert command == cache_command_line(built, ["image"]) and "cache.on_corrupt=missing" in command
    with pytest.raises(CacheError) as err:  # crossan cache --verify (without the option) prints it too
        verify_cache(make_cfg(data), data, ["image"])
    assert f"`{command}`" in str(err.value)
    status, batches = build(built, data, ["image"])  # what the command does
    assert status == {"image": "updated"} and batches == [("image", 1)]  # rows 4-6

def test_path_to_another_file_of_the_same_size_and_mtime_is_a_changed_row(
        tmp_path: Path, data: FakeData, monkeypatch: pytest.MonkeyPatch) -> None:
    """``cp -p``-like stats: only the path (or, when hashed, the bytes) tell the new file apart."""
    root = tmp_path / "data"
    for name, colour in (("a.bmp", (255, 0, 0)), ("b.bmp", (0, 0, 255))):
        write_image(root / "img" / name, colour)  # uncompressed: the same size
        os.utime(root / "img" / name, ns=(1_000_000_000, 1_000_000_000))
    assert (root / "img" / "a.bmp").stat().st_size == (root / "img" / "b.bmp").stat().st_size
    before = edited(data, "i7", image="img/a.bmp")
    after = edited(data, "i7", image="img/b.bmp")
    records = [after.catalogue[i] for i in after.item_ids[1:]]
    for hash_max in (16 << 20, 0):  # hashed, and too large to hash (tracked by size, mtime and path)
        monkeypatch.setattr("crossan.cache.integrity.HASH_MAX_BYTES", hash_max)
        old = current_sources("image", [before.catalogue[i] for i in before.item_ids[1:]], before.catalogue)
        rows, _ = changed_rows(old, "image", records, after.catalogue)
        assert rows.tolist() == [7], hash_max


def test_the_same_bytes_under_another_path_are_not_re_encoded(tmp_path: Path, data: FakeData) -> None:
    shutil.copyfile(tmp_path / "data" / "img" / "i9.jpg", tmp_path / "data" / "img" / "moved.jpg")
    records = [data.catalogue[i] for i in data.item_ids[1:]]
    old = current_sources("image", records, data.catalogue)
    now = edited(data, "i9", image="img/moved.jpg")
    rows, _ = changed_rows(old, "image", [now.catalogue[i] for i in now.item_ids[1:]], now.catalogue)
    assert rows.tolist() == []


# --------------------------------------------------------------------------------------------- identity
@pytest.mark.parametrize("change", ["title", "media path", "item added", "item removed", "items reordered"])
def test_only_the_item_list_decides_the_folder(tmp_path: Path, data: FakeData, change: str) -> None:
    cfg = make_cfg(data)
    ids = data.item_ids[1:]
    now = {
        "title": lambda: edited(data, "i1", text="another title"),
        "media path": lambda: edited(data, "i4", video="vid/i5.mp4"),
        "item added": lambda: FakeData([""] + ids + ["i11"], Catalogue(
            data.catalogue.root, [*data.catalogue, ItemRecord("i11", "new item")])),
        "item removed": lambda: with_ids(data, ids[:-1]),
        "items reordered": lambda: with_ids(data, [ids[1], ids[0], *ids[2:]]),
    }[change]()
    same = change in ("title", "media path")
    assert (default_cache_dir(cfg, now) == default_cache_dir(cfg, data)) is same
    if same:
        return
    # in one cache.dir a different item list is another cache: built in full, not updated
    cfg = make_cfg(data, str(tmp_path / "one"))
    build(cfg, data, ["text"])
    status, batches = build(cfg, now, ["text"])
    assert status == {"text": "built"} and len(batches) == len(range(1, len(now.item_ids), 3))


def test_folder_key_is_the_runs_item_fingerprint(data: FakeData) -> None:
    """The default folder is named by the hash results.json records as ``item_fingerprint``."""
    from crossan.ranking import item_fingerprint

    folder = default_cache_dir(make_cfg(data), data)
    assert folder.parent.name == f"data-{item_fingerprint(data)}"  # type: ignore[arg-type]


def test_a_cache_of_the_previous_format_is_refused_and_rebuilt(tmp_path: Path, data: FakeData) -> None:
    """Version 2 keyed items by titles and paths too and kept no title rows: its sources cannot tell an
    edited title, so it is rebuilt rather than trusted."""
    from crossan.cache.manifest import read_manifest, write_json
    from crossan.data.catalogue import fingerprint_items

    cfg = make_cfg(data, str(tmp_path / "one"))
    build(cfg, data, ["text"])
    old = read_manifest(tmp_path / "one" / "text")
    old["format_version"] = 2
    old["item_fingerprint"] = fingerprint_items(data.catalogue[i] for i in data.item_ids[1:])
    write_json(tmp_path / "one" / "text" / "manifest.json", old)
    with pytest.raises(CacheMismatchError) as err:
        open_cache(cfg, data, ["text"])
    assert "text: format_version 2 in cache vs 3 in config" in err.value.differences
    status, batches = build(cfg, data, ["text"])
    assert status == {"text": "built"} and len(batches) == 4


# --------------------------------------------------------------------------------------------- the command
def test_crossan_cache_after_editing_one_title_in_items_tsv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CROSSAN_CACHE_DIR", str(tmp_path / "caches"))
    root = random_dataset(tmp_path / "small", n_users=40, n_items=20)
    argv = ["cache", "--data", str(root), "--modalities", "text", "--preset", "tiny", "encoders.batch_size=4",
            "precision=fp32", "device=cpu"]
    assert main(argv) == 0
    lines = (root / "items.tsv").read_text().splitlines(keepends=True)
    lines[7] = lines[7].replace("item number 7", "item number seven")
    (root / "items.tsv").write_text("".join(lines))
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "text: 1 item(s) changed since the cache was built ('i7'" in out
    assert "encoding their 1 batch(es) again" in out and "text: updated at" in out
    assert len(list((tmp_path / "caches").iterdir())) == 1


def test_the_suggested_cache_command_builds_the_cache_of_a_run_with_other_data_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``data.min_interactions`` and ``data.max_seq_len`` decide which items a run has (27 of 60 here). The
    command a run without its cache printed named only the dataset and the encoders, so it built the cache of
    the 44 items the defaults keep, in another folder, and the run still found none."""
    monkeypatch.setenv("CROSSAN_CACHE_DIR", str(tmp_path / "caches"))
    root = random_dataset(tmp_path / "small", n_users=12, n_items=60)
    cfg = load_config([], [f"data.path={root}", "data.min_interactions=10", "data.max_seq_len=3",
                           "encoders.preset=tiny", "precision=fp32", "device=cpu"])
    data = prepare(cfg.data)
    assert len(data.item_ids) - 1 == 27
    with pytest.raises(CacheMissingError) as err:
        open_cache(cfg, data, ["text"])
    command = str(err.value).splitlines()[1].strip()
    assert command == cache_command_line(cfg, ["text"])
    assert command.endswith("--preset tiny data.min_interactions=10 data.max_seq_len=3")
    assert main(shlex.split(command)[1:]) == 0
    assert open_cache(cfg, data, ["text"]).dims == {"text": 64}

    cfg = load_config([], [f"data.path={root}", "data.text_fields=[title, brand]", "cache.on_corrupt=missing"])
    line = cache_command_line(cfg, ["text"])
    assert line.endswith(""" 'data.text_fields=["title", "brand"]' cache.on_corrupt=missing""")
    again = load_config([], shlex.split(line)[8:])  # the key=value words read back to the run's settings
    assert again.data.text_fields == ["title", "brand"] and again.cache.on_corrupt == "missing"


def test_the_suggested_cache_command_runs_as_printed_where_paths_hold_spaces(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset in "my data/": the command a run without its cache printed read `--data /…/my data`, which
    the shell splits in two (copied as printed it failed); so did cache.dir. Every path is shell-quoted now."""
    monkeypatch.setenv("CROSSAN_CACHE_DIR", str(tmp_path / "caches"))
    root = random_dataset(tmp_path / "my data", n_users=12, n_items=20)
    cfg = load_config([], [f"data.path={root}", f"cache.dir={tmp_path / 'the cache'}", "encoders.preset=tiny",
                           "precision=fp32", "device=cpu"])
    data = prepare(cfg.data)
    with pytest.raises(CacheMissingError) as err:
        open_cache(cfg, data, ["text"])
    command = str(err.value).splitlines()[1].strip()
    assert f"--data '{root}'" in command and f"'cache.dir={tmp_path / 'the cache'}'" in command
    assert main(shlex.split(command)[1:]) == 0
    assert open_cache(cfg, data, ["text"]).dims == {"text": 64}


def test_update_under_another_batch_size_encodes_every_item(tmp_path: Path, data: FakeData,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The batch size is part of a build's identity (a partial build of another is discarded): an update
    re-encoded the changed batches of the new size into rows built at the old one, and recorded the new size
    for every row. Now a cache built at another batch size is encoded in full, as one at another precision."""
    cfg = make_cfg(data)
    build(cfg, data, ["text"])
    now = edited(data, "i5", text=data.catalogue["i5"].text + " (2nd edition)")
    cfg.encoders.batch_size = 4  # rows 1-4, 5-8, 9-10
    capsys.readouterr()
    status, batches = build(cfg, now, ["text"])
    assert "float32 compute on cpu, encoders.batch_size=3; this build runs float32 compute on cpu, " \
           "encoders.batch_size=4: encoding every item again" in capsys.readouterr().out
    assert status == {"text": "built"} and batches == [("text", 0), ("text", 1), ("text", 2)]
    assert_equals_fresh(tmp_path, cfg, now, ["text"])


def test_a_cache_killed_before_its_new_record_was_renamed_is_read_and_sharded_without_encoding(
        tmp_path: Path, data: FakeData, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the manifest names the new ``sources.npy`` and before ``sources.next.npy`` is renamed over
    it, a small cache (hashed in full on open) no longer matched its checksum. Only a single-process build
    recovers it (under the modality's lock); until then training refused it as damaged, and a sharded build
    (torchrun, or ``--shard``), whose shards hold no such lock, took it for damaged and encoded all 4 batches
    again. The record being put in place is now no damage: the old one still describes the touched files'
    bytes. The cache opens, the shards find it up to date, and the join puts the new record in place."""
    from crossan.cache.shards import join_shards

    cfg = make_cfg(data)
    build(cfg, data, ["image"])
    folder = default_cache_dir(cfg, data) / "image"
    states_before = (folder / "states.npy").read_bytes()
    os.utime(data.catalogue.root / "img" / "i4.jpg", ns=(2_000_000_000, 2_000_000_000))
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(src) == folder / "sources.next.npy":
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        build(cfg, data, ["image"])
    monkeypatch.undo()
    monkeypatch.setenv("CROSSAN_CACHE_DIR", str(tmp_path / "caches"))
    assert (folder / "sources.next.npy").is_file()
    open_cache(cfg, data, ["image"])  # before: CacheError "sources.npy: contents differ from the build"
    batches: list[tuple[str, int]] = []
    for shard in range(2):
        reports = build_cache(cfg, data, ["image"], shard=shard, num_shards=2, progress=False,
                              on_batch=lambda m, b: batches.append((m, b)))
        assert reports["image"].status == "up to date"  # before: "shard built"
    assert batches == []  # before: all 4 batches encoded again
    assert join_shards(cfg, data, ["image"])["image"].status == "up to date"
    assert (folder / "states.npy").read_bytes() == states_before
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # the new record put in place
    assert np.load(folder / "sources.npy")["mtime_ns"][4] == 2_000_000_000
    assert_equals_fresh(tmp_path, cfg, data, ["image"])

"""The cache with odd media paths and folders: a folder or a named pipe where a media file should be, a
read-only cache folder, and several modalities changed at once."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from crossan.cache import CacheMismatchError, build_cache, default_cache_dir, open_cache
from crossan.cache.integrity import changed_rows, current_sources
from crossan.config import Config
from crossan.data.catalogue import Catalogue
from crossan.data.media import MediaError, load_image
from crossan.data.protocol import SequentialData
from crossan.data.readers import DataError
from crossan.errors import CacheError
from media_helpers import FakeData, build_statuses, dataset_with_own_cache, write_image

pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(data: FakeData, on_corrupt: str = "error") -> Config:
    """The tiny preset in fp32 on the CPU, batches of 3 rows, the cache under ``$CROSSAN_CACHE_DIR``."""
    cfg = Config()
    cfg.encoders.preset = "tiny"
    cfg.encoders.batch_size = 3
    cfg.precision = "fp32"
    cfg.device = "cpu"
    cfg.data.path = str(data.catalogue.root)
    cfg.cache.on_corrupt = on_corrupt
    return cfg


build = build_statuses


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeData:
    return dataset_with_own_cache(tmp_path, monkeypatch)


def records_of(data: FakeData) -> list:
    return [data.catalogue[i] for i in data.item_ids[1:]]


# --------------------------------------------------------------------------------------------- a folder
def test_a_folder_for_a_media_file_is_marked_corrupt_once_and_the_cache_then_stays_up_to_date(
        data: FakeData) -> None:
    """The folder's size was recorded, hashing it failed and recorded no file: every later run found the row
    changed, encoded its batch again, and training refused the cache for good."""
    path = data.catalogue.path(data.catalogue["i2"], "image")
    path.unlink()
    path.mkdir()
    cfg = make_cfg(data, on_corrupt="missing")
    status, _ = build(cfg, data, ["image"])
    report = build_cache(cfg, data, ["image"], progress=False)["image"]
    assert status == {"image": "built"} and report.status == "up to date"
    assert report.corrupt[0]["item_id"] == "i2" and "not a regular file" in report.corrupt[0]["reason"]
    assert "a folder" in report.corrupt[0]["reason"]
    open_cache(make_cfg(data), data, ["image"])  # a run takes it


def test_a_folder_for_a_media_file_is_reported_as_not_a_regular_file(data: FakeData) -> None:
    """Under ``cache.on_corrupt=error`` the check before a build said such a path "cannot be found"."""
    path = data.catalogue.path(data.catalogue["i2"], "image")
    path.unlink()
    path.mkdir()
    dataset = SimpleNamespace(catalogue=data.catalogue, root=data.catalogue.root)
    with pytest.raises(DataError) as err:
        SequentialData.check_media_files(dataset, ["image"])  # type: ignore[arg-type]
    message = str(err.value)
    assert "not regular files" in message and "'i2' (img/i2.jpg: a folder)" in message
    assert "cannot be found" not in message


def test_an_unreadable_media_file_is_no_change_on_the_next_look(data: FakeData,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that can be looked up but not read (hashing it fails) is recorded as no file both times."""
    def unreadable(path: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("crossan.cache.integrity._hash_file", unreadable)
    old = current_sources("image", records_of(data), data.catalogue)
    rows, _ = changed_rows(old, "image", records_of(data), data.catalogue)
    assert rows.tolist() == []


# --------------------------------------------------------------------------------------------- a named pipe
def test_a_named_pipe_for_a_media_file_is_corrupt_not_a_hang(data: FakeData) -> None:
    path = data.catalogue.path(data.catalogue["i4"], "image")
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(MediaError, match="named pipe"):  # the loaders refuse it before opening it
        load_image(path, "i4")
    cfg = make_cfg(data, on_corrupt="missing")
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["status"] = build(cfg, data, ["image"])[0]
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive():  # blocked reading the pipe: a writer that closes at once ends the read
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=120)
        pytest.fail("the build blocked opening a named pipe")
    assert result.get("status") == {"image": "built"}, result
    report = build_cache(cfg, data, ["image"], progress=False)["image"]
    assert report.status == "up to date" and report.corrupt[0]["item_id"] == "i4"
    assert "named pipe" in report.corrupt[0]["reason"]


# --------------------------------------------------------------------------------------------- read-only
def read_only_locks(monkeypatch: pytest.MonkeyPatch, code: int = errno.EROFS) -> None:
    """Lock files cannot be created: what ``os.open`` says on a read-only file system (or, ``EACCES``, for a
    lock file another user made)."""
    real_open = os.open

    def refusing(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".lock"):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refusing)


def test_an_up_to_date_cache_in_a_read_only_folder_is_reported_up_to_date(
        data: FakeData, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg(data)
    build(cfg, data, ["text", "image"])
    read_only_locks(monkeypatch)
    assert build(cfg, data, ["text", "image"]) == ({"text": "up to date", "image": "up to date"}, [])


def test_a_build_that_must_write_into_a_read_only_cache_folder_names_it(
        data: FakeData, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg(data)
    build(cfg, data, ["image"])
    write_image(data.catalogue.path(data.catalogue["i5"], "image"), (1, 2, 3))
    read_only_locks(monkeypatch)
    folder = default_cache_dir(cfg, data)
    with pytest.raises(CacheError) as err:
        build(cfg, data, ["image"])
    message = str(err.value)
    assert "read-only" in message and str(folder) in message and "needs updating" in message


def test_a_lock_file_another_user_made_is_named_not_a_read_only_folder(
        data: FakeData, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a shared cache folder that this user may write, a lock file another user created (mode 0644) cannot
    be opened for writing: that was reported as a read-only folder, which it is not."""
    cfg = make_cfg(data)
    build(cfg, data, ["image"])
    write_image(data.catalogue.path(data.catalogue["i5"], "image"), (1, 2, 3))
    read_only_locks(monkeypatch, errno.EACCES)
    with pytest.raises(CacheError) as err:
        build(cfg, data, ["image"])
    message = str(err.value)
    assert "cannot open the lock file" in message and ".image.lock" in message and "read-only" not in message


# --------------------------------------------------------------------------------------------- several stale
def test_a_run_names_every_stale_modality_and_its_command_updates_them_all(tmp_path: Path, data: FakeData) -> None:
    """Only the first stale modality was named: its command updated it, and the next run stopped at the next."""
    cfg = make_cfg(data)
    build(cfg, data, ["text", "image"])
    records = [dataclasses.replace(r, text=r.text + " (2nd edition)") if r.item_id == "i5" else r
               for r in data.catalogue]
    now = FakeData(list(data.item_ids), Catalogue(data.catalogue.root, records))
    write_image(now.catalogue.path(now.catalogue["i7"], "image"), (9, 9, 9))
    with pytest.raises(CacheMismatchError) as err:
        open_cache(cfg, now, ["text", "image"])
    message = str(err.value)
    assert "text: 1 title(s) changed" in message and "'i5'" in message
    assert "image: 1 media file(s) changed" in message and "'i7'" in message
    command = message.split("Update it with:\n  ")[1]
    assert "--modalities text,image" in command
    assert build(cfg, now, ["text", "image"])[0] == {"text": "updated", "image": "updated"}  # what it runs
    open_cache(cfg, now, ["text", "image"])
    shutil.rmtree(tmp_path / "caches")

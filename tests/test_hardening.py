"""Issue 15, the cache and run-folder items: cache integrity (2), disk full (6), clean one-line errors (7),
one builder at a time (8), resolved data paths (9), an exhausted catalogue and file modes (10).

Each test was written as the failing case first. The datasets and caches are real files built with the
``tiny`` encoder preset.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from crossan.cache import CacheError, CacheMismatchError, build_cache, open_cache
from crossan.cache.build import verify_cache
from crossan.config import Config
from crossan.data.catalogue import Catalogue
from media_helpers import FakeData, make_dataset, write_image, write_wav

CACHE_FILES = ("states.npy", "present.npy", "sources.npy", "manifest.json")


def make_cfg(cache_dir: Path) -> Config:
    cfg = Config()
    cfg.encoders.preset = "tiny"
    cfg.encoders.batch_size = 3  # 10 items: batches of rows 1-3, 4-6, 7-9, 10
    cfg.cache.dir = str(cache_dir)
    cfg.precision = "fp32"
    return cfg


def read_bytes(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in CACHE_FILES}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> FakeData:
    return make_dataset(tmp_path_factory.mktemp("dataset"), n=10)


@pytest.fixture
def data(tmp_path: Path, dataset: FakeData) -> FakeData:
    """A private copy of the dataset (media files may be replaced), mtimes preserved."""
    root = tmp_path / "data"
    shutil.copytree(dataset.catalogue.root, root)
    return FakeData(dataset.item_ids, Catalogue(root, list(dataset.catalogue)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, dataset: FakeData) -> Path:
    """An untouched image + audio cache of the dataset."""
    root = tmp_path_factory.mktemp("reference")
    build_cache(make_cfg(root), dataset, ["image", "audio"], progress=False)
    return root


def built_copy(reference: Path, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(reference, cache)
    return cache


# --------------------------------------------------------------------------------------------- 2. integrity
def test_manifest_records_checksums_and_sources(reference: Path, dataset: FakeData) -> None:
    import hashlib

    manifest = json.loads((reference / "image" / "manifest.json").read_text())
    for name in ("states.npy", "present.npy", "sources.npy"):
        raw = (reference / "image" / name).read_bytes()
        assert manifest["checksums"][name] == {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    sources = np.load(reference / "image" / "sources.npy")
    path = dataset.catalogue.root / "img" / "i6.jpg"
    assert sources[6]["size"] == path.stat().st_size and sources[6]["mtime_ns"] == path.stat().st_mtime_ns
    assert sources[6]["sha256"] == hashlib.sha256(path.read_bytes()).digest()
    assert sources[3]["size"] == -1  # item 3 has no image
    assert manifest["format_version"] == 3


def _flip_bytes(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))


def _set_row(path: Path, row: int, value: float) -> None:
    states = np.load(path, mmap_mode="r+")
    states[row] = value
    states.flush()
    del states


def _invert_present(path: Path) -> None:
    present = np.load(path, mmap_mode="r+")
    present[:] = ~present
    present.flush()
    del present


DAMAGE = {
    "flipped_bytes": (lambda f: _flip_bytes(f / "states.npy"), "SHA-256 mismatch"),
    "nan_row": (lambda f: _set_row(f / "states.npy", 4, np.nan), "SHA-256 mismatch"),
    "60000_row": (lambda f: _set_row(f / "states.npy", 4, 60000.0), "SHA-256 mismatch"),
    "inverted_present": (lambda f: _invert_present(f / "present.npy"), "present.npy: contents differ"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_arrays_are_refused_verified_and_rebuilt(reference: Path, dataset: FakeData, tmp_path: Path,
                                                         damage: str, capsys: pytest.CaptureFixture[str]) -> None:
    cache = built_copy(reference, tmp_path)
    cfg = make_cfg(cache)
    spoil, message = DAMAGE[damage]
    spoil(cache / "image")
    with pytest.raises(CacheError, match=message) as err:  # on open (the arrays are small: hashed in full)
        open_cache(cfg, dataset, ["image"])
    assert str(cache / "image") in str(err.value)
    if damage == "nan_row":  # the values are scanned too, naming the item
        assert "non-finite values (NaN/inf) in image states of item 'i4'" in str(err.value)
    with pytest.raises(CacheError, match="verification failed for image"):
        verify_cache(cfg, dataset, ["image", "audio"])
    out = capsys.readouterr().out
    assert "image: FAILED" in out and "audio: verified" in out
    if damage == "nan_row":
        assert "non-finite values (NaN/inf) in image states of item 'i4'" in out
    if damage == "inverted_present":
        assert "rows marked absent in present.npy hold states" in out
    reports = build_cache(cfg, dataset, ["image", "audio"], progress=False)  # `crossan cache` heals it
    assert reports["image"].status == "built" and reports["audio"].status == "up to date"
    assert read_bytes(cache / "image") == read_bytes(reference / "image")
    open_cache(cfg, dataset, ["image"])


def test_truncated_or_headerless_arrays_name_the_file(reference: Path, dataset: FakeData, tmp_path: Path) -> None:
    cache = built_copy(reference, tmp_path)
    states = cache / "image" / "states.npy"
    raw = states.read_bytes()
    states.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CacheError, match=f"{states}: .* bytes where the build wrote {len(raw)}"):
        open_cache(make_cfg(cache), dataset, ["image"])
    states.write_bytes(b"\x93NUMPY garbage header" + raw[21:])  # same size, corrupt header
    with pytest.raises(CacheError, match=f"{states}: not a readable .npy array"):
        open_cache(make_cfg(cache), dataset, ["image"])


def test_media_replaced_in_place_rebuilds_only_its_batch(reference: Path, data: FakeData, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    cache = built_copy(reference, tmp_path)
    cfg = make_cfg(cache)
    open_cache(cfg, data, ["image"])  # the copy is current
    write_image(data.catalogue.root / "img" / "i6.jpg", (0, 250, 0))  # same path, new content
    with pytest.raises(CacheMismatchError, match=r"1 media file\(s\) changed since the cache was built: 'i6'"):
        open_cache(cfg, data, ["image"])
    calls: list[tuple[str, int]] = []
    reports = build_cache(cfg, data, ["image", "audio"], progress=False, on_batch=lambda m, b: calls.append((m, b)))
    assert calls == [("image", 1)]  # rows 4-6 only
    assert reports["image"].status == "updated" and reports["audio"].status == "up to date"
    assert "image: 1 item(s) changed since the cache was built ('i6' (img/i6.jpg))" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    build_cache(make_cfg(fresh), data, ["image"], progress=False)
    assert read_bytes(cache / "image") == read_bytes(fresh / "image")  # as if built from scratch
    old = np.load(reference / "image" / "states.npy")
    new = np.load(cache / "image" / "states.npy")
    assert not np.array_equal(old[6], new[6]) and np.array_equal(np.delete(old, 6, 0), np.delete(new, 6, 0))


def test_same_size_same_mtime_replacement_is_found_by_verify(reference: Path, data: FakeData, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    cache = built_copy(reference, tmp_path)
    cfg = make_cfg(cache)
    wav = data.catalogue.root / "aud" / "i7.wav"
    st = wav.stat()
    write_wav(wav, 1234.0, 8000, 0.6)  # the same length: the same size
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime (cp -p)
    assert wav.stat().st_size == st.st_size
    assert build_cache(cfg, data, ["audio"], progress=False)["audio"].status == "up to date"  # documented limit
    with pytest.raises(CacheError, match="verification failed for audio"):
        verify_cache(cfg, data, ["audio"])
    assert "audio: 1 media file(s) changed since the build: 'i7' (aud/i7.wav)" in capsys.readouterr().out


def test_touched_file_with_same_content_is_not_rebuilt(reference: Path, data: FakeData, tmp_path: Path) -> None:
    cache = built_copy(reference, tmp_path)
    (data.catalogue.root / "img" / "i2.jpg").touch()
    calls: list[tuple[str, int]] = []
    reports = build_cache(make_cfg(cache), data, ["image"], progress=False, on_batch=lambda m, b: calls.append((m, b)))
    assert reports["image"].status == "up to date" and calls == []


def test_nonfinite_states_are_refused_at_build_naming_the_item(data: FakeData, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # fault injection: the real tiny image encoder with its weights set to NaN (no input can make the
    # normalised encoders overflow), so that the build sees non-finite states from a real forward pass
    import crossan.encoders

    real = crossan.encoders.build_encoder

    def poisoned(modality, spec, device="cpu"):
        encoder = real(modality, spec, device=device)
        with torch.no_grad():
            for p in encoder.parameters():
                p.fill_(float("nan"))
        return encoder

    monkeypatch.setattr(crossan.encoders, "build_encoder", poisoned)
    cfg = make_cfg(tmp_path / "cache")
    with pytest.raises(CacheError, match=r"image: the encoder produced non-finite states .* item 'i1' \(img/i1.jpg\)"):
        build_cache(cfg, data, ["image"], progress=False)
    assert not (tmp_path / "cache" / "image").exists()
    assert not np.load(tmp_path / "cache" / "image.partial" / "done.npy").any()


def test_verify_of_a_good_cache(reference: Path, dataset: FakeData, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_cache(make_cfg(reference), dataset, ["image", "audio"]) == {"image": [], "audio": []}
    out = capsys.readouterr().out
    assert "image: verified" in out and "audio: verified" in out and "media files unchanged" in out


def test_verify_reads_chunks_with_no_absent_row(reference: Path, dataset: FakeData, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are read in chunks of VERIFY_ROWS (4,096); a chunk whose items all have the modality (every chunk
    after the first of a text cache of more than 4,096 items; rows 6-8 with chunks of 3, as here) crashed
    verify with numpy's "cannot reshape array of size 0"; a state in a row marked absent is still found in a
    later chunk."""
    import crossan.cache.integrity as integrity

    monkeypatch.setattr(integrity, "VERIFY_ROWS", 3)
    assert verify_cache(make_cfg(reference), dataset, ["image", "audio"]) == {"image": [], "audio": []}
    cache = built_copy(reference, tmp_path)
    states = np.load(cache / "image" / "states.npy")
    assert not np.load(cache / "image" / "present.npy")[3]  # item i3 has no image
    states[3] = 1.0
    np.save(cache / "image" / "states.npy", states)
    with pytest.raises(CacheError, match="verification failed for image"):
        verify_cache(make_cfg(cache), dataset, ["image"])


# --------------------------------------------------------------------------------------------- 6. disk full
@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs (needs root; skipped where mounting is not allowed)."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                           text=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` with one file until ``leave`` bytes are free; returns the file."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_disk_full_while_building_the_cache_is_a_clear_error(small_disk: Path, data: FakeData, tmp_path: Path,
                                                              reference: Path) -> None:
    from crossan.errors import WriteError

    cfg = make_cfg(small_disk / "cache")
    filler = fill(small_disk, leave=2 * 4096)  # the state file's header fits, its rows do not
    with pytest.raises(WriteError, match=f"{small_disk / 'cache'}.*(space|No space left)"):
        build_cache(cfg, data, ["image"], progress=False)
    filler.unlink()
    build_cache(cfg, data, ["image"], progress=False)  # with space again: built, the same bytes
    assert read_bytes(small_disk / "cache" / "image") == read_bytes(reference / "image")
    before = read_bytes(small_disk / "cache" / "image")
    write_image(data.catalogue.root / "img" / "i6.jpg", (0, 250, 0))
    filler = fill(small_disk, leave=4096)  # an update copies the arrays first: no room
    with pytest.raises(WriteError, match="space"):
        build_cache(cfg, data, ["image"], progress=False)
    assert read_bytes(small_disk / "cache" / "image") == before  # the completed cache is untouched
    filler.unlink()
    assert build_cache(cfg, data, ["image"], progress=False)["image"].status == "updated"


def test_cache_space_is_reserved_before_any_row_is_written(small_disk: Path) -> None:
    # open_memmap leaves the rows sparse: on a full disk their write-back dies of SIGBUS (rc 135, no message)
    from crossan.cache.workarea import WorkArea
    from crossan.errors import WriteError

    plan = {"manifest": {}, "lo": 0, "hi": 100, "batches": [0]}
    filler = fill(small_disk, leave=4 * 4096)  # header, last page and present.npy fit; the rows do not
    with pytest.raises(WriteError, match=r"states.npy: not enough disk space for the cache \(38,528 bytes to reserve"):
        WorkArea(small_disk / "image.partial", plan, (100, 3, 64))
    filler.unlink()
    area = WorkArea(small_disk / "image.partial", plan, (100, 3, 64))
    assert os.stat(area.path / "states.npy").st_blocks * 512 >= 100 * 3 * 64 * 2  # allocated, not sparse


def test_disk_full_while_saving_weights_names_the_file(small_disk: Path) -> None:
    from crossan.errors import WriteError
    from crossan.runs import TrainState, save_checkpoint, save_weights

    small = torch.nn.Linear(4, 4)
    save_weights(small, small_disk / "best.safetensors")
    before = (small_disk / "best.safetensors").read_bytes()
    fill(small_disk, leave=16 * 1024)
    big = torch.nn.Linear(256, 256)  # 257 KiB of weights
    with pytest.raises(WriteError, match=f"{small_disk / 'best.safetensors'}: no space left on the device"):
        save_weights(big, small_disk / "best.safetensors")
    assert (small_disk / "best.safetensors").read_bytes() == before
    opt = torch.optim.Adam(big.parameters())
    with pytest.raises(WriteError, match=f"{small_disk / 'checkpoints' / 'last.pt'}: no space left"):
        save_checkpoint(small_disk / "checkpoints" / "last.pt", big, opt, TrainState())
    assert sorted(p.name for p in small_disk.rglob("*") if p.is_file()) == ["best.safetensors", "filler"]


@pytest.fixture
def file_size_limit():
    """Files of this process may grow to 64 KiB (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write past it fails
    with EFBIG, "File too large", as on a file system with a file-size cap): no root needed."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_failed_write_of_weights_or_a_checkpoint_names_the_file_and_leaves_nothing(
        tmp_path: Path, file_size_limit: None) -> None:
    """A write error other than a full disk (here EFBIG) while saving a checkpoint or the best weights was a
    40-line traceback: torch.save raises a RuntimeError ("unexpected pos …") and safetensors a SafetensorError,
    neither an OSError. And safetensors' ``save_file`` wrote a temporary file of its own, which a kill left in
    the run folder under a name no resume removes. Now: one error naming the file and its errno's words, the old
    file unchanged, nothing left beside it."""
    from crossan.errors import WriteError
    from crossan.runs import TrainState, save_checkpoint, save_weights

    small = torch.nn.Linear(4, 4)
    save_weights(small, tmp_path / "best.safetensors")
    before = (tmp_path / "best.safetensors").read_bytes()
    big = torch.nn.Linear(256, 256)  # 257 KiB of weights
    with pytest.raises(WriteError, match=f"{tmp_path / 'best.safetensors'}: cannot write \\(File too large\\); "
                                         "best.safetensors was not changed"):
        save_weights(big, tmp_path / "best.safetensors")
    assert (tmp_path / "best.safetensors").read_bytes() == before
    opt = torch.optim.Adam(big.parameters())
    with pytest.raises(WriteError, match=f"{tmp_path / 'checkpoints' / 'last.pt'}: cannot write \\(File too large"):
        save_checkpoint(tmp_path / "checkpoints" / "last.pt", big, opt, TrainState())
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["best.safetensors"]


def test_weights_are_written_as_safetensors_reads_them_streamed_tensor_by_tensor(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """crossan writes safetensors itself (``write_safetensors``): safetensors' ``save_file`` left a temporary
    file of its own when killed, and its in-memory ``save`` holds the file twice inside a run's measured memory
    at each best epoch. The library reads every dtype, shape and the metadata back, the writer never asks the
    library to serialise, and a dtype the format has no name for is an error naming the tensor."""
    import safetensors.torch as st
    from safetensors import safe_open

    from crossan.utils import atomic_save_safetensors

    def refuse(*args, **kwargs):
        raise AssertionError("serialised by the library")

    monkeypatch.setattr(st, "save", refuse)
    monkeypatch.setattr(st, "save_file", refuse)
    tensors = {"b": torch.randn(3, 4, dtype=torch.bfloat16), "a": torch.arange(5), "flag": torch.tensor(True),
               "empty": torch.zeros(0, 3), "h": torch.randn(2, 2).half(), "scalar": torch.tensor(3.5),
               "u8": torch.randint(0, 255, (7,), dtype=torch.uint8), "t": torch.randn(4, 6).t()}
    atomic_save_safetensors(tensors, tmp_path / "w.safetensors", {"crossan_version": "x"})
    back = st.load_file(tmp_path / "w.safetensors")
    assert sorted(back) == sorted(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t), k
    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        assert f.metadata() == {"crossan_version": "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    with pytest.raises(ValueError, match=r"tensor 'z': dtype torch.complex64 has no safetensors name"):
        atomic_save_safetensors({"z": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "z.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


# --------------------------------------------------------------------------------------------- 7. clean errors
def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from crossan.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, err: str, *names: object) -> str:
    """The CLI's error: rc 2, one line on stderr (after any log lines), no traceback, naming each of ``names``."""
    assert rc == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("crossan: error: ") and sum("error" in line for line in lines) == 1, err
    lines = lines[-1:]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


TRAIN = ["method=id", "train.epochs=1", "train.batch_size=32", "device=cpu", "--quiet"]


@pytest.fixture(scope="module")
def text_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import random_dataset

    return random_dataset(tmp_path_factory.mktemp("text") / "d")


@pytest.fixture(scope="module")
def id_run(tmp_path_factory: pytest.TempPathFactory, text_data: Path) -> Path:
    from crossan.config import load_config
    from crossan.trainer import train

    run = tmp_path_factory.mktemp("runs") / "id"
    train(load_config([], [f"data.path={text_data}", *TRAIN[:-1]]), run, progress=False)
    return run


def test_out_at_a_file_is_refused(text_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "a_file"
    target.write_text("keep me\n")
    rc, _, err = run_cli(["train", "--data", text_data, "--out", target, *TRAIN], capsys)
    assert "is a file" in one_line_error(rc, err, target)
    rc, _, err = run_cli(["train", "--data", text_data, "--out", target / "run", *TRAIN], capsys)
    one_line_error(rc, err, target)
    assert target.read_text() == "keep me\n"


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """An empty read-only tmpfs mounted at ``tmp_path/ro`` (skipped where mounting is not permitted)."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs here: {r.stderr.strip()}")
    try:
        yield ro
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_out_on_a_read_only_file_system(text_data: Path, read_only_folder: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(["train", "--data", text_data, "--out", read_only_folder / "run", *TRAIN], capsys)
    assert "read-only file system" in one_line_error(rc, err, read_only_folder / "run")


def test_a_write_into_a_read_only_folder_names_the_file_not_its_temporary(read_only_folder: Path) -> None:
    """Removing the temporary file that a read-only folder never let exist raised EROFS (not ENOENT), which
    replaced the error: `crossan evaluate` of a run on a read-only mount named `.evaluation.json.<hex>.tmp`."""
    from crossan.errors import WriteError
    from crossan.utils import atomic_write_text

    target = read_only_folder / "evaluation.json"
    with pytest.raises(WriteError, match=rf"^{target}: cannot write \(Read-only file system\)"):
        atomic_write_text(target, "{}")


def test_recommend_out_at_a_folder(id_run: Path, text_data: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    users = tmp_path / "users.tsv"
    users.write_text("a\ti1 i2 i3\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    rc, _, err = run_cli(["recommend", id_run, "--users", users, "--out", folder], capsys)
    assert "is a folder" in one_line_error(rc, err, folder)
    rc, _, err = run_cli(["recommend", id_run, "--users", users, "--out", tmp_path / "recs.csv"], capsys)
    assert rc == 0 and (tmp_path / "recs.csv").read_text().startswith("user,rank,item_id,score,title\n")


def _damage_manifest_list(folder: Path) -> None:
    (folder / "manifest.json").write_text("[]\n")


def _damage_manifest_json(folder: Path) -> None:
    (folder / "manifest.json").write_text('{"format_version": 2, "shape": [61, 3')


def _damage_header(folder: Path) -> None:
    raw = (folder / "states.npy").read_bytes()
    (folder / "states.npy").write_bytes(raw[:10] + b"{'descr': <f2 garbage" + raw[31:])  # same size


def _damage_truncate(folder: Path) -> None:
    raw = (folder / "states.npy").read_bytes()
    (folder / "states.npy").write_bytes(raw[:-1000])


def _damage_delete_states(folder: Path) -> None:  # was a bare "[Errno 2] No such file or directory"
    (folder / "states.npy").unlink()


def _damage_delete_present(folder: Path) -> None:
    (folder / "present.npy").unlink()


CACHE_DAMAGE = {"manifest_list": (_damage_manifest_list, "manifest.json"),
                "manifest_bad_json": (_damage_manifest_json, "manifest.json"),
                "npy_header": (_damage_header, "states.npy"), "truncated_states": (_damage_truncate, "states.npy"),
                "deleted_states": (_damage_delete_states, "states.npy"),
                "deleted_present": (_damage_delete_present, "present.npy")}


@pytest.mark.parametrize("damage", sorted(CACHE_DAMAGE))
def test_damaged_cache_files_give_one_line_naming_the_file(text_data: Path, tmp_path: Path, damage: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    common = ["--data", text_data, "--preset", "tiny", f"cache.dir={cache}", "precision=fp32"]
    assert run_cli(["cache", *common], capsys)[0] == 0
    good = read_bytes(cache / "text")
    spoil, name = CACHE_DAMAGE[damage]
    spoil(cache / "text")
    train = ["train", "--data", text_data, "--out", tmp_path / "run", f"cache.dir={cache}", "encoders.preset=tiny",
             "precision=fp32", "method=frozen", "modalities=[text]", *TRAIN[1:]]
    rc, _, err = run_cli(train, capsys)
    one_line_error(rc, err, cache / "text" / name)
    if damage.startswith("deleted"):
        assert f"the text cache in {cache / 'text'} is damaged" in err and "rebuild it with `crossan cache" in err
    assert not (tmp_path / "run").exists()
    rc, out, err = run_cli(["cache", *common, "--verify"], capsys)
    one_line_error(rc, err, "verification failed for text")
    assert str(cache / "text" / name) in out
    rc, out, _ = run_cli(["cache", *common], capsys)  # `crossan cache` builds it again
    assert rc == 0 and str(cache / "text" / name) in out and "text: built" in out
    assert read_bytes(cache / "text") == good


@pytest.mark.parametrize("content", ["planted", "truncated", "empty", "other_tensors"])
def test_bad_checkpoint_is_one_line_never_suggesting_unpickling(id_run: Path, text_data: Path, tmp_path: Path,
                                                                content: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    run = tmp_path / "run"
    shutil.copytree(id_run, run)
    ckpt = run / "checkpoints" / "last.pt"
    raw = ckpt.read_bytes()
    if content == "planted":
        ckpt.write_bytes(pickle.dumps(os.system))  # would run a command if unpickled
    elif content == "truncated":
        ckpt.write_bytes(raw[: len(raw) // 2])
    elif content == "empty":
        ckpt.write_bytes(b"")
    else:
        torch.save({"model": {"w": torch.zeros(3)}}, ckpt)
    rc, _, err = run_cli(["train", "--data", text_data, "--out", run, "--resume", *TRAIN], capsys)
    line = one_line_error(rc, err, ckpt)
    assert "weights_only" not in err and "delete" in line


# --------------------------------------------------------------------------------------------- 8. one builder
@pytest.mark.subprocess
def test_two_cache_processes_take_turns(text_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import fcntl
    import subprocess
    import sys
    import time

    reference = tmp_path / "reference"
    common = ["--data", str(text_data), "--preset", "tiny", "precision=fp32"]
    assert run_cli(["cache", *common, f"cache.dir={reference}"], capsys)[0] == 0
    root = tmp_path / "cache"
    root.mkdir()
    held = os.open(root / ".text.lock", os.O_RDWR | os.O_CREAT)  # this test process holds the lock first
    fcntl.flock(held, fcntl.LOCK_EX)
    os.pwrite(held, b"4242\n", 0)
    procs, logs = [], []
    for i in range(2):
        logs.append((tmp_path / f"out{i}", tmp_path / f"err{i}"))
        procs.append(subprocess.Popen([sys.executable, "-m", "crossan", "cache", *common, f"cache.dir={root}"],
                                      stdout=logs[-1][0].open("w"), stderr=logs[-1][1].open("w")))
    deadline = time.time() + 300
    while not all("waiting" in err.read_text() for _, err in logs):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [e.read_text() for _, e in logs]
        time.sleep(0.2)
    assert not (root / "text").exists() and not (root / "text.partial").exists()  # nobody built while waiting
    os.close(held)
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [e.read_text() for _, e in logs]
    outs = sorted(out.read_text() for out, _ in logs)
    errs = [err.read_text() for _, err in logs]
    assert all("another crossan cache process (pid 4242) is building it; waiting" in e for e in errs)
    assert "Traceback" not in "".join(errs)
    assert sum("text: built" in o for o in outs) == 1 and sum("text: up to date" in o for o in outs) == 1, outs
    assert read_bytes(root / "text") == read_bytes(reference / "text")
    assert not (root / "text.partial").exists()


# --------------------------------------------------------------------------------------------- 9. resolved paths
def test_config_stores_resolved_paths_and_resume_accepts_equivalent_ones(
        text_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(text_data, work / "d")
    (tmp_path / "link").symlink_to(work / "d")
    monkeypatch.chdir(work)
    run = tmp_path / "run"
    assert run_cli(["train", "--data", "d", "--out", run, "cache.dir=cache", *TRAIN], capsys)[0] == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["path"] == str(work / "d") and saved["cache"]["dir"] == str(work / "cache")
    for spelling in (str(work / "d"), str(tmp_path / "link"), "./d/"):  # absolute, symlink, relative
        rc, _, err = run_cli(["train", "--data", spelling, "--out", run, "--resume", f"cache.dir={work / 'cache'}",
                              *TRAIN], capsys)
        assert rc == 0, err
    shutil.copytree(text_data, work / "e")
    users = (work / "e" / "users.tsv").read_text().splitlines()
    (work / "e" / "users.tsv").write_text("\n".join(users[:-1]) + "\n")  # another dataset: one user fewer
    rc, _, err = run_cli(["train", "--data", "e", "--out", run, "--resume", f"cache.dir={work / 'cache'}", *TRAIN],
                         capsys)
    assert "trained on other data than the dataset holds now" in one_line_error(rc, err, run)
    assert yaml.safe_load((run / "config.yaml").read_text()) == saved  # refused: config.yaml as it was
    shutil.move(work / "d", work / "moved")  # the same dataset in another folder: resumed, and recorded
    rc, _, err = run_cli(["train", "--data", "moved", "--out", run, "--resume", f"cache.dir={work / 'cache'}",
                          *TRAIN], capsys)
    assert rc == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["path"] == str(work / "moved")
    monkeypatch.chdir(tmp_path)  # serving from another folder finds the data
    rc, out, err = run_cli(["recommend", run, "--history", "i1", "i2", "--k", "3"], capsys)
    assert rc == 0 and len(out.splitlines()) == 4, err


# --------------------------------------------------------------------------------------------- 10. the rest
def test_history_covering_the_catalogue_says_so(id_run: Path, text_data: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    everything = sorted({line.split("\t")[0] for line in (text_data / "items.tsv").read_text().splitlines()},
                        key=lambda i: int(i[1:]))
    rc, out, err = run_cli(["recommend", id_run, "--history", *everything, "--k", "5"], capsys)
    assert rc == 1 and out == "" and "Traceback" not in err
    assert "no items to recommend: the history covers all 60 candidate items" in err
    rc, out, err = run_cli(["recommend", id_run, "--history", *everything[:-2], "--k", "5"], capsys)
    assert rc == 0 and len(out.splitlines()) == 3 and "only 2 of the 60 candidate items" in err
    users = tmp_path / "users.tsv"
    users.write_text(f"all\t{' '.join(everything)}\nsome\ti1 i2\n")
    rc, out, err = run_cli(["recommend", id_run, "--users", users, "--out", tmp_path / "r.csv", "--k", "2"], capsys)
    assert rc == 0 and "1 user(s) have no recommendation" in err and "'all' (line 1)" in err
    assert "recommendations for 1 users written" in out  # was "for 2 users": the one without rows counted
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert len(rows) == 3 and all(r.startswith("some,") for r in rows[1:])


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_run_outputs_have_one_file_mode(text_data: Path, tmp_path: Path, umask: int) -> None:
    from crossan.config import load_config
    from crossan.trainer import train

    old = os.umask(umask)
    try:
        run = tmp_path / "run"
        train(load_config([], [f"data.path={text_data}", *TRAIN[:-1]]), run, progress=False)
    finally:
        os.umask(old)
    modes = {str(p.relative_to(run)): oct(p.stat().st_mode & 0o777) for p in run.rglob("*") if p.is_file()}
    assert {"config.yaml", "train.log", "history.jsonl", "checkpoints/last.pt", "best.safetensors", "results.json",
            "per_user.npz"} <= set(modes)
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_a_library_error_says_where_crossan_called_it(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """numpy's "cannot reshape array of size 0" from `cache --verify` (a fault of crossan's, since fixed) read as
    one line blaming nothing, as if the input were at fault; a ValueError no `raise` of crossan's made now says
    where it came from. crossan's own messages are unchanged."""
    import crossan.cli

    def broken(args) -> int:
        np.zeros((0, 3))[np.zeros(0, bool)].reshape(0, -1)
        return 0

    def refused(args) -> int:  # one of crossan's own refusals, raised in crossan.precision
        from crossan.precision import compute_dtype

        compute_dtype("fp8", "cpu")
        return 0

    monkeypatch.setattr(crossan.cli, "cmd_data_stats", broken)
    rc, _, err = run_cli(["data", "stats", "--data", "x"], capsys)
    line = one_line_error(rc, err)
    assert line.startswith("crossan: error: cannot reshape array of size 0")
    assert f"(at {__file__}:" in line and ", called from crossan/cli.py:" in line
    assert line.endswith("; if the input is right, please report it)")
    monkeypatch.setattr(crossan.cli, "cmd_data_stats", refused)
    rc, _, err = run_cli(["data", "stats", "--data", "x"], capsys)
    assert one_line_error(rc, err) == "crossan: error: precision: 'fp8' is not one of ['auto', 'bf16', 'fp32']"


def test_the_origin_of_a_value_error_by_where_it_was_raised() -> None:
    """Code compiled as if it were a module of crossan: its own `raise` gets no suffix; a call into compiled code
    names the crossan line; a library's Python `raise` names the library's line and crossan's call."""
    import linecache

    import crossan.cli

    fake = str(Path(crossan.cli.__file__).resolve().parent / "_origin_probe.py")
    source = ("import numpy as np\n"
              "def compiled(): np.zeros((0, 3)).reshape(0, -1)\n"
              "def library(): np.array_split(np.zeros(3), 0)\n"
              "def own():\n"
              "    raise ValueError('data.x: bad')\n")
    linecache.cache[fake] = (len(source), None, source.splitlines(True), fake)
    space: dict = {}
    exec(compile(source, fake, "exec"), space)
    try:
        found = {}
        for name in ("compiled", "library", "own"):
            with pytest.raises(ValueError) as e:
                space[name]()
            found[name] = crossan.cli._origin(e.value)
    finally:
        linecache.cache.pop(fake, None)
    tail = "; if the input is right, please report it)"
    assert found["compiled"] == f" (at crossan/_origin_probe.py:2{tail}"
    assert found["library"].startswith(" (at ") and "numpy" in found["library"]
    assert found["library"].endswith(f", called from crossan/_origin_probe.py:3{tail}")
    assert found["own"] == ""


def test_a_write_error_with_its_own_cause_is_not_called_a_full_disk() -> None:
    """A second reader: ``crossan recommend … --out /proc/nope.csv`` said "no space left on the device" — /proc,
    /sys and read-only mounts report no free space, and any error there was taken for a full disk. An OSError
    whose errno names a cause of its own (ENOENT, EROFS, EACCES) is that error; a vague one (EIO, torch.save's
    RuntimeError) is still judged by the free space."""
    import errno

    from crossan.utils import _disk_full

    proc = Path("/proc")
    if not proc.is_dir() or os.statvfs(proc).f_bavail * os.statvfs(proc).f_frsize >= 64 * 1024:
        pytest.skip("needs a file system that reports no free space (Linux /proc)")
    for code in (errno.ENOENT, errno.EROFS, errno.EACCES):
        assert not _disk_full(OSError(code, os.strerror(code)), proc)
    assert _disk_full(OSError(errno.ENOSPC, "No space left on device"), proc)
    assert _disk_full(RuntimeError("PytorchStreamWriter failed writing file data/0"), proc)
    assert _disk_full(OSError(errno.EIO, "Input/output error"), proc)  # some file systems report a full disk so

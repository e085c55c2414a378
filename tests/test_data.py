from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import load_benchmark, write_iisan
from crossan.config import DataConfig
from crossan.data import DataError, prepare


def _cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(path=str(path), **kw)


def test_split_on_hand_made_example(tmp_path: Path) -> None:
    items = {f"x{k}": f"title {k}" for k in range(20)}
    users = {
        "short": ["x1", "x2", "x3", "x4"],  # 4 < 5 interactions: dropped
        "a": ["x5", "x6", "x7", "x8", "x9"],
        "b": [f"x{k}" for k in range(2, 18)],  # 16 items: keep the last L+3 = 6 (L = 3)
    }
    root = write_iisan(tmp_path / "d", users, items)
    data = prepare(_cfg(root, max_seq_len=3))
    assert data.users == ["a", "b"]
    # surviving items in catalogue order: x5..x9 (user a) and x12..x17 (user b's last 6)
    assert data.item_ids == ["", "x5", "x6", "x7", "x8", "x9", "x12", "x13", "x14", "x15", "x16", "x17"]
    r = {item: k for k, item in enumerate(data.item_ids)}
    a = [r[f"x{k}"] for k in (5, 6, 7, 8, 9)]
    b = [r[f"x{k}"] for k in range(12, 18)]
    # training window: the last L+1 items of seq[:-2]; inputs = window[:-1], targets = window[1:]
    np.testing.assert_array_equal(data.train_inputs, [[0, a[0], a[1]], [b[0], b[1], b[2]]])
    np.testing.assert_array_equal(data.train_targets, [[0, a[1], a[2]], [b[1], b[2], b[3]]])
    # validation: target seq[-2], input the L items before it; history = everything before it
    np.testing.assert_array_equal(data.valid.targets, [a[3], b[4]])
    np.testing.assert_array_equal(data.valid.inputs, [[a[0], a[1], a[2]], [b[1], b[2], b[3]]])
    np.testing.assert_array_equal(data.valid.history[0][-3:], a[:3])
    assert (data.valid.history[1] > 0).sum() == 4
    # test: target seq[-1], input the L items before it (the validation target included)
    np.testing.assert_array_equal(data.test.targets, [a[4], b[5]])
    np.testing.assert_array_equal(data.test.inputs, [[a[1], a[2], a[3]], [b[2], b[3], b[4]]])
    assert (data.test.history[1] > 0).sum() == 5
    # popularity counts come from the training part only
    assert data.item_counts[a[3]] == 0 and data.item_counts[a[0]] == 1
    assert data.catalogue.ids() == data.item_ids[1:]


def test_atomic_and_csv_readers_sort_by_time(tmp_path: Path) -> None:
    root = tmp_path / "atomic"
    root.mkdir()
    rows = [("u1", f"m{k}", 100 - k) for k in range(6)] + [("u2", f"m{k}", k) for k in range(6)]
    (root / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                  + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
    (root / "d.item").write_text("item_id:token\tmovie_title:token_seq\tyear:token\n"
                                 + "".join(f"m{k}\tFilm {k}\t199{k}\n" for k in range(6)))
    data = prepare(_cfg(root))
    r = {item: k for k, item in enumerate(data.item_ids)}
    assert data.test.targets.tolist() == [r["m0"], r["m5"]]  # u1's latest timestamp is m0
    assert data.catalogue["m3"].text == "Film 3 1993"

    csv = tmp_path / "c" / "inter.csv"
    csv.parent.mkdir()
    csv.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    data2 = prepare(_cfg(csv))
    assert [data2.item_ids[t] for t in data2.test.targets] == ["m0", "m5"]


@pytest.mark.parametrize("case, needle", [
    ("unknown_item", "users.tsv:2: item 'nope' is not in the catalogue"),
    ("no_items", "users.tsv:2: user 'u2' has no items"),
    ("duplicate_user", "users.tsv:3: user 'u1' appears on more than one line"),
    ("empty_users", "users.tsv: file is empty"),
    ("missing_items", "items.tsv: file not found"),
])
def test_bad_iisan_input_names_file_and_line(tmp_path: Path, case: str, needle: str) -> None:
    items = {f"x{k}": "t" for k in range(10)}
    good = " ".join(f"x{k}" for k in range(6))
    root = write_iisan(tmp_path / case, {"u0": good.split()}, items)
    lines = {"unknown_item": f"u0\t{good}\nu2\tx1 nope x3 x4 x5\n",
             "no_items": f"u0\t{good}\nu2\t\n",
             "duplicate_user": f"u0\t{good}\nu1\t{good}\nu1\t{good}\n",
             "empty_users": "",
             "missing_items": f"u0\t{good}\n"}[case]
    (root / "users.tsv").write_text(lines)
    if case == "missing_items":
        (root / "items.tsv").unlink()
    with pytest.raises(DataError) as e:
        prepare(_cfg(root))
    assert needle in str(e.value).replace(str(root) + "/", "")


def test_drop_option_counts_rows(tmp_path: Path) -> None:
    items = {f"x{k}": "t" for k in range(10)}
    root = write_iisan(tmp_path / "d", {}, items)
    (root / "users.tsv").write_text("u0\tx0 x1 x2 x3 x4\nu1\tx1 nope x3 x4 x5 x6\nu2\t\n")
    data = prepare(_cfg(root, on_bad_rows="drop", on_unknown_items="drop"))
    assert data.dropped == {"unknown_items": 1, "bad_rows": 1}
    assert data.users == ["u0", "u1"]


def test_malformed_timestamp(tmp_path: Path) -> None:
    root = tmp_path / "a"
    root.mkdir()
    (root / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu\ti1\t5\nu\ti2\tyesterday\n")
    with pytest.raises(DataError, match=r"d.inter:3: malformed timestamp 'yesterday'"):
        prepare(_cfg(root))


def test_missing_path_and_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        prepare(_cfg(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the data layout"):
        prepare(_cfg(tmp_path / "empty"))


def test_media_discovered_by_folder(tmp_path: Path) -> None:
    items = {f"x{k}": "t" for k in range(6)}
    root = write_iisan(tmp_path / "d", {"u": [f"x{k}" for k in range(6)]}, items)
    (root / "covers").mkdir()
    (root / "covers" / "x1.jpg").write_bytes(b"")
    (root / "audio").mkdir()
    (root / "audio" / "x2.wav").write_bytes(b"")
    data = prepare(_cfg(root))
    assert data.catalogue["x1"].image == "covers/x1.jpg" and data.catalogue["x1"].audio is None
    assert data.catalogue["x2"].audio == "audio/x2.wav" and not data.catalogue["x2"].has("video")


def test_media_of_other_formats_are_found_and_unread_files_are_named(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Covers saved as GIF, BMP or TIFF and audio as Opus or M4A, named by item id, were dropped without a
    word (only .jpg .jpeg .png .webp and .wav .flac .mp3 .ogg were looked for), though the loaders decode
    them; then a build failed with "none of the items has image content". They are read now; a file of an
    extension still not read is named in a warning when its item is left without the modality (a sidecar
    beside a cover is not); and where an id has an old and a new kind of file, the old one is read, as before."""
    from PIL import Image

    from crossan.data.media import load_image

    items = {f"x{k}": "t" for k in range(7)}
    root = write_iisan(tmp_path / "d", {"u": [f"x{k}" for k in range(7)]}, items)
    (root / "images").mkdir()
    for k, ext in enumerate(["gif", "bmp", "tif", "tiff"]):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "images" / f"x{k}.{ext}")
    (root / "images" / "x4.heic").write_bytes(b"not read")
    (root / "images" / "x0.json").write_text("{}")  # a sidecar: x0 has its cover
    (root / "images" / "notes.txt").write_text("no item is called notes")
    (root / "images" / ".DS_Store").write_bytes(b"hidden")
    for ext in ("gif", "jpg"):
        Image.new("RGB", (8, 8), (0, 0, 0)).save(root / "images" / f"x5.{ext}")
    (root / "audio").mkdir()
    (root / "audio" / "x0.opus").write_bytes(b"")
    (root / "audio" / "x1.m4a").write_bytes(b"")
    with caplog.at_level("WARNING", logger="crossan"):
        data = prepare(_cfg(root))
    assert [data.catalogue[f"x{k}"].image for k in range(7)] == [
        "images/x0.gif", "images/x1.bmp", "images/x2.tif", "images/x3.tiff", None, "images/x5.jpg", None]
    assert data.catalogue["x0"].audio == "audio/x0.opus" and data.catalogue["x1"].audio == "audio/x1.m4a"
    for k in range(4):
        assert np.asarray(load_image(root / data.catalogue[f"x{k}"].image)).tolist()[0][0] == [200, 10, 10]
    warned = [r.getMessage() for r in caplog.records if "although a file named by their id" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].endswith("1 item(s) have no image although a file named by their id is in images/ or covers/: "
                              "its extension (.heic) is not one of .jpg .jpeg .png .webp .gif .bmp .tif .tiff "
                              "(images/x4.heic); convert or rename them, or name them in an items.tsv image column")
    assert any("x5.jpg (not images/x5.gif)" in r.getMessage() for r in caplog.records)


def test_the_readme_lists_the_media_extensions_read() -> None:
    from crossan.data.readers import MEDIA_FOLDERS

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    listed = readme.split("read there: ", 1)[1].split("; a file there", 1)[0]
    assert len(listed) < 300, listed
    for _, exts in MEDIA_FOLDERS.values():
        assert " ".join(exts) in " ".join(listed.replace(",", " ").split()), exts


# --------------------------------------------------------------------------------------------- vectorised = reference
def _reference_protocol(sequences: dict[str, list[str]], catalogue_ids: list[str], L: int, min_inter: int) -> dict:
    """The protocol written per user in plain Python (METHOD.md §2), to check the vectorised one."""
    def left_pad(seqs: list[list[int]], width: int) -> np.ndarray:
        out = np.zeros((len(seqs), width), dtype=np.int64)
        for i, s in enumerate(seqs):
            s = s[-width:]
            if s:
                out[i, width - len(s):] = s
        return out

    kept = {u: s[-(L + 3):] for u, s in sequences.items() if len(s) >= min_inter}
    surviving = {i for s in kept.values() for i in s}
    ordered = [i for i in catalogue_ids if i in surviving]
    row = {item: k + 1 for k, item in enumerate(ordered)}
    seqs = [[row[i] for i in kept[u]] for u in kept]
    train = [s[:-2] for s in seqs]
    windows = [t[-(L + 1):] for t in train]
    counts = np.bincount([i for t in train for i in t], minlength=len(ordered) + 1)
    counts[0] = 0
    return {"users": list(kept), "item_ids": [""] + ordered,
            "train_inputs": left_pad([w[:-1] for w in windows], L),
            "train_targets": left_pad([w[1:] for w in windows], L),
            "valid.inputs": left_pad(train, L), "valid.targets": np.array([s[-2] for s in seqs]),
            "valid.history": left_pad(train, L + 2),
            "test.inputs": left_pad([s[:-1] for s in seqs], L), "test.targets": np.array([s[-1] for s in seqs]),
            "test.history": left_pad([s[:-1] for s in seqs], L + 2), "item_counts": counts}


@pytest.mark.parametrize("seed, L, min_inter", [(0, 10, 5), (1, 3, 3), (2, 1, 4)])
def test_vectorised_protocol_equals_per_user_reference(tmp_path: Path, seed: int, L: int, min_inter: int) -> None:
    rng = np.random.default_rng(seed)
    items = {f"it{k}": f"title {k}" for k in rng.permutation(300)}  # catalogue order is not id order
    ids = list(items)
    users = {f"user{u}": [ids[k] for k in rng.choice(len(ids), size=int(rng.integers(1, 30)))]
             for u in range(400)}  # lengths 1..29: below min_interactions, between, above L + 3; repeats
    root = write_iisan(tmp_path / "d", users, items)
    data = prepare(_cfg(root, max_seq_len=L, min_interactions=min_inter))
    ref = _reference_protocol(users, ids, L, min_inter)
    assert data.users == ref["users"] and data.item_ids == ref["item_ids"]
    got = {"train_inputs": data.train_inputs, "train_targets": data.train_targets, "item_counts": data.item_counts}
    for split in ("valid", "test"):
        for part in ("inputs", "targets", "history"):
            got[f"{split}.{part}"] = getattr(getattr(data, split), part)
    for key, value in got.items():
        assert value.dtype == np.int64, key
        np.testing.assert_array_equal(value, ref[key], err_msg=key)
    assert data.catalogue.ids() == ref["item_ids"][1:]


def _reference_read_users(text: str, catalogue: set[str], drop: bool) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The users.tsv rules read line by line in plain Python (as the reader worked before vectorising)."""
    sequences: dict[str, list[str]] = {}
    dropped = {"bad_rows": 0, "unknown_items": 0}
    for line in text.splitlines():
        if not line.strip():
            continue
        user, sep, rest = line.partition("\t")
        user, items = user.strip(), rest.split()
        if not sep or not user or not items or user in sequences:
            dropped["bad_rows"] += 1
            continue
        kept = [i for i in items if i in catalogue]
        dropped["unknown_items"] += len(items) - len(kept)
        if kept:
            sequences[user] = kept
    return sequences, {k: v for k, v in dropped.items() if v}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_user_reader_equals_line_by_line_reference(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    items = {f"i{k}": "t" for k in range(50)} | {"é9": "t", "long_item_identifier_over_8": "t"}
    ids = list(items) + ["nope", "i", "i500"]  # the last three are unknown
    lines = []
    for u in range(300):
        kind = rng.integers(0, 12)
        name = f"u{int(rng.integers(0, 250))}" if kind != 1 else f"u {u}"  # repeats; a space inside a user id
        seq = " ".join(ids[k] for k in rng.integers(0, len(ids), size=int(rng.integers(0, 8))))
        seq = seq.replace(" ", "  \t ", 1) if kind == 2 else seq  # whitespace runs and a second tab
        lines.append({3: name, 4: f"\t{seq}", 5: "   ", 6: ""}.get(int(kind), f"{name}\t{seq}"))
    text = "\r\n".join(lines) + ("\n" if seed else "")
    root = write_iisan(tmp_path / "d", {}, items)
    (root / "users.tsv").write_bytes(text.encode("utf-8"))
    from crossan.data import read

    raw = read(_cfg(root, on_bad_rows="drop", on_unknown_items="drop"))
    ref_seq, ref_dropped = _reference_read_users(text, set(items), drop=True)
    assert raw.sequences == ref_seq and raw.dropped == ref_dropped
    assert list(raw.sequences) == list(ref_seq)  # users in file order


def test_vectorised_inter_reader_equals_reference(tmp_path: Path) -> None:
    """Timestamps with ties, decimals and exponents; users in order of first appearance; sorted item ids."""
    rng = np.random.default_rng(5)
    rows = [(f"u{int(rng.integers(0, 40))}", f"m{int(rng.integers(0, 30))}",
             ["7", "3.5", "1e2", "12", "0012", str(int(rng.integers(0, 1000)))][int(rng.integers(0, 6))])
            for _ in range(600)]
    root = tmp_path / "a"
    root.mkdir()
    (root / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                  + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
    from crossan.data import read

    raw = read(_cfg(root))
    by_user: dict[str, list[tuple[float, int, str]]] = {}
    for line, (u, i, t) in enumerate(rows):
        by_user.setdefault(u, []).append((float(t), line, i))
    assert raw.sequences == {u: [i for _, _, i in sorted(v)] for u, v in by_user.items()}
    assert list(raw.sequences) == list(by_user)
    assert raw.catalogue.ids() == sorted({i for _, i, _ in rows})


def test_scale_benchmark_generator_is_deterministic_and_readable(tmp_path: Path) -> None:
    scale = load_benchmark("scale")
    a = scale.generate(tmp_path / "a", users=300, items=40, seed=7)
    scale.generate(tmp_path / "b", users=300, items=40, seed=7)
    for name in ("users.tsv", "items.tsv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    from crossan.data import read

    raw = read(_cfg(tmp_path / "a"))
    assert len(raw.interactions.users) == 300 and len(raw.interactions.items) == a["interactions"]
    assert raw.interactions.lengths.min() >= 5

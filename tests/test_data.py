from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import write_iisan
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

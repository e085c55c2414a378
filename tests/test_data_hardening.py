"""Hostile and careless input files (issue 15, items 1, 3, 4, 5 and the data side of 7 and 10).

Every test here was written as the failing case first: each builds a small real dataset on disk and
checks that crossan either reads it correctly or stops with a message naming the file and line (or the
item, column and path).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_iisan
from crossan.config import Config, DataConfig
from crossan.data import DataError, prepare, read
from crossan.data.media import MediaError
from media_helpers import write_image

BOM = "\ufeff"
SEQ = " ".join(f"x{k}" for k in range(6))


def _cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(path=str(path), **kw)


def _rel(msg: object, root: Path) -> str:
    return str(msg).replace(str(root) + "/", "")


# --------------------------------------------------------------------------------------------- 1. media root
def _media_dataset(root: Path, image_cell: str) -> Path:
    """Six items with an image column; item x0's cell is ``image_cell``, the others point at a real PNG."""
    root.mkdir(parents=True, exist_ok=True)
    write_image(root / "covers" / "ok.png", (10, 200, 30))
    rows = ["item_id\ttitle\timage"] + [f"x{k}\ttitle {k}\t{image_cell if k == 0 else 'covers/ok.png'}"
                                        for k in range(6)]
    (root / "items.tsv").write_text("\n".join(rows) + "\n")
    (root / "users.tsv").write_text(f"u0\t{SEQ}\n")
    return root


@pytest.fixture
def outside_png(tmp_path: Path) -> Path:
    return write_image(tmp_path / "elsewhere" / "secret.png", (255, 0, 0))


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink_cell", "symlink_discovered"])
def test_media_path_outside_the_root_is_refused(tmp_path: Path, outside_png: Path, how: str) -> None:
    root = tmp_path / "d"
    if how == "absolute":
        _media_dataset(root, str(outside_png))
        cell = str(outside_png)
    elif how == "dotdot":
        _media_dataset(root, "../elsewhere/secret.png")
        cell = "../elsewhere/secret.png"
    elif how == "symlink_cell":
        _media_dataset(root, "covers/link.png")
        os.symlink(outside_png, root / "covers" / "link.png")
        cell = "covers/link.png"
    else:  # no path columns: media found by item id in images/, one of them a symlink out of the root
        write_iisan(root, {"u0": SEQ.split()}, {f"x{k}": f"t{k}" for k in range(6)})
        (root / "images").mkdir()
        os.symlink(outside_png, root / "images" / "x0.png")
        write_image(root / "images" / "x1.png", (0, 0, 255))
        cell = "images/x0.png"
    data = prepare(_cfg(root))
    rec = data.catalogue["x0"]
    assert rec.image == cell  # the reader keeps what the file says ...
    with pytest.raises(MediaError) as err:
        data.catalogue.path(rec, "image")  # ... but nothing outside the root is ever handed to a loader
    msg = str(err.value)
    assert "'x0'" in msg and "image" in msg and "outside the dataset root" in msg and "data.media_roots" in msg
    assert cell in msg or str(outside_png) in msg
    # an item whose file lies inside the root is untouched
    assert data.catalogue.path(data.catalogue["x1"], "image").is_file()


def test_symlink_inside_the_root_is_fine(tmp_path: Path) -> None:
    root = _media_dataset(tmp_path / "d", "covers/inner.png")
    os.symlink(root / "covers" / "ok.png", root / "covers" / "inner.png")
    data = prepare(_cfg(root))
    assert data.catalogue.path(data.catalogue["x0"], "image") == root / "covers" / "inner.png"


def test_media_roots_option_allows_another_folder(tmp_path: Path, outside_png: Path) -> None:
    root = _media_dataset(tmp_path / "d", str(outside_png))
    data = prepare(_cfg(root, media_roots=[str(outside_png.parent)]))
    assert data.catalogue.path(data.catalogue["x0"], "image") == outside_png
    # relative entries are taken relative to the dataset root
    data = prepare(_cfg(root, media_roots=["../elsewhere"]))
    assert data.catalogue.path(data.catalogue["x0"], "image") == outside_png
    # a sibling folder whose name merely starts like the allowed one is still outside
    (tmp_path / "elsewhere2").mkdir()
    write_image(tmp_path / "elsewhere2" / "x.png", (1, 2, 3))
    root2 = _media_dataset(tmp_path / "d2", str(tmp_path / "elsewhere2" / "x.png"))
    data = prepare(_cfg(root2, media_roots=[str(outside_png.parent)]))
    with pytest.raises(MediaError, match="outside the dataset root"):
        data.catalogue.path(data.catalogue["x0"], "image")


def test_outside_media_counted_missing_under_on_corrupt_missing(tmp_path: Path, outside_png: Path) -> None:
    """Through the real image encoder's loader, as ``crossan cache`` reads media."""
    from crossan.encoders import build_encoder, resolve_specs

    root = _media_dataset(tmp_path / "d", "../elsewhere/secret.png")
    data = prepare(_cfg(root))
    cfg = Config()
    cfg.encoders.preset = "tiny"
    encoder = build_encoder("image", resolve_specs(cfg, ["image"])["image"])
    records = [data.catalogue["x0"], data.catalogue["x1"]]
    with pytest.raises(MediaError, match="outside the dataset root"):
        encoder.load_media(records, data.catalogue, "error")
    loaded = encoder.load_media(records, data.catalogue, "missing")
    assert loaded.present == [False, True]
    assert "outside the dataset root" in str(loaded.corrupt[0])


def test_media_roots_is_a_typed_config_key(tmp_path: Path) -> None:
    from crossan.config import ConfigError, load_config

    cfg = load_config([], ["data.media_roots=[/srv/media,../shared]"])
    assert cfg.data.media_roots == ["/srv/media", "../shared"]
    assert load_config([], ["data.media_roots=5"]).data.media_roots == ["5"]  # the command line: text as typed
    f = tmp_path / "a.yaml"
    f.write_text("data:\n  media_roots: 5\n")  # a file: YAML's number, which a folder name is not
    with pytest.raises(ConfigError, match=r"data\.media_roots\[0\]: expected a string, got 5"):
        load_config([f])


# --------------------------------------------------------------------------------------------- 3. tabs in titles
def test_header_row_with_extra_field_names_file_and_line(tmp_path: Path) -> None:
    root = _media_dataset(tmp_path / "d", "covers/ok.png")
    lines = (root / "items.tsv").read_text().splitlines()
    lines[3] = "x2\ta title\twith a tab\tcovers/ok.png"  # line 4 of the file
    (root / "items.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        prepare(_cfg(root))
    assert "items.tsv:4: expected 3 tab-separated fields (as the header), got 4" in _rel(err.value, root)
    # a row with too few fields is as wrong
    lines[3] = "x2\ta title"
    (root / "items.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"items.tsv:4: expected 3 tab-separated fields \(as the header\), got 2"):
        prepare(_cfg(root))
    # on_bad_rows=drop skips and counts it (the item then is unknown: drop those too)
    data = prepare(_cfg(root, on_bad_rows="drop", on_unknown_items="drop"))
    assert "x2" not in data.catalogue and data.dropped == {"bad_rows": 1, "unknown_items": 1}


def test_headerless_title_is_the_rest_of_the_line(tmp_path: Path) -> None:
    root = write_iisan(tmp_path / "d", {"u0": SEQ.split()}, {f"x{k}": f"t{k}" for k in range(6)})
    (root / "items.tsv").write_text("".join(f"x{k}\tpart one\tpart two {k}\n" for k in range(6)))
    data = prepare(_cfg(root))
    assert data.catalogue["x3"].text == "part one\tpart two 3"


def test_a_header_whose_id_column_is_named_id_is_a_header(tmp_path: Path) -> None:
    """``id TAB title TAB image TAB price``: the README allows ``id`` for the id column, but with one unknown
    column the line was read as an item called 'id', and every row's title swallowed its image path and price
    (media lost without a word). It is a header now, whose unknown column is the error ``item_id`` gets; an
    item called id with a title of its own is still an item."""
    root = _media_dataset(tmp_path / "d", "covers/ok.png")
    body = (root / "items.tsv").read_text().split("\n", 1)[1]
    (root / "items.tsv").write_text("id\ttitle\timage\tprice\n" + body.replace("\n", "\t9.99\n"))
    with pytest.raises(DataError, match=r"items.tsv:1: header column 'price' not known"):
        prepare(_cfg(root))
    (root / "items.tsv").write_text("ID\ttitle\timage\n" + body)
    data = prepare(_cfg(root))
    assert "id" not in data.catalogue and "ID" not in data.catalogue and data.catalogue["x0"].image == "covers/ok.png"
    items = {f"x{k}": f"t{k}" for k in range(6)} | {"id": "an item called id"}
    root = write_iisan(tmp_path / "e", {"u0": SEQ.split() + ["id"]}, items)
    (root / "items.tsv").write_text("id\tan item called id\n" + "".join(f"x{k}\tt{k}\n" for k in range(6)))
    assert prepare(_cfg(root)).catalogue["id"].text == "an item called id"


# --------------------------------------------------------------------------------------------- 4. BOM
def test_bom_in_items_tsv_header(tmp_path: Path) -> None:
    root = _media_dataset(tmp_path / "d", "covers/ok.png")
    (root / "items.tsv").write_text(BOM + (root / "items.tsv").read_text())
    data = prepare(_cfg(root))
    assert "title" not in [r.text for r in data.catalogue] and "item_id" not in data.catalogue
    assert data.catalogue["x0"].image == "covers/ok.png"


def test_bom_in_users_tsv_and_headerless_items(tmp_path: Path) -> None:
    root = write_iisan(tmp_path / "d", {"u0": SEQ.split(), "u1": SEQ.split()}, {f"x{k}": f"t{k}" for k in range(6)})
    for name in ("users.tsv", "items.tsv"):
        (root / name).write_text(BOM + (root / name).read_text())
    data = prepare(_cfg(root))
    assert data.users == ["u0", "u1"] and "x0" in data.catalogue


def test_bom_in_atomic_and_csv(tmp_path: Path) -> None:
    root = tmp_path / "a"
    root.mkdir()
    rows = "".join(f"u1\tm{k}\t{k}\n" for k in range(6))
    (root / "d.inter").write_text(BOM + "user_id:token\titem_id:token\ttimestamp:float\n" + rows)
    (root / "d.item").write_text(BOM + "item_id:token\ttitle:token_seq\n" + "".join(f"m{k}\tFilm {k}\n" for k in range(6)))
    data = prepare(_cfg(root))
    assert data.users == ["u1"] and data.catalogue["m2"].text == "Film 2"
    csv = tmp_path / "c" / "x.csv"
    csv.parent.mkdir()
    csv.write_text(BOM + "user,item,timestamp\n" + rows.replace("\t", ","))
    assert prepare(_cfg(csv)).users == ["u1"]


# --------------------------------------------------------------------------------------------- 5. extra fields
def test_inter_row_with_extra_field_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "a"
    root.mkdir()
    rows = "".join(f"u1\tm{k}\t{k}\n" for k in range(6))
    (root / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + rows + "u1\tm7\t7\textra\n")
    with pytest.raises(DataError, match=r"d.inter:8: expected 3 fields, got 4"):
        prepare(_cfg(root))
    data = prepare(_cfg(root, on_bad_rows="drop"))
    assert data.dropped == {"bad_rows": 1} and "m7" not in data.item_ids
    csv = tmp_path / "c" / "x.csv"
    csv.parent.mkdir()
    csv.write_text("user,item,timestamp\n" + rows.replace("\t", ",") + "u1,m7,7,\n")
    with pytest.raises(DataError, match=r"x.csv:8: expected 3 fields, got 4"):
        prepare(_cfg(csv))


# --------------------------------------------------------------------------------------------- 7/10. text
@pytest.mark.parametrize("name, line", [("users.tsv", 2), ("items.tsv", 3), ("d.inter", 3), ("d.item", 2),
                                        ("x.csv", 4)])
def test_non_utf8_input_names_file_and_line(tmp_path: Path, name: str, line: int) -> None:
    root = tmp_path / "d"
    if name in ("users.tsv", "items.tsv"):
        write_iisan(root, {"u0": SEQ.split(), "u1": SEQ.split()}, {f"x{k}": f"t{k}" for k in range(6)})
        target = root / name
    elif name == "x.csv":
        root.mkdir()
        target = root / name
        target.write_text("user,item,timestamp\n" + "".join(f"u1,m{k},{k}\n" for k in range(6)))
    else:
        root.mkdir()
        (root / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                      + "".join(f"u1\tm{k}\t{k}\n" for k in range(6)))
        (root / "d.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(f"m{k}\tFilm {k}\n" for k in range(6)))
        target = root / name
    lines = target.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1][:2] + b"\xff\xfe" + lines[line - 1][2:]
    target.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError) as err:
        prepare(_cfg(root if name != "x.csv" else target))
    assert f"{name}:{line}: not valid UTF-8" in _rel(err.value, root)
    target.write_bytes(b"\n".join(lines[:line - 1] + [b"a\x00b"] + lines[line:]))
    with pytest.raises(DataError) as err:
        prepare(_cfg(root if name != "x.csv" else target))
    assert f"{name}:{line}: a NUL byte" in _rel(err.value, root)


def test_long_title_is_cut_in_characters_when_read(tmp_path: Path) -> None:
    from crossan.data.catalogue import MAX_TEXT_CHARS_DEFAULT

    root = write_iisan(tmp_path / "d", {"u0": SEQ.split()}, {f"x{k}": f"t{k}" for k in range(6)})
    huge = "é" + "w" * (10 * 2**20)  # a 10 MB title
    (root / "items.tsv").write_text("".join(f"x{k}\t{huge if k == 1 else 'short'}\n" for k in range(6)))
    t0 = time.perf_counter()
    data = prepare(_cfg(root))
    assert time.perf_counter() - t0 < 5.0
    assert MAX_TEXT_CHARS_DEFAULT == 2000
    assert data.catalogue["x1"].text == huge[:2000] and data.catalogue["x2"].text == "short"
    assert prepare(_cfg(root, max_text_chars=10)).catalogue["x1"].text == huge[:10]
    # the atomic item text (joined columns) is cut the same way
    a = tmp_path / "a"
    a.mkdir()
    (a / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                               + "".join(f"u1\tm{k}\t{k}\n" for k in range(6)))
    (a / "d.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(f"m{k}\t{'z' * 3000}\n" for k in range(6)))
    assert read(_cfg(a)).catalogue["m0"].text == "z" * 2000


def test_min_interactions_below_two_is_a_config_error(tmp_path: Path) -> None:
    root = write_iisan(tmp_path / "d", {"u0": ["x1"], "u1": SEQ.split()}, {f"x{k}": f"t{k}" for k in range(6)})
    with pytest.raises(DataError, match="data.min_interactions"):
        prepare(_cfg(root, min_interactions=1))


def test_crlf_and_cr_only_line_ends(tmp_path: Path) -> None:
    items = {f"x{k}": f"t{k}" for k in range(6)}
    ref = prepare(_cfg(write_iisan(tmp_path / "ref", {"u0": SEQ.split(), "u1": SEQ.split()[::-1]}, items)))
    for sep in ("\r\n", "\r"):
        root = write_iisan(tmp_path / f"d{len(sep)}", {}, items)
        (root / "users.tsv").write_text(f"u0\t{SEQ}{sep}u1\t{' '.join(SEQ.split()[::-1])}{sep}", newline="")
        data = prepare(_cfg(root))
        assert data.users == ref.users
        np.testing.assert_array_equal(data.test.history, ref.test.history)

"""Edge cases of the data readers found by an audit; each test failed before its fix.

* ``items.tsv`` ids are checked like the users file's: no whitespace inside (a header-less line missing its
  tab), at most ``MAX_ID_BYTES`` bytes, stripped of ASCII whitespace only;
* the quoted CSV / ``.inter`` path names the physical line where a bad record starts;
* UTF-8 and NUL errors in files with bare-CR line ends name the right line;
* the fast and the quoted CSV paths agree on non-ASCII whitespace and digits.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crossan.config import DataConfig
from crossan.data import DataError, read
from crossan.data import textscan as ts
from crossan.data.readers import MAX_ID_BYTES, read_csv

LONG = "x" * (MAX_ID_BYTES + 1)


def _rel(msg: object, root: Path) -> str:
    return str(msg).replace(str(root) + "/", "")


def _iisan(root: Path, items: str, users: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "items.tsv").write_bytes(items.encode("utf-8"))
    (root / "users.tsv").write_bytes(users.encode("utf-8"))
    return root


# --------------------------------------------------------------------------------------------- items.tsv ids
@pytest.mark.parametrize("items, where, needle", [
    ("i1\tOne\ni2 Two words\ni3\tThree\n", "items.tsv:2", "'i2 Two words' contains whitespace"),
    ("item_id\ttitle\ni1\tOne\ni 2\tTwo\ni3\tThree\n", "items.tsv:3", "'i 2' contains whitespace"),
    ("i1\tOne\ni2\x0bx\tTwo\ni3\tThree\n", "items.tsv:2", "contains whitespace"),
    (f"i1\tOne\ni3\tThree\n{LONG}\tLong\n", "items.tsv:3", f"item id longer than {MAX_ID_BYTES} bytes"),
])
def test_bad_catalogue_id_names_file_and_line(tmp_path: Path, items: str, where: str, needle: str) -> None:
    root = _iisan(tmp_path / "d", items, "u\ti1 i3\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    msg = _rel(e.value, root)
    assert msg.startswith(where + ":") and needle in msg and "data.on_bad_rows=drop" in msg


def test_bad_catalogue_ids_are_dropped_and_counted(tmp_path: Path) -> None:
    items = f"i1\tOne\ni2 Two words\n{LONG}\tLong\ni3\tThree\n"
    root = _iisan(tmp_path / "d", items, "u\ti1 i3\n")
    raw = read(DataConfig(path=str(root), on_bad_rows="drop"))
    assert raw.catalogue.ids() == ["i1", "i3"]
    assert raw.sequences == {"u": ["i1", "i3"]} and raw.dropped == {"bad_rows": 2}


def test_catalogue_id_strips_ascii_whitespace_only(tmp_path: Path) -> None:
    """A no-break space is part of an id in the users file, so it is part of the catalogue's id too."""
    root = _iisan(tmp_path / "d", "i1\u00a0\tOne\ni2\tTwo\n", "u\ti1\u00a0 i2\n")
    raw = read(DataConfig(path=str(root)))
    assert raw.catalogue.ids() == ["i1\u00a0", "i2"] and raw.sequences == {"u": ["i1\u00a0", "i2"]}


def test_catalogue_beside_a_csv_keeps_ids_with_spaces(tmp_path: Path) -> None:
    """CSV fields may hold spaces, so an items.tsv read beside a CSV file accepts such ids (not beside users.tsv)."""
    root = tmp_path / "c"
    root.mkdir()
    (root / "items.tsv").write_text("item_id\ttitle\nThe Matrix\tA film\nHeat\tAnother\n")
    (root / "x.csv").write_text("user,item,timestamp\nu,The Matrix,1\nu,Heat,2\n")
    raw = read(DataConfig(path=str(root / "x.csv")))
    assert raw.catalogue.ids() == ["The Matrix", "Heat"] and raw.sequences == {"u": ["The Matrix", "Heat"]}


def test_atomic_item_id_too_long_names_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "a"
    root.mkdir()
    (root / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu\tm1\t1\nu\tm2\t2\n")
    (root / "d.item").write_text(f"item_id:token\ttitle:token_seq\nm1\tA\n{LONG}\tB\nm2\tC\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert _rel(e.value, root).startswith(f"d.item:3: item id longer than {MAX_ID_BYTES} bytes")


# --------------------------------------------------------------------------------------------- line numbers
@pytest.mark.parametrize("name, delim", [("x.csv", ","), ("d.inter", "\t")])
@pytest.mark.parametrize("last", ["n", '"n\nm"'])
def test_quoted_path_names_the_physical_line(tmp_path: Path, name: str, delim: str, last: str) -> None:
    """A quoted field spanning lines: the error names the line where the bad record starts."""
    root = tmp_path / "d"
    root.mkdir()
    head = "user,item,timestamp,note" if name.endswith(".csv") else \
        "user_id:token,item_id:token,timestamp:float,note:token"
    rows = [head, 'u1,i1,1,"a', 'b"', "u1,i2,2,c", f"u1,i3,x,{last}", "u1,i4,4,d"]
    (root / name).write_text("\n".join(r.replace(",", delim) for r in rows) + "\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root / name if name.endswith(".csv") else root)))
    assert _rel(e.value, root).startswith(f"{name}:5: malformed timestamp 'x'")


@pytest.mark.parametrize("bad", [b"\xff", b"\x00"])
@pytest.mark.parametrize("eol", [b"\r", b"\r\n", b"\n"])
def test_text_errors_in_bare_cr_files_name_the_line(tmp_path: Path, eol: bytes, bad: bytes) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "items.tsv").write_bytes(eol.join([b"i1\tA", b"i2\tB", b"i3\tbad " + bad + b" byte", b""]))
    (root / "users.tsv").write_bytes(b"u1\ti1 i2\n")
    with pytest.raises(DataError, match=r"items\.tsv:3: "):
        read(DataConfig(path=str(root)))


def test_decode_text_makes_bare_cr_line_ends_first(tmp_path: Path) -> None:
    raw = b"\xef\xbb\xbfa\rb\r\nc\r\xc3"
    with pytest.raises(ts.TextError, match=r"f\.txt:4: not valid UTF-8"):
        ts.decode_text(raw, tmp_path / "f.txt")
    assert ts.decode_text(raw[:-1], tmp_path / "f.txt") == "a\nb\nc\n"


# --------------------------------------------------------------------------------------------- fast = quoted
def _read_csv(path: Path, text: str) -> object:
    path.write_bytes(text.encode("utf-8"))
    try:
        raw = read_csv(path, DataConfig(path=str(path)))
    except DataError as e:
        return _rel(e, path.parent)
    return raw.sequences, raw.dropped


BAD_TIME = "x.csv:2: malformed timestamp "


@pytest.mark.parametrize("rows, expected", [
    (["u1\u00a0,i1,1", "u1,i2,2"], ({"u1\u00a0": ["i1"], "u1": ["i2"]}, {})),
    (["u1,i1\u2003,1", "u1,i2,2"], "x.csv:2: item " + repr("i1\u2003")),
    (["u1,i1,\u0661\u0662", "u1,i2,2"], BAD_TIME + repr("\u0661\u0662")),
    (["u1,i1,\uff11", "u1,i2,2"], BAD_TIME + repr("\uff11")),
    (["u1,i1,\u00a03", "u1,i2,2"], BAD_TIME + repr("\u00a03")),
    (["u1,i1,\x1f3 ", "u1,i2,2"], ({"u1": ["i2", "i1"]}, {})),
])
def test_fast_and_quoted_csv_paths_agree(tmp_path: Path, rows: list[str], expected: object) -> None:
    """No-break and em spaces are content (not stripped), Unicode digits are not numbers, on both paths."""
    (tmp_path / "items.tsv").write_text("i1\tOne\ni2\tTwo\n")
    fast = _read_csv(tmp_path / "x.csv", "\n".join(["user,item,time", *rows]) + "\n")
    quoted = _read_csv(tmp_path / "x.csv", "\n".join(["user,item,time", *rows[:-1], 'u1,"i2",2']) + "\n")
    assert quoted == fast
    assert fast.startswith(expected) if isinstance(expected, str) else fast == expected


# --------------------------------------------------------------------------------------------- a user's catalogue
def test_an_unknown_items_header_column_is_an_error_naming_it(tmp_path: Path) -> None:
    """``item_id TAB name``: the misnamed title column was dropped in silence (every title empty, a text run
    trained on nothing). Now an error naming the file, line 1 and the column; a repeated column too."""
    users = "u1\ta b\n"
    root = _iisan(tmp_path / "d", "item_id\tname\na\tfirst\nb\tsecond\n", users)
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert _rel(e.value, root).startswith("items.tsv:1: header column 'name' not known; the columns after "
                                          "'item_id' may be title, text, image, video, audio")
    root = _iisan(tmp_path / "e", "item_id\ttitle\ttitle\na\tx\ty\nb\tx\ty\n", users)
    with pytest.raises(DataError, match="header column 'title' appears twice"):
        read(DataConfig(path=str(root)))
    root = _iisan(tmp_path / "f", "item_id:token\ttitle:token_seq\tcover\na\tx\tp.png\nb\ty\tq.png\n", users)
    with pytest.raises(DataError, match="header column 'cover' not known"):
        read(DataConfig(path=str(root)))


def test_media_without_a_column_are_found_by_id_and_two_files_warn(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A header with an image column only: videos in ``videos/`` named by item id were ignored (a path column
    switched folder discovery off for every modality); they are found now. An id with two cover files
    keeps the first (folder, then name order) with a warning naming both."""
    root = _iisan(tmp_path / "d", "item_id\ttitle\timage\na\tx\tpics/a.png\nb\ty\t\n", "u1\ta b\n")
    (root / "videos").mkdir()
    (root / "videos" / "a.mp4").write_bytes(b"")
    (root / "videos" / "b.mp4").write_bytes(b"")
    cat = read(DataConfig(path=str(root))).catalogue
    assert (cat["a"].image, cat["b"].image, cat["a"].video, cat["b"].video) == (
        "pics/a.png", None, "videos/a.mp4", "videos/b.mp4")

    root = _iisan(tmp_path / "e", "a\tx\nb\ty\n", "u1\ta b\n")
    for name in ("images/a.png", "images/a.jpg", "covers/a.webp", "images/b.png"):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(b"")
    with caplog.at_level("WARNING", logger="crossan"):
        cat = read(DataConfig(path=str(root))).catalogue
    assert (cat["a"].image, cat["b"].image) == ("images/a.jpg", "images/b.png")
    assert "1 item id(s) have more than one file" in caplog.text
    assert "images/a.jpg (not images/a.png, covers/a.webp)" in caplog.text


def test_a_folder_with_one_csv_and_items_tsv_hints_at_the_csv_layout(tmp_path: Path) -> None:
    """A folder with ``inter.csv`` and ``items.tsv`` is read as the IISAN layout (items.tsv); the error about
    its missing users file now says to pass the .csv file for the CSV layout."""
    root = _iisan(tmp_path / "d", "a\tx\nb\ty\n", "")
    (root / "users.tsv").unlink()
    (root / "inter.csv").write_text("user,item,timestamp\nu1,a,1\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert str(e.value) == f"{root}: no users.tsv or *_pairs.tsv found (for the CSV layout pass the file itself: " \
                           f"--data {root / 'inter.csv'})"

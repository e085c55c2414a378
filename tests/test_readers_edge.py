"""Edge cases of the data readers found by an audit; each test failed before its fix.

* ``items.tsv`` ids are checked like the users file's: no whitespace inside (a header-less line missing its
  tab), at most ``MAX_ID_BYTES`` bytes, stripped of ASCII whitespace only;
* the quoted CSV / ``.inter`` path names the physical line where a bad record starts;
* UTF-8 and NUL errors in files with bare-CR line ends name the right line;
* the fast and the quoted CSV paths agree on non-ASCII whitespace and digits;
* an ``items.tsv`` header is known by its column names (not only by ``item_id`` first), ``title`` with ``text``
  is an error; ``.item`` and ``.inter`` files read quotes alike; several candidate files are an error;
* a stray double quote merging rows into one id is a bad row, a quote left open at the end of a ``.item`` file
  is an error naming its line, and CR CR LF line ends count one line (session of 2026-12-04);
* timestamps beyond 2**53 order exactly beside decimals (or stop with an error naming the line), and plain
  integer ones are parsed from the bytes without a Python string per row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
@pytest.mark.parametrize("header", ["item_id\ttitle\t", "item_id\t\ttitle"])
def test_an_items_header_column_without_a_name_says_so(tmp_path: Path, header: str) -> None:
    """A header with a trailing tab (or two tabs in a row) read as "header column '' not known"; the error now
    says which column has no name and what usually makes one."""
    root = _iisan(tmp_path / "d", f"{header}\na\tx\t\nb\ty\t\n", "u1\ta b\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    at = 3 if header.endswith("\t") else 2
    assert _rel(e.value, root).startswith(f"items.tsv:1: header column {at} of 3 has no name (a tab at the end "
                                          "of the line, or two tabs in a row?)")


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


def test_a_folder_or_dangling_link_named_like_a_cover_is_no_items_file(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A second reader (2026-12-04): a folder `images/a.jpeg` hid the item's real `images/a.png` (with
    `cache.on_corrupt=missing` the item lost its cover as "corrupt"), and a dangling link `images/b.jpg` stopped
    the build. Only files are an item's media; items `.` and `..` find `..png` and `...png` (``splitext``
    reads a name of leading dots as one without an extension, so they were never matched)."""
    root = _iisan(tmp_path / "d", "a\tx\nb\ty\n.\tdot\n..\tdots\n", "u1\ta b . ..\n")
    (root / "images").mkdir()
    for name in ("a.png", "b.png", "..png", "...png"):
        (root / "images" / name).write_bytes(b"")
    (root / "images" / "a.jpeg").mkdir()
    (root / "images" / "b.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "images" / "a.gif").symlink_to(root / "images" / "a.gif")  # a loop: ELOOP, not a traceback
    with caplog.at_level("WARNING", logger="crossan"):
        cat = read(DataConfig(path=str(root))).catalogue
    assert (cat["a"].image, cat["b"].image, cat["."].image, cat[".."].image) == (
        "images/a.png", "images/b.png", "images/..png", "images/...png")
    assert "more than one file" not in caplog.text
    # not in silence: a link to an unmounted drive would otherwise lose its item's cover without a word
    assert ("3 entries named like media files are not files (folders, or links that lead to no file) and are not "
            "read: images/a.jpeg, images/a.gif, images/b.jpg") in caplog.text


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



def test_a_csv_folder_whose_items_have_spaces_still_hints_at_the_csv_layout(tmp_path: Path) -> None:
    """``--data FOLDER`` on a CSV layout whose items.tsv has an id with a space (allowed beside a CSV file): the
    folder is read as the IISAN layout, which failed first on that id ('contains whitespace', at items.tsv's
    line) instead of saying that the users file is missing and to pass the .csv file."""
    root = tmp_path / "d"
    root.mkdir()
    (root / "items.tsv").write_text("item_id\ttitle\nit 1\tx\nb\ty\n")
    (root / "inter.csv").write_text("user,item,timestamp\nu1,it 1,1\nu1,b,2\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert str(e.value) == f"{root}: no users.tsv or *_pairs.tsv found (for the CSV layout pass the file itself: " \
                           f"--data {root / 'inter.csv'})"
    assert [r.item_id for r in read(DataConfig(path=str(root / "inter.csv"))).catalogue] == ["it 1", "b"]


def test_the_csv_hints_quote_a_path_with_a_space(tmp_path: Path) -> None:
    """The "--data FILE" the readers suggest (the CSV file of a folder read as IISAN, or one of several CSV
    files) was printed bare, so in "my data/" the shell split it in two when pasted; it is shell-quoted now."""
    import shlex

    root = _iisan(tmp_path / "my data", "a\tx\nb\ty\n", "")
    (root / "users.tsv").unlink()
    (root / "inter.csv").write_text("user,item,timestamp\nu1,a,1\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert str(e.value).endswith(f"--data {shlex.quote(str(root / 'inter.csv'))})") and "'" in str(e.value)
    (root / "items.tsv").unlink()
    (root / "more.csv").write_text("user,item,timestamp\nu1,a,1\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root), format="csv"))
    assert str(e.value).endswith(f"pass one: --data {shlex.quote(str(root / 'inter.csv'))}")


@pytest.mark.parametrize("quoted", [False, True])
def test_a_csv_of_iso_dates_is_told_that_timestamps_are_numbers(tmp_path: Path, quoted: bool) -> None:
    """A CSV whose timestamps are dates: 'malformed timestamp' at line 2 read as one bad row (its hint:
    drop such rows, i.e. all of them); the error now says what a timestamp is."""
    q = '"' if quoted else ""
    (tmp_path / "x.csv").write_text(f"user,item,timestamp\nu1,{q}a{q},2020-09-13 12:26:40\nu1,b,2020-09-13 12:27:40\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(tmp_path / "x.csv")))
    assert str(e.value).startswith(f"{tmp_path / 'x.csv'}:2: malformed timestamp '2020-09-13 12:26:40' (expected a "
                                   "number, such as Unix seconds; dates like 2020-09-13 12:26:40 are not read)")

# --------------------------------------------------------------------------------------------- items.tsv header
@pytest.mark.parametrize("header", ["id\ttitle\timage", "item_id:string\ttitle:token_seq\timage", "ID\tTitle\tImage"])
def test_an_items_header_with_another_id_name_is_a_header(tmp_path: Path, header: str) -> None:
    """``id TAB title TAB image``: line 1 was read as an item (the header became item 'id', image paths went
    into the titles, the image column was dropped). A first line whose other fields all name columns is a
    header; ``id`` and typed names (``item_id:string``) name the id column."""
    root = _iisan(tmp_path / "d", f"{header}\ni1\tRed mug\timg/a.png\ni2\tBlue cup\t\n", "u1\ti1 i2 i1\n")
    raw = read(DataConfig(path=str(root)))
    cat = raw.catalogue
    assert cat.ids() == ["i1", "i2"] and raw.sequences == {"u1": ["i1", "i2", "i1"]}
    assert [(cat[i].text, cat[i].image) for i in cat.ids()] == [("Red mug", "img/a.png"), ("Blue cup", None)]


def test_an_items_header_whose_first_column_is_no_id_is_an_error(tmp_path: Path) -> None:
    root = _iisan(tmp_path / "d", "sku\ttitle\timage\ni1\tRed mug\timg/a.png\n", "u1\ti1\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert _rel(e.value, root) == (
        "items.tsv:1: line 1 reads as a header (its other fields name columns: title, image) but its first column "
        "'sku' is not an item-id column; name it item_id, item, id (if line 1 is an item, start the file with the "
        "header 'item_id TAB title')")
    # a header-less file keeps its first line as an item when its title is not a column name
    root = _iisan(tmp_path / "e", "sku\tA title\ni1\tRed mug\n", "u1\ti1 sku\n")
    assert read(DataConfig(path=str(root))).catalogue["sku"].text == "A title"


@pytest.mark.parametrize("header", ["item_id\ttitle\ttext", "item_id\ttext\ttitle"])
def test_an_items_header_with_title_and_text_is_an_error(tmp_path: Path, header: str) -> None:
    """Both columns name the title; one of them was dropped in silence."""
    root = _iisan(tmp_path / "d", f"{header}\ni1\tRed mug\tA large red ceramic mug\n", "u1\ti1\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert _rel(e.value, root) == ("items.tsv:1: header has both a 'title' and a 'text' column; both name the "
                                   "item's title, keep one")


# --------------------------------------------------------------------------------------------- atomic quoting
def _atomic(root: Path, inter: str, item: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + inter)
    (root / "d.item").write_text("item_id:token\ttitle:token_seq\n" + item)
    return root


def test_atomic_item_and_inter_files_read_quotes_alike(tmp_path: Path) -> None:
    """The .item file was read without quoting and the .inter file with it (when it held a quote): ``"x"`` was
    one id in one file and another in the other, and interactions attached to the wrong item."""
    root = _atomic(tmp_path / "d", 'u1\t"x"\t1\nu1\ty\t2\n', '"x"\tQuoted id\ny\tplain\n')
    raw = read(DataConfig(path=str(root)))
    assert raw.sequences == {"u1": ["x", "y"]} and raw.catalogue["x"].text == "Quoted id"
    root = _atomic(tmp_path / "e", 'u1\t"x"\t1\nu1\ty\t2\nu1\tx\t3\n', '"x"\tQuoted id\ny\tplain\nx\tother x\n')
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert _rel(e.value, root).startswith("d.item:4: item 'x' appears twice")
    # a quote inside a field is kept; a record with a quoted line break is named by its first line
    root = _atomic(tmp_path / "f", "u1\ta\t1\nu1\tb\t2\n", 'a\t5" screen\nb\t"two\nlines"\nc\n')
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert _rel(e.value, root).startswith("d.item:5: expected 2 fields, got 1")
    raw = read(DataConfig(path=str(root), on_bad_rows="drop"))
    assert [raw.catalogue[i].text for i in ("a", "b")] == ['5" screen', "two\nlines"]


# --------------------------------------------------------------------------------------------- several files
def test_several_candidate_files_are_an_error_listing_them(tmp_path: Path) -> None:
    """``data.format=csv`` on a folder with a.csv and b.csv, or a folder with two .item files, silently read
    the first."""
    root = tmp_path / "c"
    root.mkdir()
    (root / "a.csv").write_text("user,item,timestamp\nu1,i1,1\n")
    (root / "b.csv").write_text("user,item,timestamp\nu2,i9,1\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root), format="csv"))
    assert str(e.value) == (f"{root}: data.format=csv but several .csv files (a.csv, b.csv); pass one: "
                            f"--data {root / 'a.csv'}")
    root = _atomic(tmp_path / "d", "u1\ta\t1\n", "a\tNEW title\n")
    (root / "a.item").write_text("item_id:token\ttitle:token_seq\na\tOLD title\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert str(e.value) == f"{root}: several .item files (a.item, d.item); keep one"
    root = _iisan(tmp_path / "i", "i1\tRed mug\n", "u1\ti1\n")  # users.tsv silently won over a pairs file
    (root / "Scientific_pairs.tsv").write_text("u2\ti1\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert str(e.value) == f"{root}: both users.tsv and Scientific_pairs.tsv hold user histories; keep one"


# --------------------------------------------------------------------------------------------- big timestamps
BIG = 1600000000000000000


@pytest.mark.parametrize("quoted", [False, True])
def test_big_timestamps_order_exactly_beside_decimals(tmp_path: Path, quoted: bool) -> None:
    """19-digit timestamps a few units apart were ordered exactly only while every timestamp was an integer;
    one decimal anywhere made all of them float64 (equal, so ordered by line). Integer parts and fractions
    are now read from the text, on the fast and the quoted path alike."""
    user = '"u1"' if quoted else "u1"
    rows = [f"{user},i1,{BIG + 3}", f"{user},i2,{BIG + 2}.5", f"{user},i3,{BIG + 2}", f"{user},i4,{BIG + 2}.25",
            "u2,i1,-1.5", "u2,i2,-1.25", "u2,i3,-2", "u2,i4,1e0", "u2,i5,0.5"]
    path = tmp_path / "a.csv"
    path.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    raw = read(DataConfig(path=str(path)))
    assert raw.sequences == {"u1": ["i3", "i4", "i2", "i1"], "u2": ["i3", "i1", "i2", "i5", "i4"]}


@pytest.mark.parametrize("stamp", ["1.6e18", "99999999999999999999", "-9300000000000000000.5"])
def test_a_big_timestamp_that_cannot_order_exactly_is_an_error(tmp_path: Path, stamp: str) -> None:
    path = tmp_path / "a.csv"
    path.write_text(f"user,item,timestamp\nu1,i1,{BIG + 1}.5\nu1,i2,{stamp}\nu1,i3,{BIG}\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(path)))
    assert _rel(e.value, tmp_path) == (f"a.csv:3: timestamp {stamp!r} cannot be ordered exactly among timestamps "
                                       "beyond 2**53 (float64 rounds them); write it as a plain integer or decimal "
                                       "number within int64")


def test_plain_integer_big_timestamps_are_parsed_without_a_string_per_row(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """19-digit nanosecond epochs (all integers) are ordered exactly from the file's bytes: the reader made a
    Python string of every row's timestamp first (about 160 bytes a row, 1.6 GB and 11 s more at ten million
    rows); now those strings are only made where some timestamp is not a plain integer."""
    def no_strings(*args: object) -> list[str]:
        raise AssertionError("a Python string per timestamp")

    monkeypatch.setattr(ts, "decode_ranges", no_strings)
    path = tmp_path / "a.csv"
    path.write_text("user,item,timestamp\n" + "".join(
        f"u1,i{k},{BIG + t}\n" for k, t in enumerate([3, 1, 2, 1, -5, 0])) + f"u2,i1,+{BIG}\nu2,i2,-{BIG}\n")
    raw = read(DataConfig(path=str(path)))
    assert raw.sequences == {"u1": ["i4", "i5", "i1", "i3", "i2", "i0"], "u2": ["i2", "i1"]}


def test_parse_integers_matches_int() -> None:
    cases = ["0", "-0", "+17", "00", "9223372036854775807", "-9223372036854775807", "9223372036854775808",
             "-9223372036854775808", "9999999999999999999", "10000000000000000000", "0001600000000000000003",
             "", "-", "+-1", "1.5", "1e3", "1 2", "\u0663", "x"]
    encoded = [c.encode("utf-8") for c in cases]
    ends = np.cumsum([len(b) for b in encoded])
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    values, plain = ts.parse_integers(buf, ends - np.array([len(b) for b in encoded]), ends)
    assert plain.tolist() == [True] * 6 + [False] * 13
    assert values[:6].tolist() == [0, 0, 17, 0, 2**63 - 1, -(2**63 - 1)]


def test_a_few_large_numeric_item_ids_take_the_sorted_lookup() -> None:
    """Numeric ids were looked up through an array as long as the largest id whenever it was below 50M: three
    items numbered up to 49,999,999 took 400 MB. The array is now kept only when it is not much longer than
    the list; otherwise the sorted lookup finds the same positions."""
    ids = ["7", "123", "49999999"]
    table = ts.KeyTable(ids)
    assert table.dense is None
    text = b"49999999 7 8 123 0123 123"
    buf = np.frombuffer(text, dtype=np.uint8)
    starts = np.array([0, 9, 11, 13, 17, 22])
    ends = np.array([8, 10, 12, 16, 21, 25])
    assert table.lookup(buf, starts, ends).tolist() == [2, 0, -1, 1, -1, 1]
    small = ts.KeyTable([str(i) for i in range(1, 1001)])  # a catalogue numbered 1..N keeps the array
    assert small.dense is not None and len(small.dense) == 1001


@pytest.mark.parametrize(("layout", "header"), [
    ("csv", "user,user,item,timestamp"),
    ("csv", "user_id,item_id,item_id,timestamp"),
    ("atomic", "user_id:token\titem_id:token\ttimestamp:float\ttimestamp:float"),
])
def test_an_interactions_header_repeating_a_column_is_an_error(tmp_path: Path, layout: str, header: str) -> None:
    """A csv or .inter header naming a column twice used the first of the two without a word (an items.tsv
    header doing so is an error): which one holds the ids or times is not the reader's to guess."""
    root = tmp_path / "d"
    root.mkdir()
    sep = "," if layout == "csv" else "\t"
    rows = "".join(sep.join(f"{c}{r}" if c != "t" else str(r) for c in ("u", "u", "i", "t")) + "\n"
                   for r in range(1, 4))
    if layout == "csv":
        (root / "d.csv").write_text(header + "\n" + rows)
    else:
        (root / "d.inter").write_text(header + "\n" + rows)
    column = [c for c in header.replace(sep, " ").split() if header.count(c) > 1][0].split(":")[0]
    with pytest.raises(DataError, match=rf"d\.(csv|inter):1: header column '{column}' appears twice"):
        read(DataConfig(path=str(root)))


# --------------------------------------------------------------------------------------------- stray quotes
def _inter_rows(n: int = 12) -> list[tuple[str, str, int]]:
    return [(f"u{k % 2}", f"i{k % 5 + 1}", k) for k in range(n)]


@pytest.mark.parametrize("layout", ["csv", "atomic"])
def test_a_quote_merging_rows_into_an_id_is_a_bad_row(tmp_path: Path, layout: str) -> None:
    """A stray ``"`` opening line 3 and another closing line 6 made one user id of four lines; the rows were
    lost in silence (the merged user had too few interactions)."""
    root = tmp_path / "d"
    root.mkdir()
    delim = "," if layout == "csv" else "\t"
    lines = [delim.join(["user_id", "item_id", "timestamp"])]
    lines += [delim.join([u, i, str(t)]) for u, i, t in _inter_rows()]
    lines[2] = '"' + lines[2]
    lines[5] = lines[5].replace(delim, '"' + delim, 1)
    path = root / ("x.csv" if layout == "csv" else "x.inter")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(path if layout == "csv" else root)))
    assert _rel(e.value, root).startswith(f"{path.name}:3: a quoted field runs over lines 3–6 ")
    raw = read(DataConfig(path=str(path if layout == "csv" else root), on_bad_rows="drop"))
    assert raw.dropped == {"bad_rows": 1} and sum(map(len, raw.sequences.values())) == 12 - 4


QUOTE = '"'


@pytest.mark.parametrize("layout", ["csv", "atomic"])
def test_a_quote_swallowing_rows_into_a_text_column_is_a_bad_row(tmp_path: Path, layout: str) -> None:
    """A review opening with a stray quote and a later one holding ``12"`` made one review of the rows between
    them: 8 of 21 interactions lost in silence (two users then fell below the minimum). A review whose lines do
    not read as rows may span lines, as CSV allows."""
    root = tmp_path / "d"
    root.mkdir()
    delim = "," if layout == "csv" else "\t"
    rows = [delim.join([u, i, str(t), "fine"]) for u, i, t in _inter_rows()]
    rows[2] = rows[2].replace("fine", '"stray quote')
    rows[6] = rows[6].replace("fine", 'a 12" screen')
    path = root / ("x.csv" if layout == "csv" else "x.inter")
    path.write_text(delim.join(["user_id", "item_id", "timestamp", "review"]) + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(path if layout == "csv" else root)))
    assert _rel(e.value, root).startswith(f"{path.name}:4: a quoted field runs over lines 4–8, and its line 5 "
                                          "reads as a record of its own")
    raw = read(DataConfig(path=str(path if layout == "csv" else root), on_bad_rows="drop"))
    assert raw.dropped == {"bad_rows": 1} and sum(map(len, raw.sequences.values())) == 12 - 5
    # a later bad row does not hide it: the stray quote is said first, as it comes first in the file
    rows.append(delim.join(["u0", "i1", "2020-01-01", "fine"]))
    path.write_text(delim.join(["user_id", "item_id", "timestamp", "review"]) + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(path if layout == "csv" else root)))
    assert _rel(e.value, root).startswith(f"{path.name}:4: a quoted field runs over lines 4–8")
    review = '"first line' + "\n" + f"second{delim} with 12{delim} numbers{delim} and more" + "\n" + 'last"'
    rows = [delim.join([u, i, str(t), review if k == 2 else "fine"]) for k, (u, i, t) in enumerate(_inter_rows())]
    path.write_text(delim.join(["user_id", "item_id", "timestamp", "review"]) + "\n" + "\n".join(rows) + "\n")
    raw = read(DataConfig(path=str(path if layout == "csv" else root)))
    assert sum(map(len, raw.sequences.values())) == 12 and not raw.dropped


@pytest.mark.parametrize("layout", ["csv", "atomic"])
def test_a_review_line_that_looks_like_a_row_is_kept(tmp_path: Path, layout: str) -> None:
    """crossan 0.1.15 refused a valid quoted review whose second line happened to read as a row ("Bought sizes
    8, 9, 10, all fit": four fields, a number in the time column), and ``on_bad_rows=drop`` lost it. A swallowed
    row names a user and an item of the file; such a line does not."""
    root = tmp_path / "d"
    root.mkdir()
    delim = "," if layout == "csv" else "\t"
    review = f'"Great shoes.\nBought sizes 8{delim} 9{delim} 10{delim} all fit"'
    rows = [delim.join([u, i, str(t), review if k == 2 else "fine"]) for k, (u, i, t) in enumerate(_inter_rows())]
    path = root / ("x.csv" if layout == "csv" else "x.inter")
    path.write_text(delim.join(["user_id", "item_id", "timestamp", "review"]) + "\n" + "\n".join(rows) + "\n")
    raw = read(DataConfig(path=str(path if layout == "csv" else root)))
    assert sum(map(len, raw.sequences.values())) == 12 and not raw.dropped


def _atomic_files(root: Path, item_rows: str) -> None:
    """``x.item`` (item_id, title) with ``item_rows`` under its header, and ``x.inter`` of :func:`_inter_rows`."""
    root.mkdir(exist_ok=True)
    (root / "x.item").write_text("item_id:token\ttitle:token_seq\n" + item_rows)
    (root / "x.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                  + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in _inter_rows()))


def test_a_quote_swallowing_items_of_an_item_file_is_named_there(tmp_path: Path) -> None:
    """An open quote in i3's title closed by i7's took i4–i6 into i3's title: they vanished, and the error
    (if any) named the .inter line of an interaction with one of them."""
    root = tmp_path / "d"
    titles = {k: f"Title {k}" for k in range(1, 9)}
    titles[3], titles[7] = '"Open quote title', 'close" seven'
    _atomic_files(root, "".join(f"i{k}\t{t}\n" for k, t in titles.items()))
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert _rel(e.value, root).startswith("x.item:4: a quoted field runs over lines 4–8, and its line 5 reads as "
                                          "an item of its own")
    titles[3], titles[7] = '"A title' + "\n" + 'over two lines"', "Title 7"
    _atomic_files(root, "".join(f"i{k}\t{t}\n" for k, t in titles.items()))
    raw = read(DataConfig(path=str(root)))
    assert raw.catalogue["i3"].text == "A title\nover two lines" and len(raw.catalogue) == 8
    # a title line that reads as an item no interaction names is a title's line (crossan 0.1.15 refused it)
    titles[3] = '"Deluxe box set' + "\n" + 'Disc 1\tDisc 2"'
    _atomic_files(root, "".join(f"i{k}\t{t}\n" for k, t in titles.items()))
    raw = read(DataConfig(path=str(root)))
    assert raw.catalogue["i3"].text == "Deluxe box set\nDisc 1\tDisc 2" and len(raw.catalogue) == 8
    assert sum(map(len, raw.sequences.values())) == 12 and not raw.dropped


@pytest.mark.parametrize("name", ["x.inter", "x.item", "users.tsv", "items.tsv", "a_pairs.tsv"])
def test_a_layout_file_given_for_its_folder_says_pass_the_folder(tmp_path: Path, name: str) -> None:
    """``--data ml-100k/ml-100k.inter`` said "cannot tell the data layout (expected … a .inter file …)", and
    data.format=atomic then "found 0" .inter files."""
    root = tmp_path / "d"
    root.mkdir()
    (root / name).write_text("x\n")
    fmt = "atomic" if name.startswith("x.") else "iisan"
    for given in ("auto", fmt):
        with pytest.raises(DataError, match=rf"{name} is a file: .* folder that holds its files; pass the folder, "
                                            rf"{root} \(to --data, --run-data or data.path\)$"):
            read(DataConfig(path=str(root / name), format=given))


def test_targets_decided_by_equal_times_are_counted(tmp_path: Path) -> None:
    """Interactions of a user at one time keep the file's order, which can choose a target (METHOD.md §2);
    ``data stats`` counts such targets per split."""
    from crossan.data import prepare

    root = tmp_path / "d"
    root.mkdir()
    times = {"u1": [1, 2, 3, 4, 5], "u2": [1, 2, 3, 5, 5], "u3": [1, 2, 4, 4, 6], "u4": [1, 1, 1, 1, 1],
             "u5": [5, 4, 3, 3, 1]}  # u5 sorted by time: 1, 3, 3, 4, 5 — no tie at its end
    lines = [f"{u},i{k + 1},{t}" for u, ts_ in times.items() for k, t in enumerate(ts_)]
    (root / "x.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(lines) + "\n")
    data = prepare(DataConfig(path=str(root / "x.csv")))
    assert data.tied_targets == {"valid": 3, "test": 2}  # valid: u2, u3, u4; test: u2, u4
    assert [data.item_ids[i] for i in data.test.targets] == ["i5", "i5", "i5", "i5", "i1"]
    (root / "users.tsv").write_text("".join(f"{u}\ti1 i2 i3 i4 i5\n" for u in times))
    (root / "items.tsv").write_text("".join(f"i{k}\tT{k}\n" for k in range(1, 6)))
    (root / "x.csv").unlink()
    assert prepare(DataConfig(path=str(root))).tied_targets == {}  # histories without times


def test_an_unclosed_quote_in_an_item_file_is_named_there(tmp_path: Path) -> None:
    """An unclosed quote in a ``.item`` title swallowed the rest of the file (Python's csv reads an end of file
    inside quotes as the field's end), and the error named the ``.inter`` file's first unknown item. A title
    whose quotes close may span lines (as pandas and RecBole read it; test above)."""
    root = tmp_path / "d"
    _atomic_files(root, "".join(f"i{k}\t{QUOTE if k == 2 else ''}Title {k}\n" for k in range(1, 6)))
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert _rel(e.value, root).startswith("x.item:3: a double quote opened in this record is never closed: the "
                                          "record runs to the end of the file (line 6)")
    # on the last line alone too, in either file
    (root / "x.item").write_text("item_id:token\ttitle:token_seq\n"
                                 + "".join(f"i{k}\t{QUOTE if k == 5 else ''}Title {k}\n" for k in range(1, 6)))
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert _rel(e.value, root).startswith("x.item:6: a double quote opened in this record is never closed")
    (root / "x.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(f"i{k}\tT\n" for k in range(1, 6)))
    with (root / "x.inter").open("a") as f:
        f.write('u0\ti1\t"99')
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert _rel(e.value, root).startswith("x.inter:14: a double quote opened in this record is never closed")


# --------------------------------------------------------------------------------------------- CR CR LF
@pytest.mark.parametrize("name", ["users.tsv", "items.tsv", "x.csv", "quoted.csv"])
def test_cr_cr_lf_line_ends_count_one_line(tmp_path: Path, name: str) -> None:
    """A CRLF file converted again (CR CR LF) was read with twice its lines: errors named line 2n − 1 where
    grep and sed show line n."""
    root = tmp_path / "d"
    root.mkdir()
    items = ["i1\tOne", "i2\tTwo", "i3\tThree"]
    users = ["u1\ti1 i2", "u2\ti2 i3", "u3\ti1 i3"]
    rows = ["user_id,item_id,timestamp", "u1,i1,1", "u1,i2,2", "u2,i2,3", "u2,i3,4"]
    if name == "users.tsv":
        users[2] = "u3\ti1 BAD"
    elif name == "items.tsv":
        items[2] = "i 3\tThree"
    else:
        rows[4] = "u2,i3,x" if name == "x.csv" else 'u2,"i3",x'
    data = {"items.tsv": items, "users.tsv": users, name: rows} if name.endswith(".csv") else \
        {"items.tsv": items, "users.tsv": users}
    if name.endswith(".csv"):
        del data["users.tsv"]
    for fname, lines in data.items():
        eol = "\r\r\n" if fname == name else "\n"
        (root / fname).write_bytes(eol.join(lines).encode() + eol.encode())
    path = root / name if name.endswith(".csv") else root
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(path)))
    line = {"users.tsv": 3, "items.tsv": 3, "x.csv": 5, "quoted.csv": 5}[name]
    assert _rel(e.value, root).startswith(f"{name}:{line}: ")


def test_cr_runs_before_lf_are_one_line_end(tmp_path: Path) -> None:
    raw = b"a\r\r\nb\r\nc\rd\r\re\r"
    (tmp_path / "f.txt").write_bytes(raw)
    assert ts.read_text_bytes(tmp_path / "f.txt").tobytes() == b"a\r\r\nb\r\nc\nd\n\ne\n"
    assert ts.decode_text(raw, tmp_path / "f.txt") == "a\nb\nc\nd\n\ne\n"


def test_a_folder_with_both_layouts_histories_is_refused_unless_data_format_names_one(tmp_path: Path) -> None:
    """A folder holding users.tsv + items.tsv and a .inter + .item was read as atomic without a word."""
    root = _atomic(tmp_path / "d", "u1\ta\t1\nu1\tb\t2\n", "a\tA\nb\tB\n")
    _iisan(root, "a\tA\nb\tB\n", "u9\tb a\n")
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root)))
    assert "both users.tsv (IISAN layout) and d.inter (RecBole atomic) hold user histories" in str(e.value)
    assert read(DataConfig(path=str(root), format="atomic")).sequences == {"u1": ["a", "b"]}
    assert read(DataConfig(path=str(root), format="iisan")).sequences == {"u9": ["b", "a"]}


@pytest.mark.parametrize("quoted_inter", [False, True])
def test_an_item_files_swallowed_items_are_judged_alike_by_either_reader(tmp_path: Path, quoted_inter: bool) -> None:
    """Found only where an unknown item was reported one by one: with a quote-free .inter (the vectorised reader)
    and data.on_unknown_items=drop the swallowed items' interactions were dropped as unknown in silence; with a
    quoted one the error came without the drop hint, and on_bad_rows=drop could not get past it."""
    root = tmp_path / "d"
    _atomic_files(root, "i1\tT1\ni2\t\"T2\ni3\tT3\ni4\tT4\"\ni5\tT5\n")
    if quoted_inter:
        (root / "x.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\treview:token_seq\n"
                                      + "".join(f'{u}\t{i}\t{t}\t"ok"\n' for u, i, t in _inter_rows()))
    with pytest.raises(DataError) as e:
        read(DataConfig(path=str(root), on_unknown_items="drop"))
    assert _rel(e.value, root).startswith("x.item:3: a quoted field runs over lines 3–5, and its line 4 reads as an "
                                          "item of its own, one that the interactions name")
    raw = read(DataConfig(path=str(root), on_unknown_items="drop", on_bad_rows="drop"))
    assert sorted(r.item_id for r in raw.catalogue) == ["i1", "i5"]  # i2 dropped; i3, i4 were never rows
    assert raw.dropped == {"bad_rows": 1, "unknown_items": 7}  # the interactions with i2 (3), i3 (2), i4 (2)


def test_an_item_file_header_follows_the_inter_files_rules(tmp_path: Path) -> None:
    """``ITEM_ID:token`` or ``item`` in a ``.item`` header was "no item_id column" while the ``.inter`` beside it
    read ``USER_ID``/``item``/``time`` (case-insensitive, with aliases)."""
    root = tmp_path / "d"
    for head in ("ITEM_ID:token\tTitle:token_seq", "item\ttitle"):
        _atomic_files(root, "".join(f"i{k}\tTitle {k}\n" for k in range(1, 6)))
        text = (root / "x.item").read_text().split("\n", 1)[1]
        (root / "x.item").write_text(f"{head}\n{text}")
        raw = read(DataConfig(path=str(root), text_fields=["title"]))
        assert raw.catalogue["i3"].text == "Title 3" and len(raw.catalogue) == 5
    (root / "x.item").write_text("item_id\titem\ttitle\n" + "".join(f"i{k}\tx\tT{k}\n" for k in range(1, 6)))
    assert read(DataConfig(path=str(root), text_fields=["title"])).catalogue["i2"].text == "T2"  # item_id first
    (root / "x.item").write_text("Item\titem\n" + text)
    with pytest.raises(DataError, match=r"x\.item:1: header column 'item' appears twice"):
        read(DataConfig(path=str(root)))
    (root / "x.item").write_text("item_id\titem\titem\n" + "".join(f"i{k}\ta\tb\n" for k in range(1, 6)))
    assert len(read(DataConfig(path=str(root))).catalogue) == 5  # item_id decides, as in .inter headers


def test_an_item_row_of_no_break_spaces_is_content_not_a_blank_line(tmp_path: Path) -> None:
    """A ``.item`` row whose id is a no-break space was skipped as blank (``str.strip`` strips Unicode spaces)
    and the interactions naming it failed as unknown; ids keep all but ASCII whitespace."""
    root = tmp_path / "d"
    _atomic_files(root, "".join(f"i{k}\tT{k}\n" for k in range(1, 6)) + "\u00a0\t\u3000\n")
    with (root / "x.inter").open("a") as f:
        f.write("u0\t\u00a0\t99\n")
    raw = read(DataConfig(path=str(root)))
    assert "\u00a0" in raw.catalogue and len(raw.catalogue) == 6

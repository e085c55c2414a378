"""What a fuzzing review of the input handling found (2026-12-02), each reduced to its reproducer: the outcome
is a one-line ``crossan: error:`` naming the file, line, item or key (or, for timestamps, the right order),
never a raw traceback, a huge allocation or a silently wrong read."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from crossan.cli import main
from crossan.config import DataConfig
from crossan.data.media import MediaError, load_audio
from crossan.data.readers import read


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def _iisan(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "users.tsv").write_text("u1\ti1 i2 i3 i1 i2\nu2\ti2 i3 i1 i2 i3\n")
    (root / "items.tsv").write_text("i1\tA\ni2\tB\ni3\tC\n")
    return root


def test_a_field_longer_than_the_csv_modules_limit_is_read(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A long item description (over 131,072 characters) was a raw `_csv.Error`."""
    (tmp_path / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                      "u1\ti1\t1\nu1\ti2\t2\nu1\ti3\t3\n")
    (tmp_path / "d.item").write_text("item_id:token\ttitle:token_seq\ni1\t" + "x" * 200_000 + "\ni2\tB\ni3\tC\n")
    code, _ = _run(capsys, "data", "stats", "--data", str(tmp_path), "data.min_interactions=3")
    assert code == 0
    long_csv = tmp_path / "long.csv"
    long_csv.write_text('user,item,timestamp,note\nu1,i1,1,"' + "n" * 200_000 + '"\nu1,i2,2,a\nu1,i3,3,b\n')
    assert len(read(DataConfig(path=str(long_csv), min_interactions=3)).sequences["u1"]) == 3


def test_an_unclosed_quote_in_the_header_names_the_file_and_line(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "d.csv"
    path.write_text('"user,item,timestamp\nu1,i1,1\n')
    code, line = _run(capsys, "data", "stats", "--data", str(path))
    assert code == 2 and line.startswith("crossan: error:") and f"{path}:1: malformed record" in line


@pytest.mark.parametrize("value", ["1000000000000", "99999999999999999999999999999", "10001"])
def test_max_seq_len_has_an_upper_bound(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    """A huge window was a raw allocation error of terabytes, an OverflowError, or minutes of work."""
    code, line = _run(capsys, "data", "stats", "--data", str(_iisan(tmp_path / "d")), f"data.max_seq_len={value}")
    assert code == 2 and "data.max_seq_len: at most 10,000" in line


def test_a_long_window_holds_what_a_short_one_holds_left_padded(tmp_path: Path) -> None:
    """The window is now built only over the columns of the longest sequence (the others are padding for
    every user): a 10,000-wide window holds exactly the 10-wide one's items, right-aligned."""
    from crossan.data import prepare

    root = _iisan(tmp_path / "d")
    short = prepare(DataConfig(path=str(root), max_seq_len=10, min_interactions=5))
    long = prepare(DataConfig(path=str(root), max_seq_len=10_000, min_interactions=5))
    assert long.train_inputs.shape == (2, 10_000) and long.train_inputs[:, :-10].sum() == 0
    for name in ("train_inputs", "train_targets"):
        assert getattr(long, name)[:, -10:].tolist() == getattr(short, name).tolist(), name
    assert short.train_inputs.sum() > 0


def test_a_utf16_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A UTF-16 file (NUL bytes) crashed the YAML reader before its error handling, without the file's name."""
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes("data:\n  max_seq_len: 5\n".encode("utf-16-le"))
    code, line = _run(capsys, "data", "stats", "--data", str(_iisan(tmp_path / "d")), "--config", str(cfg))
    assert code == 2 and f"config file {cfg}" in line and "UTF-16" in line


def test_deeply_nested_yaml_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(_iisan(tmp_path / "d"))
    cfg = tmp_path / "n.yaml"
    cfg.write_text("eval:\n  ks: " + "[" * 2000 + "]" * 2000 + "\n")
    code, line = _run(capsys, "data", "stats", "--data", data, "--config", str(cfg))
    assert code == 2 and "nested too deeply" in line and str(cfg) in line
    code, line = _run(capsys, "data", "stats", "--data", data, "eval.ks=" + "[" * 3000 + "]" * 3000)
    assert code == 2 and line.startswith("crossan: error: eval.ks: the value is nested too deeply")


def test_timestamps_beyond_float64_precision_keep_their_order(tmp_path: Path) -> None:
    """Integer timestamps above 2^53 (19-digit nanosecond epochs) were read as float64, tied, and ordered by
    line: here i1 came before i2 although it is 1 ns later."""
    plain = tmp_path / "a.csv"
    plain.write_text("user,item,timestamp\nu,i1,9007199254740993\nu,i2,9007199254740992\nu,i3,1\n")
    quoted = tmp_path / "b.csv"  # the csv module's path (a quoted field)
    quoted.write_text('user,item,timestamp\nu,"i1",1700000000000000100\nu,i2,1700000000000000001\nu,i3,1\n')
    for path in (plain, quoted):
        assert read(DataConfig(path=str(path), min_interactions=3)).sequences == {"u": ["i3", "i2", "i1"]}, path


def _wav(path: Path, rate: int) -> Path:
    data = b"\x00\x01" * 1600
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2 % 2**32, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


@pytest.mark.parametrize("rate", [2**31 - 1, 1_000_003, 10])
def test_an_absurd_sample_rate_is_a_media_error(tmp_path: Path, rate: int) -> None:
    """A damaged header's rate of 2^31 - 1 Hz made resampling ask for 320 GiB (a raw MemoryError)."""
    with pytest.raises(MediaError, match=r"'i1'.*sample rate"):
        load_audio(_wav(tmp_path / "a.wav", rate), 16000, 10.0, "i1")
    assert load_audio(_wav(tmp_path / "b.wav", 8000), 16000, 1.0, "i1").shape == (16000,)


def test_a_media_path_too_long_to_look_up_is_reported_with_its_item(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root = _iisan(tmp_path / "d")
    (root / "items.tsv").write_text("item_id\ttitle\timage\ni1\tA\t" + "a" * 300 + ".png\ni2\tB\t\ni3\tC\t\n")
    code, line = _run(capsys, "cache", "--data", str(root), "--modalities", "image", "--preset", "tiny",
                      "data.min_interactions=3", f"cache.dir={tmp_path / 'cache'}")
    assert code == 2 and "'i1'" in line and "cannot be found" in line


@pytest.mark.parametrize("layout", ["iisan", "csv"])
def test_text_fields_outside_recbole_item_files_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           layout: str) -> None:
    """data.text_fields was silently ignored where the items file has one title column."""
    root = _iisan(tmp_path / "d")
    if layout == "csv":
        root = root / "d.csv"
        root.write_text("user,item,timestamp\n" + "".join(f"u1,i{k % 3 + 1},{k}\n" for k in range(5)))
    code, line = _run(capsys, "data", "stats", "--data", str(root), "data.text_fields=[nonexistent]")
    assert code == 2 and "data.text_fields" in line and layout in line

"""Fuzz-style check of hostile input files (issue 15, "Check"), bounded in time.

Tiny valid datasets in each layout are mutated — truncated, tabs inserted, a BOM, CRLF line ends, bad
bytes, NUL bytes, lines deleted or repeated, media paths pointing out of the root — and
``crossan data stats`` runs on each (in process, through :func:`crossan.cli.main`). Every outcome must be
one of: the same output as the unmutated dataset; or a non-zero exit with exactly one line on stderr,
``crossan: error: …``, naming a file of the dataset. Never a traceback. Mutations that leave a valid
dataset of different content (a truncation on a line boundary, a deleted line) may give another result
with exit 0; mutations that can never be valid (bad bytes) must fail, and those that change nothing the
reader keeps (BOM, CRLF) must give the same output.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from crossan.cli import main
from media_helpers import write_image

Mutation = Callable[[bytes, np.random.Generator], bytes]


def _iisan(root: Path, header: bool) -> Path:
    root.mkdir(parents=True)
    write_image(root / "covers" / "c.png", (200, 30, 30))
    items = [f"x{k}" for k in range(12)]
    if header:
        body = "item_id\ttitle\timage\n" + "".join(f"{i}\ttitle of {i}\tcovers/c.png\n" for i in items)
    else:
        body = "".join(f"{i}\ttitle of {i}\n" for i in items)
    (root / "items.tsv").write_text(body)
    rng = np.random.default_rng(3)
    (root / "users.tsv").write_text("".join(
        f"u{u}\t{' '.join(rng.choice(items, size=int(rng.integers(5, 9))))}\n" for u in range(15)))
    return root


def _atomic(root: Path) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(4)
    rows = "".join(f"u{int(rng.integers(0, 8))}\tm{int(rng.integers(0, 10))}\t{t}\n" for t in range(90))
    (root / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + rows)
    (root / "d.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(f"m{k}\tFilm {k}\n" for k in range(10)))
    return root


def _csv(root: Path) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(5)
    (root / "inter.csv").write_text("user,item,timestamp\n" + "".join(
        f"u{int(rng.integers(0, 8))},m{int(rng.integers(0, 10))},{t}\n" for t in range(90)))
    return root


def _at(data: bytes, rng: np.random.Generator) -> int:
    return int(rng.integers(0, len(data) + 1))


MUTATIONS: dict[str, tuple[str, Mutation]] = {
    # name: (expectation, mutation) — "same": output unchanged, rc 0; "error": rc != 0;
    # "error_or_same": either; "any": rc 0 (possibly another, valid dataset) or a clean error
    "bom": ("same", lambda d, r: b"\xef\xbb\xbf" + d),
    "crlf": ("same", lambda d, r: d.replace(b"\n", b"\r\n")),
    "bad_byte": ("error", lambda d, r: (lambda i: d[:i] + b"\xff" + d[i:])(_at(d, r))),
    "bad_utf8_seq": ("error", lambda d, r: (lambda i: d[:i] + b"\xc3\x28" + d[i:])(_at(d, r))),
    "tab": ("error_or_same", lambda d, r: (lambda i: d[:i] + b"\t" + d[i:])(_at(d, r))),
    "truncate": ("any", lambda d, r: d[: _at(d, r)]),
    "nul": ("error", lambda d, r: (lambda i: d[:i] + b"\x00" + d[i:])(_at(d, r))),
    "delete_line": ("any", lambda d, r: (lambda ls, k: b"\n".join(ls[:k] + ls[k + 1:]))(
        d.split(b"\n"), int(r.integers(0, d.count(b"\n") + 1)))),
    "repeat_line": ("any", lambda d, r: (lambda ls, k: b"\n".join(ls[: k + 1] + ls[k:]))(
        d.split(b"\n"), int(r.integers(0, d.count(b"\n") + 1)))),
    "garbage_line": ("any", lambda d, r: d + bytes(r.integers(0, 256, size=int(r.integers(1, 40))).astype(np.uint8))),
    "outside_path": ("error_or_same", lambda d, r: d.replace(b"covers/c.png", [b"/etc/passwd", b"../../x.png",
                                                                               b"/tmp"][int(r.integers(0, 3))], 1)),
}


# in a CSV a tab is no separator: a tab inside an id makes another (valid) id, as in any CSV reader
EXPECT_OVERRIDE = {("csv", "tab"): "any"}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_mutated_inputs_never_give_a_traceback_or_a_silently_different_result(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bases = {"iisan_header": _iisan(tmp_path / "base" / "iisan_header", True),
             "iisan_plain": _iisan(tmp_path / "base" / "iisan_plain", False),
             "atomic": _atomic(tmp_path / "base" / "atomic"), "csv": _csv(tmp_path / "base" / "csv")}
    rng = np.random.default_rng(2026)
    t0, cases, outcomes = time.perf_counter(), 0, {"same": 0, "other_ok": 0, "error": 0}
    for rep in range(6):
        for layout, base in bases.items():
            files = sorted(p for p in base.iterdir() if p.is_file())
            for name, (expect, mutate) in MUTATIONS.items():
                expect = EXPECT_OVERRIDE.get((layout, name), expect)
                target_name = files[int(rng.integers(0, len(files)))].name
                if name == "outside_path":
                    if layout != "iisan_header":
                        continue
                    target_name = "items.tsv"
                root = tmp_path / f"{layout}-{name}-{rep}"
                shutil.copytree(base, root)
                ref_rc, ref_out, _ = _run(["data", "stats", "--data", str(root)], capsys)
                assert ref_rc == 0
                target = root / target_name
                target.write_bytes(mutate(target.read_bytes(), rng))
                what = f"{layout}: {name} on {target_name}"
                try:
                    rc, out, err = _run(["data", "stats", "--data", str(root)], capsys)
                except Exception as e:  # noqa: BLE001 - a traceback is exactly what must not happen
                    pytest.fail(f"{what}: raised {type(e).__name__}: {e}")
                cases += 1
                if rc == 0:
                    assert expect != "error", f"{what}: exit 0 on input that cannot be valid"
                    same = out == ref_out
                    assert same or expect == "any", f"{what}: exit 0 with a different result"
                    outcomes["same" if same else "other_ok"] += 1
                else:
                    assert expect != "same", f"{what}: failed on input equivalent to a valid one: {err}"
                    lines = err.strip().splitlines()
                    assert len(lines) == 1 and lines[0].startswith("crossan: error: "), f"{what}: {err!r}"
                    assert str(root) in lines[0], f"{what}: the message names no file of the dataset: {err!r}"
                    assert "Traceback" not in err
                    outcomes["error"] += 1
                shutil.rmtree(root)
    assert cases >= 200 and time.perf_counter() - t0 < 120
    assert min(outcomes.values()) > 0, outcomes  # every kind of outcome was exercised


@pytest.mark.parametrize("cell", ["/etc/passwd", "../outside.png"])
def test_cache_refuses_media_outside_the_root(tmp_path: Path, capsys: pytest.CaptureFixture[str], cell: str) -> None:
    """``crossan cache`` on an items.tsv whose path column leaves the root: one-line error naming item,
    column and path; with ``cache.on_corrupt=missing`` the item counts as lacking its image."""
    write_image(tmp_path / "outside.png", (0, 0, 0))
    root = _iisan(tmp_path / "d", True)
    text = (root / "items.tsv").read_text().replace("x3\ttitle of x3\tcovers/c.png", f"x3\ttitle of x3\t{cell}")
    (root / "items.tsv").write_text(text)
    argv = ["cache", "--data", str(root), "--modalities", "image", "--preset", "tiny", f"cache.dir={tmp_path / 'c'}"]
    rc, _, err = _run(argv, capsys)
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "item/s" not in ln]  # no bars
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("crossan: error: ")
    assert "'x3'" in err and cell in err and "image path lies outside the dataset root" in err
    rc, out, _ = _run(argv + ["cache.on_corrupt=missing"], capsys)
    assert rc == 0 and "1 corrupt files marked missing" in out

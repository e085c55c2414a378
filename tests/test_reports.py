"""Suites over seeds (crossan.reports): the suite file's keys and their errors, TPME by hand, the table's
columns from real runs, reuse of finished runs, refusal of a changed configuration, refusal to pair runs on
different splits, and which rows the quality plots may show."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from crossan.cli import main
from crossan.config import ConfigError
from crossan.reports.plots import quality_rows
from crossan.reports.stats import ndcg_at
from crossan.reports.suite import RunSpec, load_suite
from crossan.reports.table import add_paired_tests, add_tpme, collect_run


def _suite(tmp_path: Path, body: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


BASE = "description: t\ndata: {data}\npreset: tiny\n"


# --------------------------------------------------------------------------------------------- suite files
def test_seeds_reference_and_cost_only_from_the_suite_file(tmp_path: Path) -> None:
    f = _suite(tmp_path, "seeds: [3, 1]\nreference: B\nparallel: 2\nruns:\n  - {name: A, method: id}\n"
                         "  - {name: B, method: id, overrides: [user.dim=32]}\n"
                         "  - {name: C, method: id, overrides: [train.max_steps_per_epoch=2]}\n")
    suite = load_suite(str(f))
    assert suite.seeds == [3, 1] and suite.reference == "B" and suite.parallel == 2
    assert [r.cost_only for r in suite.runs] == [False, False, True]
    assert suite.seeds_of(suite.runs[0]) == [3, 1] and suite.seeds_of(suite.runs[2]) == [3]  # cost only: one seed
    assert load_suite(str(f), seeds="0,1,2").seeds == [0, 1, 2]  # --seeds wins over the file
    assert load_suite("tiny").reference == "CROSSAN" and len(load_suite("demo").seeds) >= 3


@pytest.mark.parametrize(("body", "message"), [
    ("seeds: [0, 0]\nruns: [{name: A, method: id}]\n", "distinct"),
    ("seeds: [a]\nruns: [{name: A, method: id}]\n", "seeds must be integers"),
    ("seeds: 3\nruns: [{name: A, method: id}]\n", "seeds must be integers"),
    ("reference: Z\nruns: [{name: A, method: id}]\n", "reference 'Z' is not one of the runs"),
    ("reference: A\nruns: [{name: A, method: id, overrides: [train.max_steps_per_epoch=1]}]\n", "is cost only"),
    ("parallel: 0\nruns: [{name: A, method: id}]\n", "parallel must be an integer"),
    ("seed: [0]\nruns: [{name: A, method: id}]\n", "unknown keys ['seed']"),
    ("runs: [{name: a/b, method: id}]\n", "folder names"),
    # a bare string was read character by character ("override 't' is not of the form key=value"); a
    # number as a name or description was a TypeError, the description's only after every run had trained
    ("overrides: train.epochs=5\nruns: [{name: A, method: id}]\n", "s.yaml: overrides must be a list"),
    ("runs: [{name: A, method: id, overrides: train.epochs=5}]\n", "runs[0].overrides must be a list"),
    ("runs: [{name: A, method: id, modalities: text}]\n", "runs[0].modalities must be a list"),
    ("runs: [{name: 1, method: id}]\n", "runs[0].name must be a string"),
    ("description: 5\nruns: [{name: A, method: id}]\n", "description must be text"),
    # a bad key of one run names the suite and the run (a plugin method's section named neither)
    ("runs: [{name: A, method: id}, {name: B, method: crossan, overrides: [crossan.fusoin=concat]}]\n",
     "s.yaml: run B: unknown config key 'crossan.fusoin'"),
])
def test_bad_suite_files_name_the_problem(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_suite(str(_suite(tmp_path, body)))


@pytest.mark.parametrize(("body", "message"), [
    # method= in a run's overrides trained frozen under the label id; modalities= built the cache for the
    # declared modalities only (the run failed); seed= was silently replaced by the suite's seed
    ("runs: [{name: A, method: id, modalities: [text], overrides: [method=frozen]}]\n",
     "run A: overrides: 'method=frozen': the suite sets method for each run itself; use the run's own method: key"),
    ("runs: [{name: A, method: frozen, modalities: [text], overrides: [train.lr=0.01, 'modalities=[text,image]']}]\n",
     "run A: overrides: 'modalities=[text,image]': the suite sets modalities for each run itself; use the run's "
     "own modalities: key"),
    ("runs: [{name: A, method: id, overrides: [' seed = 7']}]\n",
     "run A: overrides: ' seed = 7': the suite sets seed for each run itself; use the suite's seeds: key or --seeds"),
    ("overrides: [seed=7]\nruns: [{name: A, method: id}]\n",
     "overrides: 'seed=7': the suite sets seed for each run itself; use the suite's seeds: key or --seeds"),
    ("overrides: [method=frozen]\nruns: [{name: A, method: id}]\n",
     "overrides: 'method=frozen': the suite sets method for each run itself; use the run's own method: key"),
    # a | split the report's Markdown tables (an extra cell)
    ("runs: [{name: A, method: id}, {name: 'B|C', method: id}]\n",
     "run names may not hold '|' or a line break (they would split the report's Markdown tables): ['B|C']"),
    ("runs: [{name: \"B\\nC\", method: id}]\n",
     "run names may not hold '|' or a line break (they would split the report's Markdown tables): ['B\\nC']"),
])
def test_a_suite_refuses_keys_it_sets_itself_and_names_that_break_tables(tmp_path: Path, body: str,
                                                                         message: str) -> None:
    f = _suite(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_suite(str(f))
    assert str(e.value) == f"suite {f}: {message}"


def test_empty_suite_keys_read_as_empty(tmp_path: Path) -> None:
    """``description:`` and ``overrides:`` left empty (YAML reads None) are an empty text and list: an empty
    description made the report fail after every run had trained, an empty ``overrides`` a TypeError."""
    from crossan.reports.table import render_report

    suite = load_suite(str(_suite(tmp_path, "description:\noverrides:\n"
                                            "runs: [{name: A, method: id, overrides: }]\n")))
    assert (suite.description, suite.overrides, suite.runs[0].overrides) == ("", [], [])
    meta = {"suite": suite.name, "description": suite.description, "data": "d", "preset": "paper",
            "machine": "m", "date": "t", "cache_build_s": 0.0}
    assert render_report([], meta, "", []).startswith("# crossan report: s\n\n\n")


def test_bad_seeds_option_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    f = _suite(tmp_path, "runs: [{name: A, method: id}]\n")
    assert main(["bench", "--suite", str(f), "--seeds", "0,x", "--out", str(tmp_path / "o")]) == 2
    assert "--seeds: seeds must be integers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------- table
def test_tpme_known_values() -> None:
    rows = [{"status": "ok", "time_per_epoch_s": 1.0, "trainable_params": 100, "peak_memory_bytes": 10.0},
            {"status": "ok", "time_per_epoch_s": 3.0, "trainable_params": 300, "peak_memory_bytes": 30.0},
            {"status": "ok", "time_per_epoch_s": 2.0, "trainable_params": 300, "peak_memory_bytes": 10.0},
            {"status": "failed"}]
    add_tpme(rows)
    # min–max: time 0, 1, 0.5; params 0, 1, 1; memory 0, 1, 0
    assert [r.get("TPME") for r in rows] == [pytest.approx(0.0), pytest.approx(1.0),
                                            pytest.approx(0.45 * 0.5 + 0.10), None]


def test_quality_plots_leave_out_cost_only_and_failed_runs() -> None:
    rows = [{"name": "A", "status": "ok", "cost_only": False, "test_NDCG@10_mean": 0.1},
            {"name": "B", "status": "ok", "cost_only": True},
            {"name": "C", "status": "failed", "cost_only": False}]
    assert [r["name"] for r in quality_rows(rows)] == ["A"]


@pytest.fixture(scope="module")
def id_suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two ID runs (different widths) × two seeds on the small hand-made data, trained through the CLI with
    the later seed in parallel; and a cost-only run."""
    from conftest import random_dataset

    root = tmp_path_factory.mktemp("idsuite")
    data = random_dataset(root / "data", n_users=150)
    f = _suite(root, BASE.format(data=data) + "seeds: [0]\nreference: Wide\nparallel: 2\n"
                     "overrides: [train.epochs=3, train.batch_size=32, device=cpu]\n"
                     "runs:\n  - {name: Narrow, method: id, overrides: [user.dim=16]}\n"
                     "  - {name: Wide, method: id}\n"
                     "  - {name: Capped, method: id, overrides: [train.max_steps_per_epoch=1]}\n")
    out = root / "out"
    assert main(["bench", "--suite", str(f), "--seeds", "0,1", "--out", str(out)]) == 0
    return f, out


@pytest.mark.subprocess
def test_seeded_suite_writes_the_columns(id_suite: tuple[Path, Path]) -> None:
    _, out = id_suite
    with open(out / "results.csv") as fh:
        table = {r["name"]: r for r in csv.DictReader(fh)}
    for col in ("seeds", "test_NDCG@10_mean", "test_NDCG@10_ci95", "test_HR@10_mean", "test_HR@10_ci95", "p_value",
                "time_per_epoch_s", "peak_memory_bytes", "trainable_params", "TPME"):
        assert col in table["Wide"], col
    assert table["Narrow"]["seeds"] == table["Wide"]["seeds"] == "0,1" and table["Capped"]["seeds"] == "0"
    assert table["Wide"]["p_value"] == "" and table["Capped"]["p_value"] == "" and table["Narrow"]["p_value"] != ""
    assert sorted(p.name for p in (out / "runs" / "Narrow").iterdir()) == [
        "seed-0", "seed-0.log", "seed-0.suite.json", "seed-1", "seed-1.log", "seed-1.suite.json"]
    # the suite's own note of how each seed trained: the first alone, the second two at a time
    notes = [json.loads((out / "runs" / "Narrow" / f"seed-{s}.suite.json").read_text()) for s in (0, 1)]
    assert [(n["trained_alone"], n["runs_at_once"]) for n in notes] == [(True, 1), (False, 2)]
    assert "cost" not in table["Narrow"]["flags"]  # its cost is seed 0's, which trained alone
    # the cost columns are the first seed's (trained alone); the second seed ran with 1 thread beside another
    seed0 = json.loads((out / "runs" / "Narrow" / "seed-0" / "results.json").read_text())
    seed1 = json.loads((out / "runs" / "Narrow" / "seed-1" / "results.json").read_text())
    assert float(table["Narrow"]["time_per_epoch_s"]) == pytest.approx(seed0["train_time_per_epoch_s"])
    assert seed1["device"].endswith("torch threads 1)")
    assert table["Narrow"]["compute_dtype"] == seed0["compute_dtype"] == seed1["compute_dtype"]
    assert f"training compute dtype: {seed0['compute_dtype']}" in (out / "report.md").read_text()
    # the p-value and difference are those of the paired bootstrap on the runs' own per-user ranks
    d = []
    for s in (0, 1):
        with np.load(out / "runs" / "Narrow" / f"seed-{s}" / "per_user.npz") as a, \
                np.load(out / "runs" / "Wide" / f"seed-{s}" / "per_user.npz") as b:
            d.append(ndcg_at(a["test_ranks"]) - ndcg_at(b["test_ranks"]))
    assert float(table["Narrow"]["diff_NDCG@10"]) == pytest.approx(float(np.mean(d)))
    report = (out / "report.md").read_text()
    assert "paired bootstrap" in report and "| Capped | id | text | 0 | cost only | cost only |" in report
    assert float(table["Narrow"]["cpu_s"]) > 0


@pytest.mark.subprocess
def test_rerun_reuses_finished_runs_and_refuses_a_changed_configuration(id_suite: tuple[Path, Path],
                                                                         capsys) -> None:
    f, out = id_suite
    results = out / "runs" / "Wide" / "seed-1" / "results.json"
    before = results.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["bench", "--suite", str(f), "--seeds", "0,1", "--out", str(out)]) == 0
    assert results.stat().st_mtime_ns == before and "done earlier, reusing" in capsys.readouterr().out
    changed = f.parent / "changed.yaml"
    changed.write_text(f.read_text().replace("train.epochs=3", "train.epochs=4"))
    assert main(["bench", "--suite", str(changed), "--seeds", "0", "--out", str(out)]) == 1  # every run refused
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["status"] == "failed" and "another configuration (train.epochs: 3 → 4)" in r["error"] for r in rows)
    assert results.stat().st_mtime_ns == before


@pytest.mark.subprocess
def test_runs_on_different_splits_are_not_paired(id_suite: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = id_suite
    copy = tmp_path / "runs"
    shutil.copytree(out / "runs", copy)
    npz = copy / "Narrow" / "seed-1" / "per_user.npz"
    with np.load(npz) as z:
        arrays = dict(z)
    arrays["split_fingerprint"] = np.asarray("0123456789abcdef")  # as if its users or targets were others
    np.savez(npz, **arrays)

    def recs(name: str) -> list[dict]:
        return [{"seed": s, "dir": str(copy / name / f"seed-{s}"), "status": "ok", "log": ""} for s in (0, 1)]

    rows = [collect_run(RunSpec("Narrow", "id", ["text"]), recs("Narrow")),
            collect_run(RunSpec("Wide", "id", ["text"]), recs("Wide"))]
    add_paired_tests(rows, "Wide", resamples=200)
    assert "p_value" not in rows[0] and rows[0]["p_value_note"].startswith("not paired: seed 1: split fingerprints")
    # without the tampering the same rows pair, and identical runs give p = 1 and no difference
    rows2 = [collect_run(RunSpec("Wide2", "id", ["text"]), recs("Wide")),
             collect_run(RunSpec("Wide", "id", ["text"]), recs("Wide"))]
    add_paired_tests(rows2, "Wide", resamples=200)
    assert rows2[0]["p_value"] == 1.0 and rows2[0]["diff_NDCG@10"] == 0.0 and not rows2[0]["significant"]
    assert math.isclose(rows2[0]["test_NDCG@10_mean"], rows2[1]["test_NDCG@10_mean"])


def test_router_table_has_a_column_for_every_modality_any_run_routes_over() -> None:
    """The header came from the first run's modalities: in the ablation suite (CROSSAN-M1 first) the table
    had one column, "text", over rows of four weights."""
    from crossan.reports.table import router_table

    rows = [{"name": "M1", "router_weight": {"text": 1.0}},
            {"name": "ID"},
            {"name": "M3", "router_weight": {"text": 0.5, "image": 0.3, "audio": 0.2}},
            {"name": "no-image", "router_weight": {"text": 0.6, "audio": 0.4}}]
    assert router_table(rows) == [
        "## MOMEF router weight per modality (mean over items and seeds)", "",
        "| run | text | image | audio |", "|---|---:|---:|---:|",
        "| M1 | 1.000 |  |  |",
        "| M3 | 0.500 | 0.300 | 0.200 |",
        "| no-image | 0.600 |  | 0.400 |", ""]
    assert router_table([{"name": "ID"}]) == []


def test_plot_titles_fit_their_figure_and_the_memory_axis_says_what_it_measured() -> None:
    """ndcg_vs_params.png's note line ("* differs from … paired test over test users …") was cut at both sides,
    and the cost plot called memory above the idle process "peak memory"."""
    import matplotlib.pyplot as plt

    from crossan.reports.plots import _fit_title, _memory_label

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    _fit_title(ax, "Quality against trainable parameters\n* differs from CROSSAN M=4 (ref) at Holm-adjusted p < "
                   "0.05, paired test over test users (on 3+ seeds, 50+ users, none capped)", 10)
    fig.tight_layout()
    fig.canvas.draw()
    box, frame = ax.title.get_window_extent(), fig.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1
    plt.close(fig)
    assert _memory_label([{"peak_memory_kind": "cpu_peak_rss_above_idle"}]) == "peak memory above idle, RSS (MiB)"
    assert _memory_label([{"peak_memory_kind": "cuda_max_memory_allocated"}]) == "peak GPU memory allocated (MiB)"


def test_a_plot_whose_write_fails_keeps_the_earlier_one(tmp_path: Path) -> None:
    """Under `ulimit -f` a suite's rerun cut ndcg_vs_params.png short in place (the report still linked it) and
    the error named no file."""
    import errno

    import matplotlib.pyplot as plt

    from crossan.errors import WriteError
    from crossan.reports.plots import _save

    fig, _ = plt.subplots()
    assert _save(fig, tmp_path, "p.png") == "p.png"
    before = (tmp_path / "p.png").read_bytes()
    fig, _ = plt.subplots()

    def cut_short(target, **kwargs):
        Path(target).write_bytes(before[:100])
        raise OSError(errno.EFBIG, "File too large")

    fig.savefig = cut_short
    with pytest.raises(WriteError, match=rf"^{tmp_path / 'p.png'}: cannot write \(File too large\)"):
        _save(fig, tmp_path, "p.png")
    assert (tmp_path / "p.png").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_a_child_that_could_not_write_its_log_is_said_so(tmp_path: Path, monkeypatch) -> None:
    """A suite folder on a full disk: the child's log stayed empty and the suite said the cache build failed with
    "(no output)", as if the cache were at fault."""
    from collections import namedtuple

    import crossan.reports.children as children

    log = tmp_path / "cache.log"
    log.write_text("")
    assert children.error_line(log) == "(no output)"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(children.shutil, "disk_usage", lambda path: usage(10**6, 10**6, 0))
    assert children.error_line(log) == f"(no output: {tmp_path} is on a full disk, so the child could not write its log)"


@pytest.mark.subprocess
def test_a_child_killed_by_a_signal_is_said_so(tmp_path: Path) -> None:
    """A second reader (2026-12-04) killed a suite's training child with SIGKILL (as the out-of-memory killer
    would): the report gave its last progress line ("epoch 1 | loss 7.35 …") as the reason it failed."""
    import signal
    import subprocess
    import sys

    import crossan.reports.suite as suite_module
    from crossan.reports.children import failure_text

    log = tmp_path / "seed-0.log"
    log.write_text("epoch   1 | loss 7.3541 | 0.1s | valid HR@10 0.1800\n")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.send_signal(signal.SIGKILL)
    code = -child.wait()  # multiprocessing's exitcode of a child killed by signal N is -N
    assert code == signal.SIGKILL
    rec = {"log": str(log), "t0": 0.0, "label": "1/1 A seed 0", "dir": str(tmp_path / "seed-0"), "alone": True,
           "at_once": 1}
    suite_module.finish_job(rec, -code)
    assert rec["status"] == "failed" and rec["error"] == (
        "killed by SIGKILL (most often the kernel's out-of-memory killer); its last output: epoch   1 | loss 7.3541 "
        "| 0.1s | valid HR@10 0.1800")
    assert failure_text(log, -signal.SIGTERM).startswith("killed by SIGTERM; its last output: epoch   1")
    log.write_text("crossan: error: train.lr: must be positive\n")
    assert failure_text(log, 2) == "crossan: error: train.lr: must be positive"

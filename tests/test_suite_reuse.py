"""When a suite may reuse a finished run (crossan.reports.suite): only when it was trained on the data the
suite reads now (split and item fingerprints) and with the configuration it asks for, a key the saved config
lacks read as the run ran (``config.CHANGED_DEFAULTS``); the suite's own note of whether a run trained alone;
one layer-state cache per set of run-level cache overrides; what the built-in and benchmark suite files say.

The run folders are written as the trainer writes them (config.yaml from the suite's own overrides,
results.json with the fingerprints of the data prepared by the protocol, per_user.npz), so that
``run_suite`` reuses or refuses them without training anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import crossan
from conftest import random_dataset
from crossan.config import CHANGED_DEFAULTS, config_differences, load_config, to_dict
from crossan.data import prepare
from crossan.errors import ConfigError
from crossan.evaluation import mean_metrics
from crossan.ranking import item_fingerprint, split_fingerprint
from crossan.reports.children import read_training_record, training_record_path
from crossan.reports.suite import Suite, load_suite, retrain_advice, run_overrides, run_suite

BENCHMARKS = Path(__file__).parents[1] / "benchmarks" / "suites"


def _suite_file(root: Path, data: Path, seeds: str = "[0]", parallel: int = 1, runs: str = "",
                repeats: int = 1, overrides: str = "") -> Suite:
    """``overrides``: more suite-level ``key=value`` (comma-separated), after ``train.epochs=2, device=cpu``."""
    path = root / "s.yaml"
    path.write_text(f"description: t\ndata: {data}\npreset: tiny\nseeds: {seeds}\nparallel: {parallel}\n"
                    f"cost_repeats: {repeats}\noverrides: [train.epochs=2, device=cpu"
                    f"{', ' + overrides if overrides else ''}]\n"
                    + (runs or "runs:\n  - {name: A, method: id, modalities: [text]}\n"))
    return load_suite(str(path))


def _finished_run(suite: Suite, data: Path, out: Path, seed: int, *, drop: tuple[str, ...] = (),
                  alone: bool | None = True, time_per_epoch: float = 1.0, repeat: int = 1, run_index: int = 0,
                  **fields: Any) -> Path:
    """Write ``out/runs/A/seed-S`` as the trainer would have for the suite's run A (``run_index``: another of
    its runs) on ``data`` as it is now (``drop``: config keys ``section.key`` left out of config.yaml, as an
    older crossan wrote it; ``fields``: results.json entries replaced, None removes one; ``alone``: the
    suite's note, None: no note)."""
    run = suite.runs[run_index]
    cfg = load_config([], run_overrides(suite, run, str(data), seed))
    run_dir = out / "runs" / run.name / (f"seed-{seed}" + (f".cost-{repeat}" if repeat > 1 else ""))
    run_dir.mkdir(parents=True)
    saved = to_dict(cfg)
    saved["data"]["path"] = str(Path(saved["data"]["path"]).resolve())
    for key in drop:
        section, name = key.split(".")
        del saved[section][name]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    prepared = prepare(cfg.data)
    ranks = torch.as_tensor(np.arange(1, len(prepared.test.targets) + 1) % 30 + 1, dtype=torch.float64)
    results: dict[str, Any] = {
        "method": run.method, "modalities": run.modalities, "dataset": prepared.name, "best_epoch": 1,
        "epochs_run": 2, "valid": mean_metrics(ranks, (5, 10, 20)), "test": mean_metrics(ranks, (5, 10, 20)),
        "train_time_per_epoch_s": time_per_epoch, "eval_time_s": 0.1, "trainable_params": 10,
        "total_params": 10,
        "peak_memory_bytes": 2**20, "peak_memory_kind": "cpu_peak_rss_above_idle",
        "device": "cpu (x, torch threads 2)", "compute_dtype": "float32", "mask_history": True,
        "split_fingerprint": split_fingerprint(prepared), "item_fingerprint": item_fingerprint(prepared),
        "crossan_version": crossan.__version__}
    for k, v in fields.items():
        if v is None:
            results.pop(k)
        else:
            results[k] = v
    (run_dir / "results.json").write_text(json.dumps(results))
    (run_dir / "best.safetensors").write_bytes(b"")  # there, as beside every finished run (not read here)
    np.savez_compressed(run_dir / "per_user.npz", valid_ranks=ranks.numpy(), test_ranks=ranks.numpy(),
                        users=np.asarray(prepared.users), split_fingerprint=np.asarray(results.get(
                            "split_fingerprint", "")))
    if alone is not None:
        training_record_path(run_dir).write_text(json.dumps({"trained_alone": alone, "runs_at_once": 1}))
    return run_dir


# --------------------------------------------------------------------------------------------- data changed
@pytest.mark.parametrize("change", ["none", "data folder rewritten", "item_fingerprint",
                                    "no split_fingerprint"])
def test_a_finished_run_is_reused_only_on_the_data_it_was_trained_on(tmp_path: Path, change: str,
                                                                      capsys) -> None:
    """The audit's case: the suite is run again after the data folder's content changed. The finished run
    was trained on the old data; it must be refused (naming the folder and what differs), not reused under
    the new data's digest."""
    data = random_dataset(tmp_path / "data", seed=0)
    suite = _suite_file(tmp_path, data)
    out = tmp_path / "out"
    fields: dict[str, Any] = {"item_fingerprint": "0" * 16} if change == "item_fingerprint" else {}
    if change == "no split_fingerprint":
        fields["split_fingerprint"] = None
    run_dir = _finished_run(suite, data, out, 0, **fields)
    if change == "data folder rewritten":  # same folder, same name, other content (other users and items)
        shutil.rmtree(data)
        random_dataset(data, seed=1, n_users=130)
    before = (run_dir / "results.json").read_bytes()
    capsys.readouterr()
    (row,) = run_suite(suite, out, progress=False)
    printed = capsys.readouterr().out
    assert (run_dir / "results.json").read_bytes() == before  # nothing retrained, nothing overwritten
    if change == "none":
        assert row["status"] == "ok" and row["reused_seeds"] == "0" and "done earlier, reusing" in printed
        return
    assert row["status"] == "failed" and "reusing" not in printed
    assert row["error"].startswith(f"seed 0: {run_dir} holds a run trained on other data than {data} "
                                   "holds now (")
    assert row["error"].endswith(f"); {retrain_advice(out, 'A', run_dir)}")
    now = prepare(load_config([], run_overrides(suite, suite.runs[0], str(data), 0)).data)
    old = json.loads(before)
    want = {"data folder rewritten": f"split_fingerprint: {old.get('split_fingerprint')} → "
                                     f"{split_fingerprint(now)}",
            "item_fingerprint": f"item_fingerprint: {'0' * 16} → {item_fingerprint(now)}",
            "no split_fingerprint": "records no split_fingerprint"}[change]
    assert want in row["error"]


TWO_RUNS = "runs:\n  - {name: A, method: id, modalities: [text]}\n  - {name: B, method: id, modalities: [text]}\n"


@pytest.mark.parametrize("finished", [True, False])
@pytest.mark.parametrize(("content", "why"), [
    (b"method: [id\n", "not valid YAML (expected ',' or ']', but got '<stream end>' at line 2, column 1)"),
    (b"method: \xff\xfe\n", "not UTF-8 ('utf-8' codec can't decode byte 0xff in position 8: invalid start byte)"),
    (b"- id\n", "expected a mapping of config keys, got list"),
    (b"1: x\nmethod: id\n", None),  # a key crossan never writes: another configuration, named
])
def test_a_config_yaml_that_cannot_be_read_fails_its_row_only(tmp_path: Path, content: bytes, why: str | None,
                                                               finished: bool, capsys) -> None:
    """One (run, seed) folder whose config.yaml is damaged stopped the whole suite with a traceback (yaml's
    ParserError, UnicodeDecodeError); that row now fails with one line naming the file, the file is left as
    it is, and the other runs go on (B, finished, is reused)."""
    data = random_dataset(tmp_path / "data")
    suite = _suite_file(tmp_path, data, runs=TWO_RUNS)
    out = tmp_path / "out"
    run_dir = _finished_run(suite, data, out, 0)
    _finished_run(suite, data, out, 0, run_index=1)
    if not finished:  # interrupted: the suite would resume it
        (run_dir / "results.json").unlink()
    (run_dir / "config.yaml").write_bytes(content)
    capsys.readouterr()
    a, b = run_suite(suite, out, progress=False)
    fresh = f"; {retrain_advice(out, 'A', run_dir)}"
    if why is None:  # named as a changed key (the comparison used to fail on mixed key types, its message
        # depending on string hashing)
        why = (f"{run_dir} holds a run with another configuration (1: 'x' → None" if finished else
               f"{run_dir}: --resume with a different configuration: 1: 'x' → None")
        assert a["status"] == "failed" and a["error"].startswith(f"seed 0: {why}") and a["error"].endswith(fresh)
    else:
        error = f"{run_dir / 'config.yaml'}: {why}{fresh}"
        assert a["status"] == "failed" and a["error"] == f"seed 0: {error}"
        assert f"[suite] 1/2 A seed 0: FAILED: {error}\n" in capsys.readouterr().out
    assert (run_dir / "config.yaml").read_bytes() == content and (run_dir / "results.json").is_file() == finished
    assert b["status"] == "ok" and b["reused_seeds"] == "0"


def test_a_refused_run_names_the_folder_to_delete_to_retrain_it_alone(tmp_path: Path) -> None:
    """One run's overrides changed: its refusal said "pass --fresh to retrain it", but --fresh retrains every
    (run, seed) of the suite. It now names the run's folder (and the seed's) to delete, and what --fresh does."""
    data = random_dataset(tmp_path / "data")
    out = tmp_path / "out"
    suite = _suite_file(tmp_path, data, runs=TWO_RUNS)
    _finished_run(suite, data, out, 0)
    run_dir = _finished_run(suite, data, out, 0, run_index=1)
    changed = _suite_file(tmp_path, data, runs=TWO_RUNS.replace("{name: B, method: id, modalities: [text]}",
                                                                 "{name: B, method: id, modalities: [text], "
                                                                 "overrides: [train.lr=0.005]}"))
    a, b = run_suite(changed, out, progress=False)
    assert a["status"] == "ok" and a["reused_seeds"] == "0" and b["status"] == "failed"
    assert b["error"] == (f"seed 0: {run_dir} holds a run with another configuration (train.lr: 0.0002 → 0.005); "
                          f"to retrain this run, delete {out / 'runs' / 'B'}/ (all its seeds) or {run_dir}/ (this "
                          "seed) and run the suite again, or choose another --out (--fresh retrains every run of "
                          "the suite)")


def test_bench_exits_1_when_any_run_fails_and_still_writes_the_report(tmp_path: Path, capsys) -> None:
    """``crossan bench`` exited 0 while any row finished (``demo`` only when all did): a suite whose run B was
    refused (its folder holds another configuration) now exits 1, with the report naming B's failure."""
    from crossan.cli import main

    data = random_dataset(tmp_path / "data")
    out = tmp_path / "out"
    suite = _suite_file(tmp_path, data, runs=TWO_RUNS)
    _finished_run(suite, data, out, 0)
    _finished_run(suite, data, out, 0, run_index=1)
    assert main(["bench", "--suite", str(tmp_path / "s.yaml"), "--out", str(out)]) == 0  # both reused
    _suite_file(tmp_path, data, runs=TWO_RUNS.replace("{name: B, method: id, modalities: [text]}",
                                                      "{name: B, method: id, modalities: [text], "
                                                      "overrides: [train.lr=0.005]}"))
    (out / "report.md").write_text("old report\n")
    capsys.readouterr()
    assert main(["bench", "--suite", str(tmp_path / "s.yaml"), "--out", str(out)]) == 1
    report = (out / "report.md").read_text()
    assert "## Failed runs" in report and "- B: seed 0: " in report and "| A | id | text | 0 |" in report
    # refused before training: no log was written, and the report names none (it named seed-0.log, absent)
    assert "(refused before training: no log)" in report and not (out / "runs" / "B" / "seed-0.log").exists()


@pytest.mark.parametrize(("trained", "now", "reused"), [("bfloat16", "bf16", True), ("float32", "fp32", True),
                                                        ("bfloat16", "fp32", False), (None, "fp32", False)])
def test_a_finished_run_is_reused_under_a_precision_that_gives_the_dtype_it_trained_at(
        tmp_path: Path, trained: str | None, now: str, reused: bool) -> None:
    """A run trained at ``precision=auto`` (in bfloat16 on a CPU with bf16 units, in float32 without) is the
    same run as one at the precision that forces that dtype, as the trainer's ``--resume`` accepts it: a suite
    that sets it to continue an interrupted run on another machine refused all its finished runs. Another
    dtype, or one the run did not record, is still another run."""
    data = random_dataset(tmp_path / "data")
    out = tmp_path / "out"
    run_dir = _finished_run(_suite_file(tmp_path, data), data, out, 0, compute_dtype=trained)
    (row,) = run_suite(_suite_file(tmp_path, data, overrides=f"precision={now}"), out, progress=False)
    if reused:
        assert row["status"] == "ok" and row["reused_seeds"] == "0" and row["compute_dtype"] == trained
        return
    assert row["status"] == "failed"
    assert row["error"] == (f"seed 0: {run_dir} holds a run with another configuration (precision: 'auto' → "
                            f"'fp32': float32 here, it trained in {trained or 'a compute dtype it did not record'}"
                            f"); {retrain_advice(out, 'A', run_dir)}")


def test_a_suite_continues_a_run_interrupted_on_a_machine_of_another_dtype(tmp_path: Path, monkeypatch) -> None:
    """A suite run at ``precision=auto`` interrupted on a CPU without bf16 units (float32) cannot continue on
    one with them (bfloat16): the trainer says to resume with ``precision=fp32``, and the suite refused that
    as another configuration (``precision: 'auto' → 'fp32'``). It now resumes it as the trainer's
    ``--resume`` accepts it, and reuses the finished run under either setting, not under ``bf16``."""
    import crossan.precision as precision
    import crossan.trainer as trainer
    from crossan.errors import RunError
    from crossan.reports.suite import _job
    from crossan.trainer import train

    data = random_dataset(tmp_path / "data")
    out = tmp_path / "out"
    auto = _suite_file(tmp_path, data)
    run_dir = out / "runs" / "A" / "seed-0"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)  # machine 1: auto is float32
    real_batches = trainer._batches

    def crashing(n: int, bs: int, seed: int, epoch: int) -> Any:
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_batches(n, bs, seed, epoch)

    monkeypatch.setattr(trainer, "_batches", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(load_config([], run_overrides(auto, auto.runs[0], str(data), 0)), run_dir, progress=False)
    monkeypatch.setattr(trainer, "_batches", real_batches)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)  # machine 2: auto is bfloat16
    _, kwargs = _job(auto, auto.runs[0], 0, data, out, True, "A seed 0", alone=True)
    assert kwargs is not None
    with pytest.raises(RunError, match="resume with precision=fp32 to continue in float32"):
        train(load_config([], kwargs["overrides"]), kwargs["run_dir"], resume=True, progress=False)
    forced = _suite_file(tmp_path, data, overrides="precision=fp32")  # what the trainer says to do
    rec, kwargs = _job(forced, forced.runs[0], 0, data, out, True, "A seed 0", alone=True)
    assert rec["status"] == "ok" and kwargs is not None and kwargs["resume"] and kwargs["run_dir"] == str(run_dir)
    res = train(load_config([], kwargs["overrides"]), kwargs["run_dir"], resume=True, progress=False)
    assert res["compute_dtype"] == "float32" and res["epochs_run"] == 2
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["precision"] == "auto"  # as it started
    for setting, reused in (("precision=fp32", True), ("", True), ("precision=bf16", False)):
        suite = _suite_file(tmp_path, data, overrides=setting)
        rec, kwargs = _job(suite, suite.runs[0], 0, data, out, True, "A seed 0", alone=True)
        assert kwargs is None and rec.get("reused", False) is reused, setting
    assert "precision: 'auto' → 'bf16': bfloat16 here, it trained in float32" in rec["error"]


@pytest.mark.parametrize("case", ["moved", "moved, other items", "moved, no item_fingerprint",
                                  "moved, another key", "moved, unfinished"])
def test_a_finished_run_whose_data_folder_moved_is_reused(tmp_path: Path, case: str, capsys) -> None:
    """A synthetic suite keeps its data in its output folder, and each run's config.yaml records that absolute
    path: moving or renaming the folder made every finished run "another configuration (data.path …)". A
    finished run whose only difference is ``data.path`` is now reused, saying so, where the data's split and
    item fingerprints are those the run recorded; other data, a run that records no item fingerprint and
    another key are still refused. An interrupted run whose folder moved is resumed (the trainer's ``--resume``
    accepts another data.path, its checkpoint's fingerprints checking the data)."""
    old = random_dataset(tmp_path / "before" / "data")
    out = tmp_path / "out"
    fields: dict[str, Any] = {"item_fingerprint": None} if case == "moved, no item_fingerprint" else {}
    run_dir = _finished_run(_suite_file(tmp_path, old), old, out, 0, **fields)
    if case == "moved, unfinished":
        (run_dir / "results.json").unlink()
    new = tmp_path / "after" / "data"
    shutil.move(tmp_path / "before", tmp_path / "after")
    if case == "moved, other items":
        shutil.rmtree(new)
        random_dataset(new, seed=1, n_users=130)
    suite = _suite_file(tmp_path, new, overrides="train.lr=0.001" if case == "moved, another key" else "")
    capsys.readouterr()
    (row,) = run_suite(suite, out, progress=False)
    moved = f"data.path: '{old.resolve()}' → '{new.resolve()}'"
    fresh = f"; {retrain_advice(out, 'A', run_dir)}"
    if case == "moved, unfinished":
        assert row["status"] == "ok" and not row.get("reused_seeds") and "resuming" in capsys.readouterr().out
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["path"] == str(new.resolve())
        return
    if case == "moved":
        assert row["status"] == "ok" and row["reused_seeds"] == "0"
        assert (f"done earlier, reusing {run_dir / 'results.json'} (moved: {moved}; its data and inputs checked "
                "the same by their fingerprints)\n") in capsys.readouterr().out
        return
    assert row["status"] == "failed"
    want = {"moved, other items": f"seed 0: {run_dir} holds a run trained on other data than {new} holds now "
                                  "(split_fingerprint: ",
            "moved, no item_fingerprint": f"seed 0: {run_dir} holds a run whose data or cache folder moved "
                                          f"({moved}), and its results.json records no item_fingerprint, so the "
                                          f"inputs it read cannot be checked against those read now{fresh}",
            "moved, another key": f"seed 0: {run_dir} holds a run with another configuration (train.lr: 0.0002 → "
                                  f"0.001; {moved}){fresh}",
            }[case]
    assert row["error"].startswith(want) and row["error"].endswith(fresh)


def test_a_finished_run_whose_cache_folder_moved_is_reused_where_it_records_the_cache(tmp_path: Path,
                                                                                     capsys) -> None:
    """``cache.dir`` moved with the suite's output folder: a cached run is reused where the states it recorded
    (``cache_states``) are those of the cache found now, and refused where it records none."""
    from crossan.cache import build_cache
    from crossan.reports.suite import _job
    from crossan.runs import cache_states_digests

    data = random_dataset(tmp_path / "data", n_users=60, n_items=30)

    def suite_at(cache: Path) -> Suite:
        return _suite_file(tmp_path, data, runs="runs:\n  - {name: A, method: frozen, modalities: [text], "
                                                f"overrides: [cache.dir={cache}]}}\n")

    before, after = tmp_path / "before" / "cache", tmp_path / "after" / "cache"
    suite = suite_at(before)
    cfg = load_config([], run_overrides(suite, suite.runs[0], str(data), 0))
    prepared = prepare(cfg.data)
    build_cache(cfg, prepared, ["text"], progress=False)
    out = tmp_path / "out"
    run_dir = _finished_run(suite, data, out, 0, method="frozen", cache_states=cache_states_digests(cfg, prepared))
    shutil.move(tmp_path / "before", tmp_path / "after")
    suite = suite_at(after)
    capsys.readouterr()
    rec, kwargs = _job(suite, suite.runs[0], 0, data, out, True, "A seed 0", alone=True)
    assert kwargs is None and rec.get("reused") and rec["status"] == "ok"
    assert f"(moved: cache.dir: '{before}' → '{after}'; its data" in capsys.readouterr().out
    results = json.loads((run_dir / "results.json").read_text())
    del results["cache_states"]
    (run_dir / "results.json").write_text(json.dumps(results))
    rec, kwargs = _job(suite, suite.runs[0], 0, data, out, True, "A seed 0", alone=True)
    assert kwargs is None and rec["status"] == "failed"
    assert "and its results.json records no cache_states, so the inputs it read cannot be" in rec["error"]


def test_a_failed_cache_build_stops_the_suite_with_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """A suite whose cache could not be built (its data path missing, a corrupt cover) ended `crossan bench`
    with a Python traceback (a bare RuntimeError holding the child's whole log), not with the one line that
    names what is at fault: the child's own error, as for every other bad input."""
    import crossan.reports.suite as suite_mod
    from crossan.cli import main
    from crossan.errors import CacheError

    def failing(target: str, kwargs: dict[str, Any], log: Path, show: bool) -> int:
        log.write_text(f"crossan: error: {tmp_path / 'nothere'}: no such file or folder\n\n"
                       "[suite-child] cpu seconds 0.30\n")
        return 2

    monkeypatch.setattr(suite_mod, "run_child", failing)
    suite = _suite_file(tmp_path, tmp_path / "nothere", runs="runs:\n  - {name: F, method: frozen}\n")
    (tmp_path / "out").mkdir()
    with pytest.raises(CacheError) as e:
        suite_mod.ensure_cache(suite, tmp_path / "nothere", tmp_path / "out", progress=False)
    assert str(e.value).count("crossan: error") == 0 and "\n" not in str(e.value)
    assert str(e.value).endswith(f"{tmp_path / 'nothere'}: no such file or folder")
    capsys.readouterr()
    assert main(["bench", "--suite", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crossan: error: building the layer-state cache for F failed") and err.count("\n") == 1


def test_the_suites_precision_reaches_its_cache_build(tmp_path: Path, monkeypatch, capsys) -> None:
    """A suite at ``precision=fp32`` on a CPU with bf16 units built its cache in bfloat16: the cache child got
    no precision (only encoders.*, cache.*, data.* and device). A run-level precision gets a build of its own,
    which finds the folder built (the cache's folder does not depend on the precision) and says so."""
    import crossan.precision as precision
    import crossan.reports.suite as suite_mod
    from crossan.cache.manifest import read_manifest
    from crossan.reports.children import _cache_target

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)  # a CPU where auto is bf16
    given: list[list[str]] = []

    def in_process(target: str, kwargs: dict[str, Any], log: Path, show: bool) -> int:  # the patch above applies
        given.append(kwargs["overrides"])
        _cache_target(**kwargs)
        return 0

    monkeypatch.setattr(suite_mod, "run_child", in_process)
    data = random_dataset(tmp_path / "data", n_users=60, n_items=30)
    cache = tmp_path / "cache"
    suite = _suite_file(tmp_path, data, overrides=f"precision=fp32, cache.dir={cache}", runs=(
        "runs:\n  - {name: Base, method: frozen, modalities: [text]}\n"
        "  - {name: Bf16, method: frozen, modalities: [text], overrides: [precision=bf16]}\n"))
    (tmp_path / "out").mkdir()
    capsys.readouterr()
    _, errors = suite_mod.ensure_cache(suite, data, tmp_path / "out", progress=False)
    assert not errors
    assert [[o for o in g if o.startswith("precision=")] for g in given] == [["precision=fp32"],
                                                                            ["precision=fp32", "precision=bf16"]]
    assert read_manifest(cache / "text")["build"]["compute_dtype"] == "float32"  # type: ignore[index]
    assert ("built with float32 compute; this run's precision=bf16 resolves to bfloat16. It is used as it is"
            in capsys.readouterr().out)


def test_a_resumed_childs_log_keeps_the_earlier_attempts(tmp_path: Path, capsys) -> None:
    """A resumed (run, seed) emptied its log, so the interrupted attempt's output was lost and its CPU time
    left out of the report's total; a fresh start still empties it."""
    from crossan.reports.children import ATTEMPT_LINE, CPU_LINE, cpu_seconds, error_line, run_child

    log = tmp_path / "seed-0.log"
    log.write_text(f"epoch 1 | loss 7.0\ncrossan: error: the first attempt's own error\n\n{CPU_LINE}5.00\n")
    kwargs = {"overrides": ["train.epochs=-1"], "run_dir": str(tmp_path / "run"), "progress": False}
    assert run_child("train", {**kwargs, "resume": True}, log, show=True) == 2  # fails at once: a bad value
    shown = capsys.readouterr().err  # a copy on stderr: stdout keeps the table
    text = log.read_text()
    assert text.startswith("epoch 1 | loss 7.0\n") and text.count(ATTEMPT_LINE) == 1
    assert "epoch 1" not in shown and "train.epochs" in shown  # the terminal sees this attempt only
    assert "train.epochs" in error_line(log) and "first attempt" not in error_line(log)
    assert cpu_seconds(log) > 5.0  # both attempts' CPU time
    assert run_child("train", {**kwargs, "resume": False}, log, show=False) == 2
    assert "epoch 1" not in log.read_text() and ATTEMPT_LINE not in log.read_text()


@pytest.mark.subprocess
def test_a_terminated_child_still_reports_its_cpu_time(tmp_path: Path) -> None:
    """A child terminated mid-training (the suite interrupted or killed sends its children SIGTERM) wrote no
    CPU line, so its attempt was left out of the run's CPU total; it now writes one and ends as SIGTERM
    would."""
    import time

    from crossan.reports.children import CPU_LINE, cpu_seconds, start_child

    data = random_dataset(tmp_path / "data")
    log = tmp_path / "seed-0.log"
    kwargs = {"overrides": [f"data.path={data}", "method=id", "device=cpu", "train.epochs=100000",
                            "train.patience=100000"],
              "run_dir": str(tmp_path / "run"), "resume": False, "progress": False}
    proc = start_child("train", kwargs, log)
    deadline = time.monotonic() + 120
    while "epoch   2 |" not in log.read_text() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)  # training: the handler is installed and some CPU time spent
    assert proc.is_alive(), log.read_text()
    proc.terminate()
    proc.join(60)
    assert proc.exitcode == 128 + 15
    text = log.read_text()
    assert text.rstrip().splitlines()[-1].startswith(CPU_LINE)
    assert cpu_seconds(log) is not None and cpu_seconds(log) > 0.5  # type: ignore[operator]


# --------------------------------------------------------------------------------------------- old defaults
def test_a_saved_config_without_a_key_whose_default_changed_reads_as_it_ran() -> None:
    """``train.negatives`` was added as ``unique`` and now defaults to ``slots``: a config.yaml written
    before the key existed ran with ``unique``, so it differs from a run of today's default and equals one
    with ``train.negatives=unique``. A key added with today's default (``train.pop_smoothing``) still takes
    it."""
    now = load_config([], [])
    assert now.train.negatives == "slots"
    saved = to_dict(now)
    del saved["train"]["negatives"]
    assert config_differences(saved, now) == ["train.negatives: 'unique' → 'slots'"]
    assert config_differences(saved, load_config([], ["train.negatives=unique"])) == []
    del saved["train"]["pop_smoothing"]
    assert config_differences(saved, load_config([], ["train.negatives=unique"])) == []
    del saved["train"]  # a whole section missing: filled the same way
    assert config_differences(saved, now) == ["train.compile: False → 'auto'", "train.negatives: 'unique' → 'slots'"]
    # the one key found in the history, precision, whose first default (auto) did not keep float32, and
    # train.compile (false → auto in 0.1.20)
    assert CHANGED_DEFAULTS == {"train.negatives": "unique", "precision": "fp32", "train.compile": False}
    saved = to_dict(now)
    del saved["train"]["compile"]  # written before train.compile existed: it trained eager
    assert config_differences(saved, now) == ["train.compile: False → 'auto'"]
    assert config_differences(saved, load_config([], ["train.compile=false"])) == []


def test_a_suite_reuses_a_run_that_differs_only_in_train_compile(tmp_path: Path) -> None:
    """crossan 0.1.19 wrote ``compile: false`` (and before 2026-12-01 no key at all); 0.1.20's default is ``auto``.
    Compiling changes how a step is computed, not what (``runs.EXECUTION_KEYS``): the finished runs are reused,
    not refused as runs of another configuration."""
    data = random_dataset(tmp_path / "data")
    suite = _suite_file(tmp_path, data)
    run_dir = _finished_run(suite, data, tmp_path / "out", 0)
    text = (run_dir / "config.yaml").read_text()
    assert "compile: auto" in text
    (run_dir / "config.yaml").write_text(text.replace("compile: auto", "compile: false"))
    (row,) = run_suite(suite, tmp_path / "out", progress=False)
    assert row["status"] == "ok", row.get("error")
    shutil.rmtree(tmp_path / "out")
    _finished_run(suite, data, tmp_path / "out", 0, drop=("train.compile",))
    (row,) = run_suite(suite, tmp_path / "out", progress=False)
    assert row["status"] == "ok", row.get("error")


def test_a_suite_refuses_to_reuse_a_run_trained_before_negatives_existed(tmp_path: Path) -> None:
    data = random_dataset(tmp_path / "data")
    suite = _suite_file(tmp_path, data)
    run_dir = _finished_run(suite, data, tmp_path / "out", 0, drop=("train.negatives",))
    (row,) = run_suite(suite, tmp_path / "out", progress=False)
    assert row["status"] == "failed"
    assert row["error"] == (f"seed 0: {run_dir} holds a run with another configuration (train.negatives: "
                            f"'unique' → 'slots'); {retrain_advice(tmp_path / 'out', 'A', run_dir)}")


# --------------------------------------------------------------------------------------------- trained alone
def test_the_suite_records_whether_a_run_trained_alone(tmp_path: Path) -> None:
    from crossan.reports.suite import finish_job

    run_dir = tmp_path / "runs" / "A" / "seed-1"
    run_dir.mkdir(parents=True)
    for alone, at_once in ((False, 2), (True, 1)):
        rec = {"dir": str(run_dir), "log": str(tmp_path / "none.log"), "t0": 0.0, "label": "A seed 1",
               "status": "ok", "alone": alone, "at_once": at_once}
        finish_job(rec, 0)
        record = read_training_record(run_dir)
        assert record is not None and record["trained_alone"] is alone and record["runs_at_once"] == at_once
    assert training_record_path(run_dir) == tmp_path / "runs" / "A" / "seed-1.suite.json"


@pytest.mark.parametrize(("note", "alone"), [(True, True), (False, False), (None, False)])
def test_a_resumed_run_trained_alone_only_if_its_earlier_epochs_did(tmp_path: Path, note: bool | None,
                                                                   alone: bool) -> None:
    """An interrupted (run, seed) resumed alone keeps ``alone`` only when its note says its earlier epochs
    trained alone (no note: not known, so not alone); the note is written before its training starts."""
    from crossan.reports.suite import _job

    data = random_dataset(tmp_path / "data")
    suite = _suite_file(tmp_path, data)
    run_dir = _finished_run(suite, data, tmp_path / "out", 0, alone=note)
    (run_dir / "results.json").unlink()  # interrupted: config.yaml and a checkpoint, no results
    rec, kwargs = _job(suite, suite.runs[0], 0, data, tmp_path / "out", True, "A seed 0", alone=True)
    assert kwargs is not None and kwargs["resume"] and rec["alone"] is alone
    assert read_training_record(run_dir) == {**read_training_record(run_dir), "trained_alone": alone,
                                             "finished": False}


def test_a_reused_run_gives_its_cost_only_when_it_trained_alone(tmp_path: Path) -> None:
    """Seed 0 (the first of --seeds) was trained two at a time by an earlier invocation, seed 1 alone: the
    cost is seed 1's, and the report does not claim seed 0 trained alone. With no note at all (runs of an
    older suite) the cost cells stay blank and the row says why."""
    data = random_dataset(tmp_path / "data")
    suite = _suite_file(tmp_path, data, seeds="[0, 1]", parallel=2)
    _finished_run(suite, data, tmp_path / "out", 0, alone=False, time_per_epoch=9.0)
    _finished_run(suite, data, tmp_path / "out", 1, alone=True, time_per_epoch=2.0)
    (row,) = run_suite(suite, tmp_path / "out", progress=False)
    assert row["status"] == "ok" and row["cost_seed"] == 1 and row["time_per_epoch_s"] == 2.0
    for s in (0, 1):
        training_record_path(tmp_path / "out" / "runs" / "A" / f"seed-{s}").unlink()
    (row,) = run_suite(suite, tmp_path / "out", progress=False)
    assert np.isnan(row["time_per_epoch_s"]) and any(f.startswith("cost blank") for f in row["flags"])
    table = (tmp_path / "out" / "results.md").read_text().splitlines()
    line = next(x for x in table if x.startswith("| A |"))
    assert "| nan |" not in line and "cost blank" in line


def test_cost_repeats_add_measurements_to_the_median_and_check_the_ranking(tmp_path: Path) -> None:
    """``cost_repeats: 3``: the first seed's two repeats (``seed-0.cost-2``, ``-3``) join the median of the cost
    columns (seed 1 trained two at a time does not), not the quality columns; a repeat that ranks otherwise
    than its seed is flagged. (Patience 1: the runs, best at epoch 1 of 2, stopped on it, not on the cap.)"""
    data = random_dataset(tmp_path / "data")
    suite = _suite_file(tmp_path, data, seeds="[0, 1]", parallel=2, repeats=3, overrides="train.patience=1")
    out = tmp_path / "out"
    _finished_run(suite, data, out, 0, time_per_epoch=1.0)
    _finished_run(suite, data, out, 0, repeat=2, time_per_epoch=5.0)
    third = _finished_run(suite, data, out, 0, repeat=3, time_per_epoch=2.0)
    _finished_run(suite, data, out, 1, alone=False, time_per_epoch=9.0)
    (row,) = run_suite(suite, out, progress=False)
    assert (row["time_per_epoch_s"], row["cost_measurements"], row["cost_seeds"], row["n_seeds"]) == (2.0, 3, "0", 2)
    assert row["time_per_epoch_range"] == "1.000-5.000" and not row["flags"]
    report = (out / "report.md").read_text()
    assert "2 more trainings of its first seed alone (`cost_repeats: 3`)" in report

    results = json.loads((third / "results.json").read_text())
    results["test"]["NDCG@10"] += 0.01
    (third / "results.json").write_text(json.dumps(results))
    (row,) = run_suite(suite, out, progress=False)
    assert any(f.startswith("repeat ranks differently: cost repeat 3 of seed 0") for f in row["flags"])
    assert "**repeat ranks differently**" in (out / "report.md").read_text()


def test_a_plugin_run_is_not_reused_once_its_code_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin method's run records its module's SHA-256 (``method_source``); a suite reuses it while the
    file is unchanged and refuses it, naming the file, once the code under that method name has changed (it
    was reused silently)."""
    import importlib.util
    import sys

    from crossan.methods import METHODS, Method, method_source

    source = tmp_path / "codeid_mod.py"
    source.write_text("VERSION = 1\n")
    spec = importlib.util.spec_from_file_location("codeid_mod", source)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "codeid_mod", module)
    monkeypatch.setitem(METHODS, "codeid", Method("codeid", None, "codeid_mod", False, False))
    data = random_dataset(tmp_path / "data")
    suite = _suite_file(tmp_path, data, runs="runs:\n  - {name: A, method: codeid, modalities: [text]}\n")
    _finished_run(suite, data, tmp_path / "out", 0, method="codeid", method_source=method_source("codeid"))
    (row,) = run_suite(suite, tmp_path / "out", progress=False)
    assert row["status"] == "ok" and row["reused_seeds"] == "0"
    source.write_text("VERSION = 2\n")
    (row,) = run_suite(suite, tmp_path / "out", progress=False)
    assert row["status"] == "failed"
    assert f"plugin method 'codeid' was trained with other code: {source} has SHA-256" in row["error"]
    assert row["error"].endswith(retrain_advice(tmp_path / "out", "A", tmp_path / "out" / "runs" / "A" / "seed-0"))


@pytest.mark.parametrize(("method", "phrase"), [
    ("frozen", "the layer-state cache of text changed since it trained"),  # reads the cache's states
    ("lora", "the item content of text changed since it trained"),  # reads the titles itself
])
def test_a_run_is_not_reused_once_its_items_content_changed(tmp_path: Path, method: str, phrase: str) -> None:
    """Same item ids, same split, but a title changed: the suite reused the run trained on the old inputs.
    A cached method's run records the states it read (``cache_states``), an end-to-end run the content it
    read (``content_sources``); the suite now refuses either, naming the modality."""
    from crossan.cache import build_cache
    from crossan.runs import cache_states_digests, content_digests

    data = random_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    suite = _suite_file(tmp_path, data, runs=f"runs:\n  - {{name: A, method: {method}, modalities: [text], "
                                             f"overrides: [cache.dir={cache}]}}\n")
    cfg = load_config([], run_overrides(suite, suite.runs[0], str(data), 0))
    prepared = prepare(cfg.data)
    if method == "frozen":
        build_cache(cfg, prepared, ["text"], progress=False)
    recorded = {"cache_states": cache_states_digests(cfg, prepared),
                "content_sources": content_digests(cfg, prepared)}
    kind = "cache_states" if method == "frozen" else "content_sources"
    assert [k for k, v in recorded.items() if v] == [kind]
    _finished_run(suite, data, tmp_path / "out", 0, method=method, **{kind: recorded[kind]})
    (row,) = run_suite(suite, tmp_path / "out", progress=False)
    assert row["status"] == "ok" and row["reused_seeds"] == "0"
    items = data / "items.tsv"
    items.write_text(items.read_text().replace("item number 3 of", "item number three of", 1))
    (row,) = run_suite(suite, tmp_path / "out", progress=False)
    assert row["status"] == "failed" and phrase in row["error"]


def test_a_repeat_of_a_run_without_every_k_is_not_flagged(tmp_path: Path) -> None:
    """A run with ``eval.ks=[10]``: the report derives HR/NDCG@5 and @20 from per_user.npz for the seed; the
    repeat was compared raw, so identical rankings read as "repeat ranks differently"."""
    data = random_dataset(tmp_path / "data")
    suite = _suite_file(tmp_path, data, repeats=2)
    out = tmp_path / "out"
    ranks = torch.arange(1, 61, dtype=torch.float64) % 30 + 1
    only10 = mean_metrics(ranks, (10,))
    for repeat in (1, 2):
        _finished_run(suite, data, out, 0, repeat=repeat, test=only10, valid=only10)
    (row,) = run_suite(suite, out, progress=False)
    assert row["cost_measurements"] == 2 and not [f for f in row["flags"] if f.startswith("repeat")]


@pytest.mark.parametrize("value", [0, -1, "2", True])
def test_cost_repeats_must_be_a_positive_integer(tmp_path: Path, value: Any) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(f"data: x\ncost_repeats: {json.dumps(value)}\nruns:\n  - {{method: id}}\n")
    with pytest.raises(ConfigError, match="cost_repeats must be an integer >= 1"):
        load_suite(str(path))
    with pytest.raises(ConfigError, match="--cost-repeats must be an integer >= 1"):
        load_suite("tiny", cost_repeats=0)


@pytest.mark.subprocess
def test_a_cost_repeat_trains_again_and_ranks_the_same(tmp_path: Path) -> None:
    """A real repeat: the first seed trains a second time into ``seed-0.cost-2``, alone, and ranks exactly as
    the first time (the trainer is deterministic on the CPU), so the row carries no such flag."""
    data = random_dataset(tmp_path / "data")
    suite = _suite_file(tmp_path, data, repeats=2)
    (row,) = run_suite(suite, tmp_path / "out", progress=False)
    again = tmp_path / "out" / "runs" / "A" / "seed-0.cost-2"
    assert row["status"] == "ok" and row["cost_measurements"] == 2
    assert not [f for f in row["flags"] if f.startswith("repeat")]
    assert read_training_record(again)["trained_alone"] is True  # type: ignore[index]
    first = json.loads((tmp_path / "out" / "runs" / "A" / "seed-0" / "results.json").read_text())
    assert json.loads((again / "results.json").read_text())["test"] == first["test"]


# ------------------------------------------------------------------------------------------- run-level cache
@pytest.mark.subprocess
def test_run_level_cache_and_encoder_overrides_get_a_cache_of_their_own(tmp_path: Path) -> None:
    """A run that changes its encoder or its cache folder reads a cache the suite now builds for it; a run
    whose cache cannot be built fails with that error, and the others go on."""
    from crossan.cache.layout import modality_folder
    from crossan.reports.suite import _job, ensure_cache

    data = random_dataset(tmp_path / "data", n_users=60, n_items=30)
    suite = _suite_file(tmp_path, data, runs=(
        "runs:\n  - {name: Base, method: frozen, modalities: [text]}\n"
        f"  - {{name: OwnDir, method: frozen, modalities: [text],\n"
        f"     overrides: [cache.dir={tmp_path / 'own'}]}}\n"
        "  - {name: OwnEnc, method: frozen, modalities: [text], overrides: [encoders.text.max_text_len=8]}\n"
        "  - {name: Bad, method: frozen, modalities: [text],\n"
        "     overrides: [cache.dir=/dev/null/crossan-cache]}\n"))
    out = tmp_path / "out"
    out.mkdir()
    built = ensure_cache(suite, data, out, progress=False)
    prepared = prepare(load_config([], run_overrides(suite, suite.runs[0], str(data), 0)).data)
    folders = {r.name: modality_folder(load_config([], run_overrides(suite, r, str(data), 0)), prepared,
                                       "text") for r in suite.runs[:3]}
    assert len(set(folders.values())) == 3 and folders["OwnDir"].is_relative_to(tmp_path / "own")
    for name, folder in folders.items():
        assert (folder / "manifest.json").is_file(), name
    _, errors = built
    assert list(errors) == ["Bad"]
    assert errors["Bad"].startswith("building the layer-state cache for its overrides "
                                    "cache.dir=/dev/null/crossan-cache failed (see ")
    rec, kwargs = _job(suite, suite.runs[3], 0, data, out, True, "Bad seed 0", alone=True,
                       cache_error=errors["Bad"])
    assert kwargs is None and rec["status"] == "failed" and rec["error"] == errors["Bad"]


# --------------------------------------------------------------------------------------------- suite files
def test_the_tiny_suite_describes_its_size() -> None:
    suite = load_suite("tiny")
    trainings = sum(len(suite.seeds_of(r)) for r in suite.runs)
    assert "seconds-long" not in suite.description
    assert f"{len(suite.runs)} runs, {trainings} trainings" in suite.description
    broken = next(r for r in suite.runs if r.name == "Broken")
    assert broken.overrides == ["cache.dir=/dev/null/crossan-cache"]  # cannot be created, even by root


@pytest.mark.parametrize("name", ["modalities_offline", "modalities_offline-random"])
def test_modalities_suites_do_not_claim_to_share_the_ablation_config(name: str) -> None:
    """CROSSAN-text pins train.negatives=unique and 12 epochs; the ablation suite's CROSSAN-M1 runs slots and 30."""
    text = (BENCHMARKS / f"{name}.yaml").read_text()
    suite, ablation = load_suite(str(BENCHMARKS / f"{name}.yaml")), load_suite("ablation")
    mine = next(r for r in suite.runs if r.name == "CROSSAN-text")
    theirs = next(r for r in ablation.runs if r.name == "CROSSAN-M1")
    cfg = load_config([], [o for o in run_overrides(suite, mine, "d", 0)
                           if not o.startswith("encoders.preset")])
    other = load_config([], [o for o in run_overrides(ablation, theirs, "d", 0)
                             if not o.startswith("encoders.preset")])
    assert config_differences(to_dict(other), cfg) == ["train.epochs: 30 → 12", "train.negatives: 'slots' → 'unique'"]
    assert "share a config" not in text and "does NOT share" in text


@pytest.mark.parametrize("gone", ["best.safetensors", "per_user.npz", "both"])
def test_a_finished_run_missing_its_weights_or_ranks_is_not_reused(tmp_path: Path, gone: str) -> None:
    """A second reader (2026-12-04) deleted a finished run's best.safetensors or per_user.npz: the suite reused
    both runs and exited 0; the run without weights could be neither served nor evaluated, and the row without
    ranks lost its paired test with "a run of an older crossan" as the reason. Such a run is refused now,
    naming what is gone and the folder to delete to retrain it."""
    data = random_dataset(tmp_path / "data")
    suite = _suite_file(tmp_path, data)
    out = tmp_path / "out"
    run_dir = _finished_run(suite, data, out, 0, per_user_file="per_user.npz")
    names = ["best.safetensors", "per_user.npz"] if gone == "both" else [gone]
    for name in names:
        (run_dir / name).unlink()
    (row,) = run_suite(suite, out, progress=False)
    assert row["status"] == "failed"
    verb = "are" if gone == "both" else "is"
    assert row["error"] == (f"seed 0: {run_dir} holds a finished run whose {' and '.join(names)} {verb} gone; "
                            f"{retrain_advice(out, 'A', run_dir)}")


def test_ranks_deleted_from_a_run_are_not_blamed_on_an_older_crossan(tmp_path: Path) -> None:
    from crossan.reports.table import _per_user

    data = random_dataset(tmp_path / "data")
    run_dir = _finished_run(_suite_file(tmp_path, data), data, tmp_path / "out", 0, per_user_file="per_user.npz")
    (run_dir / "per_user.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"no per-user ranks \(deleted since the run wrote it\)"):
        _per_user(str(run_dir))

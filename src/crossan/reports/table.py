"""A suite's table: one row per run with the mean and 95% t-interval over seeds of every metric, the paired
bootstrap against the reference run on per-user test NDCG@10 (from each run folder's ``per_user.npz``) with
Holm–Bonferroni adjusted p-values over the report's comparisons, the efficiency figures and TPME; written as
``results.csv``, ``results.json``, ``results.md`` and ``report.md``.

``*_ci95`` columns hold the half-width of the interval: the interval is ``mean ± ci95``. ``p_value`` is the
raw bootstrap p-value, ``p_holm`` the Holm-adjusted one that ``significant`` is based on, ``paired_seeds``
how many seeds the test paired, ``p_value_note`` why a row has no test (or ``reference``). ``flags`` names
what a reader must know about a row: seeds that the epoch cap stopped before their patience ran out (``capped``), an
evaluation without the history mask or seeds that differ in it, runs written by another crossan version, a
paired test on fewer seeds than the row's mean (the reference lacks some), the reference's failed seeds, cost
columns left blank (no seed of the run is known to have trained alone) or measured under other settings
(device, torch threads, kind of peak memory) than another row's.

Cost (time per epoch, peak memory, eval time) is the median over the row's finished seeds that the suite
records as trained with nothing else of the suite running (``alone`` in its record, from the suite's
``seed-S.suite.json``: every seed with ``parallel: 1``, the first with more) and over the suite's cost repeats
of the first seed (``cost_repeats``; ``cost_measurements`` counts them all); TPME is computed only when
every costed row was measured on the same device with the same torch thread count and the same kind of peak
memory.
"""

from __future__ import annotations

import csv
import json
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import crossan
from crossan.reports.stats import (
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    holm_adjust,
    ndcg_at,
    paired_bootstrap,
    t_interval,
)
from crossan.utils import atomic_write, atomic_write_json, atomic_write_text, json_safe

METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR")
"""Every cut-off METHOD.md §2 asks for (K = 5, 10, 20; 10 is the headline) and MRR."""
NPZ_ERRORS = (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
"""What reading a damaged ``per_user.npz`` raises (a truncated file: ``BadZipFile``; damaged bytes: ``zlib.error``)."""
MIN_CLAIM_SEEDS = 3
"""The fewest seeds paired with the reference on which a row's difference is claimed (``significant``, the
report's \\*): METHOD.md §11's "several seeds (at least 3)"."""
MIN_CLAIM_USERS = 50
"""The fewest test users paired with the reference on which a row's difference is claimed. The paired
bootstrap resamples users, and on few of them its p-value is too small: under the null (two arms of one
sparse NDCG@10 distribution, three seeds, 1,000 data sets each) p < 0.05 came out for 16% of them at 5 users,
10% at 10, 6.4–6.8% at 20–30 and 5.6% at 50 and 100 (docs/results.md §12x)."""


def may_claim(paired_seeds: int, paired_users: int, capped: bool, reference_capped: bool) -> bool:
    """Whether a tested difference may be claimed (``significant`` when its Holm p is under :data:`ALPHA`):
    on at least :data:`MIN_CLAIM_SEEDS` seeds and :data:`MIN_CLAIM_USERS` users paired with the reference,
    none of the paired seeds, the row's or the reference's, stopped by the epoch cap (METHOD.md §11). The
    suites' reports and ``benchmarks/compare_runs.py`` both decide with it."""
    return (paired_seeds >= MIN_CLAIM_SEEDS and paired_users >= MIN_CLAIM_USERS
            and not capped and not reference_capped)


# --------------------------------------------------------------------------------------------- one row per run
def _timed_from_one_step(run_dir: str) -> bool:
    """Whether an epoch of the run's ``history.jsonl`` ran one step of a longer epoch: its time is that first
    step's (warm-up included) times the epoch's step count (``train.max_steps_per_epoch=1``)."""
    try:
        lines = (Path(run_dir) / "history.jsonl").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        try:
            rec = json.loads(line)
            if rec.get("steps") == 1 and int(rec.get("full_epoch_steps", 1)) > 1:
                return True
        except (ValueError, TypeError, AttributeError):
            continue
    return False


def _train_setting(run_dir: str, key: str) -> int | None:
    """``train.<key>`` (an integer) of the run's saved ``config.yaml`` (None when it cannot be read)."""
    try:
        saved = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
        value = saved["train"][key]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _stopping_settings(run_dir: str) -> dict[str, int | None]:
    """What :func:`_capped` reads of a run's saved ``config.yaml``: its epoch cap, patience and eval_every."""
    return {"epochs_allowed": _train_setting(run_dir, "epochs"), "patience": _train_setting(run_dir, "patience"),
            "eval_every": _train_setting(run_dir, "eval_every")}


def run_capped(run_dir: str | Path, best_epoch: int) -> bool:
    """Whether the epoch cap, not early stopping, ended the run in ``run_dir`` whose best epoch was
    ``best_epoch`` (:func:`_capped`, with the settings of its saved ``config.yaml``)."""
    return _capped({"best_epoch": best_epoch, **_stopping_settings(str(run_dir))})


def _with_derived_metrics(run_dir: str, results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The run's valid and test metrics, with each HR@K/NDCG@K of :data:`METRICS` that results.json lacks
    (``eval.ks`` without that K) computed from the per-user ranks of ``per_user.npz`` when the folder has it
    (the same ranks, the same formula as :mod:`crossan.evaluation`)."""
    out = {split: dict(results[split]) for split in ("valid", "test")}
    missing = [k for k in METRICS if k != "MRR" and any(k not in out[split] for split in out)]
    path = Path(run_dir) / "per_user.npz"
    if not missing or not path.is_file():
        return out
    try:
        with np.load(path, allow_pickle=False) as z:
            ranks = {split: np.asarray(z[f"{split}_ranks"], dtype=np.float64) for split in out}
    except NPZ_ERRORS:
        return out
    for split, r in ranks.items():
        for k in missing:
            if k not in out[split] and r.size:
                cut = int(k.split("@")[1])
                out[split][k] = float((r <= cut).mean() if k.startswith("HR@") else ndcg_at(r, cut).mean())
    return out


def _run_results(run_dir: str) -> dict[str, Any]:
    """A finished run's results.json, with the metrics it lacks derived from its per-user ranks."""
    res = json.loads((Path(run_dir) / "results.json").read_text())
    res.update(_with_derived_metrics(run_dir, res))
    return res


def _median(values: list[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    return float(np.median(np.asarray(values, dtype=np.float64)))


def _seeds_text(seeds: list[Any]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {','.join(str(s) for s in seeds)}"


def _mask_text(mask: bool | None) -> str:
    """``true``, ``false`` or ``unknown`` (results.json written before ``mask_history`` was recorded)."""
    return "unknown" if mask is None else str(mask).lower()


def _capped_seeds(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The seeds of a converged-quality row that the epoch cap stopped (:func:`_capped`): early stopping never
    judged them converged, so their quality may be below what the method reaches (a cost-only run's epochs
    are capped on purpose and count as none)."""
    if row["cost_only"]:
        return []
    return [p for p in row["per_seed"] if _capped(p)]


def _validations_after(best: int, epochs: int, every: int) -> int:
    """How many validations the trainer ran after epoch ``best`` up to ``epochs``: every ``every`` epochs and
    after the last one (:mod:`crossan.trainer`). The last epoch, when not a multiple of ``every``, counts only
    when it comes after ``best``: a best epoch at the cap has none after it, whatever ``every``."""
    return epochs // every - best // every + (1 if epochs % every and best < epochs else 0)


def _capped(seed: dict[str, Any]) -> bool:
    """Whether the epoch cap, not early stopping, ended a seed's training: it reached ``train.epochs`` with
    fewer than ``train.patience`` validations after its best one (the trainer stops on whichever comes
    first), so it was not shown to have stopped improving. A best epoch at the cap is the plainest case; one
    a few epochs before it is another (the ablation suite's shared-adapters, seed 2, at best epoch 9 of 12
    with patience 4, reached epoch 15 with room: docs/results.md §9g). Not for a run of 0 epochs (it tests its
    initial weights); unknown settings (a config.yaml that does not say) fall back to a best epoch at the
    cap, and a missing ``eval_every`` to 1."""
    epochs, best = seed["epochs_allowed"], seed["best_epoch"]
    if not epochs:
        return False
    patience, every = seed.get("patience"), seed.get("eval_every") or 1
    if not patience:
        return best == epochs
    return _validations_after(best, epochs, every) < patience


def _flags(row: dict[str, Any]) -> list[str]:
    """What a reader must know about a finished row: seeds that differ in ``eval.mask_history`` (their
    interval mixes two ranking rules) or a run without the mask, seeds that the epoch cap stopped before their
    patience ran out (``capped``: not shown converged), seeds written by another crossan
    version, end-to-end seeds whose training steps decoded media (their time includes it)."""
    flags = []
    seeds = row["per_seed"]
    masks = list(dict.fromkeys(p["mask_history"] for p in seeds))  # in seed order
    if len(masks) > 1:
        by_mask = {m: _seeds_text([p["seed"] for p in seeds if p["mask_history"] == m]) for m in masks}
        flags.append("mask_history differs between seeds: "
                     + "; ".join(f"{_mask_text(m)} ({s})" for m, s in by_mask.items()))
    elif masks == [False]:
        flags.append("history not masked (eval.mask_history=false)")
    by_cache: dict[str, list[Any]] = {}  # a `crossan cache` update between two seeds' trainings: two inputs
    for p in seeds:
        by_cache.setdefault(json.dumps(p.get("cache_states") or {}, sort_keys=True), []).append(p["seed"])
    if len(by_cache) > 1:
        flags.append("seeds read different caches: " + " / ".join(map(_seeds_text, by_cache.values())))
    capped = _capped_seeds(row)
    if capped:
        epochs = "/".join(dict.fromkeys(str(p["epochs_allowed"]) for p in capped))
        patience = "/".join(dict.fromkeys(str(p.get("patience")) for p in capped))
        before = f" before train.patience={patience} ran out" if all(p.get("patience") for p in capped) else ""
        best = ", ".join(str(p["best_epoch"]) for p in capped)
        flags.append(f"capped: stopped by train.epochs={epochs}{before} ({_seeds_text([p['seed'] for p in capped])}; "
                     f"best epoch{'s' if len(capped) > 1 else ''} {best})")
    one_step = [p for p in seeds if p.get("one_step")]
    if one_step:
        flags.append(f"timed from one step ({_seeds_text([p['seed'] for p in one_step])}: "
                     "train.max_steps_per_epoch=1)")
    decoded = [p for p in seeds if any(p.get("decoded_in_training_steps", {}).values())]
    if decoded:
        per_mod: dict[str, int] = {}
        for p in decoded:
            for m, n in p["decoded_in_training_steps"].items():
                per_mod[m] = per_mod.get(m, 0) + n
        flags.append(f"media decoded in timed steps ({_seeds_text([p['seed'] for p in decoded])}: "
                     + ", ".join(f"{m} {n:,}" for m, n in per_mod.items() if n) + " item decodings)")
    other = [p for p in seeds if p["crossan_version"] != crossan.__version__]
    if other:
        versions = "/".join(dict.fromkeys(str(p["crossan_version"] or "unknown") for p in other))
        flags.append(f"written by crossan {versions} ({_seeds_text([p['seed'] for p in other])}; "
                     f"this is {crossan.__version__})")
    mixed = [p for p in seeds if p not in other and len(p.get("trained_by") or []) > 1]
    if mixed:  # resumed by this crossan from epochs another one trained
        versions = "/".join(dict.fromkeys(v for p in mixed for v in p["trained_by"][:-1]))
        flags.append(f"resumed from epochs trained by crossan {versions} "
                     f"({_seeds_text([p['seed'] for p in mixed])}; this is {crossan.__version__})")
    return flags


def _cost_sources(recs: list[dict[str, Any]]) -> tuple[list[Any], str]:
    """The seeds whose cost the row shows: every finished seed whose record says it trained with nothing else
    of the suite running (``alone``); ([], why) when there is none."""
    alone = [r["seed"] for r in recs if r["status"] == "ok" and r.get("alone") is True]
    if alone:
        return alone, ""
    shared = [r["seed"] for r in recs if r["status"] == "ok" and r.get("alone") is False]
    unknown = [r["seed"] for r in recs if r["status"] == "ok" and r.get("alone") is None]
    parts = ([f"{_seeds_text(shared)} trained beside other runs of the suite"] if shared else []) + (
        [f"{_seeds_text(unknown)} not recorded as trained alone (trained before the suite recorded it)"]
        if unknown else [])
    return [], "cost blank: no finished seed trained with nothing else of the suite running (" + "; ".join(
        parts or [f"{_seeds_text([r['seed'] for r in recs])} failed"]) + ")"


def collect_run(run: Any, recs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row for ``run`` from its (run, seed) records (see ``crossan.reports.suite``: seed, dir,
    status, error, log, wall_s, cpu_s, ``alone``: whether it trained with nothing else of the suite
    running, None when that is not known, and ``repeat``: K > 1 for the K-th training of a seed, whose figures
    count towards the cost columns only)."""
    repeats = [r for r in recs if r.get("repeat", 1) > 1]
    recs = [r for r in recs if r.get("repeat", 1) == 1]
    cpu = [r.get("cpu_s") for r in recs + repeats]
    row: dict[str, Any] = {"name": run.name, "method": run.method, "modalities": "+".join(run.modalities),
                           "cost_only": run.cost_only,  # wall and CPU time: every training, cost repeats too
                           "wall_s": round(sum(r.get("wall_s", 0.0) for r in recs + repeats), 1),
                           # failed trainings included: a row whose seeds all failed spent it too
                           "cpu_s": (round(sum(c for c in cpu if c is not None), 1)
                                     if any(c is not None for c in cpu) else math.nan)}
    reused = [str(r["seed"]) for r in recs if r.get("reused")]
    if reused:
        row["reused_seeds"] = ",".join(reused)
    by_error: dict[str, list[str]] = {}
    for r in recs:
        if r["status"] != "ok":
            by_error.setdefault(r["error"], []).append(str(r["seed"]))
    errors = [f"seed{'s' if len(s) > 1 else ''} {','.join(s)}: {e}" for e, s in by_error.items()]
    errors += [f"cost repeat {r['repeat']} of seed {r['seed']}: {r['error']}"
               for r in repeats if r["status"] != "ok"]
    row["failed_seeds"] = [r["seed"] for r in recs if r["status"] != "ok"]
    per_seed = []
    for r in recs:
        if r["status"] != "ok":
            continue
        per_seed.append({"seed": r["seed"], "dir": r["dir"], "results": _run_results(r["dir"])})
    row["per_seed"] = [{"seed": p["seed"], "dir": p["dir"], "best_epoch": p["results"]["best_epoch"],
                        **_stopping_settings(p["dir"]),
                        "one_step": _timed_from_one_step(p["dir"]),
                        "test": p["results"]["test"], "valid": p["results"]["valid"],
                        "time_per_epoch_s": p["results"]["train_time_per_epoch_s"],
                        "peak_memory_bytes": p["results"]["peak_memory_bytes"],
                        "split_fingerprint": p["results"].get("split_fingerprint"),
                        "mask_history": p["results"].get("mask_history"),  # None: an older results.json
                        "decoded_in_training_steps": {
                            m: int(v.get("decoded_in_training_steps", 0))
                            for m, v in ((p["results"].get("tower") or {}).get("inputs") or {}).items()},
                        "crossan_version": p["results"].get("crossan_version"),
                        "trained_by": p["results"].get("trained_by_versions"),
                        "cache_states": p["results"].get("cache_states")} for p in per_seed]
    if errors:
        row["error"] = "; ".join(errors)
        # the first failed (run, seed) that wrote a log: one refused before training (its folder holds another
        # configuration, its cache could not be built) has none
        row["log"] = next((r["log"] for r in recs + repeats if r["status"] != "ok" and r.get("log")
                           and Path(r["log"]).is_file()), "")
    if not per_seed:
        row["status"] = "failed"
        return row
    row["status"] = "ok"
    first = per_seed[0]["results"]
    row["modalities"] = "+".join(first.get("modalities", run.modalities))
    row["seeds"] = ",".join(str(p["seed"]) for p in per_seed)
    row["n_seeds"] = len(per_seed)
    row["best_epochs"] = "/".join(str(p["results"]["best_epoch"]) for p in per_seed)
    row["mask_history"] = "/".join(dict.fromkeys(_mask_text(p["mask_history"]) for p in row["per_seed"]))
    row["crossan_version"] = "/".join(dict.fromkeys(str(p["crossan_version"] or "unknown")
                                                    for p in row["per_seed"]))
    row["flags"] = _flags(row)
    finished = _seeds_text([p["seed"] for p in per_seed])
    failed = ([f"{_seeds_text(row['failed_seeds'])} (the mean and interval cover {finished} only)"]
              if row["failed_seeds"] else [])
    failed += [f"cost repeat {r['repeat']} of seed {r['seed']} (not in the cost median)"
               for r in repeats if r["status"] != "ok"]
    if failed:  # a failure is shown in the row itself, not only under Failed runs
        row["flags"].insert(0, f"failed: {'; '.join(failed)}; see Failed runs")
    if not run.cost_only:  # a cost-only run's quality is not a result: its columns stay blank
        for split in ("valid", "test"):
            for k in METRICS:
                vals = [p["results"][split][k] for p in per_seed if k in p["results"][split]]
                if vals:
                    row[f"{split}_{k}_mean"], row[f"{split}_{k}_ci95"] = t_interval(vals)
    # cost: the seeds that trained with nothing else of the suite running (others may have shared the
    # machine); the median over them, since one measurement of time or CPU memory can be well off (§6g)
    cost_seeds, why = _cost_sources(recs)
    again = [(r, _run_results(r["dir"])) for r in repeats if r["status"] == "ok" and r.get("alone") is True]
    for r, res in again:  # the same seed trained again must rank the same (the trainer is deterministic)
        original = next((p["results"] for p in per_seed if p["seed"] == r["seed"]), None)
        if original is not None and res.get("test") != original["test"]:
            row["flags"].append(f"repeat ranks differently: cost repeat {r['repeat']} of seed {r['seed']} gave "
                                f"test NDCG@10 {res['test'].get('NDCG@10', math.nan):.4f} against "
                                f"{original['test'].get('NDCG@10', math.nan):.4f}")
    if cost_seeds:
        costs = [next(p["results"] for p in per_seed if p["seed"] == s) for s in cost_seeds]
        costs += [res for _, res in again]
        if any(c.get("train_time_per_epoch_s") is None for c in costs):  # train.epochs=0: nothing was timed
            cost_seeds, why = [], "no epoch trained (train.epochs=0): no time per epoch, memory or TPME"
    if cost_seeds:
        cost = costs[0]
        row["cost_seed"] = cost_seeds[0]
        row["cost_seeds"] = ",".join(map(str, cost_seeds))
        row["cost_measurements"] = len(costs)
        row["time_per_epoch_s"] = _median([c["train_time_per_epoch_s"] for c in costs])
        row["peak_memory_bytes"] = int(_median([c["peak_memory_bytes"] for c in costs]))
        row["peak_memory_kind"] = cost.get("peak_memory_kind", "")
        # the process's own peak resident memory (METHOD.md §10's CPU figure; the table shows it above idle)
        rss = [c["peak_rss_bytes"] for c in costs if c.get("peak_rss_bytes")]
        row["peak_rss_bytes"] = int(_median(rss)) if rss else math.nan
        row["eval_time_s"] = _median([c.get("eval_time_s", math.nan) for c in costs])
        row["device"] = cost["device"]
        if len(costs) > 1:  # the spread behind the medians, for results.csv
            times = [c["train_time_per_epoch_s"] for c in costs]
            mems = [c["peak_memory_bytes"] for c in costs]
            row["time_per_epoch_range"] = f"{min(times):.3f}-{max(times):.3f}"
            row["peak_memory_range"] = f"{min(mems)}-{max(mems)}"
    else:  # no clean cost measurement
        row["time_per_epoch_s"] = row["peak_memory_bytes"] = row["peak_rss_bytes"] = math.nan
        row["flags"].append(why)
    row["trainable_params"], row["total_params"] = first["trainable_params"], first["total_params"]
    dtypes = {str(p["results"].get("compute_dtype", "?")) for p in per_seed}  # "?": runs before it was recorded
    row["compute_dtype"] = "/".join(sorted(dtypes))
    routers = [(p["results"].get("tower") or {}).get("router_weight") for p in per_seed]
    routers = [r for r in routers if r]
    if routers:
        row["router_weight"] = {m: float(np.mean([r[m] for r in routers])) for m in routers[0]}
    return row


def costed_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished rows with cost columns (a seed that trained alone)."""
    return [r for r in rows
            if r["status"] == "ok" and math.isfinite(float(r.get("time_per_epoch_s", math.nan)))]


def _cost_setting(r: dict[str, Any]) -> tuple[str, str]:
    """(device, kind of peak memory) of a costed row; on a CPU the device names the torch thread count
    (``cpu (…, torch threads 2)``), so this is one key per device, thread count and memory kind."""
    return str(r.get("device", "?")), str(r.get("peak_memory_kind") or "?")


def cost_settings(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """The costed rows' names per :func:`_cost_setting`."""
    out: dict[tuple[str, str], list[str]] = {}
    for r in costed_rows(rows):
        out.setdefault(_cost_setting(r), []).append(str(r.get("name", "")))
    return out


def flag_cost_settings(rows: list[dict[str, Any]]) -> bool:
    """Flag every costed row when the rows' cost was measured under different settings (device, torch
    threads or kind of peak memory: their time and memory do not compare). Returns whether they all agree."""
    if len(cost_settings(rows)) <= 1:
        return True
    for r in costed_rows(rows):
        device, kind = _cost_setting(r)
        r.setdefault("flags", []).append(f"cost settings differ between rows: this row {device}, peak "
                                         f"memory {kind}; time and memory do not compare across these rows, "
                                         "TPME not computed")
    return False


def add_tpme(rows: list[dict[str, Any]]) -> None:
    """TPME (IISAN): min–max normalise time, parameters and memory over the compared runs;
    TPME = 0.45·t' + 0.10·p' + 0.45·m' (lower is better). Not computed (left blank) when the rows' cost was
    measured under different settings (:func:`cost_settings`): min–max over such figures means nothing."""
    ok = costed_rows(rows)
    if not ok or len(cost_settings(rows)) > 1:
        return

    def norm(key: str) -> list[float]:
        vals = [float(r[key]) for r in ok]
        lo, hi = min(vals), max(vals)
        return [0.0 if hi == lo else (v - lo) / (hi - lo) for v in vals]

    for r, t, p, m in zip(ok, norm("time_per_epoch_s"), norm("trainable_params"), norm("peak_memory_bytes")):
        r["TPME"] = 0.45 * t + 0.10 * p + 0.45 * m


# --------------------------------------------------------------------------------------------- paired test
def _per_user(run_dir: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-user test NDCG@10, the users and the split fingerprint of one run folder; a ValueError naming the
    file when it cannot be read (truncated, damaged, a key missing)."""
    path = Path(run_dir) / "per_user.npz"
    if not path.is_file():
        try:
            named = json.loads((Path(run_dir) / "results.json").read_text()).get("per_user_file")
        except (OSError, ValueError, AttributeError):
            named = None
        why = "deleted since the run wrote it" if named else "a run of an older crossan"
        raise FileNotFoundError(f"{path}: no per-user ranks ({why}); delete {run_dir} and run the suite again to "
                                "retrain it")
    try:
        with np.load(path, allow_pickle=False) as z:
            return ndcg_at(z["test_ranks"], 10), z["users"], str(z["split_fingerprint"])
    except NPZ_ERRORS as e:
        raise ValueError(f"{path} unreadable ({type(e).__name__}: {e})") from None


def add_paired_tests(rows: list[dict[str, Any]], reference: str | None, resamples: int = BOOTSTRAP_RESAMPLES
                     ) -> None:
    """Test every converged run against ``reference`` on per-user test NDCG@10: seed s of a run is paired
    with seed s of the reference (same seed ↔ same split), only when their split fingerprints are equal and
    both ranked under the same ``eval.mask_history`` rule (otherwise the row says why it is not paired).

    The tested rows are one family: each gets its raw ``p_value``, its Holm–Bonferroni adjusted ``p_holm``
    over the ``holm_tests`` comparisons made, and ``significant``: ``p_holm`` < :data:`ALPHA` on at least
    :data:`MIN_CLAIM_SEEDS` paired seeds and :data:`MIN_CLAIM_USERS` paired users, none of the seeds capped
    (the row's or the reference's: :func:`_capped`; :func:`may_claim`)."""
    by_name = {r["name"]: r for r in rows}
    ref = by_name.get(reference) if reference else None
    if ref is None or ref["status"] != "ok":
        return
    ref["p_value_note"] = "reference"
    ref_seeds = {p["seed"]: p for p in ref["per_seed"]}
    if ref.get("failed_seeds"):
        ref.setdefault("flags", []).append(
            f"reference {_seeds_text(ref['failed_seeds'])} failed: the other runs are paired on its finished "
            f"{_seeds_text(list(ref_seeds))} only")
    tested = []
    capped_in_test: dict[str, tuple[bool, bool]] = {}  # row → (a paired seed of its own, of the reference) capped
    for row in rows:
        if row is ref or row["status"] != "ok" or row["cost_only"]:
            continue
        pairs = [(p, ref_seeds[p["seed"]]) for p in row["per_seed"] if p["seed"] in ref_seeds]
        if not pairs:
            row["p_value_note"] = f"no seed in common with {reference}"
            continue
        a, b, users = [], [], []
        notes: list[tuple[Any, str]] = []  # (seed, why it cannot be paired)
        for p, q in pairs:
            mask, ref_mask = p.get("mask_history"), q.get("mask_history")
            if mask != ref_mask:  # one rule can make a repeated target a hit, the other never: not comparable
                notes.append((p["seed"], f"eval.mask_history differs ({_mask_text(mask)} vs "
                                         f"{_mask_text(ref_mask)} for {reference}): ranked under another "
                                         "evaluation rule"))
                continue
            try:
                xa, ua, fa = _per_user(p["dir"])
                xb, ub, fb = _per_user(q["dir"])
            except (FileNotFoundError, KeyError, ValueError) as e:
                notes.append((p["seed"], str(e)))
                continue
            if fa != fb or p["split_fingerprint"] != q["split_fingerprint"]:
                notes.append((p["seed"], f"split fingerprints differ ({fa} vs {fb}): not the same test users, "
                                         "or not in the same order"))
                continue
            if not np.array_equal(ua, ub):  # one fingerprint, yet per_user.npz lists other users (edited files)
                which = "other users" if set(ua) != set(ub) else "the users in another order"
                notes.append((p["seed"], f"per_user.npz lists {which} than the reference's, under the same "
                                         "split fingerprint"))
                continue
            a.append(xa)
            b.append(xb)
            users.append(ua)
        if notes:  # refuse to pair rather than test on a subset silently
            by_reason = {why: [s for s, w in notes if w == why] for _, why in notes}
            row["p_value_note"] = "not paired: " + "; ".join(f"{_seeds_text(s)}: {why}"
                                                             for why, s in by_reason.items())
            continue
        same_users = all(np.array_equal(users[0], u) for u in users[1:])
        res = paired_bootstrap(a, b, same_users=same_users, resamples=resamples)
        row.update({"diff_NDCG@10": res.diff, "diff_ci95_low": res.ci95[0], "diff_ci95_high": res.ci95[1],
                    "p_value": res.p_value, "paired_seeds": res.seeds, "paired_users": res.users})
        if len(pairs) < len(row["per_seed"]):  # Δ and p cover fewer seeds than the row's mean ± interval
            paired = [p["seed"] for p, _ in pairs]
            unpaired = [p["seed"] for p in row["per_seed"] if p["seed"] not in ref_seeds]
            row.setdefault("flags", []).append(
                f"paired on {_seeds_text(paired)} of {','.join(str(p['seed']) for p in row['per_seed'])} "
                f"({reference} has no finished {_seeds_text(unpaired)})")
        tested.append(row)
        capped_in_test[row["name"]] = (any(_capped(p) for p, _ in pairs), any(_capped(q) for _, q in pairs))
    for row, p_holm in zip(tested, holm_adjust([r["p_value"] for r in tested])):
        # METHOD.md §11: a claim rests on at least MIN_CLAIM_SEEDS seeds, and on converged runs: a run (or a
        # reference) stopped by its epoch cap before its patience ran out may only look worse (or better) than
        # it is. Only the seeds the test paired count: Δ and p rest on them alone (a capped seed of the reference
        # that a row lacks, or of a row that the reference lacks, is not in its test). Either way the test
        # still counts in Holm's family.
        enough = row["paired_seeds"] >= MIN_CLAIM_SEEDS
        users = row["paired_users"] >= MIN_CLAIM_USERS
        row_capped, ref_capped = capped_in_test[row["name"]]
        claim = may_claim(row["paired_seeds"], row["paired_users"], row_capped, ref_capped)
        row.update({"p_holm": p_holm, "significant": bool(claim and p_holm < ALPHA), "holm_tests": len(tested)})
        if not enough:
            row.setdefault("flags", []).append(f"{_plural(row['paired_seeds'], 'seed')} paired: no claim")
        if not users:
            row.setdefault("flags", []).append(
                f"too few users paired ({row['paired_users']} < {MIN_CLAIM_USERS}): no claim")
        if ref_capped:
            row.setdefault("flags", []).append("reference capped: no claim")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# --------------------------------------------------------------------------------------------- outputs
COLUMNS = ["name", "method", "modalities", "status", "cost_only", "seeds",
           *[f"test_{k}_{s}" for k in METRICS for s in ("mean", "ci95")], "valid_NDCG@10_mean", "valid_NDCG@10_ci95",
           "reference", "diff_NDCG@10", "diff_ci95_low", "diff_ci95_high", "p_value", "p_holm", "holm_tests",
           "significant", "paired_seeds", "p_value_note", "best_epochs", "time_per_epoch_s", "peak_memory_bytes",
           "peak_rss_bytes",
           "cost_seeds", "cost_measurements",
           "time_per_epoch_range", "peak_memory_range", "trainable_params",
           "total_params", "TPME", "eval_time_s", "wall_s", "cpu_s", "peak_memory_kind", "device",
           "compute_dtype", "mask_history", "crossan_version", "encoders", "flags", "error"]


def _mib(b: float) -> str:
    return "" if isinstance(b, float) and math.isnan(b) else f"{b / 2**20:,.1f}"


def _fixed(v: Any, digits: int) -> str:
    """``v`` with ``digits`` decimals; blank when it is missing or NaN (no clean measurement)."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def p_text(p: float) -> str:
    """A p-value with 4 decimals, more where 4 would print :data:`ALPHA` for a p that is not (``0.049995``
    printed ``0.0500`` beside a ``*``)."""
    text = f"{p:.4f}"
    for digits in range(5, 10):
        if p == ALPHA or float(text) != ALPHA:
            break
        text = f"{p:.{digits}f}"
    return text


def _pm(row: dict[str, Any], key: str) -> str:
    mean, half = row.get(f"{key}_mean"), row.get(f"{key}_ci95")
    if mean is None:
        return ""
    return f"{mean:.4f}" if half is None or math.isnan(half) else f"{mean:.4f} ± {half:.4f}"


def markdown_table(rows: list[dict[str, Any]], reference: str | None = None) -> str:
    """The report's main table: headline quality (@10), the paired test (raw and Holm-adjusted p; ``*`` on
    the adjusted one below :data:`ALPHA`), cost, TPME and each row's flags."""
    ref = f" vs {reference}" if reference else ""
    head = (f"| run | method | modalities | seeds | test HR@10 | test NDCG@10 | Δ NDCG@10{ref} [95% CI] | p | "
            "p (Holm) | time/epoch (s) | peak mem (MiB) | trainable params | total params | TPME | notes |")
    lines = [head, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['method']} | {r['modalities']} | | FAILED: {r.get('error', '')} "
                         + "| " * 10 + "|")
            continue
        if r["cost_only"]:
            quality = ["cost only", "cost only", "", "", ""]
        else:
            if "p_value" in r:
                star = " \\*" if r["significant"] else ""
                delta = f"{r['diff_NDCG@10']:+.4f} [{r['diff_ci95_low']:+.4f}, {r['diff_ci95_high']:+.4f}]"
                p, p_holm = p_text(r["p_value"]), p_text(r["p_holm"]) + star
            else:
                delta, p, p_holm = r.get("p_value_note", ""), "", ""
            quality = [_pm(r, "test_HR@10"), _pm(r, "test_NDCG@10"), delta, p, p_holm]
        lines.append(f"| {r['name']} | {r['method']} | {r['modalities']} | {r['seeds']} | " + " | ".join(quality)
                     + f" | {_fixed(r['time_per_epoch_s'], 2)} | {_mib(r['peak_memory_bytes'])} "
                     f"| {r['trainable_params']:,} | {r['total_params']:,} | {_fixed(r.get('TPME'), 3)} "
                     f"| {'; '.join(r.get('flags', []))} |")
    return "\n".join(lines)


def metrics_table(rows: list[dict[str, Any]]) -> str:
    """Every test metric of :data:`METRICS` (mean ± 95% half-width over seeds) of the rows with quality."""
    lines = ["| run | " + " | ".join(f"test {k}" for k in METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for r in rows:
        if r["status"] == "ok" and not r["cost_only"]:
            lines.append(f"| {r['name']} | " + " | ".join(_pm(r, f"test_{k}") for k in METRICS) + " |")
    return "\n".join(lines)


def _num(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.1f}"


def _csv_value(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return ""
    if isinstance(v, list):
        return "; ".join(map(str, v))
    return v


def write_outputs(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path,
                  resamples: int = BOOTSTRAP_RESAMPLES) -> None:
    """Intervals are in the rows already; flag cost measured under different settings, add TPME and the
    paired tests, then write every output file."""
    flag_cost_settings(rows)
    add_tpme(rows)
    add_paired_tests(rows, meta.get("reference"), resamples)
    for r in rows:
        r["reference"] = meta.get("reference") or ""
    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: _csv_value(r.get(k, "")) for k in COLUMNS})

    atomic_write(out / "results.csv", write_csv)  # a failed write names the file and leaves no temporary
    atomic_write_json(out / "results.json", json_safe({"meta": meta, "rows": rows}))  # no interval: null, not NaN
    table = markdown_table(rows, meta.get("reference"))
    atomic_write_text(out / "results.md", table + "\n")
    from crossan.reports.plots import plot_all

    figures = plot_all(rows, out)
    atomic_write_text(out / "report.md", render_report(rows, meta, table, figures, resamples))
    print("\n" + table + "\n", flush=True)
    print(f"[suite] wrote {out / 'results.csv'}, {out / 'report.md'}", flush=True)


FLAG_NOTES = {
    "failed": "**failed**: some trainings of the run failed (their errors are under *Failed runs*): its mean "
              "and interval cover its finished seeds only, and its cost median lacks a failed cost repeat",
    **{f"{n} seed": f"**{n} seed{'s' if n > 1 else ''} paired: no claim**: Δ and p rest on fewer than "
                   f"{MIN_CLAIM_SEEDS} seeds paired with the reference, so they show the variation between test "
                   "users but not between trainings; METHOD.md §11 claims a difference on at least "
                   f"{MIN_CLAIM_SEEDS} seeds, so the row gets no \\* whatever its p (it still counts among "
                   "Holm's tests)" for n in range(1, MIN_CLAIM_SEEDS)},
    "too few users": f"**too few users paired: no claim**: Δ and p rest on fewer than {MIN_CLAIM_USERS} test "
                     "users, where the paired bootstrap's p is too small (it claims more often than 5% of the "
                     "time when there is no difference), so the row gets no \\* whatever its p (it still counts "
                     "among Holm's tests)",
    "capped": "**capped**: the run reached the last epoch `train.epochs` allowed with fewer than "
              "`train.patience` validations after its best one, so the cap, not early stopping, ended it: it "
              "was not shown to have stopped improving, and its quality may be below what it would reach. It "
              "stays in the table and among Holm's tests, but when a capped seed is among those paired with the "
              "reference, its difference from the reference is not claimed (no \\*): METHOD.md §11 compares "
              "converged runs",
    "reference capped": "**reference capped: no claim**: a reference seed paired with the row was "
                        "stopped by `train.epochs` before its `train.patience` ran out (not shown converged), "
                        "so the row's difference from it is not claimed (no \\*); the test still counts among "
                        "Holm's",
    "history not masked": "**history not masked**: ranked with `eval.mask_history=false` (a target that "
                          "repeats a history item can be a hit), so its quality is not comparable with "
                          "masked runs and it is not paired with a masked reference",
    "seeds read different caches": "**seeds read different caches**: the layer-state cache was updated (its "
                                   "items' titles or media changed) between these seeds' trainings, so the "
                                   "interval mixes two inputs (`cache_states` in each results.json); rerun the "
                                   "older seeds (delete their folders under `runs/`) for one figure",
    "mask_history differs": "**mask_history differs between seeds**: the interval mixes two ranking rules "
                            "(seeds with another rule than the reference's are not paired)",
    "written by crossan": "**written by crossan X**: a finished run reused from a folder written by another "
                          "crossan version (same configuration); its figures are that version's",
    "resumed from epochs": "**resumed from epochs trained by crossan X**: this crossan resumed the run from a "
                           "checkpoint of another version (`trained_by_versions` in its results.json); its "
                           "weights carry both versions' training",
    "no epoch trained": "**no epoch trained**: `train.epochs=0` tests the initial weights; a run that trained "
                        "no epoch has no training cost, so its cost columns are blank and it is left out of TPME",
    "timed from one step": "**timed from one step**: with `train.max_steps_per_epoch=1` an epoch has no step "
                           "after the first to extrapolate from, so its time is that first step's (warm-up, "
                           "compilation and tables built on first use included) times the epoch's step count; "
                           "cap at 2 steps or more for a cost figure",
    "media decoded in timed steps": "**media decoded in timed steps**: an end-to-end run's preprocessed inputs "
                                    "did not all fit in `<method>.input_memory_gb` (or were not preprocessed "
                                    "up front), so some items' media were decoded inside its training steps "
                                    "and its time per epoch includes that decoding (counts summed over the "
                                    "seeds named)",
    "paired on": "**paired on seeds … of …**: the reference has no finished run for some of this row's "
                 "seeds, so Δ and p cover only the seeds named, while the mean ± interval cover all of the "
                 "row's seeds",
    "reference seed": "**reference seeds … failed**: the reference's mean covers its finished seeds only, "
                      "and every other run is paired on those seeds only",
    "repeat ranks differently": "**repeat ranks differently**: the run's first seed, trained again for its "
                                "cost (`cost_repeats`), gave other test metrics than the first time: the run "
                                "is not deterministic on this machine, so its seeds' spread includes that",
    "cost blank": "**cost blank**: no finished seed of the run is recorded as trained with nothing else of "
                  "the suite running, so its time and memory are not shown (nor its TPME)",
    "cost settings differ": "**cost settings differ**: the rows' cost was measured on different devices, "
                            "torch thread counts or kinds of peak memory, so time and memory do not compare "
                            "across them; TPME is not computed",
}
"""What each kind of row flag (:func:`_flags`, the table's notes column) means, keyed by how it starts."""


def holm_sentence(rows: list[dict[str, Any]]) -> str:
    """How many tests the report made and how the significance mark is decided (Holm–Bonferroni)."""
    m = next((r["holm_tests"] for r in rows if "holm_tests" in r), 0)
    if not m:
        return "No run was tested against the reference."
    return (f"{m} run{'s were' if m > 1 else ' was'} tested against the reference; p is each test's raw "
            f"two-sided p-value and p (Holm) the Holm–Bonferroni adjusted one over these {m} tests, which "
            f"keeps the chance of any false \\* at most {ALPHA}. \\* marks a difference significant at "
            f"{ALPHA} after the adjustment, on at least {MIN_CLAIM_SEEDS} seeds and {MIN_CLAIM_USERS} test "
            "users paired with the reference, when neither the run nor the reference is capped on a paired "
            "seed (stopped by `train.epochs` before `train.patience` ran out).")


def compute_dtypes(rows: list[dict[str, Any]]) -> str:
    """The compute dtypes the runs of ``rows`` trained in (``precision`` resolved on the machine; results.json's
    ``compute_dtype``), e.g. ``bfloat16`` or ``float32 (ID), bfloat16 (the rest)``."""
    by_dtype: dict[str, list[str]] = {}
    for r in rows:
        by_dtype.setdefault(r.get("compute_dtype", "?"), []).append(r["name"])
    if len(by_dtype) <= 1:
        return next(iter(by_dtype), "?")
    return ", ".join(f"{d} ({', '.join(names)})" for d, names in by_dtype.items())


MEMORY_KINDS = {
    "cuda_max_memory_allocated": "`torch.cuda.max_memory_allocated`",
    "cpu_peak_rss_above_idle": "the run's peak resident memory above its idle baseline (each run in its own "
                               "process)",
}
"""What each ``peak_memory_kind`` of results.json measures."""


def memory_sentence(rows: list[dict[str, Any]]) -> str:
    """``peak memory is …`` for the costed ``rows``, per kind of peak memory (naming the rows when they
    differ)."""
    by_kind: dict[str, list[str]] = {}
    for r in costed_rows(rows):
        by_kind.setdefault(str(r.get("peak_memory_kind") or ""), []).append(r["name"])
    if not by_kind:
        return "no row has a peak memory measured alone"
    text = {k: MEMORY_KINDS.get(k, f"of an unrecorded kind ({k or '?'})") for k in by_kind}
    if len(by_kind) == 1:
        out = "peak memory is " + next(iter(text.values()))
    else:
        out = "peak memory is " + "; ".join(f"{text[k]} for {', '.join(names)}" for k, names in by_kind.items())
    return out + absolute_rss_sentence(rows)


def absolute_rss_sentence(rows: list[dict[str, Any]]) -> str:
    """METHOD.md §10 names a CPU run's peak resident memory itself; the table shows it above an idle
    baseline (the same libraries and data in every process), so the report gives the absolute figures too."""
    cpu = [r for r in costed_rows(rows) if r.get("peak_memory_kind") == "cpu_peak_rss_above_idle"
           and math.isfinite(float(r.get("peak_rss_bytes", math.nan)))]
    if not cpu:
        return ""
    lo, hi = min(cpu, key=lambda r: r["peak_rss_bytes"]), max(cpu, key=lambda r: r["peak_rss_bytes"])
    span = (f"{_mib(lo['peak_rss_bytes'])} MiB" if lo is hi else
            f"from {_mib(lo['peak_rss_bytes'])} MiB ({lo['name']}) to {_mib(hi['peak_rss_bytes'])} MiB "
            f"({hi['name']})")
    return (" (the processes' absolute peak resident memory, Python, libraries and data included, which is the "
            f"figure METHOD.md §10 names, ranges {span}: column `peak_rss_bytes` of results.csv)")


def router_table(rows: list[dict[str, Any]]) -> list[str]:
    """The report's lines of MOMEF router weights: one column per modality any run routes over (in the order
    they first appear), blank where a run has not that modality; none when no run has a router."""
    routers = [r for r in rows if r.get("router_weight")]
    if not routers:
        return []
    mods = list(dict.fromkeys(m for r in routers for m in r["router_weight"]))
    lines = ["## MOMEF router weight per modality (mean over items and seeds)", "",
             "| run | " + " | ".join(mods) + " |", "|---|" + "---:|" * len(mods)]
    for r in routers:
        w = r["router_weight"]
        lines.append(f"| {r['name']} | " + " | ".join(f"{w[m]:.3f}" if m in w else "" for m in mods) + " |")
    return [*lines, ""]


def encoder_lines(rows: list[dict[str, Any]], preset: str) -> list[str]:
    """The report's statement of which encoders each row's numbers come from and whether they were pretrained
    (each row's ``encoders``: the suite's preset with the suite's and the run's encoder overrides)."""
    content = [r for r in rows if r.get("encoders") and not str(r["encoders"]).startswith("none")]
    if not content:
        return []
    said = {str(r["encoders"]) for r in content}
    if len(said) == 1:
        return [f"> Encoders (`{preset}` preset and the suite's encoder settings): {said.pop()}.", ""]
    return ["> Encoders differ between runs (the suite's and the runs' encoder settings):", ">",
            *[f"> - {r['name']}: {r['encoders']}" for r in content], ""]


def render_report(rows: list[dict[str, Any]], meta: dict[str, Any], table: str, figures: list[str],
                  resamples: int = BOOTSTRAP_RESAMPLES) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    seeds = meta.get("seeds", [0])
    digest = f" (content digest `{meta['data_digest']}`)" if meta.get("data_digest") else ""
    lines = [f"# crossan report: {meta['suite']}", "", meta.get("description", "").strip(), "",
             f"- data: `{meta['data']}`{digest}",
             f"- encoder preset: `{meta['preset']}`",
             *[f"- plugin method `{name}`: module `{src['module']}`, file `{src['file']}` (SHA-256 "
               f"`{src['sha256'][:12]}…`)" for name, src in (meta.get("plugins") or {}).items()],
             f"- seeds: {', '.join(map(str, seeds))} (cost-only runs: the first seed only)",
             f"- machine: {meta['machine']}; training compute dtype: {compute_dtypes(ok)}",
             f"- date: {meta['date']}",
             f"- data {meta.get('data_s', 0)} s; layer-state cache {meta['cache_build_s']} s (once, shared by the "
             f"cached methods); whole suite {meta.get('total_s', '?')} s of wall time", ""]
    lines += encoder_lines(rows, meta["preset"])
    lines += ["## Results (test split, best validation epoch)", "", table, ""]
    lines += ["Quality: mean ± half-width of the 95% t-interval over the seeds each run trained under (no interval "
              "from one seed); every metric (K = 5, 10, 20 and MRR) is under *All test metrics* below.", ""]
    if meta.get("reference"):
        lines += [f"Δ NDCG@10 and p: paired bootstrap of per-user test NDCG@10 against **{meta['reference']}** "
                  f"({resamples:,} resamples of the test users, seeded, so a p near 0.05 is known to about "
                  f"±{1.96 * (ALPHA * (1 - ALPHA) / resamples) ** 0.5:.4f} (95%); seed s paired with the "
                  "reference's seed s, "
                  "only when the split fingerprints match and both ranked under the same "
                  "`eval.mask_history`; a user's difference is averaged over the seeds first; Δ's 95% interval is the "
                  "one the test inverts, so it holds 0 exactly when p ≥ 0.05). "
                  + holm_sentence(rows) + " The test is over users for the seeds run; the spread between seeds is what the "
                  "intervals show.", ""]
    flagged = [r for r in ok if r.get("flags")]
    if flagged:
        lines += ["Notes: " + "; ".join(FLAG_NOTES[k] for k in FLAG_NOTES
                                       if any(f.startswith(k) for r in flagged for f in r["flags"])), ""]
    if any(r.get("cost_only") for r in ok):
        cpu = any(r.get("cost_only") and r.get("peak_memory_kind") == "cpu_peak_rss_above_idle" for r in ok)
        lines += ["**cost only**: epochs capped by `train.max_steps_per_epoch` (time per epoch extrapolated from the "
                  "steps run), so the quality is not converged: it is not reported and these runs are left off the "
                  "quality plots; their own `results.json` keeps the capped figures."
                  + (" Their peak memory covers the capped steps only: on a CPU, resident memory grows as a run "
                     "meets new batch shapes (in bf16, oneDNN keeps a prepared kernel per shape), so full epochs "
                     "of the same model may hold more (docs/results.md §6i, §12s)." if cpu else ""), ""]
    repeats = int(meta.get("cost_repeats", 1))
    lines += ["Cost columns are the median over a run's finished seeds that trained with nothing else of the "
              "suite running"
              + (f" and {repeats - 1} more trainings of its first seed alone (`cost_repeats: {repeats}`)"
                 if repeats > 1 else "")
              + " (recorded by the suite; results.csv names them, `cost_seeds` and `cost_measurements`, with the "
              "spread; a row without one has blank cost columns)"
              + (f"; the other seeds trained {meta['parallel']} at a time, for their quality only"
                 if meta.get("parallel", 1) > 1 else "") + ". Time per epoch counts the training loop only; "
              + memory_sentence(ok) + ". TPME = 0.45·time' + 0.10·params' + 0.45·memory' after min–max "
              "normalisation (lower is better; only when every costed row was measured on the same device, "
              "thread count and kind of peak memory).", ""]
    lines += ["## All test metrics", "", metrics_table(rows), ""]
    for f in figures:
        lines += [f"![{Path(f).stem}]({f})", ""]
    lines += router_table(ok)
    lines += ["## Time per run", "", "Wall time (this invocation) depends on what else runs on the machine; CPU time "
              "(user + system of the run's processes, reused runs included, and the earlier attempts of a resumed "
              "run that ended or were terminated, not one killed outright, so it can span more than this "
              "invocation) much less so. Both count a run's cost repeats (`cost_repeats`).", "",
              "| run | seeds | best epochs | wall time (s) | CPU time (s) |", "|---|---|---|---:|---:|"]
    lines += [f"| {r['name']} | {r.get('seeds', '')} | {r.get('best_epochs', '')} | {r['wall_s']}"
              + (f" (seed {r['reused_seeds']}: finished earlier, reused)" if r.get("reused_seeds") else "")
              + f" | {_num(r.get('cpu_s'))} |" for r in rows]
    parts = (f"runs trained alone (every run's first seed) {meta.get('alone_s', '?')} s, the other seeds "
             f"{meta.get('parallel')} at a time {meta.get('together_s', '?')} s" if meta.get("parallel", 1) > 1
             else f"runs {meta.get('alone_s', '?')} s")
    if repeats > 1:
        parts += f", cost repeats {meta.get('repeats_s', '?')} s"
    lines += ["", f"Data {meta.get('data_s', 0)} s, cache {meta['cache_build_s']} s, {parts} (wall).", ""]
    failed = [r for r in rows if r.get("error")]
    if failed:
        lines += ["## Failed runs", ""] + [f"- {r['name']}: {r.get('error', '')} "
                                           + (f"(log: `{r['log']}`)" if r.get("log") else "(refused before training: "
                                              "no log)") for r in failed] + [""]
    return "\n".join(lines)

"""A suite's table: one row per run with the mean and 95% t-interval over seeds of every metric, the paired
bootstrap against the reference run on per-user test NDCG@10 (from each run folder's ``per_user.npz``), the
efficiency figures and TPME; written as ``results.csv``, ``results.json``, ``results.md`` and ``report.md``.

``*_ci95`` columns hold the half-width of the interval: the interval is ``mean ± ci95``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from crossan.reports.stats import BOOTSTRAP_RESAMPLES, ndcg_at, paired_bootstrap, t_interval
from crossan.utils import atomic_write_json, atomic_write_text

METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR")
ALPHA = 0.05


# --------------------------------------------------------------------------------------------- one row per run
def collect_run(run: Any, recs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row for ``run`` from its (run, seed) records (see ``crossan.reports.suite``: seed, dir, status, error, log, wall_s, cpu_s)."""
    row: dict[str, Any] = {"name": run.name, "method": run.method, "modalities": "+".join(run.modalities),
                           "cost_only": run.cost_only, "wall_s": round(sum(r.get("wall_s", 0.0) for r in recs), 1)}
    reused = [str(r["seed"]) for r in recs if r.get("reused")]
    if reused:
        row["reused_seeds"] = ",".join(reused)
    by_error: dict[str, list[str]] = {}
    for r in recs:
        if r["status"] != "ok":
            by_error.setdefault(r["error"], []).append(str(r["seed"]))
    errors = [f"seed{'s' if len(s) > 1 else ''} {','.join(s)}: {e}" for e, s in by_error.items()]
    per_seed = []
    for r in recs:
        if r["status"] != "ok":
            continue
        res = json.loads((Path(r["dir"]) / "results.json").read_text())
        per_seed.append({"seed": r["seed"], "dir": r["dir"], "results": res})
    row["per_seed"] = [{"seed": p["seed"], "dir": p["dir"], "best_epoch": p["results"]["best_epoch"],
                        "test": p["results"]["test"], "valid": p["results"]["valid"],
                        "time_per_epoch_s": p["results"]["train_time_per_epoch_s"],
                        "peak_memory_bytes": p["results"]["peak_memory_bytes"],
                        "split_fingerprint": p["results"].get("split_fingerprint")} for p in per_seed]
    if errors:
        row["error"] = "; ".join(errors)
        row["log"] = next(r["log"] for r in recs if r["status"] != "ok")
    if not per_seed:
        row["status"] = "failed"
        return row
    row["status"] = "ok"
    first = per_seed[0]["results"]
    row["modalities"] = "+".join(first.get("modalities", run.modalities))
    row["seeds"] = ",".join(str(p["seed"]) for p in per_seed)
    row["n_seeds"] = len(per_seed)
    row["best_epochs"] = "/".join(str(p["results"]["best_epoch"]) for p in per_seed)
    if not run.cost_only:  # a capped run's quality is not a result: its columns stay blank
        for split in ("valid", "test"):
            for k in METRICS:
                vals = [p["results"][split][k] for p in per_seed if k in p["results"][split]]
                if vals:
                    row[f"{split}_{k}_mean"], row[f"{split}_{k}_ci95"] = t_interval(vals)
    # cost: the first seed's run, which trained with nothing else running (later seeds may share the machine)
    cost = first if per_seed[0]["seed"] == recs[0]["seed"] else None
    if cost is not None:
        row["time_per_epoch_s"] = cost["train_time_per_epoch_s"]
        row["peak_memory_bytes"] = cost["peak_memory_bytes"]
        row["peak_memory_kind"] = cost.get("peak_memory_kind", "")
        row["eval_time_s"] = cost.get("eval_time_s", math.nan)
        row["device"] = cost["device"]
    else:  # the first seed failed: no clean cost measurement
        row["time_per_epoch_s"] = row["peak_memory_bytes"] = math.nan
    row["trainable_params"], row["total_params"] = first["trainable_params"], first["total_params"]
    cpu = [r.get("cpu_s") for r in recs]
    row["cpu_s"] = round(sum(c for c in cpu if c is not None), 1) if any(c is not None for c in cpu) else math.nan
    dtypes = {str(p["results"].get("compute_dtype", "?")) for p in per_seed}  # "?": runs before it was recorded
    row["compute_dtype"] = "/".join(sorted(dtypes))
    routers = [(p["results"].get("tower") or {}).get("router_weight") for p in per_seed]
    routers = [r for r in routers if r]
    if routers:
        row["router_weight"] = {m: float(np.mean([r[m] for r in routers])) for m in routers[0]}
    return row


def add_tpme(rows: list[dict[str, Any]]) -> None:
    """TPME (IISAN): min–max normalise time, parameters and memory over the compared runs;
    TPME = 0.45·t' + 0.10·p' + 0.45·m' (lower is better)."""
    ok = [r for r in rows if r["status"] == "ok" and math.isfinite(r["time_per_epoch_s"])]
    if not ok:
        return

    def norm(key: str) -> list[float]:
        vals = [float(r[key]) for r in ok]
        lo, hi = min(vals), max(vals)
        return [0.0 if hi == lo else (v - lo) / (hi - lo) for v in vals]

    for r, t, p, m in zip(ok, norm("time_per_epoch_s"), norm("trainable_params"), norm("peak_memory_bytes")):
        r["TPME"] = 0.45 * t + 0.10 * p + 0.45 * m


# --------------------------------------------------------------------------------------------- paired test
def _per_user(run_dir: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-user test NDCG@10, the users and the split fingerprint of one run folder."""
    path = Path(run_dir) / "per_user.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-user ranks (a run of an older crossan); retrain it with --fresh")
    with np.load(path, allow_pickle=False) as z:
        return ndcg_at(z["test_ranks"], 10), z["users"], str(z["split_fingerprint"])


def add_paired_tests(rows: list[dict[str, Any]], reference: str | None, resamples: int = BOOTSTRAP_RESAMPLES
                     ) -> None:
    """Test every converged run against ``reference`` on per-user test NDCG@10: seed s of a run is paired
    with seed s of the reference (same seed ↔ same split), only when their split fingerprints are equal."""
    by_name = {r["name"]: r for r in rows}
    ref = by_name.get(reference) if reference else None
    if ref is None or ref["status"] != "ok":
        return
    ref["p_value_note"] = "reference"
    ref_seeds = {p["seed"]: p for p in ref["per_seed"]}
    for row in rows:
        if row is ref or row["status"] != "ok" or row["cost_only"]:
            continue
        pairs = [(p, ref_seeds[p["seed"]]) for p in row["per_seed"] if p["seed"] in ref_seeds]
        if not pairs:
            row["p_value_note"] = f"no seed in common with {reference}"
            continue
        a, b, users, notes = [], [], [], []
        for p, q in pairs:
            try:
                xa, ua, fa = _per_user(p["dir"])
                xb, ub, fb = _per_user(q["dir"])
            except (FileNotFoundError, KeyError, ValueError) as e:
                notes.append(f"seed {p['seed']}: {e}")
                continue
            if fa != fb or p["split_fingerprint"] != q["split_fingerprint"] or not np.array_equal(ua, ub):
                notes.append(f"seed {p['seed']}: split fingerprints differ ({fa} vs {fb}): not the same test users")
                continue
            a.append(xa)
            b.append(xb)
            users.append(ua)
        if notes:  # refuse to pair rather than test on a subset silently
            row["p_value_note"] = "not paired: " + "; ".join(notes)
            continue
        same_users = all(np.array_equal(users[0], u) for u in users[1:])
        res = paired_bootstrap(a, b, same_users=same_users, resamples=resamples)
        row.update({"diff_NDCG@10": res.diff, "diff_ci95_low": res.ci95[0], "diff_ci95_high": res.ci95[1],
                    "p_value": res.p_value, "significant": res.p_value < ALPHA, "paired_seeds": res.seeds,
                    "paired_users": res.users})


# --------------------------------------------------------------------------------------------- outputs
COLUMNS = ["name", "method", "modalities", "status", "cost_only", "seeds",
           *[f"test_{k}_{s}" for k in METRICS for s in ("mean", "ci95")], "valid_NDCG@10_mean", "valid_NDCG@10_ci95",
           "reference", "diff_NDCG@10", "diff_ci95_low", "diff_ci95_high", "p_value", "significant", "best_epochs",
           "time_per_epoch_s", "peak_memory_bytes", "trainable_params", "total_params",
           "TPME", "eval_time_s", "wall_s", "cpu_s", "peak_memory_kind", "device", "compute_dtype", "error"]


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def _pm(row: dict[str, Any], key: str) -> str:
    mean, half = row.get(f"{key}_mean"), row.get(f"{key}_ci95")
    if mean is None:
        return ""
    return f"{mean:.4f}" if half is None or math.isnan(half) else f"{mean:.4f} ± {half:.4f}"


def markdown_table(rows: list[dict[str, Any]], reference: str | None = None) -> str:
    ref = f" vs {reference}" if reference else ""
    head = (f"| run | method | modalities | seeds | test HR@10 | test NDCG@10 | Δ NDCG@10{ref} [95% CI] | p | "
            "time/epoch (s) | peak mem (MiB) | trainable params | total params | TPME |")
    lines = [head, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['method']} | {r['modalities']} | | FAILED: {r.get('error', '')} "
                         "| | | | | | | | |")
            continue
        if r["cost_only"]:
            quality = ["cost only", "cost only", "", ""]
        else:
            if "p_value" in r:
                star = " \\*" if r["significant"] else ""
                delta = f"{r['diff_NDCG@10']:+.4f} [{r['diff_ci95_low']:+.4f}, {r['diff_ci95_high']:+.4f}]"
                p = f"{r['p_value']:.4f}{star}"
            else:
                delta, p = r.get("p_value_note", ""), ""
            quality = [_pm(r, "test_HR@10"), _pm(r, "test_NDCG@10"), delta, p]
        lines.append(f"| {r['name']} | {r['method']} | {r['modalities']} | {r['seeds']} | " + " | ".join(quality)
                     + f" | {r['time_per_epoch_s']:.2f} | {_mib(r['peak_memory_bytes'])} | {r['trainable_params']:,} "
                     f"| {r['total_params']:,} | {r.get('TPME', float('nan')):.3f} |")
    return "\n".join(lines)


def _num(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.1f}"


def _csv_value(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return ""
    return v


def write_outputs(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path,
                  resamples: int = BOOTSTRAP_RESAMPLES) -> None:
    """Intervals are in the rows already; add TPME and the paired tests, then write every output file."""
    add_tpme(rows)
    add_paired_tests(rows, meta.get("reference"), resamples)
    for r in rows:
        r["reference"] = meta.get("reference") or ""
    tmp = out / "results.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k, "")) for k in COLUMNS})
    tmp.replace(out / "results.csv")
    atomic_write_json(out / "results.json", {"meta": meta, "rows": rows})
    table = markdown_table(rows, meta.get("reference"))
    atomic_write_text(out / "results.md", table + "\n")
    from crossan.reports.plots import plot_all

    figures = plot_all(rows, out)
    atomic_write_text(out / "report.md", render_report(rows, meta, table, figures, resamples))
    print("\n" + table + "\n", flush=True)
    print(f"[suite] wrote {out / 'results.csv'}, {out / 'report.md'}", flush=True)


def compute_dtypes(rows: list[dict[str, Any]]) -> str:
    """The compute dtypes the runs of ``rows`` trained in (``precision`` resolved on the machine; results.json's
    ``compute_dtype``), e.g. ``bfloat16`` or ``float32 (ID), bfloat16 (the rest)``."""
    by_dtype: dict[str, list[str]] = {}
    for r in rows:
        by_dtype.setdefault(r.get("compute_dtype", "?"), []).append(r["name"])
    if len(by_dtype) <= 1:
        return next(iter(by_dtype), "?")
    return ", ".join(f"{d} ({', '.join(names)})" for d, names in by_dtype.items())


def render_report(rows: list[dict[str, Any]], meta: dict[str, Any], table: str, figures: list[str],
                  resamples: int = BOOTSTRAP_RESAMPLES) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    seeds = meta.get("seeds", [0])
    digest = f" (content digest `{meta['data_digest']}`)" if meta.get("data_digest") else ""
    lines = [f"# crossan report: {meta['suite']}", "", meta.get("description", "").strip(), "",
             f"- data: `{meta['data']}`{digest}",
             f"- encoder preset: `{meta['preset']}`",
             f"- seeds: {', '.join(map(str, seeds))} (cost-only runs: the first seed only)",
             f"- machine: {meta['machine']}; training compute dtype: {compute_dtypes(ok)}",
             f"- date: {meta['date']}",
             f"- data {meta.get('data_s', 0)} s; layer-state cache {meta['cache_build_s']} s (once, shared by the "
             f"cached methods); whole suite {meta.get('total_s', '?')} s of wall time", ""]
    if meta["preset"] != "paper":  # the paper preset's published checkpoints are all pretrained
        from crossan.encoders.report import pretrained_summary

        lines += [f"> Encoders (`{meta['preset']}` preset): {pretrained_summary(meta['preset'])}.", ""]
    lines += ["## Results (test split, best validation epoch)", "", table, ""]
    lines += ["Quality: mean ± half-width of the 95% t-interval over the seeds each run trained under (no interval "
              "from one seed).", ""]
    if meta.get("reference"):
        lines += [f"Δ NDCG@10 and p: paired bootstrap of per-user test NDCG@10 against **{meta['reference']}** "
                  f"({resamples:,} resamples of the test users, seeded; seed s paired with the reference's seed s, "
                  "only when the split fingerprints match; a user's difference is averaged over the seeds first). "
                  f"\\* marks a difference significant at {ALPHA} (two-sided). The test is over users for the seeds "
                  "run; the spread between seeds is what the intervals show.", ""]
    if any(r.get("cost_only") for r in ok):
        lines += ["**cost only**: epochs capped by `train.max_steps_per_epoch` (time per epoch extrapolated from the "
                  "steps run), so the quality is not converged: it is not reported and these runs are left off the "
                  "quality plots; their own `results.json` keeps the capped figures.", ""]
    lines += ["Cost columns are the first seed's run, which trained with nothing else of the suite running"
              + (f" (the other seeds trained {meta['parallel']} at a time, for their quality only)"
                 if meta.get("parallel", 1) > 1 else "") + ". Time per epoch counts the training loop only; peak memory is "
              + ("`torch.cuda.max_memory_allocated`" if any("cuda" in r.get("peak_memory_kind", "") for r in ok)
                 else "the run's peak resident memory above its idle baseline (each run in its own process)")
              + ". TPME = 0.45·time' + 0.10·params' + 0.45·memory' after min–max normalisation (lower is better).", ""]
    for f in figures:
        lines += [f"![{Path(f).stem}]({f})", ""]
    routers = [r for r in ok if r.get("router_weight")]
    if routers:
        lines += ["## MOMEF router weight per modality (mean over items and seeds)", "",
                  "| run | " + " | ".join(routers[0]["router_weight"]) + " |",
                  "|---|" + "---:|" * len(routers[0]["router_weight"])]
        for r in routers:
            lines.append(f"| {r['name']} | " + " | ".join(f"{v:.3f}" for v in r["router_weight"].values()) + " |")
        lines.append("")
    lines += ["## Time per run", "", "Wall time (this invocation) depends on what else runs on the machine; CPU time "
              "(user + system of the run's processes, reused runs included) much less so.", "",
              "| run | seeds | best epochs | wall time (s) | CPU time (s) |", "|---|---|---|---:|---:|"]
    lines += [f"| {r['name']} | {r.get('seeds', '')} | {r.get('best_epochs', '')} | {r['wall_s']}"
              + (f" (seed {r['reused_seeds']}: finished earlier, reused)" if r.get("reused_seeds") else "")
              + f" | {_num(r.get('cpu_s'))} |" for r in rows]
    parts = (f"runs trained alone (every run's first seed) {meta.get('alone_s', '?')} s, the other seeds "
             f"{meta.get('parallel')} at a time {meta.get('together_s', '?')} s" if meta.get("parallel", 1) > 1
             else f"runs {meta.get('alone_s', '?')} s")
    lines += ["", f"Data {meta.get('data_s', 0)} s, cache {meta['cache_build_s']} s, {parts} (wall).", ""]
    failed = [r for r in rows if r.get("error")]
    if failed:
        lines += ["## Failed runs", ""] + [f"- {r['name']}: {r.get('error', '')} (log: `{r.get('log', '')}`)"
                                           for r in failed] + [""]
    return "\n".join(lines)

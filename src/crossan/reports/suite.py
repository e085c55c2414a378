"""Declared comparisons ("suites"): methods × modality sets on one dataset and encoder preset, each method in
its own process, collected into one table with efficiency figures, plots and a markdown report.

A suite is a YAML file (or the name of a built-in one in ``crossan/suites/``)::

    description: what it compares
    data: synth:small           # a dataset folder, or synth:SIZE[:SEED] to generate the built-in data
    preset: offline             # encoder preset for every run
    overrides: [train.epochs=10] # key=value applied to every run
    runs:
      - {name: ID, method: id, modalities: [text]}
      - {name: CROSSAN, method: crossan, modalities: [text, image], overrides: [crossan.fusion=momef]}

Each run is ``python -m crossan train`` in a child process, so that its peak memory is its own (on a CPU:
the peak resident memory during the run above the process's idle baseline; on a GPU:
``torch.cuda.max_memory_allocated``). A run that fails is kept in the table with its error.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from crossan.config import ConfigError, load_config
from crossan.utils import atomic_write_json, atomic_write_text

CACHED_METHODS = ("frozen", "iisan", "crossan")


@dataclass
class RunSpec:
    name: str
    method: str
    modalities: list[str]
    overrides: list[str] = field(default_factory=list)


@dataclass
class Suite:
    name: str
    description: str
    data: str
    preset: str
    overrides: list[str]
    runs: list[RunSpec]


def builtin_suites() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("crossan.suites").iterdir() if p.name.endswith(".yaml"))


def load_suite(name_or_file: str) -> Suite:
    path = Path(name_or_file)
    if path.is_file():
        text, name = path.read_text(), path.stem
    else:
        res = resources.files("crossan.suites") / f"{name_or_file}.yaml"
        if not res.is_file():
            raise ConfigError(f"suite {name_or_file!r} is neither a file nor a built-in suite ({builtin_suites()})")
        text, name = res.read_text(), name_or_file
    raw = yaml.safe_load(text) or {}
    unknown = set(raw) - {"description", "data", "preset", "overrides", "runs"}
    if unknown:
        raise ConfigError(f"suite {name_or_file}: unknown keys {sorted(unknown)}")
    runs = []
    for i, r in enumerate(raw.get("runs") or []):
        extra = set(r) - {"name", "method", "modalities", "overrides"}
        if extra or "method" not in r:
            raise ConfigError(f"suite {name_or_file}: runs[{i}] needs 'method' and may have name, modalities, "
                              f"overrides (got {sorted(r)})")
        mods = r.get("modalities", ["text"])
        runs.append(RunSpec(r.get("name", f"{r['method']}-{'+'.join(mods)}"), r["method"], list(mods),
                            list(r.get("overrides", []))))
    if not runs:
        raise ConfigError(f"suite {name_or_file}: no runs")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"suite {name_or_file}: run names repeat: {names}")
    suite = Suite(name, raw.get("description", ""), str(raw.get("data", "synth:small")), raw.get("preset", "offline"),
                  list(raw.get("overrides", [])), runs)
    for r in suite.runs:  # fail early on a bad key, before hours of runs
        load_config([], run_overrides(suite, r, "x"))
    return suite


def run_overrides(suite: Suite, run: RunSpec, data_path: str) -> list[str]:
    return [f"data.path={data_path}", f"encoders.preset={suite.preset}", f"method={run.method}",
            f"modalities=[{','.join(run.modalities)}]", *suite.overrides, *run.overrides]


# --------------------------------------------------------------------------------------------- running
def resolve_data(spec: str, out: Path) -> Path:
    """A dataset folder, generating the built-in data for ``synth:SIZE[:SEED]`` (in a folder named after the
    generator version, so that an output folder from an older version is left alone, not refused)."""
    if not spec.startswith("synth:"):
        return Path(spec).expanduser()
    from crossan.data.synth import GENERATOR_VERSION, generate

    parts = spec.split(":")
    size = parts[1] if len(parts) > 1 and parts[1] else "small"
    seed = int(parts[2]) if len(parts) > 2 else 0
    return generate(out / "data" / f"synth-{size}-{seed}-v{GENERATOR_VERSION}", size=size, seed=seed)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _run_tee(cmd: list[str], log_path: Path, show: bool) -> int:
    """Run ``cmd``, copying its output (progress bars included) to ``log_path`` and, if ``show``, the terminal."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_child_env())
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(4096):
            log.write(chunk)
            if show:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        return proc.wait()


def ensure_cache(suite: Suite, data: Path, out: Path, progress: bool = True) -> float:
    """Build the layer-state cache for every modality a cached run needs (once). Returns seconds spent."""
    mods = sorted({m for r in suite.runs if r.method in CACHED_METHODS for m in r.modalities})
    if not mods:
        return 0.0
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "crossan", "cache", "--data", str(data), "--modalities", ",".join(mods),
           f"encoders.preset={suite.preset}", *[o for o in suite.overrides if o.startswith(("encoders.", "cache.",
                                                                                             "data."))]]
    print(f"[suite] caching {','.join(mods)} with the {suite.preset} preset", flush=True)
    if _run_tee(cmd, out / "cache.log", show=progress) != 0:
        tail = (out / "cache.log").read_text()[-2000:]
        raise RuntimeError(f"building the cache failed (see {out / 'cache.log'}):\n{tail}")
    return time.perf_counter() - t0


def run_suite(suite: Suite, out: Path, resume: bool = True, progress: bool = True) -> list[dict[str, Any]]:
    """Run every method of ``suite`` into ``out/runs/NAME`` and return one row per run."""
    out.mkdir(parents=True, exist_ok=True)
    data = resolve_data(suite.data, out)
    cache_s = ensure_cache(suite, data, out, progress)
    rows = []
    for i, run in enumerate(suite.runs, 1):
        run_dir = out / "runs" / run.name
        results = run_dir / "results.json"
        t0 = time.perf_counter()
        if resume and results.is_file():
            print(f"[suite] {i}/{len(suite.runs)} {run.name}: done earlier, reusing {results}", flush=True)
        else:
            status = "resume" if (run_dir / "checkpoints" / "last.pt").is_file() else "start"
            print(f"[suite] {i}/{len(suite.runs)} {run.name} ({run.method}, {'+'.join(run.modalities)})", flush=True)
            cmd = [sys.executable, "-m", "crossan", "train", "--data", str(data), "--out", str(run_dir),
                   *(["--resume"] if status == "resume" else []), *run_overrides(suite, run, str(data))[1:]]
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            log_path = out / "runs" / f"{run.name}.log"
            if _run_tee(cmd, log_path, show=progress) != 0:
                lines = log_path.read_text().strip().splitlines()
                err = [ln for ln in lines if ln.startswith("crossan: error:")][-1:] or lines[-1:] or ["(no output)"]
                print(f"[suite]   FAILED: {err[0]}", flush=True)
                rows.append({"name": run.name, "method": run.method, "modalities": "+".join(run.modalities),
                             "status": "failed", "error": err[0], "log": str(log_path)})
                continue
        res = json.loads(results.read_text())
        row = row_from_results(run, res)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"[suite]   test NDCG@10 {row['test_NDCG@10']:.4f} HR@10 {row['test_HR@10']:.4f} | "
              f"{row['time_per_epoch_s']:.2f} s/epoch | {row['trainable_params']:,} trainable", flush=True)
        rows.append(row)
    add_tpme(rows)
    meta = {"suite": suite.name, "description": suite.description, "data": str(data), "preset": suite.preset,
            "cache_build_s": round(cache_s, 1), "machine": machine_description(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write_outputs(rows, meta, out)
    return rows


def row_from_results(run: RunSpec, res: dict[str, Any]) -> dict[str, Any]:
    row = {"name": run.name, "method": res["method"], "modalities": "+".join(res.get("modalities", run.modalities)),
           "status": "ok", "best_epoch": res["best_epoch"]}
    for split in ("valid", "test"):
        for k, v in res[split].items():
            row[f"{split}_{k}"] = v
    row.update({
        "time_per_epoch_s": res["train_time_per_epoch_s"],
        "peak_memory_bytes": res["peak_memory_bytes"],
        "peak_memory_kind": res.get("peak_memory_kind", ""),
        "trainable_params": res["trainable_params"],
        "total_params": res["total_params"],
        "eval_time_s": res.get("eval_time_s", float("nan")),
        "device": res["device"],
    })
    router = (res.get("tower") or {}).get("router_weight")
    if router:
        row["router_weight"] = router
    return row


def add_tpme(rows: list[dict[str, Any]]) -> None:
    """TPME (IISAN): min–max normalise time, parameters and memory over the compared runs;
    TPME = 0.45·t' + 0.10·p' + 0.45·m' (lower is better)."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return

    def norm(key: str) -> list[float]:
        vals = [float(r[key]) for r in ok]
        lo, hi = min(vals), max(vals)
        return [0.0 if hi == lo else (v - lo) / (hi - lo) for v in vals]

    for r, t, p, m in zip(ok, norm("time_per_epoch_s"), norm("trainable_params"), norm("peak_memory_bytes")):
        r["TPME"] = 0.45 * t + 0.10 * p + 0.45 * m


def machine_description() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}"
    return (f"CPU {platform.machine()} ({os.cpu_count()} cores), {platform.system()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}")


# --------------------------------------------------------------------------------------------- outputs
COLUMNS = ["name", "method", "modalities", "status", "best_epoch", "test_HR@10", "test_NDCG@10", "test_HR@20",
           "test_NDCG@20", "test_MRR", "valid_NDCG@10", "time_per_epoch_s", "peak_memory_bytes", "trainable_params",
           "total_params", "TPME", "eval_time_s", "wall_s", "peak_memory_kind", "device", "error"]


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| run | method | modalities | test HR@10 | test NDCG@10 | time/epoch (s) | peak mem (MiB) | "
            "trainable params | total params | TPME |")
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['method']} | {r['modalities']} | FAILED: {r.get('error', '')} "
                         "| | | | | | |")
            continue
        lines.append(f"| {r['name']} | {r['method']} | {r['modalities']} | {r['test_HR@10']:.4f} | "
                     f"{r['test_NDCG@10']:.4f} | {r['time_per_epoch_s']:.2f} | {_mib(r['peak_memory_bytes'])} | "
                     f"{r['trainable_params']:,} | {r['total_params']:,} | {r.get('TPME', float('nan')):.3f} |")
    return "\n".join(lines)


def write_outputs(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    atomic_write_json(out / "results.json", {"meta": meta, "rows": rows})
    table = markdown_table(rows)
    atomic_write_text(out / "results.md", table + "\n")
    from crossan.reports.plots import plot_all

    figures = plot_all(rows, out)
    atomic_write_text(out / "report.md", render_report(rows, meta, table, figures))
    print("\n" + table + "\n", flush=True)
    print(f"[suite] wrote {out / 'results.csv'}, {out / 'report.md'}", flush=True)


def render_report(rows: list[dict[str, Any]], meta: dict[str, Any], table: str, figures: list[str]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = [f"# crossan report: {meta['suite']}", "", meta.get("description", "").strip(), "",
             f"- data: `{meta['data']}`", f"- encoder preset: `{meta['preset']}`",
             f"- machine: {meta['machine']}", f"- date: {meta['date']}",
             f"- layer-state cache built in {meta['cache_build_s']} s (once, shared by the cached methods)", ""]
    if meta["preset"] != "paper":
        lines += ["> The image, video and audio encoders of the `offline`/`tiny` presets are **randomly initialised**"
                  " transformers models (no pretrained weights are available offline); the text encoder of `offline` "
                  "is the real all-MiniLM-L6-v2. Quality figures reflect that.", ""]
    lines += ["## Results (test split, best validation epoch)", "", table, "",
              "Time per epoch counts the training loop only; peak memory is "
              + ("`torch.cuda.max_memory_allocated`" if any("cuda" in r.get("peak_memory_kind", "") for r in ok)
                 else "the run's peak resident memory above its idle baseline (each run in its own process)")
              + ". TPME = 0.45·time' + 0.10·params' + 0.45·memory' after min–max normalisation (lower is better).", ""]
    for f in figures:
        lines += [f"![{Path(f).stem}]({f})", ""]
    routers = [r for r in ok if r.get("router_weight")]
    if routers:
        lines += ["## MOMEF router weight per modality (mean over items)", "",
                  "| run | " + " | ".join(routers[0]["router_weight"]) + " |",
                  "|---|" + "---:|" * len(routers[0]["router_weight"])]
        for r in routers:
            lines.append(f"| {r['name']} | " + " | ".join(f"{v:.3f}" for v in r["router_weight"].values()) + " |")
        lines.append("")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["## Failed runs", ""] + [f"- {r['name']}: {r.get('error', '')} (log: `{r.get('log', '')}`)"
                                           for r in failed] + [""]
    return "\n".join(lines)

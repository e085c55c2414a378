"""Figures for suite reports (matplotlib, Agg backend; PNG files beside the report): quality with its
interval over seeds, cost per method, MOMEF router weights."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_all(rows: list[dict[str, Any]], out: Path) -> list[str]:
    """Write every figure that the rows support; returns their file names (relative to ``out``).

    Quality figures show the mean over seeds with its 95% t-interval as error bars, and leave out cost-only
    runs (capped epochs: their quality is not converged); the cost figure shows every run (its first seed).
    """
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return []
    quality = quality_rows(ok)
    files = []
    if quality:
        files += [_quality_vs_params(quality, len(ok) - len(quality), out), _metrics_bars(quality, out)]
    costed = [r for r in ok if math.isfinite(float(r.get("time_per_epoch_s", math.nan)))]
    if costed:
        files.append(_cost_bars(costed, out))
    routers = [r for r in ok if r.get("router_weight")]
    if routers:
        files.append(_router_weights(routers, out))
    return files


def quality_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose quality may be plotted: finished, converged (not cost only), with a test NDCG@10 mean."""
    return [r for r in rows if r["status"] == "ok" and not r.get("cost_only") and "test_NDCG@10_mean" in r]


def _save(fig: plt.Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name


def _err(r: dict[str, Any], key: str) -> float:
    """The half-width of ``key``'s interval (0 where there is none, e.g. one seed)."""
    half = r.get(f"{key}_ci95")
    return 0.0 if half is None or math.isnan(half) else float(half)


def _quality_vs_params(rows: list[dict[str, Any]], n_cost_only: int, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        y = r["test_NDCG@10_mean"]
        ax.errorbar(r["trainable_params"], y, yerr=_err(r, "test_NDCG@10"), fmt="o", capsize=3, ms=5)
        label = r["name"] + (" *" if r.get("significant") else "")
        ax.annotate(label, (r["trainable_params"], y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel("test NDCG@10 (mean, 95% CI over seeds)")
    title = "Quality against trainable parameters"
    if n_cost_only:
        title += f"\n({n_cost_only} cost-only run(s), not converged, not shown)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, out, "ndcg_vs_params.png")


def _cost_bars(rows: list[dict[str, Any]], out: Path) -> str:
    names = [r["name"] + (" (cost only)" if r.get("cost_only") else "") for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    series = [("time_per_epoch_s", "time per epoch (s)", 1.0), ("peak_memory_bytes", "peak memory (MiB)", 2**20),
              ("trainable_params", "trainable parameters", 1.0)]
    for ax, (key, label, scale) in zip(axes, series):
        vals = [max(float(r[key]) / scale, 1e-6) for r in rows]
        ax.bar(range(len(rows)), vals, color="tab:blue")
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(label + " (log)")
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "cost_per_method.png")


def _metrics_bars(rows: list[dict[str, Any]], out: Path) -> str:
    keys = ["test_HR@10", "test_NDCG@10", "test_HR@20", "test_NDCG@20"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 3.8))
    width = 0.8 / len(keys)
    for j, k in enumerate(keys):
        ax.bar([i + j * width for i in range(len(rows))], [r.get(f"{k}_mean", 0.0) for r in rows], width,
               yerr=[_err(r, k) for r in rows], capsize=2, label=k.replace("test_", ""))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [r["name"] for r in rows], rotation=45,
                  ha="right", fontsize=8)
    ax.set_ylabel("test metric (mean, 95% CI)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Test metrics per method (cost-only runs not shown)")
    return _save(fig, out, "metrics_per_method.png")


def _router_weights(rows: list[dict[str, Any]], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    mods = sorted({m for r in rows for m in r["router_weight"]})
    width = 0.8 / len(rows)
    for j, r in enumerate(rows):
        ax.bar([i + j * width for i in range(len(mods))], [r["router_weight"].get(m, 0.0) for m in mods], width,
               label=r["name"])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(mods))], mods)
    ax.set_ylabel("mean router weight")
    ax.set_title("MOMEF: mean router weight per modality")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "momef_router_weights.png")

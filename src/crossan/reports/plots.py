"""Figures for suite reports (matplotlib, Agg backend; PNG files beside the report): quality with its
interval over seeds, cost per method, MOMEF router weights.

Two figures appear when the runs they need exist (no suite key; the ``ablation`` suite names its runs so):

* ``ndcg_vs_modalities.png`` — runs named ``<LABEL>-M<k>`` (k = number of modalities, e.g. ``CROSSAN-M1`` …
  ``CROSSAN-M4``): test NDCG@10 (mean, 95% interval) against k per label, and in a second panel trainable
  parameters and time per epoch against k; drawn for every label with at least two such runs;
* ``ablation_bars.png`` — when the suite has a reference: test NDCG@10 of every converged run (mean, 95%
  interval), the reference hatched, ``*`` over runs whose paired test against it gives a Holm-adjusted
  p < 0.05 on at least three paired seeds, none of them capped (``significant`` in the table).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from crossan.reports.table import MIN_CLAIM_SEEDS, MIN_CLAIM_USERS  # noqa: E402
from crossan.utils import atomic_write  # noqa: E402


def plot_all(rows: list[dict[str, Any]], out: Path) -> list[str]:
    """Write every figure that the rows support; returns their file names (relative to ``out``).

    Quality figures show the mean over seeds with its 95% t-interval as error bars, and leave out cost-only
    runs (capped epochs: their quality is not converged); a run with no interval (one seed) gets no error bar
    and is marked ``(1 seed)``. The cost figure shows every run with a cost measured alone.
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
    curves = modality_curves(quality)
    if curves:
        files.append(_ndcg_vs_modalities(curves, out))
    if any(r.get("p_value_note") == "reference" for r in quality):
        files.append(_ablation_bars(quality, out))
    return files


MODALITY_RUN = re.compile(r"^(?P<label>.+)-M(?P<k>[1-9])$")
"""Run names that place a run on a modality curve: ``LABEL-M<k>`` with k the number of modalities."""


def modality_curves(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """Rows named ``LABEL-M<k>`` grouped by label, sorted by k; labels with fewer than two points are dropped."""
    curves: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for r in rows:
        m = MODALITY_RUN.match(r["name"])
        if m:
            curves.setdefault(m["label"], []).append((int(m["k"]), r))
    return {label: sorted(pts, key=lambda p: p[0]) for label, pts in curves.items() if len(pts) >= 2}


def _ndcg_vs_modalities(curves: dict[str, list[tuple[int, dict[str, Any]]]], out: Path) -> str:
    fig, (ax, cost) = plt.subplots(1, 2, figsize=(11, 4))
    time_ax = cost.twinx()
    for i, (label, pts) in enumerate(sorted(curves.items())):
        color = f"C{i}"
        ks = [k for k, _ in pts]
        means = [r["test_NDCG@10_mean"] for _, r in pts]
        ax.plot(ks, means, "-o", color=color, label=label)
        _error_bars(ax, ks, means, [r for _, r in pts], "test_NDCG@10", color=color)
        for k, m, (_, r) in zip(ks, means, pts):
            if _err(r, "test_NDCG@10") is None:
                ax.annotate(_no_interval(r), (k, m), textcoords="offset points", xytext=(4, -10), fontsize=7,
                            color=color)
        cost.plot(ks, [r.get("trainable_params", math.nan) for _, r in pts], "-o", color=color,
                  label=f"{label}: parameters")
        time_ax.plot(ks, [r.get("time_per_epoch_s", math.nan) for _, r in pts], "--s", color=color,
                     label=f"{label}: time per epoch")
    ax.set_xlabel("number of modalities")
    ax.set_ylabel("test NDCG@10 (mean, 95% CI over seeds)")
    ax.set_title("Quality as modalities are added" + _no_interval_note([r for pts in curves.values()
                                                                        for _, r in pts]), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    cost.set_xlabel("number of modalities")
    cost.set_ylabel("trainable parameters (solid, log)")
    cost.set_yscale("log")
    time_ax.set_ylabel("time per epoch, s (dashed)")
    lines = cost.get_legend_handles_labels()[0] + time_ax.get_legend_handles_labels()[0]
    cost.legend(lines, [h.get_label() for h in lines], fontsize=7)
    cost.set_title("Cost as modalities are added", fontsize=10)
    cost.grid(alpha=0.3)
    for a in (ax, cost):
        a.set_xticks(sorted({k for pts in curves.values() for k, _ in pts}))
    return _save(fig, out, "ndcg_vs_modalities.png")


def _ablation_bars(rows: list[dict[str, Any]], out: Path) -> str:
    ref = next(r["name"] for r in rows if r.get("p_value_note") == "reference")
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 2), 4))
    xs = list(range(len(rows)))
    means = [r["test_NDCG@10_mean"] for r in rows]
    errs = [_err(r, "test_NDCG@10") for r in rows]
    bars = ax.bar(xs, means, color=["tab:orange" if r["name"] == ref else "tab:blue" for r in rows])
    _error_bars(ax, xs, means, rows, "test_NDCG@10")
    for bar, r, m, e in zip(bars, rows, means, errs):
        if r["name"] == ref:
            bar.set_hatch("//")
        elif r.get("significant"):
            ax.annotate("*", (bar.get_x() + bar.get_width() / 2, m + (e or 0.0)), textcoords="offset points",
                        xytext=(0, 2), ha="center", fontsize=12)
    ax.set_xticks(xs, [_name(r) for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("test NDCG@10 (mean, 95% CI over seeds)")
    _fit_title(ax, f"Runs against the reference {ref} (hatched)\n"
                   f"* Holm-adjusted p < 0.05, paired bootstrap over users (on {MIN_CLAIM_SEEDS}+ seeds, "
                   f"{MIN_CLAIM_USERS}+ users, none capped)"
                   + _no_interval_note(rows), 9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "ablation_bars.png")


def quality_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose quality may be plotted: finished, converged (not cost only), with a test NDCG@10 mean."""
    return [r for r in rows if r["status"] == "ok" and not r.get("cost_only") and "test_NDCG@10_mean" in r]


def _fit_title(ax: plt.Axes, title: str, fontsize: float) -> None:
    """``ax.set_title`` with each line wrapped to the figure's width (a long note line was cut at both sides)."""
    import textwrap

    inches = ax.get_position().width * ax.figure.get_figwidth() * 1.15  # the axes' width, a little beyond
    width = inches * 72 / (0.55 * fontsize)  # characters of about 0.55 em
    lines = [textwrap.fill(line, max(20, int(width))) for line in title.split("\n")]
    ax.set_title("\n".join(lines), fontsize=fontsize)


def _memory_label(rows: list[dict[str, Any]]) -> str:
    """The cost plot's memory axis: what ``peak_memory_bytes`` measured (its rows' ``peak_memory_kind``)."""
    kinds = {r.get("peak_memory_kind") for r in rows}
    if kinds <= {"cpu_peak_rss_above_idle", None, ""}:
        return "peak memory above idle, RSS (MiB)"
    if kinds <= {"cuda_max_memory_allocated", None, ""}:
        return "peak GPU memory allocated (MiB)"
    return "peak memory (MiB; CPU RSS above idle or GPU allocated)"


def _save(fig: plt.Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    try:  # a failed write keeps the earlier plot whole (savefig in place truncated it) and names the file
        atomic_write(out / name, lambda tmp: fig.savefig(tmp, dpi=120, format=Path(name).suffix[1:]))
    finally:
        plt.close(fig)
    return name


def _err(r: dict[str, Any], key: str) -> float | None:
    """The half-width of ``key``'s interval; None where there is none (one seed): such a row gets no error
    bar (a zero-width bar under a "95% CI" label would read as a certain value)."""
    half = r.get(f"{key}_ci95")
    return None if half is None or math.isnan(half) else float(half)


def _no_interval(r: dict[str, Any]) -> str:
    """How a row without an interval is marked: ``1 seed`` (or ``no interval``)."""
    return "1 seed" if r.get("n_seeds", 1) == 1 else "no interval"


def _name(r: dict[str, Any], key: str = "test_NDCG@10") -> str:
    """The row's name, with ``(1 seed)`` when ``key`` has no interval."""
    return r["name"] + ("" if _err(r, key) is not None else f" ({_no_interval(r)})")


def _no_interval_note(rows: list[dict[str, Any]], key: str = "test_NDCG@10") -> str:
    """A title line saying that runs marked ``(1 seed)`` have no error bar, when there are such runs."""
    return "\n(1 seed: no interval, no error bar)" if any(_err(r, key) is None for r in rows) else ""


def _error_bars(ax: plt.Axes, xs: list[float], ys: list[float], rows: list[dict[str, Any]], key: str,
                capsize: float = 3, **kwargs: Any) -> None:
    """Error bars of ``key``'s 95% interval at (xs, ys), only for the rows that have an interval."""
    keep = [(x, y, _err(r, key)) for x, y, r in zip(xs, ys, rows) if _err(r, key) is not None]
    if keep:
        ax.errorbar([k[0] for k in keep], [k[1] for k in keep], yerr=[k[2] for k in keep], fmt="none",
                    capsize=capsize, ecolor=kwargs.pop("color", "black"), **kwargs)


def _quality_vs_params(rows: list[dict[str, Any]], n_cost_only: int, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        y = r["test_NDCG@10_mean"]
        ax.errorbar(r["trainable_params"], y, yerr=_err(r, "test_NDCG@10"), fmt="o", capsize=3, ms=5)
        label = (_name(r) + (" *" if r.get("significant") else "")
                 + (" (ref)" if r["name"] == r.get("reference") else ""))
        ax.annotate(label, (r["trainable_params"], y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel("test NDCG@10 (mean, 95% CI over seeds)")
    title = "Quality against trainable parameters"
    ref = rows[0].get("reference")
    if ref:
        title += (f"\n* differs from {ref} (ref) at Holm-adjusted p < 0.05, paired test over test users (on "
                  f"{MIN_CLAIM_SEEDS}+ seeds, {MIN_CLAIM_USERS}+ users, none capped)")
    if n_cost_only:
        title += f"\n({n_cost_only} cost-only run(s), not converged, not shown)"
    title += _no_interval_note(rows)
    _fit_title(ax, title, 10)
    ax.grid(alpha=0.3)
    return _save(fig, out, "ndcg_vs_params.png")


def _cost_bars(rows: list[dict[str, Any]], out: Path) -> str:
    names = [r["name"] + (" (cost only)" if r.get("cost_only") else "") for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    series = [("time_per_epoch_s", "time per epoch (s)", 1.0), ("peak_memory_bytes", _memory_label(rows), 2**20),
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
        xs = [i + j * width for i in range(len(rows))]
        ys = [r.get(f"{k}_mean", 0.0) for r in rows]
        ax.bar(xs, ys, width, label=k.replace("test_", ""))
        _error_bars(ax, xs, ys, rows, k, capsize=2)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [_name(r) for r in rows], rotation=45,
                  ha="right", fontsize=8)
    ax.set_ylabel("test metric (mean, 95% CI)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Test metrics per method (cost-only runs not shown)" + _no_interval_note(rows))
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

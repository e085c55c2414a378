"""Compare finished run folders after the fact: mean and 95% t-interval over seeds, and a paired bootstrap of
per-user test NDCG@10 against a reference group (METHOD.md §11), from each run's ``per_user.npz``.

    python benchmarks/compare_runs.py --reference CROSSAN \\
        ID=runs/amazon-id-s0,runs/amazon-id-s1,runs/amazon-id-s2 \\
        CROSSAN=runs/amazon_text/runs/CROSSAN/seed-0,runs/amazon_text/runs/CROSSAN/seed-1,... \\
        --csv out.csv

Each group lists one run folder per seed (a folder listed twice, or two of one seed, is refused; runs of one
group whose config.yaml differ in anything but ``seed`` are refused too: they are not seeds of one setting).
A group's run is paired with the reference's run of the same seed (``seed`` of their config.yaml), on the seeds
both have (the p cell names them when either group has others); where a run records no seed (no config.yaml),
the groups are paired by position, seed i with seed i, on the smaller number. A pair is tested only when the
two runs' split fingerprints agree (same users in the same order, same targets) and they ranked under the same
``eval.mask_history``. ``*`` marks a Holm-adjusted p < 0.05 (over the table's tests) on at
least 3 paired seeds and 50 paired test users, none of the seeds (the row's or the reference's) the epoch cap stopped before its patience ran
out, as in the suites' reports (METHOD.md §11); a test that fails either rule still counts among Holm's tests
but makes no claim.
Prints a markdown table; ``--csv`` also writes it as CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from crossan.cache.manifest import flatten
from crossan.reports.stats import holm_adjust, ndcg_at, paired_bootstrap, t_interval
from crossan.reports.table import ALPHA, MIN_CLAIM_SEEDS, MIN_CLAIM_USERS, may_claim, p_text, run_capped

METRICS = ("HR@10", "NDCG@10", "MRR")


SEED_FREE = ("seed", "data.path", "device", "cache.dir", "cache.memory_limit_gb", "cache.on_device")
"""Keys in which the runs of one group may differ: the seed; where the dataset lies (a suite folder copied
elsewhere; the runs' split fingerprints must agree, which :func:`main` checks); and where a run ran and kept
its cache (seeds trained side by side on ``cuda:0`` and ``cuda:1``)."""


def _setting_differences(saved: dict, other: dict) -> list[str]:
    """``key: a → b`` for the settings two saved run configs differ in, less :data:`SEED_FREE`; each is read
    as a configuration (a key it lacks takes its default), so that runs written before a key existed compare
    equal to runs of its default."""
    from crossan.config import config_from_dict, to_dict

    try:
        a, b = flatten(to_dict(config_from_dict(saved))), flatten(to_dict(config_from_dict(other)))
        keys = set(a) | set(b)
    except Exception:  # a config this crossan cannot read (a plugin's, a newer version's): compare as written,
        a, b = flatten(saved), flatten(other)  # on the keys both record (the default of another is unknown)
        keys = set(a) & set(b)
    return [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in sorted(keys) if k not in SEED_FREE and a.get(k) != b.get(k)]


def load_group(spec: str) -> tuple[str, list[Path], list[object]]:
    """``NAME=DIR[,DIR...]``: a group's run folders, one per seed, and their seeds (``seed`` of their
    config.yaml; None where a folder has none). A folder listed twice, or two folders of one seed, would count
    one training as several seeds, and runs whose settings differ in more than their seed are not seeds of
    one setting: refused."""
    name, _, dirs = spec.partition("=")
    if not dirs:
        raise SystemExit(f"{spec!r}: expected NAME=DIR[,DIR...]")
    folders = [Path(d) for d in dirs.split(",") if d]
    seen: dict[object, Path] = {}
    seeds: list[object] = []
    first: tuple[Path, dict] | None = None
    for d in folders:
        config = d / "config.yaml"
        saved = yaml.safe_load(config.read_text(encoding="utf-8")) if config.is_file() else None
        seed = saved.get("seed") if isinstance(saved, dict) else None
        seeds.append(seed)
        for key, what in ((d.resolve(), "the same run folder"), (("seed", seed), f"seed {seed} twice")):
            if key in seen and (seed is not None or what == "the same run folder"):
                raise SystemExit(f"{name}: {seen[key]} and {d} are {what}: each folder must be another seed's run")
            seen[key] = d
        if isinstance(saved, dict):
            if first is None:
                first = (d, saved)
            elif differ := _setting_differences(first[1], saved):
                raise SystemExit(f"{name}: its runs differ in more than their seed ({first[0]} → {d}), so they are "
                                 "not seeds of one setting:\n  " + "\n  ".join(differ) +
                                 "\nList them as separate groups.")
    return name, folders, seeds


def pairs(seeds: list[object], ref_seeds: list[object]) -> tuple[list[tuple[int, int]], str]:
    """Index pairs (group run, reference run) to test and how they were chosen: by seed where every run of
    both groups records one (the seeds both have, in the reference's order), else by position."""
    if all(s is not None for s in seeds + ref_seeds):
        return [(seeds.index(s), i) for i, s in enumerate(ref_seeds) if s in seeds], "seed"
    return [(i, i) for i in range(min(len(seeds), len(ref_seeds)))], "position"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("groups", nargs="+", help="NAME=RUN_DIR[,RUN_DIR...] (one folder per seed)")
    ap.add_argument("--reference", required=True, help="the group every other group is tested against")
    ap.add_argument("--csv", help="also write the table here")
    args = ap.parse_args(argv)
    loaded = [load_group(g) for g in args.groups]
    groups = {name: folders for name, folders, _ in loaded}
    seeds = {name: group_seeds for name, _, group_seeds in loaded}
    if args.reference not in groups:
        raise SystemExit(f"--reference {args.reference!r} is not one of {list(groups)}")
    results = {n: [json.loads((d / "results.json").read_text()) for d in ds] for n, ds in groups.items()}
    per_user = {n: [np.load(d / "per_user.npz") for d in ds] for n, ds in groups.items()}
    for n, runs in per_user.items():  # one setting's seeds rank the same users' same targets
        splits = {str(r["split_fingerprint"]) for r in runs}
        if len(splits) > 1:
            raise SystemExit(f"{n}: its runs were evaluated on different splits (split fingerprints differ: other "
                             "data or data settings), so they are not seeds of one setting")
    ref = args.reference
    rows = []
    for name, res in results.items():
        row: dict[str, object] = {"run": name, "method": res[0]["method"], "seeds": len(res),
                                  "best_epochs": ",".join(str(r["best_epoch"]) for r in res)}
        for m in METRICS:
            mean, half = t_interval([r["test"][m] for r in res])
            row[f"test_{m}_mean"], row[f"test_{m}_ci95"] = mean, half
        # the median over the seeds, as the suite report takes it (one measurement can be well off)
        times = [r["train_time_per_epoch_s"] for r in res if r["train_time_per_epoch_s"] is not None]
        row["s_per_epoch"] = float(np.median(times)) if times else float("nan")  # none: train.epochs=0
        row["trainable_params"] = res[0]["trainable_params"]
        if name != ref:
            chosen, how = pairs(seeds[name], seeds[ref])
            k = len(chosen)
            a = [per_user[name][i] for i, _ in chosen]
            b = [per_user[ref][j] for _, j in chosen]
            row["paired_by"] = how
            row["paired_on"] = ",".join(str(seeds[ref][j]) for _, j in chosen) if how == "seed" else ""
            same = all(str(x["split_fingerprint"]) == str(y["split_fingerprint"]) for x, y in zip(a, b))
            masks = {str(results[name][i].get("mask_history")) for i, _ in chosen} | \
                {str(results[ref][j].get("mask_history")) for _, j in chosen}
            if not k:
                row["p_value"], row["diff_NDCG@10"] = "not paired (no seed in common)", ""
            elif not same:
                row["p_value"], row["diff_NDCG@10"] = "not paired (splits differ)", ""
            elif len(masks) > 1:
                row["p_value"], row["diff_NDCG@10"] = "not paired (eval.mask_history differs)", ""
            else:
                t = paired_bootstrap([ndcg_at(x["test_ranks"]) for x in a], [ndcg_at(y["test_ranks"]) for y in b])
                row["p_value"], row["diff_NDCG@10"] = t.p_value, t.diff
                row["diff_ci95"] = f"[{t.ci95[0]:+.4f}, {t.ci95[1]:+.4f}]"
                row["paired_seeds"] = k
                row["paired_users"] = t.users
                row["capped"] = any(run_capped(groups[name][i], res[i]["best_epoch"]) for i, _ in chosen)
                row["reference_capped"] = any(run_capped(groups[ref][j], results[ref][j]["best_epoch"])
                                              for _, j in chosen)
        rows.append(row)
    tested = [r for r in rows if isinstance(r.get("p_value"), float)]
    for r, p_holm in zip(tested, holm_adjust([r["p_value"] for r in tested])):
        # a claim rests on at least MIN_CLAIM_SEEDS paired seeds, none stopped by the epoch cap (METHOD.md §11),
        # as in the suites' reports
        r["p_holm"] = p_holm
        claim = may_claim(r["paired_seeds"], r["paired_users"], r["capped"], r["reference_capped"])
        r["significant"] = bool(claim and p_holm < ALPHA)
    print(f"| run | method | seeds | best epochs | test HR@10 | test NDCG@10 | test MRR | Δ NDCG@10 vs {ref} [95% CI] "
          "| p | s/epoch (median over seeds) | trainable params |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        # one seed has no interval: its mean alone, as in the suites' tables (not "± nan")
        q = " | ".join(f"{r[f'test_{m}_mean']:.4f}" + (f" ± {r[f'test_{m}_ci95']:.4f}"
                                                        if np.isfinite(r[f"test_{m}_ci95"]) else "") for m in METRICS)
        if r["run"] == ref:
            d, p = "reference", ""
        elif isinstance(r["p_value"], str):
            d, p = r["p_value"], ""
        else:
            d = f"{r['diff_NDCG@10']:+.4f} {r['diff_ci95']}"
            p = f"{p_text(r['p_value'])} (Holm {p_text(r['p_holm'])})" + (" *" if r["significant"] else "")
            fewer = r["paired_seeds"] < max(r["seeds"], len(results[ref]))
            if fewer and r["paired_by"] == "seed":
                p += f", paired on seed{'s' if r['paired_seeds'] != 1 else ''} {r['paired_on']}"
            elif fewer:
                p += f", {r['paired_seeds']} of {max(r['seeds'], len(results[ref]))} seeds paired"
            if r["paired_seeds"] < MIN_CLAIM_SEEDS:  # the reason, as the suites' reports give it
                p += ": no claim" if fewer else \
                    f", {r['paired_seeds']} seed{'s' if r['paired_seeds'] != 1 else ''} paired: no claim"
            if r["paired_users"] < MIN_CLAIM_USERS:
                p += f"; too few users paired ({r['paired_users']} < {MIN_CLAIM_USERS}): no claim"
            for flag in ("capped", "reference_capped"):
                if r[flag]:
                    p += f"; {flag.replace('_', ' ')} (the epoch cap stopped a paired seed): no claim"
        print(f"| {r['run']} | {r['method']} | {r['seeds']} | {r['best_epochs']} | {q} | {d} | {p} | "
              f"{r['s_per_epoch']:.2f} | {r['trainable_params']:,} |")
    print(f"\np: paired bootstrap over test users; Holm: adjusted over the {len(tested)} test(s) of this table; "
          f"* where the Holm-adjusted p < 0.05 on at least {MIN_CLAIM_SEEDS} paired seeds and {MIN_CLAIM_USERS} "
          "paired test users, none of the seeds stopped by "
          "the epoch cap before its patience ran out.")
    if args.csv:
        keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

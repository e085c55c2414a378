"""How often a report marks a run as significantly different from its reference when no run differs at all:
with each raw p < 0.05, and with Holm-adjusted p-values (what crossan's reports use since 2026-12-01).

Each simulated suite has one reference and ``--runs`` other runs, 3 seeds each, drawn from the same
distribution of per-user ranks (so every null hypothesis is true); every run is tested against the
reference with crossan's paired bootstrap over users (``crossan.reports.stats.paired_bootstrap``), as a
suite report does. Prints the family-wise rate of at least one false ``*`` under both rules and writes it
as JSON with ``--out``.

    python benchmarks/holm_null.py --suites 200 --runs 15
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from crossan.reports.stats import BOOTSTRAP_RESAMPLES, holm_adjust, ndcg_at, paired_bootstrap

ALPHA = 0.05


def null_suite(rng: np.random.Generator, users: int, runs: int, seeds: int, resamples: int) -> list[float]:
    """The raw p-values of ``runs`` runs against a reference, all drawn like the reference."""
    base = rng.geometric(0.05, size=users).astype(float)  # a user's typical rank of the target

    def one_seed() -> np.ndarray:  # the same model's ranks under another seed: jitter around the base
        return ndcg_at(np.maximum(1, base + rng.integers(-3, 4, users)))

    reference = [one_seed() for _ in range(seeds)]
    return [paired_bootstrap([one_seed() for _ in range(seeds)], reference, resamples=resamples, seed=k).p_value
            for k in range(runs)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suites", type=int, default=60, help="simulated suites")
    ap.add_argument("--runs", type=int, default=15, help="runs tested against the reference in each suite")
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES,
                    help="bootstrap resamples per test (the reports' number; with few, the smallest possible p "
                         "is 1/(resamples+1), which Holm's smallest threshold 0.05/runs may lie below)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    raw_hits = holm_hits = 0
    for _ in range(args.suites):
        p = null_suite(rng, args.users, args.runs, args.seeds, args.resamples)
        raw_hits += min(p) < ALPHA
        holm_hits += min(holm_adjust(p)) < ALPHA
    result = {"suites": args.suites, "runs_per_suite": args.runs, "users": args.users, "seeds": args.seeds,
              "resamples": args.resamples, "seed": args.seed,
              "any_false_star_raw": raw_hits / args.suites, "any_false_star_holm": holm_hits / args.suites,
              "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{args.runs} runs equal to the reference, {args.suites} suites: P(at least one '*') = "
          f"{result['any_false_star_raw']:.2f} with raw p < {ALPHA}, {result['any_false_star_holm']:.2f} with "
          f"Holm-adjusted p < {ALPHA}  ({result['seconds']} s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

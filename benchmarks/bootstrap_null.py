"""How often the paired bootstrap (``crossan.reports.stats.paired_bootstrap``) gives p < 0.05 when two arms do
not differ, by the number of test users: the calibration behind ``MIN_CLAIM_USERS`` (docs/results.md §12x).

Each data set holds two arms of three seeds, every user's NDCG@10 drawn independently from one sparse
distribution (a hit with probability 0.3, at a rank uniform in 1..10), so the null is true; a calibrated test
gives p < 0.05 for 5% of the data sets. Prints the rates at 0.05 and 0.01 per number of users; ``--out``
writes them as JSON.

    python benchmarks/bootstrap_null.py --users 5,10,20,30,50,100 --sets 1000 --resamples 1000
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from crossan.reports.stats import paired_bootstrap


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="5,10,20,30,50,100", help="comma-separated numbers of test users")
    ap.add_argument("--sets", type=int, default=1000, help="null data sets per number of users")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="write the rates here as JSON")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    def draw(n: int) -> np.ndarray:
        hit = rng.random(n) < 0.3
        rank = rng.integers(1, 11, n)
        return np.where(hit, 1 / np.log2(rank + 1), 0.0)

    rows = []
    for n in [int(u) for u in args.users.split(",") if u]:
        ps = np.array([paired_bootstrap([draw(n) for _ in range(3)], [draw(n) for _ in range(3)],
                                        resamples=args.resamples).p_value for _ in range(args.sets)])
        rows.append({"users": n, "sets": args.sets, "p_below_0.05": float((ps < 0.05).mean()),
                     "p_below_0.01": float((ps < 0.01).mean())})
        print(f"{n:>6} users: p < 0.05 for {rows[-1]['p_below_0.05']:.3f}, p < 0.01 for "
              f"{rows[-1]['p_below_0.01']:.3f} of {args.sets} null data sets", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"resamples": args.resamples, "seed": args.seed, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Full-ranking evaluation at catalogue scale: ``crossan.evaluation.rank_split`` against the plain form.

Every method's evaluation scores a batch of users against the whole item table (one matmul) and then ranks
each user's target among all candidates (``crossan.evaluation.strict_ranks``: non-finite scores last, padding
and history masked, ties counted against the target). This script times ``rank_split`` on random user
vectors and item table (and its two parts apart), and beside it, alternating in one process, the plain form
of the same work: a fresh ``users @ table.T`` per batch and the rule written as whole-matrix expressions
(``plain_ranks`` below: finite check, candidate mask, comparison, sum). It checks that both give identical
ranks.

    python benchmarks/ranking.py --items 91402 --users 4096 --out bench_out/ranking
    python benchmarks/ranking.py --items 2000 --users 4096 --batch-size 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from crossan.evaluation import rank_split, strict_ranks
from crossan.utils import cpu_description


def plain_ranks(scores: torch.Tensor, targets: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """The rule of ``strict_ranks`` (history masked) written as whole-matrix expressions, for comparison."""
    rows = torch.arange(len(targets))
    clean = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -torch.inf))
    candidate = torch.ones_like(clean, dtype=torch.bool)
    candidate.scatter_(1, history, False)
    candidate[:, 0] = False
    target_score = clean[rows, targets]
    target_ok = candidate[rows, targets]
    not_beaten = (clean >= target_score[:, None]) & candidate
    not_beaten[rows, targets] = False
    ranks = 1.0 + not_beaten.sum(dim=1).double()
    return torch.where(target_ok, ranks, torch.full_like(ranks, torch.inf))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=91_402, help="catalogue size N (MicroLens-1M: 91,402)")
    ap.add_argument("--users", type=int, default=4096, help="users ranked per round")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--history", type=int, default=50, help="history length H (masked items per user)")
    ap.add_argument("--batch-size", type=int, default=512, help="eval.batch_size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="folder for ranking.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    N, U, B = args.items, args.users, args.batch_size
    table = torch.randn(N + 1, args.dim, generator=g)
    users = torch.randn(U, args.dim, generator=g)
    targets = torch.randint(1, N + 1, (U,), generator=g)
    history = torch.randint(0, N + 1, (U, args.history), generator=g)
    machine = (f"CPU {cpu_description()}, {torch.get_num_threads()} threads; {U:,} users x {N + 1:,} items, "
               f"d={args.dim}, H={args.history}, batch {B}")
    print(machine)
    times: dict[str, list[float]] = {"rank_split": [], "matmul": [], "strict_ranks": [], "plain": []}
    index = np.arange(U)[:, None]  # rank_split's "input windows": a user's row in `users`
    targets_np, history_np = targets.numpy(), history.numpy()
    table_t = table.T.contiguous()
    buffer = torch.empty(B, N + 1)
    with torch.no_grad():
        for r in range(args.rounds + 1):  # round 0 warms up and checks
            spent = dict.fromkeys(times, 0.0)
            t0 = time.perf_counter()
            ours = rank_split(lambda x: users[x[:, 0]], table, index, targets_np, history_np, B)
            spent["rank_split"] = time.perf_counter() - t0
            plain = []
            for start in range(0, U, B):  # the plain form: a fresh score matrix per batch, whole-matrix ranking
                sl = slice(start, start + B)
                t0 = time.perf_counter()
                plain.append(plain_ranks(users[sl] @ table.T, targets[sl], history[sl]))
                spent["plain"] += time.perf_counter() - t0
            for start in range(0, U, B):  # rank_split's two parts, timed apart
                sl = slice(start, start + B)
                t0 = time.perf_counter()
                scores = torch.matmul(users[sl], table_t, out=buffer[: len(users[sl])])
                t1 = time.perf_counter()
                strict_ranks(scores, targets[sl], history[sl], overwrite=True)
                spent["matmul"] += t1 - t0
                spent["strict_ranks"] += time.perf_counter() - t1
            if r == 0 and not torch.equal(ours, torch.cat(plain)):
                raise SystemExit("rank_split and the plain form disagree")
            if r:
                for k, v in spent.items():
                    times[k].append(v)
    batches = -(-U // B)
    med = {k: statistics.median(v) / batches * 1e3 for k, v in times.items()}  # ms per batch
    row = {"ms_per_batch": med, "speedup": med["plain"] / med["rank_split"],
           "seconds_per_million_users": {k: med[k] / B * 1e3 for k in ("rank_split", "plain")}}
    print(f"{'part':>14} {'ms/batch':>9} {'s per 1M users':>15}")
    for k, label in (("rank_split", "rank_split"), ("matmul", "  its matmul"), ("strict_ranks", "  its ranking"),
                     ("plain", "plain form")):
        print(f"{label:>14} {med[k]:>9.1f} {med[k] / B * 1e3:>15.0f}")
    print(f"rank_split is {row['speedup']:.2f}x faster than the plain form (identical ranks checked)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"machine": machine, "processor": cpu_description(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "args": vars(args), "rounds": times,
                "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        (out / "ranking.json").write_text(json.dumps({"meta": meta, "result": row}, indent=2) + "\n")
        print(f"wrote {out / 'ranking.json'}")


if __name__ == "__main__":
    main()

"""Training-step variants timed in one process, in alternating rounds (A/B on a noisy machine).

Whole-benchmark processes on the shared 2-core machine vary by ±15% between identical commands, which hides
changes of a few milliseconds per step. This script builds every variant once over the same synthetic
MicroLens-100K-sized data and random fp16 cache as ``side_network_epoch.py``, then runs ``--steps`` steps
of each in turn for ``--rounds`` rounds, so all variants see the same load, and prints the best and median
ms per step (wall and process CPU time) with the implied s/epoch.

    python benchmarks/step_ab.py --variant eager:train.compile=false --variant compiled:train.compile=true
    python benchmarks/step_ab.py --method iisan --modalities 4 --variant gather:inputs=gather --variant base:

A variant is ``NAME:KEY=VALUE,KEY=VALUE`` with config overrides; ``inputs=gather`` is not a config key: it
makes the side networks gather and standardise whole rows instead of reading the in-memory cache block by
block (the code path before 2026-12-01, for comparison). ``train.compile`` is ``auto`` unless a variant sets it:
at MicroLens-100K's size on a CPU with a C++ compiler that is compiled (``side_network_epoch.bench_model``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch
from side_network_epoch import MODS, bench_model, random_cache, synthetic_sequences

from crossan.config import load_config
from crossan.data.protocol import apply_protocol
from crossan.trainer import _batches, _num_batches, make_optimizer, train_epoch
from crossan.utils import configure_malloc, cpu_description


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="crossan")
    ap.add_argument("--modalities", type=int, default=2)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,…")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=19_738)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for every variant (train.malloc among them: it is process-wide)")
    ap.add_argument("--out", default="", help="write the rounds as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    base = load_config([], ["train.batch_size=64", f"seed={args.seed}", *args.set])
    malloc = configure_malloc(base.train.malloc, cpu)  # process-wide: one setting for every variant
    data = apply_protocol(synthetic_sequences(args.users, args.items, args.seed), base.data, name="synthetic")
    n, mods = data.num_items, MODS[: args.modalities]
    states, present = random_cache(n, mods, 7, 768, args.seed)
    inputs, targets = torch.as_tensor(data.train_inputs), torch.as_tensor(data.train_targets)
    batches = _batches(len(inputs), 64, args.seed, 1)
    runs = {}
    for spec in args.variant or ["default:"]:
        name, _, sets = spec.partition(":")
        sets = [s for s in sets.split(",") if s]
        gather = "inputs=gather" in sets
        sets = [s for s in sets if s != "inputs=gather"]
        cfg = load_config([], [f"method={args.method}", f"modalities=[{','.join(mods)}]", "train.batch_size=64",
                               f"seed={args.seed}", *args.set, *sets])
        model = bench_model(cfg, data, states, present, cpu, args.seed)
        if gather:
            model.tower._tap_major_from_memory = lambda items: None
        opt = make_optimizer(model, cfg, cpu)
        model.train()
        t0 = time.perf_counter()
        train_epoch(model, opt, batches[:5], inputs, targets, cpu, progress=False)  # warm-up (and compilation)
        print(f"{name}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
        runs[name] = {"model": model, "opt": opt, "wall_ms": [], "cpu_ms": []}
    for r in range(args.rounds):
        lo = 5 + (r * 7919) % max(1, len(batches) - args.steps - 5)
        for name, run in runs.items():
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            chunk = batches[lo: lo + args.steps]  # fewer than --steps when the epoch is shorter
            train_epoch(run["model"], run["opt"], chunk, inputs, targets, cpu, progress=False)
            run["wall_ms"].append((time.perf_counter() - t0) / len(chunk) * 1e3)
            run["cpu_ms"].append((time.process_time() - c0) / len(chunk) * 1e3)
            print(f"round {r + 1} {name}: {run['wall_ms'][-1]:.1f} ms/step (CPU {run['cpu_ms'][-1]:.1f})", flush=True)
    full = _num_batches(len(inputs), 64)
    summary = {}
    for name, run in runs.items():
        w, c = sorted(run["wall_ms"]), sorted(run["cpu_ms"])
        med = statistics.median(w)  # the mean of the middle two for an even number of rounds
        summary[name] = {"best_ms": w[0], "median_ms": med, "cpu_best_ms": c[0], "rounds_ms": run["wall_ms"],
                         "best_s_per_epoch": w[0] * full / 1e3, "median_s_per_epoch": med * full / 1e3}
        print(f"{name}: best {w[0]:.1f} / median {med:.1f} ms per step (CPU best {c[0]:.1f}); "
              f"{w[0] * full / 1e3:.1f} / {med * full / 1e3:.1f} s per {full:,}-step epoch")
    if args.out:
        meta = {"method": args.method, "modalities": args.modalities, "steps": args.steps, "rounds": args.rounds,
                "machine": cpu_description(), "threads": torch.get_num_threads(), "malloc": malloc,
                "load_average": os.getloadavg(),
                "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        Path(args.out).write_text(json.dumps({"meta": meta, "variants": summary}, indent=1))


if __name__ == "__main__":
    main()

"""Where a side network's CPU training step goes: wall time per phase, and page faults per step.

Builds one IISAN or CROSSAN model over the same synthetic MicroLens-100K-sized data and random fp16 cache as
``side_network_epoch.py``, then times ``--steps`` training steps, phase by phase: the side inputs read from the
cache, the dropout masks, the side chains, the heads and the fusion, the user encoder and the loss (all
forward), then backward and the optimiser step. It also counts minor page faults per step. The allocator
setting (``train.malloc``) is process-wide, so compare settings in separate processes, alternating:

    python benchmarks/step_phases.py --set train.malloc=system
    python benchmarks/step_phases.py --set train.malloc=retain
    python benchmarks/step_phases.py --method iisan --modalities 4 --out bench_out/phases.json

The forward phases are timed by wrapping the tower's and the recommender's methods. The timers add a few
microseconds per call, and the phases overlap nothing on a CPU, where every operator finishes before it
returns. The host's matmul rate is measured before and after the timed steps (``--probe-size``), as in
``side_network_epoch.py``: on a shared host the same command's ms per step moves with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from side_network_epoch import MODS, bench_model, probe_dtype, random_cache, synthetic_sequences

from crossan.config import load_config
from crossan.data.protocol import apply_protocol
from crossan.precision import dtype_name
from crossan.trainer import _batches, make_optimizer
from crossan.utils import configure_malloc, cpu_description, matmul_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="crossan", choices=["crossan", "iisan"])
    ap.add_argument("--modalities", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=19_738)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--probe-size", type=int, default=2048,
                    help="side of the square matmuls that measure the host's speed before and after the steps")
    ap.add_argument("--out", default="", help="write the figures as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    mods = MODS[: args.modalities]
    cfg = load_config([], [f"method={args.method}", f"modalities=[{','.join(mods)}]", "train.batch_size=64",
                           f"seed={args.seed}", *args.set])  # --set train.batch_size=… changes the batch
    malloc = configure_malloc(cfg.train.malloc, cpu)
    data = apply_protocol(synthetic_sequences(args.users, args.items, args.seed), cfg.data, name="synthetic")
    states, present = random_cache(data.num_items, mods, 7, 768, args.seed)
    inputs, targets = torch.as_tensor(data.train_inputs), torch.as_tensor(data.train_targets)
    batches = _batches(len(inputs), cfg.train.batch_size, args.seed, 1)
    model = bench_model(cfg, data, states, present, cpu, args.seed)
    opt = make_optimizer(model, cfg, cpu)
    model.train()

    spent: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*a, **k)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
            return out
        return wrapper

    tower = model.tower
    side_step = tower.side_step
    tower.side_step = lambda fn, h: timed("side chains", side_step(fn, h))  # eager or compiled, as configured
    tower._tap_major_from_memory = timed("side inputs", tower._tap_major_from_memory)
    tower.branch_masks = timed("dropout masks", tower.branch_masks)
    tower.heads.forward = timed("heads", tower.heads.forward)
    if getattr(tower, "fusion", None) is not None:
        tower.fusion.forward = timed("fusion", tower.fusion.forward)
    model.user.forward = timed("user encoder", model.user.forward)
    model._loss = timed("loss", model._loss)

    def step(idx: torch.Tensor) -> None:
        t0 = time.perf_counter()
        loss = model(inputs[idx], targets[idx])
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if cfg.train.grad_clip > 0:  # as the trainer's step (crossan.trainer.train_epoch)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        spent["forward (all)"] = spent.get("forward (all)", 0.0) + t1 - t0
        spent["backward"] = spent.get("backward", 0.0) + t2 - t1
        spent["optimiser"] = spent.get("optimiser", 0.0) + t3 - t2

    for idx in batches[: args.warmup]:
        step(idx)
    spent.clear()
    probe = probe_dtype(cfg.precision, cpu)  # the host's speed around the timed steps (side_network_epoch.py)
    rate_before = matmul_rate(probe, cpu, size=args.probe_size)
    faults0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    measured = batches[args.warmup: args.warmup + args.steps]  # fewer than --steps when the epoch is shorter
    for idx in measured:
        step(idx)
    total = time.perf_counter() - t0
    rate_after = matmul_rate(probe, cpu, size=args.probe_size)
    n = max(1, len(measured))
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / n
    ms = {k: v / n * 1e3 for k, v in spent.items()}
    ms["whole step"] = total / n * 1e3
    print(f"{args.method} M={args.modalities}, {len(measured)} steps of batch {cfg.train.batch_size}, "
          f"{torch.get_num_threads()} threads, malloc {malloc}, "
          f"load average {os.getloadavg()[0]:.2f}")
    for name, v in ms.items():
        print(f"  {name:16s} {v:8.2f} ms")
    print(f"  minor page faults per step: {faults:.1f}")
    print(f"  host: {args.probe_size}² {dtype_name(probe)} products at {rate_before / 1e9:.1f} GFLOP/s before the "
          f"steps, {rate_after / 1e9:.1f} after")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "method": args.method, "modalities": args.modalities, "steps": len(measured),
            "batch_size": cfg.train.batch_size, "malloc": malloc,
            "machine": cpu_description(), "threads": torch.get_num_threads(), "overrides": args.set,
            "ms_per_step": ms,
            "minor_faults_per_step": faults, "load_average": os.getloadavg(), "probe_size": args.probe_size,
            "matmul_gflops_before": {dtype_name(probe): round(rate_before / 1e9, 1)},
            "matmul_gflops_after": {dtype_name(probe): round(rate_after / 1e9, 1)},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=1))


if __name__ == "__main__":
    main()

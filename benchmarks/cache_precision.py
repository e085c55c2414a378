"""Cache building in fp32 against bf16 (the ``precision`` key), timed side by side on a shared machine.

For the text encoder of a preset (``offline``: the real all-MiniLM-L6-v2) and synthetic 10-word titles, each
round builds the cache once per precision with ``crossan.cache.build_cache`` (the builder's own path: the
prefetch thread, the encoder forward under ``crossan.precision.autocast``, fp16 writes), times the encoder
forward alone on prepared batches under each precision, and measures the dense 2048² matmul peak in fp32
and in bf16. Precisions take turns within every round and the fastest round counts, so both see the same
load; the process's CPU time is recorded beside the wall time, and the load average before and after.
The states of the two builds are compared (cosine per item and tap, largest difference).

For speed, prefer ``bench_cache.py --build --precision fp32`` and ``--precision bf16`` in separate processes:
on a Zen 5 with AVX-512 BF16, bf16 work in a process that also ran fp32 work lost about half its speed
(docs/results.md §3m), so this script's bf16/fp32 ratio is a lower bound there (it prints a note).

    python benchmarks/cache_precision.py --items 512 --rounds 3 --out bench_out/cache_precision
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossan.config import Config
from crossan.data.catalogue import Catalogue, ItemRecord
from crossan.precision import autocast, compute_dtype, cpu_has_bf16
from crossan.utils import cpu_description, matmul_rate

WORDS = ("jazz piano session cooking pasta recipe travel city walk vlog yoga home workout retro arcade "
         "speedrun kitten moments chemistry experiment streetwear haul vintage modern cozy epic").split()


class Items:
    """What the cache needs of a dataset: ``item_ids`` (padding first) and a ``catalogue``."""

    def __init__(self, n: int, root: Path, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        records = [ItemRecord(f"t{i}", " ".join(rng.choice(WORDS, size=10))) for i in range(n)]
        self.item_ids = [""] + [r.item_id for r in records]
        self.catalogue = Catalogue(root, records)


def timed(fn: Any) -> tuple[float, float, Any]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--out", default="bench_out/cache_precision")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from torch.utils.flop_counter import FlopCounterMode

    from crossan.cache import build_cache, open_cache
    from crossan.encoders import build_encoder, resolve_specs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    precisions = args.precisions.split(",")
    if len(set(precisions)) > 1:
        print("note: several precisions in one process; bf16 ran about half as fast beside fp32 on a Zen 5 "
              "(docs/results.md §3m): the bf16/fp32 ratio here is a lower bound", flush=True)
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp())
    data = Items(args.items, tmp)
    base = Config()
    base.encoders.preset = args.preset
    base.encoders.batch_size = args.batch_size
    encoder = build_encoder("text", resolve_specs(base, ["text"])["text"])
    records = [data.catalogue[i] for i in data.item_ids[1:]]
    batches = [encoder.prepare(records[i: i + args.batch_size], data.catalogue)[0]
               for i in range(0, len(records), args.batch_size)]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(batches[0])
    flops_item = counter.get_total_flops() / len(records[: args.batch_size])

    res: dict[str, dict[str, list[float]]] = {p: {"build": [], "build_cpu": [], "fwd": [], "fwd_cpu": [], "peak": []}
                                              for p in precisions}
    states = {}
    for r in range(args.rounds):
        for p in precisions:
            cfg = Config()
            cfg.encoders.preset, cfg.encoders.batch_size, cfg.precision = args.preset, args.batch_size, p
            cfg.cache.dir = str(tmp / f"cache_{p}_{r}")
            cfg.device = "cpu"  # like the forwards and matmul peaks beside it (`auto` would take a GPU)
            wall, cpu, _ = timed(lambda cfg=cfg: build_cache(cfg, data, ["text"], progress=False))
            res[p]["build"].append(wall)
            res[p]["build_cpu"].append(cpu)
            feats = open_cache(cfg, data, ["text"])
            states[p] = feats.gather(torch.arange(len(data.item_ids)))["text"][0].numpy()

            def forward(p: str = p) -> None:
                with torch.no_grad(), autocast(p, "cpu"):
                    for b in batches:
                        encoder(b)

            wall, cpu, _ = timed(forward)
            res[p]["fwd"].append(wall)
            res[p]["fwd_cpu"].append(cpu)
            dtype = compute_dtype(p, "cpu")  # no rate for emulated bf16 (minutes per 2048² product, no peak)
            res[p]["peak"].append(float("nan") if dtype == torch.bfloat16 and not cpu_has_bf16()
                                  else matmul_rate(dtype))
            print(f"round {r + 1} {p}: build {res[p]['build'][-1]:.1f} s, forward {res[p]['fwd'][-1]:.1f} s", flush=True)
    n = len(records)
    rows = []
    for p in precisions:
        best = min(range(args.rounds), key=lambda i: res[p]["build"][i])
        fbest = min(range(args.rounds), key=lambda i: res[p]["fwd"][i])
        peak = max(res[p]["peak"])
        fwd_rate = n / res[p]["fwd"][fbest]
        rows.append({"precision": p, "compute_dtype": str(compute_dtype(p, "cpu") or torch.float32).replace("torch.", ""),
                     "build_items_per_s": round(n / res[p]["build"][best], 2),
                     "build_cpu_s_per_item": round(res[p]["build_cpu"][best] / n, 5),
                     "fwd_items_per_s": round(fwd_rate, 2),
                     "fwd_cpu_s_per_item": round(res[p]["fwd_cpu"][fbest] / n, 5),
                     "gflops_per_item": round(flops_item / 1e9, 4),
                     "matmul_peak_gflops": round(peak / 1e9, 1),
                     "fwd_share_of_peak": round(fwd_rate * flops_item / peak, 3),
                     "rounds_build_s": [round(x, 2) for x in res[p]["build"]],
                     "rounds_fwd_s": [round(x, 2) for x in res[p]["fwd"]]})
    agree = {}
    if "fp32" in states and "bf16" in states:
        a, b = states["fp32"][1:], states["bf16"][1:]
        x, y = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
        agree = {"min_cosine": float(cos.min()), "max_abs_diff_over_max_abs": float(np.abs(a - b).max() / np.abs(a).max())}
    meta = {"machine": f"CPU {cpu_description()}, {torch.get_num_threads()} threads",
            "model": encoder.name, "items": n, "batch_size": args.batch_size, "rounds": args.rounds,
            "torch": torch.__version__, "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "fp32_vs_bf16_states": agree}, indent=2))
    print(json.dumps({"meta": meta, "rows": rows, "fp32_vs_bf16_states": agree}, indent=2))
    by = {r["precision"]: r for r in rows}
    if "fp32" in by and "bf16" in by:
        print(f"bf16 / fp32: build {by['bf16']['build_items_per_s'] / by['fp32']['build_items_per_s']:.2f}x, "
              f"forward {by['bf16']['fwd_items_per_s'] / by['fp32']['fwd_items_per_s']:.2f}x")


if __name__ == "__main__":
    main()

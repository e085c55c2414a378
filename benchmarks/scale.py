"""The data pipeline at MicroLens-1M size: reading, the protocol, ``crossan data stats``, an ID-SASRec epoch
and a full-ranking evaluation, on a generated file of 1,000,000 users, 91,402 items and ~10M interactions.

The dataset is generated deterministically (``--seed``) in the IISAN/MicroLens layout: ``users.tsv`` with
one line per user (``user TAB item item …``; ids are integers as in MicroLens) and ``items.tsv`` with a short
title per item. Sequence lengths are 5 + a long-tailed (log-normal) part, mean about 10, at most 2,005;
items are drawn from a Zipf-like popularity (p ∝ rank^-0.9, ranks shuffled over the ids).

Timed, each once:

* ``read``      — :func:`crossan.data.read` (items.tsv + users.tsv) in this process;
* ``protocol``  — :func:`crossan.data.apply_protocol` (filter, last L+3, re-index, leave-one-out);
* ``data stats``— the whole ``crossan data stats --data …`` command in a fresh process (start-up and imports
  included), with its peak resident memory (``getrusage(RUSAGE_CHILDREN)``);
* ``id epoch``  — ID-SASRec training steps (batch 64, the project's model, loss, optimiser and allocator setting:
  ``crossan.trainer.make_optimizer``, ``train.malloc``) over ``--train-steps``
  batches, extrapolated to a full epoch (a full epoch is ~15,600 steps);
* ``evaluation``— strict full-ranking ranks (:func:`crossan.evaluation.rank_split`: every user's test target
  against all items, history masked) over ``--eval-users`` users in batches of ``--eval-batch``,
  extrapolated to all users; memory stays bounded by one batch's [B, N+1] scores.

    python benchmarks/scale.py --out bench_out/scale          # generate (once) + time everything
    python benchmarks/scale.py --out bench_out/scale --skip-model  # data side only
    python benchmarks/scale.py --out bench_out/scale --train-steps 0 --eval-users 0  # a whole epoch and all
                                                     # users, nothing extrapolated (about 20 min, 2-core AVX2 CPU)

Wall seconds and process CPU seconds are both recorded (torch uses up to two threads, so CPU seconds can
exceed wall seconds on an idle machine; on a shared one wall seconds grow with the load, recorded as the
load average before and after).

Writes ``results.json`` and ``results.csv`` into ``--out`` (and, with ``--results NAME``, copies them to
``benchmarks/results/NAME.{json,csv}``) and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from crossan.utils import cpu_description  # torch-free

USERS, ITEMS = 1_000_000, 91_402


def generate(folder: Path, users: int = USERS, items: int = ITEMS, seed: int = 0) -> dict[str, int]:
    """Write users.tsv and items.tsv into ``folder`` (same seed, same bytes). Returns the sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pop = rng.permutation(np.arange(1, items + 1, dtype=np.float64) ** -0.9)
    lengths = 5 + np.minimum(np.floor(np.exp(rng.normal(1.205, 1.0, size=users))).astype(np.int64), 2000)
    seq = rng.choice(items, size=int(lengths.sum()), p=pop / pop.sum()) + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    flat = seq.tolist()
    tmp = folder / "users.tsv.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        for start in range(0, users, 100_000):  # per user line (a generator, not the code under test)
            f.write("".join(f"{u + 1}\t{' '.join(map(str, flat[offsets[u]:offsets[u + 1]]))}\n"
                            for u in range(start, min(users, start + 100_000))))
    tmp.replace(folder / "users.tsv")
    words = ["red", "blue", "quick", "slow", "dance", "cook", "travel", "music", "cat", "city", "night", "sea"]
    (folder / "items.tsv").write_text("".join(
        f"{k}\t{words[k % 12]} {words[(k // 12) % 12]} video {k}\n" for k in range(1, items + 1)), encoding="utf-8")
    sizes = {"users": users, "items": items, "interactions": int(lengths.sum()), "seed": seed}
    (folder / "generated.json").write_text(json.dumps(sizes))
    return sizes


def _ensure_data(folder: Path, users: int, items: int, seed: int) -> tuple[dict[str, int], float]:
    meta = folder / "generated.json"
    if meta.is_file() and (folder / "users.tsv").is_file():
        old = json.loads(meta.read_text())
        if (old.get("seed"), old.get("users"), old.get("items")) == (seed, users, items):
            return old, 0.0
    t0 = time.perf_counter()
    sizes = generate(folder, users, items, seed)
    return sizes, time.perf_counter() - t0


def _time_data_stats(folder: Path) -> tuple[float, float, float, str]:
    """Wall seconds, peak RSS (MiB) and CPU seconds of ``crossan data stats`` in a fresh process, and its
    output."""
    exe = Path(sys.executable).with_name("crossan")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "crossan"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + ["data", "stats", "--data", str(folder)], capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"crossan data stats failed: {proc.stderr.strip()}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # Linux: ru_maxrss in KiB, largest child so far
    return secs, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, proc.stdout


def _model_rows(data, args) -> list[dict]:  # noqa: ANN001 - SequentialData
    import torch

    from crossan.config import load_config
    from crossan.evaluation import mean_metrics, rank_split
    from crossan.recommender import Recommender
    from crossan.towers.base import TowerContext, build_tower
    from crossan.trainer import make_optimizer
    from crossan.utils import configure_malloc

    torch.manual_seed(args.seed)
    cfg = load_config([], ["method=id", f"seed={args.seed}", f"train.batch_size={args.batch_size}"])
    cpu = torch.device("cpu")
    configure_malloc(cfg.train.malloc, cpu)  # as `crossan train` sets it up
    n = data.num_items
    model = Recommender(build_tower(TowerContext(cfg, n, data.item_ids, data.catalogue)), cfg,
                        torch.as_tensor(data.item_counts))
    opt = make_optimizer(model, cfg, cpu)  # the trainer's optimiser (fused Adam over the parameter groups)
    inputs, targets = torch.as_tensor(data.train_inputs), torch.as_tensor(data.train_targets)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(args.seed))
    batches = list(order.split(args.batch_size))
    full_steps = len(batches)
    model.train()
    for idx in batches[:5]:  # warm-up, not timed
        loss = model(inputs[idx], targets[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    steps = batches[5:5 + args.train_steps] if args.train_steps else batches
    t0, c0 = time.perf_counter(), time.process_time()
    for idx in steps:  # the trainer's step: loss, backward, Adam
        loss = model(inputs[idx], targets[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = [{"stage": "id epoch", "seconds": train_s * full_steps / len(steps), "measured_s": train_s,
             "cpu_s": train_cpu * full_steps / len(steps),
             "measured": f"{len(steps)} of {full_steps} steps", "extrapolated": len(steps) < full_steps,
             "peak_rss_mib": None, "loss": float(loss.detach())}]

    model.eval()
    users = data.num_users if not args.eval_users else min(args.eval_users, data.num_users)
    with torch.no_grad():
        table = model.tower.embed_all(args.eval_batch)
        t0, c0 = time.perf_counter(), time.process_time()
        ranks = rank_split(lambda x: model.user_vectors(x, table), table, data.test.inputs[:users],
                           data.test.targets[:users], data.test.history[:users], args.eval_batch, True)
        eval_s, eval_cpu = time.perf_counter() - t0, time.process_time() - c0
    metrics = mean_metrics(ranks, [10])
    score_bytes = args.eval_batch * (n + 1) * 4
    rows.append({"stage": "evaluation (test)", "seconds": eval_s * data.num_users / users, "measured_s": eval_s,
                 "cpu_s": eval_cpu * data.num_users / users,
                 "measured": f"{users:,} of {data.num_users:,} users", "extrapolated": users < data.num_users,
                 "peak_rss_mib": None, "batch_scores_mib": round(score_bytes / 2**20, 1),
                 "HR@10_after_timed_steps": round(metrics["HR@10"], 5)})  # a sanity figure, not a result
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/scale", help="folder for the generated data and the results")
    ap.add_argument("--data", help="dataset folder to use instead of generating one under --out/data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--users", type=int, default=USERS, help="generated users (default MicroLens-1M's)")
    ap.add_argument("--items", type=int, default=ITEMS)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=300, help="timed training steps (0: a full epoch)")
    ap.add_argument("--eval-users", type=int, default=20_000, help="users ranked (0: all)")
    ap.add_argument("--eval-batch", type=int, default=512)
    ap.add_argument("--skip-model", action="store_true", help="time only reading, protocol and data stats")
    ap.add_argument("--state", default="shared", help="'idle' or 'shared': recorded with the results")
    ap.add_argument("--results", help="also copy the results to benchmarks/results/NAME.{json,csv}")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(args.data) if args.data else out / "data"
    sizes, gen_s = (json.loads((folder / "generated.json").read_text()), 0.0) if args.data else \
        _ensure_data(folder, args.users, args.items, args.seed)
    if gen_s:
        print(f"generated {sizes['users']:,} users, {sizes['items']:,} items, {sizes['interactions']:,} "
              f"interactions in {gen_s:.1f} s → {folder}", flush=True)

    rows: list[dict] = []
    load_before = os.getloadavg()
    secs, rss, cpu, stats_out = _time_data_stats(folder)  # first: the only child, so its peak is its own
    rows.append({"stage": "crossan data stats", "seconds": secs, "measured_s": secs, "cpu_s": cpu,
                 "measured": "whole command",
                 "extrapolated": False, "peak_rss_mib": round(rss, 1)})
    print(stats_out, flush=True)

    from crossan.config import DataConfig
    from crossan.data import apply_protocol, read

    cfg = DataConfig(path=str(folder))
    t0, c0 = time.perf_counter(), time.process_time()
    raw = read(cfg)
    t1, c1 = time.perf_counter(), time.process_time()
    data = apply_protocol(raw, cfg, root=folder)
    t2, c2 = time.perf_counter(), time.process_time()
    del raw
    rows.insert(0, {"stage": "read (items.tsv + users.tsv)", "seconds": t1 - t0, "measured_s": t1 - t0,
                    "cpu_s": c1 - c0, "measured": "in process", "extrapolated": False, "peak_rss_mib": None})
    rows.insert(1, {"stage": "protocol", "seconds": t2 - t1, "measured_s": t2 - t1, "cpu_s": c2 - c1,
                    "measured": "in process", "extrapolated": False, "peak_rss_mib": None})
    if not args.skip_model:
        import torch

        rows += _model_rows(data, args)
        threads = torch.get_num_threads()
        torch_version = torch.__version__
    else:
        threads, torch_version = os.cpu_count(), None
    meta = {"machine": f"CPU {cpu_description()}, {platform.system()}",
            "python": platform.python_version(), "torch": torch_version, "threads": threads,
            "state": args.state, "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "users": sizes["users"], "items": sizes["items"], "interactions": sizes["interactions"],
            "users_after_protocol": data.num_users, "items_after_protocol": data.num_items,
            "process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    for r in rows:
        for key in ("seconds", "measured_s", "cpu_s"):
            r[key] = round(r[key], 2)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    fields = ["stage", "seconds", "cpu_s", "measured_s", "measured", "extrapolated", "peak_rss_mib"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    if args.results:
        dest = Path(__file__).resolve().parent / "results"
        dest.mkdir(exist_ok=True)
        (dest / f"{args.results}.json").write_text((out / "results.json").read_text())
        (dest / f"{args.results}.csv").write_text((out / "results.csv").read_text())
    print(f"\n{meta['machine']}, {meta['state']} machine, {meta['date']}; {sizes['users']:,} users, "
          f"{sizes['items']:,} items, {sizes['interactions']:,} interactions")
    print(f"load average before/after: {meta['load_average_before']} / {meta['load_average_after']}")
    print(f"{'stage':30} {'wall s':>9} {'CPU s':>9} {'peak RSS MiB':>13}  measured")
    for r in rows:
        rss_s = f"{r['peak_rss_mib']:,.0f}" if r["peak_rss_mib"] else ""
        note = r["measured"] + (" (extrapolated)" if r["extrapolated"] else "")
        print(f"{r['stage']:30} {r['seconds']:>9.2f} {r['cpu_s']:>9.2f} {rss_s:>13}  {note}")


if __name__ == "__main__":
    main()

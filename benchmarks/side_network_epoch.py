"""Time one training epoch of cached CROSSAN against cached IISAN at paper sizes, on any device.

The side networks never run a backbone, so their cost depends only on the cache's shape (items, taps K,
width D per modality) and on the interactions — not on what the states hold. This script therefore builds a
random fp16 layer-state cache of the paper's shape (D = 768, K = 7) and a synthetic interaction set of
MicroLens-100K's size, keeps the cache on the device, and times one epoch of each method with the project's
own trainer step (``crossan.trainer.train_epoch``), each in a process of its own (see below).

Memory, per method: the model's and optimiser's state (parameters, buffers, Adam moments) plus the peak of
what its training steps allocate on top (activations, gradients, temporaries); the cache is added
separately. On CUDA the step peak is ``torch.cuda.max_memory_allocated`` over the method's timed steps minus
what was allocated before them (with ``--process shared`` every model stays resident, so the others' state is
not counted). On CPU,
where torch keeps no such counter, it is rebuilt from the allocator's events over ``--memory-steps`` steps,
followed with ``torch.profiler`` (see ``crossan.utils.cpu_allocation_peak``).

The interactions: MicroLens-100K's size (``--users`` 100,000, ``--items`` 19,738, ``--per-user`` 7.19
interactions on average: 5 plus a Poisson draw, from a long-tailed popularity).
(Process RSS is no use here: it is dominated by the libraries and never returns freed pages.)

    python benchmarks/side_network_epoch.py --device cuda --out bench_out/gpu
    python benchmarks/side_network_epoch.py --device cpu --users 4000 --items 2000 --out bench_out/cpu
    python benchmarks/side_network_epoch.py --device cpu --max-steps 30 --rounds 3 --precision fp32,bf16

Each (method, M, precision) model is timed in a process of its own (see "Why one process per model" below),
one after the other: it is built, warmed up, then timed over ``--rounds`` rounds of ``--max-steps`` steps,
and its time is its fastest round (the least disturbed by other jobs). The load average before and after
and the process's CPU time are recorded with the wall times. ``--profile N`` writes a ``torch.profiler``
table of N steps per model (sorted by self CPU time) to ``profile_<method>_M<M>_<precision>.txt`` (in the
model's folder ``<method>_M<M>_<precision>``; directly under ``--out`` with ``--process shared``).

``train.compile`` (default ``auto``) resolves as the trainer resolves it for a run on this data
(``crossan.trainer.resolve_compile``): on a CPU with a C++ compiler, at MicroLens-100K's size, the side
networks train compiled (column ``compiled``); ``--set train.compile=false`` times them eager. ``warm-up s``
is each model's untimed steps before the rounds (``--warmup-steps``, default 200), where the compilation
happens (once per process and graph: the first model of a method pays most of it).

Why 200 warm-up steps: in bf16 on a CPU, oneDNN builds a kernel for every new matmul shape (about 1 ms each)
and keeps it in a cache (1,024 kernels by default, ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``). The side networks'
shapes follow U, the number of distinct items in a batch, which varies from batch to batch (66 values over the
1,563 batches here, 159–323; CROSSAN M = 2 builds about 13 kernels per value). A step that meets a new U ran
about 13 ms slower (44 against 31 ms, AMX CPU). An epoch meets its 66 values once (4.2% of its steps); 60 steps
timed after 5 warm-up steps met 25 (42%) and overstated the epoch. After 200 warm-up steps, 4 of the next 60
meet a new U (7%; after 100, 7 of 60). ``--max-steps 0`` (a full epoch) after the warm-up is like a later epoch
of a run, which meets fewer new shapes than its first.

Why one process per model (``--process per-model``, the default): a training run trains one model in its
process. Timed in one process after the others had warmed up for 100 steps, CROSSAN M = 2 read 64.0 s with the
kernel cache raised to 4,096 and 80.8 s with the default one, against 54.9–55.2 s timed in a process of its own
the same way (docs/results.md §3x); the kernels the others had built evicted some of its own, and the rest of
the slowdown was not pinned down. So each model is timed in a fresh process of its own, one after the other
(the load averages and matmul probes of each are in results.json, ``per_model``): CROSSAN and IISAN no longer
share every round's load, so compare them within one run, beside each one's probes. ``--process shared`` keeps
the older way: every model in one process, the rounds taking turns, the oneDNN cache raised to 4,096 kernels
unless the environment sets it (several models need several thousand).

Precision (``--precision``, the run config's ``precision`` key, :mod:`crossan.precision`): the same
model is timed under each listed setting; ``auto`` is bf16 where the hardware has it. On a CPU, compare
precisions in separate processes (one ``--precision`` each): on a Zen 5 with AVX-512 BF16, bf16 models timed
in a process that also trains fp32 ones ran 2.5 times slower, on one core's worth of CPU time
(docs/results.md §3m).

The matmul floor (``--flops-steps N``, default 8): ``torch.utils.flop_counter.FlopCounterMode`` counts the
matrix-product FLOPs of N training steps, forward and backward, and the machine's matmul rate in the step's
compute dtype is measured on 2048² products (``crossan.utils.matmul_rate``, ``--probe-size``) just before the
timed rounds. ``floor s/epoch`` is an epoch's
FLOPs at that rate — what the epoch would take if nothing but its matrix products cost time — and ``share``
is floor / measured. Whether a time target can be met on a machine is read there: a target below the floor
cannot be met in that dtype on that machine, whatever the rest of the step does. (Not computed for bf16 on
a CPU without bf16 units, where 2048² bf16 products take a slow reference path that the step's smaller
ones do not.) The machine line names the CPU's widest vector unit (``crossan.utils.cpu_description``); CPUs
with and without bf16 units (AMX-BF16, AVX-512 BF16) differ several-fold.

The host's speed: that matmul rate is measured before the timed rounds and again after them, whatever
``--flops-steps`` (``matmul_gflops_before`` / ``_after`` in results.json; in float32 where bf16 is emulated).
A virtual machine's load average shows only its own jobs; on the project's Zen 4 guests the same command ran
1.2–1.5 times slower hours apart, with the bf16 rate 338–374 against 406 GFLOP/s (docs/results.md §3p–§3q), so
figures from different runs compare only beside their probes.

Quality is not measured here (random states); see ``crossan bench`` for quality and cost side by side.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from crossan.cache.features import TensorFeatures
from crossan.config import Config, load_config
from crossan.data.catalogue import Catalogue, ItemRecord
from crossan.data.protocol import SequentialData, apply_protocol
from crossan.data.readers import RawData
from crossan.precision import compute_dtype, cpu_has_bf16, dtype_name
from crossan.recommender import Recommender
from crossan.towers.base import TowerContext, build_tower
from crossan.towers.content import ContentTower
from crossan.trainer import _batches, _num_batches, make_optimizer, param_groups, resolve_compile, train_epoch
from crossan.utils import (
    configure_malloc,
    count_params,
    cpu_allocation_peak,
    cpu_description,
    matmul_rate,
    state_bytes,
)

MODS = ["text", "image", "video", "audio"]


MICROLENS_100K_PER_USER = 719_405 / 100_000
"""MicroLens-100K's interactions per user (METHOD.md: 100,000 users, 19,738 items, 719,405 interactions)."""


def synthetic_sequences(users: int, items: int, seed: int, per_user: float = MICROLENS_100K_PER_USER) -> RawData:
    """``users`` sequences of at least 5 items (MicroLens's 5-core) and ``per_user`` items on average (5 plus
    a Poisson draw), drawn from a long-tailed popularity over ``items`` items."""
    if per_user < 5:
        raise ValueError(f"--per-user {per_user}: sequences have at least 5 items")
    rng = np.random.default_rng(seed)
    pop = rng.permutation(np.arange(1, items + 1) ** -0.8)  # a long-tailed popularity
    p = pop / pop.sum()
    lengths = 5 + rng.poisson(per_user - 5, size=users)
    seqs = {f"u{u}": [f"i{k}" for k in rng.choice(items, size=n, p=p)] for u, n in enumerate(lengths)}
    cat = Catalogue(Path("."), (ItemRecord(f"i{k}", f"item {k}") for k in range(items)))
    return RawData(seqs, cat)


def random_cache(items: int, modalities: list[str], taps: int, width: int, seed: int,
                 device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A random fp16 layer-state cache [items + 1, taps, width] per modality (row 0 the padding, absent) and
    its presence masks: the side networks' cost depends on the cache's shape only, not on what it holds."""
    g = torch.Generator().manual_seed(seed)
    states = {m: (torch.randn(items + 1, taps, width, generator=g) * 0.5).half().to(device) for m in modalities}
    present = {m: torch.ones(items + 1, dtype=torch.bool, device=device) for m in modalities}
    for m in modalities:
        present[m][0] = False
    return states, present


def probe_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype whose matmul rate stands for the host's speed under ``precision``: the compute dtype, or
    float32 where bf16 is emulated (a CPU without bf16 units, whose 2048² bf16 products take a slow path)."""
    dtype = compute_dtype(precision, device)
    if dtype is None or (dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_bf16()):
        return torch.float32
    return dtype


def bench_model(cfg: Config, data: SequentialData, states: dict[str, torch.Tensor],
                present: dict[str, torch.Tensor], device: torch.device, seed: int) -> Recommender:
    """The Recommender of ``cfg`` over ``data``, its tower reading the random cache (``cfg.modalities`` of
    ``states`` / ``present``), initialised from ``seed``, on ``device``."""
    torch.manual_seed(seed)
    feats = TensorFeatures({m: states[m] for m in cfg.modalities}, {m: present[m] for m in cfg.modalities})
    ctx = TowerContext(cfg, data.num_items, data.item_ids, data.catalogue, features=feats, device=device)
    model = Recommender(build_tower(ctx), cfg, torch.as_tensor(data.item_counts)).to(device)
    resolve_compile(cfg, data, model, device)  # train.compile=auto as the trainer resolves it for this data
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=19_738)
    ap.add_argument("--per-user", type=float, default=MICROLENS_100K_PER_USER,
                    help="mean interactions per user (default: MicroLens-100K's 7.19; before 2026-12-01 the "
                         "sequences had 5-13 items, 9.0 on average)")
    ap.add_argument("--width", type=int, default=768, help="D of every modality's states")
    ap.add_argument("--taps", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--modality-counts", default="2,4")
    ap.add_argument("--methods", default="crossan,iisan")
    ap.add_argument("--precision", default="auto", help="comma-separated settings of `precision` to time")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every model")
    ap.add_argument("--max-steps", type=int, default=0, help="cap steps per round (0: full epoch)")
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds per model; the fastest counts")
    ap.add_argument("--warmup-steps", type=int, default=200,
                    help="untimed steps per model before the rounds (compilation, and oneDNN's kernels for the "
                         "batches' shapes: see above)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--adam", choices=["trainer", "loop"], default="trainer",
                    help="trainer: Adam as crossan.trainer builds it (fused on CPU and CUDA); loop: the for-loop "
                         "implementation, for comparison")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="profile N steps per model")
    ap.add_argument("--cache-on", choices=["device", "host"], default="device",
                    help="where the cache lives on CUDA (host: only each batch's rows go to the GPU)")
    ap.add_argument("--memory-steps", type=int, default=3, help="CPU: steps followed for peak memory")
    ap.add_argument("--flops-steps", type=int, default=8,
                    help="steps whose matmul FLOPs are counted (0: skip the count and the matmul floor)")
    ap.add_argument("--probe-size", type=int, default=2048,
                    help="side of the square matmuls that measure the host's speed before and after the timed "
                         "rounds (and the rate of the matmul floor)")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--process", choices=["per-model", "shared"], default="per-model",
                    help="per-model: time each model in a process of its own, as a training run is (see above); "
                         "shared: every model in this process, the rounds taking turns")
    ap.add_argument("--out", default="bench_out/side_network_epoch")
    args = ap.parse_args()
    if args.warmup_steps < 0:
        ap.error("--warmup-steps must be 0 or more")
    if any(kv.split("=", 1)[0].strip() == "train.batch_size" for kv in args.set):
        ap.error("set the batch with --batch-size, not --set train.batch_size=…")
    models = [(p, int(M), method) for p in args.precision.split(",") for M in args.modality_counts.split(",")
              for method in args.methods.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.process == "per-model" and len(models) > 1:
        for model_key in models:  # an unknown method or key fails here, before any model is timed
            model_config(args, *model_key)
        return per_model(models, out)
    if len(models) > 1:  # read by oneDNN when it builds its first kernel, after this (see the module docstring)
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "4096")
    if "," in args.precision and args.device == "cpu":
        print("note: several precisions in one CPU process; bf16 models ran 2.5x slower beside fp32 ones on a "
              "Zen 5 (docs/results.md §3m): for times, use --process per-model", flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()

    base = load_config([], [f"train.batch_size={args.batch_size}", f"seed={args.seed}", *args.set])
    malloc = configure_malloc(base.train.malloc, device)  # as training would (process-wide)
    raw = synthetic_sequences(args.users, args.items, args.seed, args.per_user)
    interactions = sum(len(v) for v in raw.sequences.values())
    data = apply_protocol(raw, base.data, name="synthetic")
    n = data.num_items
    home = device if args.cache_on == "device" else torch.device("cpu")
    states, present = random_cache(n, MODS, args.taps, args.width, args.seed, home)
    cache_bytes = {m: states[m].numel() * 2 for m in MODS}
    inputs, targets = torch.as_tensor(data.train_inputs), torch.as_tensor(data.train_targets)
    full = _num_batches(len(inputs), args.batch_size)
    all_batches = _batches(len(inputs), args.batch_size, args.seed, 1)
    steps = min(args.max_steps or len(all_batches), len(all_batches))  # the steps each round really runs
    warmup = min(args.warmup_steps, len(all_batches))

    runs = []  # every (precision, M, method) model, built and warmed up before any timing
    for precision, M, method in models:
        cfg = model_config(args, precision, M, method)
        model = bench_model(cfg, data, states, present, device, args.seed)
        opt = (make_optimizer(model, cfg, device) if args.adam == "trainer"
               else torch.optim.Adam(param_groups(model, cfg), foreach=False))
        model.train()
        clip = cfg.train.grad_clip  # the trainer's step: clipped when the config says so
        t0 = time.perf_counter()  # warm-up, where train.compile compiles (once per process)
        train_epoch(model, opt, all_batches[:warmup], inputs, targets, device, clip, progress=False)
        runs.append({"method": method, "modalities": M, "precision": precision, "model": model, "opt": opt,
                     "warmup_s": time.perf_counter() - t0,
                     "grad_clip": clip,
                     "times": [], "cpu_times": [], "losses": []})

    # the host's speed around the timed rounds: a guest's load average does not show a busy host, and the same
    # command has run 1.2-1.5 times slower hours apart on one CPU model (docs/results.md §3p-§3q)
    probes = sorted({probe_dtype(p, device) for p in args.precision.split(",")}, key=str)
    rates = {d: matmul_rate(d, device, size=args.probe_size) for d in probes}  # matmul FLOP/s per dtype
    for r in range(args.rounds):  # with --process shared the models take turns: CROSSAN and IISAN see one load
        lo = (warmup + r * steps) % max(1, len(all_batches) - steps)
        batches = all_batches[lo: lo + steps]
        for run in runs:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                resident = torch.cuda.memory_allocated(device)  # the cache and every model's state
            c0, t0 = time.process_time(), time.perf_counter()
            run["losses"].append(train_epoch(run["model"], run["opt"], batches, inputs, targets, device,
                                             run["grad_clip"], progress=False))
            run["times"].append(time.perf_counter() - t0)
            run["cpu_times"].append(time.process_time() - c0)
            if device.type == "cuda":  # what this model's steps allocated above what was resident before them
                run["cuda_step_peak"] = max(run.get("cuda_step_peak", 0),
                                            torch.cuda.max_memory_allocated(device) - resident)
            print(f"round {r + 1}: {run['method']} M={run['modalities']} {run['precision']}: "
                  f"{run['times'][-1] / len(batches) * 1e3:.1f} ms/step", flush=True)
    load_after = os.getloadavg()
    rates_after = {d: matmul_rate(d, device, size=args.probe_size) for d in probes}

    rows = []
    for run in runs:
        model, opt, M = run["model"], run["opt"], run["modalities"]
        mods = MODS[:M]
        trainable, total = count_params(model)
        best = min(range(args.rounds), key=lambda i: run["times"][i])
        epoch_s = run["times"][best] * full / steps
        used_cache = sum(cache_bytes[m] for m in mods)
        if device.type == "cuda":  # every model stays on the GPU, so count this model's state, not the others'
            before = state_bytes(model, opt)
            peak_above_cache = before + run["cuda_step_peak"]
            peak = (used_cache if home.type == "cuda" else 0) + peak_above_cache
            kind = "cuda_state_plus_step_max_memory_allocated"
        else:
            extra = all_batches[: args.memory_steps]
            step_peak = cpu_allocation_peak(
                partial(train_epoch, model, opt, extra, inputs, targets, device, run["grad_clip"], progress=False))
            before = state_bytes(model, opt)
            peak_above_cache = before + step_peak
            peak, kind = used_cache + peak_above_cache, "cpu_state_plus_step_allocation_peak"
        if args.profile:
            write_profile(out / f"profile_{run['method']}_M{M}_{run['precision']}.txt", model, opt,
                          all_batches[: args.profile], inputs, targets, device, run["grad_clip"])
        dtype = compute_dtype(run["precision"], device)
        floor: dict[str, float] = {}
        emulated = device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_bf16()
        if args.flops_steps and not emulated:  # emulated bf16 (no bf16 units): 2048² products take a slow
            # reference path that the step's smaller products do not, so their rate would be no floor
            flops = step_flops(model, opt, all_batches[: args.flops_steps], inputs, targets, device)
            rate = rates[probe_dtype(run["precision"], device)]
            floor = {"gflop_per_step": round(flops / 1e9, 3), "matmul_gflops": round(rate / 1e9, 1),
                     "matmul_floor_s_per_epoch": round(flops * full / rate, 2),
                     "share_of_matmul_peak": round(flops * full / rate / epoch_s, 3)}
        rows.append({"method": run["method"], "modalities": M, "precision": run["precision"],
                     "compute_dtype": dtype_name(dtype),
                     "trainable_params": trainable, "total_params": total,
                     "steps": steps, "rounds": args.rounds, "full_epoch_steps": full,
                     "time_per_epoch_s": round(epoch_s, 3),
                     "round_times_per_epoch_s": [round(t * full / steps, 2) for t in run["times"]],
                     "cpu_time_per_epoch_s": round(run["cpu_times"][best] * full / steps, 3),
                     "warmup_s": round(run["warmup_s"], 2),
                     "compiled": isinstance(model.tower, ContentTower) and model.tower.compiled_on(device),
                     "peak_memory_bytes": int(peak), "peak_minus_cache_bytes": int(peak_above_cache),
                     "allocated_before_epoch_bytes": int(before), "memory_kind": kind,
                     "loss": round(run["losses"][best], 4), **floor})
        print(json.dumps(rows[-1]), flush=True)
    ratios = crossan_iisan_ratios(rows)
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"CPU {cpu_description()}, {torch.get_num_threads()} threads")
    meta = {"machine": machine, "torch": torch.__version__, "users": data.num_users, "items": n,
            "interactions": interactions, "per_user": round(interactions / max(1, args.users), 3),
            "width": args.width, "taps": args.taps, "batch_size": args.batch_size, "cache_on": args.cache_on,
            "overrides": args.set, "adam": args.adam, "memory_steps": args.memory_steps, "warmup_steps": warmup,
            "malloc": malloc,
            "onednn_primitive_cache_capacity": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"),
            "cache_bytes_per_modality": cache_bytes["text"],
            "process": args.process if len(models) == 1 else "shared",
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "probe_size": args.probe_size,
            "matmul_gflops_before": {dtype_name(d): round(v / 1e9, 1) for d, v in rates.items()},
            "matmul_gflops_after": {dtype_name(d): round(v / 1e9, 1) for d, v in rates_after.items()},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    report(out, rows, ratios, meta)


def model_config(args: argparse.Namespace, precision: str, M: int, method: str) -> Config:
    """The run config of one timed model: ``method`` on the first ``M`` modalities under ``precision``."""
    return load_config([], [f"method={method}", f"modalities=[{','.join(MODS[:M])}]", f"precision={precision}",
                            f"train.batch_size={args.batch_size}", f"seed={args.seed}", *args.set])


def crossan_iisan_ratios(rows: list[dict]) -> list[dict]:
    """CROSSAN / IISAN at each M and precision."""
    ratios = []
    for precision in dict.fromkeys(r["precision"] for r in rows):
        for M in sorted({r["modalities"] for r in rows}):
            pick = {r["method"]: r for r in rows if r["modalities"] == M and r["precision"] == precision}
            c, i = pick.get("crossan"), pick.get("iisan")
            if c and i:
                ratios.append({"modalities": M, "precision": precision,
                               "trainable_params_ratio": round(c["trainable_params"] / i["trainable_params"], 3),
                               "time_per_epoch_ratio": round(c["time_per_epoch_s"] / i["time_per_epoch_s"], 3),
                               "peak_memory_ratio": round(c["peak_memory_bytes"] / i["peak_memory_bytes"], 3),
                               "peak_minus_cache_ratio": round(c["peak_minus_cache_bytes"] / i["peak_minus_cache_bytes"], 3)})
    return ratios


def per_model(models: list[tuple[str, int, str]], out: Path) -> None:
    """``--process per-model``: this script again for each model, one after the other, each in a process of
    its own (the same command with that one model, writing under ``out/<method>_M<M>_<precision>``); their
    rows are gathered here, with the ratios."""
    import subprocess
    import sys

    load_before = os.getloadavg()
    rows, metas = [], []
    for precision, M, method in models:
        sub = out / f"{method}_M{M}_{precision}"
        cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--process", "per-model",
               "--methods", method, "--modality-counts", str(M), "--precision", precision, "--out", str(sub)]
        print(f"== {method} M={M} {precision}, in a process of its own", flush=True)
        subprocess.run(cmd, check=True)
        child = json.loads((sub / "results.json").read_text())
        rows += child["rows"]
        metas.append(child["meta"])
    before: dict[str, float] = {}  # each dtype's first probe before its rounds, and its last after them
    after: dict[str, float] = {}
    for m in metas:
        for d, v in m["matmul_gflops_before"].items():
            before.setdefault(d, v)
        after.update(m["matmul_gflops_after"])
    meta = {**metas[0], "process": "per-model",
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "matmul_gflops_before": before, "matmul_gflops_after": after,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "per_model": [{"method": r["method"], "modalities": r["modalities"], "precision": r["precision"],
                           **{k: m[k] for k in ("load_average_before", "load_average_after",
                                                "matmul_gflops_before", "matmul_gflops_after", "date")}}
                          for r, m in zip(rows, metas)]}
    report(out, rows, crossan_iisan_ratios(rows), meta)


def report(out: Path, rows: list[dict], ratios: list[dict], meta: dict) -> None:
    """Write results.json and results.csv under ``out`` and print the table."""
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "ratios": ratios}, indent=2))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    load_before, load_after = meta["load_average_before"], meta["load_average_after"]
    print(f"\nmachine: {meta['machine']}; {meta['users']:,} users, {meta['items']:,} items, D={meta['width']}, "
          f"K={meta['taps']}, batch {meta['batch_size']}; malloc {meta['malloc']}; {meta['process']} process; "
          f"warm-up {meta['warmup_steps']} steps; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{'method':8} {'M':>2} {'precision':>9} {'trainable':>12} {'s/epoch':>9} {'cpu s/epoch':>12} "
          f"{'compiled':>8} {'warm-up s':>10} {'peak MiB':>10} {'peak-cache MiB':>15} {'GFLOP/step':>11} {'floor s/epoch':>14} {'share':>6}")
    for r in rows:
        print(f"{r['method']:8} {r['modalities']:>2} {r['precision']:>9} {r['trainable_params']:>12,} "
              f"{r['time_per_epoch_s']:>9.2f} {r['cpu_time_per_epoch_s']:>12.2f} "
              f"{'yes' if r['compiled'] else 'no':>8} {r['warmup_s']:>10.2f} "
              f"{r['peak_memory_bytes'] / 2**20:>10.1f} {r['peak_minus_cache_bytes'] / 2**20:>15.1f} "
              + (f"{r['gflop_per_step']:>11.2f} {r['matmul_floor_s_per_epoch']:>14.1f} "
                 f"{r['share_of_matmul_peak']:>6.0%}" if "gflop_per_step" in r else ""))
    before, after = meta["matmul_gflops_before"], meta["matmul_gflops_after"]
    named = (f"{d} {v:.1f} before the timed rounds, {after[d]:.1f} after" for d, v in before.items())
    print(f"matmul rate of this machine ({meta['probe_size']}² products), GFLOP/s: {'; '.join(named)}"
          + ("; floor = an epoch's matmul FLOPs at the rate before (nothing else costs time), share = floor / "
             "s/epoch" if any("gflop_per_step" in r for r in rows) else ""))
    for r in ratios:
        print(f"CROSSAN/IISAN at M={r['modalities']} ({r['precision']}): params {r['trainable_params_ratio']}, time "
              f"{r['time_per_epoch_ratio']}, peak memory {r['peak_memory_ratio']} "
              f"(above the cache: {r['peak_minus_cache_ratio']})")


def step_flops(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor],
               inputs: torch.Tensor, targets: torch.Tensor, device: torch.device) -> float:
    """Matrix-product FLOPs of one training step (forward and backward), averaged over ``batches``: what
    ``torch.utils.flop_counter.FlopCounterMode`` counts (mm, bmm, addmm, baddbmm, attention, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_epoch(model, opt, batches, inputs, targets, device, progress=False)
    return counter.get_total_flops() / len(batches)


def write_profile(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor],
                  inputs: torch.Tensor, targets: torch.Tensor, device: torch.device, grad_clip: float = 0.0) -> None:
    """A ``torch.profiler`` table of the training steps over ``batches`` (ops by self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_epoch(model, opt, batches, inputs, targets, device, grad_clip, progress=False)
    path.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))


if __name__ == "__main__":
    main()

"""Where a training step waits for the device: the operations of CROSSAN's and IISAN's step that read tensor
data back to the host, counted per source line over a few steps.

On a GPU every such read (``.item()``, ``bool(t)``, ``nonzero``, ``unique``, a boolean mask, ``bincount``)
waits until the device has run everything queued before it, so the host cannot queue the step's next
kernels meanwhile. On CUDA the count comes from ``torch.cuda.set_sync_debug_mode("warn")``, which warns at
each synchronising call (the warning names the Python line); elsewhere from a dispatch mode that lists the
aten operations that read data back (on a CPU they cost nothing, and the CPU branches of the step differ:
a stand-in only). Same models and random cache as ``side_network_epoch.py``, at a small catalogue (the
count does not depend on sizes).

    python benchmarks/step_syncs.py --device cuda --out bench_out/syncs

A line read back once per step shows ``--steps`` times; ``train_epoch`` reads the loss back once per call.
What is inherent to a step: ``unique`` over the batch's items (its size), whether padding is among them,
and the valid positions of the loss (their count).
"""

from __future__ import annotations

import argparse
import json
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from side_network_epoch import MODS, bench_model, random_cache, synthetic_sequences
from torch.utils._python_dispatch import TorchDispatchMode

from crossan.config import load_config
from crossan.data.protocol import apply_protocol
from crossan.trainer import _batches, make_optimizer, train_epoch

HOST_READING_OPS = frozenset({"_local_scalar_dense", "nonzero", "bincount", "_unique2", "unique_dim",
                              "unique_consecutive", "masked_select", "equal", "is_nonzero"})
"""aten operations that read tensor data back to the host (the stand-in off CUDA)."""


def _caller() -> str:
    """The innermost crossan line of the Python stack (``file:line``), else the innermost line outside torch."""
    frames = [f for f in traceback.extract_stack()[:-2]
              if "/torch/" not in f.filename and Path(f.filename).name != "warnings.py"]
    ours = [f for f in frames if "/crossan/" in f.filename] or frames
    f = ours[-1]
    return f"{'/'.join(Path(f.filename).parts[-2:])}:{f.lineno}"


class _HostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.where: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.overloadpacket.__name__
        masked = name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                         for i in (args[1] or []))
        if name in HOST_READING_OPS or masked:
            self.where[f"{_caller()} ({name})"] += 1
        return func(*args, **(kwargs or {}))


def count_reads(step: Callable[[], object], device: torch.device) -> Counter[str]:
    """``step()``'s reads back to the host, per source line."""
    if device.type != "cuda":
        with _HostReads() as reads:
            step()
        return reads.where
    where: Counter[str] = Counter()

    def note(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        # filed where the warning is issued, by the crossan line on the stack: the warning itself names the
        # innermost Python frame, often torch's own wrapper (torch.unique's in torch/functional.py)
        if "synchroniz" in str(message):
            where[_caller()] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = note
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return where


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default="crossan,iisan")
    ap.add_argument("--modalities", type=int, default=2)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--taps", type=int, default=7)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--out", default="bench_out/step_syncs")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    mods = MODS[: args.modalities]
    base = load_config([], ["train.batch_size=64", f"seed={args.seed}"])
    data = apply_protocol(synthetic_sequences(args.users, args.items, args.seed), base.data, name="synthetic")
    states, present = random_cache(data.num_items, mods, args.taps, args.width, args.seed, device)
    inputs, targets = torch.as_tensor(data.train_inputs), torch.as_tensor(data.train_targets)
    batches = _batches(len(inputs), 64, args.seed, 1)
    rows = []
    for method in args.methods.split(","):
        cfg = load_config([], [f"method={method}", f"modalities=[{','.join(mods)}]", f"precision={args.precision}",
                               "train.batch_size=64", f"seed={args.seed}"])
        model = bench_model(cfg, data, states, present, device, args.seed).train()
        opt = make_optimizer(model, cfg, device)
        train_epoch(model, opt, batches[:2], inputs, targets, device, progress=False)  # warm-up
        steps = batches[2: 2 + args.steps]
        step = partial(train_epoch, model, opt, steps, inputs, targets, device, progress=False)
        where = count_reads(step, device)
        rows.append({"method": method, "modalities": args.modalities, "precision": args.precision,
                     "steps": len(steps), "reads": sum(where.values()),
                     "reads_per_step": round(sum(where.values()) / len(steps), 2),
                     "where": dict(where.most_common())})
        print(f"{method} M={args.modalities} on {device}: {sum(where.values())} reads back in {len(steps)} steps")
        for line, n in where.most_common():
            print(f"    {n:4d}  {line}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "mode": "cuda sync debug" if device.type == "cuda" else "aten host reads"}
    (out / "step_syncs.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Time the training loss alone under each in-batch candidate set, forward and backward.

``train.negatives`` chooses the candidates of the in-batch softmax: ``unique`` (each distinct item of the batch
once) or ``slots`` (every slot of the batch, as IISAN's official code; the default). crossan computes ``slots``
over the unique items with a log-count term per item (:func:`crossan.recommender.slots_softmax_loss`); this
script also times the direct per-slot form (a [B, L, B·(L+1)] logit matrix, written here as the reference) so
the saving is measured, not assumed. Windows are drawn from a long-tailed popularity over MicroLens-100K's
19,738 items, batch 64, L = 10, d = 64 (the user encoder's width), float32 as the trainer computes the loss.

    python benchmarks/loss_candidates.py --threads 1,2 --out bench_out/loss_candidates

Every form is timed in alternating rounds (``--rounds``); each round runs ``--steps`` forward + backward passes
after a warm-up, and the table gives the median round and the ratio to ``unique``. Writes ``results.json`` and
``results.csv`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from crossan.recommender import inbatch_softmax_loss, slots_softmax_loss
from crossan.utils import cpu_description


def per_slot_loss(states: torch.Tensor, cand_emb: torch.Tensor, cand_rows: torch.Tensor, slots: torch.Tensor,
                  valid: torch.Tensor, log_pop: torch.Tensor) -> torch.Tensor:
    """The slots loss over all B·(L + 1) slot columns (same value as ``slots_softmax_loss``)."""
    B, S = slots.shape
    flat = slots.reshape(-1)
    logits = states @ cand_emb[flat].T - log_pop[flat]
    own = torch.zeros(B, len(cand_rows), dtype=torch.bool)
    own.scatter_(1, slots, True)
    target = torch.arange(B)[:, None] * S + torch.arange(1, S)
    mask = own[:, flat][:, None, :] & (torch.arange(B * S) != target[..., None])
    mask |= cand_rows[flat] == 0
    return F.cross_entropy(logits.masked_fill(mask, -torch.inf)[valid], target[valid])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=10)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--items", type=int, default=19_738)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_out/loss_candidates")
    args = ap.parse_args()

    B, L, d, N = args.batch_size, args.seq_len, args.dim, args.items
    g = torch.Generator().manual_seed(args.seed)
    pop = 1.0 / torch.arange(1, N + 1, dtype=torch.float64) ** 0.8
    seq = torch.multinomial(pop, B * (L + 1), replacement=True, generator=g).view(B, L + 1) + 1
    seq[: B // 8, : L // 3] = 0  # some left padding
    inputs = seq[:, :-1]
    targets = torch.where(inputs > 0, seq[:, 1:], 0)
    uniq, inv = torch.unique(torch.cat([inputs, targets], 1), return_inverse=True)
    slots = torch.cat([inv[:, :L], inv[:, 2 * L - 1:]], 1)
    valid = targets > 0
    log_pop = torch.randn(N + 1, generator=g)[uniq]
    states0, emb0 = torch.randn(B, L, d, generator=g), torch.randn(len(uniq), d, generator=g)

    forms = {
        "unique": lambda s, e: inbatch_softmax_loss(s, e, uniq, inv[:, :L], inv[:, L:], valid, log_pop),
        "slots": lambda s, e: slots_softmax_loss(s, e, uniq, slots, valid, log_pop),
        "slots-per-slot-form": lambda s, e: per_slot_loss(s, e, uniq, slots, valid, log_pop),
    }
    ref = forms["slots-per-slot-form"](states0, emb0).item()
    assert abs(forms["slots"](states0, emb0).item() - ref) <= 1e-4 * abs(ref)

    def step(fn) -> None:
        s, e = states0.clone().requires_grad_(), emb0.clone().requires_grad_()
        fn(s, e).backward()

    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        times: dict[str, list[float]] = {k: [] for k in forms}
        load0 = os.getloadavg()[0]
        for _ in range(args.rounds):
            for name, fn in forms.items():
                for _ in range(20):
                    step(fn)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step(fn)
                times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
        base = statistics.median(times["unique"])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append({"threads": threads, "form": name, "ms_median": round(med, 3),
                         "ms_rounds": [round(t, 3) for t in ts], "ratio_to_unique": round(med / base, 3),
                         "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2)})
    print(f"loss forward + backward, B={B} L={L} d={d}: {len(uniq)} unique items in {B * (L + 1)} slots; "
          f"{cpu_description()}, torch {torch.__version__}")
    print(f"{'threads':>7} {'form':<22} {'ms (median)':>11} {'/ unique':>9}  rounds (ms)")
    for r in rows:
        print(f"{r['threads']:>7} {r['form']:<22} {r['ms_median']:>11.3f} {r['ratio_to_unique']:>9.3f}  {r['ms_rounds']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"batch_size": B, "seq_len": L, "dim": d, "items": N, "unique_items": len(uniq), "slots": B * (L + 1),
            "machine": cpu_description(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()

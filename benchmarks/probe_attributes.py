"""Which planted attributes can be read off each frozen encoder's cached states? A linear probe per tap.

The built-in synthetic data (``crossan data synth``) records every item's latent attributes in
``items_meta.json``: text topic/style, image colour/shape, video motion/speed, audio pitch/tempo. Users'
tastes are drawn over exactly these attributes, so a modality can only help a recommender as far as its
encoder's states separate them. For each encoder preset, modality and tap, this fits a multinomial logistic
regression (scikit-learn, standardised inputs, L2, 5-fold stratified cross-validation over the items that
have the modality) from the cached pooled state to each attribute of that modality, and reports the
cross-validated accuracy next to the majority-class rate (what a probe with no information gets).

    python benchmarks/probe_attributes.py --data DATA_DIR --presets offline,offline-random \\
        --out bench_out/probe

Reads the layer-state caches only (build them first with ``crossan cache``); writes ``results.json`` and
``results.csv`` into ``--out`` and prints a table with, per (preset, modality, attribute), the best tap's and
the last tap's accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crossan.cache.read import open_cache
from crossan.config import load_config
from crossan.data import prepare
from crossan.utils import cpu_description

MODS = ["text", "image", "video", "audio"]


def probe(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Mean 5-fold cross-validated accuracy of a standardised multinomial logistic regression."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return float(cross_val_score(model, x, y, cv=folds).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a dataset folder made by `crossan data synth`")
    ap.add_argument("--presets", default="offline,offline-random")
    ap.add_argument("--modalities", default=",".join(MODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_out/probe")
    args = ap.parse_args()
    data_dir = Path(args.data)
    meta_path = data_dir / "items_meta.json"
    if not meta_path.is_file():
        raise SystemExit(f"{meta_path}: not found; --data must be a folder made by `crossan data synth`")
    meta = json.loads(meta_path.read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    for preset in args.presets.split(","):
        cfg = load_config([], [f"data.path={data_dir}", f"encoders.preset={preset}"])
        data = prepare(cfg.data)
        mods = args.modalities.split(",")
        gathered = open_cache(cfg, data, mods, mmap=False).gather(torch.arange(len(data.item_ids)))
        for m in mods:
            states, present = (t.numpy() for t in gathered[m])  # [N+1, K, D] float32, [N+1] bool
            rows_idx = [r for r in range(1, len(data.item_ids)) if present[r]]
            ids = [data.item_ids[r] for r in rows_idx]
            for attr in meta[ids[0]][m]:
                y = np.array([meta[i][m][attr] for i in ids])
                _, counts = np.unique(y, return_counts=True)
                chance = float(counts.max() / counts.sum())
                accs = [probe(states[rows_idx, k], y, args.seed) for k in range(states.shape[1])]
                best = int(np.argmax(accs))
                rows.append({"preset": preset, "modality": m, "attribute": attr, "items": len(ids),
                             "classes": len(counts), "chance": round(chance, 4),
                             "best_tap": best, "best_acc": round(accs[best], 4), "last_acc": round(accs[-1], 4),
                             "acc_per_tap": [round(a, 4) for a in accs]})
                print(f"{preset:15s} {m:6s} {attr:7s} chance {chance:.3f}  best tap {best} {accs[best]:.3f}  "
                      f"last {accs[-1]:.3f}", flush=True)
    meta_out = {"data": str(data_dir), "machine": f"{cpu_description()}, {platform.system()}, "
                f"Python {platform.python_version()}", "seconds": round(time.perf_counter() - t0, 1),
                "probe": "StandardScaler + LogisticRegression(C=1), 5-fold stratified CV, seed " + str(args.seed)}
    (out / "results.json").write_text(json.dumps({"meta": meta_out, "rows": rows}, indent=1) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "acc_per_tap"])
        w.writeheader()
        for r in rows:
            w.writerow({k: v for k, v in r.items() if k != "acc_per_tap"})
    print("\n| preset | modality | attribute | classes | chance | best tap | accuracy (best tap) | accuracy (last tap) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['preset']} | {r['modality']} | {r['attribute']} | {r['classes']} | {r['chance']:.3f} | "
              f"{r['best_tap']} | {r['best_acc']:.3f} | {r['last_acc']:.3f} |")
    print(f"\n{meta_out['seconds']} s; wrote {out / 'results.json'}, {out / 'results.csv'}")


if __name__ == "__main__":
    main()

"""Throughput of the layer-state cache builder: items/s per modality and batch size, FLOPs, achieved share.

For each modality and batch size it measures

* ``e2e``: items/s of the whole per-batch work of the cache builder (read and decode media, tokenizer /
  processor, backbone forward with all hidden states, pooling), done one step after the other;
* ``build`` (with ``--build``): items/s of ``build_cache`` itself, which reads and preprocesses the next
  batch in a thread while the model runs, and writes fp16 states and the manifest (after its first batch),
  and ``build s``, the whole build's seconds (model loading and the first batch included);
* ``fwd``: items/s of the backbone forward alone on already prepared inputs;
* FLOPs per item of the forward, counted by ``torch.utils.flop_counter.FlopCounterMode``;
* the machine's dense matmul FLOP/s at the row's precision, measured in the same run (best of several
  2048² matmuls, fp32 or bf16), and the share of it the forward achieves (``fwd items/s × FLOPs per item /
  peak``).

``--precision fp32,bf16`` measures each modality and batch size in each precision: bf16 runs the encoder
forward (e2e and fwd) under the same ``torch.autocast`` that ``build_cache`` uses (``crossan.precision``),
where matrix products (and convolutions) run in bfloat16.

With ``--build`` it also times ``build_cache`` itself (prefetching, fp16 writes, manifest) per modality,
batch size and precision (the run config's ``precision`` set to each of ``--precision``). Media are
synthetic (written to a temporary folder: 128 px jpg covers, 16-frame 128 px mp4 clips, 5 s 22.05 kHz wav
tracks, 10-word titles) unless ``--data`` names a dataset.

Example::

    python benchmarks/bench_cache.py --preset offline --batch-sizes 8,32 --items 128 --out bench-out
    python benchmarks/bench_cache.py --preset offline --modalities image,video,audio --precision fp32,bf16
    python benchmarks/bench_cache.py --modalities image --image-px 256 --set encoders.image.model=config:vit
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossan.config import Config, load_config
from crossan.data.catalogue import MODALITIES, Catalogue, ItemRecord
from crossan.utils import cpu_description, matmul_rate

WORDS = ("jazz piano session cooking pasta recipe travel city walk vlog yoga home workout retro arcade "
         "speedrun kitten moments chemistry experiment streetwear haul vintage modern cozy epic").split()


class Items:
    """What the cache needs of a dataset: ``item_ids`` (padding first) and a ``catalogue``."""

    def __init__(self, item_ids: list[str], catalogue: Catalogue) -> None:
        self.item_ids = item_ids
        self.catalogue = catalogue


def synthetic_items(root: Path, n: int, seed: int = 0, image_px: int = 128) -> Items:
    """``n`` items with a title, a jpg cover (``image_px`` square, noise: the costliest JPEG to decode), an mp4
    clip and a wav track each."""
    import av
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        item = f"b{i}"
        title = " ".join(rng.choice(WORDS, size=10))
        img = rng.integers(0, 256, size=(image_px, image_px, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / f"{item}.jpg", quality=90)
        img = img[:128, :128]
        with av.open(str(root / f"{item}.mp4"), mode="w") as container:
            stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=8)
            stream.width = stream.height = 128
            stream.pix_fmt = "yuv420p"
            for f in range(16):
                frame = np.roll(img, 4 * f, axis=1)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        t = np.arange(5 * 22050) / 22050
        wave = 0.3 * np.sin(2 * np.pi * (200 + 20 * i) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(str(root / f"{item}.wav"), wave.astype(np.float32), 22050)
        records.append(ItemRecord(item, title, f"{item}.jpg", f"{item}.mp4", f"{item}.wav"))
    return Items([""] + [r.item_id for r in records], Catalogue(root, records))


def forward_flops(encoder: Any, inputs: dict[str, torch.Tensor]) -> float:
    """FLOPs of one forward over ``inputs`` (matmuls, convolutions, attention): the model's, counted in float32
    whatever the build's precision (a fused bf16 EfficientNet call also computes zero taps, see
    ``crossan.encoders.efficientnet.SameConv2d.convolve``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), torch.autocast("cpu", enabled=False), FlopCounterMode(display=False) as counter:
        encoder(inputs)
    return float(counter.get_total_flops())


def bench_modality(modality: str, encoder: Any, data: Items, batch_size: int, peak: float,
                   precision: str = "fp32") -> dict[str, Any]:
    from crossan.precision import autocast

    with autocast(precision, "cpu"):
        return _bench_modality(modality, encoder, data, batch_size, peak) | {"precision": precision}


def _bench_modality(modality: str, encoder: Any, data: Items, batch_size: int, peak: float) -> dict[str, Any]:
    records = [data.catalogue[i] for i in data.item_ids[1:]]
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    encoder.encode(batches[0][:2], data.catalogue)  # warm-up

    t0 = time.perf_counter()
    prepared, media_s = [], 0.0
    for batch in batches:
        t1 = time.perf_counter()
        loaded = encoder.load_media(batch, data.catalogue)
        inputs = encoder.process_loaded(loaded)
        media_s += time.perf_counter() - t1
        encoder.encode_loaded(loaded, inputs)
        prepared.append(inputs)
    e2e = time.perf_counter() - t0

    t0 = time.perf_counter()
    with torch.no_grad():
        for inputs in prepared:
            encoder(inputs)
    fwd = time.perf_counter() - t0

    n_present = sum(int(next(iter(p.values())).shape[0]) for p in prepared)
    # every batch's FLOPs: with "longest" padding the batches differ in length, so one batch's count is no mean
    flops_item = sum(forward_flops(encoder, p) for p in prepared) / max(1, n_present)
    fwd_rate = n_present / fwd
    return {
        "modality": modality,
        "model": encoder.name,
        "random_init": encoder.random_init,
        "batch_size": batch_size,
        "items": len(records),
        "e2e_items_per_s": len(records) / e2e,
        "media_items_per_s": len(records) / media_s,
        "fwd_items_per_s": fwd_rate,
        "gflops_per_item": flops_item / 1e9,
        "achieved_gflops": fwd_rate * flops_item / 1e9,
        "peak_gflops": peak / 1e9,
        "achieved_share": fwd_rate * flops_item / peak,
        "e2e_share": len(records) / e2e * flops_item / peak,
    }


def bench_build(cfg: Config, data: Items, modalities: list[str], batch_size: int,
                out: Path) -> dict[str, dict[str, float]]:
    """Per modality of one ``build_cache`` call: ``rate``, items/s after the first batch (model loading and
    the first batch are the warm-up; NaN for a build of one batch), and ``total_s``, seconds from the call (or
    the previous modality's end) to the last batch, everything included."""
    from crossan.cache import build_cache

    cfg.encoders.batch_size = batch_size
    cfg.cache.dir = str(out / "cache")
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    marks = [time.perf_counter()]  # when each modality's work began

    def hook(modality: str, batch: int) -> None:
        now = time.perf_counter()
        if batch == 0:
            starts[modality] = now
            if ends:
                marks.append(max(ends.values()))
        ends[modality] = now

    build_cache(cfg, data, modalities, progress=False, on_batch=hook)
    n = len(data.item_ids) - 1
    out_rates: dict[str, dict[str, float]] = {}
    for m, began in zip([m for m in modalities if m in starts], marks):
        # one batch only: no rate after the warm-up, but the whole build's time all the same
        rate = (n - batch_size) / (ends[m] - starts[m]) if ends[m] > starts[m] else float("nan")
        out_rates[m] = {"rate": rate, "total_s": ends[m] - began}
    return out_rates


def _peak(precision: str) -> float:
    """The dense matmul rate (FLOP/s) at ``precision``; NaN for bf16 on a CPU without bf16 units, where
    2048² bf16 products take an emulated path of minutes that says nothing about the encoders' rate."""
    from crossan.precision import cpu_has_bf16

    if precision == "bf16" and not cpu_has_bf16():
        return float("nan")
    return matmul_rate(torch.bfloat16 if precision == "bf16" else torch.float32)


def _load() -> float | None:
    """The 1-minute load average (None where the OS does not report it)."""
    try:
        import os

        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'modality':8} {'prec':>5} {'bs':>4} {'media it/s':>10} {'e2e it/s':>9} {'build it/s':>10} {'fwd it/s':>9} "
            f"{'GFLOP/it':>9} {'fwd share':>9} {'e2e share':>9} {'build share':>11} {'build s':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        build = r.get("build_items_per_s")
        print(f"{r['modality']:8} {r.get('precision', 'fp32'):>5} {r['batch_size']:>4} {r['media_items_per_s']:>10.1f} {r['e2e_items_per_s']:>9.1f} "
              f"{build or float('nan'):>10.1f} {r['fwd_items_per_s']:>9.1f} {r['gflops_per_item']:>9.3f} "
              f"{r['achieved_share']:>9.1%} {r['e2e_share']:>9.1%} {r.get('build_share', float('nan')):>11.1%} "
              f"{r.get('build_total_s', float('nan')):>8.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="offline", choices=["paper", "offline", "offline-random", "tiny"])
    parser.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16 (rows per precision)")
    parser.add_argument("--batch-sizes", default="8,32,64")
    parser.add_argument("--modalities", default=",".join(MODALITIES))
    parser.add_argument("--items", type=int, default=64, help="synthetic items (or the first N of --data)")
    parser.add_argument("--data", default="", help="a dataset folder read with crossan.data.prepare")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--build", action="store_true", help="also time build_cache at each batch size")
    parser.add_argument("--image-px", type=int, default=128, help="side of the synthetic jpg covers")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. encoders.image.model=config:vit (a ViT-B/16 of random weights)")
    parser.add_argument("--peak-per-row", action="store_true",
                        help="measure the matmul peak again right before each row (shared machines)")
    parser.add_argument("--out", default="bench-cache")
    args = parser.parse_args(argv)

    from crossan.encoders import build_encoder, resolve_specs
    from crossan.utils import configure_malloc

    if args.threads:
        torch.set_num_threads(args.threads)
    modalities = [m for m in args.modalities.split(",") if m]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # a CPU benchmark throughout (forwards, matmul peak, machine line): the build must not take a GPU that
    # `device=auto` would pick on a machine that has one
    cfg = load_config([], [f"encoders.preset={args.preset}", *args.set, "device=cpu"])
    specs = resolve_specs(cfg, modalities)
    malloc = configure_malloc(cfg.train.malloc, "cpu")  # as build_cache sets it (process-wide): every row alike
    print(f"malloc: {malloc} (train.malloc={cfg.train.malloc})")

    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            from crossan.data import prepare

            cfg.data.path = args.data
            full = prepare(cfg.data)
            data = Items(full.item_ids[: args.items + 1], full.catalogue.subset(full.item_ids[1 : args.items + 1]))
        else:
            print(f"writing {args.items} synthetic items …")
            data = synthetic_items(Path(tmp), args.items, image_px=args.image_px)
        precisions = [p for p in args.precision.split(",") if p]
        if len(precisions) > 1:
            print("note: several precisions in one process; on a Zen 5 this understated bf16's gain (text build "
                  "1.92x against 2.4x in separate processes, docs/results.md §3m): run one --precision per process")
        peaks = {p: _peak(p) for p in precisions}
        for p, v in peaks.items():
            print(f"dense {p} matmul: {v / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads" if v == v else
                  f"dense {p} matmul: not measured (no bf16 units: emulated 2048² bf16 products take minutes)")
        rows = []
        for m in modalities:
            encoder = build_encoder(m, specs[m])
            for bs in batch_sizes:
                for p in precisions:
                    if args.peak_per_row:  # on a shared machine the peak moves with the other jobs' load
                        peaks[p] = _peak(p)
                    rows.append(bench_modality(m, encoder, data, bs, peaks[p], p) | {"load_avg_1min": _load()})
            del encoder
        if args.build:  # build_cache itself at each listed precision (the run config's `precision` key)
            for p in precisions:
                cfg.precision = p
                for bs in batch_sizes:
                    rates = bench_build(cfg, data, modalities, bs, Path(tmp) / f"build{bs}_{p}")
                    for r in rows:
                        if r["batch_size"] == bs and r["modality"] in rates and r["precision"] == p:
                            rate = rates[r["modality"]]["rate"]
                            r["build_total_s"] = rates[r["modality"]]["total_s"]
                            if rate == rate:  # a build of one batch has no rate after its warm-up
                                r["build_items_per_s"] = rate
                                r["build_share"] = rate * r["gflops_per_item"] * 1e9 / peaks[p]
        print_table(rows)

    with open(out / "bench_cache.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    meta = {"preset": args.preset, "overrides": args.set, "image_px": args.image_px, "threads": torch.get_num_threads(),
            "malloc": malloc,
            "peak_gflops": {p: v / 1e9 for p, v in peaks.items()},
            "machine": platform.platform(), "processor": cpu_description(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / "bench_cache.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out / 'bench_cache.csv'} and {out / 'bench_cache.json'}")


if __name__ == "__main__":
    main()

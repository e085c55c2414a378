"""A cache build reading each batch ahead (in a thread, beside the forward) against reading it on demand.

``cache.prefetch`` (``ahead`` | ``on_demand``) changes only when a batch is read, never the states. This script
times ``build_cache`` of one modality each way (``--settings``), each build in a fresh process (so no build
inherits another's heap or threads), alternating ``--rounds`` times, on synthetic items (``bench_cache.synthetic_items``: noise JPEG
covers, mp4 clips, wav tracks, titles). The rate is items per second after the first batch (model loading and
warm-up excluded), as ``bench_cache.py --build`` counts it.

    python benchmarks/prefetch_ab.py --modality image --precision bf16 --items 1024 --rounds 2 --out bench_out/pf
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {bench!r})
import bench_cache
from crossan.config import load_config
from crossan.cache import build_cache
data = bench_cache.synthetic_items(Path({items!r}), {n}, image_px={px})
cfg = load_config([], ["encoders.preset={preset}", "device=cpu", "precision={precision}", "cache.dir={cache}",
                       "encoders.batch_size={bs}", "cache.prefetch={setting}"])
ts = []
build_cache(cfg, data, [{modality!r}], progress=False, on_batch=lambda m, b: ts.append(time.perf_counter()))
print(json.dumps({{"rate": {bs} * (len(ts) - 1) / (ts[-1] - ts[0]), "batches": len(ts)}}))
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modality", default="image", choices=["text", "image", "video", "audio"])
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--items", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-px", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settings", default="ahead,on_demand", help="cache.prefetch values, alternated")
    ap.add_argument("--out", default="bench-prefetch")
    args = ap.parse_args(argv)
    from crossan.utils import cpu_description

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = [x for x in args.settings.split(",") if x]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        items = Path(tmp) / "items"
        items.mkdir()
        for r in range(args.rounds):
            for setting in settings:
                code = _CHILD.format(bench=str(Path(__file__).parent), items=str(items), n=args.items,
                                     px=args.image_px, preset=args.preset, precision=args.precision,
                                     cache=str(Path(tmp) / f"cache_{r}_{setting}"), bs=args.batch_size,
                                     setting=setting, modality=args.modality)
                done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(done.stderr[-2000:])
                result = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append({"round": r, "prefetch": setting, "items_per_s": result["rate"],
                             "time": time.strftime("%H:%M:%S", time.gmtime())})
                print(f"round {r} {setting:>9}: {result['rate']:.1f} items/s", flush=True)
    med = {s: statistics.median(x["items_per_s"] for x in rows if x["prefetch"] == s) for s in settings}
    machine = f"CPU {cpu_description()}; {args.modality}, {args.precision}, {args.items} items, batch {args.batch_size}"
    print(machine)
    print("median items/s: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    (out / "prefetch_ab.json").write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows,
                                                      "median_items_per_s": med}, indent=2) + "\n")
    print(f"wrote {out / 'prefetch_ab.json'}")


if __name__ == "__main__":
    main()

"""What keeping end-to-end pixel inputs as bytes (``crossan.towers.endtoend.Palette``) saves and costs, at
paper sizes: a VideoMAE-processed 16-frame 224² clip and a ViT-processed 224² cover, from real decoded media
(the synthetic data's mp4 clips and PNG covers, ``crossan data synth``), each once through the processor.

Per input it prints the bytes as the processor gives them (float32) and as kept, the time to pack (once per
item, when the tower preprocesses) and to read back (at every use), and checks that what is read back equals
the processor's output bit for bit. ``--out`` writes the rows as JSON.

    python benchmarks/input_palette.py --data <synth folder> --items 12 --out benchmarks/results/input_palette.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a dataset with videos/ and images/ (crossan data synth)")
    ap.add_argument("--items", type=int, default=12, help="clips and covers to measure (default 12)")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)

    import transformers
    from PIL import Image

    from crossan.data.media import load_video
    from crossan.towers.endtoend import Palette

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    root = Path(args.data)
    clips = sorted((root / "videos").glob("*.mp4"))[: args.items]
    covers = sorted((root / "images").glob("*.png"))[: args.items]
    if not clips or not covers:
        raise SystemExit(f"{root}: needs videos/*.mp4 and images/*.png (crossan data synth --out {root})")
    video = transformers.VideoMAEImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    image = transformers.ViTImageProcessor(size={"height": 224, "width": 224})
    inputs = {
        "VideoMAE clip, 16 frames, 224x224": [
            video([list(load_video(p, 16, "uniform", p.stem))], return_tensors="pt")["pixel_values"][0] for p in clips],
        "ViT cover, 224x224": [
            image([Image.open(p).convert("RGB")], return_tensors="pt")["pixel_values"][0] for p in covers],
    }
    rows = []
    for name, tensors in inputs.items():
        pack_ms, read_ms, kept = [], [], []
        exact = True
        for t in tensors:
            t0 = time.perf_counter()
            packed = Palette.pack(t)
            t1 = time.perf_counter()
            back = packed.unpack() if isinstance(packed, Palette) else packed
            t2 = time.perf_counter()
            pack_ms.append(1e3 * (t1 - t0))
            read_ms.append(1e3 * (t2 - t1))
            kept.append(packed.nbytes if isinstance(packed, Palette) else t.nbytes)
            exact &= bool(torch.equal(back.view(torch.int32), t.view(torch.int32)))
        rows.append({"input": name, "items": len(tensors), "float32_mib": tensors[0].nbytes / 2**20,
                     "kept_mib": statistics.median(kept) / 2**20, "pack_ms": statistics.median(pack_ms),
                     "read_back_ms": statistics.median(read_ms), "bit_exact": exact})
    from crossan.reports.suite import machine_description

    machine = machine_description()
    print(f"machine: {machine}; 1 thread; medians over items")
    print("| input | float32 (MiB) | kept (MiB) | pack, once (ms) | read back, per use (ms) | bit-exact |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['input']} | {r['float32_mib']:.2f} | {r['kept_mib']:.2f} | {r['pack_ms']:.0f} | "
              f"{r['read_back_ms']:.1f} | {r['bit_exact']} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine,
                                              "torch": torch.__version__,
                                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                              "rows": rows}, indent=2))
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The ``crossan`` command line. ``train``, ``cache``, ``encoders`` and ``data stats`` take ``key=value`` config
overrides after their options (the commands that load a saved run read its config.yaml instead).

    crossan train --data PATH [--config FILE]... [--plugin MODULE]... [--out RUN_DIR] [--resume] [k=v]...
    crossan evaluate RUN_DIR
    crossan data stats --data PATH
    crossan data synth --out DIR [--size tiny|small|medium|large] [--seed N]
    crossan cache --data PATH --modalities text,image [--preset NAME] [key=value]...
    crossan cache --list | --remove-outdated [cache.dir=DIR]
    crossan encoders [--preset NAME] [--items N] [key=value]...
    crossan demo [--out DIR]
    crossan bench [--suite NAME|FILE] --out DIR
    crossan recommend RUN_DIR --history ITEM [ITEM ...] [--k 10]
    crossan embed-items RUN_DIR --data NEW_CATALOGUE
    crossan export RUN_DIR --out DIR
    crossan methods [NAME] [--options] [--plugin MODULE]...
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crossan import __version__
from crossan.config import Config, ConfigError, load_config, resolve_path
from crossan.errors import CrossanError
from crossan.utils import tolerant_output

EPILOG_OVERRIDES = ("Configuration: defaults < --config YAML files (in order) < key=value overrides, e.g. "
                    "method=crossan 'modalities=[text,image]' train.lr=1e-3 train.epochs=20 crossan.fusion=concat "
                    "(quote a value with brackets: the shell may expand it as a file pattern). "
                    "Documented example configs: configs/ in crossan's source tree (a git checkout or the sdist).")


def _config_args(p: argparse.ArgumentParser, data_required: bool = True) -> None:
    p.set_defaults(data_required=data_required)
    p.add_argument("--data", metavar="PATH",
                   help="dataset folder (users.tsv + items.tsv, RecBole .inter/.item) or a .csv file (sets "
                        "data.path over a --config file's; a data.path=… override naming another is an error)"
                        + ("; required unless a --config file or a data.path=… override sets data.path (a run's "
                           "saved config.yaml does)" if data_required else ""))
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config file (repeatable)")
    plugin_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def plugin_arg(p: argparse.ArgumentParser) -> None:
    """``--plugin MODULE`` (repeatable): import a module that registers a method before anything else."""
    p.add_argument("--plugin", action="append", default=[], dest="plugins", metavar="MODULE",
                   help="import a plugin that registers a method (a module name on PYTHONPATH, or a .py "
                        "file) before the configuration is read; repeatable (docs/method.md §13)")


def _check_preset(overrides: list[str], preset: str | None) -> None:
    """``--preset X`` beside an ``encoders.preset=Y`` override naming another preset is refused, as ``--data``
    beside another ``data.path=`` is: the override would win in silence. (A key given twice among the
    overrides is not refused: they are ordered, and the last wins, as in other command lines.)"""
    if preset is None:
        return
    for o in overrides:
        key, _, value = o.partition("=")
        if key.strip() == "encoders.preset" and value.strip().strip("'\"") != preset:
            raise ConfigError(f"--preset {preset} and {o} name two presets; give one")


def _load(args: argparse.Namespace, preset: str | None = None) -> Config:
    """The configuration of a command: ``--config`` files, then ``--preset`` (``preset``) and ``--data``, then
    the ``key=value`` overrides."""
    _check_preset(list(args.overrides), preset)
    overrides = ([f"encoders.preset={preset}"] if preset else []) + list(args.overrides)
    if getattr(args, "data", None):
        named = [o for o in args.overrides if "=" in o and o.split("=", 1)[0].strip() == "data.path"]
        given = load_config([], named[-1:]).data.path if named else None  # the last wins, read as load_config does
        if given and resolve_path(given) != resolve_path(args.data):  # it won in silence
            raise ConfigError(f"--data {args.data} and data.path={given} name two datasets; give one")
        overrides.insert(0, f"data.path={args.data}")
    cfg = load_config(args.config, overrides)
    if getattr(args, "data_required", False) and not cfg.data.path:
        raise ConfigError("no dataset: pass --data PATH (or set data.path in a --config file or as data.path=PATH)")
    return cfg


def _modality_list(text: str) -> list[str]:
    """``--modalities a,b`` of ``cache`` and ``encoders``: the names in order, checked before any data or model
    is read; :class:`ConfigError` naming the option for an empty list or a name that is no modality (not a
    traceback, nor a silent default)."""
    from crossan.cache.layout import check_modalities
    from crossan.data.catalogue import MODALITIES

    modalities = [m.strip() for m in text.split(",") if m.strip()]
    if not modalities:
        raise ConfigError(f"--modalities: {text!r} names no modality; give a comma-separated subset of "
                          f"{','.join(MODALITIES)}")
    try:
        return check_modalities(modalities)
    except ValueError as e:
        raise ConfigError(f"--modalities: {e}") from None


# --------------------------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from crossan.trainer import train

    cfg = _load(args)
    from crossan import distributed as dist

    if dist.env_world_size() > 1 and not args.out:
        raise ConfigError("under torchrun pass --out RUN_DIR (every rank must write to the same folder)")
    dataset = Path(cfg.data.path).resolve().name or "data"  # --data . names the folder it stands for
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"{dataset}-{cfg.method}-{stamp}"
    try:
        res = train(cfg, out, resume=args.resume, progress=not args.quiet)
        if dist.is_main():  # one summary on stdout, not one per rank
            print(json.dumps({k: res[k] for k in ("method", "dataset", "best_epoch", "test")}, indent=2))
    finally:
        dist.shutdown()  # under torchrun: the process group train() joined (NCCL warns at exit otherwise)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from crossan.cli_serving import run_warnings
    from crossan.runs import evaluate_run

    with run_warnings():
        out = evaluate_run(args.run_dir, device=args.device, data_path=args.run_data, progress=not args.quiet)
    print(json.dumps(out, indent=2))
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from crossan.data import prepare, stats

    cfg = _load(args)
    data = prepare(cfg.data)
    after = stats(data)
    rows = [("", "as read", "after protocol")]
    for k in after:
        a, b = data.raw_stats.get(k, ""), after[k]
        fmt = (lambda v: f"{v:.6f}") if k == "sparsity" else (lambda v: f"{v:,.1f}" if isinstance(v, float) else f"{v:,}")
        rows.append((k, fmt(a) if a != "" else "", fmt(b)))
    w = max(len(r[0]) for r in rows)
    print(f"dataset {data.name} ({cfg.data.path})")
    for r in rows:
        print(f"  {r[0]:<{w}}  {r[1]:>14}  {r[2]:>14}")
    if data.dropped:
        print(f"  dropped rows: {data.dropped}")
    from crossan.data.protocol import repeat_targets

    for split, arr in (("valid", data.valid), ("test", data.test)):
        n, rep = len(arr.targets), repeat_targets(arr.targets, arr.history)
        print(f"  {split} targets repeating a history item: {rep:,} of {n:,} ({100 * rep / max(1, n):.1f}%; "
              f"masked, so never a hit, unless eval.mask_history=false)")
    for split, n in data.tied_targets.items():
        print(f"  {split} targets at the same time as a neighbouring interaction: {n:,} of {data.num_users:,} "
              f"({100 * n / max(1, data.num_users):.1f}%; equal times keep the file's order)")
    have = {m: sum(r.has(m) for r in data.catalogue) for m in ("text", "image", "video", "audio")}
    print("  items with content: " + ", ".join(f"{m} {n:,}" for m, n in have.items()))
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from crossan.data.synth import generate, synth_digest

    out = generate(Path(args.out), size=args.size, seed=args.seed, missing_rate=args.missing_rate,
                   dominant=args.dominant)
    print(f"dataset written to {out} (content digest {synth_digest(out)})")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    if args.list or args.remove_outdated:
        return cmd_cache_list(args)
    from crossan import distributed as dist
    from crossan.cache import build_cache, cache_command
    from crossan.data import prepare

    cfg = _load(args, args.preset)
    if args.modalities is None:  # the run's own modalities: `cache --config C` caches what `train --config C` reads
        modalities = list(cfg.modalities)
    else:
        modalities = _modality_list(args.modalities)
    data = prepare(cfg.data)
    data.check_content(modalities)
    if cfg.cache.on_corrupt == "error" and not (args.join or args.verify):
        data.check_media_files(modalities)
    if dist.env_world_size() > 1:  # torchrun: rank r builds shard r, then rank 0 joins them
        if args.shard is not None or args.join:
            raise ConfigError("under torchrun the ranks split the items themselves; drop --shard/--join")
        if args.verify:
            raise ConfigError("--verify checks a completed cache in one process; run it without torchrun")
        from crossan.utils import resolve_device

        # cuda:LOCAL_RANK on a GPU node; barriers wait up to CACHE_TIMEOUT (shards may end hours apart)
        cfg.device = str(dist.init_from_env(resolve_device(cfg.device), timeout=dist.CACHE_TIMEOUT))
        try:
            build_cache(cfg, data, modalities, shard=dist.rank(), num_shards=dist.world_size())
            # every shard is built: rank 0 joins them while the others leave (no barrier after the join, which
            # can take longer than any timeout on a large cache)
            try:
                dist.barrier()
            except RuntimeError as e:  # gloo/NCCL: a peer is gone (its own error says why)
                raise CrossanError(f"rank {dist.rank()}: another rank of this torchrun job stopped before its shard "
                                   f"was built (its error is above; nothing was joined): {str(e).splitlines()[0]}"
                                   ) from None
            if dist.is_main():
                cache_command(cfg, data, modalities, None, 1, join=True)
        finally:
            dist.shutdown()
        return 0
    cache_command(cfg, data, modalities, args.shard, args.num_shards, args.join, verify=args.verify)
    return 0


def cmd_cache_list(args: argparse.Namespace) -> int:
    """``crossan cache --list`` / ``--remove-outdated``: the cache folders under ``cache.dir`` or
    ``$CROSSAN_CACHE_DIR``; no dataset needed."""
    from crossan.cache.layout import cache_base
    from crossan.cache.listing import find_caches, format_listing, remove_outdated

    if args.shard is not None or args.join or args.verify:
        raise ConfigError("--list and --remove-outdated take no --shard, --join or --verify")
    cfg = load_config(args.config, list(args.overrides))
    base = Path(cfg.cache.dir).expanduser() if cfg.cache.dir else cache_base()
    entries = find_caches(base)
    if args.remove_outdated:
        for e in remove_outdated(entries):
            print(f"removed {e.path} ({e.state})")
        entries = find_caches(base)
    print(format_listing(base, entries))
    return 0


def cmd_encoders(args: argparse.Namespace) -> int:
    from crossan.encoders.report import encoder_rows, format_rows

    cfg = _load(args, args.preset)
    modalities = _modality_list(args.modalities) if args.modalities is not None else None
    print(format_rows(encoder_rows(cfg, modalities, args.items), cfg.encoders.preset, args.items))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """``crossan methods [NAME] [--options]``: the methods, the plugins' included (``--plugin``,
    ``$CROSSAN_PLUGINS``, entry points); with NAME or ``--options``, their options. Imports no torch for the
    built-in methods. A plugin of ``$CROSSAN_PLUGINS`` or an entry point that cannot be imported does not hide
    the others: each such error is printed (stderr) after the listing, and the exit status is 1."""
    from crossan.method_listing import format_methods
    from crossan.methods import METHODS, discover_plugins, get_method

    errors: list[str] = []
    discover_plugins(errors)
    rows = [get_method(args.name)] if args.name else list(METHODS.values())  # an unknown NAME's error names them
    print(format_methods(rows, options=args.options or bool(args.name)))
    for message in errors:
        print(f"crossan: error: {message}", file=sys.stderr)
    return 1 if errors else 0


def _refuse_suite_under_torchrun(command: str) -> None:
    """A suite under torchrun would run whole in every process, and each (run, seed) child, inheriting torchrun's
    environment, would join the other processes' child as one data-parallel training: the suite's rows would be
    world-size-W results (per-rank negatives) with every child's log and the report written W times at once."""
    from crossan import distributed as dist

    if dist.env_world_size() > 1:
        raise ConfigError(f"crossan {command} runs each training in a process of its own; launch it without "
                          "torchrun (only `crossan train` and `crossan cache` run under torchrun)")


def cmd_bench(args: argparse.Namespace) -> int:
    from crossan.reports.suite import load_suite, run_suite

    _refuse_suite_under_torchrun("bench")
    suite = load_suite(args.suite, seeds=args.seeds, cost_repeats=args.cost_repeats)
    rows = run_suite(suite, Path(args.out), resume=not args.fresh, progress=not args.quiet)
    return _suite_status(rows)


def _suite_status(rows: list[dict]) -> int:
    """1 when any (run, seed) or cost repeat failed (the report is written, but a row lacks a training), else 0."""
    return 0 if all(r["status"] == "ok" and not r.get("error") for r in rows) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from crossan.reports.suite import load_suite, run_suite

    _refuse_suite_under_torchrun("demo")
    t0 = time.perf_counter()
    out = Path(args.out)
    rows = run_suite(load_suite("demo", seeds=args.seeds, cost_repeats=args.cost_repeats), out, resume=not args.fresh,
                     progress=not args.quiet)
    print(f"[demo] finished in {time.perf_counter() - t0:.0f} s; report: {out / 'report.md'}")
    return _suite_status(rows)


# --------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossan",
        description="Adapt frozen multimodal foundation models to sequential recommendation "
                    "(CROSSAN, IISAN, FFT, Adapter, LoRA, frozen features, SASRec-ID).",
        epilog=EPILOG_OVERRIDES)
    parser.add_argument("--version", action="version", version=f"crossan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a recommender and test it at the best validation epoch",
                       description="Train METHOD on a dataset, select the epoch on validation, report test metrics. "
                                   "Writes config.yaml, train.log, history.jsonl, checkpoints/, best.safetensors, "
                                   "results.json and per_user.npz into the run folder (train.epochs=0: the initial "
                                   "weights are tested, no history or checkpoint).", epilog=EPILOG_OVERRIDES)
    _config_args(p)
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/DATASET-METHOD-TIME)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out from its last checkpoint. The configuration "
                        "must be the run's: repeat the original --config files and key=value overrides, or "
                        "pass --config RUN_DIR/config.yaml. A difference is refused, naming the keys, except "
                        "precision (the checkpoint's dtype must match) and data.path / cache.dir of a dataset "
                        "or cache that moved (docs/method.md §10)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("evaluate", help="re-score a saved run on validation and test",
                       description="Load RUN_DIR's config and best weights, rebuild the data, and print (and write "
                                   "RUN_DIR/evaluation.json) the full-ranking metrics.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, …")
    p.add_argument("--run-data", metavar="PATH",
                   help="the run's training dataset, when it moved since training (default: data.path of its "
                        "config.yaml)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (shown once a ranking takes over 2 s)")
    plugin_arg(p)
    p.set_defaults(fn=cmd_evaluate)

    data = sub.add_parser("data", help="dataset tools (stats, synth)",
                          description="Dataset tools.").add_subparsers(dest="data_command", required=True,
                                                                        metavar="SUBCOMMAND")
    p = data.add_parser("stats", help="users, items, interactions, sparsity, sequence lengths",
                        description="Print dataset statistics as read and after the protocol (filtering, "
                                    "truncation to the last max_seq_len+3 items).", epilog=EPILOG_OVERRIDES)
    _config_args(p)
    p.set_defaults(fn=cmd_data_stats)

    p = data.add_parser("synth", help="generate the built-in multimodal dataset (titles, covers, mp4, wav)",
                        description="Write a synthetic dataset in the MicroLens layout whose users' tastes span "
                                    "several modalities (topic/style in titles, colour/shape in covers, motion in "
                                    "videos, pitch/tempo in audio). Same seed, same bytes (the mp4 clips are "
                                    "encoded single-threaded at a fixed quantiser; meta.json records the "
                                    "content digest).")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", default="small", choices=["tiny", "small", "medium", "large"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--missing-rate", type=float, default=0.1,
                   help="share of items lacking each of image, video, audio (default 0.1)")
    p.add_argument("--dominant", choices=["text", "image", "video", "audio"],
                   help="make one modality carry most of the signal")
    p.set_defaults(fn=cmd_data_synth)

    p = sub.add_parser("cache", help="encode every item once with the frozen encoders (layer-state cache)",
                       description="Run the frozen encoders over every item's raw content and store the pooled "
                                   "states of K layers per modality (fp16, memory-mapped). Resumes an interrupted "
                                   "build; --shard/--num-shards split the work across processes and --join "
                                   "assembles the shards; under torchrun the ranks split it automatically.",
                       epilog=EPILOG_OVERRIDES)
    _config_args(p)
    p.add_argument("--modalities", help="comma-separated: text,image,video,audio (default: the config's "
                                        "`modalities`, whose own default is text)")
    p.add_argument("--preset", choices=["paper", "offline", "offline-random", "tiny"],
                   help="encoder preset (encoders.preset)")
    p.add_argument("--shard", type=int, help="build only shard i (0-based) of --num-shards")
    p.add_argument("--num-shards", type=int, default=1, help="number of shards (with --shard)")
    p.add_argument("--join", action="store_true", help="assemble the finished shards into the cache")
    p.add_argument("--verify", action="store_true",
                   help="check a completed cache without changing it: SHA-256 of every array against the build's, "
                        "non-finite values, absent rows, media files re-hashed; exits 2 naming what failed")
    p.add_argument("--list", action="store_true",
                   help="list the cache folders under cache.dir or $CROSSAN_CACHE_DIR (default ~/.cache/crossan): "
                        "state, encoder, items, size on disk; needs no dataset")
    p.add_argument("--remove-outdated", action="store_true",
                   help="delete the caches of an older format version (no crossan of this version reads them), "
                        "then list what is left")
    p.set_defaults(fn=cmd_cache)

    p = sub.add_parser("encoders", help="per modality: the frozen encoder, its weights, taps, widths and ms/item",
                       description="List each modality's frozen encoder under a preset (and overrides): model, "
                                   "where its weights come from, whether they are pretrained, tapped layers and "
                                   "their widths, and milliseconds per item measured on a few generated inputs.",
                       epilog=EPILOG_OVERRIDES)
    _config_args(p, data_required=False)
    p.add_argument("--preset", choices=["paper", "offline", "offline-random", "tiny"],
                   help="encoder preset (encoders.preset; default: the configuration's)")
    p.add_argument("--modalities", help="comma-separated subset (default: text,image,video,audio)")
    p.add_argument("--items", type=int, default=8, help="items timed per modality (default 8; 0: no loading, no timing)")
    p.set_defaults(fn=cmd_encoders)

    p = sub.add_parser("demo", help="the main job: synthetic multimodal data → cache → every method → report",
                       description="Generate the small built-in multimodal dataset (if absent), cache four frozen "
                                   "encoders (offline preset), train ID, frozen features, IISAN, CROSSAN (concat "
                                   "and MOMEF) under seeds 0, 1, 2 and measure FFT/Adapter/LoRA (cost only), then "
                                   "write results.csv, report.md and plots into --out. From scratch on a 2-core CPU, "
                                   "crossan 0.1.9: 25 minutes with --cost-repeats 3 without bf16 units (Zen 3, fp32; "
                                   "2026-12-03); with runs capped at 12 epochs (crossan 0.1.8 and before): 14-19 "
                                   "minutes without the repeats (AVX2, fp32; five runs, 2026-12-01) and 13.5 with "
                                   "them on a CPU with bf16 units (Zen 5, AVX-512 BF16; 2026-12-02); crossan "
                                   "0.1.11: 15 minutes with the repeats in bf16 (Zen 4, AVX-512 BF16; 2026-12-03). "
                                   "Finished runs are reused when it is run again (README, 'What the demo shows').")
    p.add_argument("--out", default="demo_run", help="output folder (default demo_run)")
    p.add_argument("--seeds", metavar="0,1,2", help="training seeds, comma-separated (default: the suite's seeds)")
    p.add_argument("--cost-repeats", type=int, metavar="N",
                   help="train each run's first seed N times alone; cost columns are the median over them and the "
                        "seeds that trained alone (default: the suite's cost_repeats, 1)")
    p.add_argument("--fresh", action="store_true", help="retrain runs that finished earlier in --out")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars and no copy of each run's output on stderr (each run's log keeps it)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("bench", help="run a suite of methods side by side and report quality and cost",
                       description="Run a declared suite (methods × modality sets on one dataset and encoder "
                                   "preset), each method in its own process, and write results.csv, results.md, "
                                   "report.md and plots (NDCG@10 vs trainable parameters; time per epoch and peak "
                                   "memory per method). Failed methods stay in the table. Exit status: 0 when "
                                   "every (run, seed) and cost repeat finished, 1 when any failed (the report is still "
                                   "written, naming each failure), 2 for an error that stops the suite (a bad suite "
                                   "file or option, a shared layer-state cache that cannot be built).")
    p.add_argument("--suite", default="default",
                   help="built-in suite name (default, demo, tiny, ablation, dominant, fidelity: shipped in the package, "
                        "crossan/suites/) or a YAML file (more in benchmarks/suites/ of the source tree)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seeds", metavar="0,1,2", help="training seeds, comma-separated (default: the suite's seeds)")
    p.add_argument("--cost-repeats", type=int, metavar="N",
                   help="train each run's first seed N times alone; cost columns are the median over them and the "
                        "seeds that trained alone (default: the suite's cost_repeats, 1)")
    p.add_argument("--fresh", action="store_true",
                   help="retrain every run of the suite that finished earlier in --out (to retrain one run only, "
                        "delete its folder OUT/runs/NAME/ instead)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars and no copy of each run's output on stderr (each run's log keeps it)")
    plugin_arg(p)
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("methods", help="list the methods (built-in and plugins) and their options",
                       description="One line per method: name, summary, whether it reads the layer-state cache "
                                   "and whether its backbones run at every step, and where it comes from "
                                   "(built-in, or a plugin's module and file). Plugins are those of --plugin, "
                                   "$CROSSAN_PLUGINS and installed entry points (docs/method.md §13). With NAME "
                                   "or --options: the keys of the method's config section with their types, "
                                   "defaults and allowed values, read from its options dataclass.")
    p.add_argument("name", nargs="?", metavar="NAME", help="one method, with its options")
    p.add_argument("--options", action="store_true", help="list every method's options")
    plugin_arg(p)
    p.set_defaults(fn=cmd_methods)

    from crossan.cli_serving import register as register_serving  # recommend, embed-items, export

    register_serving(sub)
    for register in _EXTRA_COMMANDS:
        register(sub, data)
    return parser


_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction, argparse._SubParsersAction], None]] = []
"""Hooks ``register(subparsers, data_subparsers)`` that add further commands (plugins)."""


def _prepare(args: argparse.Namespace) -> None:
    """Before a command runs: import its ``--plugin`` modules and check its ``--device`` as the ``device``
    config key is checked (:class:`ConfigError`, not a traceback from torch)."""
    from crossan.config import check_device
    from crossan.methods import load_plugins

    load_plugins(getattr(args, "plugins", None) or [])
    if isinstance(getattr(args, "device", None), str):
        check_device(args.device, "--device")


SIGPIPE_EXIT = 141
"""The exit status when the reader of stdout went away (``| head``): 128 + SIGPIPE, what a shell reports for a
program that SIGPIPE ends (Python turns the signal into BrokenPipeError)."""


def _stdout_closed() -> bool:
    """Whether nobody reads stdout any more (a pipe whose reader exited: poll reports an error on it), as opposed
    to a broken pipe elsewhere (a child process, a socket), which stays an error. If so, stdout is pointed at
    os.devnull, so that the interpreter's flush at exit does not fail on it again."""
    import os
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        closed = any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() (Windows), or stdout is not a file
        return False
    if closed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return closed


def main(argv: list[str] | None = None) -> int:
    tolerant_output()  # before argparse, which prints --help
    parser = build_parser()
    # key=value overrides may also follow an option (`train --quiet train.epochs=1`): argparse leaves those
    # over, and they join the overrides in their order; anything else left over is an error as usual
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from crossan.data.media import MediaError  # not yet CrossanError subclasses
    from crossan.data.readers import DataError

    previous = _stop_on_sigterm()
    try:
        _prepare(args)
        status = args.fn(args)
        sys.stdout.flush()  # here, so that a reader gone away (| head) is answered below, not at exit
        return status
    except BrokenPipeError as e:
        if _stdout_closed():  # `crossan cache --list | head`: the reader has all it wanted; not an error of ours
            return SIGPIPE_EXIT
        print(f"crossan: error: {e}", file=sys.stderr)
        return 2
    except (CrossanError, DataError, MediaError, OSError, ValueError) as e:  # OSError: names its file
        print(f"crossan: error: {e}{_origin(e)}", file=sys.stderr)
        return 2
    except Terminated:
        print("crossan: terminated (SIGTERM); what was finished is kept (crossan train --resume continues a run "
              "from its last checkpoint, and a cache build or suite resumes when run again)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("crossan: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not _NOT_SET:  # None: a handler not set from Python (the default, as a rule)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _origin(error: BaseException) -> str:
    """Where a plain ValueError came from when no ``raise`` of crossan's made it: raised in a library's code
    (`` (at LIBRARY_FILE:LINE, called from crossan/FILE:LINE; …)``) or by a call crossan made into compiled code
    (numpy's "cannot reshape array of size 0": `` (at crossan/FILE:LINE; …)``), so that a fault of crossan's
    does not read as one of the input. Empty for crossan's own messages, which name the file, item or key at
    fault."""
    if type(error) is not ValueError or error.__traceback__ is None:
        return ""
    import traceback

    package = Path(__file__).resolve().parent

    def where(frame: traceback.FrameSummary) -> str:
        path = Path(frame.filename).resolve()
        name = f"crossan/{path.relative_to(package).as_posix()}" if path.is_relative_to(package) else frame.filename
        return f"{name}:{frame.lineno}"

    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(package)]
    last = frames[-1]
    if ours and ours[-1] is last:
        if (last.line or "").lstrip().startswith("raise"):
            return ""
        text = where(last)
    else:
        text = where(last) + (f", called from {where(ours[-1])}" if ours else "")
    return f" (at {text}; if the input is right, please report it)"


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's notice, ``kill``), raised in the main thread as Ctrl-C is: what is being
    written is abandoned cleanly (atomic writes), and the command ends with a message instead of in silence."""


_NOT_SET = object()


def _stop_on_sigterm() -> Any:
    """Make SIGTERM raise :class:`Terminated` in the main thread while a command runs; returns the handler to
    put back (``_NOT_SET`` where no handler can be set: not the main thread)."""
    def stop(signum: int, frame: Any) -> None:
        raise Terminated

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # signal only works in the main thread
        return _NOT_SET


if __name__ == "__main__":
    sys.exit(main())

"""Declared comparisons ("suites"): methods × modality sets on one dataset and encoder preset, each trained
under several seeds, collected into one table (mean and 95% interval over seeds, a paired test against a
reference run), efficiency figures, plots and a markdown report.

A suite is a YAML file (or the name of a built-in one in ``crossan/suites/``)::

    description: what it compares
    data: synth:small           # a dataset folder (relative: to the current folder), or synth:SIZE[:SEED[:DOMINANT]]
                                # to generate the built-in data
    preset: offline             # encoder preset for every run
    overrides: [train.epochs=10] # key=value applied to every run (not method, modalities or seed: see below)
    seeds: [0, 1, 2]            # training seeds (``--seeds 0,1,2`` overrides); default [0]
    reference: CROSSAN          # every other run is tested against this one (paired, per user)
    parallel: 1                 # seeds after each run's first one train this many at a time
    cost_repeats: 1             # train each run's first seed this many times alone (median cost; ``--cost-repeats``)
    plugins: [lastmean.py]      # plugin methods: module names or .py paths (relative to this file)
    runs:
      - {name: ID, method: id, modalities: [text]}
      - {name: CROSSAN, method: crossan, modalities: [text, image], overrides: [crossan.fusion=momef]}
      - {name: CROSSAN-1, method: crossan, modalities: [text, image], max_seeds: 1}  # the first seed only

The suite sets ``method``, ``modalities`` and ``seed`` of each (run, seed) itself: an ``overrides`` entry
(the suite's or a run's) that sets one is refused, naming it; use the run's own ``method:`` / ``modalities:``
and the suite's ``seeds:`` (or ``--seeds``). A run name may not hold ``/``, ``|`` or a line break, nor start
with ``.`` (it names a folder and a cell of the report's Markdown tables).

Each (run, seed) trains into ``OUT/runs/NAME/seed-S`` in a child process of its own (``train()`` called in a
spawned interpreter, :mod:`crossan.reports.children`), so that its peak memory is its own (on a CPU: the
peak resident memory during the run above the process's idle baseline; on a GPU:
``torch.cuda.max_memory_allocated``). A run's cost columns (time per epoch, memory) are the median over its
seeds that trained with nothing else of the suite running: all of them with ``parallel: 1`` (the default),
only the first with ``parallel: N``, where the remaining seeds train N at a time (each with 1/N of the
cores), for their quality only. One measurement of time or CPU memory can be well off (docs/results.md §6h:
a LoRA time 66% off, one of 24), so ``cost_repeats: N`` trains each run's first seed N − 1 more times alone, into
``runs/NAME/seed-S.cost-K`` (K = 2 … N, one round over all runs per K, so that slow drift of the machine
spreads over them); those add to the median of the cost columns only, and a repeat that ranks differently
from its seed is flagged (the run is not deterministic). The suite notes
how each (run, seed) trained in ``runs/NAME/seed-S.suite.json`` (:func:`crossan.reports.children.
write_training_record`), so that a reused run's cost is only taken when it trained alone; a row with no such
seed has blank cost columns and says why.

``plugins`` makes a suite of plugin methods (docs/method.md §13) self-contained: they are imported when the
suite is read, before its runs are checked, and added to ``$CROSSAN_PLUGINS`` for the runs' child processes,
as ``crossan bench --plugin`` does. However a plugin was loaded, the report (and results.json's ``meta``,
``plugins``) names each plugin method of the runs with its module, file and SHA-256 (:func:`plugin_sources`).

A finished (run, seed) is reused when the suite is run again (the report flags one written by another crossan
version), but only when it was trained on the data the suite reads now: its ``split_fingerprint`` (and
``item_fingerprint``, when its results.json records one) must equal those of the data prepared now
(:class:`DataFingerprints`). A finished run whose ``data.path`` or ``cache.dir`` differ (the output folder of a
synthetic suite, which holds its data, was moved or renamed) is reused when those fingerprints, and the
digests of the cache or item content it read, prove its inputs the same, with a note that it moved
(:func:`config_changes`). An interrupted one resumes from its checkpoint, when the trainer's ``--resume``
accepts its folder (:func:`crossan.runs.check_run_dir`: the same configuration, ``precision`` aside);
one whose folder holds another configuration, a ``config.yaml`` that cannot be read, or a run trained on other
data, is refused: that (run, seed) fails, naming the folder to delete to retrain that run alone
(``OUT/runs/NAME/``; ``--fresh`` retrains every run of the suite), and the others go on. A run that fails is
kept in the table with its error, a row with a failed seed or cost repeat says so in its notes, and
``crossan bench`` and ``crossan demo`` exit with status 1 when any (run, seed) or cost repeat failed (the report is
written all the same).

Run-level ``encoders.*``, ``cache.*``, ``data.*``, ``device`` and ``precision`` overrides of a cached method
get a layer-state cache build of their own: :func:`ensure_cache` builds one per distinct set of them (on top
of the suite-level ones); when such a build fails, the runs that needed it fail with its error and the others
go on.

Every run is tested against the reference (paired bootstrap on per-user test NDCG@10, only for seeds on the
same split and ranked under the same ``eval.mask_history``); the ``*`` of significance is decided on
Holm–Bonferroni adjusted p-values over all the tests of the report (:mod:`crossan.reports.table`).

A run whose epochs are capped (``train.max_steps_per_epoch`` > 0) has no converged quality: it is *cost only*
— trained under the first seed alone, its quality columns left blank and kept off the quality axes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import crossan
from crossan.config import (
    SEED_LIMIT,
    Config,
    ConfigError,
    config_differences,
    load_config,
    to_dict,
)
from crossan.config_yaml import parse_yaml, read_yaml_file
from crossan.data.catalogue import MODALITIES
from crossan.errors import CacheError, RunError
from crossan.methods import load_plugins, method_source, method_source_changes
from crossan.reports.children import (
    cpu_seconds,
    failure_text,
    read_training_record,
    run_child,
    train_parallel,
    write_training_record,
)

SUITE_KEYS = {"description", "data", "preset", "overrides", "runs", "seeds", "reference", "parallel",
              "cost_repeats", "plugins"}
RUN_KEYS = {"name", "method", "modalities", "overrides", "max_seeds"}
SUITE_SET_KEYS = {"method": "the run's own method: key", "modalities": "the run's own modalities: key",
                  "seed": "the suite's seeds: key or --seeds"}
"""Config keys the suite sets for each (run, seed) itself, refused in ``overrides``: there they trained
another method than the report named, built the cache for other modalities, or were silently ignored."""


@dataclass
class RunSpec:
    name: str
    method: str
    modalities: list[str]
    overrides: list[str] = field(default_factory=list)
    cost_only: bool = False
    """Capped epochs (``train.max_steps_per_epoch`` > 0): its quality is not converged; one seed is enough."""
    max_seeds: int | None = None
    """Train under the suite's first ``max_seeds`` seeds only (None: all of them)."""


@dataclass
class Suite:
    name: str
    description: str
    data: str
    preset: str
    overrides: list[str]
    runs: list[RunSpec]
    seeds: list[int] = field(default_factory=lambda: [0])
    reference: str | None = None
    parallel: int = 1
    """How many seeds after each run's first train at once (each run's first seed always trains alone)."""
    cost_repeats: int = 1
    """How many times each run's first seed trains alone (the cost columns are the median over them)."""
    plugins: list[str] = field(default_factory=list)
    """The suite file's ``plugins``, as imported (a relative ``.py`` path joined to the suite file's folder)."""

    def seeds_of(self, run: RunSpec) -> list[int]:
        """The seeds ``run`` is trained under: all of them, the first ``max_seeds``, or the first one for a
        cost-only run."""
        return self.seeds[:1] if run.cost_only else list(self.seeds[: run.max_seeds])


def builtin_suites() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("crossan.suites").iterdir() if p.name.endswith(".yaml"))


def parse_seeds(text: str | list[Any], where: str = "--seeds") -> list[int]:
    """``"0,1,2"`` or ``[0, 1, 2]`` → ``[0, 1, 2]``; a clear error naming ``where`` otherwise."""
    try:
        items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
        seeds = [int(s) for s in items if s != ""]
        if any(isinstance(s, (bool, float)) for s in items):
            raise TypeError
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: seeds must be integers, e.g. 0,1,2 (got {text!r})") from None
    if not seeds or len(set(seeds)) != len(seeds) or any(not 0 <= s < SEED_LIMIT for s in seeds):
        raise ConfigError(f"{where}: give one or more distinct seeds in [0, 2**32) = [0, {SEED_LIMIT - 1}], "
                          f"e.g. 0,1,2 (got {text!r})")
    return seeds


def load_suite(name_or_file: str, seeds: str | list[int] | None = None, cost_repeats: int | None = None) -> Suite:
    """Read and check a suite (every run's configuration is resolved now, before hours of runs).

    ``seeds`` (``--seeds 0,1,2`` or a list) replaces the suite's own ``seeds`` key, ``cost_repeats``
    (``--cost-repeats``) its ``cost_repeats``.
    """
    path = Path(name_or_file)
    if path.is_file():  # invalid YAML, a repeated key, bytes that are not UTF-8: ConfigError naming the line
        raw, name = read_yaml_file(path, "suite")[0], path.stem
    else:
        res = resources.files("crossan.suites") / f"{name_or_file}.yaml"
        if not res.is_file():
            raise ConfigError(f"suite {name_or_file!r} is neither a file nor a built-in suite ({builtin_suites()})")
        raw, name = parse_yaml(res.read_text(encoding="utf-8"), f"suite {name_or_file}")[0], name_or_file
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"suite {name_or_file}: expected a mapping with keys {sorted(SUITE_KEYS)}")
    unknown = set(raw) - SUITE_KEYS
    if unknown:
        raise ConfigError(f"suite {name_or_file}: unknown keys {sorted(unknown)} (known: {sorted(SUITE_KEYS)})")
    try:  # before any run's method is looked up; $CROSSAN_PLUGINS takes them to the runs' child processes
        plugins = load_plugins(_strings(raw.get("plugins"), "plugins"), path.parent if path.is_file() else None)
    except ConfigError as e:
        raise ConfigError(f"suite {name_or_file}: {e}") from None
    runs = []
    for i, r in enumerate(raw.get("runs") or []):
        extra = set(r) - RUN_KEYS if isinstance(r, dict) else {"?"}
        if extra or "method" not in r:
            raise ConfigError(f"suite {name_or_file}: runs[{i}] needs 'method' and may have name, modalities, "
                              f"overrides, max_seeds (got {sorted(r) if isinstance(r, dict) else r!r})")
        where = f"suite {name_or_file}: runs[{i}]"
        mods = _strings(r.get("modalities", ["text"]), f"{where}.modalities")
        cap = r.get("max_seeds")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ConfigError(f"{where}.max_seeds must be an integer >= 1 (got {cap!r})")
        run_name = r.get("name", f"{r['method']}-{'+'.join(mods)}")
        if not isinstance(run_name, str):
            raise ConfigError(f"{where}.name must be a string (got {run_name!r})")
        run_over = _strings(r.get("overrides"), f"{where}.overrides")
        _refuse_suite_set_keys(run_over, f"suite {name_or_file}: run {run_name}: overrides")
        runs.append(RunSpec(run_name, r["method"], mods, run_over, max_seeds=cap))
    if not runs:
        raise ConfigError(f"suite {name_or_file}: no runs")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"suite {name_or_file}: run names repeat: {names}")
    bad = [n for n in names if not n or "/" in n or "\0" in n or n.startswith(".")
           or len(n.encode("utf-8", "surrogatepass")) > MAX_RUN_NAME_BYTES]
    if bad:
        raise ConfigError(f"suite {name_or_file}: run names must be usable as folder names (no '/' or NUL, not "
                          f"starting with '.', at most {MAX_RUN_NAME_BYTES} bytes): {[n[:80] for n in bad]}")
    bad = [n for n in names if "|" in n or "\n" in n or "\r" in n]
    if bad:
        raise ConfigError(f"suite {name_or_file}: run names may not hold '|' or a line break (they would split "
                          f"the report's Markdown tables): {bad}")
    suite_seeds = (parse_seeds(seeds) if seeds is not None
                   else parse_seeds(raw.get("seeds", [0]), f"suite {name_or_file}: seeds"))
    reference = raw.get("reference")
    parallel = raw.get("parallel", 1)
    repeats = raw.get("cost_repeats", 1) if cost_repeats is None else cost_repeats
    for value, where in ((parallel, f"suite {name_or_file}: parallel"),
                         (repeats, "--cost-repeats" if cost_repeats is not None
                          else f"suite {name_or_file}: cost_repeats")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where} must be an integer >= 1 (got {value!r})")
    description = raw.get("description") or ""  # an empty key (description:) reads as None
    if not isinstance(description, str):
        raise ConfigError(f"suite {name_or_file}: description must be text (got {description!r})")
    overrides = _strings(raw.get("overrides"), f"suite {name_or_file}: overrides")
    _refuse_suite_set_keys(overrides, f"suite {name_or_file}: overrides")
    suite = Suite(name, description, str(raw.get("data", "synth:small")), raw.get("preset", "offline"),
                  overrides, runs, suite_seeds,
                  None if reference is None else str(reference), parallel, repeats, plugins)
    for r in suite.runs:  # fail early on a bad key, before hours of runs
        try:
            cfg = load_config([], run_overrides(suite, r, "x", suite.seeds[0]))
        except ConfigError as e:
            raise ConfigError(f"suite {name_or_file}: run {r.name}: {e}") from None
        r.cost_only = cfg.train.max_steps_per_epoch > 0
    if suite.reference is not None:
        ref = {r.name: r for r in runs}.get(suite.reference)
        if ref is None:
            raise ConfigError(f"suite {name_or_file}: reference {suite.reference!r} is not one of the runs {names}")
        if ref.cost_only:
            raise ConfigError(f"suite {name_or_file}: reference {suite.reference!r} is cost only "
                              "(train.max_steps_per_epoch caps its epochs); choose a run that trains to convergence")
    return suite


def _strings(value: Any, where: str) -> list[str]:
    """A suite's list of strings (``overrides``, ``modalities``); an empty key (``overrides:``, which YAML reads
    as None) is an empty list. Anything else is a :class:`ConfigError` naming ``where``: a bare string would
    otherwise be read character by character (``overrides: train.epochs=5`` as the overrides t, r, a, …)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings, e.g. [a, b] (got {value!r})")
    return list(value)


def _refuse_suite_set_keys(overrides: list[str], where: str) -> None:
    """A :class:`ConfigError` naming ``where`` and the key when ``overrides`` set one of :data:`SUITE_SET_KEYS`."""
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        if key in SUITE_SET_KEYS:
            raise ConfigError(f"{where}: {o!r}: the suite sets {key} for each run itself; use "
                              f"{SUITE_SET_KEYS[key]}")


def encoder_statement(suite: Suite, run: RunSpec) -> str:
    """Each modality's encoder of ``run`` and whether its weights are pretrained, from the suite's preset and the
    suite's and run's ``encoders.*`` overrides (configs only, no weights read)."""
    from crossan.encoders.report import pretrained_summary
    from crossan.methods import get_method

    if not get_method(run.method).has_content:
        return "none (learned item IDs)"
    chosen = [o for o in (*suite.overrides, *run.overrides) if o.startswith("encoders.")]
    preset = next((o.split("=", 1)[1] for o in reversed(chosen) if o.startswith("encoders.preset=")), suite.preset)
    if preset == "paper" and all(o.startswith("encoders.preset=") for o in chosen):
        return "the paper preset's published checkpoints (pretrained)"
    try:
        return pretrained_summary(preset, run.modalities, chosen)
    except Exception as e:  # a line of the report must not lose the suite's finished runs
        return f"not resolvable here ({type(e).__name__}: {e})"


def run_overrides(suite: Suite, run: RunSpec, data_path: str, seed: int) -> list[str]:
    """The ``key=value`` list of one (run, seed); the suite's seed comes last and wins."""
    return [f"data.path={data_path}", f"encoders.preset={suite.preset}", f"method={run.method}",
            f"modalities=[{','.join(run.modalities)}]", *suite.overrides, *run.overrides, f"seed={seed}"]


# --------------------------------------------------------------------------------------------- running
def resolve_data(spec: str, out: Path, progress: bool = True) -> Path:
    """A dataset folder, generating the built-in data for ``synth:SIZE[:SEED[:DOMINANT]]`` (DOMINANT: a modality
    that carries most of the users' taste; in a folder named after the generator version, so that an output
    folder from an older version is left alone, not refused)."""
    if not spec.startswith("synth:"):
        return Path(spec).expanduser()
    from crossan.data.synth import GENERATOR_VERSION, generate

    parts = spec.split(":")
    if len(parts) > 4:
        raise ConfigError(f"data: {spec!r}: expected synth:SIZE[:SEED[:DOMINANT]]")
    size = parts[1] if len(parts) > 1 and parts[1] else "small"
    try:
        seed = int(parts[2]) if len(parts) > 2 and parts[2] else 0
    except ValueError:
        raise ConfigError(f"data: {spec!r}: the seed {parts[2]!r} is not an integer") from None
    dominant = parts[3] if len(parts) > 3 and parts[3] else None
    if dominant is not None and dominant not in MODALITIES:
        raise ConfigError(f"data: {spec!r}: unknown dominant modality {dominant!r}; expected one of {MODALITIES}")
    name = f"synth-{size}-{seed}" + (f"-dominant-{dominant}" if dominant else "") + f"-v{GENERATOR_VERSION}"
    return generate(out / "data" / name, size=size, seed=seed, dominant=dominant, progress=progress)


MAX_RUN_NAME_BYTES = 200
"""A run's name is its folder's name (``OUT/runs/NAME``): file systems take 255 bytes per name."""

CACHE_KEYS = ("encoders.", "cache.", "data.", "device=", "precision=")
"""Overrides that decide which layer-state cache a run reads (or how it is built: ``precision`` is the
compute dtype of the encoders' forward while the cache is built, recorded in its manifest's ``build``)."""


def cache_overrides(overrides: list[str]) -> list[str]:
    """The overrides of ``overrides`` that concern the layer-state cache (:data:`CACHE_KEYS`)."""
    return [o for o in overrides if o.startswith(CACHE_KEYS)]


def cache_groups(suite: Suite) -> dict[tuple[str, ...], list[RunSpec]]:
    """The cached runs of ``suite`` grouped by their run-level cache overrides, the group without any first:
    each group reads one cache (the suite-level cache overrides apply to every group)."""
    from crossan.methods import cache_methods

    groups: dict[tuple[str, ...], list[RunSpec]] = {}
    for r in suite.runs:
        if r.method in cache_methods():
            groups.setdefault(tuple(cache_overrides(r.overrides)), []).append(r)
    return dict(sorted(groups.items(), key=lambda g: bool(g[0])))  # stable: the others in suite order


def ensure_cache(suite: Suite, data: Path, out: Path, progress: bool = True) -> tuple[float, dict[str, str]]:
    """Build the layer-state cache every cached run reads: once per distinct set of run-level cache overrides
    (:func:`cache_groups`), for the modalities of that group's runs.

    Every build gets the suite-level cache overrides (:data:`CACHE_KEYS`), ``precision`` included: a suite at
    ``precision=fp32`` builds its cache in float32 also where ``auto`` would be bf16. A run-level
    ``precision`` makes a build of its own at that precision, but the cache's folder does not depend on the
    precision (its states are stored in float16 either way, and runs of any precision read them): where
    another group's build already made that folder, it is used as it is and the build's log says which
    dtype computed it (:mod:`crossan.cache`; remove the folder to build it again).

    Returns the seconds spent and, per run whose own cache could not be built, the error (the suite fails
    those runs and goes on). When the cache of the runs without cache overrides of their own cannot be built,
    the suite stops (:class:`~crossan.errors.CacheError`, whose one line is the build's error and its log)."""
    groups = cache_groups(suite)
    t0 = time.perf_counter()
    errors: dict[str, str] = {}
    base = [f"data.path={data}", f"encoders.preset={suite.preset}", *cache_overrides(suite.overrides)]
    for own, runs in groups.items():
        mods = sorted({m for r in runs for m in r.modalities})
        tag = "-" + hashlib.sha256("\n".join(own).encode()).hexdigest()[:8] if own else ""
        log = out / f"cache{tag}.log"
        names = ", ".join(r.name for r in runs)
        print(f"[suite] caching {','.join(mods)} with the {suite.preset} preset"
              + (f" and {', '.join(own)} (for {names})" if own else ""), flush=True)
        kwargs = {"overrides": [*base, *own], "modalities": mods, "progress": progress}
        code = run_child("cache", kwargs, log, progress)
        if code == 0:
            continue
        if not own:  # the child's own one-line error (file, line, item or key), not a traceback of ours
            raise CacheError(f"building the layer-state cache for {names} failed (see {log}): "
                             f"{failure_text(log, code).removeprefix('crossan: error: ')}")
        why = (f"building the layer-state cache for its overrides {', '.join(own)} failed (see {log}): "
               f"{failure_text(log, code)}")
        print(f"[suite] {names}: {why}", flush=True)
        errors.update(dict.fromkeys((r.name for r in runs), why))
    return time.perf_counter() - t0, errors


class DataFingerprints:
    """The ``split_fingerprint`` and ``item_fingerprint`` (:mod:`crossan.ranking`) of the data a (run, seed)
    would be trained on now: the data its overrides name, prepared as the trainer prepares it
    (:func:`crossan.data.prepare`), once per distinct ``data`` configuration and only when first asked (only a
    finished run about to be reused needs them)."""

    def __init__(self) -> None:
        self._known: dict[str, dict[str, str]] = {}
        self._data: dict[str, Any] = {}
        self._content: dict[tuple[int, str], str] = {}  # content digests: each dataset's media hashed once

    def _prepared(self, overrides: list[str]) -> tuple[Any, Any, str]:
        from crossan.data import prepare

        cfg = load_config([], overrides)
        key = json.dumps(to_dict(cfg.data), sort_keys=True, default=str)
        if key not in self._data:
            self._data[key] = prepare(cfg.data)
        return cfg, self._data[key], key

    def __call__(self, overrides: list[str]) -> dict[str, str]:
        from crossan.ranking import item_fingerprint, split_fingerprint

        _, data, key = self._prepared(overrides)
        if key not in self._known:
            self._known[key] = {"split_fingerprint": split_fingerprint(data),
                                "item_fingerprint": item_fingerprint(data)}
        return self._known[key]

    def input_changes(self, results: dict[str, Any], overrides: list[str]) -> list[str]:
        """:func:`crossan.runs.input_changes`: how the cache or item content the (run, seed) would read now
        differs from what its results record (phrases)."""
        from crossan.runs import input_changes

        cfg, data, _ = self._prepared(overrides)
        return [phrase for _, phrase in input_changes(results, cfg, data, self._content)]

    def unrecorded(self, results: dict[str, Any], overrides: list[str]) -> list[str]:
        """The records of its inputs that a (run, seed) of ``overrides`` would write in its results.json now and
        ``results`` lacks: ``split_fingerprint`` and ``item_fingerprint`` always, ``cache_states`` for a run
        that reads the layer-state cache, ``content_sources`` for one that reads item content itself
        (:mod:`crossan.runs`). Without them, that a run read the inputs read now cannot be checked."""
        from crossan.runs import cache_states_digests, content_digests

        cfg, data, _ = self._prepared(overrides)
        now = {**self(overrides), "cache_states": cache_states_digests(cfg, data),
               "content_sources": content_digests(cfg, data, self._content)}
        return [k for k, v in now.items() if v and not results.get(k)]


def data_changes(results: dict[str, Any], now: dict[str, str]) -> list[str]:
    """How the data a finished run recorded (its results.json) differs from the data prepared ``now``
    (:class:`DataFingerprints`): ``split_fingerprint`` always (a run that does not record it cannot be
    checked), ``item_fingerprint`` when the run records it. Empty: the same data."""
    changes = []
    split = results.get("split_fingerprint")
    if split is None:
        changes.append("its results.json records no split_fingerprint (an older crossan), so the data it was "
                       "trained on cannot be checked")
    elif split != now["split_fingerprint"]:
        changes.append(f"split_fingerprint: {split} → {now['split_fingerprint']}")
    items = results.get("item_fingerprint")
    if items is not None and items != now["item_fingerprint"]:
        changes.append(f"item_fingerprint: {items} → {now['item_fingerprint']}")
    return changes


def config_changes(run_dir: Path, overrides: list[str], results: dict[str, Any] | None
                   ) -> tuple[list[str], list[str]]:
    """How the finished run in ``run_dir`` (``results``: its results.json) was configured otherwise than
    ``overrides`` resolve to now, as ``key: old → new``: (the changes that make it another run, those of
    :data:`crossan.runs.MOVABLE_KEYS`: its data or cache folder moved, which :func:`reuse_check` accepts only where the
    data's fingerprints and the inputs' digests are those of now).

    A changed ``precision`` is another run only where the compute dtype it resolves to here is not the one
    the run trained at (results.json ``compute_dtype``): as the trainer's ``--resume`` accepts another
    ``precision`` that continues a run at its checkpoint's dtype (:func:`crossan.runs.check_run_dir`), so a
    run trained at ``precision=auto`` on a CPU with bf16 units is reused by a suite that now sets
    ``precision=bf16``. An unchanged ``precision`` is the same run wherever ``auto`` resolves otherwise.
    A changed ``train.compile``, ``train.malloc`` or ``cache.prefetch`` (:data:`crossan.runs.EXECUTION_KEYS`) is
    never another run.
    :class:`RunError` naming the file when its config.yaml cannot be read or compared."""
    from crossan.runs import is_execution, is_move, saved_config

    saved = saved_config(run_dir)
    cfg = load_config([], overrides)
    try:
        changed = config_differences(saved, cfg)
    except (TypeError, ValueError, AttributeError) as e:  # e.g. keys of mixed types: not a config crossan wrote
        raise RunError(f"{run_dir / 'config.yaml'}: cannot be compared with the configuration asked for "
                       f"({type(e).__name__}: {e})") from None
    precision = [c for c in changed if c.startswith("precision:")]
    trained, now = (results or {}).get("compute_dtype"), _compute_dtype(cfg)
    if precision and trained is not None and trained == now:
        precision = []
    elif precision:
        precision = [f"{precision[0]}: {now or 'it cannot run'} here, it trained in "
                     f"{trained or 'a compute dtype it did not record'}"]
    other = [c for c in changed if not (c.startswith("precision:") or is_move(c) or is_execution(c))]
    return other + precision, [c for c in changed if is_move(c)]


def _compute_dtype(cfg: Config) -> str | None:
    """The compute dtype ``cfg``'s training steps would run at here (``bfloat16`` or ``float32``), as the
    trainer resolves it; None where it cannot run (bf16 on an Apple GPU, a device this machine lacks)."""
    from crossan.precision import compute_dtype, dtype_name
    from crossan.utils import resolve_device

    try:
        return dtype_name(compute_dtype(cfg.precision, resolve_device(cfg.device)))
    except (ValueError, RuntimeError):
        return None


def resume_refusal(run_dir: Path, overrides: list[str]) -> str | None:
    """Why the trainer's ``--resume`` would refuse to continue the unfinished run in ``run_dir`` with
    ``overrides`` (:func:`crossan.runs.check_run_dir`: another configuration, a ``config.yaml`` that cannot be
    read); None when it accepts the folder (another ``precision`` included: the trainer then checks the
    dtype its checkpoint records)."""
    from crossan.runs import check_run_dir

    try:
        check_run_dir(run_dir, load_config([], overrides), resume=True)
    except RunError as e:
        return str(e)
    except (TypeError, ValueError, AttributeError) as e:  # e.g. keys of mixed types: not a config crossan wrote
        return (f"{run_dir / 'config.yaml'}: cannot be compared with the configuration asked for "
                f"({type(e).__name__}: {e})")
    return None


def _other_version(run_dir: Path) -> str:
    """`` (written by crossan X; this is Y)`` when the run's results.json names another crossan version (or
    none); the configuration was checked equal, and the report flags the row (``crossan.reports.table``)."""
    try:
        written = json.loads((run_dir / "results.json").read_text()).get("crossan_version")
    except (OSError, ValueError, AttributeError):
        return ""
    if written == crossan.__version__:
        return ""
    return f" (written by crossan {written or 'of unknown version'}; this is {crossan.__version__})"


def _refuse(rec: dict[str, Any], error: str) -> tuple[dict[str, Any], None]:
    rec.update(status="failed", error=error)
    print(f"[suite] {rec['label']}: FAILED: {error}", flush=True)
    return rec, None


def reuse_check(run_dir: Path, method: str, overrides: list[str], data: Path, fingerprints: DataFingerprints
                ) -> tuple[str | None, str]:
    """Whether the finished run in ``run_dir`` may be reused for a (run, seed) of ``method`` and ``overrides``
    on ``data``: (why not, else None; a note for the line that says it is reused).

    Its configuration must be the one asked for (:func:`config_changes`; a ``config.yaml`` that cannot be read
    refuses it, naming the file), its data the data prepared now (:func:`data_changes`), the cache or item
    content it read the one read now (:meth:`DataFingerprints.input_changes`), and a plugin method's code
    unchanged. Where only its data or cache folder differ (:data:`crossan.runs.MOVABLE_KEYS`: the suite's output folder,
    which holds synthetic data, was moved), the same checks prove its inputs the same; they must all be
    recorded (:meth:`DataFingerprints.unrecorded`), and the note says it moved."""
    try:
        results = json.loads((run_dir / "results.json").read_text())
        if not isinstance(results, dict):
            raise ValueError(f"it holds a {type(results).__name__}, not a JSON object")
    except (OSError, ValueError) as e:
        unreadable: str | None = f"{run_dir / 'results.json'}: {type(e).__name__}: {e}"
        results = {}
    else:
        unreadable = None
    from crossan.runs import WEIGHTS

    gone = [f for f in (WEIGHTS, results.get("per_user_file")) if isinstance(f, str) and not (run_dir / f).is_file()]
    if gone:  # a finished run without its weights cannot be served or evaluated, nor paired without its ranks
        return (f"{run_dir} holds a finished run whose {' and '.join(gone)} {'is' if len(gone) == 1 else 'are'} "
                "gone"), ""
    moved: list[str] = []
    if (run_dir / "config.yaml").is_file():
        try:
            changed, moved = config_changes(run_dir, overrides, None if unreadable else results)
        except RunError as e:
            return str(e), ""
        if changed:
            return f"{run_dir} holds a run with another configuration ({'; '.join((changed + moved)[:3])})", ""
    unproved: list[str] = []
    if unreadable:
        differs = [f"it cannot be checked against the data now ({unreadable})"]
    else:
        try:
            differs = data_changes(results, fingerprints(overrides))
            if not differs:  # same items; their titles or media may have changed
                differs = fingerprints.input_changes(results, overrides)
            if moved and not differs:
                unproved = fingerprints.unrecorded(results, overrides)
        except Exception as e:  # noqa: BLE001 - data that cannot be read: refuse, naming why
            differs = [f"it cannot be checked against the data now ({type(e).__name__}: {e})"]
    if differs:
        return f"{run_dir} holds a run trained on other data than {data} holds now ({'; '.join(differs)})", ""
    if unproved:
        return (f"{run_dir} holds a run whose data or cache folder moved ({'; '.join(moved)}), and its "
                f"results.json records no {', '.join(unproved)}, so the inputs it read cannot be checked "
                "against those read now"), ""
    code = method_source_changes(method, results)
    if code:
        return f"{run_dir} holds a run that cannot be reused: {code}", ""
    return None, (f" (moved: {'; '.join(moved)}; its data and inputs checked the same by their fingerprints)"
                  if moved else "")


def retrain_advice(out: Path, name: str, run_dir: Path) -> str:
    """How to retrain a refused (run, seed): delete its run's folder (or the seed's) and run the suite again;
    ``--fresh`` retrains every (run, seed) of the suite, not this one alone."""
    return (f"to retrain this run, delete {out / 'runs' / name}/ (all its seeds) or {run_dir}/ (this seed) and "
            "run the suite again, or choose another --out (--fresh retrains every run of the suite)")


def _job(suite: Suite, run: RunSpec, seed: int, data: Path, out: Path, resume: bool, label: str, *,
         alone: bool, fingerprints: DataFingerprints | None = None, cache_error: str | None = None,
         repeat: int = 1) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The record of one (run, seed) and the arguments to train it (None: reused, or refused).

    ``alone``: whether it would train with nothing else of the suite running (recorded once it has trained);
    ``fingerprints``: the data's fingerprints, checked before a finished run is reused; ``cache_error``: why
    the layer-state cache this run reads could not be built (it then fails unless it finished earlier);
    ``repeat`` K > 1: the K-th training of the seed, for its cost only (``seed-S.cost-K``)."""
    name = f"seed-{seed}" + (f".cost-{repeat}" if repeat > 1 else "")
    run_dir = out / "runs" / run.name / name
    log_path = out / "runs" / run.name / f"{name}.log"
    overrides = run_overrides(suite, run, str(data), seed)
    rec: dict[str, Any] = {"seed": seed, "dir": str(run_dir), "log": str(log_path), "status": "ok", "label": label,
                           "t0": time.perf_counter(), "wall_s": 0.0, "alone": alone,
                           "at_once": 1 if alone else suite.parallel, "repeat": repeat}
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # --fresh: this suite's own output folder for this (run, seed)
    retrain = retrain_advice(out, run.name, run_dir)
    if (run_dir / "results.json").is_file():
        refused, note = reuse_check(run_dir, run.method, overrides, data, fingerprints or DataFingerprints())
        if refused:
            return _refuse(rec, f"{refused}; {retrain}")
        print(f"[suite] {label}: done earlier, reusing {run_dir / 'results.json'}{_other_version(run_dir)}{note}",
              flush=True)
        rec["cpu_s"] = cpu_seconds(log_path)
        rec["reused"] = True
        record = read_training_record(run_dir)  # None: trained before the suite recorded how
        rec["alone"] = None if record is None else record["trained_alone"]
        rec.pop("at_once")
        return rec, None
    if (run_dir / "config.yaml").is_file():  # interrupted: resumed where the trainer's --resume accepts it
        refused = resume_refusal(run_dir, overrides)
        if refused:
            return _refuse(rec, f"{refused}; {retrain}")
    if cache_error is not None:
        return _refuse(rec, cache_error)
    again = (run_dir / "config.yaml").is_file()
    if again:  # resuming: the epochs so far trained as its note says (no note: not known, so not alone)
        before = read_training_record(run_dir)
        rec["alone"] = alone and before is not None and before["trained_alone"]
    write_training_record(run_dir, rec["alone"], rec["at_once"], finished=False)
    rec["start_line"] = (f"[suite] {label} ({run.method}, {'+'.join(run.modalities)})"
                         + (" resuming" if again else ""))
    return rec, {"overrides": overrides, "run_dir": str(run_dir), "resume": again}


def finish_job(rec: dict[str, Any], exitcode: int) -> None:
    """Complete the record of a (run, seed) whose training child ended with ``exitcode``; a finished one gets
    its note of how it trained (:func:`crossan.reports.children.write_training_record`)."""
    log_path = Path(rec["log"])
    rec["wall_s"] = round(time.perf_counter() - rec["t0"], 1)
    rec["cpu_s"] = cpu_seconds(log_path)
    if exitcode != 0:
        rec.update(status="failed", error=failure_text(log_path, exitcode))
        print(f"[suite] {rec['label']}: FAILED: {rec['error']}", flush=True)
    else:
        write_training_record(rec["dir"], rec["alone"], rec["at_once"], finished=True)


def train_alone(suite: Suite, run: RunSpec, seed: int, data: Path, out: Path, resume: bool, progress: bool,
                label: str, fingerprints: DataFingerprints | None = None, cache_error: str | None = None,
                repeat: int = 1) -> dict[str, Any]:
    """Train (or reuse) one (run, seed) with nothing else running (its time and memory are measured)."""
    rec, kwargs = _job(suite, run, seed, data, out, resume, label, alone=True, fingerprints=fingerprints,
                       cache_error=cache_error, repeat=repeat)
    if kwargs is not None:
        print(rec["start_line"], flush=True)
        finish_job(rec, run_child("train", {**kwargs, "progress": progress}, Path(rec["log"]), progress))
    return rec


def run_suite(suite: Suite, out: Path, resume: bool = True, progress: bool = True) -> list[dict[str, Any]]:
    """Train every (run, seed) of ``suite`` into ``out/runs/NAME/seed-S``, write the table, report and plots,
    and return one row per run (means over seeds, intervals, the paired test against the reference).

    Every run's first seed trains alone (its time and memory are the run's cost), ``cost_repeats`` times
    (rounds over all runs); with ``parallel`` > 1 the other seeds then train that many at a time.
    """
    from crossan.runs import lock_run_folder, unlock_run_folder

    out.mkdir(parents=True, exist_ok=True)
    # one suite writes into an --out at a time (two made the same data, logs and records side by side)
    lock = lock_run_folder(out, "another crossan bench or demo is writing into this folder (it holds the "
                                "folder's lock); wait for it to end, or choose another --out")
    try:
        return _run_suite(suite, out, resume, progress)
    finally:
        unlock_run_folder(lock)


def _run_suite(suite: Suite, out: Path, resume: bool, progress: bool) -> list[dict[str, Any]]:
    from crossan.data.synth import synth_digest
    from crossan.reports.table import collect_run, write_outputs

    t_start = time.perf_counter()
    data = resolve_data(suite.data, out, progress)
    data_digest = synth_digest(data)  # now, before any run: a changed synthetic folder is refused here
    plugins = plugin_sources(suite)  # the code the plugin runs train (or are reused) with
    data_s = time.perf_counter() - t_start
    cache_s, cache_errors = ensure_cache(suite, data, out, progress)
    fingerprints = DataFingerprints()
    if suite.parallel > 1:
        alone = [(run, suite.seeds_of(run)[0]) for run in suite.runs]
        together = [(run, seed) for run in suite.runs for seed in suite.seeds_of(run)[1:]]
    else:
        alone, together = [(run, seed) for run in suite.runs for seed in suite.seeds_of(run)], []
    n = len(alone) + len(together)
    done: dict[str, list[dict[str, Any]]] = {r.name: [] for r in suite.runs}
    for i, (run, seed) in enumerate(alone, 1):
        done[run.name].append(train_alone(suite, run, seed, data, out, resume, progress,
                                          f"{i}/{n} {run.name} seed {seed}", fingerprints,
                                          cache_errors.get(run.name)))
    t_repeats = time.perf_counter()
    for k in range(2, suite.cost_repeats + 1):  # one round over the runs per repeat
        print(f"[suite] cost repeat {k} of {suite.cost_repeats}: each run's first seed again, alone", flush=True)
        for run in suite.runs:
            first = done[run.name][0]
            if first["status"] == "ok":
                done[run.name].append(train_alone(suite, run, first["seed"], data, out, resume, progress,
                                                  f"{run.name} seed {first['seed']} (cost repeat {k})",
                                                  fingerprints, cache_errors.get(run.name), repeat=k))
    t_together = time.perf_counter()
    if together:
        print(f"[suite] training the other seeds {suite.parallel} at a time (quality only)", flush=True)
        jobs = [_job(suite, run, seed, data, out, resume, f"{i}/{n} {run.name} seed {seed}", alone=False,
                     fingerprints=fingerprints, cache_error=cache_errors.get(run.name))
                for i, (run, seed) in enumerate(together, len(alone) + 1)]
        train_parallel(jobs, suite.parallel, finish_job)
        for (run, _), (rec, _) in zip(together, jobs):
            done[run.name].append(rec)
    rows = [collect_run(run, sorted(done[run.name], key=lambda r: (suite.seeds.index(r["seed"]), r["repeat"])))
            for run in suite.runs]
    for run, row in zip(suite.runs, rows):  # which encoders each row's numbers come from (pretrained or not)
        row["encoders"] = encoder_statement(suite, run)
    meta = {"suite": suite.name, "description": suite.description, "data": str(data), "preset": suite.preset,
            "data_digest": data_digest, "seeds": suite.seeds, "reference": suite.reference,
            "parallel": suite.parallel, "cost_repeats": suite.cost_repeats, "plugins": plugins,
            "data_s": round(data_s, 1), "cache_build_s": round(cache_s, 1),
            "alone_s": round(t_repeats - t_start - data_s - cache_s, 1),
            "repeats_s": round(t_together - t_repeats, 1),
            "together_s": round(time.perf_counter() - t_together, 1),
            "total_s": round(time.perf_counter() - t_start, 1),
            "machine": machine_description(rows), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write_outputs(rows, meta, out)
    return rows


def plugin_sources(suite: Suite) -> dict[str, dict[str, str]]:
    """Each plugin method among ``suite``'s runs → its module, file and SHA-256 (:func:`crossan.methods.
    method_source`), for the report, which says which code made a plugin's rows (its plugins may come from
    the suite's ``plugins``, ``--plugin``, ``$CROSSAN_PLUGINS`` or an entry point); {} for built-in methods."""
    sources = {r.method: method_source(r.method) for r in suite.runs}
    return {name: source for name, source in sources.items() if source is not None}


def machine_description(rows: list[dict[str, Any]] | None = None) -> str:
    """The report's machine line: the devices the costed runs of ``rows`` trained on (results.json ``device``:
    ``cuda (GPU name)``, or ``cpu (CPU, torch threads)``), then the system, Python and torch. Without such
    a row, this machine: its GPU 0 where CUDA is available, else its CPU. (The line used to name GPU 0 on
    any machine with one, also for a suite whose runs trained on the CPU or on another GPU.)"""
    import platform

    import torch

    from crossan.utils import cpu_description

    software = f"{platform.system()}, Python {platform.python_version()}, torch {torch.__version__}"
    devices = sorted({str(r["device"]) for r in rows or [] if r.get("device")})
    if devices:
        return f"{'; '.join(devices)}; {software}"
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}"
    return f"CPU {cpu_description()}, {software}"

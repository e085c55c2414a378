"""One trainer for every method: build → train with early stopping → test at the best epoch → results.json.

:func:`train` reads as its steps: :func:`_start` (check, build, write the config), :func:`_initial_state`
(fresh, or the checkpoint's under ``--resume``), :func:`_run_epoch` until early stopping, :func:`_test_best`
(results.json, per_user.npz). What the run folder holds and how files are written and read back is
:mod:`crossan.runs`; the model is assembled by :mod:`crossan.model` and scored by :mod:`crossan.ranking`.
The names they had here are re-exported.

What one training step runs (:func:`train_epoch`), for a side-network method:

    Recommender.loss(inputs, targets)                       recommender.py
      embed_unique: each distinct item of the batch once
        ContentTower.forward(items)                         towers/content.py: the side inputs, tap-major
          CrossanTower.encode / IISANTower.encode           towers/crossan.py, towers/iisan.py: the chains
            sanb_step per depth                             towers/sanb.py: the side adapter blocks
          heads, then fusion (MOMEF, or concat)             towers/momef.py, towers/crossan.py
      SASRec over each window's item embeddings             user_encoder.py
      the loss over the batch's slots (or unique items)     recommender.py
    backward, Adam step, gradients freed
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import crossan
from crossan import distributed as dist
from crossan.config import Config, save_config
from crossan.data import DataError, SequentialData, prepare
from crossan.errors import CacheError, ConfigError
from crossan.evaluation import mean_metrics
from crossan.methods import method_source
from crossan.model import build_model, module_report, param_groups
from crossan.precision import compute_dtype, dtype_name
from crossan.ranking import (
    check_finite_table,
    evaluate,
    evaluate_ranks,
    item_fingerprint,
    split_fingerprint,
    split_report,
)
from crossan.recommender import Recommender, check_shifted
from crossan.runs import (
    CHECKPOINT,
    EVALUATION,
    HISTORY,
    PER_USER,
    RESULT_KEYS,
    RESULTS,
    WEIGHTS,
    NonFiniteError,
    ResumeCheck,
    RunError,
    TrainState,
    cache_states_digests,
    check_run_dir,
    content_digests,
    load_checkpoint,
    load_run,
    load_weights,
    lock_run_folder,
    pending_weights,
    rescore,
    resolve_paths,
    save_checkpoint,
    save_per_user,
    save_weights,
    settle_best_weights,
    truncate_history,
    unlock_run_folder,
)
from crossan.towers.base import tower_label
from crossan.towers.content import ContentTower, auto_compile, fewest_training_steps
from crossan.utils import (
    PeakRSSMonitor,
    atomic_write_json,
    configure_malloc,
    count_params,
    describe_device,
    malloc_mode,
    remove_stale_temporaries,
    resolve_device,
    seed_everything,
)

__all__ = [  # the names other modules and tests import from here
    "RESULT_KEYS", "NonFiniteError", "RunError", "TrainState", "build_model", "check_finite_table",
    "evaluate", "evaluate_ranks", "load_run", "load_weights", "module_report", "param_groups", "rescore",
    "resolve_compile", "save_per_user", "split_fingerprint", "split_report", "train", "train_epoch",
]

log = logging.getLogger("crossan")


# --------------------------------------------------------------------------------------------- the loop
def _setup_logging(run_dir: Path) -> None:
    """The run's log: the "crossan" logger to ``run_dir/train.log`` and stderr (rank 0), until
    :func:`_end_logging`."""
    _end_logging()
    log.propagate = False
    if not dist.is_main():  # other ranks stay quiet
        log.setLevel(logging.WARNING)
        return
    log.setLevel(logging.INFO)
    fh = _RunLogHandler(run_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(fh)
    sh = logging.StreamHandler()
    sh.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(sh)


class _RunLogHandler(logging.FileHandler):
    """train.log's handler: a write that fails (a full disk) is said once on stderr, and the log goes on there
    only; logging's own handling printed a traceback for every later line, around the run's real error. Other
    errors of a record (a message that cannot be formatted) are logging's to report, and the log goes on."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):  # a record that cannot be formatted (a plugin's bad %d): logging's way
            super().handleError(record)
            return
        self.failed = True
        why = err.strerror or err
        print(f"crossan: warning: cannot write {self.baseFilename} ({why}); the run's log goes on on stderr only",
              file=sys.stderr, flush=True)


def _end_logging() -> None:
    """Detach and close what :func:`_setup_logging` attached and give the "crossan" logger back its default
    state, so that what a later step of the process logs (another dataset's reader, a cache build) does not
    land in this run's train.log. A close that fails (its flush on a full disk) does not hide the error the run
    stopped with."""
    for h in list(log.handlers):
        log.removeHandler(h)
        try:
            h.close()
        except OSError:
            pass
    log.propagate = True
    log.setLevel(logging.NOTSET)


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """This rank's share of each global batch of an epoch's shuffled order.

    ``batch_size`` is the global batch: under torchrun every rank takes every W-th example of it, so the
    examples per step and the learning rate are the same for any world size W. The in-batch softmax,
    though, draws its negatives from the rank's own share (1/W of the batch), so the loss is not exactly the
    single-process one (each position weighs the same: :func:`crossan.recommender.share_weight`).
    A last batch with fewer than W examples is dropped so that every rank takes the same number of steps.
    """
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    W, r = dist.world_size(), dist.rank()
    return [b[r::W] for b in torch.randperm(n, generator=g).split(batch_size) if len(b) >= W]


def _num_batches(n: int, batch_size: int) -> int:
    """How many steps :func:`_batches` gives per epoch (without drawing the permutation)."""
    full, last = divmod(n, batch_size)
    return full + (1 if last >= dist.world_size() else 0)


def data_fingerprints(data: SequentialData) -> dict[str, str]:
    """What identifies the data a run trains on (checked when a checkpoint is resumed)."""
    return {"split_fingerprint": split_fingerprint(data), "item_fingerprint": item_fingerprint(data)}


def _seed_epoch(seed: int, epoch: int) -> None:
    """Dropout and sampled negatives draw from a stream fixed by (seed, epoch, rank): resuming after any
    finished epoch replays exactly what an uninterrupted run does, with no RNG state to save."""
    torch.manual_seed(seed * 7919 + epoch * 104729 + dist.rank())


def train_epoch(step_model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor],
                inputs: torch.Tensor, targets: torch.Tensor, device: torch.device, grad_clip: float = 0.0,
                desc: str = "train", progress: bool = True, first_loss: list[torch.Tensor] | None = None) -> float:
    """One pass over ``batches`` (index tensors into ``inputs``/``targets``); returns the mean loss (under
    torchrun, over every rank's steps: each rank takes the same number). ``first_loss``: a list that gets the
    first step's loss (a tensor, before any weight changed; no sync).

    ``step_model(x, y)`` returns the loss (a :class:`Recommender`, or it wrapped in DDP). Gradients are
    freed after each step, so none are held between steps or after the call. The device is synchronised at
    the end so that wall-clock timing around this call is honest on a GPU.
    """
    loss_sum, steps = torch.zeros((), device=device), 0  # summed on the device: no sync per step
    bar = tqdm(batches, desc=desc, leave=False, disable=not progress)
    for idx in bar:
        x, y = inputs[idx].to(device, non_blocking=True), targets[idx].to(device, non_blocking=True)
        loss = step_model(x, y)
        if first_loss is not None and steps == 0:
            first_loss.append(loss.detach())
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(step_model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)  # freed before the next forward: they never sit beside its activations
        loss_sum += loss.detach()
        steps += 1
        if progress and steps % 20 == 0:
            bar.set_postfix(loss=f"{float(loss_sum) / steps:.4f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = torch.stack([loss_sum.double(), torch.tensor(float(steps), dtype=torch.float64, device=device)])
    dist.all_reduce_sum_([total])
    return float(total[0]) / max(1.0, float(total[1]))


@dataclass
class _Run:
    """What one call of :func:`train` holds while it runs."""

    cfg: Config
    run_dir: Path
    data: SequentialData
    device: torch.device
    model: Recommender
    opt: torch.optim.Optimizer
    memory: PeakRSSMonitor
    progress: bool
    params: tuple[int, int] = (0, 0)
    """(trainable, total) parameters of the model."""
    modules: dict[str, dict[str, int]] | None = None
    """:func:`module_report` of the model."""
    step_model: torch.nn.Module | None = None
    """``model``, or it wrapped in DistributedDataParallel under torchrun."""
    fingerprints: dict[str, str] = field(default_factory=dict)
    """:func:`data_fingerprints` of ``data`` (stored in each checkpoint, compared on resume)."""
    compute_dtype: str = "float32"
    """``precision`` resolved on ``device`` (stored in each checkpoint, compared on resume)."""
    cache_states: dict[str, str] = field(default_factory=dict)
    """:func:`~crossan.runs.cache_states_digests`: the cache the run read (results.json ``cache_states``)."""
    content_sources: dict[str, str] = field(default_factory=dict)
    """:func:`~crossan.runs.content_digests`: the titles/media the run read itself (``content_sources``)."""
    folder_lock: int | None = None
    """:func:`~crossan.runs.lock_run_folder`'s descriptor (rank 0), released when :func:`train` ends."""
    method_source: dict[str, str] | None = None
    """:func:`~crossan.methods.method_source` when the run started: a plugin method's file and its SHA-256
    (stored in each checkpoint, compared on resume, recorded in results.json); None for crossan's own."""
    resume_check: ResumeCheck = field(default_factory=ResumeCheck)
    """What a ``--resume`` set otherwise than config.yaml and :func:`check_run_dir` accepted (``precision``, the
    data or cache folder)."""
    log_size: int = 0
    """The size of ``train.log`` before this process wrote to it (0: a new run)."""
    compiled: tuple[bool, str] = (False, "")
    """Whether the side network trains through ``torch.compile`` (``train.compile`` resolved) and why
    (logged at the start; results.json ``train_compiled``)."""
    first_step_loss: float | None = None
    """This process's loss at the first step of the last epoch it trained (:func:`_check_finite`)."""


def train(cfg: Config, run_dir: str | Path, resume: bool = False, data: SequentialData | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` and return the results (also written to ``results.json``).

    Under torchrun the model is wrapped in DistributedDataParallel; rank 0 writes every file. Every rank must
    call it: its validation and test share the item table and the users among the ranks (``collective=True``),
    unlike the tools that read the finished run folder afterwards, which run on any one rank alone.
    """
    run = _start(cfg, Path(run_dir), resume, data, progress)
    try:
        try:
            state = _initial_state(run, resume)
        except RunError:  # a refused checkpoint: the run's log is left as it was (no header of a run that never ran)
            _end_logging()
            _restore_log(run)
            raise
        _wrap_for_torchrun(run)
        inputs, targets = training_rows(run.data)
        if cfg.train.loss != "bce" and cfg.train.negatives == "slots":
            check_shifted(inputs, targets)  # once here: the step checks only CPU batches (no GPU sync per step)
        while state.epoch < cfg.train.epochs and state.bad_epochs < cfg.train.patience:
            _run_epoch(run, state, inputs, targets)
        return _test_best(run, state)
    finally:  # a run that fails (a non-finite loss, a refused checkpoint) stops its memory sampling thread too
        try:
            run.memory.stop()
            _end_logging()
        finally:
            unlock_run_folder(run.folder_lock)


def _restore_log(run: _Run) -> None:
    """Cut ``train.log`` back to what it held before this process opened it (rank 0)."""
    path = run.run_dir / "train.log"
    if dist.is_main() and path.is_file() and path.stat().st_size > run.log_size:
        with open(path, "r+b") as f:
            f.truncate(run.log_size)


def training_rows(data: SequentialData) -> tuple[torch.Tensor, torch.Tensor]:
    """The training windows and targets of the users that have at least one training target.

    A user with exactly 3 interactions (``data.min_interactions=3``) keeps one item before its validation
    and test items, so its window is all padding: a batch of only such users would have no position to
    learn from, and its loss would be the mean over nothing (NaN). Such users are still validated and tested.
    """
    inputs, targets = torch.as_tensor(data.train_inputs), torch.as_tensor(data.train_targets)
    has_target = _has_training_target(targets)
    if bool(has_target.all()):
        return inputs, targets
    log.info("%d users with no training target (3 interactions) are left out of training; they are still "
             "validated and tested", int((~has_target).sum()))
    return inputs[has_target], targets[has_target]


def _has_training_target(targets: torch.Tensor) -> torch.Tensor:
    """Bool[users]: which users' training windows hold at least one target (the rows :func:`training_rows` keeps)."""
    return targets.ne(0).any(1)


def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """Adam over the method's parameter groups; master weights and optimiser state stay fp32.

    The fused kernel (one pass over all tensors) is used on CPU and CUDA: on the 2-core CPU the default
    for-loop implementation took 8.7 ms per step against 1.4 ms fused, about 7% of a side-network step.
    It computes the same update as the for-loop version up to float rounding.
    """
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(param_groups(model, cfg), weight_decay=cfg.train.weight_decay, fused=fused)


def preload(cfg: Config, device: torch.device) -> None:
    """Import what building this run's model and optimiser will import, before the idle baseline of the
    memory figure is taken: the libraries' resident memory is the same for every method, so it belongs in
    the baseline, not in a method's peak. Measured on a CPU: the optimiser's first use loads about 70 MiB of
    modules, transformers and peft for an end-to-end tower about 80 more; left in, they made the ID model's
    figure mostly imports and biased the cost ratios against the end-to-end baselines."""
    import importlib

    from crossan.methods import get_method

    method = get_method(cfg.method)
    importlib.import_module(method.module)
    dummy = torch.nn.Parameter(torch.zeros(1, device=device))
    opt = torch.optim.Adam([dummy], fused=device.type in ("cpu", "cuda"))
    dummy.grad = torch.zeros_like(dummy)
    opt.step()  # the fused step's kernels and whatever it imports on first use
    if method.reads_cache or method.runs_backbone:  # the cache's check describes the encoders (transformers)
        import transformers

        import crossan.cache.read  # noqa: F401
        from crossan.encoders import resolve_specs
        from crossan.encoders.backbones import describe_backbone

        live = method.runs_backbone or not cfg.cached
        for m, spec in resolve_specs(cfg, cfg.modalities).items():
            hf_config = describe_backbone(m, spec).hf_config
            if live and hf_config is not None and type(hf_config) in transformers.AutoModel._model_mapping:
                transformers.AutoModel._model_mapping[type(hf_config)]  # imports the model's module


def _start(cfg: Config, run_dir: Path, resume: bool, data: SequentialData | None, progress: bool) -> _Run:
    """Read the data, check the run folder, build the model and optimiser, then (rank 0) write config.yaml.

    Bad input, a taken run folder and a missing cache all fail before any file is written.
    """
    data = data if data is not None else prepare(cfg.data)
    if cfg.train.epochs > 0 and not np.asarray(data.train_targets).any():
        raise DataError(f"{data.name}: none of its {len(data.train_targets):,} users has a training target (a user "
                        "needs 4 interactions or more: its last two are its validation and test targets), so no "
                        "training step could run; use data with longer histories, or train.epochs=0 to evaluate "
                        "the initial weights")
    device = dist.init_from_env(resolve_device(cfg.device))
    run_dtype = dtype_name(compute_dtype(cfg.precision, device))  # refuses bf16 where it cannot run
    if cfg.train.batch_size < dist.world_size():
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is smaller than the {dist.world_size()} "
                          "processes it is shared among, so no step could run")
    configure_malloc(cfg.train.malloc, device)
    resolve_paths(cfg)  # config.yaml stores absolute paths: --resume and serving work from any folder
    # one process trains into a folder at a time, from its checks on (rank 0 holds it for the torchrun job); a
    # new folder is locked once made, below
    lock = lock_run_folder(run_dir) if dist.is_main() and run_dir.is_dir() else None
    memory = None
    try:
        resume_check = check_run_dir(run_dir, cfg, resume)
        preload(cfg, device)
        seed_everything(cfg.seed)
        memory = PeakRSSMonitor().start()  # CPU memory: peak over the run minus this idle baseline
        states_before = cache_states_digests(cfg, data)
        model = build_model(cfg, data, device)
        compiled = resolve_compile(cfg, data, model, device)
        opt = make_optimizer(model, cfg, device)
        # recorded in results.json and each checkpoint; every rank computes them (the media hashing in shares,
        # whose gather waits up to CACHE_TIMEOUT: rank 0 hashing alone outlasted the others' 30-minute barrier)
        states = cache_states_digests(cfg, data)
        if states != states_before:  # `crossan cache` updated it while this run read it: which did it read?
            changed = ", ".join(m for m in cfg.modalities if states.get(m) != states_before.get(m))
            raise CacheError(f"the layer-state cache of {changed} changed while this run opened it (a crossan cache "
                             "process updated it); run the command again to train on the updated cache")
        inputs_read = {"cache_states": states,
                       "content_sources": content_digests(cfg, data, collective=True),
                       "method_source": method_source(cfg.method)}
        dist.barrier()  # every rank has checked and built before rank 0 writes anything
        if dist.is_main() and not resume:
            run_dir.mkdir(parents=True, exist_ok=True)
            if lock is None:  # two new runs of one --out that passed their checks together: one goes on
                lock = lock_run_folder(run_dir)
                check_run_dir(run_dir, cfg, resume)  # and not over a run that another finished there meanwhile
            save_config(cfg, run_dir / "config.yaml")
        dist.barrier()
        log_file = run_dir / "train.log"
        log_size = log_file.stat().st_size if dist.is_main() and log_file.is_file() else 0
        _setup_logging(run_dir)
        run = _Run(cfg, run_dir, data, device, model, opt, memory, progress and dist.is_main(),
                   params=count_params(model), modules=module_report(model), fingerprints=data_fingerprints(data),
                   compute_dtype=run_dtype, resume_check=resume_check, folder_lock=lock, log_size=log_size,
                   compiled=compiled,
                   **inputs_read)
        _log_start(run)
    except BaseException:  # e.g. a missing cache: the sampling thread would poll for the rest of the process
        try:
            if memory is not None:
                memory.stop()
            _end_logging()
        finally:
            unlock_run_folder(lock)
        raise
    return run


def resolve_compile(cfg: Config, data: SequentialData, model: Recommender,
                     device: torch.device) -> tuple[bool, str]:
    """``train.compile`` for this run: whether its side network trains compiled, and why. ``auto`` is decided
    here (:func:`~crossan.towers.content.auto_compile`) from the steps the run takes at the least, the same on
    every ``--resume`` of it; ``true`` and ``false`` were applied when the tower was built."""
    tower = model.tower
    if cfg.train.compile == "auto":
        rows = int(_has_training_target(torch.as_tensor(data.train_targets)).sum())  # training_rows' count
        steps = _num_batches(rows, cfg.train.batch_size)
        if cfg.train.max_steps_per_epoch:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        on, why = auto_compile(tower, device, fewest_training_steps(cfg.train, steps))
        if isinstance(tower, ContentTower):
            tower.compile = on
        return on, f"train.compile=auto: {'on' if on else 'off'} ({why})"
    on = isinstance(tower, ContentTower) and tower.compiled_on(device)
    return on, f"train.compile={str(cfg.train.compile).lower()}"


def _checkpoint_inputs(run: _Run) -> dict[str, str]:
    """What a checkpoint records of the inputs its epochs read, compared on ``--resume``: the data fingerprints
    and, per modality, the digest of the cached states (``cache_states.<m>``) or of the content the tower reads
    itself (``content_sources.<m>``). A cache updated after a title changed keeps the item ids, so the
    fingerprints alone would let a resumed run train its later epochs on other inputs than its first ones.
    A plugin method's code (``method_source.sha256``) is one of those inputs: epochs trained by other code
    under the same name are not continued. (Every rank knows the digests and makes the comparison, so that all
    of them refuse a changed input.)"""
    code = {} if run.method_source is None else {"method_source.sha256": run.method_source["sha256"]}
    return {**run.fingerprints, **{f"cache_states.{m}": d for m, d in run.cache_states.items()},
            **{f"content_sources.{m}": d for m, d in run.content_sources.items()}, **code}


def _log_start(run: _Run) -> None:
    cfg, data = run.cfg, run.data
    trainable, total = run.params
    log.info("crossan %s | method=%s modalities=%s | data %s: %d users, %d items | device %s | world size %d",
             crossan.__version__, cfg.method, ",".join(cfg.modalities), data.name, data.num_users,
             data.num_items, describe_device(run.device), dist.world_size())
    if data.dropped:  # data.on_bad_rows / on_unknown_items=drop: said here too, not in results.json only
        log.info("  rows dropped while reading the data (counted, not trained on): %s",
                 ", ".join(f"{reason} {n:,}" for reason, n in sorted(data.dropped.items())))
    if getattr(run.model.tower, "compilable", False):
        log.info("  side network %s: %s", "compiled" if run.compiled[0] else "eager", run.compiled[1])
    for name, r in run.modules.items():
        log.info("  %-28s trainable %12s / total %12s", name, f"{r['trainable']:,}", f"{r['total']:,}")
    log.info("  %-28s trainable %12s / total %12s", "ALL", f"{trainable:,}", f"{total:,}")


def _initial_state(run: _Run, resume: bool) -> TrainState:
    """The loop state to start from: a fresh one, or under ``--resume`` the checkpoint's (the files the
    interrupted process left are settled: history cut to the checkpoint, best weights, half-written files)."""
    state = TrainState(epoch_times=[], versions=[crossan.__version__])
    ckpt = run.run_dir / CHECKPOINT
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt, run.model, run.opt, _checkpoint_inputs(run), run.compute_dtype,
                                run.cfg.precision, run.resume_check.precision_from, run.cfg)
        log.info("resumed from %s after epoch %d (best %s=%.5f at epoch %d)", ckpt, state.epoch,
                 run.cfg.train.metric, state.best_metric, state.best_epoch)
        state.resumed_after = [*(state.resumed_after or []), state.epoch]
        if state.versions and state.versions[-1] != crossan.__version__:
            log.warning("the epochs before this resume were trained by crossan %s; this is %s (results.json "
                        "records both under trained_by_versions)", "/".join(state.versions), crossan.__version__)
            state.versions = [*state.versions, crossan.__version__]
        if state.peak_memory_kind not in (None, _memory_kind(run.device)):  # trained on another kind of device
            log.warning("the epochs before this resume ran on another kind of device (%s); the memory figures "
                        "cover the epochs from here on", state.peak_memory_kind)
            state.peak_memory_bytes, state.peak_rss_bytes, state.peak_memory_kind = 0, 0, None
    elif resume:  # stopped before the first checkpoint (or it was removed): nothing to continue from
        log.warning("--resume: %s has no checkpoint (training stopped before its first epoch was saved, or %s "
                    "was removed); starting from epoch 1", ckpt.parent, ckpt.name)
    if dist.is_main() and run.resume_check.moved:  # the data or cache moved; the checkpoint accepted them
        for line in run.resume_check.moved:
            log.info("resumed from another folder, %s; config.yaml now says so", line)
        save_config(run.cfg, run.run_dir / "config.yaml")
    if dist.is_main():
        truncate_history(run.run_dir / HISTORY, state.epoch)
        settle_best_weights(run.run_dir, state.best_epoch)
        if resume:  # what a process killed mid-write left (a checkpoint's worth each)
            for folder in (run.run_dir, ckpt.parent):
                for path in remove_stale_temporaries(folder):
                    log.info("removed %s, a file left half-written by the interrupted process", path)
            # the end of a run (its test) is written again when this one ends; until then a folder holding the
            # results of weights that training is about to replace would read as a finished run (a suite would
            # reuse it, `crossan evaluate` would score other weights than those results say)
            for name in (RESULTS, PER_USER, EVALUATION):
                if (run.run_dir / name).is_file():
                    (run.run_dir / name).unlink()
                    log.info("removed %s: the resumed run writes its results again when it ends", name)
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    return state


def _wrap_for_torchrun(run: _Run) -> None:
    """``run.step_model``: the model, or under torchrun the model in DistributedDataParallel."""
    run.step_model = run.model
    if dist.is_distributed():
        run.step_model = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)


def _run_epoch(run: _Run, state: TrainState, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Train one epoch, validate when due (saving the best weights), append history, save the checkpoint."""
    cfg, epoch = run.cfg, state.epoch + 1
    run.model.train()
    _seed_epoch(cfg.seed, epoch)
    batches = _batches(len(inputs), cfg.train.batch_size, cfg.seed, epoch)
    if cfg.train.max_steps_per_epoch:
        batches = batches[: cfg.train.max_steps_per_epoch]
    full_steps = _num_batches(len(inputs), cfg.train.batch_size)
    mean_loss, epoch_time, first_step_s = _timed_epoch(run, epoch, batches, full_steps, inputs, targets)
    _check_finite(run, epoch, mean_loss)
    state.epoch_times.append(epoch_time)
    record: dict[str, Any] = {"epoch": epoch, "loss": mean_loss, "train_time_s": epoch_time,
                              "steps": len(batches), "full_epoch_steps": full_steps}
    if first_step_s is not None:
        record["first_step_s"] = first_step_s  # timed apart, not in train_time_s (unless it was the only step)
    if epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs:
        record["valid"] = _validate(run, state, epoch)
        log.info("epoch %3d | loss %.4f | %.1fs | valid %s %s", epoch, record["loss"], epoch_time,
                 metrics_line(record["valid"], cfg), "*" if state.best_epoch == epoch else "")
    state.epoch = epoch
    peak, rss = _peaks(run)  # carried in the checkpoint, so that a resumed run's figure covers these epochs
    state.peak_memory_bytes = max(state.peak_memory_bytes, peak)
    state.peak_rss_bytes = max(state.peak_rss_bytes, rss)
    state.peak_memory_kind = _memory_kind(run.device)
    if dist.is_main():
        with (run.run_dir / HISTORY).open("a") as f:
            f.write(json.dumps(record) + "\n")
        save_checkpoint(run.run_dir / CHECKPOINT, run.model, run.opt, state, _checkpoint_inputs(run),
                        run.compute_dtype, run.cfg)
        settle_best_weights(run.run_dir, state.best_epoch)
    dist.barrier()


def _timed_epoch(run: _Run, epoch: int, batches: list[torch.Tensor], full_steps: int, inputs: torch.Tensor,
                 targets: torch.Tensor) -> tuple[float, float, float | None]:
    """Train over ``batches``: (mean loss, the full epoch's time, the first step's time when timed apart)."""
    cfg = run.cfg
    step_args = (run.step_model, run.opt)
    first_step_s = None
    firsts: list[torch.Tensor] = []
    t0 = time.perf_counter()
    if len(batches) < full_steps and len(batches) >= 2:
        # A capped epoch (train.max_steps_per_epoch) is extrapolated to a full one from its steps after the
        # first: what the first step does once (torch.compile, tables built on first use) is no per-step cost,
        # and times the full epoch's step count it swamped the figure. The same steps run, in the same order.
        first = train_epoch(*step_args, batches[:1], inputs, targets, run.device, cfg.train.grad_clip,
                            progress=False, first_loss=firsts)
        first_step_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        rest = train_epoch(*step_args, batches[1:], inputs, targets, run.device, cfg.train.grad_clip,
                           desc=f"epoch {epoch}", progress=run.progress)
        epoch_time = (time.perf_counter() - t1) * full_steps / (len(batches) - 1)
        mean_loss = (first + rest * (len(batches) - 1)) / len(batches)
    else:
        mean_loss = train_epoch(*step_args, batches, inputs, targets, run.device, cfg.train.grad_clip,
                                desc=f"epoch {epoch}", progress=run.progress, first_loss=firsts)
        epoch_time = time.perf_counter() - t0
        if len(batches) < full_steps:  # a one-step cap: that step, warm-up and all, is all there is
            first_step_s = epoch_time
            epoch_time *= full_steps / max(1, len(batches))
    run.first_step_loss = float(firsts[0]) if firsts else None  # one sync per epoch
    return mean_loss, epoch_time, first_step_s


def _check_finite(run: _Run, epoch: int, mean_loss: float) -> None:
    """:class:`NonFiniteError` for a non-finite epoch loss or parameter, before anything of the epoch is saved.
    The message names the method (and a plugin's tower class), built only when a check fails."""
    if math.isfinite(mean_loss):
        bad = first_non_finite(run.model, run.opt)
        if bad is None:
            return
    lr = run.cfg.train.lr
    # --resume would replay this epoch exactly (seeded) and refuses other learning rates: a new run is the way
    kept = {1: "", 2: "epoch 1 stays in this folder, but "}.get(
        epoch, f"epochs 1–{epoch - 1} stay in this folder, but ")
    again = f"{kept}--resume would only repeat this epoch; train again into a new folder"
    who = tower_label(run.model.tower, run.model.method)
    first = run.first_step_loss
    if not math.isfinite(mean_loss) and epoch == 1 and first is not None and not math.isfinite(first):
        # before the first update no learning rate has acted: the model's output or its inputs are at fault
        raise NonFiniteError(f"epoch 1: the training loss of {who} was {first} at the very first step, before "
                             "any weight changed, so the learning rate is not the cause: check the tower's "
                             "forward (an empty slice's mean, a division by zero, a log of 0) and the inputs; "
                             "nothing of this epoch was saved")
    if not math.isfinite(mean_loss):
        raise NonFiniteError(f"epoch {epoch}: the training loss of {who} is {mean_loss} (not finite); nothing "
                             f"of this epoch was saved. {again} with lower learning rates (train.lr={lr}) or "
                             "train.grad_clip, or check the inputs")
    # e.g. an overflowing gradient on the epoch's last step: the loss was still finite
    raise NonFiniteError(f"epoch {epoch}: {bad} of {who} holds non-finite values after training; "
                         f"nothing of this epoch was saved. {again} with lower learning rates (train.lr={lr}) or "
                         "train.grad_clip")


def _memory_kind(device: torch.device) -> str:
    """results.json's ``peak_memory_kind`` on ``device``."""
    return "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss_above_idle"


def _peaks(run: _Run) -> tuple[int, int]:
    """This process's peaks so far: (the method's peak memory — ``max_memory_allocated`` on a GPU, resident
    memory above the idle baseline on a CPU —, absolute peak resident memory)."""
    rss = run.memory.peak
    if run.device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(run.device)), int(rss)
    return int(rss - run.memory.baseline), int(rss)


def metrics_line(metrics: dict[str, float], cfg: Config) -> str:
    """The metrics a log line shows: HR@K and NDCG@K at one cut-off of ``eval.ks`` (10 when evaluated, else
    the smallest K above 10, else the largest), then ``train.metric`` when it is another, then MRR. Only
    metrics ``metrics`` holds are shown, so any ``eval.ks`` logs."""
    ks = sorted(cfg.eval.ks)
    k = 10 if 10 in ks else next((k for k in ks if k > 10), ks[-1])
    names = list(dict.fromkeys([f"HR@{k}", f"NDCG@{k}", cfg.train.metric, "MRR"]))
    return " ".join(f"{n} {metrics[n]:.4f}" for n in names if n in metrics)


def first_non_finite(model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> str | None:
    """What first holds a NaN or infinite entry: ``parameter NAME`` (a trainable parameter), else ``the
    optimiser's STATE of NAME`` (Adam's moments: an overflowing gradient can leave a parameter finite and
    frozen for good, its ``exp_avg_sq`` infinite); None when all are finite.

    One reduction per tensor, summed on the device, and a single sync: cheap next to an epoch."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    tensors = [(f"parameter {n}", p) for n, p in params]
    if opt is not None:
        for n, p in params:
            tensors += [(f"the optimiser's {k} of {n}", v) for k, v in opt.state.get(p, {}).items()
                        if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(t).all().to(tensors[0][1].device) for _, t in tensors])
    if bool(finite.all()):
        return None
    return tensors[int((~finite).nonzero()[0])][0]


def _validate(run: _Run, state: TrainState, epoch: int) -> dict[str, float]:
    """Validation metrics of this epoch; a new best is recorded in ``state`` and its weights saved."""
    valid = evaluate(run.model, run.data, "valid", run.cfg, where=f"epoch {epoch}", collective=True,
                     progress=run.progress)
    metric = valid[run.cfg.train.metric]
    if metric > state.best_metric:
        state.best_metric, state.best_epoch, state.bad_epochs = metric, epoch, 0
        state.best_valid = valid
        if dist.is_main():  # promoted to best.safetensors once this epoch's checkpoint is written
            save_weights(run.model, pending_weights(run.run_dir, epoch))
    else:
        state.bad_epochs += 1
    return valid


def _test_best(run: _Run, state: TrainState) -> dict[str, Any]:
    """Test the best epoch's weights; write results.json and per_user.npz (rank 0); return the results."""
    cfg, data, model, device = run.cfg, run.data, run.model, run.device
    if state.best_epoch == 0 and dist.is_main():  # no evaluation happened (epochs=0): test the current weights
        save_weights(model, run.run_dir / WEIGHTS)
    dist.barrier()
    load_weights(model, run.run_dir / WEIGHTS)
    model.tower.reset_stats()
    model.eval()
    t_eval = time.perf_counter()
    table = model.tower.embed_all(cfg.eval.batch_size, collective=True)  # every rank: split and gathered
    tower_stats = model.tower.stats()
    where = f"best epoch {state.best_epoch}"
    test_ranks = evaluate_ranks(model, data, "test", cfg, table, where=where, collective=True, progress=run.progress)
    test = mean_metrics(test_ranks, cfg.eval.ks)
    eval_time = time.perf_counter() - t_eval
    valid_ranks = evaluate_ranks(model, data, "valid", cfg, table, where=where, collective=True,
                                 progress=run.progress)
    valid = state.best_valid or mean_metrics(valid_ranks, cfg.eval.ks)
    run.memory.stop()
    peak, rss = _peaks(run)
    peak, rss = max(peak, state.peak_memory_bytes), max(rss, state.peak_rss_bytes)  # earlier processes' too
    trainable, total = run.params
    times = state.epoch_times or []
    results = {
        "method": cfg.method,
        "modalities": cfg.modalities,
        "dataset": data.name,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "valid": valid,
        "test": test,
        "train_time_per_epoch_s": float(np.mean(times)) if times else None,  # none trained (train.epochs=0)
        "eval_time_s": eval_time,
        "trainable_params": trainable,
        "total_params": total,
        "peak_memory_bytes": int(peak),
        "peak_memory_kind": _memory_kind(device),
        "idle_rss_bytes": run.memory.baseline,
        "peak_rss_bytes": int(rss),
        "device": describe_device(device),
        "compute_dtype": run.compute_dtype,
        "train_compiled": run.compiled[0],
        "malloc": malloc_mode(),
        "world_size": dist.world_size(),
        "modules": run.modules,
        "tower": tower_stats,
        "data": {"users": data.num_users, "items": data.num_items, "dropped_rows": data.dropped},
        "splits": split_report(data),
        "mask_history": cfg.eval.mask_history,
        **run.fingerprints,  # split_fingerprint, item_fingerprint
        "per_user_file": PER_USER,
        "crossan_version": crossan.__version__,
    }
    if state.resumed_after:  # its time and memory figures span these processes
        results["resumed_after_epochs"] = state.resumed_after
    if state.versions and state.versions != [crossan.__version__]:  # resumed across crossan versions
        results["trained_by_versions"] = state.versions
    if run.cache_states:  # so that scoring the run on a changed cache later says so
        results["cache_states"] = run.cache_states
    if run.content_sources:  # likewise for titles/media an end-to-end run read itself
        results["content_sources"] = run.content_sources
    if run.method_source is not None:  # a plugin's code, so that its runs are not reused after it changes
        results["method_source"] = run.method_source
    if dist.is_main():
        save_per_user(run.run_dir / PER_USER, data, valid_ranks, test_ranks)
        atomic_write_json(run.run_dir / RESULTS, results)
    log.info("best epoch %d | test %s | %s", state.best_epoch, metrics_line(test, cfg), run.run_dir / RESULTS)
    # the cap, not early stopping, ended training: fewer than `patience` validations since the best one
    capped = (state.best_epoch and state.epoch >= cfg.train.epochs and state.bad_epochs < cfg.train.patience
              and not cfg.train.max_steps_per_epoch)
    if capped and dist.is_main():  # the same on every rank; the others' warnings reach stderr (not train.log)
        log.warning("train.epochs=%d ended the run %d validation(s) after its best epoch %d, before "
                    "train.patience=%d ran out: it was not shown to have stopped improving (raise train.epochs; "
                    "a suite report flags it as capped and claims no difference involving it)",
                    cfg.train.epochs, state.bad_epochs, state.best_epoch, cfg.train.patience)
    dist.barrier()
    return results

"""One trainer for every method: build → train with early stopping → test at the best epoch → results.json.

Run folder (``--out``)::

    config.yaml          the resolved configuration
    train.log            the log
    history.jsonl        one line per epoch: loss, time, validation metrics
    checkpoints/last.pt  model + optimiser + RNG state after the last finished epoch (resume point)
    best.safetensors     weights at the best validation epoch
    results.json         the contract other tools read (see ``RESULT_KEYS``)
    per_user.npz         per-user validation/test ranks at the best epoch (paired comparisons between runs)
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

import crossan
from crossan import distributed as dist
from crossan.config import Config, config_from_dict, save_config, to_dict
from crossan.data import SequentialData, prepare
from crossan.evaluation import mean_metrics, rank_split, repeat_targets
from crossan.recommender import Recommender
from crossan.towers.base import TowerContext, build_tower
from crossan.utils import (
    PeakRSSMonitor,
    atomic_torch_save,
    atomic_write_json,
    count_params,
    describe_device,
    resolve_device,
    seed_everything,
)

log = logging.getLogger("crossan")
FEATURE_METHODS = ("frozen", "iisan", "crossan")
"""Methods whose item tower reads per-layer states from a feature source (cache or live encoders)."""
RESULT_KEYS = ("method", "dataset", "best_epoch", "valid", "test", "train_time_per_epoch_s", "trainable_params",
               "total_params", "peak_memory_bytes", "device")


class RunError(RuntimeError):
    """A run folder cannot be used as asked (exists already, missing files, another config)."""


# --------------------------------------------------------------------------------------------- building
def build_model(cfg: Config, data: SequentialData, device: torch.device) -> Recommender:
    """The recommender for ``cfg.method`` over ``data``, on ``device``."""
    ctx = TowerContext(cfg, data.num_items, data.item_ids, data.catalogue, extras={"device": device})
    if cfg.method in FEATURE_METHODS:
        from crossan.cache import open_features

        ctx.extras["features"] = open_features(cfg, data, cfg.modalities, device)
    tower = build_tower(ctx)
    model = Recommender(tower, cfg, torch.as_tensor(data.item_counts))
    return model.to(device)


def param_groups(model: Recommender, cfg: Config) -> list[dict[str, Any]]:
    groups = model.tower.param_groups(cfg.train)
    groups.append({"name": "user_encoder", "params": list(model.user.parameters()), "lr": cfg.train.lr})
    seen: set[int] = set()
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
        for p in g["params"]:
            if id(p) in seen:
                raise ValueError(f"parameter group {g['name']!r} repeats a parameter of another group")
            seen.add(id(p))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"trainable parameters not in any optimiser group: {missing[:5]}")
    return [g for g in groups if g["params"]]


def module_report(model: Recommender) -> dict[str, dict[str, int]]:
    rep = {f"tower.{k}": v for k, v in model.tower.module_report().items()}
    t, n = count_params(model.user)
    rep["user_encoder"] = {"trainable": t, "total": n}
    return rep


# --------------------------------------------------------------------------------------------- evaluation
class NonFiniteError(RunError):
    """Training produced a non-finite loss, item table or weights: nothing of that epoch is kept."""


def check_finite_table(table: torch.Tensor, item_ids: list[str], where: str) -> None:
    """Refuse an item table with NaN/inf rows, naming the first rows (and their item ids)."""
    bad = (~torch.isfinite(table).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        named = ", ".join(f"{r} ({item_ids[r]!r})" if r < len(item_ids) else str(r) for r in bad[:5])
        raise NonFiniteError(f"{where}: the item table has {len(bad)} non-finite row(s), e.g. rows {named}; "
                             "check the cache (crossan cache --verify) and lower the learning rates")


@torch.no_grad()
def evaluate_ranks(model: Recommender, data: SequentialData, split: str, cfg: Config,
                   item_table: torch.Tensor | None = None, where: str = "evaluation") -> torch.Tensor:
    """Strict full-ranking ranks [U] of every user's ``split`` target (METHOD.md §2)."""
    model.eval()
    if item_table is None:
        model.tower.reset_stats()
        item_table = model.tower.embed_all(cfg.eval.batch_size)
    check_finite_table(item_table, data.item_ids, where)
    arrays = data.valid if split == "valid" else data.test
    return rank_split(lambda x: model.user_vectors(x, item_table), item_table, arrays.inputs, arrays.targets,
                      arrays.history, cfg.eval.batch_size, cfg.eval.mask_history)


def evaluate(model: Recommender, data: SequentialData, split: str, cfg: Config,
             item_table: torch.Tensor | None = None, where: str = "evaluation") -> dict[str, float]:
    """Mean full-ranking metrics of ``split``."""
    return mean_metrics(evaluate_ranks(model, data, split, cfg, item_table, where), cfg.eval.ks)


def split_report(data: SequentialData) -> dict[str, Any]:
    """Per split: users, and how many targets repeat an item of the user's history (masked by default)."""
    out: dict[str, Any] = {}
    for name, arr in (("valid", data.valid), ("test", data.test)):
        n, rep = len(arr.targets), repeat_targets(arr.targets, arr.history)
        out[name] = {"users": n, "targets_repeating_history": rep, "share": rep / n if n else 0.0}
    return out


def split_fingerprint(data: SequentialData) -> str:
    """A hash of the users and their validation/test targets: two runs with equal fingerprints can be
    compared user by user (paired tests)."""
    import hashlib

    h = hashlib.sha256()
    h.update("\n".join(data.users).encode())
    for arr in (data.valid, data.test):
        h.update(np.ascontiguousarray(arr.targets, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(arr.history, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def save_per_user(path: Path, data: SequentialData, valid_ranks: torch.Tensor, test_ranks: torch.Tensor) -> None:
    """Per-user ranks of the selected epoch (``per_user.npz``): any metric of any user can be recomputed,
    and two runs on the same split compared user by user."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, valid_ranks=valid_ranks.numpy(), test_ranks=test_ranks.numpy(),
                        users=np.asarray(data.users, dtype=object).astype(str),
                        split_fingerprint=np.asarray(split_fingerprint(data)))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------- training
@dataclass
class TrainState:
    epoch: int = 0
    """Epochs finished."""
    best_epoch: int = 0
    best_metric: float = -math.inf
    bad_epochs: int = 0
    epoch_times: list[float] | None = None
    best_valid: dict[str, float] | None = None


def _setup_logging(run_dir: Path) -> None:
    for h in list(log.handlers):
        log.removeHandler(h)
    log.propagate = False
    if not dist.is_main():  # other ranks stay quiet
        log.setLevel(logging.WARNING)
        return
    log.setLevel(logging.INFO)
    fh = logging.FileHandler(run_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(fh)
    sh = logging.StreamHandler()
    sh.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(sh)


def check_run_dir(run_dir: Path, cfg: Config, resume: bool) -> None:
    """Refuse a run folder that holds another run, or a ``--resume`` with another configuration."""
    saved = run_dir / "config.yaml"
    if resume:
        if not saved.is_file():
            raise RunError(f"{run_dir}: nothing to resume (no config.yaml)")
        diff = _diff(yaml.safe_load(saved.read_text()), to_dict(cfg))
        if diff:
            raise RunError(f"{run_dir}: --resume with a different configuration: {'; '.join(diff[:10])}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} already holds files; pass --resume to continue that run or choose another --out")


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _diff(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if old == new else [f"{prefix}: {old!r} → {new!r}"]


def _truncate_history(path: Path, epochs_done: int) -> None:
    """Drop history lines of epochs after the checkpoint (a crash can fall between the two writes)."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if json.loads(line)["epoch"] <= epochs_done]
        path.write_text("".join(line + "\n" for line in keep))


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """This rank's share of each global batch of an epoch's shuffled order.

    ``batch_size`` is the global batch: under torchrun every rank takes every W-th example of it, so the
    optimisation (examples per step, learning rate) is the same for any world size W. A last batch with
    fewer than W examples is dropped so that every rank takes the same number of steps.
    """
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    W, r = dist.world_size(), dist.rank()
    return [b[r::W] for b in torch.randperm(n, generator=g).split(batch_size) if len(b) >= W]


def _num_batches(n: int, batch_size: int) -> int:
    """How many steps :func:`_batches` gives per epoch (without drawing the permutation)."""
    full, last = divmod(n, batch_size)
    return full + (1 if last >= dist.world_size() else 0)


def _seed_epoch(seed: int, epoch: int) -> None:
    """Dropout and sampled negatives draw from a stream fixed by (seed, epoch, rank): resuming after any
    finished epoch replays exactly what an uninterrupted run does, with no RNG state to save."""
    torch.manual_seed(seed * 7919 + epoch * 104729 + dist.rank())


def train_epoch(step_model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor],
                inputs: torch.Tensor, targets: torch.Tensor, device: torch.device, grad_clip: float = 0.0,
                desc: str = "train", progress: bool = True) -> float:
    """One pass over ``batches`` (index tensors into ``inputs``/``targets``); returns the mean loss.

    ``step_model(x, y)`` returns the loss (a :class:`Recommender`, or it wrapped in DDP). The device is
    synchronised at the end so that wall-clock timing around this call is honest on a GPU.
    """
    loss_sum, steps = torch.zeros((), device=device), 0  # summed on the device: no sync per step
    bar = tqdm(batches, desc=desc, leave=False, disable=not progress)
    for idx in bar:
        x, y = inputs[idx].to(device, non_blocking=True), targets[idx].to(device, non_blocking=True)
        loss = step_model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(step_model.parameters(), grad_clip)
        opt.step()
        loss_sum += loss.detach()
        steps += 1
        if progress and steps % 20 == 0:
            bar.set_postfix(loss=f"{float(loss_sum) / steps:.4f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return float(loss_sum) / max(1, steps)


def train(cfg: Config, run_dir: str | Path, resume: bool = False, data: SequentialData | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` and return the results (also written to ``results.json``).

    Under torchrun the model is wrapped in DistributedDataParallel; rank 0 writes every file.
    """
    run_dir = Path(run_dir)
    data = data if data is not None else prepare(cfg.data)  # bad input fails here, before any file is written
    device = dist.init_from_env(resolve_device(cfg.device))
    check_run_dir(run_dir, cfg, resume)
    seed_everything(cfg.seed)
    memory = PeakRSSMonitor().start()  # CPU memory: peak over the run minus this idle baseline
    model = build_model(cfg, data, device)  # a missing or mismatched cache fails here, before any file
    groups = param_groups(model, cfg)
    opt = torch.optim.Adam(groups, weight_decay=cfg.train.weight_decay)
    dist.barrier()  # every rank has checked and built before rank 0 writes anything
    if dist.is_main() and not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    dist.barrier()
    _setup_logging(run_dir)
    progress = progress and dist.is_main()
    trainable, total = count_params(model)
    report = module_report(model)
    log.info("crossan %s | method=%s modalities=%s | data %s: %d users, %d items | device %s | world size %d",
             crossan.__version__, cfg.method, ",".join(cfg.modalities), data.name, data.num_users,
             data.num_items, describe_device(device), dist.world_size())
    for name, r in report.items():
        log.info("  %-28s trainable %12s / total %12s", name, f"{r['trainable']:,}", f"{r['total']:,}")
    log.info("  %-28s trainable %12s / total %12s", "ALL", f"{trainable:,}", f"{total:,}")

    state = TrainState(epoch_times=[])
    ckpt = run_dir / "checkpoints" / "last.pt"
    if resume and ckpt.is_file():
        state = _load_checkpoint(ckpt, model, opt)
        log.info("resumed from %s after epoch %d (best %s=%.5f at epoch %d)", ckpt, state.epoch, cfg.train.metric,
                 state.best_metric, state.best_epoch)
    if dist.is_main():
        _truncate_history(run_dir / "history.jsonl", state.epoch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_model: torch.nn.Module = model
    if dist.is_distributed():
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    inputs = torch.as_tensor(data.train_inputs)
    targets = torch.as_tensor(data.train_targets)
    history_path = run_dir / "history.jsonl"
    while state.epoch < cfg.train.epochs and state.bad_epochs < cfg.train.patience:
        epoch = state.epoch + 1
        model.train()
        _seed_epoch(cfg.seed, epoch)
        batches = _batches(len(inputs), cfg.train.batch_size, cfg.seed, epoch)
        if cfg.train.max_steps_per_epoch:
            batches = batches[: cfg.train.max_steps_per_epoch]
        t0 = time.perf_counter()
        mean_loss = train_epoch(step_model, opt, batches, inputs, targets, device, cfg.train.grad_clip,
                                desc=f"epoch {epoch}", progress=progress)
        epoch_time = time.perf_counter() - t0
        if not math.isfinite(mean_loss):
            raise NonFiniteError(f"epoch {epoch}: the training loss is {mean_loss} (not finite); nothing of this "
                                 f"epoch was saved — lower the learning rates (train.lr={cfg.train.lr}) or check the "
                                 "inputs; the last good epoch is in checkpoints/last.pt")
        full_steps = _num_batches(len(inputs), cfg.train.batch_size)
        if len(batches) < full_steps:  # a capped epoch (train.max_steps_per_epoch): extrapolate to a full one
            epoch_time *= full_steps / max(1, len(batches))
        state.epoch_times.append(epoch_time)
        record: dict[str, Any] = {"epoch": epoch, "loss": mean_loss, "train_time_s": epoch_time,
                                  "steps": len(batches), "full_epoch_steps": full_steps}
        if epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs:
            valid = evaluate(model, data, "valid", cfg, where=f"epoch {epoch}")
            record["valid"] = valid
            metric = valid[cfg.train.metric]
            if metric > state.best_metric:
                state.best_metric, state.best_epoch, state.bad_epochs = metric, epoch, 0
                state.best_valid = valid
                if dist.is_main():
                    _save_weights(model, run_dir / "best.safetensors")
            else:
                state.bad_epochs += 1
            log.info("epoch %3d | loss %.4f | %.1fs | valid HR@10 %.4f NDCG@10 %.4f %s", epoch, record["loss"],
                     epoch_time, valid.get("HR@10", math.nan), valid.get("NDCG@10", math.nan),
                     "*" if state.best_epoch == epoch else "")
        state.epoch = epoch
        if dist.is_main():
            with history_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            _save_checkpoint(ckpt, model, opt, state)
        dist.barrier()

    if state.best_epoch == 0 and dist.is_main():  # no evaluation happened (epochs=0): test the current weights
        _save_weights(model, run_dir / "best.safetensors")
    dist.barrier()
    load_weights(model, run_dir / "best.safetensors")
    model.tower.reset_stats()
    model.eval()
    t_eval = time.perf_counter()
    table = model.tower.embed_all(cfg.eval.batch_size)
    tower_stats = model.tower.stats()
    test_ranks = evaluate_ranks(model, data, "test", cfg, table, where=f"best epoch {state.best_epoch}")
    test = mean_metrics(test_ranks, cfg.eval.ks)
    eval_time = time.perf_counter() - t_eval
    valid_ranks = evaluate_ranks(model, data, "valid", cfg, table, where=f"best epoch {state.best_epoch}")
    valid = state.best_valid or mean_metrics(valid_ranks, cfg.eval.ks)
    cpu_peak = memory.stop()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else cpu_peak
    times = state.epoch_times or []
    results = {
        "method": cfg.method,
        "modalities": cfg.modalities,
        "dataset": data.name,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "valid": valid,
        "test": test,
        "train_time_per_epoch_s": float(np.mean(times)) if times else 0.0,
        "eval_time_s": eval_time,
        "trainable_params": trainable,
        "total_params": total,
        "peak_memory_bytes": int(peak),
        "peak_memory_kind": "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss_above_idle",
        "idle_rss_bytes": memory.baseline,
        "peak_rss_bytes": memory.peak,
        "device": describe_device(device),
        "world_size": dist.world_size(),
        "modules": report,
        "tower": tower_stats,
        "data": {"users": data.num_users, "items": data.num_items, "dropped_rows": data.dropped},
        "splits": split_report(data),
        "mask_history": cfg.eval.mask_history,
        "split_fingerprint": split_fingerprint(data),
        "per_user_file": "per_user.npz",
        "crossan_version": crossan.__version__,
    }
    if dist.is_main():
        save_per_user(run_dir / "per_user.npz", data, valid_ranks, test_ranks)
        atomic_write_json(run_dir / "results.json", results)
    log.info("best epoch %d | test HR@10 %.4f NDCG@10 %.4f MRR %.4f | %s", state.best_epoch, test["HR@10"],
             test["NDCG@10"], test["MRR"], run_dir / "results.json")
    dist.barrier()
    return results


# --------------------------------------------------------------------------------------------- checkpoints
def _save_weights(model: Recommender, path: Path) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"crossan_version": crossan.__version__})
    tmp.replace(path)


def load_weights(model: Recommender, path: Path) -> None:
    if not path.is_file():
        raise RunError(f"{path}: weights file not found")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise RunError(f"{path}: cannot be read as safetensors weights: {e}") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteError(f"{path}: weights hold non-finite values (NaN/inf) in {bad[:5]}; refusing to use them")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise RunError(f"{path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _save_checkpoint(path: Path, model: Recommender, opt: torch.optim.Optimizer, state: TrainState) -> None:
    atomic_torch_save({
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "state": {"epoch": state.epoch, "best_epoch": state.best_epoch, "best_metric": state.best_metric,
                  "bad_epochs": state.bad_epochs, "epoch_times": state.epoch_times, "best_valid": state.best_valid},
        "world_size": dist.world_size(),
    }, path)


def _load_checkpoint(path: Path, model: Recommender, opt: torch.optim.Optimizer) -> TrainState:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if ck["world_size"] != dist.world_size():
        raise RunError(f"{path} was written by {ck['world_size']} processes; resume it with the same world size "
                       f"(now {dist.world_size()})")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    return TrainState(**ck["state"])


# --------------------------------------------------------------------------------------------- re-scoring
def load_run(run_dir: str | Path, device: str = "auto", data_path: str | None = None
             ) -> tuple[Config, SequentialData, Recommender]:
    """Rebuild a saved run (config, data, model with its best weights)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise RunError(f"{run_dir}: not a crossan run folder (no config.yaml)")
    try:
        cfg = config_from_dict(yaml.safe_load(cfg_path.read_text()))
    except ValueError as e:
        raise RunError(f"{cfg_path}: cannot be read by crossan {crossan.__version__}: {e}") from None
    if data_path:
        cfg.data.path = data_path
    if device != "auto":
        cfg.device = device
    data = prepare(cfg.data)
    model = build_model(cfg, data, resolve_device(cfg.device))
    load_weights(model, run_dir / "best.safetensors")
    model.eval()
    return cfg, data, model


def rescore(run_dir: str | Path, device: str = "auto") -> dict[str, Any]:
    cfg, data, model = load_run(run_dir, device)
    table = model.tower.embed_all(cfg.eval.batch_size)
    out = {"valid": evaluate(model, data, "valid", cfg, table, where=str(run_dir)),
           "test": evaluate(model, data, "test", cfg, table, where=str(run_dir)), "splits": split_report(data)}
    atomic_write_json(Path(run_dir) / "evaluation.json", out)
    return out

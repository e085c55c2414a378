"""Run folders: what a run writes, the checks before one is used, and reading a finished run back.

A run folder (``crossan train --out RUN_DIR``) holds::

    config.yaml          the resolved configuration
    train.log            the log
    history.jsonl        one line per epoch: loss, time, validation metrics
    checkpoints/last.pt  model + optimiser + loop state after the last finished epoch (resume point)
    best.safetensors     weights at the best validation epoch (metadata: crossan_version)
    best.pending-epoch-K.safetensors  a new best epoch K's weights, until its checkpoint is written
    results.json         the contract other tools read (see ``RESULT_KEYS``)
    per_user.npz         per-user validation/test ranks at the best epoch (paired comparisons between runs)
    evaluation.json      written by ``crossan evaluate`` (:func:`evaluate_run`)
    extra_items/         cold-start items added by ``crossan embed-items`` (:mod:`crossan.coldstart`)

Every file is written atomically (:func:`crossan.utils.atomic_write`). A folder is read back by
:func:`load_run`, which parses ``config.yaml`` once and refuses a dataset other than the one the run was
trained on (``item_fingerprint`` of results.json); :func:`check_run_folder` is the stricter check a served
run passes first (complete, written by a compatible crossan version). A run without ``results.json`` is
unfinished (training stopped or still runs): :func:`warn_if_unfinished` says so where it is served anyway.
Its ``best.safetensors`` is replaced at each new best epoch, so a reader that pairs the weights with what lies
beside them (extra items, a digest it records) reads the file once (:func:`read_weights`) and loads those bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load, load_file

import crossan
from crossan import distributed as dist
from crossan.config import (
    CHANGED_DEFAULTS,
    PATH_KEYS,
    PRECISION_OF_DTYPE,
    Config,
    config_differences,
    config_from_dict,
    resolve_model_spec,
    resolve_path,
    to_dict,
)
from crossan.data.catalogue import MODALITIES
from crossan.errors import NonFiniteError, RunError, ServeError
from crossan.methods import method_source_changes
from crossan.utils import (
    atomic_save_safetensors,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    is_temporary,
    remove_stale_temporaries,
)

if TYPE_CHECKING:
    from crossan.data import SequentialData
    from crossan.recommender import Recommender

__all__ = ["CONFIG", "REQUIRED_FILES", "RESULT_KEYS", "NonFiniteError", "RunError", "TrainState",
           "CacheChangedWarning", "ContentChangedWarning", "MethodCodeWarning", "NonFiniteScoreWarning",
           "RunWarning", "SplitChangedWarning", "UnfinishedRunWarning", "WeightsFile", "cache_states_changes",
           "cache_states_diff", "cache_states_digests", "check_item_fingerprint", "EXECUTION_KEYS", "MOVABLE_KEYS",
           "ResumeCheck", "check_out_folder", "check_run_dir", "check_run_folder", "content_changes",
           "content_digests", "is_execution", "is_move", "lock_run_folder", "saved_config",
           "input_changes", "evaluate_run", "load_checkpoint", "load_run", "load_weights", "read_results",
           "read_run_config", "read_weights", "rescore", "resolve_paths", "save_checkpoint", "save_per_user",
           "save_weights", "truncate_history", "unlock_run_folder", "version_compatible", "warn_if_unfinished"]

CONFIG = "config.yaml"
WEIGHTS = "best.safetensors"
RESULTS = "results.json"
HISTORY = "history.jsonl"
CHECKPOINT = "checkpoints/last.pt"
PER_USER = "per_user.npz"
EVALUATION = "evaluation.json"
REQUIRED_FILES = (CONFIG, WEIGHTS)
"""What a run needs to be served or re-scored. A run that also has ``results.json`` is finished; without it
the best weights so far are used (see :func:`warn_if_unfinished`)."""
RESULT_KEYS = ("method", "dataset", "best_epoch", "valid", "test", "train_time_per_epoch_s", "trainable_params",
               "total_params", "peak_memory_bytes", "device")
"""Keys of results.json that other tools may rely on."""


# --------------------------------------------------------------------------------------------- checks
@dataclasses.dataclass
class ResumeCheck:
    """What :func:`check_run_dir` accepted in a ``--resume``'s configuration besides an equal one."""

    precision_from: str | None = None
    """The config.yaml's ``precision`` when the resume sets another (else None)."""
    moved: list[str] = dataclasses.field(default_factory=list)
    """``key: old → new`` of the path keys (:data:`MOVABLE_KEYS`) the resume sets elsewhere: the dataset or cache
    moved; the trainer writes the new places into config.yaml once the checkpoint accepts what lies there."""


def lock_run_folder(run_dir: Path, busy: str = "another crossan process is training into this folder (it holds "
                    "the folder's lock); wait for it to end, or train into another --out") -> int | None:
    """Hold an exclusive lock on the run folder itself (``flock`` on the directory: no file is made in it) and
    return its descriptor for :func:`unlock_run_folder`; the kernel releases it when the process ends, killed
    or not. Training holds it from its checks to its end, so a second ``crossan train --out`` of the same
    folder (a ``--resume`` while the run still trains) is refused (:class:`RunError`) instead of writing the
    folder beside it; a suite holds its ``--out`` folder so (``busy``: the refusal's words). None where there is
    no ``flock`` (Windows, some network file systems)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunError(f"{run_dir}: {busy}") from None
    except OSError:  # no locks on this file system
        os.close(fd)
        return None
    return fd


def unlock_run_folder(fd: int | None) -> None:
    """Release a lock of :func:`lock_run_folder` (None: nothing held)."""
    if fd is not None:
        os.close(fd)


def check_run_dir(run_dir: Path, cfg: Config, resume: bool) -> ResumeCheck:
    """Refuse a run folder that holds another run, or a ``--resume`` with another configuration.

    A ``--resume`` may set another ``precision`` (:attr:`ResumeCheck.precision_from`): what must not change is
    the compute dtype the precision resolves to, which the checkpoint records (:func:`load_checkpoint` compares
    it); ``precision=auto`` resolves by hardware, so a run resumed on another machine may have to name the dtype
    it started with. It may also name another folder for the data or cache (:attr:`ResumeCheck.moved`): the
    checkpoint's data fingerprints and input digests say whether what lies there now is what the run trained
    on."""
    check_out_folder(run_dir)
    if resume:
        if not (run_dir / CONFIG).is_file():
            raise RunError(f"{run_dir}: nothing to resume (no config.yaml)")
        old = saved_config(run_dir)
        old_precision = old.get("precision", CHANGED_DEFAULTS["precision"])  # a run saved before the key: fp32
        diff = config_differences({**old, "precision": cfg.precision}, cfg)
        other = [d for d in diff if not (is_move(d) or is_execution(d))]
        if other:
            raise RunError(f"{run_dir}: --resume with a different configuration: {'; '.join(other[:10])} "
                           f"({run_dir / CONFIG}'s value → this command's; resume with its values, or train into "
                           "a new folder)")
        return ResumeCheck(None if old_precision == cfg.precision else str(old_precision),
                           [d for d in diff if is_move(d)])
    if run_dir.exists() and any(not is_temporary(p) for p in run_dir.iterdir()):
        raise RunError(f"{run_dir} already holds files; pass --resume to continue that run or choose another --out")
    if run_dir.is_dir():  # only what a process killed while writing config.yaml left: no run to keep
        remove_stale_temporaries(run_dir)
    return ResumeCheck()


MOVABLE_KEYS = tuple(f"{section}.{key}" for section, key in PATH_KEYS)
"""Config keys in which a run may differ and still be the same run: where its data and cache lie (a
``--resume`` and a suite's reuse accept them where fingerprints and digests prove the inputs the same)."""


def is_move(difference: str) -> bool:
    """Whether a :func:`config_differences` entry (``key: old → new``) is one of :data:`MOVABLE_KEYS`'."""
    return difference.split(":", 1)[0] in MOVABLE_KEYS


EXECUTION_KEYS = ("train.compile", "train.malloc", "cache.prefetch")
"""Config keys that change how a run is computed, not what it computes (``torch.compile`` runs the same step up
to rounding; the C allocator's policy and when a cache build reads its batches change no value): a run that
differs from another only in them is the same run, so a ``--resume`` and a suite's reuse accept them (a run
folder written by crossan 0.1.19 says ``compile: false``, today's default is ``auto``). The process that resumes
trains as its own configuration says; results.json ``train_compiled`` and ``malloc`` record how the last one
trained."""


def is_execution(difference: str) -> bool:
    """Whether a :func:`config_differences` entry is one of :data:`EXECUTION_KEYS`."""
    return difference.split(":", 1)[0] in EXECUTION_KEYS


def saved_config(run_dir: Path, error: type[RunError] = RunError) -> dict[str, Any]:
    """``run_dir/config.yaml`` as a mapping; ``error`` naming the file, on one line, when it cannot be read (not
    YAML, not UTF-8, not a mapping)."""
    path = Path(run_dir) / CONFIG
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise error(f"{path}: not valid YAML ({e.problem or e.context}{where})") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        why = "not UTF-8" if isinstance(e, UnicodeDecodeError) else "cannot be read"
        raise error(f"{path}: {why} ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if not isinstance(saved, dict):
        raise error(f"{path}: expected a mapping of config keys, got {type(saved).__name__}")
    return saved


def resolve_paths(cfg: Config) -> Config:
    """Make ``data.path`` and ``cache.dir`` absolute with symlinks resolved, in place, and the local paths of
    the encoders' ``model`` settings (:func:`~crossan.config.resolve_model_spec`): the run's config.yaml then
    finds its data, cache and checkpoints from any working folder, and ``--resume`` accepts the same dataset
    given by another spelling (relative, absolute, through a symlink)."""
    for section, key in PATH_KEYS:
        value = getattr(getattr(cfg, section), key)
        if value:
            setattr(getattr(cfg, section), key, resolve_path(value))
    for m in MODALITIES:
        spec = getattr(cfg.encoders, m)
        if spec.model:
            spec.model = resolve_model_spec(spec.model)
    return cfg


def check_out_folder(folder: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that is a file, lies under a file, or cannot be written
    (read-only file system, no permission)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{folder}: is a file, not a folder; choose another {option}")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunError(f"{folder}: cannot be created because {existing} is a file; choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only(existing) else "no write permission"
        raise RunError(f"{folder}: cannot write in {existing} ({why}); choose another {option}")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _parse_version(v: str) -> tuple[int, ...]:
    parts = str(v).split("+")[0].split(".")
    try:
        return tuple(int("".join(ch for ch in p if ch.isdigit()) or "x") for p in parts[:2])
    except ValueError:
        raise ValueError(f"unparsable version {v!r}") from None


def version_compatible(written: str, current: str = crossan.__version__) -> bool:
    """Whether a run written by crossan ``written`` can be read by ``current``: same major version, and for
    0.x releases the same minor version too (no stability promise before 1.0); never a newer release."""
    try:
        w, c = _parse_version(written), _parse_version(current)
    except ValueError:
        return False
    if len(w) < 2 or len(c) < 2 or w > c:
        return False
    return w[0] == c[0] and (c[0] > 0 or w[1] == c[1])


def _written_versions(run_dir: Path) -> dict[str, str]:
    """``{file: crossan version}`` from results.json and the weights' metadata (reads small files only)."""
    versions: dict[str, str] = {}
    results = run_dir / RESULTS
    if results.is_file():
        try:
            res = json.loads(results.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ServeError(f"{results}: not valid JSON ({e})") from None
        if not isinstance(res, dict) or "crossan_version" not in res:
            raise ServeError(f"{results}: no crossan_version (written by an older crossan?); this is crossan "
                             f"{crossan.__version__}")
        versions[str(results)] = str(res["crossan_version"])
    weights = run_dir / WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise ServeError(f"{weights}: not a readable safetensors file ({e})") from None
    if "crossan_version" in meta:
        versions[str(weights)] = meta["crossan_version"]
    return versions


def check_run_folder(run_dir: str | Path) -> Config:
    """Check that ``run_dir`` is a complete run of a compatible crossan version; return its config.

    Raises :class:`ServeError` naming the missing file, the version found, or the config key crossan no
    longer knows. Reads only small files (config, results, the weights' header).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ServeError(f"{run_dir}: no such run folder")
    for name in REQUIRED_FILES:
        if not (run_dir / name).is_file():
            raise ServeError(f"{run_dir}: not a complete crossan run folder ({name} is missing)")
    versions = _written_versions(run_dir)
    if not versions:
        raise ServeError(f"{run_dir}: no crossan_version in results.json or best.safetensors; cannot tell which "
                         f"crossan wrote it (this is crossan {crossan.__version__})")
    for where, v in versions.items():
        if not version_compatible(v):
            raise ServeError(f"{where}: written by crossan {v}, which crossan {crossan.__version__} cannot read; "
                             f"use crossan {v} or retrain")
    return read_run_config(run_dir, ServeError, written=next(iter(versions.values())))


def read_run_config(run_dir: str | Path, error: type[RunError] = RunError, written: str | None = None) -> Config:
    """Parse and validate ``RUN_DIR/config.yaml``; ``error`` (naming the file) if it cannot be read."""
    cfg_path = Path(run_dir) / CONFIG
    if not cfg_path.is_file():
        raise error(f"{run_dir}: not a crossan run folder (no config.yaml)")
    raw = saved_config(Path(run_dir), error)
    try:
        return config_from_dict(raw)
    except ValueError as e:
        plugin = _plugin_of_run(Path(run_dir), raw)
        if plugin:  # a plugin not loaded, not a crossan version that cannot read the file
            raise error(f"{cfg_path}: {e}{plugin}") from None
        by = f" (written by crossan {written})" if written else ""
        raise error(f"{cfg_path}{by} cannot be read by crossan {crossan.__version__}: {e}") from None


def _plugin_of_run(run_dir: Path, raw: dict[str, Any]) -> str:
    """For a run of a plugin method that is not loaded: where its results.json says the method came from
    (``method_source``), so that the error of its unknown section says what to pass to ``--plugin``."""
    from crossan.methods import METHODS

    method = raw.get("method")
    if not isinstance(method, str) or method in METHODS:
        return ""
    if not (run_dir / RESULTS).is_file() and isinstance(raw.get(method), dict):  # unfinished: no results.json yet
        return (f"; the run's method {method!r} is not a built-in one and no plugin registered it: pass --plugin "
                f"with the module or file that does (the run is unfinished, so no results.json records which)")
    try:
        source = json.loads((run_dir / RESULTS).read_text(encoding="utf-8")).get("method_source")
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(source, dict) or not source.get("file"):
        return ""
    module = str(source.get("module") or "")
    if module == "__main__":  # registered by a script run as a program: --plugin would run it all again
        return (f"; the run's method {method!r} was registered by the script {source['file']} as it ran: move the "
                "method into a module of its own and pass that to --plugin, or load the run from Python after "
                "registering the method (importing the script would run it again)")
    spec = module if "." in module else source["file"]  # a package's module by name, a lone file by its path
    return (f"; the run's method {method!r} was trained from module {module!r} ({source['file']}): pass "
            f"--plugin {shlex.quote(spec)} if that is still its code")


def _checkpoint_method_source(run_dir: Path) -> dict[str, Any] | None:
    """For an unfinished run (no results.json yet): the plugin code its last checkpoint records, as results.json
    would (``{"method_source": {"sha256": …, "file": …}}``), so that loading it with other code warns as loading
    a finished run does; None where no checkpoint records one (crossan's own methods, no epoch finished)."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:  # memory-mapped: only the small entries are read, not the weights
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is for --resume to report, not for loading
        return None
    sha = (ck.get("data") or {}).get("method_source.sha256") if isinstance(ck, dict) else None
    return {"method_source": {"sha256": sha, "file": f"its checkpoint {path.name}"}} if sha else None


# --------------------------------------------------------------------------------------------- weights
def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The model's state dict as safetensors, stamped with the crossan version."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_save_safetensors(tensors, path, metadata={"crossan_version": crossan.__version__})


def pending_weights(run_dir: Path, epoch: int) -> Path:
    """Where validation puts a new best epoch's weights until that epoch's checkpoint is written."""
    return run_dir / f"best.pending-epoch-{epoch}.safetensors"


def settle_best_weights(run_dir: Path, best_epoch: int) -> None:
    """Make ``best.safetensors`` the weights of the checkpoint's ``best_epoch``.

    A new best is written aside (:func:`pending_weights`) and promoted only after its epoch's checkpoint, so
    a crash between the two never leaves best weights of an epoch the checkpoint does not know: a resumed run
    promotes the pending weights of the checkpoint's best epoch and discards any other (the epoch is trained
    again; on a GPU not necessarily to the same weights)."""
    for path in run_dir.glob("best.pending-epoch-*.safetensors"):
        epoch = path.name.removeprefix("best.pending-epoch-").removesuffix(".safetensors")
        if epoch.isdigit() and int(epoch) == best_epoch:
            os.replace(path, run_dir / WEIGHTS)
        else:
            path.unlink()


@dataclass(frozen=True)
class WeightsFile:
    """One read of a weights file: its bytes, and their SHA-256.

    ``best.safetensors`` of a run that still trains is replaced (atomically) at each new best epoch, so two
    reads of the path may meet two checkpoints. A reader that pairs the weights with something recorded
    beside them (the extra items' ``weights_sha256``, :mod:`crossan.coldstart`) reads the file once with
    :func:`read_weights`, compares the digest of *these* bytes and loads these bytes (:func:`load_weights`)."""

    path: Path
    data: bytes = dataclasses.field(repr=False)
    sha256: str


def read_weights(path: str | Path) -> WeightsFile:
    """``path`` read once into memory (see :class:`WeightsFile`); :class:`RunError` when it is missing."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path}: weights file not found") from None
    except OSError as e:
        raise RunError(f"{path}: cannot be read ({e.strerror or e})") from None
    return WeightsFile(path, data, hashlib.sha256(data).hexdigest())


def load_weights(model: torch.nn.Module, path: Path | WeightsFile) -> None:
    """Load ``path`` (or the bytes of one :func:`read_weights`) into ``model``; refuses unreadable files,
    non-finite values and mismatched keys."""
    weights = path if isinstance(path, WeightsFile) else None
    path = weights.path if weights is not None else Path(path)
    if weights is None and not path.is_file():
        raise RunError(f"{path}: weights file not found")
    try:
        tensors = load(weights.data) if weights is not None else load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise RunError(f"{path}: cannot be read as safetensors weights: {e}") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteError(f"{path}: weights hold non-finite values (NaN/inf) in {bad[:5]}; refusing to use them")
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # a tensor of another shape: e.g. a dataset with another number of items
        lines = [ln.strip() for ln in str(e).strip().splitlines()[1:] if ln.strip()] or [str(e).strip()]
        shown = "; ".join(lines[:3]) + (f"; and {len(lines) - 3} more" if len(lines) > 3 else "")
        raise RunError(f"{path} does not fit this model ({shown}); were the weights trained on another "
                       "dataset (another number of items) or another configuration?") from None
    if missing or unexpected:
        raise RunError(f"{path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")


# --------------------------------------------------------------------------------------------- checkpoints
@dataclass
class TrainState:
    """The training loop's state between epochs (saved in the checkpoint)."""

    epoch: int = 0
    """Epochs finished."""
    best_epoch: int = 0
    best_metric: float = -math.inf
    bad_epochs: int = 0
    epoch_times: list[float] | None = None
    best_valid: dict[str, float] | None = None
    peak_memory_bytes: int = 0
    """The largest training peak (results.json's ``peak_memory_bytes``) of the processes that trained the
    finished epochs: a resumed run reports the larger of it and its own process's peak."""
    peak_rss_bytes: int = 0
    """Likewise for the absolute peak resident memory (``peak_rss_bytes``)."""
    peak_memory_kind: str | None = None
    """What :attr:`peak_memory_bytes` measured (``peak_memory_kind``): a run resumed on another kind of
    device does not fold in the other kind's figure."""
    resumed_after: list[int] | None = None
    """The epochs after which a process resumed the run (``--resume``), in order."""
    versions: list[str] | None = None
    """The crossan versions whose processes trained the finished epochs, in order, each once (a checkpoint of
    crossan before 0.1.16 records none: :data:`BEFORE_VERSIONS`)."""


BEFORE_VERSIONS = "before 0.1.16"
"""What :attr:`TrainState.versions` says of epochs a checkpoint of an older crossan holds."""


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: TrainState,
                    data: dict[str, str] | None = None, compute_dtype: str | None = None,
                    config: Config | None = None) -> None:
    """Model, optimiser and loop state after a finished epoch, with the world size that wrote it, ``data``:
    the fingerprints of the data it trains on (``split_fingerprint``, ``item_fingerprint``),
    ``compute_dtype``: the dtype its training steps ran at (``precision`` resolved on this machine,
    :func:`crossan.precision.dtype_name`: ``bfloat16`` or ``float32``), and ``config``: the run's resolved
    configuration (a checkpoint copied in from another run is then refused on resume)."""
    extra: dict[str, Any] = {} if compute_dtype is None else {"compute_dtype": compute_dtype}
    if config is not None:
        extra["config"] = to_dict(config)
    atomic_torch_save({
        **extra,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "state": dataclasses.asdict(state),  # every field: one added to TrainState is saved too
        "world_size": dist.world_size(),
        "data": dict(data or {}),
    }, path)


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    data: dict[str, str] | None = None, compute_dtype: str | None = None,
                    precision: str = "auto", changed_from: str | None = None,
                    config: Config | None = None) -> TrainState:
    """Restore model and optimiser from ``path``; the loop state to continue from.

    ``data``: the fingerprints of the data the run reads now, and the digests of its inputs (``cache_states.<m>``,
    ``content_sources.<m>``); a checkpoint that records others was trained on other data or inputs (the same
    configuration can name a folder whose content changed, or a cache updated since) and is refused. Keys a
    checkpoint does not record (written by an older crossan) are not compared.

    ``compute_dtype``: the dtype the resumed epochs would run at (``precision`` resolved here); a checkpoint
    that records another is refused: ``precision=auto`` resolves by hardware, and a run must not switch
    between float32 and bfloat16 halfway. ``changed_from``: the config.yaml's ``precision`` when the resume
    sets another (:func:`check_run_dir`); a checkpoint that records no dtype (an older crossan) is then
    refused, since the change cannot be checked.

    ``config``: the run's configuration now; a checkpoint that records another (one copied in from another
    run folder: another seed, another method) is refused, naming the keys. ``precision`` may differ (see
    above)."""
    import pickle
    import warnings

    fresh = f"delete {path} to start this run again from its first epoch"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of planted files
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False: never do that
        raise RunError(f"{path}: holds objects other than tensors and plain values, so it is not a crossan "
                       f"checkpoint and was not loaded (nothing in it was run); {fresh}") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as e:
        reason = "empty" if isinstance(e, EOFError) else "truncated or not a torch checkpoint"
        raise RunError(f"{path}: cannot be read ({reason}); {fresh}") from None
    if not isinstance(ck, dict) or not {"model", "optimizer", "state", "world_size"} <= set(ck):
        raise RunError(f"{path}: not a crossan checkpoint (expected model, optimizer, state and world_size); {fresh}")
    if ck["world_size"] != dist.world_size():
        raise RunError(f"{path} was written by {ck['world_size']} processes; resume it with the same world size "
                       f"(now {dist.world_size()})")
    saved = ck.get("data") if isinstance(ck.get("data"), dict) else {}
    changed = [(k, f"{k}: {saved[k]} → {v}") for k, v in (data or {}).items() if k in saved and saved[k] != v]
    code = [c for k, c in changed if k == "method_source.sha256"]
    if code:
        raise RunError(f"{path} was trained with other code of its plugin method ({code[0]}): its epochs cannot be "
                       f"continued by the code loaded now; restore the plugin's file, or train into a new folder, "
                       f"or {fresh}")
    if changed:
        what = ("data than the dataset holds now" if all(k.endswith("fingerprint") for k, _ in changed)
                else "inputs than the run reads now (the cache or the item content changed)")
        raise RunError(f"{path} was trained on other {what} ({'; '.join(c for _, c in changed)}): its epochs "
                       f"cannot be continued on these; train into a new folder, or {fresh}")
    if config is not None and isinstance(ck.get("config"), dict):
        other = [d for d in config_differences({**ck["config"], "precision": config.precision}, config)
                 if not (is_move(d) or is_execution(d))]
        if other:
            raise RunError(f"{path} was written by a run of another configuration than this folder's "
                           f"config.yaml ({'; '.join(other[:10])}; the checkpoint's value → config.yaml's): if "
                           f"config.yaml was edited, restore the checkpoint's values in it; else the checkpoint "
                           f"is another run's: {fresh}")
    _check_compute_dtype(path, ck.get("compute_dtype"), compute_dtype, precision, changed_from, fresh)
    if "method_source.sha256" in (data or {}) and "method_source.sha256" not in saved:
        logging.getLogger("crossan").warning("%s records no SHA-256 of its plugin method's file (written by a crossan before 0.1.16): "
                    "that the plugin's code is the one that trained its epochs cannot be checked", path)
    try:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = TrainState(**ck["state"])
        state.versions = state.versions or [BEFORE_VERSIONS]
        return state
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RunError(f"{path}: does not fit this run's model ({first}); {fresh}") from None


_PRECISION_DTYPE = {v: k for k, v in PRECISION_OF_DTYPE.items()}


def _check_compute_dtype(path: Path, saved: Any, now: str | None, precision: str, changed_from: str | None,
                         fresh: str) -> None:
    """Refuse to continue a checkpoint at another compute dtype than its epochs ran at (see
    :func:`load_checkpoint`)."""
    if now is None:
        return
    if saved is None:  # an older checkpoint: its config.yaml's precision says what it ran at, where it forces one
        if changed_from is not None and _PRECISION_DTYPE.get(changed_from) != now:
            raise RunError(f"{path} records no compute dtype (written by an older crossan), so --resume "
                           f"cannot check that precision={precision} continues it at the dtype it started "
                           f"with; resume with precision={changed_from} as in its config.yaml, or {fresh}")
        return
    if saved == now:
        return
    force = PRECISION_OF_DTYPE.get(str(saved))
    slow = " (emulated, and slow, where the hardware has no bf16 units)" if force == "bf16" else ""
    how = (f"resume with precision={force} to continue in {saved}{slow}" if force
           else f"resume where it runs at {saved}")
    raise RunError(f"{path} was trained with compute dtype {saved}, but this run would continue in {now} "
                   f"(precision={precision} on this machine and device), and a run must not switch dtype "
                   f"halfway: {how}, or train into a new folder, or {fresh}")


def truncate_history(path: Path, epochs_done: int) -> None:
    """Drop history lines of epochs after the checkpoint (a crash can fall between the two writes), and a last
    line that a crash cut short."""
    if path.is_file():
        keep = [line for line in path.read_text(encoding="utf-8").splitlines() if _history_epoch(line) <= epochs_done]
        atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8"))


def _history_epoch(line: str) -> float:
    """The epoch of one history line (infinity for a line cut short, so that it is dropped)."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def save_per_user(path: Path, data: SequentialData, valid_ranks: torch.Tensor, test_ranks: torch.Tensor) -> None:
    """Per-user ranks of the selected epoch (``per_user.npz``): any metric of any user can be recomputed,
    and two runs on the same split compared user by user."""
    from crossan.ranking import split_fingerprint

    atomic_write(path, lambda tmp: np.savez_compressed(
        tmp, valid_ranks=valid_ranks.numpy(), test_ranks=test_ranks.numpy(),
        users=np.asarray(data.users, dtype=object).astype(str),
        split_fingerprint=np.asarray(split_fingerprint(data))), suffix=".npz")


# --------------------------------------------------------------------------------------------- reading back
class RunWarning(UserWarning):
    """Something a reader of a saved run's scores must know (the command line prints it as one line)."""


class NonFiniteScoreWarning(RunWarning, RuntimeWarning):
    """Serving: some candidates scored NaN or ±inf (damaged weights, or embeddings that overflow); they are ranked
    last, as the evaluator ranks them. A RuntimeWarning too (what it was before crossan 0.1.20)."""


class UnfinishedRunWarning(RunWarning):
    """A run without ``results.json`` (training stopped or still runs) is used with its best weights so
    far."""


class MethodCodeWarning(RunWarning):
    """A run of a plugin method is loaded into other code than it was trained with (same method name)."""


class SplitChangedWarning(RunWarning):
    """``crossan evaluate`` scores users' histories other than those the run was trained and tested on (the
    dataset's users changed since: ``split_fingerprint`` of results.json)."""


class CacheChangedWarning(RunWarning):
    """A run that reads the layer-state cache is scored on a cache that changed since it trained."""


class ContentChangedWarning(RunWarning):
    """A run that reads item content itself (an end-to-end baseline, or ``cached=false``) is scored on
    titles or media files that changed since it trained."""


def cache_states_digests(cfg: Config, data: SequentialData) -> dict[str, str]:
    """Per modality, the SHA-256 of the cached ``states.npy`` a run of ``cfg`` reads (from the cache's
    manifest); empty for methods that do not read the cache or with ``cached=false``. A run records it
    (results.json ``cache_states``) so that scoring it later on a rebuilt or updated cache (its items' titles
    or media changed) says so."""
    from crossan.methods import get_method

    if not (get_method(cfg.method).reads_cache and cfg.cached):
        return {}
    from crossan.cache.layout import STATES, modality_folder
    from crossan.cache.manifest import read_manifest

    out = {}
    for m in cfg.modalities:
        manifest = read_manifest(modality_folder(cfg, data, m)) or {}
        digest = ((manifest.get("checksums") or {}).get(STATES) or {}).get("sha256")
        if digest:
            out[m] = str(digest)
    return out


def cache_states_changes(results: dict[str, Any] | None, cfg: Config, data: SequentialData) -> list[str]:
    """The modalities whose cache differs from the one a run's ``results`` record (``cache_states``), rebuilt
    or not there now (:func:`cache_states_diff`); empty for runs that record none."""
    changed, gone = cache_states_diff(results, cfg, data)
    return changed + gone


def cache_states_diff(results: dict[str, Any] | None, cfg: Config,
                      data: SequentialData) -> tuple[list[str], list[str]]:
    """Against the cache a run's ``results`` record (``cache_states``): the modalities whose cache is another
    now (rebuilt or updated), and those with no cache now (deleted, or looked for under another ``cache.dir``
    / ``$CROSSAN_CACHE_DIR``). Both empty for runs that record none (methods without the cache, runs of older
    crossan versions)."""
    then = (results or {}).get("cache_states") or {}
    if not isinstance(then, dict) or not then:
        return [], []
    now = cache_states_digests(cfg, data)
    return [m for m in then if m in now and now[m] != then[m]], [m for m in then if m not in now]


def content_digests(cfg: Config, data: SequentialData, memo: dict[tuple[int, str], str] | None = None,
                    collective: bool = False) -> dict[str, str]:
    """Per modality, a SHA-256 of the item content a run of ``cfg`` reads itself: each item's title (text),
    or its media file's path, size and SHA-256 (files above ``HASH_MAX_BYTES``: size and modification
    time). Empty for methods that read no content (``id``) and for those that read it through the
    layer-state cache (:func:`cache_states_digests` covers them). A run records it (results.json
    ``content_sources``) so that a changed title or cover under the same item id is not reused or re-scored
    in silence: the item ids (``item_fingerprint``) do not see it. ``memo``: digests already computed for
    this ``data`` object, by (id(data), modality) (a suite checks many runs of one dataset).

    ``collective``: every rank of a torchrun job calls it (training's start): each hashes its share of the
    items (:func:`_shared_sources`) and all get the same digests as one process. Without it (the default: a
    saved run loaded, a suite's reuse) this process hashes every item and calls no collective, so one rank of a
    torchrun script may load a run alone."""
    from crossan.methods import get_method

    method = get_method(cfg.method)
    if not method.has_content or (method.reads_cache and cfg.cached):
        return {}
    from crossan.cache.integrity import HASH_MAX_BYTES
    from crossan.cache.layout import item_records

    records = item_records(data)
    out = {}
    for m in cfg.modalities:
        if memo is not None and (id(data), m) in memo:
            out[m] = memo[id(data), m]
            continue
        sources = _shared_sources(m, records, data.catalogue, collective)
        hashed = (sources["size"] >= 0) & (sources["size"] <= HASH_MAX_BYTES)
        sources["mtime_ns"][hashed] = 0  # a file touched with the same bytes is the same input
        out[m] = hashlib.sha256(sources.tobytes()).hexdigest()
        if memo is not None:
            memo[id(data), m] = out[m]
    return out


def _shared_sources(modality: str, records: list[Any], catalogue: Any, collective: bool = False) -> np.ndarray:
    """:func:`~crossan.cache.integrity.current_sources` of ``records``; with ``collective`` (training under
    torchrun) computed by all ranks together: rank r stats and hashes the r-th of W contiguous shares of the
    rows, and the shares are gathered (:func:`crossan.distributed.all_gather_array`), giving every rank the
    array one process computes (each row depends on its own item only). Rank 0 used to hash every file while the other ranks waited at a barrier of
    :data:`~crossan.distributed.TIMEOUT` (30 minutes), which a large catalogue outlasted: the job failed. Now
    the hashing takes 1/W of the time, and the ranks wait for each other's shares up to
    :data:`~crossan.distributed.CACHE_TIMEOUT`."""
    from crossan.cache.integrity import current_sources

    rank, world = dist.split(collective)
    if world == 1:
        return current_sources(modality, records, catalogue)
    lo, hi = rank * len(records) // world, (rank + 1) * len(records) // world
    mine = current_sources(modality, records[lo:hi], catalogue)  # its row 0 is the padding row of every share
    return np.concatenate([mine[:1], *dist.all_gather_array(mine[1:])])


def content_changes(results: dict[str, Any] | None, cfg: Config, data: SequentialData,
                    memo: dict[tuple[int, str], str] | None = None) -> list[str]:
    """The modalities whose item content differs from what a run's ``results`` record
    (``content_sources``); empty for runs that record none (cached methods, older crossan versions)."""
    then = (results or {}).get("content_sources") or {}
    if not isinstance(then, dict) or not then:
        return []
    now = content_digests(cfg, data, memo)
    return [m for m in then if now.get(m) != then[m]]


def input_changes(results: dict[str, Any] | None, cfg: Config, data: SequentialData,
                  memo: dict[tuple[int, str], str] | None = None,
                  missing: bool = True) -> list[tuple[type[RunWarning], str]]:
    """How the inputs a finished run read differ from those it would read now, beyond its item ids: a
    rebuilt or updated layer-state cache (:func:`cache_states_diff`), one that is not there now (with
    ``missing``), or changed titles/media read directly (:func:`content_changes`); each as (warning class,
    phrase). Empty: the same inputs."""
    out: list[tuple[type[RunWarning], str]] = []
    cache, gone = cache_states_diff(results, cfg, data)
    if cache:
        out.append((CacheChangedWarning, f"the layer-state cache of {', '.join(cache)} changed since it trained "
                                         "(rebuilt or updated: items' titles or media changed)"))
    if gone and missing:
        out.append((CacheChangedWarning, f"the layer-state cache of {', '.join(gone)} it trained on is not there "
                                         "now (deleted, or looked for under another cache.dir)"))
    content = content_changes(results, cfg, data, memo)
    if content:
        out.append((ContentChangedWarning, f"the item content of {', '.join(content)} changed since it trained "
                                           "(titles or media files)"))
    return out


def read_results(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN_DIR/results.json`` as a mapping, or None when the run has none (unfinished); :class:`RunError`
    naming the file when it cannot be read."""
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return None
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(res, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(res).__name__}")
    return res


def warn_if_unfinished(run_dir: str | Path, stacklevel: int = 3) -> bool:
    """Warn (:class:`UnfinishedRunWarning`, naming the folder) when ``run_dir`` has no ``results.json``: its
    ``best.safetensors`` are the best weights so far of a run that stopped or still runs. Returns whether
    the run is unfinished."""
    if (Path(run_dir) / RESULTS).is_file():
        return False
    warnings.warn(f"{run_dir}: unfinished run (no {RESULTS}: training stopped or still runs); using the best "
                  f"weights so far ({WEIGHTS}), which were never scored on the test split",
                  UnfinishedRunWarning, stacklevel=stacklevel)
    return True


def check_item_fingerprint(run_dir: str | Path, results: dict[str, Any] | None, data: SequentialData,
                           data_path: str) -> None:
    """Refuse (:class:`RunError`) a dataset whose items differ from those the run was trained on.

    The run's weights (and for content methods its item rows) index items by row, so another catalogue, or
    the same catalogue in another order, would silently serve other items. Compared only when ``results``
    (the run's results.json) records ``item_fingerprint``; older runs are read as before."""
    from crossan.ranking import item_fingerprint

    expected = (results or {}).get("item_fingerprint")
    if not expected:
        return
    got = item_fingerprint(data)
    if got == expected:
        return
    recorded = (results or {}).get("data")
    trained_n = recorded.get("items") if isinstance(recorded, dict) else None
    n = data.num_items
    if isinstance(trained_n, int) and trained_n != n:
        what = f"it has {n} items, the run was trained on {trained_n}"
    elif trained_n == n:
        what = f"it has the same number of items ({n}) but other item ids or the same ids in another order"
    else:
        what = "other item ids, or the same ids in another order"
    raise RunError(f"{run_dir}: the dataset {data_path} is not the one this run was trained on ({what}; "
                   f"item fingerprint {got}, the run's {expected}); its rows would be other items. Point "
                   "data.path (or --run-data) at the run's training dataset")


def load_run(run_dir: str | Path, device: str = "auto", data_path: str | None = None,
             cfg: Config | None = None, weights: WeightsFile | None = None
             ) -> tuple[Config, SequentialData, Recommender]:
    """Rebuild a saved run: its config, its data, and the model with its best weights, in eval mode.

    ``cfg``: the run's configuration when the caller has read it already (:func:`check_run_folder`), so
    that ``config.yaml`` is parsed once. ``data_path`` replaces ``data.path`` (the dataset moved).
    ``weights``: the run's ``best.safetensors`` as the caller read it (:func:`read_weights`), loaded instead
    of reading the file again: a run that still trains may have replaced it since (a new best epoch), and
    the caller checked what lies beside the weights against the bytes it read.

    Raises :class:`RunError` when the dataset is not at ``data.path`` (naming ``--run-data``), when its items
    are not those the run was trained on (:func:`check_item_fingerprint`) and when the weights do not fit the
    model (:func:`load_weights`).
    """
    from crossan.data import prepare
    from crossan.model import build_model
    from crossan.utils import resolve_device

    run_dir = Path(run_dir)
    cfg = cfg if cfg is not None else read_run_config(run_dir)
    if data_path:
        cfg.data.path = data_path
    if device != "auto":
        cfg.device = device
    results = read_results(run_dir)
    recorded = results if results is not None else _checkpoint_method_source(run_dir)
    changed = method_source_changes(cfg.method, recorded) if recorded is not None else ""
    if changed:
        warnings.warn(f"{run_dir}: {changed}; its weights are loaded into the code of now, so its scores may "
                      f"differ from {RESULTS}", MethodCodeWarning, stacklevel=2)
    if not data_path and cfg.data.path and not Path(cfg.data.path).expanduser().exists():
        # the reader's own error names the path only; say how to point the run at the dataset's new place
        raise RunError(f"{run_dir}: the dataset it was trained on, {cfg.data.path} (data.path of its "
                       f"{CONFIG}), is not there; if it moved, pass its new place (--run-data PATH)")
    data = prepare(cfg.data)
    check_item_fingerprint(run_dir, results, data, cfg.data.path)
    # a missing cache is not warned of: building the model below stops on it, naming the command that builds it
    for category, phrase in input_changes(results, cfg, data, missing=False):
        warnings.warn(f"{run_dir}: {phrase}; its scores now are on the inputs of now, so they may differ from "
                      f"{RESULTS}", category, stacklevel=2)
    device = resolve_device(cfg.device)
    cfg.precision = trained_precision(cfg.precision, (results or {}).get("compute_dtype"), device)
    model = build_model(cfg, data, device)
    load_weights(model, weights if weights is not None else run_dir / WEIGHTS)
    model.eval()
    return cfg, data, model


def trained_precision(precision: str, trained: Any, device: torch.device) -> str:
    """The ``precision`` a loaded run runs at on ``device``: the one forcing the compute dtype it trained at
    (results.json ``compute_dtype``) where ``precision`` resolves to another here and that dtype can run here,
    else ``precision`` itself. ``auto`` resolves by hardware, and frozen encoders read live (``cached=false``)
    run at it: a run trained in float32 and served or evaluated on a CPU with bf16 units computed its item
    table from bf16 states, off the one it was trained and tested with (and standardised with statistics of
    float32 states). Where the dtype it trained at cannot run here (bf16 on an Apple GPU), ``precision``."""
    from crossan.precision import compute_dtype, dtype_name

    force = PRECISION_OF_DTYPE.get(str(trained))
    if force is None or force == precision:
        return precision
    try:
        if dtype_name(compute_dtype(precision, device)) == trained:
            return precision
        compute_dtype(force, device)  # bf16 where it cannot run: ValueError
    except ValueError:
        return precision
    return force


def evaluate_run(run_dir: str | Path, device: str = "auto", data_path: str | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """``crossan evaluate``: score a saved run's best weights on validation and test again (same protocol
    as training) and write ``evaluation.json``; returns what it wrote. An unfinished run (no results.json) is
    scored with its best weights so far, with an :class:`UnfinishedRunWarning`. The run folder is checked as
    serving checks it (:func:`check_run_folder`: a version of crossan that cannot read it is refused before
    anything is written); ``data_path``: the training dataset, when it moved since training. The file records
    the SHA-256 of the weights it scored (``weights_sha256``): those of an unfinished run change with each
    new best epoch, the digests of the cached states it scored (``cache_states``, for a method that reads the
    cache), and the ``split_fingerprint`` of the data it scored (a :class:`SplitChangedWarning` when
    it is not the run's: the users' histories changed since training). ``progress``: progress bars of the
    ranking on stderr once it takes over 2 s."""
    from crossan.ranking import evaluate, split_fingerprint, split_report

    cfg = check_run_folder(run_dir)
    weights = read_weights(Path(run_dir) / WEIGHTS)  # one read: the digest is that of the weights scored
    sha = weights.sha256
    cfg, data, model = load_run(run_dir, device, data_path, cfg=cfg, weights=weights)
    del weights  # the model holds them now: the file's bytes are not kept through the scoring
    warn_if_unfinished(run_dir)  # a folder that is no run at all fails in load_run, without this warning
    split = split_fingerprint(data)
    trained = (read_results(run_dir) or {}).get("split_fingerprint")
    if trained and trained != split:  # load_run refuses other items; other users' histories it cannot see
        warnings.warn(f"{run_dir}: the users' histories in {cfg.data.path}, or their order, are not those the "
                      f"run was trained and tested on (split fingerprint {split}, the run's {trained}); "
                      f"{EVALUATION} scores the data of now, not that of {RESULTS}", SplitChangedWarning,
                      stacklevel=2)
    table = model.tower.embed_all(cfg.eval.batch_size)
    out = {"valid": evaluate(model, data, "valid", cfg, table, where=str(run_dir), progress=progress),
           "test": evaluate(model, data, "test", cfg, table, where=str(run_dir), progress=progress),
           "splits": split_report(data),
           "split_fingerprint": split, "weights_sha256": sha}
    states = cache_states_digests(cfg, data)
    if states:  # the cache scored, as results.json records the one trained on
        out["cache_states"] = states
    atomic_write_json(Path(run_dir) / EVALUATION, out)
    return out


rescore = evaluate_run
"""Older name of :func:`evaluate_run`."""

"""Child processes of a suite: every (run, seed) and the cache build run in a spawned interpreter of their own
(``train()`` / ``build_cache()`` called there, no command line rebuilt), so that a run's peak memory is its own
and a crash or error stays in its log. A child's output goes to its log file; its last line reports its CPU
time (also when it is terminated: the suite interrupted, or killed, which sends its children SIGTERM); an error
ends it with one ``crossan: error:`` line; it dies with the suite process (Linux).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crossan.config import load_config
from crossan.utils import tolerant_output

CPU_LINE = "[suite-child] cpu seconds "
ATTEMPT_LINE = "[suite-child] ---- another attempt, from "
"""Separates a resumed (run, seed)'s output from the earlier attempts' in its log, which is kept."""
TRAINING_RECORD = ".suite.json"
"""Suffix of the suite's own note on how a (run, seed) trained: ``runs/NAME/seed-S.suite.json``, beside its
log (:func:`write_training_record`)."""


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the suite process dies (a killed suite leaves no run training)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _cpu_line() -> str:
    t = os.times()
    return f"\n{CPU_LINE}{t.user + t.system:.2f}\n"


def _report_cpu_and_exit(signum: int, frame: Any) -> None:
    """SIGTERM in a child: write its CPU time to the log, then end as SIGTERM would (exit code 128 + 15), so
    that a terminated attempt's CPU time still counts in :func:`cpu_seconds` (only SIGKILL loses it)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, RuntimeError, ValueError):  # e.g. a re-entrant flush: the line below still goes out
            pass
    os.write(1, _cpu_line().encode())
    os._exit(128 + signum)


def _child_main(target: str, kwargs: dict[str, Any], log_path: str, threads: int | None) -> None:
    """Entry point of a spawned child: all output to ``log_path``; an error ends it with one
    ``crossan: error:`` line (and the traceback, when the error is not one of crossan's). Its CPU time is the
    log's last line (read by :func:`cpu_seconds`)."""
    _die_with_parent()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    signal.signal(signal.SIGTERM, _report_cpu_and_exit)
    sys.stdout.reconfigure(line_buffering=True)
    tolerant_output()  # as the CLI: a dash in a summary must not fail a child under PYTHONIOENCODING=latin-1
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    code = 0
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        {"train": _train_target, "cache": _cache_target}[target](**kwargs)
    except KeyboardInterrupt:
        code = 130
    except Exception as e:  # noqa: BLE001 - reported as one line to the parent, which keeps going
        expected = type(e).__module__.startswith("crossan") or isinstance(e, (ValueError, FileNotFoundError))
        if not expected:
            traceback.print_exc()
        print(f"crossan: error: {e}", file=sys.stderr, flush=True)
        code = 2
    print(_cpu_line(), end="", flush=True)
    sys.exit(code)


def _train_target(overrides: list[str], run_dir: str, resume: bool, progress: bool) -> None:
    from crossan.trainer import train

    train(load_config([], overrides), run_dir, resume=resume, progress=progress)


def _cache_target(overrides: list[str], modalities: list[str], progress: bool) -> None:
    from crossan.cache import build_cache
    from crossan.data import prepare

    cfg = load_config([], overrides)
    build_cache(cfg, prepare(cfg.data), modalities, progress=progress)


def start_child(target: str, kwargs: dict[str, Any], log_path: Path, threads: int | None = None
                ) -> mp.process.BaseProcess:
    """Start ``target`` in a spawned interpreter (``threads``: its torch thread count), output to
    ``log_path``. A run that is resumed (``kwargs["resume"]``) keeps its earlier attempts' output above an
    :data:`ATTEMPT_LINE`; any other start empties the log. The process's ``log_offset`` is where this
    attempt's output starts."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab" if kwargs.get("resume") else "wb") as log:
        if log.tell():
            log.write(f"\n{ATTEMPT_LINE}{time.strftime('%Y-%m-%d %H:%M:%S')} ----\n".encode())
        offset = log.tell()
    proc = mp.get_context("spawn").Process(target=_child_main, args=(target, kwargs, str(log_path), threads))
    proc.log_offset = offset  # type: ignore[attr-defined]
    proc.start()
    return proc


def run_child(target: str, kwargs: dict[str, Any], log_path: Path, show: bool) -> int:
    """Run ``target`` in a child of its own, its output going to ``log_path`` (and, if ``show``, copied to
    stderr as it comes: progress and log lines, not results; stdout keeps the suite's table). Returns the child's
    exit code."""
    proc = start_child(target, kwargs, log_path)
    try:
        with open(log_path, "rb") as log:
            log.seek(proc.log_offset)  # type: ignore[attr-defined]  # this attempt's output only
            while True:
                alive = proc.is_alive()
                chunk = log.read()
                if chunk and show:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                if not alive and not chunk:
                    break
                if not chunk:
                    time.sleep(0.2)
        proc.join()
    finally:
        if proc.is_alive():  # the parent was interrupted: do not leave the child training
            proc.terminate()
            proc.join()
    return int(proc.exitcode or 0)


def cpu_seconds(log_path: Path) -> float | None:
    """The CPU time (user + system) the child reported at its end, summed over the attempts of a resumed
    run that reported one (a terminated attempt does; one killed with SIGKILL cannot), or None when none did."""
    if not log_path.is_file():
        return None
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.startswith(CPU_LINE)]
    return sum(float(ln[len(CPU_LINE):]) for ln in lines) if lines else None


def _last_attempt(text: str) -> str:
    """The output of a log's last attempt (see :data:`ATTEMPT_LINE`)."""
    at = text.rfind(ATTEMPT_LINE)
    return text if at < 0 else text[text.find("\n", at) + 1:]


def failure_text(log_path: Path, exitcode: int) -> str:
    """Why a child ended with ``exitcode`` ≠ 0: its error line (:func:`error_line`), after the signal that
    killed it where one did (a negative exit code): a child killed by SIGKILL writes nothing more, and its
    log's last line is only progress."""
    line = error_line(log_path)
    if exitcode >= 0:
        return line
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    oom = " (most often the kernel's out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
    return f"killed by {name}{oom}; its last output: {line}"


def error_line(log_path: Path) -> str:
    """The child's error message on one line (from its last ``crossan: error:`` line on), or its last line."""
    text = _last_attempt(log_path.read_text(errors="replace")) if log_path.is_file() else ""
    lines = [ln for ln in text.strip().splitlines() if not ln.startswith(CPU_LINE) and ln.strip()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("crossan: error:")]
    if starts:
        return " ".join(ln.strip() for ln in lines[starts[-1]:])
    if lines:
        return lines[-1]
    try:  # a child that wrote nothing: most often its log could not be written
        free = shutil.disk_usage(log_path.parent).free
    except OSError:
        free = None
    if free is not None and free < 64 * 1024:
        return f"(no output: {log_path.parent} is on a full disk, so the child could not write its log)"
    return "(no output)"


def training_record_path(run_dir: Path | str) -> Path:
    """``runs/NAME/seed-S.suite.json`` for the run folder ``runs/NAME/seed-S``."""
    run_dir = Path(run_dir)
    return run_dir.parent / f"{run_dir.name}{TRAINING_RECORD}"


def write_training_record(run_dir: Path | str, alone: bool, at_once: int, finished: bool) -> None:
    """Record, beside a (run, seed) the suite trains, whether it trained with nothing else of the suite
    running (``alone``; its time and memory are then its own) and how many runs trained at once; written when
    its training starts (``finished`` false: a resumed run keeps ``alone`` only if its earlier epochs had it)
    and again when it has finished. Written by the suite process, not by the trainer: only the suite knows
    what else ran."""
    from crossan.utils import atomic_write_json

    path = training_record_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"trained_alone": bool(alone), "runs_at_once": int(at_once), "finished": finished,
                             "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})


def read_training_record(run_dir: Path | str) -> dict[str, Any] | None:
    """The note :func:`write_training_record` left for a run folder (None: none, e.g. a run trained before the
    suite wrote it, or an unreadable one)."""
    import json

    try:
        record = json.loads(training_record_path(run_dir).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("trained_alone"), bool) else None


def train_parallel(jobs: list[tuple[dict[str, Any], dict[str, Any] | None]], parallel: int,
                   on_done: Callable[[dict[str, Any], int], None]) -> None:
    """Train ``jobs`` ``parallel`` at a time, each child with its share of the cores as torch threads (their
    quality is used, not their time: they share the machine)."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    pending = [(rec, kw) for rec, kw in jobs if kw is not None]
    running: list[tuple[dict[str, Any], mp.process.BaseProcess]] = []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                rec, kw = pending.pop(0)
                rec["t0"] = time.perf_counter()
                print(rec.get("start_line", f"[suite] {rec.get('label', '')}"), flush=True)
                running.append((rec, start_child("train", {**kw, "progress": False}, Path(rec["log"]), threads)))
            time.sleep(0.3)
            for item in [x for x in running if not x[1].is_alive()]:
                rec, proc = item
                proc.join()
                on_done(rec, int(proc.exitcode or 0))
                if rec["status"] == "ok":
                    print(f"[suite] {rec['label']}: done in {rec['wall_s']} s", flush=True)
                running.remove(item)
    finally:
        for _, proc in running:  # interrupted: leave no child training
            if proc.is_alive():
                proc.terminate()
            proc.join()

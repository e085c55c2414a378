"""Small shared helpers: seeding, devices, memory, parameter counts, atomic file writes.

Importing this module imports no torch (the file writers serve torch-free commands too); the helpers that
need torch import it when called.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import random
import re
import resource
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crossan.errors import CrossanError, WriteError

if TYPE_CHECKING:
    import torch
    from torch import nn


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device: {name!r} asked for but this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {name!r} asked for but MPS (Apple GPU) is not available here")
    return dev


def describe_device(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_description()}, torch threads {torch.get_num_threads()})"


def _cpuinfo_fields(cpuinfo: str | Path) -> dict[str, str]:
    """The first value of each ``key: value`` line of ``cpuinfo`` (empty when it cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags listed in ``cpuinfo`` (empty when the file cannot be read, e.g. not Linux)."""
    return _flags(_cpuinfo_fields(cpuinfo))


def _flags(fields: dict[str, str]) -> frozenset[str]:
    return frozenset((fields.get("flags") or fields.get("Features") or "").split())  # x86 / ARM spelling


CPU_VECTOR_UNITS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"),
                    ("avx2", "AVX2"), ("bf16", "Arm BF16"), ("sve", "SVE"), ("asimd", "NEON"))
"""``/proc/cpuinfo`` flags of matrix/vector units, widest first, and how :func:`cpu_description` names them."""


def cpu_description(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """This machine's CPU for figures in reports, e.g. ``AMD EPYC (x86_64, 2 cores, AVX2)``: the model, the
    architecture, the core count and the widest matrix/vector unit it lists (:data:`CPU_VECTOR_UNITS`).
    Speed figures from CPUs with and without bf16 units (AMX-BF16, AVX-512 BF16) differ several-fold, so
    every benchmark names it."""
    fields = _cpuinfo_fields(cpuinfo)
    model = fields.get("model name") or platform.processor() or "unknown CPU"
    flags = _flags(fields)
    unit = next((name for flag, name in CPU_VECTOR_UNITS if flag in flags), "vector units unknown")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({platform.machine()}, {usable} cores, {unit})"  # the CPUs this process may run on


def matmul_rate(dtype: torch.dtype | None = None, device: torch.device | str = "cpu", size: int = 2048,
                repeats: int = 5) -> float:
    """This machine's dense matmul rate in FLOP/s: the best of ``repeats`` ``size``² products in ``dtype``
    (float32 when None) on ``device``, after one warm-up. The benchmarks divide by it to say how close a
    workload runs to what the hardware can do in that dtype (its "share of the matmul peak"). On a GPU each
    measurement times 50 products queued back to back between two synchronisations: one 2048² product takes
    tens of microseconds there, about what a launch and a synchronisation cost."""
    import time

    import torch

    device = torch.device(device)
    dtype = dtype or torch.float32
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)  # its own GPU
    queued = 50 if device.type == "cuda" else 1
    torch.mm(a, b)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(queued):
            torch.mm(a, b)
        sync()
        best = min(best, (time.perf_counter() - t0) / queued)
    return 2 * size**3 / best


def cpp_compiler_problem() -> str | None:
    """None where inductor, which ``torch.compile`` uses on a CPU, finds a working C++ compiler (``$CXX``,
    else g++); otherwise what it tried and what went wrong."""
    from torch._inductor import config as inductor_config
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as e:  # InvalidCxxCompiler, or whatever a broken toolchain raises
        cxx = inductor_config.cpp.cxx
        tried = ", ".join(str(c) for c in (cxx if isinstance(cxx, (list, tuple)) else (cxx,)) if c)
        return f"tried {tried or 'none'}: {type(e).__name__}"
    return None


def require_cpp_compiler(key: str) -> None:
    """Raise :class:`~crossan.errors.ConfigError` naming the config ``key`` (``train.compile``)
    when inductor, which ``torch.compile`` uses on a CPU, finds no working C++ compiler (``$CXX``, else g++):
    otherwise the first compiled call fails deep inside torch with a long traceback."""
    from crossan.errors import ConfigError

    problem = cpp_compiler_problem()
    if problem is not None:
        raise ConfigError(
            f"{key}=true compiles with torch's inductor, which needs a working C++ compiler on the CPU, and "
            f"none was found ({problem}). Install one (e.g. gcc's g++), point CXX at it, or set {key}=false")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - non-Linux
        return peak_rss_bytes()


def count_params(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file held in memory (``safe_open`` reads only a path, and a second
    read of the path may meet another file: one an atomic writer renamed over it in between). The format: an
    8-byte little-endian header length, then the JSON header. ``ValueError`` for bytes that are not one."""
    if len(data) < 8:
        raise ValueError("not a safetensors file (shorter than its 8-byte header length)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"not a safetensors file (a header of {n} bytes in {len(data)} bytes)")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


NAME_MAX = 255
"""Bytes in one file or folder name on the file systems crossan writes to (ext4, xfs, btrfs, tmpfs, APFS)."""


def temporary_path(path: Path, suffix: str) -> Path:
    """Where :func:`atomic_write` writes ``path`` first: ``.<name>.<12 hex digits><suffix>`` beside it."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}")


_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}\.\w+$")
"""Names :func:`temporary_path` makes (whatever the writer's suffix)."""


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file :func:`atomic_write` makes (and removes, unless killed mid-write)."""
    return bool(_TEMPORARY.match(path.name)) and path.is_file()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that writers (:func:`atomic_write`) killed mid-write left in ``folder``;
    returns them. Only for a folder no other process writes now (a run folder being resumed): a live
    writer's temporary file would go too."""
    gone = []
    for path in folder.iterdir() if folder.is_dir() else []:
        if is_temporary(path):
            path.unlink(missing_ok=True)
            gone.append(path)
    return gone


def atomic_write(path: str | Path, write: Callable[[Path], Any], suffix: str = ".tmp") -> Path:
    """Write ``path`` so that readers see either the old or the new file, never half of one.

    ``write(tmp)`` writes the content to a temporary file beside ``path`` (same folder, so the rename stays on
    one file system); the file is flushed to disk and renamed over ``path``. On any error the temporary file
    is removed and ``path`` is left as it was. ``suffix`` ends the temporary name, for writers that insist
    on one (``np.save`` appends ``.npy`` otherwise). Every crossan file written in place goes through here.
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path}: is a folder; expected a file name here")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"{path}: cannot create its folder {path.parent} ({e.strerror or e})") from None
    tmp = temporary_path(path, suffix)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # the mode of a plainly created file, whatever the writer chose
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except Exception as e:
        # only a write's failure is named here (write_failure: an operating-system error, or a library's report
        # of one, e.g. torch.save's "inline_container … unexpected pos" on a full disk); crossan's own errors and
        # any other (the content's: a history scored non-finite while its CSV was streamed, a bug) pass through
        why = write_failure(e, path.parent)  # before the temporary goes: its bytes are the disk's last free space
        _remove_quietly(tmp)
        if why == NO_SPACE:
            raise WriteError(f"{path}: no space left on the device while writing it; {path.name} was not changed "
                             "(free some space and run the command again)") from None
        if why is not None:
            raise WriteError(f"{path}: cannot write ({why}); {path.name} was not changed") from None
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def _remove_quietly(tmp: Path) -> None:
    """Remove a temporary file if it is there; in a read-only folder, where it was never created, unlinking
    raises EROFS rather than ENOENT, and that must not replace the error that named the file being written."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


NO_SPACE = "no space left on the device"
"""What :func:`write_failure` says of a full disk."""


def write_failure(e: BaseException, folder: Path) -> str | None:
    """Why a write into ``folder`` failed, in a few words ("no space left on the device", "Read-only file
    system" …), when ``e`` is (or was raised from) an operating-system error or a library's report of a full
    disk; None for any other error (not a write failure: let it through as it is)."""
    if not isinstance(e, Exception) or isinstance(e, CrossanError):  # an interrupt, crossan's own error
        return None
    os_error = _os_error(e)
    if os_error is None and not _says_disk_full(e) and not _says_write_failed(e):  # a bug, not a write
        return None
    if _disk_full(os_error or e, folder):
        return NO_SPACE
    return str(os_error.strerror or os_error) if os_error is not None else None


def _os_error(e: BaseException) -> OSError | None:
    """``e`` when it is an OSError, else the first OSError it was raised from or while handling (a few links
    down), else None."""
    seen: BaseException | None = e
    for _ in range(5):
        if seen is None or isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


_NOT_ABOUT_SPACE = frozenset(getattr(errno, name) for name in (
    "ENOENT", "ENOTDIR", "EISDIR", "EROFS", "EACCES", "EPERM", "EEXIST", "ENAMETOOLONG", "ELOOP", "EXDEV", "EBUSY",
    "ETXTBSY", "EINVAL", "EBADF") if hasattr(errno, name))
"""OSError numbers that name a cause of their own: such a failed write is never taken for a full disk."""


def _disk_full(e: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC/EDQUOT, a library's message saying so, or (for an
    error that names no cause of its own, :data:`_NOT_ABOUT_SPACE`: EIO, torch.save's vague RuntimeError) a file
    system left with under 64 KiB."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if _says_disk_full(e):
        return True
    # a cause of its own, not a full disk, though /proc, /sys and read-only mounts report no free space (EIO is
    # judged by the space: some file systems report a full disk so)
    if isinstance(e, OSError) and e.errno in _NOT_ABOUT_SPACE:
        return False
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def _says_disk_full(e: BaseException) -> bool:
    """Whether a library's error message reports a full disk (safetensors: "os error 28")."""
    return "No space left on device" in str(e) or "os error 28" in str(e)


def _says_write_failed(e: BaseException) -> bool:
    """Whether a library's error message reports a failed write without its cause (torch.save: "PytorchStreamWriter
    failed writing file …", "file write failed"); whether the disk is full is then told by its free space."""
    text = str(e)
    return "failed writing" in text or "write failed" in text or "inline_container" in text


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap the files or folders at ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so that
    no moment shows neither; False where the system or its file system cannot (the caller then renames twice)."""
    import ctypes
    import errno

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # a C library without it (glibc < 2.28, musl …)
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # a kernel or file system without exchange
        return False
    raise OSError(code, os.strerror(code), str(b))


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text file."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, scalars) with every non-finite float as None: strict JSON has no
    NaN or Infinity (Python's ``json`` writes them as bare tokens that JavaScript's and Java's parsers refuse)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any, sort_keys: bool = False) -> None:
    """:func:`atomic_write` of ``obj`` as indented JSON with a final newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """:func:`atomic_write` of ``torch.save(obj)`` (through a file object of ours, so that a failed write's
    OSError stays attached to torch's error)."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write)


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                            metadata: dict[str, str] | None = None) -> None:
    """:func:`atomic_write` of a safetensors file, written by :func:`write_safetensors`: safetensors'
    ``save_file`` writes a temporary file of its own (``.tmpXXXXXX``), which a process killed mid-write left
    behind where no clean-up of ours (:func:`remove_stale_temporaries`) knows its name, and reports a failed
    write without its OSError; its in-memory ``save`` holds two copies of the file while it writes (a peak
    inside a run's measured memory, at every new best epoch)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write_safetensors(f, tensors, metadata)

    atomic_write(path, write)


_SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                       "int32": "I32", "int16": "I16", "int8": "I8", "uint64": "U64", "uint32": "U32",
                       "uint16": "U16", "uint8": "U8", "bool": "BOOL", "float8_e4m3fn": "F8_E4M3",
                       "float8_e5m2": "F8_E5M2"}


def write_safetensors(f: Any, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to the binary file ``f`` in the safetensors format (an 8-byte little-endian header
    length, the JSON header padded with spaces to a multiple of 8, then each tensor's bytes in name order,
    offsets relative to the end of the header), streaming each tensor's own memory: no copy of the whole file."""
    import torch

    items = sorted(tensors.items())
    header: dict[str, Any] = {}
    offset = 0
    for name, t in items:
        size = t.numel() * t.element_size()
        dtype = _SAFETENSORS_DTYPES.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} has no safetensors name "
                             f"({', '.join(_SAFETENSORS_DTYPES)} do)")
        header[name] = {"dtype": dtype,
                        "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for _, t in items:
        if t.numel():  # little-endian, as every CPU torch runs on here; the bytes of the tensor itself
            f.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))


class PeakRSSMonitor:
    """Samples this process's resident memory in a background thread; ``peak`` is the largest sample.

    ``ru_maxrss`` cannot be reset, so a peak over one phase (training, not data loading) needs sampling.
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        # 20 ms: under train.malloc=retain the resident memory never falls back, so nothing is missed; each
        # wake-up preempts a training thread (5 ms cost a few percent of a small step's time)
        import threading

        self.interval_s = interval_s
        self.baseline = current_rss_bytes()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            self._stop.wait(self.interval_s)

    def start(self) -> PeakRSSMonitor:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling; returns the peak above the baseline (bytes)."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())
        return self.peak - self.baseline


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt's parameter numbers in glibc's malloc.h
_RETAINING = False


def retain_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep the memory that is freed in this process for later allocations, instead
    of handing it back to the operating system; returns whether that is in effect (False where the C
    library is not glibc).

    By default glibc serves large blocks (from 128 KiB, a threshold that moves with use up to 32 MiB) with
    ``mmap`` and returns them with ``munmap`` when freed, and trims the heap's free top. A CPU training step
    allocates and frees the same large tensors at every step (activations, dropout masks, gradients), so each
    of them came back as fresh pages that the kernel zero-fills on first touch: 700–2,100 page faults per
    CROSSAN step at paper sizes. ``mallopt(M_MMAP_MAX, 0)`` and a 2 GiB ``M_TRIM_THRESHOLD`` make every block
    come from the heap and stay there (20–30 page faults per step). Raising the trim threshold alone, or with
    the mmap threshold, switches glibc's moving threshold off and faulted as often or more (results §3e, §3h).
    Process-wide and for the rest of the process: resident memory then stays near its peak. ``train.malloc``
    decides (see :class:`crossan.config.TrainConfig`).
    """
    global _RETAINING
    if _RETAINING:
        return True
    try:
        libc_name = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):  # not a GNU system
        libc_name = ""
    if not libc_name.startswith("glibc"):
        return False
    import ctypes

    mallopt = ctypes.CDLL(None).mallopt  # glibc's, already loaded in this process
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _RETAINING = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _RETAINING


def configure_malloc(setting: str, device: torch.device | str) -> str:
    """Apply ``train.malloc`` (``auto`` | ``retain`` | ``system``) for training on ``device``; returns
    :func:`malloc_mode`. ``system`` leaves the allocator as it is (a process that already retains keeps
    retaining)."""
    import torch

    if setting not in ("auto", "retain", "system"):
        raise ValueError(f"train.malloc: expected auto, retain or system, got {setting!r}")
    if setting == "retain" or (setting == "auto" and torch.device(device).type == "cpu"):
        retain_freed_memory()
    return malloc_mode()


def malloc_mode() -> str:
    """``retain`` once :func:`retain_freed_memory` took effect in this process, ``system`` otherwise."""
    return "retain" if _RETAINING else "system"


def cpu_allocation_peak(fn: Any) -> int:
    """Run ``fn()`` and return the peak of CPU tensor memory it allocated and had not yet freed (bytes).

    The CPU counterpart of ``torch.cuda.max_memory_allocated() − memory_allocated()`` before the call: it
    follows every CPU allocation and free that torch's allocator reports to the profiler during ``fn``.
    Memory that existed before the call (model weights, optimiser state, a resident cache) is not counted,
    and neither is its release. Slower than running ``fn`` alone (the profiler is on); use it on a few steps.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == DeviceType.CPU), key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes held by a model's parameters and buffers, by the training tables of side inputs its towers keep
    (``cache.train_table``, :meth:`crossan.towers.content.ContentTower.side_table`) and by an optimiser's
    state tensors."""
    import torch

    tensors = [*model.parameters(), *model.buffers()]
    tensors += [m.__dict__["_side_table"][1] for m in model.modules() if "_side_table" in m.__dict__]
    if optimizer is not None:
        tensors += [v for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def tolerant_output() -> None:
    """Print what the output encoding cannot hold as escapes (``\\u2014``) instead of failing: with
    ``PYTHONIOENCODING=latin-1`` a summary's dash or the table's Δ ended ``cache`` and ``bench`` with exit 2 after
    their work was done, and ``--help`` with a traceback. The CLI and each suite child call it first."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", "") == "strict":
            stream.reconfigure(errors="backslashreplace")

"""torchrun support: process-group set-up and the few collectives crossan needs.

Every command runs unchanged in one process; under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the
process group is initialised with ``gloo`` on CPU and ``nccl`` on CUDA. Rank 0 logs, shows progress and
writes files; all ranks compute.

Only training shares work through the group: it passes ``collective=True`` to the item table, the ranking of a
split and the content digests (:func:`split`). Everything else (a saved run evaluated, served, exported, items
embedded) computes in the calling process even while a group is joined, so one rank may call it alone.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def split(collective: bool) -> tuple[int, int]:
    """(this rank, world size) over which a computation of the item table or of the ranks of a split is shared.

    ``collective``: the caller runs on every rank of the process group, which split the work and gather it
    (only training passes it: its validation and final test). Otherwise ``(0, 1)``: this process computes all
    of it and no collective is called, whether or not a group is joined, so that a tool used on one rank of a
    torchrun script (``if rank == 0: evaluate_run(out)``) does not wait forever for ranks that never join."""
    return (rank(), world_size()) if collective else (0, 1)


TIMEOUT = datetime.timedelta(minutes=30)
"""How long a collective (a barrier) waits for the other ranks before the job fails (training's ranks run in
step)."""
CACHE_TIMEOUT = datetime.timedelta(hours=24)
"""The same under ``crossan cache``: a rank that finished its shard waits at a barrier for the slowest one,
and shards of a build of many hours can end far more than 30 minutes apart (a timed-out barrier failed the
job, and every rerun of its last shards the same way)."""


_long_group: Any = None
"""A gloo group over every rank whose collectives wait up to :data:`CACHE_TIMEOUT` (made by
:func:`init_from_env`): :func:`all_gather_array` gathers over it the results of work whose length differs
between ranks by more than :data:`TIMEOUT` may allow (each rank hashing its share of a catalogue's media)."""


def init_from_env(device: torch.device, timeout: datetime.timedelta = TIMEOUT) -> torch.device:
    """Join the process group torchrun describes (no-op in a single process), its collectives waiting up to
    ``timeout``, and make :data:`_long_group`. Returns this rank's device.

    A group joined already (by an earlier call, or by the caller: ``init_process_group`` before
    :func:`crossan.trainer.train`) is kept, and :data:`_long_group` is made over it when missing: without it,
    :func:`all_gather_array` gathered its CPU tensors over the default group, which NCCL cannot."""
    global _long_group
    if is_distributed():
        if _long_group is None:
            _long_group = dist.new_group(backend="gloo", timeout=CACHE_TIMEOUT)
        return device
    if env_world_size() <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timeout)
    _long_group = dist.new_group(backend="gloo", timeout=CACHE_TIMEOUT)
    return device


def barrier() -> None:
    if is_distributed():
        dist.barrier()


GLOO_SETTLE_S = 0.25
"""How long :func:`shutdown` releases the GIL before leaving the group (see there)."""


def shutdown() -> None:
    """Leave the process group (every rank, also after an error: no collective is called here).

    A gloo worker thread drops its reference to a finished collective only after the rank's ``wait`` has
    returned. A collective started inside ``backward`` (DistributedDataParallel's gradient all-reduce) holds a
    Python object in its saved thread-local state, so that last drop needs the GIL. When the main thread went
    from its last ``backward`` to interpreter exit within the few milliseconds before it handed the GIL over,
    the worker, still waiting for the GIL, was stopped by the exiting interpreter and the C++ runtime aborted
    the process ("terminate called without an active exception", SIGABRT: 2 runs in about 135 of a script
    that ends right after a step). Sleeping hands the GIL to any such worker first (and lets a collective still
    in flight finish, if the other ranks take part in it)."""
    global _long_group
    if is_distributed():
        time.sleep(GLOO_SETTLE_S)
        dist.destroy_process_group()  # every group, :data:`_long_group` too
    _long_group = None


def all_gather_rows(t: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
    """Gather tensors whose first dimension differs between ranks; returns one tensor per rank, in rank order.
    ``group``: the process group (default: every rank, with the group's timeout)."""
    if not is_distributed():
        return [t]
    gather_device = t.device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    t = t.to(gather_device)
    n = torch.tensor([t.shape[0]], device=gather_device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n, group=group)
    longest = int(max(s.item() for s in sizes))
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(out, padded, group=group)
    return [o[: int(s.item())] for o, s in zip(out, sizes)]


def all_gather_array(a: np.ndarray) -> list[np.ndarray]:
    """Gather a 1-D numpy array of any dtype (structured too) whose length differs between ranks; returns one
    array per rank, in rank order, byte for byte. The ranks wait for each other up to :data:`CACHE_TIMEOUT`
    (over :data:`_long_group`), not :data:`TIMEOUT`: it gathers the results of work that can take hours and
    need not take equally long on every rank (a rank's share of a catalogue's files on a slower disk)."""
    if not is_distributed():
        return [a]
    a = np.ascontiguousarray(a)
    rows = torch.from_numpy(a.view(np.uint8).reshape(len(a), a.dtype.itemsize))
    return [r.numpy().reshape(-1).view(a.dtype) for r in all_gather_rows(rows, group=_long_group)]


def all_reduce_sum_(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place (nothing to do in one process)."""
    if not is_distributed():
        return
    for t in tensors:
        buf = t.detach().to(t.device if dist.get_backend() == "nccl" else torch.device("cpu"), torch.float64)
        dist.all_reduce(buf)
        t.copy_(buf.to(t.device, t.dtype))

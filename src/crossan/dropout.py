"""Dropout with a cheap mask on the CPU, shared by the side networks (:mod:`crossan.towers.sanb`) and the
user encoder (:mod:`crossan.user_encoder`).

``torch.bernoulli_`` draws one double from the Mersenne Twister per entry; on the project's CPU a SASRec
feed-forward mask [64, 10, 256] took about 1 ms, as much as a matrix product of the side network. Here an
entry reads 16 bits of 64-bit random words (:func:`keep_mask`: SFC64 words seeded from torch's generator), with the drop
probability rounded to a multiple of 2^-16 (:func:`dropout_rate`; 0.1 becomes 0.100006). On other devices
:func:`dropout` is ``torch.nn.functional.dropout`` (fused there). Both draw from torch's default generator
of the device, so a seeded run replays the same masks.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

KEEP_MASK_BITS = 16
"""Resolution of the CPU dropout mask: an entry is kept when a uniform 16-bit integer clears a threshold."""


def keep_mask(shape: tuple[int, ...] | torch.Size, p: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A CPU tensor of ``shape`` holding 1 with probability ``1 − p'`` and 0 otherwise, independently per
    entry, where ``p' = round(p · 2^16) / 2^16`` (see :func:`dropout_rate`).

    Each entry reads 16 bits of 64-bit random words: one seed drawn from torch's default CPU generator,
    then numpy's SFC64 generator (a small fast chaotic generator; about twice as fast as torch's
    Mersenne Twister here) fills the words, four entries per word rather than one draw per entry as
    ``bernoulli_`` does. The 0/1 values come from a clamp of those integers at the threshold; for bf16
    and fp16 the 0/1 integers are turned into the bit patterns of 0.0 and 1.0 instead of converted.
    """
    q = dropout_rate(p)
    if q <= 0 or q >= 1:  # the threshold would leave int16: every entry kept, or every entry dropped
        return torch.full(shape, 1.0 if q <= 0 else 0.0, dtype=dtype)
    return _mask_from_seed(_draw_seed(), tuple(shape), q, dtype)


def keep_masks(count: int, shape: tuple[int, ...] | torch.Size, p: float,
               dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """``count`` masks of :func:`keep_mask`, the same ones ``count`` calls in a row would give (their seeds are
    drawn from torch's generator in that order), made on up to ``torch.get_num_threads()`` threads: numpy
    fills the words and clamps them without holding the GIL, and nothing else runs while a side network
    waits for its masks (about 0.5 ms per [2, 600, 768] mask on one core of the project CPU)."""
    q = dropout_rate(p)
    if q <= 0 or q >= 1 or count <= 1:
        return [keep_mask(shape, q, dtype) for _ in range(count)]
    seeds = [_draw_seed() for _ in range(count)]
    # the outputs are allocated here, on the calling thread, where torch's profiler (the benchmarks' peak
    # memory) follows allocations; the threads only write them, through numpy: a torch operation on another
    # thread would start an OpenMP team there, and libgomp, managing more threads than cores, would then
    # stop spin-waiting between the parallel regions of every thread, the training step's included
    outs = [torch.empty(math.prod(shape), dtype=torch.int16 if dtype in _ONE_BITS else dtype) for _ in seeds]
    pool = _pool(min(count, torch.get_num_threads()))
    return list((map if pool is None else pool.map)(
        lambda seed, out: _mask_from_seed(seed, tuple(shape), q, dtype, out), seeds, outs))


def _draw_seed() -> int:
    """One 64-bit seed from torch's default CPU generator (ties the masks to ``torch.manual_seed``)."""
    return int(torch.empty((), dtype=torch.int64).random_())


def _mask_from_seed(seed: int, shape: tuple[int, ...], q: float, dtype: torch.dtype,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """The mask of :func:`keep_mask` for ``seed`` and a rate ``q`` strictly between 0 and 1, written into
    ``out`` (as many entries as ``shape``; int16 for the half-precision dtypes, ``dtype`` otherwise; allocated
    here when None). numpy does the work, without the GIL and without torch operations, so that threads can
    make masks side by side."""
    n = math.prod(shape)
    uniform = np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.int16)[:n]  # uniform in [-2^15, 2^15)
    t = round(q * 2 ** KEEP_MASK_BITS) - 2 ** (KEEP_MASK_BITS - 1)  # keep iff uniform >= t
    if dtype in _ONE_BITS:  # 0x0000 / the bits of 1.0: a multiply instead of a conversion
        out = torch.empty(n, dtype=torch.int16) if out is None else out  # torch's memory: the allocator sees it
        bits = np.clip(uniform, t - 1, t, out=out.numpy())
        bits -= t - 1  # 0 / 1 as int16
        bits *= _ONE_BITS[dtype]
        return out.view(dtype).view(shape)
    out = torch.empty(n, dtype=dtype) if out is None else out
    np.clip(uniform, t - 1, t, out=uniform)
    np.subtract(uniform, t - 1, out=out.numpy(), casting="unsafe")  # 0 / 1, written as ``dtype``
    return out.view(shape)


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None
"""(process id, workers, pool) of :func:`keep_masks`; remade after a fork or for another thread count."""


def _pool(workers: int) -> ThreadPoolExecutor | None:
    global _POOL
    if workers <= 1:
        return None
    if _POOL is None or _POOL[:2] != (os.getpid(), workers):
        _POOL = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="crossan-mask"))
    return _POOL[2]


_ONE_BITS = {torch.bfloat16: 0x3F80, torch.float16: 0x3C00}
"""16-bit patterns of 1.0 in the half-precision dtypes."""


def dropout_rate(p: float) -> float:
    """The drop probability :func:`keep_mask` realises for ``p`` (``p`` rounded to a multiple of 2^-16):
    0 below 2^-17 and 1 from 1 − 2^-17 on, where :func:`dropout` keeps or zeroes everything."""
    return round(p * 2 ** KEEP_MASK_BITS) / 2 ** KEEP_MASK_BITS


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``torch.nn.functional.dropout(x, p, training)`` with the mask of :func:`keep_mask` on a CPU."""
    if not training or p <= 0:
        return x
    if p >= 1 or x.device.type != "cpu":
        return F.dropout(x, p, True)
    q = dropout_rate(p)
    if q <= 0:
        return x
    if q >= 1:
        return F.dropout(x, 1.0, True)
    return (x * keep_mask(x.shape, q, x.dtype)).mul_(1.0 / (1.0 - q))  # the scale in fp32, not rounded to x's dtype


class Dropout(nn.Dropout):
    """``nn.Dropout`` drawing its CPU mask with :func:`keep_mask` (see :func:`dropout`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

"""Compute precision of forward passes: the ``precision`` config key (``auto`` | ``bf16`` | ``fp32``).

``bf16`` runs the matrix products of a forward pass (and hence of its backward) in bfloat16 under
``torch.autocast``; parameters, their gradients and the optimiser state stay float32 (autocast casts a copy
of each weight per use), and so do the losses and the ranking scores (see
:mod:`crossan.recommender`). The layer-state cache is stored in float16 whatever the precision.

``auto`` chooses bf16 where the hardware has bf16 matrix units — a CPU whose ``/proc/cpuinfo`` flags list
``avx512_bf16`` or ``amx_bf16``, a CUDA GPU of compute capability 8.0 or later (:func:`cuda_has_bf16`) — and
fp32 elsewhere (without them bf16 is emulated: slower than fp32, and rounded).

Where it applies: the frozen encoders' forward, while the cache is built (:mod:`crossan.cache.build`) and
whenever states are encoded live (:mod:`crossan.towers.content`), and every method's training step: item
tower and user encoder (:class:`crossan.recommender.Recommender`). Evaluation and serving embed and score
in float32 (about 1% of an epoch's work; no bf16 ties, equal to what an exported model computes), also
inside an autocast region a caller entered.

Autocast keeps a cast copy of a weight for the rest of its region only when the weight requires grad; a frozen
encoder's weights were cast again at every batch of a cache build. :func:`frozen_weights_in` holds them in
bf16 for the build instead: the same rounding, so the same states bit for bit, without those copies (the
float32 weights stay in memory beside them: 1.5 times the weights' memory for the build).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

from crossan.utils import cpu_flags

__all__ = ["BF16_CPU_FLAGS", "PRECISIONS", "autocast", "compute_dtype", "cpu_flags", "cpu_has_bf16", "cuda_has_bf16",
           "dtype_name", "frozen_weights_in", "full_precision"]

PRECISIONS = ("auto", "bf16", "fp32")
"""The values of the ``precision`` config key."""

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""``/proc/cpuinfo`` flags of x86 CPUs with bf16 matrix instructions (AVX-512 BF16, AMX)."""


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this machine's CPU has bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    return bool(cpu_flags() & BF16_CPU_FLAGS)


def compute_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain float32)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {list(PRECISIONS)}")
    if device.type not in ("cpu", "cuda"):
        if precision == "bf16":
            raise ValueError(f"precision: bf16 runs on cpu and cuda devices, not {device.type} "
                             "(set precision=fp32 or auto)")
        return None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else None
    return torch.bfloat16 if cuda_has_bf16(device) else None


def cuda_has_bf16(device: torch.device | str) -> bool:
    """Whether the CUDA GPU ``device`` names has bf16 matrix units: compute capability 8.0 or later (Ampere
    on). ``torch.cuda.is_bf16_supported()`` also says yes on older GPUs, where bf16 is only emulated."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability(torch.device(device))[0] >= 8


def dtype_name(dtype: torch.dtype | None) -> str:
    """How results name a :func:`compute_dtype`: ``bfloat16``, or ``float32`` for None (plain float32)."""
    return str(dtype or torch.float32).removeprefix("torch.")


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context running forwards at ``precision`` on ``device``'s kind (a no-op context for fp32)."""
    dtype = compute_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context that switches autocast off on ``device``'s kind (losses and scores in float32)."""
    kind = torch.device(device).type
    return torch.autocast(kind, enabled=False) if kind in ("cpu", "cuda") else contextlib.nullcontext()


CAST_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Layers whose weight and bias autocast casts to its lower precision on every call (``linear``, ``conv*``)."""


@contextlib.contextmanager
def frozen_weights_in(model: nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """While inside, the frozen float32 weights and biases of ``model``'s :data:`CAST_LAYERS` are held in
    ``dtype``; they are float32 again (the same tensors) on leaving. For a model run only under an autocast of
    ``dtype``: autocast rounds each such weight to ``dtype`` at every call anyway (it keeps the rounded copy
    only for weights that require grad), so the outputs are the same bit for bit and the per-call copies are
    saved. None: nothing changes (plain float32). Left alone: parameters that require grad, that another kind of
    layer also holds (tied weights), and the layers of a subclass (which may use their weights otherwise) or
    with forward pre-hooks (``weight_norm`` recomputes the weight in one)."""
    if dtype is None:
        yield
        return
    plain = [m for m in model.modules() if type(m) in CAST_LAYERS and not m._forward_pre_hooks]
    plain_ids = {id(m) for m in plain}
    elsewhere = {id(p) for m in model.modules() if id(m) not in plain_ids for p in m.parameters(recurse=False)}
    held: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}
    for m in plain:
        for p in m.parameters(recurse=False):
            if (p.dtype == torch.float32 and not p.requires_grad and id(p) not in elsewhere
                    and id(p) not in held):
                held[id(p)] = (p, p.data)
    try:
        for p, data in held.values():
            p.data = data.to(dtype)
        yield
    finally:
        for p, data in held.values():
            p.data = data

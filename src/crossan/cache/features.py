"""Feature sources: where side networks and frozen-feature heads get per-layer item states from.

A feature source answers ``gather(items)`` with, per modality, the pooled tapped states of those items
``[U, K, D_m]`` (float32, on ``items.device``) and a presence mask ``[U]`` (False: the item lacks that
modality; its states are zeros and must not be used). Two implementations matter:

* :class:`TensorFeatures` — states held in memory or memory-mapped from the on-disk cache (the default);
* ``LiveFeatures`` (``crossan.cache.live``) — runs the frozen encoders on raw media under no-grad.

Both give the same numbers (up to the cache's fp16 storage), so every tower is agnostic to which it gets.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class FeatureSource(Protocol):
    modalities: list[str]
    dims: dict[str, int]
    """D_m per modality."""
    num_taps: int
    """K, the same for every modality."""

    def gather(self, items: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]: ...


class TensorFeatures:
    """States from arrays ``[N+1, K, D_m]`` (numpy, possibly memory-mapped, or torch) and masks ``[N+1]``."""

    def __init__(self, states: dict[str, np.ndarray | torch.Tensor], present: dict[str, np.ndarray | torch.Tensor]):
        self.modalities = list(states)
        if not self.modalities:
            raise ValueError("TensorFeatures needs at least one modality")
        ks = {m: s.shape[1] for m, s in states.items()}
        if len(set(ks.values())) != 1:
            raise ValueError(f"all modalities must have the same number of taps K, got {ks}")
        self.num_taps = next(iter(ks.values()))
        self.dims = {m: int(s.shape[2]) for m, s in states.items()}
        self._states = states
        self._present = {m: p.bool() if isinstance(p, torch.Tensor) else torch.as_tensor(np.asarray(p), dtype=torch.bool)
                         for m, p in present.items()}

    def to_memory(self, device: torch.device | str = "cpu") -> TensorFeatures:
        """Load every array into (device) memory as fp16 tensors — fastest when the cache fits."""
        for m in self.modalities:
            s = self._states[m]
            t = torch.from_numpy(np.ascontiguousarray(s)) if isinstance(s, np.ndarray) else s
            self._states[m] = t.to(device=device, dtype=torch.float16)
            self._present[m] = self._present[m].to(device)
        return self

    def gather(self, items: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for m in self.modalities:
            s = self._states[m]
            if isinstance(s, np.ndarray):  # memory-mapped: read only the rows asked for
                idx = items.detach().cpu().numpy()
                rows = torch.from_numpy(np.asarray(s[idx]))
            else:
                rows = s[items.to(s.device)]
            present = self._present[m].to(items.device)[items]
            out[m] = (rows.to(items.device, torch.float32), present)
        return out

"""Live features: the frozen encoders run on raw media whenever states are asked for (``cached=false``).

:class:`LiveFeatures` implements the :class:`~crossan.cache.features.FeatureSource` protocol with the same
preprocessing, taps and pooling as the cache builder, under ``torch.no_grad()``; its numbers equal the
cache's up to the cache's fp16 storage. It encodes each distinct row once per call and keeps nothing
between calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from crossan.encoders.base import ModalityEncoder


class LiveFeatures:
    """States of item rows computed on demand by ``encoders`` (one :class:`ModalityEncoder` per modality)."""

    def __init__(
        self,
        encoders: dict[str, ModalityEncoder],
        catalogue: Any,
        item_ids: list[str],
        batch_size: int = 32,
        on_corrupt: str = "error",
    ) -> None:
        if not encoders:
            raise ValueError("LiveFeatures needs at least one encoder")
        ks = {m: e.num_taps for m, e in encoders.items()}
        if len(set(ks.values())) != 1:
            raise ValueError(f"all modalities must have the same number of taps K, got {ks}")
        self.encoders = encoders
        self.catalogue = catalogue
        self.item_ids = list(item_ids)
        self.batch_size = batch_size
        self.on_corrupt = on_corrupt
        self.modalities = list(encoders)
        self.dims = {m: e.hidden_size for m, e in encoders.items()}
        self.num_taps = next(iter(ks.values()))
        for e in encoders.values():
            e.eval()

    def _encode_rows(self, encoder: ModalityEncoder, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        states = torch.zeros(len(rows), encoder.num_taps, encoder.hidden_size)
        present = torch.zeros(len(rows), dtype=torch.bool)
        real = [i for i, r in enumerate(rows) if r != 0]  # row 0 is padding: zeros, absent
        for start in range(0, len(real), self.batch_size):
            idx = real[start : start + self.batch_size]
            records = [self.catalogue[self.item_ids[rows[i]]] for i in idx]
            out = encoder.encode(records, self.catalogue, self.on_corrupt)
            states[idx] = out.states
            present[idx] = out.present
        return states, present

    @torch.no_grad()
    def gather(self, items: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per modality: float32 states ``[*items.shape, K, D]`` and presence ``[*items.shape]``."""
        unique, inverse = torch.unique(items.detach().cpu().reshape(-1), return_inverse=True)
        rows = [int(r) for r in unique.tolist()]
        if rows and (rows[0] < 0 or rows[-1] >= len(self.item_ids)):
            raise IndexError(f"item rows must lie in 0..{len(self.item_ids) - 1}, got {rows[0]}..{rows[-1]}")
        out = {}
        for m, encoder in self.encoders.items():
            states, present = self._encode_rows(encoder, rows)
            shape = tuple(items.shape)
            out[m] = (
                states[inverse].reshape(*shape, encoder.num_taps, encoder.hidden_size).to(items.device),
                present[inverse].reshape(shape).to(items.device),
            )
        return out

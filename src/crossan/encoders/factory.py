"""Building a run's frozen encoders from its configuration (the one place that does it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crossan.config import Config
    from crossan.encoders.base import ModalityEncoder


def build_encoders(cfg: Config, modalities: list[str], device: Any = "cpu") -> dict[str, ModalityEncoder]:
    """One loaded encoder per modality of ``modalities``, in eval mode on ``device``, as the run's
    ``encoders`` section names it (preset filled in, explicit keys overriding it).

    Used by live features (``cached=false``), the end-to-end towers and cold-start embedding; the cache
    builder loads one modality at a time instead (``build_encoder``), to hold one model in memory.
    """
    from crossan.encoders import build_encoder, resolve_specs

    specs = resolve_specs(cfg, modalities)
    return {m: build_encoder(m, specs[m], device=str(device)) for m in modalities}

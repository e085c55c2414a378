"""Compatibility name of :mod:`crossan.towers.options` (the methods' option sections)."""

from crossan.towers.options import (  # noqa: F401
    AdapterConfig,
    CrossanConfig,
    EndToEndConfig,
    FFTConfig,
    FrozenConfig,
    IDConfig,
    IISANConfig,
    LoRAConfig,
    SANBConfig,
)

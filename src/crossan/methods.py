"""The table of methods: one row per item tower, and every list of methods derived from it.

A row says what the rest of crossan needs to know about a method without importing it (this module imports
no torch): its name (``method=``), its options section (a dataclass, ``cfg.<name>``), the module whose
import registers its tower builder (``@register(name)`` in :mod:`crossan.towers.base`), whether it reads
per-layer states of the frozen encoders (the layer-state cache, or the encoders live with
``cached=false``), and whether its backbones run forward and backward at every training step.

:mod:`crossan.config` builds one options section per row, ``Config.validate`` accepts exactly these names,
the model builder opens the feature source for ``reads_cache`` rows, and the suites build the cache for
them. A new method is one module (its tower and builder) plus one row — :func:`register_method` adds a
row at run time, as plugins and tests do (see docs/method.md, "Adding a method").
"""

from __future__ import annotations

from dataclasses import dataclass

from crossan.errors import ConfigError
from crossan.towers.options import (
    AdapterConfig,
    CrossanConfig,
    FFTConfig,
    FrozenConfig,
    IDConfig,
    IISANConfig,
    LoRAConfig,
)


@dataclass(frozen=True)
class Method:
    """One row of the table of methods."""

    name: str
    """``method=NAME``; also the name of its options section (``NAME.key=value``)."""
    options: type | None
    """The dataclass of the method's own options, or None for a method without any."""
    module: str
    """Module whose import registers the tower builder (``@register(name)``)."""
    reads_cache: bool
    """The tower reads per-layer states of the frozen encoders: the layer-state cache (``cached=true``) or
    the encoders run live (``cached=false``)."""
    runs_backbone: bool
    """The backbones run forward and backward at every training step (end-to-end baselines)."""
    summary: str = ""

    @property
    def has_content(self) -> bool:
        """Whether the tower embeds items from their content (so it can embed new, cold-start items)."""
        return self.reads_cache or self.runs_backbone


METHODS: dict[str, Method] = {}
"""name → row, in the order of :data:`BUILTIN` then of registration."""

_sections_fixed = False


def register_method(method: Method) -> Method:
    """Add a row. A method with options must be registered before :mod:`crossan.config` builds ``Config``
    (its section is a field of ``Config``); a method without options may be registered at any time."""
    if method.name in METHODS:
        raise ConfigError(f"method {method.name!r} is registered twice")
    if not method.name.isidentifier():
        raise ConfigError(f"method name {method.name!r} must be a Python identifier (it names a config section)")
    if method.options is not None and _sections_fixed:
        raise ConfigError(f"method {method.name!r} has options but crossan.config is already built; add its row "
                          "to crossan.methods.BUILTIN (or register it before importing crossan.config)")
    METHODS[method.name] = method
    return method


BUILTIN: tuple[Method, ...] = (
    Method("id", IDConfig, "crossan.towers.id", False, False, "SASRec with learned item-ID embeddings"),
    Method("frozen", FrozenConfig, "crossan.towers.frozen", True, False, "a head over frozen last-layer states"),
    Method("iisan", IISANConfig, "crossan.towers.iisan", True, False, "IISAN side networks, M modalities"),
    Method("crossan", CrossanConfig, "crossan.towers.crossan", True, False, "CROSSAN side networks + MOMEF"),
    Method("fft", FFTConfig, "crossan.towers.fft", False, True, "full fine-tuning of the backbones"),
    Method("adapter", AdapterConfig, "crossan.towers.adapter", False, True, "Houlsby adapters in the backbones"),
    Method("lora", LoRAConfig, "crossan.towers.lora", False, True, "LoRA (peft) in the backbones"),
)
for _row in BUILTIN:
    register_method(_row)


def option_sections() -> list[Method]:
    """Rows with an options section, in table order (the method sections of ``Config``). After this call a
    method with options can no longer be registered."""
    global _sections_fixed
    _sections_fixed = True
    return [m for m in METHODS.values() if m.options is not None]


def get_method(name: str) -> Method:
    """The row of ``name``; :class:`ConfigError` listing the known names otherwise."""
    if name not in METHODS:
        raise ConfigError(f"method: {name!r} is not one of {method_names()}")
    return METHODS[name]


def method_names() -> list[str]:
    """Every method name, in table order."""
    return list(METHODS)


def cache_methods() -> list[str]:
    """Methods whose tower reads the layer-state cache (or the live encoders)."""
    return [m.name for m in METHODS.values() if m.reads_cache]


def backbone_methods() -> list[str]:
    """Methods whose backbones run forward and backward at every step."""
    return [m.name for m in METHODS.values() if m.runs_backbone]

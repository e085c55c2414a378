"""Item towers (methods). Each method's tower lives in its own module, named by its row in
:mod:`crossan.methods`; :func:`build_tower` imports only the module of the method asked for.

Importing this package imports no torch: :mod:`crossan.towers.options` (the methods' option sections)
must stay importable by :mod:`crossan.config`. The tower interface is in :mod:`crossan.towers.base`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crossan.towers.base import ItemTower, TowerContext, build_tower, register

__all__ = ["ItemTower", "TowerContext", "build_tower", "register"]


def __getattr__(name: str) -> Any:
    """``from crossan.towers import ItemTower`` and friends, imported from :mod:`.base` on first use."""
    if name in __all__:
        from crossan.towers import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Item towers (methods). Importing this package registers every built-in method."""

from crossan.towers import id as _id  # noqa: F401
from crossan.towers.base import ItemTower, TowerContext, build_tower, register, registered

__all__ = ["ItemTower", "TowerContext", "build_tower", "register", "registered"]

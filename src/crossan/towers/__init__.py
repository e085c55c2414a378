"""Item towers (methods). Importing this package registers every built-in method."""

from crossan.towers import adapter as _adapter  # noqa: F401
from crossan.towers import crossan as _crossan  # noqa: F401
from crossan.towers import fft as _fft  # noqa: F401
from crossan.towers import frozen as _frozen  # noqa: F401
from crossan.towers import id as _id  # noqa: F401
from crossan.towers import iisan as _iisan  # noqa: F401
from crossan.towers import lora as _lora  # noqa: F401
from crossan.towers.base import ItemTower, TowerContext, build_tower, register, registered

__all__ = ["ItemTower", "TowerContext", "build_tower", "register", "registered"]

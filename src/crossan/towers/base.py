"""The item-tower interface every method implements, and the registry that names them.

An item tower turns item rows (1..N; 0 is padding) into d-dimensional embeddings. The recommender calls it
once per training step on the *unique* items of the batch, and once per evaluation on all items.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from crossan.precision import full_precision

if TYPE_CHECKING:
    from crossan.cache.features import FeatureSource
    from crossan.config import Config, TrainConfig
    from crossan.data.catalogue import Catalogue


@dataclass
class TowerContext:
    """What a tower may need to build itself.

    Content-based towers read ``features`` (frozen-encoder states) or ``catalogue`` (raw content); towers
    that load their own backbones put them on ``device``.
    """

    config: Config
    num_items: int
    """N; valid item rows are 1..N."""
    item_ids: list[str]
    """Original item id per row; ``item_ids[0]`` is the padding row ("")."""
    catalogue: Catalogue | None = None
    """Records for the rows 1..N, in row order."""
    features: FeatureSource | None = None
    """Per-layer states of the frozen encoders (the cache, or the encoders live): set by the model builder
    for methods whose row in :mod:`crossan.methods` has ``reads_cache``."""
    device: torch.device | str = "cpu"
    """Where the run's model lives (end-to-end towers load their backbones there)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Older spelling of the two fields above (``{"features": ..., "device": ...}``): keys given here are
    moved into the fields, and at construction the dict is set to mirror them for towers that still read
    it (set the fields when constructing, not afterwards)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.extras) - {"features", "device"})
        if unknown:
            raise ValueError(f"TowerContext.extras: unknown keys {unknown}; use the typed fields")
        if self.features is None:
            self.features = self.extras.get("features")
        self.device = self.extras.get("device", self.device)
        self.extras = {"device": self.device} | ({"features": self.features} if self.features is not None else {})


class ItemTower(nn.Module, ABC):
    """Maps item rows to embeddings of width :attr:`dim`."""

    dim: int

    @abstractmethod
    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """``items``: LongTensor [U] of rows in 1..N → FloatTensor [U, dim]."""

    @abstractmethod
    def param_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """Optimiser parameter groups (``{"params": [...], "lr": ..., "name": ...}``) for the trainable parts
        (a group without ``lr`` trains at ``train.lr``).

        Each module declares its own groups; the trainer never guesses from parameter names.
        """

    def aux_loss(self) -> torch.Tensor | None:
        """An extra loss term from the last forward (e.g. MOMEF load balancing), or None."""
        return None

    def reset_stats(self) -> None:
        """Clear statistics accumulated over forwards (e.g. router weights)."""

    def stats(self) -> dict[str, Any]:
        """Method-specific results worth reporting (e.g. mean MOMEF router weight per modality)."""
        return {}

    def stat_buffers(self) -> list[torch.Tensor]:
        """The running sums behind :meth:`stats`: summed over the ranks after a collective :meth:`embed_all`
        (training under torchrun), so that the statistics of the item table cover every item, not one rank's
        chunks."""
        return []

    def module_report(self) -> dict[str, dict[str, int]]:
        """Trainable / total parameters per named top-level child (for the start-of-run report)."""
        out: dict[str, dict[str, int]] = {}
        for name, child in self.named_children():
            ps = list(child.parameters())
            out[name] = {"trainable": sum(p.numel() for p in ps if p.requires_grad),
                         "total": sum(p.numel() for p in ps)}
        own = [p for n, p in self.named_parameters(recurse=False)]
        if own:
            out["(own)"] = {"trainable": sum(p.numel() for p in own if p.requires_grad),
                            "total": sum(p.numel() for p in own)}
        return out

    @torch.no_grad()
    def embed_all(self, batch_size: int = 1024, progress: bool = False, collective: bool = False) -> torch.Tensor:
        """The table of all item embeddings [N+1, dim]; row 0 (padding) is zero.

        Items are embedded in chunks of ``batch_size``. ``collective`` (training's evaluation, called on every
        rank under torchrun): chunk c is computed by rank c mod world size and the table is gathered, so every
        rank holds the same table a single process does (and the same :meth:`stats`: the
        :meth:`stat_buffers` are summed over the ranks). Without it (the default: evaluation of a saved run,
        serving, export) this process embeds every chunk and calls no collective, even where a process group
        is joined: a call on one rank only must not wait for the others (:func:`crossan.distributed.split`).

        Float32 whatever autocast the caller runs in (:func:`~crossan.precision.full_precision`): evaluation and
        serving embed in float32 (:mod:`crossan.precision`); frozen encoders read live still run at the tower's
        ``precision``, which the content towers' ``forward`` enters itself.
        """
        from crossan import distributed as dist

        n = self.num_items
        device = next(self.parameters()).device
        chunks = torch.arange(1, n + 1, device=device).split(batch_size)
        rank, world = dist.split(collective)
        mine = list(range(rank, len(chunks), world))
        it = mine
        if progress and dist.is_main():
            from tqdm.auto import tqdm

            it = tqdm(mine, desc="embed items", leave=False)
        with full_precision(device):  # a caller's autocast would embed in bf16 (serving built inside one)
            local = [self._checked(chunks[c]).float() for c in it]
        table = torch.zeros(n + 1, self.dim, device=device)
        if world == 1:
            if local:
                table[1:] = torch.cat(local)
            return table
        dist.all_reduce_sum_(self.stat_buffers())
        mine_flat = torch.cat(local) if local else table.new_zeros(0, self.dim)
        for r, rows in enumerate(dist.all_gather_rows(mine_flat)):
            offset = 0
            for c in range(r, len(chunks), world):
                k = len(chunks[c])
                table[chunks[c]] = rows[offset: offset + k].to(device)
                offset += k
        return table

    num_items: int

    def _checked(self, items: torch.Tensor) -> torch.Tensor:
        """``self(items)``, checked by :func:`check_embeddings`."""
        emb = self(items)
        check_embeddings(self, emb, len(items))
        return emb


TowerBuilder = Callable[["TowerContext"], ItemTower]
_REGISTRY: dict[str, TowerBuilder] = {}


def register(name: str) -> Callable[[TowerBuilder], TowerBuilder]:
    """Register the tower builder of ``method=name`` (the method's row in :mod:`crossan.methods` names the
    module whose import does this).

    A built-in method's name is refused outside the module its row names: a plugin's ``@register("crossan")``
    run before crossan's own tower module was imported (the registry fills on first use) would otherwise
    replace the built-in tower. A plugin's own method may register its builder from any module (a helper
    module that the row's module imports, a builder shared between methods)."""

    def deco(fn: TowerBuilder) -> TowerBuilder:
        if name in _REGISTRY:
            raise ValueError(f"item tower {name!r} registered twice")
        from crossan.methods import METHODS, _is_builtin

        row = METHODS.get(name)
        if row is not None and _is_builtin(row.module) and row.module != fn.__module__:  # @register("crossan")
            raise ValueError(f"item tower {name!r}: method {name!r} is registered by module {row.module}, not by "
                             f"{fn.__module__}; give the new method a name of its own")
        _REGISTRY[name] = fn
        return fn

    return deco


def builder(name: str) -> TowerBuilder:
    """The builder of ``method=name``: imports the module its row names, which registers it."""
    import importlib

    from crossan.methods import get_method

    row = get_method(name)
    if name not in _REGISTRY:
        importlib.import_module(row.module)
    if name not in _REGISTRY:
        raise ValueError(f"method={name!r}: module {row.module} registers no tower builder for it "
                         f"(decorate the builder with @register({name!r}))")
    return _REGISTRY[name]


def build_tower(ctx: TowerContext) -> ItemTower:
    """The item tower of ``ctx.config.method``; ValueError naming the method when the builder returns no
    :class:`ItemTower` or one without the ``dim`` (``user.dim``) and ``num_items`` (N) every tower sets."""
    name = ctx.config.method
    tower = builder(name)(ctx)
    if not isinstance(tower, ItemTower):
        raise ValueError(f"method={name!r}: its builder returned {type(tower).__name__}, not an ItemTower "
                         "(crossan.towers.base)")
    for attr, want in (("dim", ctx.config.user.dim), ("num_items", ctx.num_items)):
        got = getattr(tower, attr, None)
        if got != want:
            raise ValueError(f"method={name!r}: its tower's {attr} is {got!r}, expected {want} (an item tower sets "
                             "dim = ctx.config.user.dim and num_items = ctx.num_items)")
    return tower


def check_embeddings(tower: ItemTower, emb: Any, rows: int, method: str | None = None) -> None:
    """That ``tower``'s ``forward`` gave a floating tensor [rows, tower.dim] of at most 32 bits (float32, or the
    autocast dtype); ValueError naming the method (or the tower's class) otherwise, where the user encoder would
    fail later with a message that names neither. Shape and dtype only: no device sync, and the message is only
    built on failure (the training step calls this at every step)."""
    dim = tower.dim
    if (isinstance(emb, torch.Tensor) and emb.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and emb.dim() == 2 and emb.shape[0] == rows and emb.shape[1] == dim):
        return
    who = tower_label(tower, method)
    if not isinstance(emb, torch.Tensor):
        raise ValueError(f"{who}: forward returned {type(emb).__name__}, expected a tensor [{rows}, {dim}]")
    raise ValueError(f"{who}: forward returned {emb.dtype} {list(emb.shape)} for {rows} items, expected "
                     f"float32 [{rows}, {dim}] (items [U] → embeddings [U, user.dim])")


def tower_label(tower: nn.Module, method: str | None = None) -> str:
    """Who an error about ``tower`` is about: ``method='NAME'``, followed for a tower that is not crossan's own (a
    plugin's) by its class, ``(item tower MODULE.CLASS)``, the code to look at; ``item tower MODULE.CLASS``
    where the method is not known."""
    from crossan.methods import _is_builtin

    kind = type(tower)
    cls = f"{kind.__module__}.{kind.__qualname__}"
    if method is None:
        return f"item tower {cls}"
    return f"method={method!r}" if _is_builtin(kind.__module__) else f"method={method!r} (item tower {cls})"

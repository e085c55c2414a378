"""Assembling a run's model: the item tower of ``cfg.method`` (with its feature source when the method's row
in :mod:`crossan.methods` reads the cache), the SASRec user encoder, and the optimiser's parameter groups."""

from __future__ import annotations

import numbers
from typing import Any

import torch

from crossan.config import Config
from crossan.data import SequentialData
from crossan.methods import get_method
from crossan.recommender import Recommender
from crossan.towers.base import TowerContext, build_tower
from crossan.utils import count_params


def build_model(cfg: Config, data: SequentialData, device: torch.device) -> Recommender:
    """The recommender for ``cfg.method`` over ``data``, on ``device``.

    A method that reads the cache gets the cache (or, with ``cached=false``, the live encoders) as its
    feature source; a missing or mismatched cache fails here, before anything is written.
    """
    features = None
    if get_method(cfg.method).has_content:
        data.check_content(cfg.modalities)
    if get_method(cfg.method).reads_cache:
        from crossan.cache import open_features

        features = open_features(cfg, data, cfg.modalities, device)
    tower = build_tower(TowerContext(cfg, data.num_items, data.item_ids, data.catalogue, features, device))
    model = Recommender(tower, cfg, torch.as_tensor(data.item_counts))
    return model.to(device)


def param_groups(model: Recommender, cfg: Config) -> list[dict[str, Any]]:
    """The tower's own groups plus the user encoder's; each trainable parameter in exactly one group
    (ValueError naming the method otherwise: a plugin's ``param_groups`` is the usual culprit). A group that
    sets no ``lr`` trains at ``train.lr`` (not Adam's own default)."""
    declared = model.tower.param_groups(cfg.train)
    where = f"method={cfg.method!r}: its tower's param_groups"
    if not isinstance(declared, (list, tuple)) or not all(isinstance(g, dict) and "params" in g for g in declared):
        raise ValueError(f"{where} must return a list of dicts, each with 'params' (and 'name', 'lr'); got "
                         f"{type(declared).__name__}")
    groups = [dict(g) for g in declared]
    groups.append({"name": "user_encoder", "params": list(model.user.parameters()), "lr": cfg.train.lr})
    seen: set[int] = set()
    for k, g in enumerate(groups):
        g.setdefault("name", f"group {k}")
        lr = g.setdefault("lr", cfg.train.lr)
        if isinstance(lr, torch.Tensor) and lr.numel() == 1 and not lr.dtype.is_complex and lr.dtype != torch.bool:
            lr = lr.item()
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr >= 0:
            raise ValueError(f"{where}: group {g['name']!r} has lr={lr!r}; expected a number ≥ 0")
        g["lr"] = float(lr)  # a NumPy scalar or a one-element tensor as Adam's float (and JSON's)
        g["params"] = [p for p in g["params"] if p.requires_grad]
        for p in g["params"]:
            if id(p) in seen:
                raise ValueError(f"method={cfg.method!r}: parameter group {g['name']!r} repeats a parameter of "
                                 "another group (its tower's param_groups)")
            seen.add(id(p))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"method={cfg.method!r}: trainable parameters not in any optimiser group: {missing[:5]} "
                         "(its tower's param_groups must list them, or set requires_grad=False)")
    return [g for g in groups if g["params"]]


def module_report(model: Recommender) -> dict[str, dict[str, int]]:
    """Trainable / total parameters per tower part and for the user encoder (the start-of-run report)."""
    rep = {f"tower.{k}": v for k, v in model.tower.module_report().items()}
    t, n = count_params(model.user)
    rep["user_encoder"] = {"trainable": t, "total": n}
    return rep

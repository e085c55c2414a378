"""Shared fixtures: small hand-made datasets written to real files."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/NAME.py`` as a module (benchmarks are scripts, not a package)."""
    path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_iisan(root: Path, users: dict[str, list[str]], items: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "items.tsv").write_text("".join(f"{i}\t{t}\n" for i, t in items.items()))
    (root / "users.tsv").write_text("".join(f"{u}\t{' '.join(s)}\n" for u, s in users.items()))
    return root


def random_dataset(root: Path, n_users: int = 120, n_items: int = 60, seed: int = 0) -> Path:
    """Users whose sequences walk through item ids with structure (item k tends to follow k-1)."""
    rng = np.random.default_rng(seed)
    items = {f"i{k}": f"item number {k} of group {k % 5}" for k in range(n_items)}
    users = {}
    for u in range(n_users):
        length = int(rng.integers(5, 15))
        start = int(rng.integers(0, n_items))
        seq = [(start + j + int(rng.integers(0, 2))) % n_items for j in range(length)]
        users[f"u{u}"] = [f"i{k}" for k in seq]
    return write_iisan(root, users, items)


@pytest.fixture
def small_data(tmp_path: Path) -> Path:
    return random_dataset(tmp_path / "small")


@pytest.fixture(autouse=True, scope="session")
def _cache_dir_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Caches built with the default location go to a temporary folder, not the user's ~/.cache."""
    import os

    old = os.environ.get("CROSSAN_CACHE_DIR")
    os.environ["CROSSAN_CACHE_DIR"] = str(tmp_path_factory.mktemp("crossan-cache"))
    yield
    if old is None:
        os.environ.pop("CROSSAN_CACHE_DIR", None)
    else:
        os.environ["CROSSAN_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on shared CPUs: one intra-op thread is far faster than several contending ones (a module
    uses it with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

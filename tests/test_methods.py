"""The table of methods: every list is derived from it, and a new method is one module plus one row (the
example of docs/method.md §13, run from the document itself, trains from the cache)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from crossan.config import Config, ConfigError, load_config, to_dict
from crossan.methods import BUILTIN, METHODS, Method, cache_methods, get_method, method_names, register_method

DOC = Path(__file__).resolve().parents[1] / "docs" / "method.md"


def test_config_sections_and_names_come_from_the_table() -> None:
    sections = [f.name for f in dataclasses.fields(Config) if f.name in METHODS]
    assert sections == [m.name for m in BUILTIN if m.options is not None]
    for m in BUILTIN:
        assert isinstance(getattr(Config(), m.name), m.options)
    assert method_names()[:7] == ["id", "frozen", "iisan", "crossan", "fft", "adapter", "lora"]
    assert cache_methods()[:3] == ["frozen", "iisan", "crossan"]
    assert [m.name for m in BUILTIN if m.runs_backbone] == ["fft", "adapter", "lora"]
    assert not get_method("id").has_content and get_method("lora").has_content
    with pytest.raises(ConfigError, match=r"method: 'nope' is not one of \['id', 'frozen'"):
        load_config([], ["method=nope"])
    # the saved configuration keeps its key order: run-level keys, then one section per method
    keys = list(to_dict(Config()))
    assert keys[-7:] == ["id", "frozen", "iisan", "crossan", "fft", "adapter", "lora"]


def test_every_row_names_a_module_that_registers_its_builder() -> None:
    from crossan.towers.base import builder

    for m in BUILTIN:
        assert callable(builder(m.name)), m.name


def test_a_row_with_options_cannot_come_after_config_is_built() -> None:
    @dataclasses.dataclass
    class Opts:
        width: int = 3

    with pytest.raises(ConfigError, match="already built"):
        register_method(Method("late_with_options", Opts, __name__, False, False))
    with pytest.raises(ConfigError, match="registered twice"):
        register_method(Method("crossan", None, __name__, True, False))
    assert "late_with_options" not in METHODS


def _doc_example() -> str:
    section = DOC.read_text().split("## 13. Adding a method", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def example_module(tmp_path_factory):
    """The docs' example written to its own module and imported: one module plus one row."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "lastmean_example.py").write_text(_doc_example())
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("lastmean_example")
    finally:
        sys.path.remove(str(folder))


def test_the_doc_example_is_short() -> None:
    code = [line for line in _doc_example().splitlines() if line.strip() and not line.strip().startswith(("import",
            "from", '"""', "@register", "register_method"))]
    assert len(code) <= 12, code


@pytest.fixture(scope="module")
def tiny_cached(tmp_path_factory) -> tuple[Path, Path]:
    from crossan.cache import build_cache
    from crossan.data import prepare
    from crossan.data.synth import generate

    root = tmp_path_factory.mktemp("methods")
    data_dir = generate(root / "data", size="tiny", seed=5, missing_rate=0.3, progress=False)
    cfg = load_config([], [f"data.path={data_dir}", "encoders.preset=tiny", f"cache.dir={root / 'cache'}",
                           "device=cpu", "precision=fp32"])
    build_cache(cfg, prepare(cfg.data), ["text", "image"], progress=False)
    return data_dir, root / "cache"


def test_a_new_method_trains_from_the_cache_with_known_outputs(example_module, tiny_cached, tmp_path: Path) -> None:
    from crossan.cache import open_cache
    from crossan.data import prepare
    from crossan.model import build_model
    from crossan.trainer import train
    from crossan.utils import count_params

    data_dir, cache_dir = tiny_cached
    assert get_method("lastmean").reads_cache and "lastmean" in method_names()
    cfg = load_config([], [f"data.path={data_dir}", "encoders.preset=tiny", f"cache.dir={cache_dir}", "device=cpu",
                           "precision=fp32", "method=lastmean", "modalities=[text,image]", "train.epochs=2"])
    data = prepare(cfg.data)

    # known value: the tower's output is the mean over present modalities of its projections of the last tap
    model = build_model(cfg, data, torch.device("cpu")).eval()
    assert type(model.tower).__name__ == "LastLayerMean"
    cache = open_cache(cfg, data, ["text", "image"], mmap=False)
    items = torch.arange(1, data.num_items + 1)
    feats = cache.gather(items)
    expected = torch.zeros(len(items), cfg.user.dim)
    for row in range(len(items)):
        parts = [model.tower.proj[m](feats[m][0][row, -1]) for m in ("text", "image") if feats[m][1][row]]
        if parts:
            expected[row] = torch.stack(parts).mean(0)
    assert any(not feats["image"][1][r] for r in range(len(items))), "the data must have items without an image"
    with torch.no_grad():
        torch.testing.assert_close(model.tower(items), expected, atol=1e-5, rtol=1e-5)

    res = train(cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["method"] == "lastmean" and saved["best_epoch"] >= 1
    proj = sum(cache.dims[m] * cfg.user.dim + cfg.user.dim for m in ("text", "image"))
    assert res["trainable_params"] == proj + count_params(model.user)[0]
    assert 0.0 <= res["test"]["NDCG@10"] <= 1.0

"""The table of methods: every list is derived from it, and a new method is one module plus one row (the
example of docs/method.md §13, run from the document itself, trains from the cache)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

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


def test_a_row_is_refused_when_its_options_are_not_a_dataclass_or_its_name_is_taken() -> None:
    class NotADataclass:
        width = 3

    with pytest.raises(ConfigError, match=r"options must be a dataclass"):
        register_method(Method("late_not_dataclass", NotADataclass, __name__, False, False))
    with pytest.raises(ConfigError, match="registered twice"):
        register_method(Method("crossan", None, __name__, True, False))
    assert "late_not_dataclass" not in METHODS and "late_not_dataclass" not in Config.__dataclass_fields__


@dataclasses.dataclass
class _NoDefault:
    width: int


@dataclasses.dataclass
class _TupleOption:
    pair: tuple[int, int] = (1, 2)


@dataclasses.dataclass
class _Unresolved:
    where: NotImportedHere = None  # type: ignore[name-defined]  # noqa: F821 - the point of the test


@pytest.mark.parametrize("name, options, message", [
    ("late_no_default", _NoDefault, "method 'late_no_default': every field of _NoDefault needs a default"),
    ("late_tuple", _TupleOption, "method 'late_tuple': the default of late_tuple.pair: unsupported type tuple"),
    ("late_unresolved", _Unresolved, "method 'late_unresolved': the type annotations of _Unresolved do not "
                                     "resolve (NameError"),
    ("lambda", None, "method name 'lambda' must be a Python identifier and no keyword"),
])
def test_a_plugin_row_whose_options_the_config_cannot_hold_is_refused_at_registration(name, options,
                                                                                      message) -> None:
    """Options without a default, of a type the config reader cannot read back, or with annotations that do
    not resolve would make every later configuration fail (a built-in method's included), and a keyword cannot
    name a section: refused when registered, leaving no row and no section behind."""
    with pytest.raises(ConfigError) as e:
        register_method(Method(name, options, __name__, False, False))
    assert str(e.value).startswith(message)
    assert name not in METHODS and name not in Config.__dataclass_fields__
    assert load_config([], ["method=id"]).method == "id"


def test_an_unknown_key_names_its_nearest_known_key() -> None:
    with pytest.raises(ConfigError) as e:
        load_config([], ["trian.epochs=3"])
    assert str(e.value).startswith("unknown config key 'trian' (known here: adapter, cache, cached, crossan")
    assert str(e.value).endswith("did you mean 'train'?")
    with pytest.raises(ConfigError, match=r"known here: bottleneck, .*; did you mean 'dropout'\?$"):
        load_config([], ["crossan.dropuot=0.2"])
    with pytest.raises(ConfigError, match=r"known here: bottleneck, dropout, exchange, .*, side_dim\)$"):
        load_config([], ["crossan.RANGES=[]"])  # a class constant, not a key
    with pytest.raises(ConfigError, match=r"\(known here: .*\); a plugin method's section needs its plugin loaded"):
        load_config([], ["zzzz.width=3"])


SCALED_PLUGIN = '''
from dataclasses import dataclass
from typing import ClassVar

from crossan.errors import ConfigError
from crossan.methods import Method, register_method
from crossan.towers.base import register
from crossan.towers.id import IDTower
from crossan.towers.options import Options, Range


@dataclass
class ScaledIDConfig(Options):
    """ID embeddings times a factor."""

    RANGES: ClassVar[tuple[Range, ...]] = (("scale", 0, False, None),)
    scale: float = 1.0
    """The factor."""
    label: str = "plain"
    """A string option."""

    def check(self, key: str) -> None:
        if self.label == "bad":
            raise ConfigError(f"{key}.label: may not be 'bad'")


class ScaledID(IDTower):
    def __init__(self, num_items, dim, scale):
        super().__init__(num_items, dim)
        self.scale = scale

    def forward(self, items):
        return super().forward(items) * self.scale


@register("scaledid")
def build(ctx):
    return ScaledID(ctx.num_items, ctx.config.user.dim, ctx.config.scaledid.scale)


register_method(Method("scaledid", ScaledIDConfig, __name__, reads_cache=False, runs_backbone=False))
'''

LATE_OPTIONS_SCRIPT = '''
import dataclasses, json, pickle, sys
import torch
from crossan.config import Config, ConfigError, config_differences, config_from_dict, load_config, to_dict
from crossan.methods import load_plugin
from crossan.towers.base import TowerContext, build_tower

before = Config()  # made before the plugin registered its section
load_plugin(sys.argv[1])
out = {"fields": list(Config.__dataclass_fields__)[-2:], "before": dataclasses.asdict(before)["scaledid"]}
cfg = load_config([], ["method=scaledid", "scaledid.scale=2.5", "scaledid.label=2024.10"])
out["id_run_sections"] = [k for k in to_dict(load_config([], ["method=id"])) if k in ("id", "lora", "scaledid")]
older = {k: v for k, v in to_dict(load_config([], ["method=scaledid"])).items() if k != "scaledid"}
out["resume_diff"] = [config_differences(older, load_config([], ["method=scaledid"])),
                      config_differences(older, load_config([], ["method=scaledid", "scaledid.scale=3"]))]
out["cfg"] = [cfg.scaledid.scale, cfg.scaledid.label, isinstance(cfg, Config)]
out["roundtrip"] = config_from_dict(to_dict(cfg)) == cfg and pickle.loads(pickle.dumps(cfg)) == cfg
errors = []
for bad in ("scaledid.scale=0", "scaledid.label=bad", "scaledid.width=3"):
    try:
        load_config([], ["method=scaledid", bad])
    except ConfigError as e:
        errors.append(str(e))
out["errors"] = errors
torch.manual_seed(0)
tower = build_tower(TowerContext(cfg, 5, [""] + list("abcde")))
items = torch.arange(1, 6)
out["scaled"] = torch.equal(tower(items), tower.embedding(items) * 2.5)
print(json.dumps(out))
'''


@pytest.mark.subprocess
def test_a_plugin_method_registered_after_config_is_built_has_its_options(tmp_path: Path) -> None:
    """A plugin's row with options, registered after crossan.config was imported (as ``--plugin`` and
    ``$CROSSAN_PLUGINS`` do), gets its section: overrides reach the tower, its RANGES and check name the key,
    a config made before reads the section's defaults, and it survives a save/load and pickling. In a fresh
    interpreter, so that this process's Config keeps only the built-in sections."""
    import subprocess

    plugin = tmp_path / "scaledid.py"
    plugin.write_text(SCALED_PLUGIN)
    src = str(Path(__file__).parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", LATE_OPTIONS_SCRIPT, str(plugin)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": src})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["fields"] == ["lora", "scaledid"]
    assert out["before"] == {"scale": 1.0, "label": "plain"}
    assert out["cfg"] == [2.5, "2024.10", True] and out["roundtrip"] and out["scaled"]
    assert out["errors"][0] == "scaledid.scale: must be greater than 0, got 0.0"
    assert out["errors"][1] == "scaledid.label: may not be 'bad'"
    assert out["errors"][2].startswith("unknown config key 'scaledid.width' (known here: label, scale)")
    # a run of another method saves no section of the loaded plugin (its config.yaml reads without it), and
    # a config saved before the plugin had options resumes as the options' defaults
    assert out["id_run_sections"] == ["id", "lora"]
    assert out["resume_diff"] == [[], ["scaledid.scale: 1.0 → 3.0"]]

    broken = tmp_path / "brokenplug.py"
    broken.write_text("raise RuntimeError('needs a library that is not installed')\n")
    script = ("from crossan.config import load_config\n"
              "try:\n    load_config([], ['trian.epochs=3'])\nexcept Exception as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": src, "CROSSAN_PLUGINS": str(broken)})
    assert done.stdout.startswith("unknown config key 'trian' (known here: ") and "did you mean 'train'?" in done.stdout
    assert "a plugin failed to load: plugin " in done.stdout and "needs a library" in done.stdout


@pytest.mark.subprocess
def test_a_plugin_method_with_options_trains_and_is_evaluated_from_the_command_line(small_data: Path,
                                                                                     tmp_path: Path) -> None:
    """``crossan train --plugin FILE method=NAME NAME.key=value``: the option is saved in config.yaml and
    changes the run; ``crossan evaluate RUN`` finds the plugin through ``$CROSSAN_PLUGINS`` before it reads the
    saved section, and re-scores the run to the same figures."""
    import subprocess

    plugin = tmp_path / "scaledid.py"
    plugin.write_text(SCALED_PLUGIN)
    env = {k: v for k, v in os.environ.items() if k != "CROSSAN_PLUGINS"}
    env["PYTHONPATH"] = str(Path(__file__).parents[1] / "src")

    def crossan(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "crossan", *args], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path, env={**env, **extra})

    common = ["train.epochs=1", "train.batch_size=32", "device=cpu", "--quiet"]
    runs = {}
    for scale in ("1.0", "4.0"):
        done = crossan("train", "--data", str(small_data), "--out", str(tmp_path / scale), "--plugin", str(plugin),
                       "method=scaledid", f"scaledid.scale={scale}", *common)
        assert done.returncode == 0, done.stderr
        runs[scale] = json.loads((tmp_path / scale / "results.json").read_text())
        saved = yaml.safe_load((tmp_path / scale / "config.yaml").read_text())
        assert saved["scaledid"] == {"scale": float(scale), "label": "plain"}
    assert runs["1.0"]["test"] != runs["4.0"]["test"]  # the option reached the tower
    done = crossan("evaluate", str(tmp_path / "4.0"), "--device", "cpu", CROSSAN_PLUGINS=str(plugin))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["test"] == runs["4.0"]["test"]
    done = crossan("evaluate", str(tmp_path / "4.0"), "--device", "cpu")
    assert done.returncode == 2 and "a plugin method's section needs its plugin loaded" in done.stderr


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

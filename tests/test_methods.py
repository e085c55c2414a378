"""The table of methods: every list is derived from it, and a new method is one module plus one row (the
example of docs/method.md §13, run from the document itself, trains from the cache)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml

from crossan.config import Config, ConfigError, load_config, to_dict
from crossan.methods import BUILTIN, METHODS, Method, cache_methods, get_method, method_names, register_method
from crossan.towers.base import ItemTower

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
    with pytest.raises(ConfigError, match=r"^method 'late_nowhere': its module 'no_such_module_x' cannot be found"):
        register_method(Method("late_nowhere", None, "no_such_module_x", True, False))
    assert "late_nowhere" not in METHODS  # it was listed, and training ended in a ModuleNotFoundError traceback


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
    # exported though its tower has no `modalities` attribute (it failed with an AttributeError)
    from crossan.export import export_run

    export_run(tmp_path / "run", tmp_path / "export")
    assert (tmp_path / "export" / "model.safetensors").is_file()


def test_a_plugin_run_is_not_resumed_by_other_code(example_module, tiny_cached, tmp_path: Path) -> None:
    """The checkpoint records the plugin's SHA-256: a --resume after the file changed continued the epochs of
    the old code under the new one, and results.json then recorded only the new code (so a suite reused it)."""
    from crossan.errors import RunError
    from crossan.methods import method_source
    from crossan.trainer import train

    data_dir, cache_dir = tiny_cached
    args = [f"data.path={data_dir}", "encoders.preset=tiny", f"cache.dir={cache_dir}", "device=cpu", "precision=fp32",
            "method=lastmean", "modalities=[text,image]", "train.max_steps_per_epoch=2", "train.epochs=2"]
    run = tmp_path / "run"
    train(load_config([], args), run, progress=False)
    (run / "results.json").unlink()  # as if killed after its last checkpoint
    source = Path(example_module.__file__)
    trained = method_source("lastmean")["sha256"]
    original = source.read_text()
    logged = (run / "train.log").read_bytes()
    try:
        source.write_text(original + "\n# edited\n")
        with pytest.raises(RunError, match=r"last\.pt was trained with other code of its plugin method "
                                           rf"\(method_source\.sha256: {trained} → "):
            train(load_config([], args), run, resume=True, progress=False)
        assert (run / "train.log").read_bytes() == logged  # no header of a resumed run that never ran
    finally:
        source.write_text(original)
    # loading the unfinished run into other code warns as loading a finished one does (from its checkpoint)
    from crossan.runs import MethodCodeWarning, load_run

    try:
        source.write_text(original + "\n# edited\n")
        with pytest.warns(MethodCodeWarning, match=r"plugin method 'lastmean' was trained with other code: .* the "
                                                   r"run recorded .* \(from its checkpoint last\.pt\)"):
            load_run(run)
    finally:
        source.write_text(original)
    # a checkpoint of a crossan before 0.1.16 records no SHA-256: its resume cannot check the code, and says so
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    del ck["data"]["method_source.sha256"]
    torch.save(ck, run / "checkpoints" / "last.pt")
    train(load_config([], args), run, resume=True, progress=False)
    assert json.loads((run / "results.json").read_text())["method_source"]["sha256"] == trained
    assert "records no SHA-256 of its plugin method's file" in (run / "train.log").read_text()


# --- the mistakes a researcher adding a method makes, each named in the error (docs/method.md §13) ---


class _FixedTower(ItemTower):
    """A tower whose ``forward`` gives whatever ``make(items)`` returns (wrong shapes and dtypes)."""

    def __init__(self, num_items: int, dim: int, make) -> None:
        super().__init__()
        self.num_items, self.dim, self.make = num_items, dim, make
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.make(items)

    def param_groups(self, train):
        return [{"name": "heads", "params": [self.w], "lr": train.lr}]


@pytest.mark.parametrize("make, got", [
    (lambda items: torch.zeros(len(items), 128), "torch.float32 [4, 128]"),
    (lambda items: torch.zeros(len(items)), "torch.float32 [4]"),
    (lambda items: torch.zeros(len(items) - 1, 64), "torch.float32 [3, 64]"),
    (lambda items: torch.zeros(len(items), 64, dtype=torch.float64), "torch.float64 [4, 64]"),
    (lambda items: torch.zeros(len(items), 64, dtype=torch.long), "torch.int64 [4, 64]"),
])
def test_a_tower_output_of_the_wrong_shape_or_dtype_is_refused_naming_the_method(make, got) -> None:
    """It failed deep in the user encoder (a size mismatch in its layer norm, "mixed dtype", an index error
    in torch.embedding), naming neither the method nor the tower."""
    from crossan.recommender import Recommender

    cfg = load_config([], ["method=id"])
    model = Recommender(_FixedTower(5, cfg.user.dim, make), cfg, torch.ones(6))
    with pytest.raises(ValueError) as e:
        model.embed_unique(torch.tensor([[0, 1, 2], [3, 4, 0]]))
    assert str(e.value) == (f"method='id' (item tower {__name__}._FixedTower): forward returned {got} for 4 items, expected "
                            "float32 [4, 64] (items [U] → embeddings [U, user.dim])")
    with pytest.raises(ValueError, match=rf"^item tower {__name__}._FixedTower: forward returned "):
        model.tower.embed_all(batch_size=4)
    good = Recommender(_FixedTower(5, cfg.user.dim, lambda items: torch.ones(len(items), 64)), cfg, torch.ones(6))
    assert good.embed_unique(torch.tensor([[0, 1, 2]]))[1].shape == (3, 64)  # padding row added
    assert torch.equal(good.tower.embed_all(batch_size=2)[1:], torch.ones(5, 64))


def test_a_builder_returning_a_tower_without_dim_or_num_items_is_named(monkeypatch) -> None:
    """A tower that forgot ``num_items`` failed at the first evaluation with an AttributeError; a builder that
    returned some other module, when the trainer first called it."""
    from crossan.towers import base
    from crossan.towers.base import TowerContext, build_tower

    made: dict[str, object] = {}
    monkeypatch.setitem(METHODS, "forgetful", Method("forgetful", None, __name__, False, False))
    monkeypatch.setitem(base._REGISTRY, "forgetful", lambda ctx: made["tower"])
    cfg = load_config([], ["method=forgetful"])
    ctx = TowerContext(cfg, 5, [""] + list("abcde"))
    tower = _FixedTower(5, 64, lambda items: torch.ones(len(items), 64))
    made["tower"] = tower
    assert build_tower(ctx) is tower
    del tower.num_items
    with pytest.raises(ValueError, match=r"^method='forgetful': its tower's num_items is None, expected 5 "):
        build_tower(ctx)
    made["tower"] = _FixedTower(5, 32, lambda items: torch.ones(len(items), 32))
    with pytest.raises(ValueError, match=r"^method='forgetful': its tower's dim is 32, expected 64 "):
        build_tower(ctx)
    made["tower"] = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"^method='forgetful': its builder returned Linear, not an ItemTower"):
        build_tower(ctx)


@pytest.mark.parametrize("groups, message", [
    (lambda w: [], r"^method='id': trainable parameters not in any optimiser group: \['tower.w'\] \(its tower's "
                   r"param_groups must list them"),
    (lambda w: [{"name": "a", "params": [w], "lr": 1e-3}, {"name": "b", "params": [w], "lr": 1e-3}],
     r"^method='id': parameter group 'b' repeats a parameter of another group \(its tower's param_groups\)$"),
])
def test_a_tower_whose_param_groups_miss_or_repeat_a_parameter_is_named(groups, message) -> None:
    """docs/method.md §13 lists ``param_groups`` among what crossan checks naming the method; the error named
    only the parameter or the group."""
    from crossan.model import param_groups
    from crossan.recommender import Recommender

    cfg = load_config([], ["method=id"])
    tower = _FixedTower(5, cfg.user.dim, lambda items: torch.ones(len(items), cfg.user.dim))
    tower.param_groups = lambda train: groups(tower.w)
    with pytest.raises(ValueError, match=message):
        param_groups(Recommender(tower, cfg, torch.ones(6)), cfg)


def test_param_groups_without_lr_train_at_train_lr_and_a_bad_shape_is_named() -> None:
    """A plugin group without "lr" trained at Adam's own default 1e-3, with train.lr=2e-4 everywhere on record; a
    tuple of groups raised AttributeError inside crossan."""
    from crossan.model import param_groups
    from crossan.recommender import Recommender

    cfg = load_config([], ["method=id", "train.lr=2e-4"])
    tower = _FixedTower(5, cfg.user.dim, lambda items: torch.ones(len(items), cfg.user.dim))
    model = Recommender(tower, cfg, torch.ones(6))
    tower.param_groups = lambda train: ({"name": "heads", "params": [tower.w]},)  # a tuple, no lr
    groups = param_groups(model, cfg)
    assert [(g["name"], g["lr"]) for g in groups] == [("heads", 2e-4), ("user_encoder", 2e-4)]
    # numbers Adam takes (0.1.15 refused them): NumPy scalars, a one-element tensor; kept as Adam's float
    import numpy as np

    for lr in (np.float32(1e-3), np.int64(0), torch.tensor(1e-3)):
        tower.param_groups = lambda train, lr=lr: [{"name": "heads", "params": [tower.w], "lr": lr}]
        (heads, _) = param_groups(model, cfg)
        assert type(heads["lr"]) is float and heads["lr"] == float(lr)
    for bad, words in (([tower.w], "must return a list of dicts"),
                       ([{"name": "h", "params": [tower.w], "lr": "fast"}], "group 'h' has lr='fast'"),
                       ([{"name": "h", "params": [tower.w], "lr": -1.0}], "group 'h' has lr=-1.0"),
                       ([{"name": "h", "params": [tower.w], "lr": torch.ones(2)}], "group 'h' has lr=tensor")):
        tower.param_groups = lambda train, bad=bad: bad
        with pytest.raises(ValueError, match=rf"^method='id': its tower's param_groups.*{words}"):
            param_groups(model, cfg)


def test_a_non_finite_loss_names_the_method_and_a_plugin_tower(small_data: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    """A plugin tower giving NaN embeddings stopped the run with "epoch 1: the training loss is nan", naming
    neither the method nor the tower class to look at; a built-in method's parameter is named with its method."""
    from crossan.errors import NonFiniteError
    from crossan.towers import base
    from crossan.trainer import train

    monkeypatch.setitem(METHODS, "nanm", Method("nanm", None, __name__, False, False))
    monkeypatch.setitem(base._REGISTRY, "nanm", lambda ctx: _FixedTower(
        ctx.num_items, ctx.config.user.dim, lambda items: torch.full((len(items), 64), float("nan"))))
    cfg = load_config([], [f"data.path={small_data}", "method=nanm", "train.epochs=1", "device=cpu"])
    with pytest.raises(NonFiniteError) as e:
        train(cfg, tmp_path / "run", progress=False)
    # NaN from the very first step, before any update: the learning rate is not the cause (it was advised)
    assert str(e.value).startswith(f"epoch 1: the training loss of method='nanm' (item tower {__name__}._FixedTower)"
                                   " was nan at the very first step, before any weight changed, so the learning rate "
                                   "is not the cause: check the tower's forward")


def test_a_plugin_tower_under_a_built_in_name_does_not_replace_the_built_in(monkeypatch) -> None:
    """``@register("frozen")`` in a plugin, imported before crossan's frozen tower was (the registry fills on
    first use), took its place: the plugin's ``register_method`` then failed, but in the same process
    ``method=frozen`` built the plugin's tower."""
    from crossan.towers import base

    monkeypatch.delitem(base._REGISTRY, "frozen", raising=False)  # as in a process that has not built it yet

    def build(ctx):  # a plugin's builder, in another module than the built-in row names
        raise AssertionError("never built")

    with pytest.raises(ValueError, match=r"^item tower 'frozen': method 'frozen' is registered by module "
                                         rf"crossan.towers.frozen, not by {__name__}; give the new method a name"):
        base.register("frozen")(build)
    assert "frozen" not in base._REGISTRY  # the built-in's module registers it when first built
    with pytest.raises(ConfigError, match=r"^method 'frozen' is registered twice \(it is crossan's built-in "):
        register_method(Method("frozen", None, __name__, True, False))


@pytest.fixture
def fresh_plugins(monkeypatch, tmp_path: Path) -> Path:
    """No plugin imported yet in this test's eyes (nor discovered from the environment); ``tmp_path`` on
    sys.path for plugin modules."""
    import crossan.methods as methods

    monkeypatch.setattr(methods, "_loaded", {}, raising=False)
    monkeypatch.setattr(methods, "_failed", [], raising=False)
    monkeypatch.setattr(methods, "_discovered", True)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_plugin_package_registers_its_tower_from_a_helper_module(fresh_plugins: Path) -> None:
    """The row names the module whose import registers the builder (``Method.module``): a package whose
    ``__init__`` registers the row and imports the helper module holding ``@register``. The refusal of a
    built-in name refused this too (module helperpkg, not helperpkg.towers), failing the plugin's import."""
    from crossan.methods import load_plugin
    from crossan.towers import base

    pkg = fresh_plugins / "helperpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from crossan.methods import Method, register_method\n"
                                     "register_method(Method('helperm', None, __name__, True, False))\n"
                                     "from helperpkg import towers  # noqa: E402,F401\n")
    (pkg / "towers.py").write_text("from crossan.towers.base import register\n\n\n"
                                   "@register('helperm')\ndef build(ctx):\n    raise NotImplementedError\n")
    try:
        load_plugin("helperpkg")
        assert base.builder("helperm") is sys.modules["helperpkg.towers"].build
        assert get_method("helperm").module == "helperpkg"
    finally:
        METHODS.pop("helperm", None)
        base._REGISTRY.pop("helperm", None)
        for name in ("helperpkg", "helperpkg.towers"):
            sys.modules.pop(name, None)


def test_a_loaded_plugin_that_registered_no_such_method_is_named(fresh_plugins: Path) -> None:
    """``--plugin noreg.py method=noreg`` where the file forgot ``register_method``: the error said to pass
    --plugin, which had been passed."""
    from crossan.methods import load_plugin

    with pytest.raises(ConfigError) as e:
        get_method("noreg_m")
    assert "a plugin method: pass --plugin MODULE" in str(e.value)  # no plugin imported: how to load one
    plugin = fresh_plugins / "noreg_plugin.py"
    plugin.write_text("X = 1  # a tower and options, but no register_method(...)\n")
    load_plugin(str(plugin))
    load_plugin(str(plugin))  # named again (--plugin and $CROSSAN_PLUGINS): listed once
    hint = (f"plugins imported: {plugin} registered no method; a plugin registers its method with "
            "register_method(Method(NAME, ...)) (docs/method.md §13)")
    with pytest.raises(ConfigError) as e:
        get_method("noreg_m")
    assert str(e.value).endswith(f"({hint})")
    with pytest.raises(ConfigError) as e:
        load_config([], ["noreg_m.width=3"])  # its options section, in a YAML file or an override
    assert str(e.value).endswith(f"; {hint}")


def test_a_plugin_module_that_imports_a_missing_module_is_not_called_missing(fresh_plugins: Path) -> None:
    """``--plugin mlp_v2`` whose module imports ``mlp`` (not installed) was reported as "no module named
    'mlp_v2'; put its folder on PYTHONPATH" because 'mlp_v2' starts with 'mlp'."""
    from crossan.methods import load_plugin

    (fresh_plugins / "mlp_v2.py").write_text("import mlp  # not installed\n")
    with pytest.raises(ConfigError) as e:
        load_plugin("mlp_v2")
    assert str(e.value) == "plugin mlp_v2: importing it failed: No module named 'mlp'"
    with pytest.raises(ConfigError) as e:
        load_plugin("mlp_v3")
    assert str(e.value).startswith("plugin mlp_v3: no module named 'mlp_v3'; put its folder on PYTHONPATH")


def test_a_run_of_a_plugin_not_loaded_says_which_plugin_trained_it(fresh_plugins: Path) -> None:
    """``crossan evaluate RUN`` without the plugin: the error named the unknown section only; results.json
    records the module and file that trained the run (``method_source``), so the error says what to load."""
    from crossan.errors import RunError
    from crossan.runs import read_run_config

    run = fresh_plugins / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({**to_dict(load_config([], [])), "method": "ghostm",
                                                     "ghostm": {"width": 3}}))
    for module, file, spec in (("ghostm", "/x/ghostm.py", "/x/ghostm.py"), ("pkg.ghostm", "/x/ghostm.py", "pkg.ghostm"),
                               ("ghostm", "/my x/ghostm.py", "'/my x/ghostm.py'")):  # quoted: pasted, it runs
        (run / "results.json").write_text(json.dumps({"method_source": {"module": module, "file": file,
                                                                        "sha256": "0" * 64}}))
        with pytest.raises(RunError) as e:
            read_run_config(run, written="0.1.11")
        assert str(e.value).endswith(f"; the run's method 'ghostm' was trained from module {module!r} "
                                     f"({file}): pass --plugin {spec} if that is still its code")
        # the plugin is missing, not a crossan that cannot read the run: "written by crossan X, cannot be read
        # by crossan X" said the opposite
        assert str(e.value).startswith(f"{run / 'config.yaml'}: ") and "cannot be read by" not in str(e.value)
    # a method a script registered as it ran (python train_mine.py): --plugin with that script trained it again
    (run / "results.json").write_text(json.dumps({"method_source": {"module": "__main__", "file": "/x/mine.py",
                                                                    "sha256": "0" * 64}}))
    with pytest.raises(RunError, match=r"registered by the script /x/mine\.py as it ran: move the method into a "
                                       r"module of its own") as e:
        read_run_config(run, written="0.1.11")
    assert "--plugin /x/mine.py" not in str(e.value)
    # an unfinished run (no results.json yet): the plugin is named as missing, not the crossan version
    (run / "results.json").unlink()
    with pytest.raises(RunError) as e:
        read_run_config(run, written="0.1.20")
    assert str(e.value).endswith("; the run's method 'ghostm' is not a built-in one and no plugin registered it: "
                                 "pass --plugin with the module or file that does (the run is unfinished, so no "
                                 "results.json records which)")
    assert "cannot be read by" not in str(e.value)


# --- crossan methods: the table as a researcher sees it, plugins included ---


def test_crossan_methods_lists_every_row_and_where_it_comes_from(capsys) -> None:
    """``Method.summary`` was never shown and no command listed the methods."""
    from crossan.cli import main

    assert main(["methods"]) == 0
    lines = [line.split("  ") for line in capsys.readouterr().out.splitlines()]
    rows = {cells[0]: [c.strip() for c in cells[1:] if c.strip()] for cells in lines if cells[0]}
    assert [r for r in rows if r in METHODS] == method_names()
    assert rows["method"] == ["summary", "reads cache", "runs backbone", "from"]
    assert rows["crossan"] == ["CROSSAN side networks + MOMEF", "yes", "no", "built-in"]
    assert rows["lora"] == ["LoRA (peft) in the backbones", "no", "yes", "built-in"]


def test_crossan_methods_name_lists_its_options_from_the_dataclass(capsys) -> None:
    """Every field of each built-in options section, with its type, default and range or choices, read from
    the dataclasses (``RANGES``, ``Literal``, the field's docstring), not from a hand-written list."""
    from crossan.cli import main

    assert main(["methods", "crossan"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "crossan: CROSSAN side networks + MOMEF (built-in; reads the cache)"
    table = {c[0]: c[1:] for c in (re.split(r"\s{2,}", x.strip()) for x in lines[1:]) if c[0].startswith("crossan.")}
    assert table["crossan.fusion"] == ["str", "momef", "momef, concat, mean"]
    assert table["crossan.dropout"] == ["float", "0.1", "in [0, 1)"]
    assert table["crossan.init_std"] == ["float", "0.01", "greater than 0"]
    assert table["crossan.momef_top_k"] == ["int", "0", "at least 0"]
    assert table["crossan.share_adapters"] == ["bool", "false"]
    assert "      How the per-modality embeddings become one item embedding." in lines
    assert lines[-1] == "  and rules between its keys (CrossanConfig.check)"
    assert main(["methods", "--options"]) == 0
    every = capsys.readouterr().out
    for m in BUILTIN:
        keys = [f"{m.name}.{f.name}" for f in dataclasses.fields(m.options)]
        assert all(re.search(rf"^  {re.escape(k)} ", every, re.M) for k in keys), m.name
        assert ("no options" in ("\n" + every).split(f"\n{m.name}: ")[1].split("\n\n")[0]) == (not keys)
    assert re.search(r"^  fft\.lr_text\s+float or null\s+null\s+greater than 0$", every, re.M)
    assert re.search(r"^  lora\.targets\s+list\[str\]\s+\[\]$", every, re.M)
    assert main(["methods", "nope"]) == 2
    assert "method: 'nope' is not one of ['id'" in capsys.readouterr().err


@dataclasses.dataclass
class _ListedConfig:
    """A plugin's options as ``crossan methods`` lists them: not an ``Options`` subclass, no ``RANGES``."""

    width: int = 8
    """How wide, e.g. `width=16` doubles it. Not listed."""
    mode: Literal["a", "b"] | None = None
    """The mode, i.e. (a) or (b) as in crossan 0.1. Not listed."""
    ratio: float = 1e-5
    """Its ratio vs. IISAN's. Not listed."""
    name: str = ""
    switch: Literal["on", "off"] = "on"
    pick: Literal[0, "auto"] = "auto"


def test_crossan_methods_lists_a_plugins_options_as_a_file_writes_them(monkeypatch) -> None:
    """The listing cut a field's first sentence at "e.g.", "i.e." and "vs.", showed an empty string default
    as nothing and YAML's words ("on") unquoted (a file writing them so gets other values), and called
    Literal[0, "auto"] an int from its first choice."""
    from crossan.config import parse_value
    from crossan.method_listing import format_methods, option_rows

    monkeypatch.setitem(METHODS, "listed", Method("listed", _ListedConfig, __name__, False, False))
    rows = option_rows(METHODS["listed"])
    assert [(r.key, r.type, r.default, r.allowed, r.doc) for r in rows] == [
        ("listed.width", "int", "8", "", "How wide, e.g. `width=16` doubles it."),
        ("listed.mode", "str or null", "null", "a, b", "The mode, i.e. (a) or (b) as in crossan 0.1."),
        ("listed.ratio", "float", "1e-05", "", "Its ratio vs. IISAN's."),
        ("listed.name", "str", "''", "", ""),
        ("listed.switch", "str", "'on'", "'on', 'off'", ""),
        ("listed.pick", "int or str", "auto", "0, auto", "")]
    assert (parse_value("''"), parse_value("'on'"), parse_value("on")) == ("", "on", True)  # as read back
    text = format_methods([METHODS["listed"]], options=True)
    assert "rules between" not in text and "  listed.name    str          ''" in text


OPTIONS_PLUGIN = '''
from dataclasses import dataclass
from typing import ClassVar, Literal

from crossan.methods import Method, register_method
from crossan.towers.options import Options, Range


@dataclass
class WideConfig(Options):
    RANGES: ClassVar[tuple[Range, ...]] = (("width", 1, True, None),)
    width: int = 8
    """How wide. Only the first sentence is listed."""
    mode: Literal["a", "b"] = "b"


register_method(Method("{name}", WideConfig, __name__, reads_cache=True, runs_backbone=False, summary="{name} rows"))
'''


def _entry_point(folder: Path, dist: str, line: str) -> None:
    """An installed distribution ``dist`` in ``folder`` (put on PYTHONPATH) declaring the ``crossan.methods``
    entry point ``line`` (``name = module``): what ``pip install --target`` writes."""
    info = folder / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[crossan.methods]\n{line}\n")


def _crossan_methods(folder: Path, plugins: list[Path], *args: str) -> subprocess.CompletedProcess:
    """``python -m crossan methods ARGS`` in ``folder`` (on PYTHONPATH, with this checkout's src) and
    ``$CROSSAN_PLUGINS`` set to ``plugins``."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), src]),
           "CROSSAN_PLUGINS": os.pathsep.join(str(p) for p in plugins)}
    return subprocess.run([sys.executable, "-m", "crossan", "methods", *args], capture_output=True, text=True,
                          timeout=120, cwd=folder, env=env)


@pytest.mark.subprocess
def test_python_m_crossan_methods_lists_the_plugins_of_the_environment_and_entry_points(tmp_path: Path) -> None:
    """`python -m crossan methods --options`: a plugin of $CROSSAN_PLUGINS and one of an installed entry
    point are listed with their module, file (and entry point) and their options."""
    (tmp_path / "envwide.py").write_text(OPTIONS_PLUGIN.replace("{name}", "envwide"))
    (tmp_path / "epwide.py").write_text(OPTIONS_PLUGIN.replace("{name}", "epwide"))
    _entry_point(tmp_path, "epwide_dist", "epw = epwide")
    done = _crossan_methods(tmp_path, [tmp_path / "envwide.py"], "--options")
    assert done.returncode == 0, done.stderr
    blocks = {b.split(":")[0]: b.splitlines() for b in done.stdout.split("\n\n")}
    assert blocks["envwide"][0] == f"envwide: envwide rows (plugin envwide ({tmp_path / 'envwide.py'}); reads the cache)"
    assert blocks["epwide"][0] == (f"epwide: epwide rows (plugin epwide ({tmp_path / 'epwide.py'}; entry point 'epw'); "
                                   "reads the cache)")
    assert [re.split(r"\s{2,}", x.strip()) for x in blocks["envwide"][1:]] == [
        ["key", "type", "default", "allowed"], ["envwide.width", "int", "8", "at least 1"], ["How wide."],
        ["envwide.mode", "str", "b", "a, b"]]


@pytest.mark.subprocess
def test_crossan_methods_lists_what_loaded_when_a_plugin_of_the_environment_fails(tmp_path: Path) -> None:
    """A plugin of $CROSSAN_PLUGINS that fails to import stopped `crossan methods` with one error line: neither
    the built-in methods nor the plugins that did import were listed. Now they are, the failure follows as an
    error naming the plugin, and the exit status is 1; `crossan methods NAME` of a loaded method still shows it."""
    (tmp_path / "goodwide.py").write_text(OPTIONS_PLUGIN.replace("{name}", "goodwide"))
    (tmp_path / "badwide.py").write_text("raise RuntimeError('half-written plugin')\n")
    plugins = [tmp_path / "badwide.py", tmp_path / "goodwide.py"]
    done = _crossan_methods(tmp_path, plugins)
    assert done.returncode == 1
    names = [line.split()[0] for line in done.stdout.split("\n\n")[0].splitlines()[1:]]
    assert names == [*(m.name for m in BUILTIN), "goodwide"]
    assert done.stderr.splitlines() == [f"crossan: error: plugin {tmp_path / 'badwide.py'}: importing it failed: "
                                        "RuntimeError: half-written plugin"]
    done = _crossan_methods(tmp_path, plugins, "goodwide")
    assert done.returncode == 1 and done.stdout.startswith("goodwide: goodwide rows (plugin goodwide")
    assert "badwide.py: importing it failed" in done.stderr


def test_a_plugin_that_failed_discovery_is_named_by_a_later_unknown_method(fresh_plugins: Path, monkeypatch) -> None:
    """Discovery runs once per process: after a plugin of $CROSSAN_PLUGINS failed (collected by `crossan
    methods`, or raised by a first get_method), a later get_method of its method said only "set
    $CROSSAN_PLUGINS" (which was set) and a second discover_plugins(errors) collected nothing. Both now name
    the failed plugin."""
    import crossan.methods as methods

    bad = fresh_plugins / "brokenwide.py"
    bad.write_text("raise RuntimeError('half-written plugin')\n")
    monkeypatch.setenv("CROSSAN_PLUGINS", str(bad))
    monkeypatch.setattr(methods, "_discovered", False)
    failure = f"plugin {bad}: importing it failed: RuntimeError: half-written plugin"
    first: list[str] = []
    methods.discover_plugins(first)
    assert first == [failure] and "brokenwide" not in sys.modules
    again: list[str] = []
    methods.discover_plugins(again)
    assert again == [failure]
    for _ in range(2):
        with pytest.raises(ConfigError) as e:
            get_method("brokenwide")
        assert str(e.value).endswith(f"(plugins that failed to import: {failure})")
    (fresh_plugins / "fineplugin.py").write_text("X = 1\n")
    methods.load_plugin(str(fresh_plugins / "fineplugin.py"))
    with pytest.raises(ConfigError) as e:  # a section no plugin registered: the failure named once
        load_config([], ["zzsection.width=3"])
    assert str(e.value).count(failure) == 1


def test_crossan_methods_of_a_failed_plugins_method_names_the_failure_once(fresh_plugins: Path, monkeypatch,
                                                                           capsys) -> None:
    """`crossan methods NAME` where NAME's plugin failed to import: the error said "set $CROSSAN_PLUGINS" (set
    already) after the plugin's failure; now the one error names the failure, printed once."""
    import crossan.methods as methods
    from crossan.cli import main

    bad = fresh_plugins / "brokenname.py"
    bad.write_text("raise RuntimeError('half-written plugin')\n")
    monkeypatch.setenv("CROSSAN_PLUGINS", str(bad))
    monkeypatch.setattr(methods, "_discovered", False)
    assert main(["methods", "brokenname"]) == 2
    err = capsys.readouterr().err
    failure = f"plugin {bad}: importing it failed: RuntimeError: half-written plugin"
    assert err.count(failure) == 1 and err.startswith("crossan: error: method: 'brokenname' is not one of")


def test_a_plugin_file_named_like_another_module_is_refused(fresh_plugins: Path, tmp_path_factory) -> None:
    """A plugin file is imported under its file name: `tabnanny.py` (a standard-library module not imported
    yet) or the name of a module elsewhere on sys.path would have stood in for that module in every later
    import of the process. Refused, naming the module it would hide; nothing is left in sys.modules. The same
    file found on sys.path is the module itself, and loads."""
    from crossan.methods import load_plugin

    assert "tabnanny" not in sys.modules
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "tabnanny.py").write_text("X = 1\n")
    with pytest.raises(ConfigError) as e:
        load_plugin(str(elsewhere / "tabnanny.py"))
    assert str(e.value).startswith(f"plugin {elsewhere / 'tabnanny.py'}: the file name 'tabnanny.py' is the name of "
                                   "another module (")
    assert "tabnanny" not in sys.modules and str(e.value).endswith("; rename the plugin file")
    (fresh_plugins / "twinmod.py").write_text("X = 1\n")  # on sys.path: `import twinmod` finds this one
    (elsewhere / "twinmod.py").write_text("X = 2\n")
    with pytest.raises(ConfigError) as e:
        load_plugin(str(elsewhere / "twinmod.py"))
    assert f"is the name of another module ({fresh_plugins / 'twinmod.py'})" in str(e.value)
    try:
        load_plugin(str(fresh_plugins / "twinmod.py"))
        assert sys.modules["twinmod"].X == 1
    finally:
        sys.modules.pop("twinmod", None)


@pytest.mark.parametrize("bounds, words", [
    ((1, True, None), "at least 1"), ((0, False, None), "greater than 0"),
    ((0, True, 1), "in [0, 1)"), ((0, False, 1), "in (0, 1)")])
def test_a_range_reads_the_same_in_the_error_and_the_listing(bounds, words) -> None:
    """One wording for a RANGES entry in `crossan methods` and in the range check's error; the error said
    "in [lo, hi)" also where the lowest value is not allowed."""
    from dataclasses import dataclass

    from crossan.config import Config, ConfigError, _validate_ranges
    from crossan.method_listing import option_rows
    from crossan.towers.options import Options

    @dataclass
    class Bounded(Options):
        RANGES = (("x", *bounds),)
        x: float = 5.0

    assert option_rows(Method("bounded", Bounded, __name__, False, False))[0].allowed == words
    cfg = Config()
    cfg.lora.rank = bad = bounds[0] if not bounds[1] else bounds[0] - 1  # checked with the bounds above
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(cfg.lora), "RANGES", (("rank", *bounds),))
        with pytest.raises(ConfigError) as e:
            _validate_ranges(cfg)
    assert str(e.value) == f"lora.rank: must be {words}, got {bad!r}"


@pytest.mark.parametrize("first_by_path", [False, True])
def test_a_plugin_named_as_a_module_and_as_its_file_is_imported_once(fresh_plugins: Path, first_by_path: bool) -> None:
    """``--plugin twopkg.twomod`` and ``twopkg/twomod.py`` (say one in $CROSSAN_PLUGINS, the other in a suite's
    ``plugins``): the file ran twice, under two module names, and its second registration was refused as
    "registered twice", failing the run."""
    from crossan.methods import _loaded, load_plugin, plugin_hint

    pkg = fresh_plugins / "twopkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "twomod.py").write_text("from crossan.methods import Method, register_method\n"
                                   "register_method(Method('twom', None, __name__, True, False))\n")
    by_name, by_path = "twopkg.twomod", str(pkg / "twomod.py")
    try:
        for spec in ([by_path, by_name] if first_by_path else [by_name, by_path]):
            load_plugin(spec)
        first = "twomod" if first_by_path else by_name
        assert get_method("twom").module == first
        assert list(_loaded) == [first]  # one plugin, named by the spec that imported it
        assert ("twomod" in sys.modules) == first_by_path and (by_name in sys.modules) != first_by_path
        assert "registered twom" in plugin_hint()
    finally:
        METHODS.pop("twom", None)
        for name in ("twopkg", by_name, "twomod"):
            sys.modules.pop(name, None)


def test_a_plugin_module_in_the_working_directory_not_on_sys_path_is_named_by_its_path(
        fresh_plugins: Path, tmp_path_factory, monkeypatch) -> None:
    """``crossan suite … --plugin myplug`` with myplug.py in the working directory: the console script does not
    put the working directory on sys.path (``python -m crossan`` does), and the error said to put its folder on
    PYTHONPATH; it now says that the file is there and how to name it."""
    from crossan.methods import load_plugin

    here = tmp_path_factory.mktemp("cwd")
    (here / "cwdplug.py").write_text("X = 1\n")
    (here / "cwdpkg").mkdir()
    (here / "cwdpkg" / "inner.py").write_text("X = 1\n")
    monkeypatch.chdir(here)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(here))])
    for spec, path in (("cwdplug", "cwdplug.py"), ("cwdpkg.inner", "cwdpkg/inner.py")):
        with pytest.raises(ConfigError) as e:
            load_plugin(spec)
        assert str(e.value) == (f"plugin {spec}: no module named {spec!r}; it is the file ./{path} of the working "
                                f"directory, which is not on sys.path under the crossan command: give its path "
                                f"(--plugin ./{path})")


@pytest.mark.subprocess
def test_an_entry_point_plugin_also_named_by_its_file_path_is_imported_once(tmp_path: Path) -> None:
    """An installed plugin package whose module file is also in $CROSSAN_PLUGINS (a developer's checkout named by
    path): the file ran under its stem and again under the entry point's module name, and the second
    registration stopped `crossan methods` (exit 1, "registered twice")."""
    pkg = tmp_path / "eppkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "epmod.py").write_text(OPTIONS_PLUGIN.replace("{name}", "epboth"))
    _entry_point(tmp_path, "epboth_dist", "epb = eppkg.epmod")
    done = _crossan_methods(tmp_path, [pkg / "epmod.py"])
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.split("\n\n")[0].splitlines()[1:]].count("epboth") == 1

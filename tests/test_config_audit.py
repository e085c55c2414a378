"""Configuration audit: repeated YAML keys, numbers read alike in files and on the command line, errors that
name the file and line, seed ranges, the --device of the commands that load a run, invalid suite files,
plugin methods on the command line (``--plugin``, ``CROSSAN_PLUGINS``, entry points) and small CLI rules."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crossan.cli import build_parser, main
from crossan.config import ConfigError, CoreConfig, load_config
from crossan.methods import Method, method_names, register_method
from crossan.reports.suite import load_suite, parse_seeds

SRC = str(Path(__file__).parents[1] / "src")
REPLACES = "the second would silently replace the first, so merge them into one"
QUOTE = ("which is how YAML reads the unquoted value (a number, boolean or date: 2024.10 becomes 2024.1, on "
         "becomes true); quote it to keep it as written")
SEEDS = "[0, 2**32) = [0, 4294967295]"


def _error(files: list[Path] = (), overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(files, overrides)
    return str(e.value)


# --------------------------------------------------------------------------------------------- repeated keys
@pytest.mark.parametrize("text, line, key, first", [
    ("train:\n  epochs: 3\nmethod: id\ntrain:\n  lr: 0.1\n", 4, "train", 1),
    ("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n", 4, "lr", 2),
    ("{seed: 1, seed: 2}\n", 1, "seed", 1),
])
def test_a_repeated_key_in_a_config_file_is_an_error(tmp_path: Path, text: str, line: int, key: str,
                                                      first: int) -> None:
    """yaml.safe_load keeps the last of two equal keys: a second train: block silently replaced the first."""
    f = tmp_path / "dup.yaml"
    f.write_text(text)
    assert _error([f]) == (f"config file {f}: line {line}: key {key!r} appears twice in one mapping (first "
                           f"on line {first}); {REPLACES}")


def test_a_repeated_key_in_a_suite_file_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("runs: [{name: A, method: id}]\nseeds: [0]\nruns: [{name: B, method: id}]\n")
    with pytest.raises(ConfigError) as e:
        load_suite(str(f))
    assert str(e.value) == (f"suite {f}: line 3: key 'runs' appears twice in one mapping (first on line 1); "
                            f"{REPLACES}")


def test_invalid_suite_yaml_is_a_config_error_with_its_line(tmp_path: Path, capsys) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("description: t\nruns: [{name: A, method: id}\n")
    with pytest.raises(ConfigError) as e:
        load_suite(str(f))
    assert str(e.value) == (f"suite {f} is not valid YAML: line 3, column 1: expected ',' or ']', but got "
                            "'<stream end>' (while parsing a flow sequence)")
    assert main(["bench", "--suite", str(f), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"crossan: error: {e.value}\n"
    f.write_bytes(b"description: caf\xe9\nruns: [{name: A, method: id}]\n")
    with pytest.raises(ConfigError, match=r"suite .*s\.yaml is not UTF-8 text: line 1 holds the byte 0xe9"):
        load_suite(str(f))


# --------------------------------------------------------------------------------------------- numbers
def test_numbers_read_alike_from_a_file_and_the_command_line(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("seed: 010\ntrain:\n  lr: 1e-3\n  lr_adapter: 5E-5\n  epochs: 08\n")
    cfg = load_config([f])
    assert (cfg.seed, cfg.train.lr, cfg.train.lr_adapter, cfg.train.epochs) == (10, 0.001, 5e-5, 8)
    cfg = load_config([], ["seed=010", "train.lr=1e-3", "train.lr_adapter=5E-5", "train.epochs=08"])
    assert (cfg.seed, cfg.train.lr, cfg.train.lr_adapter, cfg.train.epochs) == (10, 0.001, 5e-5, 8)
    assert load_config([], ["eval.ks=[05,010]", "train.metric=NDCG@10"]).eval.ks == [5, 10]


@pytest.mark.parametrize("value, read_as", [("2024.10", "2024.1"), ("010", "10"), ("on", "True"),
                                            ("2024-01-02", "datetime.date(2024, 1, 2)")])
def test_a_string_key_refuses_what_yaml_reads_as_another_type(tmp_path: Path, value: str,
                                                              read_as: str) -> None:
    """data.path: 2024.10 used to become the path '2024.1'; it is refused, asking for quotes."""
    f = tmp_path / "a.yaml"
    f.write_text(f"data:\n  path: {value}\n")
    assert _error([f]) == f"{f}:2: data.path: expected a string, got {read_as}, {QUOTE}"
    f.write_text(f"data:\n  path: '{value}'\n")
    assert load_config([f]).data.path == value
    assert load_config([], [f"data.path={value}"]).data.path == value  # the command line keeps its text


def test_null_for_a_required_string_is_one_error_in_a_file_and_on_the_command_line(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("encoders:\n  text:\n    model: null\n")
    message = ("encoders.text.model: expected a string, got null; leave the key out for its default, or "
               "quote 'null' to mean that text")
    assert _error([f]) == f"{f}:3: {message}"
    assert _error([], ["encoders.text.model=null"]) == message
    assert load_config([], ["encoders.text.model='null'"]).encoders.text.model == "null"


def test_an_optional_choice_lists_its_choices() -> None:
    assert _error([], ["encoders.text.pooling=foo"]) == (
        "encoders.text.pooling: 'foo' is not one of ['auto', 'cls', 'mean'] (or null)")
    assert load_config([], ["encoders.text.pooling=null"]).encoders.text.pooling is None


# --------------------------------------------------------------------------------------------- where
def test_range_and_cross_field_errors_name_the_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("method: id\ntrain:\n  patience: 3\n  epochs: -1\nuser:\n  dim: 60\n  n_heads: 7\n")
    assert _error([f]) == f"{f}:7: user.n_heads: 7 does not divide user.dim 60"
    assert _error([f], ["user.n_heads=2"]) == f"{f}:4: train.epochs: must be at least 0, got -1"
    # the command line set the key last: no file is named
    assert _error([f], ["train.epochs=2", "user.n_heads=2", "train.patience=0"]) == (
        "train.patience: must be at least 1, got 0")
    g = tmp_path / "b.yaml"
    g.write_text("crossan:\n  dropout: 1.5\n")
    assert (_error([f, g], ["train.epochs=2", "user.n_heads=2"])
            == f"{g}:2: crossan.dropout: must be in [0, 1), got 1.5")


def test_each_range_error_names_only_the_wrong_key() -> None:
    assert _error([], ["train.epochs=-1"]) == "train.epochs: must be at least 0, got -1"
    assert _error([], ["train.patience=0"]) == "train.patience: must be at least 1, got 0"
    assert _error([], ["user.n_layers=0"]) == "user.n_layers: must be at least 1, got 0"
    assert _error([], ["user.ffn_mult=0"]) == "user.ffn_mult: must be at least 1, got 0"


def test_a_config_file_that_is_not_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"train:\n  epochs: 3\n# caf\xe9\n")
    assert _error([f]) == (f"config file {f} is not UTF-8 text: line 3 holds the byte 0xe9 (offset 24); "
                           "save it as UTF-8")


# --------------------------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed", ["-1", "4294967296", "100000000000000000000"])
def test_seeds_out_of_range_are_refused(seed: str) -> None:
    """seed * 1000003 + epoch overflowed int64 at the first epoch; NumPy takes seeds below 2**32."""
    assert _error([], [f"seed={seed}"]) == f"seed: must be an integer in {SEEDS}, got {seed}"


def test_the_largest_seed_is_accepted_and_draws_batches() -> None:
    from crossan.trainer import _batches

    assert load_config([], ["seed=4294967295"]).seed == 2**32 - 1
    assert sorted(int(i) for b in _batches(10, 4, 2**32 - 1, 1) for i in b) == list(range(10))


def test_suite_seeds_out_of_range_are_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError) as e:
        parse_seeds("0,4294967296")
    assert str(e.value) == (f"--seeds: give one or more distinct seeds in {SEEDS}, e.g. 0,1,2 "
                            "(got '0,4294967296')")
    assert main(["demo", "--out", str(tmp_path / "demo"), "--seeds", "4294967296"]) == 2
    assert "--seeds: give one or more distinct seeds in [0, 2**32)" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


# --------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("command", [["evaluate", "RUN"], ["recommend", "RUN", "--history", "a"],
                                     ["embed-items", "RUN", "--data", "x"], ["export", "RUN", "--out", "x"]])
def test_device_of_the_run_commands_is_checked_as_the_config_key(tmp_path: Path, capsys, command) -> None:
    run = str(tmp_path / "run")
    assert main([c.replace("RUN", run) for c in command] + ["--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err == "crossan: error: --device: 'gpu' is not 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'\n"


def test_a_device_this_machine_lacks_is_one_line(small_data: Path, tmp_path: Path, capsys) -> None:
    """``device=mps`` passed the config check and died in torch with a traceback on a machine without an
    Apple GPU; bf16 on it ran fp32 in silence."""
    import torch

    from crossan.precision import compute_dtype

    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    out = tmp_path / "run"
    assert main(["train", "--data", str(small_data), "--out", str(out), "method=id", "device=mps"]) == 2
    assert capsys.readouterr().err == ("crossan: error: device: 'mps' asked for but MPS (Apple GPU) is not "
                                       "available here\n")
    assert not out.exists()
    assert main(["train", "--data", str(small_data), "--out", str(out), "method=id", "device=cpu",
                 "precision=bf16"]) == 0  # bf16 runs on the CPU (emulated without bf16 units)
    with pytest.raises(ValueError, match="precision: bf16 runs on cpu and cuda devices, not mps"):
        compute_dtype("bf16", "mps")
    assert compute_dtype("auto", "mps") is None and compute_dtype("fp32", "mps") is None


def test_cache_without_modalities_is_an_error(small_data: Path, capsys) -> None:
    assert main(["cache", "--data", str(small_data), "--modalities", " , "]) == 2
    assert capsys.readouterr().err == ("crossan: error: --modalities: ' , ' names no modality; give a "
                                       "comma-separated subset of text,image,video,audio\n")


def test_train_data_dot_names_the_default_run_folder_after_the_folder(small_data: Path, monkeypatch) -> None:
    import crossan.trainer

    seen = {}

    def fake_train(cfg, out, resume, progress):
        seen["out"] = out
        return {"method": cfg.method, "dataset": "small", "best_epoch": 0, "test": {}}

    monkeypatch.setattr(crossan.trainer, "train", fake_train)
    monkeypatch.chdir(small_data)
    assert main(["train", "--data", ".", "--quiet", "device=cpu"]) == 0
    assert seen["out"].parent == Path("runs") and seen["out"].name.startswith("small-id-")


def test_resume_help_says_how_to_give_the_configuration_again() -> None:
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    text = " ".join(train.format_help().split())
    assert ("--resume continue an interrupted run in --out from its last checkpoint. The configuration must "
            "be the run's: repeat the original --config files and key=value overrides, or pass --config "
            "RUN_DIR/config.yaml") in text
    # it said "a difference is refused" while a resume accepts another precision and moved data or cache
    assert ("A difference is refused, naming the keys, except precision (the checkpoint's dtype must match) and "
            "data.path / cache.dir of a dataset or cache that moved") in text


# --------------------------------------------------------------------------------------------- plugins
def test_a_method_name_may_not_be_a_core_config_key() -> None:
    for name in ("eval", "train", "data", "cache", "encoders", "user", "seed"):
        with pytest.raises(ConfigError) as e:
            register_method(Method(name, None, "nowhere", False, False))
        assert str(e.value).startswith(f"method name {name!r} is a top-level config key")
        assert name not in method_names()
    from crossan.methods import RESERVED_NAMES

    assert RESERVED_NAMES == {f.name for f in dataclasses.fields(CoreConfig)}


PLUGIN = '''
from crossan.methods import Method, register_method
from crossan.towers.base import register
from crossan.towers.id import IDTower


@register("plainid")
def build(ctx):
    return IDTower(ctx.num_items, ctx.config.user.dim)


register_method(Method("plainid", None, __name__, reads_cache=False, runs_backbone=False))
'''


def _crossan(args: list[str], pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CROSSAN_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), SRC])
    return subprocess.run([sys.executable, "-m", "crossan", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.subprocess
def test_a_plugin_method_trains_and_serves_from_the_command_line(small_data: Path, tmp_path: Path,
                                                                 capsys) -> None:
    """--plugin MODULE imports a module that registers a method; the run equals the built-in ID run it copies.
    A run of the plugin method is then evaluated with the plugin found through an entry point of the group
    crossan.methods, and through CROSSAN_PLUGINS naming the .py file."""
    from crossan.trainer import train

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "plainid_plugin.py").write_text(PLUGIN)
    common = ["train.epochs=1", "train.batch_size=32", "device=cpu", "--quiet"]
    done = _crossan(["train", "--data", str(small_data), "--out", str(tmp_path / "run"), "--plugin",
                     "plainid_plugin", "method=plainid", *common], plugins, tmp_path)
    assert done.returncode == 0, done.stderr
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    same = train(load_config([], [f"data.path={small_data}", "train.epochs=1", "train.batch_size=32",
                                  "device=cpu"]), tmp_path / "id", progress=False)
    assert res["method"] == "plainid" and res["test"] == same["test"] and res["valid"] == same["valid"]

    # not loaded: a clear error that says how to load it
    assert main(["evaluate", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "method: 'plainid' is not one of" in capsys.readouterr().err

    dist = plugins / "plainid_dist-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plainid-dist\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[crossan.methods]\nplainid = plainid_plugin\n")
    done = _crossan(["evaluate", str(tmp_path / "run"), "--device", "cpu"], plugins, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["test"] == res["test"] and "warning" not in done.stderr

    # the run records the plugin's code; changed code is named when the run is loaded into it
    plugin_file = plugins / "plainid_plugin.py"
    assert res["method_source"] == {"module": "plainid_plugin", "file": str(plugin_file),
                                    "sha256": hashlib.sha256(plugin_file.read_bytes()).hexdigest()}
    plugin_file.write_text(PLUGIN + "# edited\n")
    done = _crossan(["evaluate", str(tmp_path / "run"), "--device", "cpu"], plugins, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "crossan: warning: " in done.stderr and "plugin method 'plainid' was trained with other code" in done.stderr
    plugin_file.write_text(PLUGIN)

    script = "from crossan.config import load_config; print(load_config([], ['method=plainid']).method)"
    env = {**os.environ, "PYTHONPATH": SRC, "CROSSAN_PLUGINS": str(plugins / "plainid_plugin.py")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0 and done.stdout == "plainid\n", done.stderr


@pytest.fixture
def suite_plugin_row(monkeypatch, tmp_path: Path):
    """A suite folder with ``plugins/suiteid_plugin.py`` (registers the row ``suiteid``, no tower); the row,
    the module, the record of imported plugins and ``$CROSSAN_PLUGINS`` are put back afterwards."""
    import crossan.methods as methods

    monkeypatch.setattr(methods, "_loaded", {})
    monkeypatch.delenv("CROSSAN_PLUGINS", raising=False)
    folder = tmp_path / "suites"
    (folder / "plugins").mkdir(parents=True)
    (folder / "plugins" / "suiteid_plugin.py").write_text(
        "from crossan.methods import Method, register_method\n"
        "register_method(Method('suiteid', None, __name__, reads_cache=False, runs_backbone=False))\n")
    yield folder
    methods.METHODS.pop("suiteid", None)
    sys.modules.pop("suiteid_plugin", None)


def test_a_suite_file_names_its_own_plugins(suite_plugin_row: Path, tmp_path: Path, monkeypatch) -> None:
    """A suite of a plugin method needed ``crossan bench --plugin FILE --suite S``: its ``plugins`` key now
    imports them before the runs are checked, a relative path taken from the suite file's folder (not the
    working directory), and passes them to the runs' child processes in $CROSSAN_PLUGINS, as --plugin does."""
    folder = suite_plugin_row
    monkeypatch.chdir(tmp_path)
    f = folder / "s.yaml"
    f.write_text("plugins: [plugins/suiteid_plugin.py]\nruns: [{name: S, method: suiteid}]\n")
    suite = load_suite(str(f))
    plugin = str(folder / "plugins" / "suiteid_plugin.py")
    assert suite.plugins == [plugin] and [r.method for r in suite.runs] == ["suiteid"]
    assert os.environ["CROSSAN_PLUGINS"] == plugin

    f.write_text("plugins: [plugins/nope.py]\nruns: [{name: S, method: suiteid}]\n")
    with pytest.raises(ConfigError) as e:
        load_suite(str(f))
    nope = folder / "plugins" / "nope.py"
    assert str(e.value) == f"suite {f}: plugin {nope}: no such file {nope}"
    f.write_text("plugins: plugins/suiteid_plugin.py\nruns: [{name: S, method: suiteid}]\n")
    with pytest.raises(ConfigError, match=rf"^suite {f}: plugins must be a list of strings"):
        load_suite(str(f))


def test_a_suite_report_says_which_plugin_code_made_its_rows(suite_plugin_row: Path, monkeypatch) -> None:
    """The suite's results.json meta and report.md named no plugin: a reader could not tell which code a
    plugin row came from. Its file is absolute also when the suite (and so the plugin) was named relative to
    the working directory."""
    from crossan.methods import method_origin, method_source
    from crossan.reports.suite import plugin_sources
    from crossan.reports.table import render_report

    folder = suite_plugin_row
    monkeypatch.chdir(folder.parent)
    (folder / "s.yaml").write_text("plugins: [plugins/suiteid_plugin.py]\n"
                                   "runs: [{name: S, method: suiteid}, {name: I, method: id}]\n")
    suite = load_suite("suites/s.yaml")
    assert suite.plugins == ["suites/plugins/suiteid_plugin.py"]
    plugin = folder / "plugins" / "suiteid_plugin.py"
    digest = hashlib.sha256(plugin.read_bytes()).hexdigest()
    source = {"module": "suiteid_plugin", "file": str(plugin), "sha256": digest}
    assert method_source("suiteid") == source and plugin_sources(suite) == {"suiteid": source}
    assert method_origin("suiteid") == f"plugin suiteid_plugin ({plugin})"
    meta = {"suite": "s", "description": "", "data": "d", "preset": "paper", "machine": "m", "date": "t",
            "cache_build_s": 0.0, "plugins": plugin_sources(suite)}
    lines = render_report([], meta, "", []).splitlines()
    assert lines[5:7] == ["- encoder preset: `paper`", f"- plugin method `suiteid`: module `suiteid_plugin`, file "
                                                       f"`{plugin}` (SHA-256 `{digest[:12]}…`)"]


@pytest.mark.subprocess
def test_a_suite_with_its_plugins_trains_a_plugin_run_in_its_child_process(small_data: Path,
                                                                           tmp_path: Path) -> None:
    """``crossan bench --suite S`` (no --plugin, no $CROSSAN_PLUGINS, run from another folder): the child
    process that trains the plugin run imports the suite's plugin too, and the run records its file."""
    folder = tmp_path / "suites"
    (folder / "plugins").mkdir(parents=True)
    plugin = folder / "plugins" / "plainid_plugin.py"
    plugin.write_text(PLUGIN)
    (folder / "s.yaml").write_text(
        f"data: {small_data}\nplugins: [plugins/plainid_plugin.py]\n"
        "overrides: [train.epochs=1, train.batch_size=32, device=cpu]\nruns: [{name: P, method: plainid}]\n")
    done = _crossan(["bench", "--suite", "suites/s.yaml", "--out", "out"], SRC, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    res = json.loads((tmp_path / "out" / "runs" / "P" / "seed-0" / "results.json").read_text())
    assert res["method"] == "plainid" and res["method_source"]["file"] == str(plugin)
    meta = json.loads((tmp_path / "out" / "results.json").read_text())["meta"]  # the report says which code
    assert meta["plugins"] == {"plainid": res["method_source"]}
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"- plugin method `plainid`: module `plainid_plugin`, file `{plugin}`" in report


def test_an_unknown_plugin_is_a_one_line_error(small_data: Path, capsys) -> None:
    assert main(["train", "--data", str(small_data), "--plugin", "no_such_plugin_module"]) == 2
    assert capsys.readouterr().err == ("crossan: error: plugin no_such_plugin_module: no module named "
                                       "'no_such_plugin_module'; put its folder on PYTHONPATH or give the "
                                       "path of its .py file\n")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", ".nan", "1e400"])
def test_a_float_key_must_be_finite(value: str) -> None:
    """``train.lr=nan`` said "expected a number" (it is one); ``.nan`` from YAML and ``1e400`` (inf) passed
    the type check. Every float key must be finite; the error says so."""
    with pytest.raises(ConfigError, match=r"^train.lr: must be a finite number, got "):
        load_config([], [f"train.lr={value}"])


# --------------------------------------------------------------------------------------------- documentation
def test_every_config_key_has_a_docstring() -> None:
    """The README promises "every key is a typed, documented dataclass field": 17 keys (``user.dim``,
    ``lora.rank``, …) had none. Section fields (``train``, ``encoders.text``) are documented by their class;
    ``encoders.<modality>.*`` mirror :class:`EncoderSpec`'s documented fields."""
    import ast
    import dataclasses

    import crossan.config as config_module
    import crossan.towers.options as options_module

    undocumented = []
    documented: dict[str, set[str]] = {}
    for module in (config_module, options_module):
        tree = ast.parse(Path(module.__file__).read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            body = cls.body
            for node, nxt in zip(body, [*body[1:], None]):
                if not isinstance(node, ast.AnnAssign):
                    continue
                name = node.target.id  # type: ignore[attr-defined]
                fields = {f.name: f.type for f in dataclasses.fields(getattr(module, cls.name))}
                if name not in fields:  # a ClassVar (a section's RANGES), not a config key
                    continue
                if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(
                        nxt.value.value, str):
                    documented.setdefault(cls.name, set()).add(name)
                    continue
                field_type = fields[name]
                section = isinstance(field_type, str) and field_type in {c.name for c in tree.body
                                                                          if isinstance(c, ast.ClassDef)}
                if not section and cls.name != "EncoderOverrides":
                    undocumented.append(f"{cls.name}.{name}")
    assert undocumented == []
    mirrored = {f.name for f in dataclasses.fields(config_module.EncoderOverrides)}
    assert mirrored <= documented["EncoderSpec"]


def test_every_method_sections_ranges_name_its_own_fields() -> None:
    """Each options dataclass states its ranges (``RANGES``, applied by ``validate``); a misspelt field there
    would be checked nowhere, so each must name a numeric field of its section, and one value out of range
    must be refused naming ``method.field``."""
    import dataclasses

    from crossan.methods import option_sections

    checked = 0
    for method in option_sections():
        fields = {f.name: f for f in dataclasses.fields(method.options)}
        for name, lo, inclusive, _ in method.options.RANGES:
            assert name in fields and fields[name].type in ("int", "float", "int | None", "float | None"), (method.name, name)
            bad = lo - 1 if inclusive else lo
            with pytest.raises(ConfigError, match=rf"^{method.name}\.{name}: must be"):
                load_config([], [f"{method.name}.{name}={bad}"])
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("name", ["fft", "adapter", "lora"])
def test_the_end_to_end_configs_name_every_option_of_their_method(name: str) -> None:
    """configs/fft.yaml says "Method options (fft.*), all at their defaults here" and said the backbone rate was
    "one key here" after ``fft.lr_text`` had been added; each end-to-end config file now names every option of
    its method's section (adapter and lora list the shared ones "as in fft.yaml")."""
    import dataclasses

    from crossan.methods import get_method

    text = (Path(__file__).parents[1] / "configs" / f"{name}.yaml").read_text(encoding="utf-8")
    options = [f.name for f in dataclasses.fields(get_method(name).options)]
    assert [o for o in options if o not in text] == []
    assert "one key here" not in text


@pytest.mark.subprocess
def test_a_reader_that_stops_reading_stdout_is_no_error(tmp_path: Path) -> None:
    """``crossan cache --list | head -1`` printed "crossan: error: [Errno 32] Broken pipe" and exited 2 (or the
    interpreter's "Exception ignored … BrokenPipeError", exit 120, when the pipe broke at its final flush): the
    listing was fine, its reader had gone. It now ends quietly with 141 (128 + SIGPIPE, as a shell reports it)."""
    env = {**os.environ, "PYTHONPATH": SRC, "CROSSAN_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "crossan", "cache", "--list"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes its first line
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""
    proc.stderr.close()


def test_a_broken_pipe_other_than_stdout_is_still_an_error(monkeypatch, capsys) -> None:
    """Only a closed stdout is taken for a reader that stopped; a broken pipe elsewhere (a child process, a
    socket) is reported as an error (exit 2)."""
    import crossan.cli

    def broken(args) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(crossan.cli, "cmd_cache_list", broken)
    assert main(["cache", "--list"]) == 2
    assert capsys.readouterr().err == "crossan: error: [Errno 32] Broken pipe\n"


@pytest.mark.parametrize(("override", "says"), [
    ("train.lr=1" + "0" * 400, "train.lr: must be a finite number"),  # an OverflowError traceback
    ("train.lr=1_e3", "train.lr: expected a number, got '1_e3'"),  # "could not convert string to float", no key
    ("seed=1:30", "seed: expected an integer, got '1:30'"),  # YAML 1.1's base 60: read as 90
    ("train.batch_size=1:04", "train.batch_size: expected an integer, got '1:04'"),
    ("train.lr=1:30", "train.lr: expected a number, got '1:30'"),
    ("iisan.official_lr_text_head=0.5", "iisan.official_lr_text_head: acts with iisan.lr_groups=official only"),
])
def test_values_that_slipped_through_or_crashed_are_refused_naming_the_key(override: str, says: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(says)):
        load_config([], [override])


def test_values_yaml_cannot_build_and_lists_keep_what_was_written(tmp_path: Path) -> None:
    """PyYAML's int and date builders raised ValueError (`data.path=0x_`, `cache.dir=2024-02-30`: a message naming
    no key); a quoted path with a comma in a file became two media roots; `eval.ks=10` was "expected a list"."""
    assert load_config([], ["data.path=0x_"]).data.path == "0x_"
    assert load_config([], ["cache.dir=2024-02-30"]).cache.dir == "2024-02-30"
    f = tmp_path / "a.yaml"
    f.write_text('data:\n  path: 0b_\n  media_roots: "/mnt/my,media"\neval:\n  ks: 10\ntrain:\n  metric: NDCG@10\n')
    cfg = load_config([f])
    assert (cfg.data.path, cfg.data.media_roots, cfg.eval.ks) == ("0b_", ["/mnt/my,media"], [10])
    roots = {"a,b": ["a", "b"], "/mnt/media #2": ["/mnt/media #2"], "2024.10": ["2024.10"], "[x, y]": ["x", "y"]}
    for written, read in roots.items():
        assert load_config([], [f"data.media_roots={written}"]).data.media_roots == read
    assert load_config([], ["eval.ks=10", "train.metric=NDCG@10"]).eval.ks == [10]
    assert load_config([], ["eval.ks=5,10"]).eval.ks == [5, 10]
    assert load_config([], ["modalities=text,image"]).modalities == ["text", "image"]


@pytest.mark.parametrize(("text", "says"), [
    ("on: 3\n", "a.yaml:1: unknown config key 'on' "),  # YAML 1.1 read the key as True: "unknown config key 'True'"
    ("train:\n  lr: 0.001\n  off: 3\n", "a.yaml:3: unknown config key 'train.off' "),
    ("Yes:\n  lr: 1\n", "a.yaml:1: unknown config key 'Yes' "),
])
def test_a_key_yaml_reads_as_a_boolean_is_named_as_written(tmp_path: Path, text: str, says: str) -> None:
    f = tmp_path / "a.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config([f])
    assert load_config([], ["train.lr=0.5"]).train.lr == 0.5  # values are untouched: only keys keep their text
    f.write_text("cache:\n  standardize: off\n")
    assert load_config([f]).cache.standardize is False


@pytest.mark.parametrize(("argv", "says"), [
    # --preset and an encoders.preset= override naming another: the override won in silence
    (["cache", "--data", "DATA", "--preset", "tiny", "encoders.preset=offline"],
     "--preset tiny and encoders.preset=offline name two presets; give one"),
    (["encoders", "--preset", "offline", "encoders.preset=tiny"], "--preset offline and encoders.preset=tiny"),
])
def test_a_preset_option_and_another_preset_override_are_refused(tmp_path: Path, capsys, argv: list[str],
                                                                 says: str) -> None:
    argv = [a.replace("DATA", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    assert says in capsys.readouterr().err


def test_a_preset_given_once_either_way_is_taken() -> None:
    import argparse

    from crossan.cli import _load

    def preset(overrides: list[str], option: str | None) -> str:
        args = argparse.Namespace(config=[], overrides=overrides)
        return _load(args, option).encoders.preset

    assert preset([], "tiny") == "tiny"
    assert preset(["encoders.preset=tiny"], None) == "tiny"
    assert preset(["encoders.preset='tiny'"], "tiny") == "tiny"  # the same, quoted
    assert preset(["encoders.preset=offline", "encoders.preset=tiny"], None) == "tiny"  # ordered: the last wins


@pytest.mark.parametrize("name", ['"a\\0b"', "x" * 300])
def test_a_run_name_no_folder_can_have_is_refused_when_the_suite_is_read(tmp_path: Path, name: str) -> None:
    """A second reader (2026-12-04): a run named with a NUL or 300 bytes long passed the suite's name check, and the
    bench stopped after building the cache with "embedded null byte" / "File name too long", naming no key."""
    f = tmp_path / "s.yaml"
    f.write_text(f"data: synth:tiny\npreset: tiny\nruns:\n  - {{name: {name}, method: id}}\n")
    with pytest.raises(ConfigError, match=r"run names must be usable as folder names \(no '/' or NUL, .*200 bytes"):
        load_suite(str(f))

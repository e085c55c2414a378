"""The package's shape: no import cycle among crossan's modules, and the light commands stay light (reading a
config, ``crossan --help`` and ``crossan data stats`` import neither transformers nor peft nor matplotlib;
the first two not even torch)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import random_dataset

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "transformers", "peft", "matplotlib")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_nodes(body: list[ast.stmt]):
    """Import statements that run when the module is imported (not in functions, not under TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from _import_time_nodes(node.body)
            yield from _import_time_nodes(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _import_time_nodes(block)
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            yield from _import_time_nodes(node.body)


def import_graph() -> dict[str, set[str]]:
    """crossan module → the crossan modules importing it runs first (Python imports every package on the
    way to a module, except the importer's own packages, which are already being imported)."""
    files = {_module_name(p): p for p in (SRC / "crossan").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        targets: set[str] = set()
        for node in _import_time_nodes(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                bases = [a.name for a in node.names]
                subs: list[str] = []
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                bases = [base]
                subs = [f"{base}.{a.name}" for a in node.names]
            for mod in bases + subs:
                parts = mod.split(".")
                for i in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    if prefix in files and prefix not in own:
                        targets.add(prefix)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles_and_only_cycles() -> None:
    assert find_cycle({"a": {"b", "b.c"}, "b": {"a"}, "b.c": set()}) == ["a", "b", "a"]
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == ["x", "y", "z", "x"]
    assert find_cycle({"x": {"y", "z"}, "y": {"z"}, "z": set()}) is None


def test_import_graph_sees_package_init_edges() -> None:
    graph = import_graph()
    # importing a submodule imports its package first: crossan.model → crossan.towers.base implies crossan.towers
    assert {"crossan.towers", "crossan.towers.base"} <= graph["crossan.model"]
    assert "crossan.config" in graph["crossan.data.protocol"]


def test_no_import_cycle_among_crossan_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def _imported(code: str, *args: str, cwd: Path | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it ends by printing a JSON object that we return."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


REPORT = f"import json, sys; print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))"


def _cli_code(call: str, check: str) -> str:
    """Code for a fresh interpreter: ``call`` (a statement calling ``main``) with stdout captured in ``buf``,
    then ``check`` (a statement on it), then :data:`REPORT`."""
    return ("import contextlib, io\nfrom crossan.cli import main\nbuf = io.StringIO()\n"
            f"with contextlib.redirect_stdout(buf):\n    {call}\n{check}\n" + REPORT)


@pytest.mark.subprocess
def test_reading_a_config_imports_no_torch() -> None:
    res = _imported("from crossan.config import load_config; load_config([], ['method=crossan', "
                    "'crossan.fusion=concat', 'modalities=[text,image]']); " + REPORT)
    assert res["heavy"] == []


@pytest.mark.subprocess
def test_help_imports_no_torch() -> None:
    code = ("import contextlib, io\nfrom crossan.cli import main\nfor argv in (['--help'], ['train', '--help'], "
            "['recommend', '--help'], ['data', 'stats', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n            main(argv)\n        except SystemExit:\n            pass\n" + REPORT)
    assert _imported(code)["heavy"] == []


@pytest.mark.subprocess
def test_listing_the_methods_imports_no_torch() -> None:
    """`crossan methods` reads the table and the torch-free options dataclasses of the built-in methods."""
    code = _cli_code("assert main(['methods']) == 0 and main(['methods', '--options']) == 0",
                     "assert 'crossan.fusion' in buf.getvalue(), buf.getvalue()")
    assert _imported(code)["heavy"] == []


@pytest.mark.subprocess
def test_listing_the_caches_imports_no_torch(tmp_path: Path) -> None:
    """`crossan cache --list` reads manifests and folder sizes only (the cache package imports its
    submodules on first use)."""
    code = _cli_code(f"rc = main(['cache', '--list', 'cache.dir={tmp_path}'])",
                     "assert rc == 0 and 'no layer-state caches' in buf.getvalue(), buf.getvalue()")
    assert _imported(code)["heavy"] == []


@pytest.mark.subprocess
def test_data_stats_imports_no_model_libraries(tmp_path: Path) -> None:
    data = random_dataset(tmp_path / "d")
    code = _cli_code(f"rc = main(['data', 'stats', '--data', {str(data)!r}])",
                     "assert rc == 0 and 'users' in buf.getvalue(), buf.getvalue()")
    heavy = _imported(code)["heavy"]
    assert not {"transformers", "peft", "matplotlib"} & set(heavy), heavy

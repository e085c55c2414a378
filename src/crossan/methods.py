"""The table of methods: one row per item tower, and every list of methods derived from it.

A row says what the rest of crossan needs to know about a method without importing it (this module imports
no torch): its name (``method=``), its options section (a dataclass, ``cfg.<name>``), the module whose
import registers its tower builder (``@register(name)`` in :mod:`crossan.towers.base`), whether it reads
per-layer states of the frozen encoders (the layer-state cache, or the encoders live with
``cached=false``), and whether its backbones run forward and backward at every training step.

:mod:`crossan.config` builds one options section per row, ``Config.validate`` accepts exactly these names,
the model builder opens the feature source for ``reads_cache`` rows, and the suites build the cache for
them. A new method is one module (its tower and builder) plus one row — :func:`register_method` adds a
row at run time, as plugins and tests do (see docs/method.md, "Adding a method").
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import keyword
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossan.errors import ConfigError
from crossan.towers.options import (
    AdapterConfig,
    CrossanConfig,
    FFTConfig,
    FrozenConfig,
    IDConfig,
    IISANConfig,
    LoRAConfig,
)


@dataclass(frozen=True)
class Method:
    """One row of the table of methods."""

    name: str
    """``method=NAME``; also the name of its options section (``NAME.key=value``)."""
    options: type | None
    """The dataclass of the method's own options, or None for a method without any."""
    module: str
    """Module whose import registers the tower builder (``@register(name)``)."""
    reads_cache: bool
    """The tower reads per-layer states of the frozen encoders: the layer-state cache (``cached=true``) or
    the encoders run live (``cached=false``)."""
    runs_backbone: bool
    """The backbones run forward and backward at every training step (end-to-end baselines)."""
    summary: str = ""
    """One line saying what the method is, shown by ``crossan methods``."""

    @property
    def has_content(self) -> bool:
        """Whether the tower embeds items from their content (so it can embed new, cold-start items)."""
        return self.reads_cache or self.runs_backbone


METHODS: dict[str, Method] = {}
"""name → row, in the order of :data:`BUILTIN` then of registration."""

RESERVED_NAMES = frozenset({"method", "modalities", "cached", "seed", "device", "precision", "data", "user",
                            "train", "eval", "encoders", "cache"})
"""The top-level keys of ``crossan.config.CoreConfig``: a method's name is also a config section, so it may
not be one of these (``tests/test_config_audit.py`` checks that the two lists agree)."""

PLUGINS_ENV = "CROSSAN_PLUGINS"
"""Environment variable: plugin modules (names or ``.py`` paths, separated by ``os.pathsep``) imported when
a ``method=`` name is unknown. ``--plugin`` adds to it, so that the child processes of a suite import them
too."""

ENTRY_POINT_GROUP = "crossan.methods"
"""Entry-point group of installed plugin packages; each entry point names a module that registers a method."""

_sections_fixed = False
_discovered = False
_loaded: dict[str, tuple[str, str | None, list[str]]] = {}
"""Plugin module → (the spec it was first named by, the entry point that named it or None, the methods it
registered), for ``crossan methods`` and the errors of a method name no plugin registered."""
_failed: list[str] = []
"""Why each plugin :func:`discover_plugins` tried failed to import: discovery runs once per process, so a later
unknown method name (its method, likely) is told the cause instead of a hint to set what is set already."""
_late_section_hooks: list[Callable[[Method], None]] = []
"""Called with each row that has options and is registered after :func:`option_sections` gave the sections
out: :mod:`crossan.config` adds its hook, which makes the row's section a field of ``Config`` in place."""


def register_method(method: Method) -> Method:
    """Add a row, at any time: a plugin's row with options gets its config section (``cfg.<name>``) also after
    :mod:`crossan.config` has built ``Config`` (see :func:`crossan.config.add_method_section`). The options
    class must be a dataclass; derived from :class:`crossan.towers.options.Options`, its ``RANGES`` and
    ``check`` are applied like the built-in methods'."""
    if method.name in METHODS:
        by = METHODS[method.name].module
        whose = "crossan's built-in method" if _is_builtin(by) else f"a method of module {by}"
        raise ConfigError(f"method {method.name!r} is registered twice (it is {whose}); give the new method a "
                          "name of its own")
    if not method.name.isidentifier() or keyword.iskeyword(method.name):
        raise ConfigError(f"method name {method.name!r} must be a Python identifier and no keyword (it names a "
                          "config section)")
    if method.name in RESERVED_NAMES:
        raise ConfigError(f"method name {method.name!r} is a top-level config key (a method's name is also "
                          f"its config section); choose another name, not one of {sorted(RESERVED_NAMES)}")
    if method.options is not None and not (isinstance(method.options, type)
                                           and dataclasses.is_dataclass(method.options)):
        raise ConfigError(f"method {method.name!r}: options must be a dataclass (its fields are the keys "
                          f"{method.name}.KEY), got {method.options!r}")
    if not _is_builtin(method.module) and not _importable(method.module):
        raise ConfigError(f"method {method.name!r}: its module {method.module!r} cannot be found (the row's module "
                          "is imported to build the tower; a plugin usually names its own, __name__)")
    METHODS[method.name] = method
    if method.options is not None and _sections_fixed:
        try:
            for hook in _late_section_hooks:
                hook(method)
        except BaseException:
            del METHODS[method.name]
            raise
    return method


def _is_builtin(module: str) -> bool:
    """Whether ``module`` is crossan's own (a built-in method's row names it)."""
    return module == "crossan" or module.startswith("crossan.")


def _importable(module: str) -> bool:
    """Whether ``module`` is loaded or can be found (its parent packages are imported to look)."""
    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


BUILTIN: tuple[Method, ...] = (
    Method("id", IDConfig, "crossan.towers.id", False, False, "SASRec with learned item-ID embeddings"),
    Method("frozen", FrozenConfig, "crossan.towers.frozen", True, False, "a head over frozen last-layer states"),
    Method("iisan", IISANConfig, "crossan.towers.iisan", True, False, "IISAN side networks, M modalities"),
    Method("crossan", CrossanConfig, "crossan.towers.crossan", True, False, "CROSSAN side networks + MOMEF"),
    Method("fft", FFTConfig, "crossan.towers.fft", False, True, "full fine-tuning of the backbones"),
    Method("adapter", AdapterConfig, "crossan.towers.adapter", False, True, "Houlsby adapters in the backbones"),
    Method("lora", LoRAConfig, "crossan.towers.lora", False, True, "LoRA (peft) in the backbones"),
)
for _row in BUILTIN:
    register_method(_row)


def option_sections() -> list[Method]:
    """Rows with an options section, in table order (the method sections of ``Config``). A row with options
    registered after this call reaches ``Config`` through :data:`_late_section_hooks`."""
    global _sections_fixed
    _sections_fixed = True
    return [m for m in METHODS.values() if m.options is not None]


def get_method(name: str) -> Method:
    """The row of ``name``; :class:`ConfigError` listing the known names otherwise. An unknown name first
    imports the plugins not imported yet (:func:`discover_plugins`)."""
    if name not in METHODS:
        discover_plugins()
    if name not in METHODS:
        raise ConfigError(f"method: {name!r} is not one of {method_names()} ({plugin_hint()})")
    return METHODS[name]


def plugin_hint() -> str:
    """How to make a plugin method known, for the errors of an unknown method name or config section; once
    plugins were imported, also what each registered (a plugin that forgot :func:`register_method`, or
    registered another name, shows as such), and the plugins whose import failed."""
    failed = f"plugins that failed to import: {'; '.join(_failed)}" if _failed else ""
    if not _loaded:
        return failed or (f"a plugin method: pass --plugin MODULE, set ${PLUGINS_ENV}, or install a package "
                          f"with a {ENTRY_POINT_GROUP!r} entry point")
    did = "; ".join(f"{spec}{'' if ep is None else f' (entry point {ep!r})'} registered "
                    f"{', '.join(names) if names else 'no method'}" for spec, ep, names in _loaded.values())
    return (f"plugins imported: {did}; {failed + '; ' if failed else ''}a plugin registers its method with "
            "register_method(Method(NAME, ...)) (docs/method.md §13)")


def load_plugin(spec: str) -> None:
    """Import the plugin ``spec``: a module name (importable from ``sys.path``, e.g. on ``PYTHONPATH``) or the
    path of a ``.py`` file (imported under its file name's stem). Importing it registers its method
    (:func:`register_method`). :class:`ConfigError` naming the plugin when it cannot be imported."""
    spec = spec.strip()
    before = set(METHODS)
    same = _imported_under_another_name(spec)
    if same is not None:  # one file named two ways (pkg.mod and pkg/mod.py): imported once, not twice
        _note_loaded(spec, None, same, before)
        return
    try:
        if _is_file_spec(spec):
            _import_file(Path(spec))
        else:
            importlib.import_module(spec)
    except ConfigError as e:
        raise ConfigError(f"plugin {spec}: {e}") from None
    except ModuleNotFoundError as e:
        if e.name and (spec == e.name or spec.startswith(e.name + ".")):  # the plugin, not what it imports
            here = Path(*spec.split(".")).with_suffix(".py")
            hint = (f"it is the file ./{here} of the working directory, which is not on sys.path under the "
                    f"crossan command: give its path (--plugin ./{here})" if here.is_file() else
                    "put its folder on PYTHONPATH or give the path of its .py file")
            raise ConfigError(f"plugin {spec}: no module named {spec!r}; {hint}") from None
        raise ConfigError(f"plugin {spec}: importing it failed: {e}") from None
    except Exception as e:  # noqa: BLE001 - any failure of third-party code: one line naming the plugin
        raise ConfigError(f"plugin {spec}: importing it failed: {type(e).__name__}: {e}") from None
    _note_loaded(spec, None, Path(spec).stem if _is_file_spec(spec) else spec, before)


def _imported_under_another_name(spec: str) -> str | None:
    """The plugin already imported from the file that ``spec`` names, under another module name: a file path
    of a module imported by name (``pkg/mod.py`` after ``pkg.mod``), or a module name whose file was imported
    by path (under its stem). Importing it again would run the file twice and register its method twice."""
    if not _loaded:
        return None
    if _is_file_spec(spec):
        path = Path(spec)
    elif spec in sys.modules:
        return None  # imported under this very name: import_module returns it
    else:
        try:
            found = importlib.util.find_spec(spec)
        except (ImportError, ValueError):
            return None  # load_plugin's import says why
        if found is None or found.origin is None:
            return None
        path = Path(found.origin)
    if not path.is_file():
        return None
    for module in _loaded:
        file = getattr(sys.modules.get(module), "__file__", None)
        if file and Path(file).resolve() == path.resolve():
            return module
    return None


def _note_loaded(spec: str, entry_point: str | None, module: str, before: set[str]) -> None:
    """Record the methods plugin ``spec`` (module ``module``, named by ``entry_point`` if one did) registered:
    the rows its import added and those naming its module (registered by an earlier import of it)."""
    names = _loaded.setdefault(module, (spec, entry_point, []))[2]
    names.extend(n for n, m in METHODS.items() if (n not in before or m.module == module) and n not in names)


def _is_file_spec(spec: str) -> bool:
    """Whether a plugin spec names a ``.py`` file (else a module name)."""
    return spec.endswith(".py") or os.sep in spec


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"no such file {path}")
    name = path.stem
    if not name.isidentifier():
        raise ConfigError(f"the file name {path.name!r} must be a Python module name")
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path.resolve():
            return
        where = getattr(loaded, "__file__", "?")
        raise ConfigError(f"a module named {name!r} is imported already (from {where}); rename the plugin "
                          "file")
    other = _other_module(name, path)
    if other:  # imported under its stem, the file would stand in for that module wherever it is imported later
        raise ConfigError(f"the file name {path.name!r} is the name of another module ({other}), which the "
                          "plugin would hide from everything that imports it later; rename the plugin file")
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # the method's row names this module; the trainer imports it by that name
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _other_module(name: str, path: Path) -> str:
    """Where ``import name`` would find a module other than the file ``path`` (a standard-library module, an
    installed package, a built-in), or "" when it finds that file or nothing. Nothing is imported."""
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return ""
    origin = None if found is None else found.origin
    if origin is None:  # not found, or a namespace package (a folder without __init__.py): nothing to hide
        return ""
    if origin in ("built-in", "frozen"):
        return f"{origin} module of Python"
    return "" if Path(origin).resolve() == path.resolve() else origin


def load_plugins(specs: Iterable[str], base: Path | None = None) -> list[str]:
    """``--plugin`` (and a suite's ``plugins``): import each plugin now (:func:`load_plugin`) and add it to
    ``$CROSSAN_PLUGINS``, so that child processes (a suite's runs) import it too. A file path is stored
    absolute; a relative one is taken relative to ``base`` when given (a suite file's folder), else to the
    working directory. Returns the specs as imported (file paths resolved against ``base``)."""
    specs = [s.strip() for s in specs if s.strip()]
    if base is not None:
        specs = [str(base / Path(s).expanduser()) if _is_file_spec(s) else s for s in specs]
    for spec in specs:
        load_plugin(spec)
    if specs:
        known = [s for s in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if s]
        new = [str(Path(s).resolve()) if _is_file_spec(s) else s for s in specs]
        os.environ[PLUGINS_ENV] = os.pathsep.join(dict.fromkeys(known + new))
    return specs


def discover_plugins(errors: list[str] | None = None) -> None:
    """Once per process: import the plugins named in ``$CROSSAN_PLUGINS`` and those of installed packages'
    ``crossan.methods`` entry points (``[project.entry-points."crossan.methods"] name = "pkg.module"``).

    A plugin that cannot be imported raises :class:`ConfigError` naming it; with ``errors`` (a list), its
    message is appended there instead and the other plugins are still imported (``crossan methods`` lists
    what did load and says what did not). Called again, it imports nothing: ``errors`` gets the failures of
    the first call, and an unknown method's error names them (:func:`plugin_hint`)."""
    global _discovered
    if _discovered:
        if errors is not None:
            errors.extend(_failed)
        return
    _discovered = True
    for spec in os.environ.get(PLUGINS_ENV, "").split(os.pathsep):
        if spec.strip():
            _or_collect(errors, load_plugin, spec)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _or_collect(errors, _load_entry_point, ep)


def _load_entry_point(ep: Any) -> None:
    which = f"plugin {ep.value} (entry point {ep.name!r} of {ENTRY_POINT_GROUP!r})"
    before = set(METHODS)
    same = _imported_under_another_name(ep.module)
    if same is not None:  # its module's file was imported already, by path
        _note_loaded(ep.value, ep.name, same, before)
        return
    try:
        ep.load()
    except ConfigError as e:
        raise ConfigError(f"{which}: {e}") from None
    except Exception as e:  # noqa: BLE001 - one line naming the plugin
        raise ConfigError(f"{which}: importing it failed: {type(e).__name__}: {e}") from None
    _note_loaded(ep.value, ep.name, ep.module, before)


def _or_collect(errors: list[str] | None, load: Callable[[Any], None], what: Any) -> None:
    """``load(what)``; its :class:`ConfigError` raised, or appended to ``errors`` when that is a list (kept
    in :data:`_failed` either way)."""
    try:
        load(what)
    except ConfigError as e:
        _failed.append(str(e))
        if errors is None:
            raise
        errors.append(str(e))


def method_source(name: str) -> dict[str, str] | None:
    """For a plugin method: the module its row names, that module's file and the file's SHA-256, which
    results.json records (``method_source``) so that a suite does not reuse, nor ``crossan evaluate`` re-score
    without a warning, a run trained by other code under the same name. Only that one file is hashed (code
    it imports from elsewhere is not). None for crossan's own methods (``crossan_version`` covers those)."""
    row = get_method(name)
    if _is_builtin(row.module):
        return None
    module = sys.modules.get(row.module) or importlib.import_module(row.module)
    path = getattr(module, "__file__", None) or ""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else ""
    return {"module": row.module, "file": str(path), "sha256": digest}


def method_source_changes(name: str, results: dict[str, Any]) -> str:
    """Why the plugin code of ``name`` differs from the code a run's ``results`` record ("" when it does not,
    or for crossan's own methods)."""
    now = method_source(name)
    if now is None:
        return ""
    then = results.get("method_source")
    if not isinstance(then, dict) or not then.get("sha256"):
        return (f"the run does not record the code of plugin method {name!r} (trained before crossan recorded "
                f"it); its module is {now['file']} now")
    if then["sha256"] != now["sha256"]:
        return (f"plugin method {name!r} was trained with other code: {now['file']} has SHA-256 "
                f"{now['sha256'][:12]}… now, the run recorded {str(then['sha256'])[:12]}… (from {then.get('file')})")
    return ""


def method_origin(name: str) -> str:
    """Where method ``name`` comes from, for ``crossan methods``: ``built-in``, or ``plugin MODULE (FILE)``
    (with the entry point that named it, if one did); the module is not imported here."""
    row = get_method(name)
    if _is_builtin(row.module):
        return "built-in"
    path = getattr(sys.modules.get(row.module), "__file__", None) or "file unknown"
    entry_point = _loaded.get(row.module, ("", None, []))[1]
    via = "" if entry_point is None else f"; entry point {entry_point!r}"
    return f"plugin {row.module} ({path}{via})"


def method_names() -> list[str]:
    """Every method name, in table order."""
    return list(METHODS)


def cache_methods() -> list[str]:
    """Methods whose tower reads the layer-state cache (or the live encoders)."""
    return [m.name for m in METHODS.values() if m.reads_cache]


"""``crossan methods``: the table of methods as a researcher sees it, plugins included.

One line per method (:data:`crossan.methods.METHODS`): its name, its ``summary``, whether it reads the
layer-state cache and whether its backbones run at every step, and where it comes from (crossan itself, or a
plugin's module and file). With options (``crossan methods NAME`` or ``--options``), each key of the method's
config section: its type, default and allowed values, read from the options dataclass itself — the field
types, the defaults, ``RANGES`` and the first sentence of each field's docstring — so the listing cannot
drift from what ``crossan.config`` accepts. Nothing here imports torch: the built-in options dataclasses
(:mod:`crossan.towers.options`) are torch-free, so listing the built-in methods stays as cheap as ``--help``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from crossan.config import _hints, parse_value
from crossan.methods import Method, method_origin
from crossan.towers.options import Options, range_text


@dataclass
class OptionRow:
    """One key of a method's options section."""

    key: str
    """``NAME.field``."""
    type: str
    default: str
    """As a config file or an override writes it (``null``, ``true``, ``[]``)."""
    allowed: str
    """The choices of a ``Literal`` and the range of ``RANGES``; "" when the type says it all."""
    doc: str
    """The first sentence of the field's docstring ("" when it has none)."""


def option_rows(method: Method) -> list[OptionRow]:
    """The keys of ``method``'s options section, in field order (none for a method without options)."""
    cls = method.options
    if cls is None:
        return []
    try:
        hints = _hints(cls)
    except Exception:  # noqa: BLE001 - registration checked they resolve; a listing must not fail on it
        hints = {}
    defaults, docs = cls(), _field_docs(cls)
    ranges = {r[0]: r[1:] for r in getattr(cls, "RANGES", ())}
    rows = []
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        choices = _choices(tp)
        allowed = ", ".join(_value(c) for c in choices) if choices else ""
        if f.name in ranges:
            allowed = range_text(*ranges[f.name])
        rows.append(OptionRow(f"{method.name}.{f.name}", _type(tp), _value(getattr(defaults, f.name)), allowed,
                              docs.get(f.name, "")))
    return rows


def format_methods(methods: list[Method], options: bool = False) -> str:
    """The listing: a table of ``methods``; with ``options``, each method followed by its option keys."""
    if not options:
        rows = [("method", "summary", "reads cache", "runs backbone", "from")]
        rows += [(m.name, m.summary or "-", _yes(m.reads_cache), _yes(m.runs_backbone), method_origin(m.name))
                 for m in methods]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
        return "\n".join(lines) + "\n\noptions of a method: crossan methods NAME (of all: crossan methods --options)"
    blocks = []
    for m in methods:
        reads = ["reads the cache"] * m.reads_cache + ["runs its backbones"] * m.runs_backbone
        head = f"{m.name}: {m.summary or '(no summary)'} ({'; '.join([method_origin(m.name), *reads])})"
        rows = option_rows(m)
        if not rows:
            blocks.append(f"{head}\n  no options")
            continue
        table = [("key", "type", "default", "allowed")] + [(r.key, r.type, r.default, r.allowed) for r in rows]
        widths = [max(len(t[i]) for t in table) for i in range(3)]
        lines = [head]
        for i, t in enumerate(table):
            lines.append(("  " + "  ".join(c.ljust(w) for c, w in zip(t[:3], widths)) + "  " + t[3]).rstrip())
            if i and rows[i - 1].doc:
                lines += textwrap.wrap(rows[i - 1].doc, 110, initial_indent="      ", subsequent_indent="      ")
        owner = next((c for c in type.mro(m.options) if "check" in vars(c)), Options)
        if owner is not Options and callable(vars(owner)["check"]):
            lines.append(f"  and rules between its keys ({owner.__qualname__}.check)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _choices(tp: Any) -> tuple[Any, ...]:
    """The values of a ``Literal`` type (also inside ``X | None``); () for any other type."""
    if get_origin(tp) is Literal:
        return get_args(tp)
    return tuple(v for a in get_args(tp) if get_origin(a) is Literal for v in get_args(a))


def _type(tp: Any) -> str:
    """A field type as the listing writes it: ``int``, ``float or null``, ``list[str]``, ``str`` for a choice."""
    if get_origin(tp) is Literal:  # the types of all its choices: Literal[0, "auto"] is "int or str"
        return " or ".join(dict.fromkeys("null" if a is None else type(a).__name__ for a in get_args(tp)))
    args = get_args(tp)
    if type(None) in args:  # X | None, Optional[X]
        return " or ".join(_type(a) for a in args if a is not type(None)) + " or null"
    if args:
        return f"{getattr(get_origin(tp), '__name__', str(get_origin(tp)))}[{', '.join(_type(a) for a in args)}]"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _value(value: Any) -> str:
    """A default as YAML writes it (``null``, ``true``, ``[]``, ``5e-05``; a string quoted where YAML would read
    it as something else: ``''``, ``'on'``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, str):
        # quoted where YAML would read it as something else ('', 'null', 'on', '1.0'), as a file must write it
        plain = value and value.strip() == value and parse_value(value) == value
        return value if plain else "'" + value.replace("'", "''") + "'"
    return str(value)


def _field_docs(cls: type) -> dict[str, str]:
    """Field → the first sentence of the string literal after it in its class body (the project's way to
    document a config key), over the class and its bases; {} where the source cannot be read."""
    docs: dict[str, str] = {}
    for klass in reversed(type.mro(cls)):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):  # defined in an interpreter session, or no file
            continue
        body = next((n.body for n in tree.body if isinstance(n, ast.ClassDef)), [])
        for node, nxt in zip(body, [*body[1:], None]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = _first_sentence(nxt.value.value)
    return docs


_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "cf.", "vs.", "approx.", "resp.", "fig.", "eq."})
"""Words ending in a full stop that end no sentence: "e.g. `x`" and "i.e. (...)" go on."""


def _first_sentence(text: str) -> str:
    """A docstring's first sentence on one line, ``literals`` in single backticks: up to the first full stop
    followed by a capital, a literal or a parenthesis, other than that of an abbreviation (``e.g.``)."""
    text = " ".join(text.split()).replace("``", "`")
    for match in re.finditer(r"(?<=\.)\s+(?=[A-Z`(])", text):
        if text[: match.start()].rsplit(" ", 1)[-1].lstrip("(`").lower() not in _ABBREVIATIONS:
            return text[: match.start()]
    return text


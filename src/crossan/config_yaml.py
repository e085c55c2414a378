"""crossan's YAML files (configs, suites) and ``key=value`` values: a strict loader, and errors that name the
file, line and column.

:class:`YAMLLoader` refuses a key repeated in one mapping and reads ``010`` as decimal; :func:`parse_yaml`
also returns the line of every mapping key, which :mod:`crossan.config` uses to say where a bad value was set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from crossan.errors import ConfigError


class DuplicateKeyError(yaml.YAMLError):
    """A key repeated in one YAML mapping (``yaml.safe_load`` would keep the last and drop the first)."""

    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"line {line}: key {key!r} appears twice in one mapping (first on line "
                         f"{first_line}); the second would silently replace the first, so merge them into "
                         "one")
        self.key, self.line, self.first_line = key, line, first_line


class YAMLLoader(yaml.SafeLoader):
    """The loader of crossan's YAML files (configs, suites) and ``key=value`` values: a SafeLoader that
    refuses a key repeated in one mapping (:class:`DuplicateKeyError`: a second ``train:`` block would
    otherwise replace the first), reads an integer written with leading zeros as decimal (``010`` is 10,
    as on the command line, where YAML 1.1 reads it as octal 8), and keeps a mapping key that YAML 1.1 reads
    as a boolean (``on``, ``off``, ``yes``, ``no``) as the text written: an error names ``on``, not ``True``."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if key_node.tag == "tag:yaml.org,2002:bool" and isinstance(key_node, yaml.ScalarNode):
                    key_node.tag = "tag:yaml.org,2002:str"  # a key ``on:``/``yes:`` is its text, not True
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                if first is not None:
                    raise DuplicateKeyError(key, line, first)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int | str:
        written = str(self.construct_scalar(node))
        text = written.replace("_", "")
        digits = text.lstrip("+-")
        if len(digits) > 1 and digits.startswith("0") and digits.isdigit():
            return int(text, 10)
        if ":" in text:  # YAML 1.1's base 60 ("1:30" = 90): the text, which a number key refuses
            return written
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # "0x_", "0b_": PyYAML's resolver takes them for ints its builder cannot read
            return written

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float | str:
        written = str(self.construct_scalar(node))
        if ":" in written:  # base 60 again ("1:30.5")
            return written
        try:
            return super().construct_yaml_float(node)
        except ValueError:
            return written

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:  # "2024-02-30" looks like a date and is none: the text, as written
            return str(self.construct_scalar(node))


YAMLLoader.add_constructor("tag:yaml.org,2002:int", YAMLLoader.construct_yaml_int)
YAMLLoader.add_constructor("tag:yaml.org,2002:float", YAMLLoader.construct_yaml_float)
YAMLLoader.add_constructor("tag:yaml.org,2002:timestamp", YAMLLoader.construct_yaml_timestamp)


def parse_yaml(text: str, where: str) -> tuple[Any, dict[str, int]]:
    """Parse ``text`` with :class:`YAMLLoader`: (the data, the line of each mapping key by dotted path).

    :class:`ConfigError` starting with ``where`` (``config file a.yaml``) for invalid YAML or a repeated key,
    naming its line."""
    loader = None
    try:
        loader = YAMLLoader(text)  # checks the characters first: a NUL (e.g. a UTF-16 file) is a YAMLError
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except DuplicateKeyError as e:
        raise ConfigError(f"{where}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to read") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None)
        if mark is None or not problem:
            hint = " (NUL characters: is it UTF-16? save it as UTF-8)" if "\x00" in text else ""
            raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}{hint}") from None
        context = getattr(e, "context", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}"
        raise ConfigError(f"{where} is not valid YAML: {at}: {problem}" + (f" ({context})" if context else "")
                          ) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, _key_lines(node)


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """The line of every mapping key under ``node`` by dotted path (``train.lr`` → 3)."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = f"{prefix}{key_node.value}"
                out.setdefault(key, key_node.start_mark.line + 1)
                out.update({k: v for k, v in _key_lines(value_node, f"{key}.").items() if k not in out})
    return out


def read_yaml_file(path: str | Path, what: str = "config file") -> tuple[Any, dict[str, int]]:
    """Read and parse a YAML file (:func:`parse_yaml`); :class:`ConfigError` naming ``what``, the file and
    the line for bytes that are not UTF-8, invalid YAML or a repeated key."""
    p = Path(path)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{what} {p} is not UTF-8 text: line {line} holds the byte 0x{raw[e.start]:02x} "
                          f"(offset {e.start}); save it as UTF-8") from None
    return parse_yaml(text, f"{what} {p}")

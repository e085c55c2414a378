"""crossan's error types: every error the ``crossan`` command reports as one line derives from
:class:`CrossanError`.

The classes live here, at the bottom of the import graph and free of torch, so that any module can raise
them and the CLI can catch them without importing the machinery that raises them. Each keeps the builtin
base it had (``ValueError``, ``RuntimeError``, ``FileNotFoundError``) so that existing ``except`` clauses
keep working. The modules where these errors arise re-export them (``crossan.config.ConfigError``,
``crossan.runs.RunError``, ``crossan.cache.CacheError``, ``crossan.serve.ServeError``).

Errors defined elsewhere that also derive from :class:`CrossanError`: ``crossan.data.synth.SynthError``.
"""

from __future__ import annotations


class CrossanError(Exception):
    """Bad input or an unusable file: the message names the file, line, item or config key at fault."""


class ConfigError(CrossanError, ValueError):
    """A configuration key is unknown or its value has the wrong type or range."""


class RunError(CrossanError, RuntimeError):
    """A run folder cannot be used as asked (exists already, missing files, another config or version)."""


class NonFiniteError(RunError):
    """Training produced a non-finite loss, item table or weights: nothing of that epoch is kept."""


class ServeError(RunError):
    """A run cannot serve as asked: bad history, unknown items, incompatible or incomplete run folder."""


class UnreadableItemsError(ServeError):
    """New (cold-start) items with no readable content of the run's modalities: every file corrupt, marked
    missing under ``cache.on_corrupt=missing``, and no title. Embedded, they would be a constant vector."""

    def __init__(self, items: list[str], source: str = "") -> None:
        self.items, self.source = items, source
        super().__init__(f"{source + ': ' if source else ''}items {items[:10]}{' …' if len(items) > 10 else ''} "
                         "have no readable content of the run's modalities (every file corrupt, marked missing "
                         "under cache.on_corrupt=missing, and no other modality): there is nothing to embed them "
                         "from; nothing was stored")


class UnknownItemError(ServeError):
    """Item ids that are neither training items nor extra items of the run (``unknown`` lists them)."""

    def __init__(self, message: str, unknown: list[str]) -> None:
        super().__init__(message)
        self.unknown = unknown


class WriteError(CrossanError, OSError):
    """A file could not be written (disk full, read-only file system, a file where a folder should be); the
    message names the file, and whatever that path held before is left as it was."""


class MissingPackageError(CrossanError, ImportError):
    """A package that a setting needs is not installed (the ``offline`` preset's weight packages come with the
    ``offline-text`` / ``offline-media`` extras); the message names the package, the extra and the setting that
    avoids it."""


class CacheError(CrossanError, RuntimeError):
    """The layer-state cache cannot be used or built as asked."""


class CacheMissingError(CacheError, FileNotFoundError):
    """No completed cache for a modality; the message says which ``crossan cache`` command builds it."""


class CacheMismatchError(CacheError):
    """A completed cache was built under other settings; ``differences`` lists each differing field."""

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences

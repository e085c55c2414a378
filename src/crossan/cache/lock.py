"""One builder at a time: ``crossan cache`` holds an exclusive ``flock`` on a lock file in the cache folder
while it builds (or joins) a modality.

Two ``crossan cache`` processes on one dataset used to race for the same ``<modality>.partial`` folder
(one died on a temporary file the other had moved). Now the second one prints that it waits, for whom
(the holder's pid, written into the lock file), and blocks until the first finishes; it then finds the
cache complete and reports ``up to date`` (or resumes what the first left unfinished). Shards of one
build lock their own shard only, so they still run side by side. The lock files (``.<modality>.lock``,
``.<modality>.shard-<i>-of-<n>.lock``) stay in the folder: removing a lock file that another process may
be about to lock would let two builders in. The kernel releases a lock when its holder exits, killed or
not. Where ``fcntl`` does not exist (Windows) there is no lock. A folder where the lock file cannot be created
or opened for writing (a read-only file system, no write permission) raises :class:`ReadOnlyFolderError`,
naming the folder: a caller that only reads (an up-to-date cache) goes on without the lock.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crossan.errors import CrossanError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
"""What creating or opening a file for writing in a read-only folder (or file system) raises."""


class ReadOnlyFolderError(CrossanError, OSError):
    """The lock file ``path`` of ``what`` cannot be written: its folder is read-only (``reason``: the system's
    word for it)."""

    def __init__(self, path: Path, what: str, reason: str, code: int = errno.EROFS) -> None:
        self.folder, self.what, self.reason = path.parent, what, reason
        # EACCES / EPERM in a folder this user may write: the lock file is another user's, not the folder's fault
        self.folder_read_only = code == errno.EROFS or not (path.exists() and os.access(path.parent, os.W_OK))
        if not self.folder_read_only:  # a writable folder whose lock file is not ours (another user made it)
            super().__init__(f"cannot open the lock file {path} of {what} for writing ({reason}); it may belong "
                             "to another user: give this one write access to it")
            return
        super().__init__(f"the folder {path.parent} is read-only ({reason}): cannot take the lock {path.name} of "
                         f"{what} there; make the folder writable")


def lock_path(root: Path, modality: str, shard: int | None = None, num_shards: int = 1) -> Path:
    """The lock file of a modality's build (or of one shard of it) in cache folder ``root``."""
    if shard is None:
        return root / f".{modality}.lock"
    return root / f".{modality}.shard-{shard}-of-{num_shards}.lock"


_HELD: set[str] = set()
"""The lock files this process holds exclusively (:func:`build_lock`): its own :func:`read_lock` of one passes
(flock would make it wait for itself)."""


@contextmanager
def read_lock(path: Path, what: str) -> Iterator[None]:
    """Hold a shared lock on ``path`` while a cache is read: a builder (:func:`build_lock`, exclusive) that is
    installing or re-recording it is waited for, so that the manifest and arrays read belong to one build. Many
    readers hold it at once. Where the lock file cannot be opened (a read-only folder: no builder can write
    there either) or this process builds it itself, there is nothing to wait for."""
    if fcntl is None or str(path) in _HELD:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            yield
            return
    try:
        _acquire(fd, fcntl.LOCK_SH, "{what}: a crossan cache process (pid {pid}) is writing it; waiting for it to "
                                    "finish before reading (lock {path})", what=what, path=path)
        yield
    finally:
        os.close(fd)


def _acquire(fd: int, mode: int, waiting: str, **names: object) -> None:
    """``flock(fd, mode)``; when another process holds it, print ``waiting`` (formatted with ``names`` and the
    holder's ``pid`` from the lock file) on stderr first, then wait."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        print(waiting.format(pid=pid, **names), file=sys.stderr, flush=True)
        fcntl.flock(fd, mode)


@contextmanager
def build_lock(path: Path, what: str, holder: str = "crossan cache process",
               doing: str = "building it") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the duration; if another process holds it, say so on stderr
    (naming ``what``, the ``holder``'s kind and pid, and what it is ``doing``) and wait for it."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno in READ_ONLY_ERRNOS:
            raise ReadOnlyFolderError(path, what, e.strerror or str(e), e.errno) from None
        raise
    try:
        _acquire(fd, fcntl.LOCK_EX, "{what}: another {holder} (pid {pid}) is {doing}; waiting for it to finish "
                                    "(lock {path})", what=what, holder=holder, doing=doing, path=path)
        try:  # who holds it, for the next process's message; the lock itself holds without it (a full disk)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        _HELD.add(str(path))
        try:
            yield
        finally:
            _HELD.discard(str(path))
    finally:
        os.close(fd)  # releases the lock

"""Advisory lock preexec: hold an ``flock`` on a path while the task runs."""

from __future__ import annotations

import logging
import os
from types import TracebackType
from typing import Any, Union

from ._platform import logger, require_posix

__all__ = ["AdvisoryLock"]

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

#: Descriptors holding a lock in this process: forked children close their
#: copies so that the lock ends with the task, not with its children.
_held: set[int] = set()


def _after_fork_in_child() -> None:
    for fd in _held:
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _HeldLock:
    """The lock for one task: taken on enter, released on exit."""

    def __init__(self, path: str | bytes, shared: bool, blocking: bool) -> None:
        self._path = path
        self._shared = shared
        self._blocking = blocking
        self._fd: int | None = None

    def __enter__(self) -> _HeldLock:
        import fcntl

        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            operation = fcntl.LOCK_SH if self._shared else fcntl.LOCK_EX
            if not self._blocking:
                operation |= fcntl.LOCK_NB
            fcntl.flock(fd, operation)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _held.add(fd)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("worker %d holds the lock on %r", os.getpid(), self._path)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            _held.discard(fd)
            os.close(fd)  # closing the only descriptor releases the lock


class AdvisoryLock:
    """Preexec: hold an ``flock(2)`` on ``path`` while each task runs.

    Workers of ``js.replace_preexec(AdvisoryLock(path))`` take an exclusive
    lock (``shared=True``: a shared one) on ``path`` before the task and
    release it when the task ends, so tasks on one path never overlap while
    tasks on different paths run in parallel.  The file is created if needed
    (mode ``0o666`` less the umask) and never removed or written.  A worker
    waits for the lock *after* taking its slot; with ``blocking=False`` it
    fails at once with ``BlockingIOError`` instead of waiting.

    The lock is advisory: it excludes only processes that also ``flock`` the
    same file.  It belongs to the worker's own open file description, so it
    is released when the task ends or the worker dies, whichever comes
    first.
    """

    __slots__ = ("_blocking", "_path", "_shared")

    def __init__(
        self, path: PathArg, *, shared: bool = False, blocking: bool = True
    ) -> None:
        require_posix("AdvisoryLock", "flock(2)")
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(
                f"path must be a str, bytes or os.PathLike, not {type(path).__name__}"
            )
        raw = os.fspath(path)
        if not raw:
            raise ValueError("path must not be empty")
        if (b"\0" if isinstance(raw, bytes) else "\0") in raw:  # type: ignore[operator]
            raise ValueError("path must not contain NUL")
        if os.path.isdir(raw):
            raise ValueError(f"path {raw!r} is a directory; flock a file instead")
        for name, value in (("shared", shared), ("blocking", blocking)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
        self._path: str | bytes = os.path.abspath(raw)
        self._shared = shared
        self._blocking = blocking

    @property
    def path(self) -> str | bytes:
        """The absolute path of the lock file."""
        return self._path

    @property
    def shared(self) -> bool:
        """Whether the lock is shared (``LOCK_SH``) rather than exclusive."""
        return self._shared

    def __call__(self) -> _HeldLock:
        """In the worker: the context manager that holds the lock."""
        return _HeldLock(self._path, self._shared, self._blocking)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._path, self._shared, self._blocking))

    def __repr__(self) -> str:
        return (
            f"AdvisoryLock({self._path!r}, shared={self._shared}, "
            f"blocking={self._blocking})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AdvisoryLock):
            return NotImplemented
        return (self._path, self._shared, self._blocking) == (
            other._path,
            other._shared,
            other._blocking,
        )

    def __hash__(self) -> int:
        return hash((AdvisoryLock, self._path, self._shared, self._blocking))


def _rebuild(path: str | bytes, shared: bool, blocking: bool) -> AdvisoryLock:
    obj = object.__new__(AdvisoryLock)
    obj._path = path
    obj._shared = shared
    obj._blocking = blocking
    return obj

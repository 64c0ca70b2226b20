"""Slot pools: where the tokens that bound concurrency live.

A slot is a token: one byte in a pipe, exactly as in GNU Make's jobserver.
Taking a slot reads one byte; giving it back writes the same byte.  Every
process that shares a pool (the creator, its workers, their workers, ...)
holds descriptors on the same pipe, so the limit is shared without any
coordinating process or thread.

Tokens a process has taken and not yet given back sit in that process's
*ledger* (a ``collections.deque`` of token bytes).  Two operations move a
token between the pipe and the ledger, and both are written so that a Python
signal handler (``KeyboardInterrupt`` from SIGINT, or anything raised by a
timer signal) cannot run between the system call and the ledger update:

* ``take``: ``ledger.extend(map(os.read, ...))`` -- the read and the append
  both happen inside one C-level call, with no bytecode boundary between them
  at which CPython would run a pending signal handler.
* ``give``: ``deque(map(os.write, ..., islice(iter(ledger.pop, None), 1)))``
  -- pop and write likewise happen inside one C-level call.

So a token is always either in the pipe or in exactly one ledger, whichever
exception unwinds the caller.  (This leans on CPython running signal
handlers only between bytecodes; ``os.read``/``os.write`` run them only on
EINTR, which for these non-blocking descriptors means nothing was
transferred.)
"""

from __future__ import annotations

import collections
import itertools
import os
from typing import Any, Callable

__all__ = ["Ledger", "PipePool", "SlotPool"]

Ledger = collections.deque[bytes]

#: Linux's fcntl command to resize a pipe (not exported by every Python).
_F_SETPIPE_SZ = 1031
#: The byte our own pools use for a token (the same as GNU Make's).
TOKEN = b"+"


def _set_nonblocking_cloexec(fd: int) -> None:
    os.set_blocking(fd, False)
    os.set_inheritable(fd, False)


class SlotPool:
    """A pool of tokens, one per slot, shared by every process that uses it.

    Subclasses provide ``read_fd`` (readable when a token may be free) and
    ``write_fd``; both are non-blocking and close-on-exec in this process.
    """

    #: How this pool came to be, for ``repr``: "pipe" (our own), or a Make form.
    kind = "pipe"
    #: Total slots when this process knows it (it does for pools it created).
    size: int | None = None

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._closed = False

    def take(self, ledger: Ledger) -> bool:
        """Move one free token into ``ledger``; ``False`` if none is free now."""
        before = len(ledger)
        try:
            ledger.extend(map(os.read, (self.read_fd,), (1,)))
        except (BlockingIOError, InterruptedError):
            return False
        if len(ledger) == before:  # pragma: no cover - extend always appends
            return False
        if not ledger[-1]:
            ledger.pop()
            raise RuntimeError("the slot pool's pipe was closed by every writer")
        return True

    def give(self, ledger: Ledger) -> None:
        """Write one token from ``ledger`` back to the pool."""
        collections.deque(
            map(
                os.write,
                (self.write_fd,),
                itertools.islice(iter(ledger.pop, None), 1),
            ),
            maxlen=0,
        )

    def close(self) -> None:
        """Close this process's descriptors on the pool (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self._closed

    def child_reducer(self) -> tuple[Callable[..., SlotPool], tuple[Any, ...]]:
        """How to rebuild this pool in a child launched by a start method."""
        from ._launch import share_fd_with_child

        return (
            _rebuild_pool,
            (
                type(self),
                share_fd_with_child(self.read_fd),
                share_fd_with_child(self.write_fd),
                self.size,
            ),
        )

    def __reduce__(self) -> tuple[Callable[..., SlotPool], tuple[Any, ...]]:
        return self.child_reducer()


class PipePool(SlotPool):
    """A pool this process created: a private pipe holding ``slots`` tokens."""

    kind = "pipe"

    def __init__(self, slots: int) -> None:
        read_fd, write_fd = os.pipe()
        try:
            _set_nonblocking_cloexec(read_fd)
            _set_nonblocking_cloexec(write_fd)
            if slots > 4096:
                _grow_pipe(write_fd, slots)
            _write_tokens(write_fd, TOKEN * slots)
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        super().__init__(read_fd, write_fd)
        self.size = slots


def _grow_pipe(fd: int, capacity: int) -> None:
    import fcntl

    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, capacity)
    except OSError as exc:
        raise ValueError(
            f"slots={capacity} is more than a pipe can hold on this system ({exc})"
        ) from None


def _write_tokens(fd: int, tokens: bytes) -> None:
    view = memoryview(tokens)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            raise ValueError(
                f"slots={len(tokens)} is more than a pipe can hold on this system"
            ) from None
        view = view[written:]


def _rebuild_pool(
    cls: type, read_ref: Any, write_ref: Any, size: int | None
) -> SlotPool:
    from ._launch import fd_from_parent

    pool: SlotPool = SlotPool.__new__(cls)
    SlotPool.__init__(pool, fd_from_parent(read_ref), fd_from_parent(write_ref))
    os.set_inheritable(pool.read_fd, False)
    os.set_inheritable(pool.write_fd, False)
    pool.size = size
    return pool

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

Pools, by where their tokens live:

* ``PipePool``: an anonymous pipe this process created.
* ``FifoPool``: a named pipe (FIFO) this process created in a private
  directory, so that programs can also join it by path (the FIFO form of
  GNU Make's protocol).  Removed when its creator closes it.
* ``MakePool``: GNU Make's pool (or any pool advertised the same way),
  joined from ``MAKEFLAGS`` by ``_makeflags``.

Blocking modes.  Every descriptor a pool reads from is an *open file
description of this library's own*: created here (``PipePool``,
``FifoPool``), or reopened privately from an inherited descriptor
(``/proc/self/fd/N`` on Linux, the FIFO's path for the FIFO form).  So it
can be non-blocking without changing the mode of anybody else's descriptor
-- GNU Make's protocol says the read end it shares must stay blocking.
Programs we advertise a pool to get fresh, blocking descriptions of their
own (``_advertise``).  Writes are of one byte into a pipe that always has
room for every token, so they never block in either mode.

The implicit token.  A process that GNU Make started as a job already holds
one slot: the job's own.  ``MakePool`` represents it as ``b""`` in a ledger
(``os.write`` of ``b""`` would write nothing, so ``give`` routes it back to
``_IMPLICIT`` instead).  It belongs to the *process*: one per process, held
in the process-global ``_IMPLICIT`` deque, shared by every ``MakePool`` on
that jobserver in this process, and never available in a forked child
(cleared at fork) or in a pool rebuilt in a spawned child.
"""

from __future__ import annotations

import collections
import itertools
import os
import stat
import sys
import threading
import weakref
from typing import Any, Callable

from ._forkhooks import run_in_forked_children
from ._log import get_logger
from ._signals import DeferSignals

__all__ = ["FifoPool", "Ledger", "MakePool", "PipePool", "SlotPool"]

logger = get_logger("jobserver.make")

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
    ``write_fd``; both are close-on-exec in this process and, except in
    ``MakePool``'s no-``/proc`` fallback, non-blocking descriptions of our own.
    """

    #: How this pool came to be, for ``repr``: "pipe" (our own), or a Make form.
    kind = "pipe"
    #: Total slots when this process knows it (it does for pools it created).
    size: int | None = None
    #: A path that opens this pool (a FIFO), if it has one.
    fifo_path: str | None = None
    #: The process that opened the pool's descriptors (``PipePool`` and
    #: ``FifoPool`` made the pipe, ``MakePool`` opened its own descriptions
    #: of Make's), which closes them if the pool is dropped unclosed; 0 for a
    #: pool rebuilt from descriptors another process passed on.
    _owner = 0

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._closed = False

    def __del__(self) -> None:
        # Normally the resource set closes its pool.  One that never got
        # that far (a Jobserver constructor cut short by an interrupt) must
        # not leave the pipe it just made open for good.
        if self._owner == os.getpid() and not getattr(self, "_closed", True):
            self.close()

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
                self._child_state(),
            ),
        )

    def _child_state(self) -> dict[str, Any]:
        """Attributes (beyond descriptors and size) a rebuilt pool needs."""
        return {}

    def _rebuilt(self, state: dict[str, Any]) -> None:
        """Restore ``_child_state()`` in a pool rebuilt in a child."""

    def __reduce__(self) -> tuple[Callable[..., SlotPool], tuple[Any, ...]]:
        return self.child_reducer()


class PipePool(SlotPool):
    """A pool this process created: a private pipe holding ``slots`` tokens."""

    kind = "pipe"

    def __init__(self, slots: int) -> None:
        # Signals deferred until the pipe belongs to the pool: a handler
        # raising right after os.pipe() would leak both ends.
        with DeferSignals():
            read_fd, write_fd = os.pipe()
            _fill_and_own(self, read_fd, write_fd, slots, nonblocking=True)


def _fill_and_own(
    pool: SlotPool, read_fd: int, write_fd: int, slots: int, nonblocking: bool
) -> None:
    """Put ``slots`` tokens into a pipe this process just made and make it
    ``pool``'s own (closed if the pool is dropped unclosed); on failure,
    close both ends.  Call with signals deferred."""
    try:
        if nonblocking:
            _set_nonblocking_cloexec(read_fd)
            _set_nonblocking_cloexec(write_fd)
        if slots > 4096:
            _grow_pipe(write_fd, slots)
        _write_tokens(write_fd, TOKEN * slots)
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    SlotPool.__init__(pool, read_fd, write_fd)
    pool._owner = os.getpid()
    pool.size = slots


def _grow_pipe(fd: int, capacity: int) -> None:
    import fcntl

    if capacity > 2**31 - 1:
        # fcntl would truncate it to a C int (and the tokens would not fit
        # in memory): say so before anything is allocated.
        raise ValueError(f"slots={capacity} is more than a pipe can hold")
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
    cls: type,
    read_ref: Any,
    write_ref: Any,
    size: int | None,
    state: dict[str, Any] | None = None,
) -> SlotPool:
    from ._launch import fd_from_parent

    pool: SlotPool = SlotPool.__new__(cls)
    SlotPool.__init__(pool, fd_from_parent(read_ref), fd_from_parent(write_ref))
    os.set_inheritable(pool.read_fd, False)
    os.set_inheritable(pool.write_fd, False)
    pool.size = size
    pool._rebuilt(state or {})
    return pool


# --- descriptors of our own on somebody else's pipe ----------------------------

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def same_pipe(fd_a: int, fd_b: int) -> bool:
    """Whether two descriptors are ends of one pipe or FIFO."""
    a, b = os.fstat(fd_a), os.fstat(fd_b)
    return (
        stat.S_ISFIFO(a.st_mode)
        and stat.S_ISFIFO(b.st_mode)
        and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    )


def reopen(fd: int, flags: int) -> int | None:
    """A new open file description of the pipe behind ``fd``, or ``None``.

    Linux only (``/proc/self/fd/N`` opens the pipe itself, not a duplicate of
    the descriptor), so the new description's ``O_NONBLOCK`` is its own.  The
    result is close-on-exec.  ``None`` where that is not possible.
    """
    try:
        new = os.open(f"/proc/self/fd/{fd}", flags | _O_CLOEXEC)
    except OSError:
        return None
    try:
        if same_pipe(fd, new):
            return new
    except OSError:
        pass
    os.close(new)
    return None


def open_fifo(path: str, *, blocking: bool) -> tuple[int, int]:
    """Open both ends of the FIFO at ``path``; never waits for a peer.

    Raises ``OSError`` (``ENXIO``, ``EACCES``, ...) or ``ValueError`` when
    ``path`` is not a FIFO.  Both descriptors are close-on-exec.
    """
    read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _O_CLOEXEC)
    try:
        if not stat.S_ISFIFO(os.fstat(read_fd).st_mode):
            raise ValueError(f"{path!r} is not a FIFO")
        # We are a reader, so opening for writing cannot fail with ENXIO.
        write_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | _O_CLOEXEC)
        try:
            if not same_pipe(read_fd, write_fd):  # pragma: no cover - a race
                raise ValueError(f"{path!r} changed while being opened")
            if blocking:
                os.set_blocking(read_fd, True)
                os.set_blocking(write_fd, True)
        except BaseException:
            os.close(write_fd)
            raise
    except BaseException:
        os.close(read_fd)
        raise
    return read_fd, write_fd


def _bytes_waiting(fd: int) -> int:
    """How many bytes a pipe holds right now (``FIONREAD``)."""
    import array
    import fcntl
    import termios

    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    except OSError:
        return 1  # unknown: let the read decide
    return int(buf[0])


# --- the implicit token ------------------------------------------------------

#: This process's implicit token while it is free (``[b""]``), else empty.
_IMPLICIT: Ledger = collections.deque()
#: "unclaimed" (may still be claimed), "claimed" (for ``_implicit_auth``) or
#: "none" (a forked or multiprocessing child: it never had one).
_implicit_state = "unclaimed"
_implicit_auth: str | None = None
_implicit_pid = 0
#: Two threads creating Jobservers at once must not both claim it.
_implicit_lock = threading.Lock()
#: The process that imported this module: a process forked from it (pid
#: differs) never had an implicit token, even before the at-fork hook below
#: was registered (on first use: ``_forkhooks``).
_import_pid = os.getpid()


def claim_implicit(auth: str) -> bool:
    """Whether this process owns the implicit token of the jobserver ``auth``.

    The first call in a process that was started by ``exec`` (not forked,
    not started by ``multiprocessing``) claims it for ``auth``; every later
    call, from any pool, shares that one token.
    """
    global _implicit_state, _implicit_auth, _implicit_pid
    # Only now is there something for a forked child to forget.
    run_in_forked_children(_forget_implicit_after_fork)
    with _implicit_lock:
        if _implicit_state == "unclaimed":
            # A process multiprocessing started has it imported already.
            multiprocessing = sys.modules.get("multiprocessing")
            if os.getpid() != _import_pid or (
                multiprocessing is not None
                and multiprocessing.parent_process() is not None
            ):
                _implicit_state = "none"
            else:
                _implicit_state = "claimed"
                _implicit_auth = auth
                _implicit_pid = os.getpid()
                _IMPLICIT.append(b"")
                logger.debug("holding the implicit token of jobserver %s", auth)
    return (
        _implicit_state == "claimed"
        and _implicit_auth == auth
        and _implicit_pid == os.getpid()
    )


def renounce_implicit() -> bool:
    """Record that this process owns no implicit token (it was started by a
    program that took no slot for it); ``False``, for ``MakePool(implicit=)``.

    Only an unclaimed token can be renounced: a process that already runs
    on its implicit token keeps it.
    """
    global _implicit_state
    # Only now is there something for a forked child to forget.
    run_in_forked_children(_forget_implicit_after_fork)
    with _implicit_lock:
        if _implicit_state == "unclaimed":
            _implicit_state = "none"
            logger.debug("this process owns no implicit token")
    return False


def _forget_implicit_after_fork() -> None:  # pragma: no cover - forked child
    global _implicit_state, _implicit_lock
    _implicit_lock = threading.Lock()
    _implicit_state = "none"
    _IMPLICIT.clear()


def give_token(ledger: Ledger, write_fd: int) -> None:
    """Give the last token of ``ledger`` back: to the pipe, or, for the
    implicit token (``b""``), back to this process (signal-atomic)."""
    if ledger[-1] == b"":
        if _implicit_pid == os.getpid() and _implicit_state == "claimed":
            _IMPLICIT.extend(itertools.islice(iter(ledger.pop, None), 1))
        else:  # pragma: no cover - a ledger copied into a forked child
            ledger.pop()
        return
    collections.deque(
        map(os.write, (write_fd,), itertools.islice(iter(ledger.pop, None), 1)),
        maxlen=0,
    )


# --- pools ---------------------------------------------------------------------


class MakePool(SlotPool):
    """A pool somebody advertised in ``MAKEFLAGS``, GNU Make usually.

    ``read_fd``/``write_fd`` are descriptions of our own (see the module
    docstring), except with ``shared_read`` (no ``/proc``): then the read
    end is a duplicate of the inherited one and ``take`` reads only when the
    pipe holds a byte, or when the description is non-blocking anyway.
    With ``implicit`` the process's implicit token is taken first.
    """

    def __init__(
        self,
        read_fd: int,
        write_fd: int,
        *,
        form: str,
        auth: str,
        fifo_path: str | None = None,
        size: int | None = None,
        implicit: bool = False,
        shared_read: bool = False,
    ) -> None:
        super().__init__(read_fd, write_fd)
        # The descriptors are ours (opened on Make's pipe or FIFO), so a pool
        # dropped unclosed closes them (an interrupted Jobserver constructor).
        self._owner = os.getpid()
        self.kind = f"make-{form}"
        self.auth = auth
        self.fifo_path = fifo_path
        self.size = size
        self._implicit = implicit
        self._shared_read = shared_read

    def take(self, ledger: Ledger) -> bool:
        if self._implicit and _IMPLICIT and _implicit_pid == os.getpid():
            try:
                # Pop and append inside one C call, like the pipe read.
                ledger.extendleft(itertools.islice(iter(_IMPLICIT.pop, None), 1))
            except IndexError:  # pragma: no cover - emptied by a handler
                pass
            else:
                return True
        if (
            self._shared_read
            and os.get_blocking(self.read_fd)
            and _bytes_waiting(self.read_fd) < 1
        ):
            return False
        return super().take(ledger)

    def give(self, ledger: Ledger) -> None:
        give_token(ledger, self.write_fd)

    def _child_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "auth": self.auth,
            "fifo_path": self.fifo_path,
            "shared_read": self._shared_read,
        }

    def _rebuilt(self, state: dict[str, Any]) -> None:
        self.kind = state.get("kind", "make-fds")
        self.auth = state.get("auth", "")
        self.fifo_path = state.get("fifo_path")
        self._implicit = False  # the implicit token never leaves its process
        self._shared_read = bool(state.get("shared_read", False))


class FifoPool(SlotPool):
    """A pool this process created as a FIFO, joinable by path.

    The FIFO (mode 0600) lives alone in a fresh private directory (mode
    0700); the creating process removes both when it closes the pool, when
    the pool is garbage-collected, or at interpreter exit, whichever is
    first.  Children that received the pool never remove it.
    """

    kind = "fifo"

    def __init__(self, slots: int) -> None:
        import shutil
        import tempfile

        directory = tempfile.mkdtemp(prefix="jobserver-")
        path = os.path.join(directory, "fifo")
        try:
            os.chmod(directory, 0o700)
            os.mkfifo(path, 0o600)
            os.chmod(path, 0o600)
            with DeferSignals():  # as in PipePool
                read_fd, write_fd = open_fifo(path, blocking=False)
                _fill_and_own(self, read_fd, write_fd, slots, nonblocking=False)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self.fifo_path = path
        self._finalizer: Any = weakref.finalize(
            self, _remove_private_dir, directory, os.getpid()
        )

    def close(self) -> None:
        super().close()
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()

    def _child_state(self) -> dict[str, Any]:
        return {"fifo_path": self.fifo_path}

    def _rebuilt(self, state: dict[str, Any]) -> None:
        self.fifo_path = state.get("fifo_path")
        self._finalizer = None


def _remove_private_dir(directory: str, creator: int) -> None:
    if os.getpid() != creator:
        return
    import shutil

    try:
        shutil.rmtree(directory)
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - somebody changed permissions
        logger.warning("could not remove the jobserver FIFO in %s: %s", directory, exc)

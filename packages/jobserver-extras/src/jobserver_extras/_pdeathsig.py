"""Parent-death signal: a worker dies when the process that launched it dies.

Two mechanisms, both set up in the worker by ``ParentDeathSignal()``:

* ``prctl(PR_SET_PDEATHSIG, signum)`` (through ``ctypes``): the kernel sends
  ``signum`` when the worker's parent *thread* exits.  Used when the worker's
  parent is the launching process and the launch came from that process's
  main thread (``fork`` and ``spawn`` launched from the main thread).  It
  survives ``exec``.
* A *lifeline*: every launching process keeps the write end of one private
  pipe open for as long as it lives; each worker gets the read end and asks
  the kernel (``O_ASYNC`` with ``F_SETOWN``/``F_SETSIG``) to send it
  ``signum`` when the last write end closes, that is, when the launching
  process is gone however it ended.  This covers what ``prctl`` cannot: the
  ``forkserver`` start method (the worker's parent is the fork server, which
  outlives the launcher), launches from other threads, and a launcher that
  died before the worker got as far as its preexec.

The lifeline's write end never reaches another process: it is close-on-exec,
is not passed to spawned children, and an at-fork hook closes it in forked
ones.  Each worker checks, after arming, whether its launcher is already
gone, and if so signals itself.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import threading
from typing import Any, NamedTuple

from . import _fds
from ._platform import UnsupportedPlatform, logger, require_linux

__all__ = ["ParentDeathSignal"]

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
_F_SETSIG = 10  # fcntl.F_SETSIG on Linux (every architecture); 3.9 lacks the name


class _Launch(NamedTuple):
    """What a worker knows about the process that launched it."""

    launcher: int  # pid of the launching process
    main_thread: bool  # the launch ran on the launcher's main thread
    lifeline: int | None  # read end of the launcher's lifeline, or None
    owner: int  # pid of the process this record describes (the worker)


_lock = threading.Lock()
#: This process's lifeline (read end, write end), made when first needed.
_own: tuple[int, int] | None = None
#: A ParentDeathSignal exists here, so forks need the lifeline.
_wanted = False
#: Set in the parent just before a fork, per thread (threads may fork at
#: once): ``.launch`` is (pid, the forking thread is the main thread).
_forking = threading.local()
#: Set in a forked child: its launch as seen through the fork.
_fork_launch: _Launch | None = None
#: Lifeline read ends from launchers that this process holds.
_inherited: set[int] = set()


def _ensure_own_lifeline() -> tuple[int, int]:
    global _own
    with _lock:
        if _own is None:
            _own = os.pipe()  # both ends close-on-exec
        return _own


def _before_fork() -> None:
    _forking.launch = (
        os.getpid(),
        threading.current_thread() is threading.main_thread(),
    )
    if _wanted:
        try:
            _ensure_own_lifeline()
        except OSError:  # out of descriptors: the child falls back to prctl
            pass


def _after_fork_in_child() -> None:
    global _own, _fork_launch, _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    for fd in _inherited:
        _close_quietly(fd)
    _inherited.clear()
    read_fd: int | None = None
    own, _own = _own, None
    if own is not None:
        read_fd, write_fd = own
        _close_quietly(write_fd)
        _inherited.add(read_fd)
    forking: tuple[int, bool] | None = getattr(_forking, "launch", None)
    if forking is None:  # pragma: no cover - before hooks always run first
        _fork_launch = None
        return
    _fork_launch = _Launch(forking[0], forking[1], read_fd, os.getpid())


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _libc_prctl() -> Any:
    """The C library's ``prctl``, or ``None`` where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    return prctl


def _set_pdeathsig(signum: int) -> None:
    prctl = _libc_prctl()
    if prctl is None:  # pragma: no cover - checked at construction
        raise UnsupportedPlatform("prctl(2) is not available in this process")
    zero = ctypes.c_ulong(0)
    if prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signum), zero, zero, zero) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")


def current_pdeathsig() -> int:
    """The parent-death signal of this process (0: none), via ``prctl``."""
    prctl = _libc_prctl()
    if prctl is None:
        raise UnsupportedPlatform("prctl(2) is not available in this process")
    value = ctypes.c_int(0)
    zero = ctypes.c_ulong(0)
    if prctl(PR_GET_PDEATHSIG, ctypes.byref(value), zero, zero, zero) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_GET_PDEATHSIG): {os.strerror(errno)}")
    return int(value.value)


def _arm_lifeline(fd: int, signum: int) -> bool:
    """Ask for ``signum`` when ``fd``'s writers are gone; ``True`` if they are."""
    import fcntl

    fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(fd, getattr(fcntl, "F_SETSIG", _F_SETSIG), signum)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_ASYNC)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))  # nobody ever writes: readiness means EOF


def _signal_self(signum: int, why: str) -> None:
    logger.debug("worker %d: %s; sending itself signal %d", os.getpid(), why, signum)
    os.kill(os.getpid(), signum)


def _check_signum(signum: Any) -> int:
    if isinstance(signum, bool) or not isinstance(signum, int):
        raise TypeError(f"signum must be a signal number, not {type(signum).__name__}")
    valid = getattr(signal, "valid_signals", None)
    if signum <= 0 or (valid is not None and signum not in valid()):
        raise ValueError(f"signum must be a valid signal number, not {signum}")
    return int(signum)


class ParentDeathSignal:
    """Preexec: the worker receives ``signum`` when its launcher dies.

    ``js.replace_preexec(ParentDeathSignal())`` makes every worker of ``js``
    get ``signum`` (default ``SIGKILL``) as soon as the process that
    launched it exits, whatever the start method and however the launcher
    ended (``SIGKILL`` included).  With a catchable signal such as
    ``SIGTERM`` the task may clean up in a handler; without one the default
    action still ends it.  Linux only: elsewhere the constructor raises
    ``UnsupportedPlatform``.
    """

    __slots__ = ("_launch", "_signum")

    def __init__(self, signum: int = signal.SIGKILL) -> None:
        global _wanted
        self._signum = _check_signum(signum)
        self._launch: _Launch | None = None
        require_linux("ParentDeathSignal", "prctl(PR_SET_PDEATHSIG)")
        if _libc_prctl() is None:
            raise UnsupportedPlatform(
                "ParentDeathSignal needs prctl(2), which this C library lacks"
            )
        _ensure_own_lifeline()
        _wanted = True

    @property
    def signum(self) -> int:
        """The signal a worker receives when its launcher dies."""
        return self._signum

    def __repr__(self) -> str:
        try:
            name = signal.Signals(self._signum).name
        except ValueError:  # pragma: no cover - real-time signals
            name = str(self._signum)
        return f"ParentDeathSignal({name})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParentDeathSignal):
            return NotImplemented
        return self._signum == other._signum

    def __hash__(self) -> int:
        return hash((ParentDeathSignal, self._signum))

    def __reduce__(self) -> tuple[Any, ...]:
        if not _fds.spawning():
            # Pickled for some other purpose: the copy falls back to the
            # parent it finds when called.
            return (_rebuild, (self._signum, None))
        read_fd, _ = _ensure_own_lifeline()
        launch = (
            os.getpid(),
            threading.current_thread() is threading.main_thread(),
            _fds.fd_for_child(read_fd),
        )
        return (_rebuild, (self._signum, launch))

    def __call__(self) -> None:
        """In the worker: arrange for ``signum`` when the launcher dies."""
        pid = os.getpid()
        launch = self._launch
        if launch is None or launch.owner != pid:
            fork_launch = _fork_launch
            launch = (
                fork_launch
                if fork_launch is not None and fork_launch.owner == pid
                else None
            )
        _apply(self._signum, launch)


def _apply(signum: int, launch: _Launch | None) -> None:
    """Set the worker up; ``launch`` is ``None`` when its launch is unknown."""
    if launch is None:
        # Called outside a launch we saw (a plain pickle, a subprocess
        # preexec_fn): the current parent is all we know of.
        _set_pdeathsig(signum)
        return
    direct = launch.main_thread and os.getppid() == launch.launcher
    if direct:
        _set_pdeathsig(signum)
        if os.getppid() != launch.launcher:
            _signal_self(signum, "its launcher exited before prctl took effect")
            return
    if launch.lifeline is not None:
        if _arm_lifeline(launch.lifeline, signum):
            _signal_self(signum, "its launcher has already exited")
        return
    if not direct:
        raise RuntimeError(
            "ParentDeathSignal cannot watch this worker's launcher: it is not "
            "the parent (or launched from another thread) and no lifeline "
            "descriptor reached the worker"
        )


def _rebuild(signum: int, launch: tuple[int, bool, Any] | None) -> ParentDeathSignal:
    global _wanted
    obj = object.__new__(ParentDeathSignal)
    obj._signum = signum
    obj._launch = None
    if launch is not None:
        launcher, main_thread, reference = launch
        fd = _fds.fd_from_parent(reference)
        _inherited.add(fd)
        obj._launch = _Launch(launcher, main_thread, fd, os.getpid())
    _wanted = True
    return obj

"""Deferring signal handlers across the few steps that must not be split.

Python runs signal handlers (``KeyboardInterrupt`` for SIGINT, or whatever a
user's handler raises) between bytecodes of the main thread.  A handler that
raised between "token taken" and "worker tracked", or between "worker
reaped" and "token given back", would lose a slot or a child for good.
``DeferSignals`` blocks every blockable signal for the duration of such a
step, so a signal that arrives meanwhile stays pending in the kernel and its
handler runs right after the step, when the bookkeeping is whole again.

Remembering the previous mask is one C-level call
(``stack.extend(map(pthread_sigmask, ...))``), and so is restoring it, so a
handler that was already pending when the step began -- CPython runs it
inside ``pthread_sigmask`` itself, or at the next bytecode boundary --
cannot leave the mask blocked: ``__enter__`` undoes its own block before
letting that exception out.  The saved masks form a per-thread stack; a
child forked inside a step restores the outermost one (``outer_mask``)
before running user code.

Residual gap, documented in docs/design.md: in a program with several
threads, the kernel may deliver the signal to another thread, and Python
would still run the handler in the main thread at the next bytecode boundary.
"""

from __future__ import annotations

import collections
import itertools
import signal
import threading
from typing import Any

try:  # The C function: signal.pthread_sigmask wraps it and converts every
    # signal number to an enum member, which costs more than the system call.
    from _signal import pthread_sigmask as _sigmask  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    _sigmask = getattr(signal, "pthread_sigmask", None)

__all__ = ["DeferSignals", "outer_mask", "restore_in_child", "restore_outer_in_child"]

_HAVE_SIGMASK = _sigmask is not None
# Plain ints, not the signal module's enum members: pthread_sigmask touches
# every member of the set it is given, and small ints all live together,
# while enum members are scattered objects (each one a copy-on-write fault
# in a forking parent).
_ALL = (
    frozenset(
        int(signum)
        for signum in signal.valid_signals()
        if signum not in (signal.SIGKILL, signal.SIGSTOP)
    )
    if _HAVE_SIGMASK
    else frozenset()
)
_BLOCK = (int(signal.SIG_BLOCK),)
_NOTHING: tuple[frozenset[int]] = (frozenset(),)
_SETMASK = (int(signal.SIG_SETMASK),)

_local = threading.local()


def _stack() -> collections.deque[Any]:
    stack: collections.deque[Any] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = collections.deque()
    return stack


def _pop_and_restore(stack: collections.deque[Any]) -> None:
    # One C-level call: pop the saved mask and install it.
    collections.deque(
        map(_sigmask, _SETMASK, itertools.islice(iter(stack.pop, None), 1)),
        maxlen=0,
    )


class DeferSignals:
    """Context manager: block signals inside, restore the previous mask after."""

    __slots__ = ("_depth",)

    # __enter__ and __exit__ inline _stack and _pop_and_restore: this runs a
    # few times per submission, and every function a forking parent calls
    # costs it a copy-on-write page fault.

    def __enter__(self) -> None:
        if not _HAVE_SIGMASK:
            return
        stack: collections.deque[Any] | None = getattr(_local, "stack", None)
        if stack is None:
            stack = _local.stack = collections.deque()
        self._depth = depth = len(stack)
        try:
            # Record the current mask (blocking nothing), then block.  CPython
            # runs pending handlers inside pthread_sigmask itself, so either
            # call may raise; the first changes nothing, and after the second
            # the recorded mask is on the stack to be restored below.
            stack.extend(map(_sigmask, _BLOCK, _NOTHING))
            _sigmask(_BLOCK[0], _ALL)
        except BaseException:
            while len(stack) > depth:
                _pop_and_restore(stack)
            raise

    def __exit__(self, *exc: object) -> None:
        if not _HAVE_SIGMASK:
            return
        stack: collections.deque[Any] = _local.stack
        while len(stack) > self._depth:
            # One C-level call: pop the saved mask and install it.
            collections.deque(
                map(_sigmask, _SETMASK, itertools.islice(iter(stack.pop, None), 1)),
                maxlen=0,
            )


def outer_mask() -> Any:
    """The mask in force before the outermost active ``DeferSignals``."""
    stack = getattr(_local, "stack", None)
    return stack[0] if stack else None


def restore_outer_in_child() -> None:
    """``restore_in_child(outer_mask())`` in one call (forked workers)."""
    stack = getattr(_local, "stack", None)
    if stack:
        mask = stack[0]
        stack.clear()
        if mask is not None:
            _sigmask(signal.SIG_SETMASK, mask)


def restore_in_child(mask: Any) -> None:
    """In a freshly started worker: undo the parent's temporary blocking."""
    stack = getattr(_local, "stack", None)
    if stack:
        stack.clear()
    if _HAVE_SIGMASK and mask is not None:
        _sigmask(signal.SIG_SETMASK, mask)

"""Deferring signal handlers across the few steps that must not be split.

Python runs signal handlers (``KeyboardInterrupt`` for SIGINT, or whatever a
user's handler raises) between bytecodes of the main thread.  A handler that
raised between "token taken" and "worker tracked", or between "worker
reaped" and "token given back", would lose a slot or a child for good.
``DeferSignals`` blocks every blockable signal for the duration of such a
step, so a signal that arrives meanwhile stays pending in the kernel and its
handler runs right after the step, when the bookkeeping is whole again.

The mask saved on entry is kept in ``saved_mask`` so that a child forked
inside the step can restore it before running user code.

Residual gap, documented in docs/design.md: in a program with several
threads, the kernel may deliver the signal to another thread, and Python
would still run the handler in the main thread at the next bytecode boundary.
"""

from __future__ import annotations

import signal
from typing import Any

__all__ = ["DeferSignals", "saved_mask"]

_HAVE_SIGMASK = hasattr(signal, "pthread_sigmask")
_ALL = (
    signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
    if _HAVE_SIGMASK
    else set()
)

#: The signal mask in force before the innermost active ``DeferSignals``.
saved_mask: Any = None


class DeferSignals:
    """Context manager: block signals inside, restore the previous mask after."""

    __slots__ = ("_old",)

    def __init__(self) -> None:
        self._old: Any = None

    def __enter__(self) -> None:
        global saved_mask
        if _HAVE_SIGMASK:
            self._old = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL)
            saved_mask = self._old

    def __exit__(self, *exc: object) -> None:
        if _HAVE_SIGMASK:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old)


def restore_in_child(mask: Any) -> None:
    """In a freshly started worker: undo the parent's temporary blocking."""
    if _HAVE_SIGMASK and mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

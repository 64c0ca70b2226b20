"""Deterministic KeyboardInterrupts at the points where CPython runs signal
handlers (used by test_signal_safety.py; docs/reliability.md).

CPython runs a Python-level signal handler at the next "eval breaker" check
after the signal arrived, and one such check follows every call of a C
function.  A handler that raises there -- ``KeyboardInterrupt`` for SIGINT,
or anything a user's handler raises -- unwinds the caller right after that
C function did its work (read bytes, closed a descriptor, blocked signals).

``interrupt_after`` reproduces exactly that without timers: a profile hook
raises ``KeyboardInterrupt`` on the ``c_return`` event of the chosen C call.
Python propagates an exception from a profile hook from that very point (on
3.9 through 3.13), and unsets the hook.

While a thread blocks SIGINT (the library's ``DeferSignals``), no handler can
run there, except once right after the call that blocked it, for a signal
that arrived just before.  By default such points are skipped; pass
``deliverable_only=False`` to interrupt anywhere (for that one point).
"""

from __future__ import annotations

import contextlib
import dis
import os
import signal
import sys
from collections.abc import Iterator
from types import CodeType, FrameType
from typing import Any, Callable

Predicate = Callable[[FrameType, Any], bool]


class Injection:
    """Where the interrupt was raised (``where``), once it was."""

    def __init__(self) -> None:
        self.where: str | None = None
        self.seen = 0

    @property
    def fired(self) -> bool:
        return self.where is not None


def in_function(module: str, function: str, callee: str | None = None) -> Predicate:
    """A C call made directly by ``module.function`` (to ``callee``, if given)."""

    def match(frame: FrameType, arg: Any) -> bool:
        if frame.f_code.co_name != function:
            return False
        if frame.f_globals.get("__name__") != module:
            return False
        return callee is None or getattr(arg, "__name__", None) == callee

    return match


def in_package(package: str) -> Predicate:
    """Any C call made directly by code of ``package``."""

    def match(frame: FrameType, arg: Any) -> bool:
        name = frame.f_globals.get("__name__", "")
        return bool(name == package or name.startswith(package + "."))

    return match


def _deliverable() -> bool:
    return signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


@contextlib.contextmanager
def interrupt_after(
    predicate: Predicate,
    nth: int = 1,
    *,
    deliverable_only: bool = True,
    event: str = "c_return",
) -> Iterator[Injection]:
    """Raise ``KeyboardInterrupt`` right after the ``nth`` C call matching
    ``predicate`` returns (at most once), inside the ``with`` block.

    With ``event="call"``, at the entry of the ``nth`` Python function whose
    frame matches instead: CPython checks for pending signals there too
    (``RESUME`` from 3.11; the first instruction before), before the
    function's first line -- so no ``try`` inside it can catch the result.
    With ``event="backedge"``, at the ``nth`` backward jump of a loop (the
    third kind of check point) in a matching frame.  With ``event="opcode"``,
    before the ``nth`` instruction of a matching frame, whichever it is:
    CPython 3.9 and 3.10 check for signals before most instructions, so
    there a handler can raise between any two of them.
    """
    if event in ("backedge", "opcode"):
        with _interrupt_at_opcode(
            predicate, nth, deliverable_only, backedges_only=event == "backedge"
        ) as injection:
            yield injection
        return
    injection = Injection()
    owner = os.getpid()  # a forked worker inherits the hook: not there

    def profile(frame: FrameType, event_: str, arg: Any) -> None:
        if event_ != event or not predicate(frame, arg):
            return
        if os.getpid() != owner:
            sys.setprofile(None)
            return
        if deliverable_only and not _deliverable():
            return
        injection.seen += 1
        if injection.seen == nth:
            sys.setprofile(None)
            name = f"{frame.f_globals.get('__name__')}.{frame.f_code.co_name}"
            if event == "call":
                injection.where = f"the entry of {name}()"
            else:
                injection.where = (
                    f"{name}:{frame.f_lineno} after "
                    f"{getattr(arg, '__qualname__', arg)}()"
                )
            raise KeyboardInterrupt

    sys.setprofile(profile)
    try:
        yield injection
    finally:
        sys.setprofile(None)


#: Whether ``event="backedge"`` and ``event="opcode"`` work here: CPython
#: 3.12 and 3.13 (tracing rebuilt on sys.monitoring) do not reliably deliver
#: opcode events to a frame that turns them on at its "call" event.  Nor are sys.monitoring's
#: JUMP events a substitute there: an exception raised from their callback
#: leaves the function without reaching the ``except`` around the loop,
#: which a real signal at that back edge would reach.  The loops it reaches
#: are the same Python code on every version, so 3.9-3.11 cover them.
BACKEDGES_TRACEABLE = sys.version_info < (3, 12)

_BACKEDGES: dict[CodeType, frozenset[int]] = {}


def _backedges(code: CodeType) -> frozenset[int]:
    """Offsets of the jumps back to an earlier instruction in ``code``."""
    offsets = _BACKEDGES.get(code)
    if offsets is None:
        offsets = frozenset(
            instruction.offset
            for instruction in dis.get_instructions(code)
            if instruction.opname.startswith("JUMP_BACKWARD")
            or (
                instruction.opcode in dis.hasjabs
                and isinstance(instruction.argval, int)
                and instruction.argval <= instruction.offset
            )
        )
        _BACKEDGES[code] = offsets
    return offsets


@contextlib.contextmanager
def _interrupt_at_opcode(
    predicate: Predicate, nth: int, deliverable_only: bool, backedges_only: bool
) -> Iterator[Injection]:
    """``interrupt_after(..., event="backedge")`` and ``event="opcode"``: a
    trace hook with opcode events, armed in matching frames only."""
    injection = Injection()
    owner = os.getpid()

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event != "opcode" or injection.fired:
            return local
        if os.getpid() != owner:
            sys.settrace(None)
            return None
        if backedges_only and frame.f_lasti not in _backedges(frame.f_code):
            return local
        if deliverable_only and not _deliverable():
            return local
        injection.seen += 1
        if injection.seen == nth:
            sys.settrace(None)
            injection.where = (
                f"{'the loop of ' if backedges_only else ''}"
                f"{frame.f_globals.get('__name__')}."
                f"{frame.f_code.co_name}:{frame.f_lineno}"
                f"{'' if backedges_only else f' (offset {frame.f_lasti})'}"
            )
            raise KeyboardInterrupt
        return local

    def arm(frame: FrameType, event: str, arg: Any) -> Any:
        if event != "call" or injection.fired or not predicate(frame, None):
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return local

    sys.settrace(arm)
    try:
        yield injection
    finally:
        sys.settrace(None)

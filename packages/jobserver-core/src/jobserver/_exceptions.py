"""The exceptions a caller of jobserver can see."""

from __future__ import annotations

import sys

__all__ = [
    "Blocked",
    "CallbackRaised",
    "LostResult",
    "TimeLimitExceeded",
    "WorkerTraceback",
]


class Blocked(Exception):
    """A bounded wait ran out of time, or a launch gate kept refusing.

    Raised by ``Jobserver.submit`` (no slot in time), ``Future.result`` (no
    result in time) and the iterator of ``Jobserver.map`` (a result arrived
    later than the map's timeout).  Nothing is lost when it is raised: no slot
    is held and the work, if any was launched, keeps running.
    """


class LostResult(Exception):
    """A submission ended without delivering a result.

    The worker was killed (any signal, SIGSEGV included), called ``os._exit``,
    replaced itself with ``os.exec*``, or raised a ``BaseException`` that is
    not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``).  It is
    reported against exactly the one Future whose worker that was.

    ``pid`` is the worker's process id and ``returncode`` its exit status in
    the ``subprocess`` convention (negative: killed by that signal), when
    known.
    """

    def __init__(
        self,
        message: str = "the worker ended without delivering a result",
        *,
        pid: int | None = None,
        returncode: int | None = None,
    ) -> None:
        super().__init__(message)
        self.pid = pid
        self.returncode = returncode

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_rebuild_lost_result, (str(self), self.pid, self.returncode))


def _rebuild_lost_result(
    message: str, pid: int | None, returncode: int | None
) -> LostResult:
    return LostResult(message, pid=pid, returncode=returncode)


class CallbackRaised(Exception):
    """A callback registered with ``Future.when_done`` raised an ``Exception``.

    The original exception is ``__cause__``; ``seqno`` is the number that
    ``when_done`` returned for the callback.  The remaining callbacks are still
    pending: calling the method that raised this again (or any other method
    that runs callbacks) continues with them.  A ``BaseException`` that is not
    an ``Exception`` propagates from a callback unwrapped.
    """

    def __init__(self, seqno: int) -> None:
        super().__init__(seqno)
        self.seqno = seqno

    def __str__(self) -> str:
        cause = self.__cause__
        if cause is None:
            return f"callback seqno={self.seqno} raised"
        return f"callback seqno={self.seqno} raised {type(cause).__name__}: {cause}"

    def __repr__(self) -> str:
        return f"CallbackRaised(seqno={self.seqno})"


class WorkerTraceback(Exception):
    """The formatted traceback of an exception raised in a worker.

    Attached as ``__cause__`` of exceptions that ``Future.result`` re-raises,
    so that the worker's frames show in the caller's traceback.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\n" + self.text.rstrip("\n")


if sys.version_info >= (3, 11):
    _TimeoutBases: tuple[type[Exception], ...] = (TimeoutError,)
else:  # concurrent.futures.TimeoutError is its own class before 3.11
    from concurrent.futures import TimeoutError as _FuturesTimeout

    _TimeoutBases = (TimeoutError, _FuturesTimeout)


class TimeLimitExceeded(*_TimeoutBases):  # type: ignore[misc]
    """A submission ran past the wall-clock limit of its handle.

    Raised by ``Future.result`` for work submitted through a handle from
    ``Jobserver.replace_time_limit``: either the worker's own timer
    interrupted the task (the worker's traceback is the ``__cause__``), or
    the parent terminated the worker (``SIGTERM``, then ``SIGKILL`` after the
    grace period).  ``limit`` is the limit in seconds, ``elapsed`` how long
    the work had run when it was stopped, ``pid`` the worker's process id.
    A subclass of the builtin ``TimeoutError`` and of
    ``concurrent.futures.TimeoutError`` (the same class from Python 3.11),
    so handlers written for pebble or ``concurrent.futures`` catch it; not
    a subclass of ``LostResult``.
    """

    def __init__(
        self,
        limit: float,
        elapsed: float,
        *,
        pid: int | None = None,
        how: str = "",
    ) -> None:
        who = "the work" if pid is None else f"worker {pid}"
        detail = f" ({how})" if how else ""
        super().__init__(
            f"{who} ran for {elapsed:.3g} s, past its time limit of "
            f"{limit:.3g} s{detail}"
        )
        self.limit = limit
        self.elapsed = elapsed
        self.pid = pid
        self.how = how

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_rebuild_time_limit, (self.limit, self.elapsed, self.pid, self.how))


def _rebuild_time_limit(
    limit: float, elapsed: float, pid: int | None, how: str
) -> TimeLimitExceeded:
    return TimeLimitExceeded(limit, elapsed, pid=pid, how=how)

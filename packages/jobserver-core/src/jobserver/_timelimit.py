"""Per-task wall-clock limits (``Jobserver.replace_time_limit``).

Two halves, neither a thread:

* In the worker, a preexec arms ``ITIMER_REAL`` around the task; its
  ``SIGALRM`` raises ``TimeLimitExceeded`` inside the task, so the task can
  clean up in ``finally`` blocks and the exception travels back like any
  other (with the worker's traceback).
* In the parent, each Future carries a ``Deadline``: a backstop for a
  worker that outlives its timer.  Whichever call observes it past
  ``start + limit + grace`` (``wait``, ``result``, ``reclaim_resources``,
  ``submit``'s waits, the asyncio driver) sends ``SIGTERM``; past
  ``start + limit + 2 * grace``, ``SIGKILL``.  Those calls wake by the next
  such moment.  A worker that ends without a result after being signalled
  this way reports ``TimeLimitExceeded``, not ``LostResult``.

Invariant: the parent's first signal comes ``grace`` after the worker's
timer is due (the parent's clock starts at launch, a little *before* the
worker's), so a task that honours its timer finishes its ``finally`` blocks
undisturbed however promptly the parent checks.  With both due at the same
moment, a parent waiting in ``result()`` used to win the race and end the
worker mid-cleanup.
"""

from __future__ import annotations

import math
import os
import signal
import time
from typing import Any

from ._exceptions import TimeLimitExceeded

__all__ = ["Deadline", "check_limit", "time_limit_preexec"]


def check_limit(seconds: Any, name: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds, not {type(seconds).__name__}"
        )
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{name} must be finite, not {seconds!r}")
    return float(seconds)


class Deadline:
    """The parent's side of one Future's time limit."""

    __slots__ = ("grace", "limit", "stage", "start")

    def __init__(self, limit: float, grace: float) -> None:
        self.limit = limit
        self.grace = grace
        self.start = time.monotonic()
        self.stage = 0  # 0: within the limit, 1: SIGTERM sent, 2: SIGKILL sent

    def next_time(self) -> float | None:
        """When the next signal is due (monotonic clock), ``None`` if none."""
        if self.stage < 2:
            return self.start + self.limit + (self.stage + 1) * self.grace
        return None

    def enforce(self, worker: Any) -> None:
        """Send whatever signal is due to ``worker`` (not yet reaped)."""
        now = time.monotonic()
        while True:
            due = self.next_time()
            if due is None or now < due:
                return
            self.stage += 1
            worker.send_signal(signal.SIGTERM if self.stage == 1 else signal.SIGKILL)

    def exception(self, pid: int) -> TimeLimitExceeded:
        how = "terminated with SIGTERM" if self.stage == 1 else "killed with SIGKILL"
        return TimeLimitExceeded(
            self.limit, time.monotonic() - self.start, pid=pid, how=how
        )


class _AlarmScope:
    """Worker side: ``ITIMER_REAL`` around the task (and the inner preexec's
    context manager, if any)."""

    def __init__(self, limit: float, inner: Any) -> None:
        self.limit = limit
        self.inner = inner
        self.old_handler: Any = None
        self.start = 0.0

    def __enter__(self) -> _AlarmScope:
        if self.inner is not None:
            self.inner.__enter__()
        if hasattr(signal, "setitimer"):
            self.start = time.monotonic()
            self.old_handler = signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, max(self.limit, 1e-6))
        return self

    def _on_alarm(self, signum: int, frame: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise TimeLimitExceeded(
            self.limit,
            time.monotonic() - self.start,
            pid=os.getpid(),
            how="interrupted by the worker's timer",
        )

    def __exit__(self, *exc_info: Any) -> Any:
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old_handler or signal.SIG_DFL)
        if self.inner is not None:
            return self.inner.__exit__(*exc_info)
        return None


def time_limit_preexec(
    limit: float, inner: tuple[Any, tuple[Any, ...], dict[str, Any]] | None
) -> _AlarmScope:  # pragma: no cover - runs in workers
    """The preexec a time-limited handle's workers run: the inner preexec
    (if any), then the timer around the task."""
    cm = None
    if inner is not None:
        fn, args, kwargs = inner
        cm = fn(*args, **kwargs)
    return _AlarmScope(limit, cm)

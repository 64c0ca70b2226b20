"""The exceptions a JobserverExecutor adds to those of concurrent.futures.

Each is a ``concurrent.futures.process.BrokenProcessPool`` so that ``except``
clauses written for ``ProcessPoolExecutor`` keep catching them.  Unlike the
standard library's pool, none of them means "the executor is unusable" except
``BrokenJobserverExecutor``.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from typing import Any

from jobserver import LostResult

__all__ = ["BrokenJobserverExecutor", "InitializerFailed", "WorkerLost"]


class WorkerLost(LostResult, BrokenProcessPool):
    """A task's worker ended without delivering a result.

    The worker was killed (any signal, a crash included), called
    ``os._exit``, exec'd another program, or the task raised ``SystemExit`` or
    ``KeyboardInterrupt``.  Only the future of that one task fails with it;
    the executor stays usable.  It is both a ``jobserver.LostResult`` and a
    ``BrokenProcessPool``, so handlers written for either catch it.  ``pid``
    and ``returncode`` (negative: killed by that signal) describe the worker.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_worker_lost, (str(self), self.pid, self.returncode))


def _rebuild_worker_lost(
    message: str, pid: int | None, returncode: int | None
) -> WorkerLost:
    return WorkerLost(message, pid=pid, returncode=returncode)


class InitializerFailed(BrokenProcessPool):
    """The executor's ``initializer`` raised in a worker, so its task never ran.

    The initializer's exception and traceback are in the chained worker
    traceback (``__cause__``).  Only that task's future fails; later tasks run
    the initializer afresh in their own workers.
    """


class BrokenJobserverExecutor(BrokenProcessPool):
    """The executor's own machinery failed (for example its dispatcher thread).

    Every future that was still outstanding fails with this error, whose
    ``__cause__`` is the original failure, and every later ``submit`` raises
    it.  Create a new executor to continue.
    """

"""jobserver_extras.WorkerLogging - logging in every worker, forwarded home.

Each worker is a fresh process: under ``spawn`` its logging is not
configured at all, under ``fork`` it writes through copies of the parent's
handlers, and in either case it ends with ``os._exit``, which flushes
nothing.  ``js.replace_preexec(WorkerLogging(...))`` configures the root
logger of every worker for the task's duration and flushes every handler
when the task ends.  With ``forward=LogForwarder()`` the records travel to
the parent and come out of the parent's own handlers, as if logged there.

What this example checks:

1. Worker records reach the parent's handlers with the worker's pid, logger
   name and level; records below the worker's level are dropped there;
   an exception's traceback arrives as text.
2. ``future.when_done(forwarder.drain)`` hands records on as each task
   finishes, with no thread involved.
3. Records logged just before a worker is killed are not lost.
4. Without ``forward``, workers log to their stderr in the given format.
"""

from __future__ import annotations

import logging
import os
import signal

from jobserver import Jobserver, LostResult
from jobserver_extras import LogForwarder, WorkerLogging

log = logging.getLogger("extras.logging")


class Keep(logging.Handler):
    """A parent-side handler that keeps what it sees, to check it."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def crunch(n: int) -> int:
    work = logging.getLogger("extras.logging.worker")
    work.debug("dropped in the worker: below its level")
    work.info("crunching %d", n)
    if n == 3:
        try:
            raise ArithmeticError("3 is unlucky")
        except ArithmeticError:
            work.exception("crunch %d failed, carrying on", n)
    return os.getpid()


def last_words() -> None:
    logging.getLogger("extras.logging.worker").warning("about to be killed")
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    keep = Keep()
    logging.getLogger("extras.logging.worker").addHandler(keep)
    with LogForwarder() as forwarder, Jobserver(slots=2) as js:
        logged = js.replace_preexec(WorkerLogging(logging.INFO, forward=forwarder))

        # 1 and 2: records flow as each task finishes.
        futures = []
        for n in range(1, 5):
            future = logged.submit(crunch, args=(n,))
            future.when_done(forwarder.drain)
            futures.append(future)
        pids = {future.result() for future in futures}
        forwarder.drain()
        infos = [r for r in keep.records if r.levelno == logging.INFO]
        assert len(infos) == 4, [r.getMessage() for r in keep.records]
        assert {r.process for r in keep.records} == pids
        [failure] = [r for r in keep.records if r.levelno == logging.ERROR]
        assert "ArithmeticError: 3 is unlucky" in (failure.exc_text or "")
        log.info(
            "%d records from %d workers reached the parent",
            len(keep.records),
            len(pids),
        )

        # 3: a killed worker's last record still arrives.
        try:
            logged.submit(last_words).result()
        except LostResult:
            pass
        forwarder.drain()
        assert keep.records[-1].getMessage() == "about to be killed"
        log.info("the killed worker's last record arrived too")

        # 4: plain worker logging to stderr, in a chosen format.
        plain = js.replace_preexec(
            WorkerLogging(logging.INFO, format="    worker %(process)d: %(message)s")
        )
        plain.submit(crunch, args=(1,)).result()
    log.info("all logging checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        format="%(relativeCreated)6.0f ms  [pid %(process)d] %(name)s: %(message)s",
    )
    logging.captureWarnings(True)
    main()

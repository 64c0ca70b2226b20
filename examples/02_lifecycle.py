"""02 - The life of a Future: running, done, result, and cleaning up.

``submit`` returns a ``Future`` at once, while the worker process runs.  This
stop walks one Future through its life and shows the ways to look at it:

* ``done()`` answers "finished yet?" without waiting (``done(timeout=t)``
  waits up to ``t`` seconds), ``wait()`` blocks until the work has finished
  and returns ``True``, and ``result()`` blocks and then returns the value
  (or re-raises the task's exception).  Asking again returns the same answer.
* A Future belongs to the process that submitted the work: it cannot be
  copied or pickled.
* ``Jobserver.reclaim_resources()`` does the bookkeeping for work you never
  waited on: it reaps finished workers, gives their slots back and runs their
  callbacks.  ``submit`` does the same thing on its own, so you rarely need it.
* ``with Jobserver(...)``: leaving the outermost ``with`` waits for every
  outstanding Future, runs their callbacks, and releases the OS resources;
  the handle cannot be used afterwards.

The worker waits on a ``multiprocessing`` pipe, so the "still running" checks
are exact: the parent decides when the work may finish.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import pickle
import select
from multiprocessing.connection import Connection

from jobserver import Jobserver

log = logging.getLogger("tour.lifecycle")


def hold_until_released(conn: Connection) -> str:
    """Report this worker's pid, then wait for the parent's go-ahead."""
    conn.send(os.getpid())
    who = conn.recv()
    return f"released by {who}"


def shout(text: str) -> str:
    return text.upper()


def report_pid(conn: Connection) -> str:
    conn.send(os.getpid())
    return "finished on its own"


def block_until_exited(pid: int) -> None:
    """Block until process ``pid`` has ended, *without* reaping it.

    The Jobserver must do the reaping itself, so this only watches: through a
    pidfd where there is one, else with ``waitid(WNOWAIT)``.
    """
    if hasattr(os, "pidfd_open"):
        fd = os.pidfd_open(pid)
        try:
            select.select([fd], [], [])  # a pidfd turns readable at exit
        finally:
            os.close(fd)
    else:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def show_states(js: Jobserver) -> None:
    ours, theirs = js.context.Pipe()
    future = js(hold_until_released, theirs)
    theirs.close()  # the worker has its own copy now
    pid = ours.recv()  # the worker is running from here on
    log.info("worker %d running: %r", pid, future)

    assert future.done() is False, "done() while the worker waits on us"
    assert future.wait(timeout=0) is False, "wait(0) while the worker waits on us"
    log.info("done() -> False and wait(timeout=0) -> False while it runs")

    ours.send("the parent")
    assert future.wait() is True
    assert future.done() is True
    value = future.result()
    assert value == "released by the parent", value
    assert future.result() == value, "a second result() must agree"
    log.info("after release: wait() -> True, done() -> True, result() -> %r", value)
    log.info("finished Future: %r", future)
    ours.close()

    for attempt, operation in (("copy", copy.copy), ("pickle", pickle.dumps)):
        try:
            operation(future)
        except TypeError as exc:
            log.info("%s a Future -> TypeError: %s", attempt, exc)
        else:
            raise AssertionError(f"a Future should refuse to {attempt}")


def show_reclaim(js: Jobserver) -> None:
    events: list[str] = []
    ours, theirs = js.context.Pipe()
    future = js(report_pid, theirs)
    theirs.close()
    future.when_done(events.append, "callback ran")
    pid = ours.recv()
    ours.close()

    block_until_exited(pid)
    # The worker is gone but nobody has looked at its Future yet.
    assert events == [], events
    js.reclaim_resources()
    assert events == ["callback ran"], events
    log.info("reclaim_resources() reaped worker %d and ran its callback", pid)
    assert future.result() == "finished on its own"


def main() -> None:
    # fork/spawn workers are children of this process, which block_until_exited
    # relies on where there is no pidfd.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    drained: list[str] = []
    with Jobserver(context=method, slots=2) as js:
        log.info("%r", js)
        show_states(js)
        show_reclaim(js)

        # An inner `with` on the same resources only counts a scope: leaving it
        # does not close anything.
        with js:
            pass
        leftover = js(shout, "never waited for")
        leftover.when_done(drained.append, "drained at exit")
        # Leaving the outer block waits for `leftover` and runs its callback.
    assert drained == ["drained at exit"], drained
    assert leftover.done() is True
    assert leftover.result() == "NEVER WAITED FOR"
    log.info("leaving `with` waited for the last Future: %s", drained)

    try:
        js(os.getpid)
    except RuntimeError as exc:
        log.info("after the last `with` exit the handle is closed: %s", exc)
    else:
        raise AssertionError("submit after the last `with` exit should fail")
    log.info("all lifecycle checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

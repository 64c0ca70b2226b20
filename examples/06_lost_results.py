"""06 - Lost results: a worker that ends without answering.

A worker can end without ever delivering a result: it is killed (here it
SIGKILLs itself), it leaves through ``os._exit``, or the task raises
``SystemExit`` (``sys.exit``) or another ``BaseException`` that is not an
``Exception``.  The Future of that one submission then raises ``LostResult``
from ``result()``, with the worker's ``pid`` and ``returncode`` (negative
for "killed by that signal").  Nothing else is affected:

* a sibling that was running all along finishes normally afterwards, and
* the dead worker's slot comes back: with ``slots=2`` and the sibling
  holding one slot, the three failing submissions run one after another in
  the other slot, which could not happen if a death leaked a slot.

Note the contrast with ``concurrent.futures.ProcessPoolExecutor``, where one
dead worker breaks the whole pool and fails every pending future.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Callable

from jobserver import Future, Jobserver, LostResult

log = logging.getLogger("tour.lost")


def die_by_sigkill() -> str:
    os.kill(os.getpid(), signal.SIGKILL)
    return "not reached"


def die_by_os_exit() -> str:
    os._exit(3)


def die_by_sys_exit() -> str:
    sys.exit(4)


def patient_sibling(conn: Connection) -> str:
    conn.send("running")
    return f"sibling saw {conn.recv()}"


def main() -> None:
    cases: list[tuple[Callable[[], str], int]] = [
        (die_by_sigkill, -signal.SIGKILL),
        (die_by_os_exit, 3),
        (die_by_sys_exit, 4),
    ]
    with Jobserver(slots=2) as js:
        ours, theirs = js.context.Pipe()
        sibling = js(patient_sibling, theirs)
        theirs.close()
        assert ours.recv() == "running"

        lost: list[Future[str]] = []
        for task, expected_code in cases:
            # Only one slot is free: this launches only if the previous
            # failure's slot came back (a leaked slot would end in Blocked).
            future = js.submit(task, timeout=10)
            lost.append(future)
            assert future.wait() is True
            try:
                future.result()
            except LostResult as exc:
                error = exc
            else:
                raise AssertionError(f"{task.__name__} delivered a result")
            assert error.returncode == expected_code, (task, error.returncode)
            log.info("%-16s -> LostResult: %s", task.__name__, error)

        assert sibling.done() is False, "the sibling should still be waiting"
        ours.send("three failures")
        assert sibling.result() == "sibling saw three failures"
        log.info("the sibling finished normally: %r", sibling.result())
        ours.close()

        # Both slots are free again: two submissions that refuse to wait fit.
        pair = [js.submit(os.getpid, timeout=0) for _ in range(2)]
        assert all(isinstance(f.result(), int) for f in pair)
        log.info("both slots were free again after three lost results")
        # Asking a lost Future again gives the same answer.
        for future in lost:
            try:
                future.result()
            except LostResult:
                pass
            else:
                raise AssertionError("a lost result reappeared")
    log.info("all lost-result checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

"""04 - Cancelling running work by signalling its worker.

Every submission has a process of its own, so cancelling one is simply
signalling that process.  ``Future.wait(signal=signal.SIGTERM)`` sends the
signal to the worker (only while it is still running) and then waits for it
to end.  Shown here:

* A worker that does not handle SIGTERM dies of it: ``wait`` returns ``True``
  and ``result()`` raises ``LostResult`` whose ``returncode`` is
  ``-SIGTERM``.  A sibling submitted alongside is untouched.
* A worker that *does* handle SIGTERM can stop tidily and still report
  something: here its handler raises an exception, the task catches it and
  returns how far it got.  Cancellation becomes cooperative.
* Signalling a Future that has already finished does nothing and is safe:
  the worker has been reaped, and its pid may belong to somebody else by now.

Each worker tells the parent over a pipe when it is ready, so the signal is
never sent before the worker got going (no sleeping and hoping).
"""

from __future__ import annotations

import logging
import os
import signal
from multiprocessing.connection import Connection
from types import FrameType

from jobserver import Jobserver, LostResult

log = logging.getLogger("tour.cancel")


def wait_forever(conn: Connection) -> str:
    conn.send("ready")
    conn.recv()  # the parent never answers
    return "not reached"


class Cancelled(Exception):
    pass


def _raise_cancelled(signum: int, frame: FrameType | None) -> None:
    raise Cancelled(signal.Signals(signum).name)


def count_until_cancelled(conn: Connection) -> str:
    """Process work items sent by the parent until asked to stop by SIGTERM."""
    signal.signal(signal.SIGTERM, _raise_cancelled)
    handled = 0
    conn.send("ready")
    try:
        while True:
            conn.recv()
            handled += 1
            conn.send(handled)
    except Cancelled as why:
        return f"stopped by {why} after {handled} item(s)"


def double(n: int) -> int:
    return 2 * n


def expect_ready(conn: Connection) -> None:
    assert conn.poll(30), "the worker never reported ready"
    assert conn.recv() == "ready"


def main() -> None:
    with Jobserver(slots=3) as js:
        # 1. Plain cancellation: the default action of SIGTERM ends the worker.
        ours, theirs = js.context.Pipe()
        doomed = js(wait_forever, theirs)
        sibling = js(double, 21)
        theirs.close()
        expect_ready(ours)
        assert doomed.done() is False

        assert doomed.wait(signal=signal.SIGTERM) is True
        try:
            doomed.result()
        except LostResult as exc:
            lost = exc
        else:
            raise AssertionError("a worker killed by SIGTERM produced a result")
        assert lost.returncode == -signal.SIGTERM, lost.returncode
        log.info("cancelled: %s", lost)
        assert sibling.result() == 42, "the sibling should finish normally"
        log.info("the sibling finished normally with %d", sibling.result())
        ours.close()

        # 2. Cooperative cancellation: the worker turns SIGTERM into an exception.
        ours, theirs = js.context.Pipe()
        polite = js(count_until_cancelled, theirs)
        theirs.close()
        expect_ready(ours)  # its SIGTERM handler is installed by now
        for item in range(3):
            ours.send(item)
            assert ours.recv() == item + 1
        assert polite.wait(signal=signal.SIGTERM) is True
        summary = polite.result()
        assert summary == "stopped by SIGTERM after 3 item(s)", summary
        log.info("cooperative worker returned: %r", summary)
        ours.close()

        # 3. A finished Future is not signalled again.
        finished = js(os.getpid)
        pid = finished.result()
        assert finished.wait(signal=signal.SIGKILL) is True
        assert finished.result() == pid
        log.info("wait(signal=SIGKILL) after completion changed nothing")
    log.info("all cancellation checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

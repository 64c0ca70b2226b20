"""05 - Pausing and resuming a worker with SIGSTOP and SIGCONT.

``Future.wait(timeout=0, signal=...)`` sends a signal without waiting, so the
same call that cancels (see 04) also pauses and resumes:
``wait(0, signal=SIGSTOP)`` freezes the worker where it is and
``wait(0, signal=SIGCONT)`` lets it carry on.  Useful to make room for
something urgent without throwing away work in progress.

How this example knows the worker really was paused, rather than just slow:

* The operating system says so: ``waitid(WSTOPPED | WNOWAIT)`` returns once
  the worker is in the stopped state (and leaves the event for others, so
  the Jobserver's own bookkeeping is not disturbed).
* A handshake over a pipe: the worker echoes every message.  A message sent
  while it is stopped stays unanswered; the answer to that very message
  arrives after SIGCONT, and the worker's count shows nothing was lost.

Also shown: a paused worker keeps its slot.  With ``slots=1`` a new
submission is ``Blocked`` for as long as the worker sits stopped.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection

from jobserver import Blocked, Jobserver

log = logging.getLogger("tour.pause")


def echo(conn: Connection) -> int:
    """Echo messages until ``None`` arrives; return how many were echoed."""
    conn.send(os.getpid())
    echoed = 0
    while True:
        message = conn.recv()
        if message is None:
            return echoed
        echoed += 1
        conn.send(message)


def wait_until_stopped(pid: int) -> bool:
    """Block until child ``pid`` is stopped; ``False`` if this OS cannot tell."""
    if not hasattr(os, "waitid"):
        return False
    info = os.waitid(os.P_PID, pid, os.WSTOPPED | os.WNOWAIT)
    assert info is not None, "waitid returned without an event"
    assert info.si_code == os.CLD_STOPPED, info
    return True


def main() -> None:
    # With fork and spawn the worker is this process's own child, which
    # waitid() needs (a forkserver worker is the fork server's child).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with Jobserver(context=method, slots=1) as js:
        ours, theirs = js.context.Pipe()
        future = js(echo, theirs)
        theirs.close()
        pid = ours.recv()
        ours.send("before the pause")
        assert ours.recv() == "before the pause"
        log.info("worker %d is echoing", pid)

        assert future.wait(timeout=0, signal=signal.SIGSTOP) is False
        if wait_until_stopped(pid):
            log.info("the OS reports worker %d as stopped", pid)
        else:
            log.info("no waitid() here: relying on the pipe handshake alone")

        ours.send("sent during the pause")
        assert not ours.poll(0.2), "a stopped worker answered"
        assert future.done() is False
        log.info("a message sent to the paused worker went unanswered")

        try:
            js.submit(os.getpid, timeout=0)
        except Blocked:
            log.info("the paused worker still holds the only slot")
        else:
            raise AssertionError("a paused worker gave its slot away")

        assert future.wait(timeout=0, signal=signal.SIGCONT) is False
        assert ours.poll(30), "the worker did not resume after SIGCONT"
        assert ours.recv() == "sent during the pause"
        log.info("after SIGCONT the queued message was answered")

        ours.send(None)
        echoed = future.result()
        assert echoed == 2, f"the worker echoed {echoed} messages, expected 2"
        log.info("worker finished having echoed %d messages: none lost", echoed)
        ours.close()
    log.info("all pause/resume checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

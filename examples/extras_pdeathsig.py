"""jobserver_extras.ParentDeathSignal - workers die with their launcher.

Without it, killing a program that launched workers leaves the workers
running as orphans.  ``js.replace_preexec(ParentDeathSignal())`` makes each
worker receive a signal (``SIGKILL`` by default) the moment the process
that launched it exits, however it exits.

What this example checks, under every start method:

1. A "middle" process launches a long-running worker and is then killed
   with ``SIGKILL`` - a death it cannot react to.  The worker is gone
   within a second.
2. Without the preexec, the same worker would outlive the middle process
   (shown once, then cleaned up by hand).

Linux only (``prctl(PR_SET_PDEATHSIG)`` plus a pipe the kernel watches);
elsewhere the script says so and exits 0.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import tempfile
import time

from jobserver import Jobserver, LostResult

log = logging.getLogger("extras.pdeathsig")


def sleeper(report: str) -> None:
    """Tell the example our pid, then sleep far longer than it runs."""
    tell(report, os.getpid())
    time.sleep(120)


def middle(js: Jobserver, report: str) -> None:
    """Tell our pid, launch the sleeper and wait for it (until killed)."""
    tell(report, os.getpid())
    js.submit(sleeper, args=(report,), consume=0).wait()


def tell(fifo: str, pid: int) -> None:
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.write(fd, f"{pid}\n".encode())
    finally:
        os.close(fd)


class Reader:
    """Reads newline-terminated pids from a FIFO, waiting at most a minute.

    Opened read-write (Linux allows that for a FIFO), so that it never sees
    end-of-file between one writer and the next.
    """

    def __init__(self, path: str) -> None:
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDWR)
        self.data = b""

    def pid(self) -> int:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while b"\n" not in self.data:
            if not poller.poll(60_000):
                raise TimeoutError("nothing reported")
            self.data += os.read(self.fd, 64)
        line, _, self.data = self.data.partition(b"\n")
        return int(line)


def exited(pidfd: int, seconds: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(seconds * 1000))


def kill_middle_and_watch(js: Jobserver, guarded: Jobserver, method: str) -> bool:
    """Run middle -> sleeper, SIGKILL the middle; did the sleeper follow?"""
    with tempfile.TemporaryDirectory() as tmp:
        reader = Reader(os.path.join(tmp, "report"))
        try:
            future = js.submit(middle, args=(guarded, os.path.join(tmp, "report")))
            middle_fd = os.pidfd_open(reader.pid())
            sleeper_fd = os.pidfd_open(reader.pid())
        finally:
            os.close(reader.fd)
    try:
        signal.pidfd_send_signal(middle_fd, signal.SIGKILL)
        assert exited(middle_fd, 60), "the middle process did not die"
        gone = exited(sleeper_fd, 1.0)
        if not gone:
            signal.pidfd_send_signal(sleeper_fd, signal.SIGKILL)  # tidy up
    finally:
        os.close(middle_fd)
        os.close(sleeper_fd)
    try:
        future.result()
    except LostResult as exc:
        log.info("%-10s middle process: %s", method, exc)
    return gone


def main() -> None:
    from jobserver_extras import ParentDeathSignal

    for method in ("fork", "forkserver", "spawn"):
        with Jobserver(method, slots=2) as js:
            guarded = js.replace_preexec(ParentDeathSignal())
            assert kill_middle_and_watch(js, guarded, method), method
            log.info("%-10s the worker died with its launcher", method)
    with Jobserver("fork", slots=2) as js:
        assert not kill_middle_and_watch(js, js, "fork"), "orphan expected"
        log.info("without the preexec the worker outlived its launcher")
    log.info("all parent-death checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        log.warning("parent-death signals need Linux (with pidfd_open); skipping")
    else:
        main()

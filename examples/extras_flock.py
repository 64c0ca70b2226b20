"""jobserver_extras.AdvisoryLock - one task at a time per lock file.

``js.replace_preexec(AdvisoryLock(path))`` makes every worker hold an
``flock`` on ``path`` while its task runs.  Tasks that must not overlap (they
write one cache, drive one device, hold one licence) share a path; other
tasks use other paths, or none, and run in parallel.  What this example
checks:

1. Four tasks on one lock never overlap, although four slots would allow
   it (each records when it started and ended).
2. Tasks on two different locks do run at the same time: each waits, inside
   its lock, until the other has arrived - impossible one after the other.
3. ``shared=True`` takes a shared lock: readers overlap each other.
4. ``blocking=False`` fails at once with ``BlockingIOError`` while someone
   else holds the lock.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import tempfile
import time

from jobserver import Jobserver

log = logging.getLogger("extras.flock")


def interval(seconds: float) -> tuple[float, float]:
    """Sleep inside the lock; return when we started and ended."""
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


def meet(arrivals: str, go: str) -> str:
    """Inside the lock: report arrival, then wait (a minute at most) for the
    go-ahead, which comes only once the other task has arrived too."""
    fd = os.open(go, os.O_RDWR)  # a FIFO; read-write never blocks opening
    try:
        out = os.open(arrivals, os.O_WRONLY)
        os.write(out, b"+")
        os.close(out)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return "met" if poller.poll(60_000) else "alone"
    finally:
        os.close(fd)


def meeting(js_a: Jobserver, js_b: Jobserver, tmp: str) -> list[str]:
    """Two tasks, one per handle, that finish only if they run together."""
    arrivals, go_a, go_b = (os.path.join(tmp, n) for n in ("arrivals", "go-a", "go-b"))
    for fifo in (arrivals, go_a, go_b):
        os.mkfifo(fifo)
    inbox = os.open(arrivals, os.O_RDWR)
    try:
        futures = [js_a.submit(meet, args=(arrivals, go_a))]
        futures.append(js_b.submit(meet, args=(arrivals, go_b)))
        poller = select.poll()
        poller.register(inbox, select.POLLIN)
        arrived = b""
        while len(arrived) < 2 and poller.poll(60_000):
            arrived += os.read(inbox, 2 - len(arrived))
        for go in (go_a, go_b):  # release both, whether or not they met
            fd = os.open(go, os.O_RDWR)
            os.write(fd, b"!")
            os.close(fd)
        results = [future.result() for future in futures]
        assert arrived == b"++", arrived
    finally:
        os.close(inbox)
        for fifo in (arrivals, go_a, go_b):
            os.unlink(fifo)
    return results


def main() -> None:
    from jobserver_extras import AdvisoryLock

    with tempfile.TemporaryDirectory() as tmp, Jobserver(slots=4) as js:
        # 1. One lock, four tasks: strictly one after another.
        one = js.replace_preexec(AdvisoryLock(os.path.join(tmp, "one.lock")))
        spans = sorted(
            f.result() for f in [one.submit(interval, args=(0.05,)) for _ in range(4)]
        )
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end <= start, spans
        log.info(
            "4 tasks on one lock ran one at a time (%.2f s in all)",
            spans[-1][1] - spans[0][0],
        )

        # 2. Two locks: the tasks meet, so they ran at the same time.
        a = js.replace_preexec(AdvisoryLock(os.path.join(tmp, "a.lock")))
        b = js.replace_preexec(AdvisoryLock(os.path.join(tmp, "b.lock")))
        assert meeting(a, b, tmp) == ["met", "met"]
        log.info("tasks on two different locks ran side by side")

        # 3. Shared locks overlap too.
        readers = js.replace_preexec(
            AdvisoryLock(os.path.join(tmp, "r.lock"), shared=True)
        )
        assert meeting(readers, readers, tmp) == ["met", "met"]
        log.info("tasks holding a shared lock ran side by side")

        # 4. Somebody else holds the lock: blocking=False gives up at once.
        path = os.path.join(tmp, "busy.lock")
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import fcntl, os, sys\n"
                "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "print(flush=True)\n"
                "sys.stdin.read()\n",
                path,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert holder.stdout is not None and holder.stdin is not None
        holder.stdout.readline()  # the lock is taken
        try:
            impatient = js.replace_preexec(AdvisoryLock(path, blocking=False))
            try:
                impatient.submit(os.getpid).result()
            except BlockingIOError as exc:
                log.info("blocking=False while the lock was taken: %r", exc)
            else:
                raise AssertionError("got a lock that another process holds")
        finally:
            holder.stdin.close()
            holder.stdout.close()
            holder.wait()
    log.info("all advisory lock checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    if sys.platform == "win32":
        log.warning("flock needs a POSIX system; skipping")
    else:
        main()

"""hold_and_heavy_jobs - slots held in this process, and jobs that need several.

What this example checks:

1. ``with js.hold(2):`` holds two slots of the pool while this process runs
   work the library does not launch (here a thread pool of two threads, as
   a native library or a compiler started with ``subprocess`` would be):
   the rest of the pool sees two slots fewer, and gets them back -- also
   when the block ends with an exception.
2. ``submit(fn, consume=3)`` runs a memory-heavy job on three slots; a job
   that needs more slots than the pool has is a ``ValueError`` at once.
3. Two processes that each want three slots of a pool of four, over and
   over, share it without deadlock: slots are taken all or nothing, a
   partial set is held only briefly and given back with a random back-off
   (docs/machine-wide.md).  Each job logs its weight; the log never shows
   more than four slots in use.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sys
import tempfile
import time

from jobserver import Blocked, Jobserver

log = logging.getLogger("tour.hold")


def free(js: Jobserver, size: int = 4) -> int:
    """How many of ``size`` slots are free right now (holds, no waiting)."""
    for count in range(size, 0, -1):
        try:
            with js.hold(count, timeout=0):
                return count
        except Blocked:
            continue
    return 0


def weighted_job(path: str, name: str, weight: int) -> None:
    for what in ("start", "end"):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{what} {name} {weight}\n".encode())
        finally:
            os.close(fd)
        if what == "start":
            time.sleep(0.05)


def greedy(js: Jobserver, path: str, name: str) -> int:
    """Five jobs of three slots each, as fast as the pool allows."""
    import hold_and_heavy_jobs as me  # by name, for every start method

    futures = [
        js.submit(me.weighted_job, args=(path, name, 3), consume=3) for _ in range(5)
    ]
    return sum(1 for future in futures if future.result() is None)


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    with Jobserver(slots=4) as js:
        # 1. Two slots for a thread pool of two.
        with js.hold(2), concurrent.futures.ThreadPoolExecutor(2) as pool:
            assert free(js) == 2
            total = sum(pool.map(lambda n: n * n, range(100)))
        assert free(js) == 4
        log.info("a thread pool ran on two held slots (sum %d)", total)
        try:
            with js.hold(3):
                raise RuntimeError("the native call failed")
        except RuntimeError:
            pass
        assert free(js) == 4
        log.info("an exception in the block gave the slots back")

        # 2. A heavy job on three slots.
        heavy = js.submit(os.getpid, consume=3)
        heavy.result()
        try:
            js.submit(os.getpid, consume=5)
        except ValueError as exc:
            log.info("consume=5 on four slots: %s", exc)
        else:
            raise AssertionError("consume=5 was accepted on a pool of 4")

        # 3. Two greedy processes, each wanting three of the four slots.
        import hold_and_heavy_jobs as me

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "log")
            started = time.monotonic()
            workers = [
                js.submit(me.greedy, args=(js, path, name), consume=0)
                for name in ("a", "b")
            ]
            assert [w.result(timeout=120) for w in workers] == [5, 5]
            in_use = peak = 0
            order = []
            with open(path) as f:
                for line in f:
                    what, name, weight = line.split()
                    in_use += int(weight) if what == "start" else -int(weight)
                    peak = max(peak, in_use)
                    if what == "start":
                        order.append(name)
            assert peak <= 4, peak
            log.info(
                "two greedy clients ran 10 jobs of 3 slots in %.2f s, peak %d "
                "slots in use, in the order %s",
                time.monotonic() - started,
                peak,
                "".join(order),
            )
        assert free(js) == 4
    log.info("all hold and multi-slot checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

"""JobserverExecutor - ProcessPoolExecutor's interface on a Jobserver's slots.

``JobserverExecutor`` (distribution ``jobserver-executor``) is a
``concurrent.futures.Executor``: code written for ``ProcessPoolExecutor``
runs with only the class changed.  Every task gets a fresh worker process
from a ``Jobserver``.  Shown and checked here:

* Drop-in use: ``max_workers``, ``map`` (with ``chunksize``), ``submit``,
  ``as_completed``, an initializer, and ``asyncio``'s ``run_in_executor``.
* A worker that dies fails only its own future, with ``WorkerLost``: both a
  ``jobserver.LostResult`` and a ``BrokenProcessPool``.  The executor keeps
  working (``ProcessPoolExecutor`` would be broken for good).
* Given a ``Jobserver``, the executor shares its slots: tasks submitted
  through the executor, directly to the Jobserver, and nested inside
  workers never run more than N at once.  Every worker appends its start and
  end times to a file, and the overlap is counted from those.
* Pending futures cancel; ``shutdown(cancel_futures=True)`` cancels the
  rest while the running task finishes.

Under the fork start method the tasks could be lambdas; this script uses
module-level functions so that it runs the same under every start method.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import os
import tempfile
import time
from concurrent.futures.process import BrokenProcessPool

from jobserver import Blocked, Jobserver, JobserverExecutor, LostResult

log = logging.getLogger("tour.executor")

GREETING = "unset"


def greet(name: str) -> str:
    return f"{GREETING}, {name}"


def set_greeting(text: str) -> None:
    global GREETING
    GREETING = text


def crash() -> None:
    os._exit(3)


def record(path: str, seconds: float) -> None:
    """Sleep, then append this worker's (start, end) times to ``path``."""
    start = time.monotonic_ns()
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{start} {time.monotonic_ns()}\n")


def fan_out(js: Jobserver, path: str, seconds: float) -> int:
    """Nested work on the same slots: start two children if slots are free,
    otherwise do their work inline on this worker's own slot."""
    start = time.monotonic_ns()
    children = []
    for _ in range(2):
        try:
            children.append(js.submit(record, args=(path, seconds), timeout=0))
        except Blocked:
            time.sleep(seconds)
    for child in children:
        child.result()
    with open(path, "a") as f:
        f.write(f"{start} {time.monotonic_ns()}\n")
    return len(children)


def most_at_once(path: str) -> int:
    events = []
    with open(path) as f:
        for line in f:
            start, end = map(int, line.split())
            events += [(start, 1), (end, -1)]
    current = best = 0
    for _, delta in sorted(events):
        current += delta
        best = max(best, current)
    return best


def drop_in() -> None:
    with JobserverExecutor(max_workers=2) as executor:
        squares = list(executor.map(pow, range(10), [2] * 10, chunksize=3))
        assert squares == [n * n for n in range(10)]
        futures = {executor.submit(divmod, 100, n): n for n in (3, 7, 9)}
        answers = {futures[f]: f.result() for f in cf.as_completed(futures)}
        assert answers == {3: (33, 1), 7: (14, 2), 9: (11, 1)}

        async def from_asyncio() -> int:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, abs, -7)

        assert asyncio.run(from_asyncio()) == 7
    log.info("map, submit, as_completed and asyncio behave as with the stdlib")

    with JobserverExecutor(2, initializer=set_greeting, initargs=("hello",)) as ex:
        assert list(ex.map(greet, ["ada", "bob"])) == ["hello, ada", "hello, bob"]
    log.info("the initializer ran in every worker before its task")


def worker_death() -> None:
    with JobserverExecutor(2) as executor:
        doomed = executor.submit(crash)
        healthy = executor.submit(sum, range(10))
        error = doomed.exception()
        assert isinstance(error, LostResult)
        assert isinstance(error, BrokenProcessPool)
        assert error.returncode == 3
        assert healthy.result() == 45
        assert executor.submit(abs, -1).result() == 1
        log.info("a dead worker failed only its own future: %s", error)


def shared_slots(directory: str) -> None:
    path = os.path.join(directory, "intervals")
    slots = 2
    js = Jobserver(slots=slots)
    with JobserverExecutor(js) as executor:
        through_executor = [executor.submit(record, path, 0.05) for _ in range(6)]
        nesting = [executor.submit(fan_out, js, path, 0.05) for _ in range(2)]
        # Direct submissions from this thread compete for the same slots.
        direct = [js.submit(record, args=(path, 0.05)) for _ in range(4)]
        # Reap this thread's own workers first: a finished worker keeps its
        # slot until the process that launched it reaps it.
        for future in direct:
            future.result()
        for cf_future in through_executor:
            cf_future.result()
        nested = sum(f.result() for f in nesting)
    peak = most_at_once(path)
    assert peak <= slots, peak
    log.info(
        "%d tasks (%d of them nested workers) ran at most %d at once on %d slots",
        6 + 4 + 2 + nested,
        nested,
        peak,
        slots,
    )


def cancelling(directory: str) -> None:
    js = Jobserver(slots=1)
    executor = JobserverExecutor(js)
    # Hold the only slot so that the executor's tasks stay pending.
    holder = js.submit(time.sleep, args=(0.5,))
    pending = [executor.submit(abs, -n) for n in range(5)]
    assert pending[0].cancel()
    assert pending[0].cancelled()
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in pending)
    holder.result()
    executor.shutdown(wait=True)
    log.info("pending futures were cancelled; nothing of theirs ever ran")


def main() -> None:
    drop_in()
    worker_death()
    with tempfile.TemporaryDirectory() as directory:
        shared_slots(directory)
        cancelling(directory)
    log.info("all executor checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

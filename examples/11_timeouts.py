"""11 - Timeouts: bounded waits everywhere, and what each one returns.

Every call that can wait takes a ``timeout`` in seconds: ``None`` waits as
long as it takes, ``0`` only looks, and a positive number waits at most that
long.  When the time is up:

* ``submit`` (no free slot) and ``result`` (no result yet) raise ``Blocked``;
* ``done`` and ``wait`` return ``False``, they never raise ``Blocked``;
* ``map``'s timeout counts from the call, and a result later than that
  raises ``Blocked`` from the iterator.

Running out of time loses nothing: the slot is not taken, and running work
keeps running; asking again later just works.  Negative or non-numeric
timeouts are refused at once.

A single slot is held by a worker that waits on a pipe, so every "not yet"
below is certain, not a matter of timing.
"""

from __future__ import annotations

import logging
import os
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

from jobserver import Blocked, Jobserver

log = logging.getLogger("tour.timeouts")


def hold_slot(conn: Connection) -> str:
    conn.send("holding")
    return f"released with {conn.recv()!r}"


def expect_blocked(what: str, call: Callable[[], Any], at_least: float) -> None:
    started = time.monotonic()
    try:
        call()
    except Blocked as exc:
        waited = time.monotonic() - started
        assert waited >= at_least * 0.9, f"{what} gave up after {waited:.3f} s"
        log.info("%-28s -> Blocked after %.2f s (%s)", what, waited, exc)
    else:
        raise AssertionError(f"{what} should have raised Blocked")


def main() -> None:
    with Jobserver(slots=1) as js:
        ours, theirs = js.context.Pipe()
        holder = js(hold_slot, theirs)
        theirs.close()
        assert ours.recv() == "holding"

        # submit: no slot within the timeout.
        expect_blocked("submit(timeout=0)", lambda: js.submit(os.getpid, timeout=0), 0)
        expect_blocked(
            "submit(timeout=0.2)", lambda: js.submit(os.getpid, timeout=0.2), 0.2
        )

        # done / wait: False on timeout.
        assert holder.done() is False
        assert holder.done(timeout=0.1) is False
        assert holder.wait(timeout=0.1) is False
        log.info("%-28s -> False", "done(), done(0.1), wait(0.1)")

        # result: Blocked on timeout, and the Future is still fine afterwards.
        expect_blocked("result(timeout=0.1)", lambda: holder.result(timeout=0.1), 0.1)

        # map: its timeout also bounds the wait for slots, so with the only
        # slot held even the call to map() itself gives up.
        expect_blocked(
            "map(timeout=0.1)",
            lambda: js.map(str, argses=[(1,)], timeout=0.1),
            0.1,
        )

        for bad in (-1, "soon"):
            try:
                holder.wait(timeout=bad)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                call = f"wait(timeout={bad!r})"
                log.info("%-28s -> %s: %s", call, type(exc).__name__, exc)
            else:
                raise AssertionError(f"timeout={bad!r} was accepted")

        # Release the worker: everything that timed out now succeeds.
        ours.send("go")
        assert holder.result(timeout=30) == "released with 'go'"
        assert holder.done() is True
        assert holder.wait(timeout=0) is True
        ours.close()
        log.info("after the release: result() -> value, done() -> True")

        # map again, now with a free slot: the work starts, but its result
        # comes later than the map's timeout, so the iterator raises Blocked.
        ours, theirs = js.context.Pipe()
        results = js.map(hold_slot, argses=[(theirs,)], timeout=0.1)
        theirs.close()
        assert ours.recv() == "holding"  # submitted and running
        expect_blocked("next() on map(timeout=0.1)", lambda: next(results), 0)
        # Giving up on the iterator did not cancel the work: it still answers.
        ours.send("after the map gave up")
        follow_up = js.submit(os.getpid, timeout=30)  # waits for that slot
        assert isinstance(follow_up.result(), int)
        ours.close()
        log.info("the abandoned map call finished; its slot came back")
    log.info("all timeout checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

"""07 - A launch gate: hold new work back until a condition holds.

``replace_sleep(gate)`` returns a sibling handle (same slots) whose every
launch first asks ``gate()``: ``None`` means "launch now", a number means
"ask me again in that many seconds".  Typical gates look at the machine
(free memory, load, a maintenance flag); ``jobserver_extras`` ships a RAM
gate built this way.  What this example checks:

1. The gate is asked again and again until it says ``None``, then the work
   runs.  Handles without the gate are not affected by it.
2. A gate that keeps refusing ends in ``Blocked`` as soon as its next delay
   would overrun ``submit``'s timeout, and it never held a slot meanwhile:
   with ``slots=1`` an ungated submission still gets the slot at once.
3. While the gate makes ``submit`` wait, finished work is still reaped and
   its callbacks run, so a gate may wait for *other work to finish*.  Here
   the gate opens only after an earlier Future's callback has fired.
4. A gate returning anything but ``None`` or a number of seconds is a
   ``ValueError``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from jobserver import Blocked, Jobserver

log = logging.getLogger("tour.gate")


class OpensAfter:
    """A gate that refuses ``refusals`` times (asking for ``delay`` s each)."""

    def __init__(self, refusals: int, delay: float) -> None:
        self.refusals = refusals
        self.delay = delay
        self.asked = 0

    def __call__(self) -> float | None:
        self.asked += 1
        return self.delay if self.asked <= self.refusals else None


def undecided() -> Any:
    return "later"  # neither None nor a number: a broken gate


def main() -> None:
    with Jobserver(slots=1) as js:
        # 1. A gate that opens on the fourth question.
        gate = OpensAfter(refusals=3, delay=0.01)
        gated = js.replace_sleep(gate)
        assert gated.submit(os.getpid).result() != os.getpid()
        assert gate.asked == 4, gate.asked
        log.info("the gate was asked %d times before the launch", gate.asked)
        js.submit(os.getpid).result()
        assert gate.asked == 4, "the plain handle consulted the gate"

        # 2. A gate that never opens: Blocked after the timeout, no slot held.
        never = OpensAfter(refusals=10**9, delay=0.05)
        started = time.monotonic()
        try:
            js.replace_sleep(never).submit(os.getpid, timeout=0.3)
        except Blocked as exc:
            waited = time.monotonic() - started
            log.info("closed gate: Blocked after %.2f s (%s)", waited, exc)
        else:
            raise AssertionError("a closed gate let work through")
        free = js.submit(os.getpid, timeout=0)  # the only slot is free
        free.result()
        log.info("the refusing gate held no slot: an ungated submit got it at once")

        # 3. Open the gate when earlier work has finished: reaping goes on
        #    while the gate keeps submit waiting.
        finished: list[str] = []
        first = js.submit(os.getpid)
        first.when_done(finished.append, "first is done")

        def after_first() -> float | None:
            return None if finished else 0.05

        second = js.replace_sleep(after_first).submit(os.getpid, timeout=30)
        assert finished == ["first is done"], finished
        log.info("the gate opened once the earlier Future's callback fired")
        second.result()

        # 4. Only None or a number of seconds is a valid answer.
        try:
            js.replace_sleep(undecided).submit(os.getpid)
        except ValueError as exc:
            log.info("a gate answering 'later' -> ValueError: %s", exc)
        else:
            raise AssertionError("a gate returning a string was accepted")
    log.info("all launch-gate checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

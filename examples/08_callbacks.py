"""08 - Callbacks with ``Future.when_done``.

``future.when_done(fn, *args, **kwargs)`` arranges for ``fn(*args, **kwargs)``
to run in the submitting process once the work is done.  The callback gets
exactly the arguments given (not the Future: pass it yourself if you want
it), and ``when_done`` returns a sequence number, 0 for a Future's first
callback, 1 for its second, and so on.  This example checks that:

1. Callbacks run in registration order, with exactly their own arguments, and
   registering one on a finished Future runs it before ``when_done`` returns.
2. A callback that raises does not stop the others.  The method that ran it
   (``wait``, ``result``, ``done``, ``submit``, ``reclaim_resources``) raises
   ``CallbackRaised`` with the callback's ``seqno`` and the original error as
   ``__cause__``; calling again carries on with the remaining callbacks.
3. ``submit`` reaps earlier work before taking a slot, so it can be the one
   to raise ``CallbackRaised``; simply call it again.
4. The slot is given back *before* callbacks run, so a callback can submit
   new work even when ``slots=1``.
5. A callback may register further callbacks; they run one after another, not
   nested, so even a chain far longer than the recursion limit is fine.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from jobserver import CallbackRaised, Future, Jobserver

log = logging.getLogger("tour.callbacks")


def fail(error: Exception) -> None:
    raise error


def order_and_arguments(js: Jobserver) -> None:
    calls: list[tuple[Any, ...]] = []

    def record(*args: Any, **kwargs: Any) -> None:
        calls.append((args, kwargs))

    future = js(sum, [1, 2, 3])
    assert future.when_done(record, "first") == 0
    assert future.when_done(record, "second", extra=True) == 1
    assert future.result() == 6
    assert calls == [(("first",), {}), (("second",), {"extra": True})], calls
    log.info("callbacks ran in order with their own arguments: %s", calls)

    assert future.when_done(record, "late") == 2
    assert calls[-1] == (("late",), {}), "a late callback should run at once"
    log.info("a callback registered after completion ran immediately")


def draining_errors(js: Jobserver) -> None:
    survivors: list[str] = []
    future = js(sum, [4, 5])
    future.when_done(fail, ValueError("first failure"))  # seqno 0
    future.when_done(survivors.append, "between")  # seqno 1
    future.when_done(fail, KeyError("second failure"))  # seqno 2
    future.when_done(survivors.append, "last")  # seqno 3

    raised: list[CallbackRaised] = []
    while True:
        try:
            future.wait()
        except CallbackRaised as exc:
            log.info("wait() raised %r: %s", exc, exc)
            raised.append(exc)
        else:
            break
    seen = [(exc.seqno, type(exc.__cause__).__name__) for exc in raised]
    assert seen == [(0, "ValueError"), (2, "KeyError")], seen
    assert all(f"seqno={exc.seqno}" in str(exc) for exc in raised), raised
    assert survivors == ["between", "last"], survivors
    assert future.result() == 9
    log.info("drained: %s raised, %s still ran", seen, survivors)


def raised_from_submit(js: Jobserver) -> None:
    # slots=1: the next submit must reap `first` to get its slot, and that
    # runs the raising callback inside submit.
    first = js(os.getpid)
    first.when_done(fail, RuntimeError("noticed by submit"))
    try:
        js(os.getpid)
    except CallbackRaised as exc:
        log.info("submit() raised %s", exc)
    else:
        raise AssertionError("submit should have surfaced the callback error")
    second = js(os.getpid)  # the retry goes through: the slot is free
    assert isinstance(second.result(), int)
    log.info("calling submit() again went through")


def submit_from_callback(js: Jobserver) -> None:
    launched: list[Future[int]] = []

    def launch_follow_up() -> None:
        # timeout=0: this must not wait, the only slot is already free.
        launched.append(js.submit(abs, args=(-7,), timeout=0))

    first = js(os.getpid)
    first.when_done(launch_follow_up)
    first.wait()  # reaps `first`, returns its slot, then runs the callback
    assert launched[0].result() == 7
    log.info("a callback submitted work into the slot just given back")


def callbacks_registering_callbacks(js: Jobserver) -> None:
    hops = sys.getrecursionlimit() * 5
    remaining = [hops]
    future = js(os.getpid)

    def relay() -> None:
        remaining[0] -= 1
        if remaining[0]:
            future.when_done(relay)

    future.when_done(relay)
    future.wait()
    assert remaining == [0], remaining
    log.info("%d callbacks each registering the next ran without recursion", hops)


def main() -> None:
    with Jobserver(slots=1) as js:
        order_and_arguments(js)
        draining_errors(js)
        raised_from_submit(js)
        submit_from_callback(js)
        callbacks_registering_callbacks(js)
    log.info("all callback checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

"""Callbacks that re-enter the library, and raising callbacks met by map.

The spec: a raising callback surfaces as ``CallbackRaised`` from the method
that ran it, and "calling again continues with the rest" -- also when the
callback re-entered the library, and also for ``map``'s iterator (bugs 6 and
7 in docs/reliability.md, found by the soak).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import tasks
from conftest import assert_slots_conserved
from jobserver import CallbackRaised, Jobserver


def exited(pid: int) -> None:
    """Wait until the worker ``pid`` has exited, without reaping it."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def test_callbacks_left_by_a_reentrant_reclaim_still_run(no_leaks: None) -> None:
    ran: list[str] = []
    with Jobserver(context="fork", slots=2) as js:
        future = js.submit(tasks.identity, args=(1,))
        future.when_done(js.reclaim_resources)  # re-enters while draining
        future.when_done(tasks.raise_value_error, "second callback")
        future.when_done(ran.append, "third callback")
        exited(future._worker.pid)
        with pytest.raises(CallbackRaised) as info:
            js.reclaim_resources()  # reaps the worker, runs the callbacks
        assert info.value.seqno == 1
        js.reclaim_resources()  # "calling again continues with the rest"
        assert ran == ["third callback"], "reclaim_resources dropped a callback"
        assert_slots_conserved(js, 2)


def test_callbacks_left_by_another_threads_drain_still_run(no_leaks: None) -> None:
    """The same through a thread: reclaim meets a Future whose callbacks
    another thread is running; when one of them raises there, the rest still
    run from the next reclaim."""
    ran: list[str] = []
    in_callback, go_on = threading.Event(), threading.Event()

    def first() -> None:
        in_callback.set()
        assert go_on.wait(60)

    with Jobserver(context="fork", slots=2) as js:
        future = js.submit(tasks.identity, args=(1,))
        future.when_done(first)
        future.when_done(tasks.raise_value_error, "second callback")
        future.when_done(ran.append, "third callback")
        exited(future._worker.pid)
        raised: list[CallbackRaised] = []

        def waiter() -> None:
            try:
                future.wait(60)  # reaps; runs the callbacks on this thread
            except CallbackRaised as exc:
                raised.append(exc)

        thread = threading.Thread(target=waiter)
        thread.start()
        try:
            assert in_callback.wait(60)
            js.reclaim_resources()  # meets the Future while `first` runs
        finally:
            go_on.set()
            thread.join(60)
        assert [exc.seqno for exc in raised] == [1]
        js.reclaim_resources()
        assert ran == ["third callback"], "reclaim_resources dropped a callback"
        assert_slots_conserved(js, 2)


def test_callbacks_registering_and_submitting_from_a_callback(no_leaks: None) -> None:
    """The re-entrant uses that work: a callback submits (its slot is back
    already, even with one slot), registers another callback on its own
    Future, and asks that Future for its result."""
    seen: list[object] = []
    with Jobserver(context="fork", slots=1) as js:
        future = js.submit(tasks.identity, args=(1,))

        def reenter() -> None:
            seen.append(future.result(0))
            future.when_done(seen.append, "registered from a callback")
            seen.append(js.submit(tasks.identity, args=(2,), timeout=0))

        future.when_done(reenter)
        assert future.result(timeout=60) == 1
        # The callback registered from a callback runs after it, not inside.
        assert seen[0] == 1
        assert seen[1].result(timeout=60) == 2  # type: ignore[attr-defined]
        assert seen[2] == "registered from a callback"
        assert_slots_conserved(js, 1)


class _CallbackStop(BaseException):
    """Not an ``Exception``: a callback raising it is not wrapped."""


def _raise_callback_stop() -> None:
    raise _CallbackStop("not map's business either")


@pytest.mark.parametrize(
    ("callback", "surfaces"),
    [
        (
            functools.partial(tasks.raise_value_error, "not map's business"),
            CallbackRaised,
        ),
        # A BaseException is not wrapped (the spec), and is no more map's
        # business than CallbackRaised (bug 15).
        (_raise_callback_stop, _CallbackStop),
    ],
    ids=["exception", "base-exception"],
)
def test_map_survives_a_raising_callback_of_another_future(
    no_leaks: None, callback: Any, surfaces: type[BaseException]
) -> None:
    """The callback's exception surfaces from ``next()``; iterating again
    goes on, with no launched result lost and no input skipped."""
    with Jobserver(context="fork", slots=3) as js:
        r, w = os.pipe()
        try:
            other = js.submit(os.read, args=(r, 1))
            other.when_done(callback)
            results = js.map(tasks.identity, [(i,) for i in range(6)], buffersize=1)
            os.write(w, b"x")
            exited(other._worker.pid)  # reaped by map's next refill
            got: list[int] = []
            raised = 0
            while True:
                try:
                    got.append(next(results))
                except StopIteration:
                    break
                except surfaces:
                    raised += 1  # as from submit: calling again continues
            assert raised == 1
            assert got == list(range(6)), f"map yielded {got}"
        finally:
            os.close(r)
            os.close(w)
        js._resources.drain(collect_errors=True)
        assert_slots_conserved(js, 3)


def test_map_still_ends_on_an_interrupt_of_its_own(no_leaks: None) -> None:
    """A ``BaseException`` that no callback raised (here: from the inputs
    themselves) still ends the iteration, as it ends a generator."""

    def inputs() -> Iterator[tuple[int]]:
        yield (1,)
        raise _CallbackStop("from the inputs")

    with Jobserver(context="fork", slots=2) as js:
        results = js.map(tasks.identity, inputs(), buffersize=1)
        got = []
        with pytest.raises(_CallbackStop):
            for value in results:
                got.append(value)
        # The refill that reads the failing input runs before the first
        # result is collected, so the error comes first; then nothing more.
        assert got == []
        assert list(results) == []
        js._resources.drain(collect_errors=True)
        assert_slots_conserved(js, 2)


def test_map_raises_a_pending_callback_before_consuming_inputs(
    no_leaks: None,
) -> None:
    """As ``submit``: a raising callback of finished work surfaces from the
    ``map`` call before any input is consumed or launched; calling again
    proceeds."""
    consumed: list[int] = []

    def inputs() -> Iterator[tuple[int]]:
        for i in range(3):
            consumed.append(i)
            yield (i,)

    with Jobserver(context="fork", slots=2) as js:
        other = js.submit(tasks.identity, args=(0,))
        other.when_done(tasks.raise_value_error, "pending")
        exited(other._worker.pid)
        with pytest.raises(CallbackRaised):
            js.map(tasks.identity, inputs())
        assert consumed == []
        assert js._resources.tracked_count == 0
        assert list(js.map(tasks.identity, inputs())) == [0, 1, 2]
        assert_slots_conserved(js, 2)

"""A KeyboardInterrupt (any exception a signal handler raises) in the middle
of the parent's bookkeeping loses nothing: no slot, no descriptor, no child,
no result, and the signal mask is what it was.

The interrupts are placed deterministically with ``interrupts.interrupt_after``
(right after a C call returns, where CPython runs signal handlers); the
soak (scripts/soak, the ``interrupt`` episode) does the same with real timer
signals.  The failing ones are core bugs the soak found.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from typing import Any, Callable

import pytest
import tasks
from conftest import assert_slots_conserved, free_slots, open_fds
from interrupts import BACKEDGES_TRACEABLE, in_function, in_package, interrupt_after
from jobserver import Blocked, Jobserver

MiB = 1024 * 1024

#: The kinds of points where CPython runs signal handlers (tests/interrupts.py).
EVENTS = [
    "c_return",
    "call",
    pytest.param(
        "backedge",
        marks=pytest.mark.skipif(
            not BACKEDGES_TRACEABLE,
            reason="no reliable opcode trace events on this CPython",
        ),
    ),
]


def abandon(js: Jobserver) -> None:
    """After a bug showed: leave the with block even if the broken Future
    breaks it too, and reap and close what it still holds, so that the
    ``no_leaks`` check measures the test and not the bug's aftermath."""
    futures = list(js._resources._tracked)
    try:
        js.__exit__(None, None, None)
    except Exception:
        pass
    for future in futures:
        worker = future._worker
        try:
            os.kill(worker.pid, signal.SIGKILL)  # it may be blocked writing
            os.waitpid(worker.pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass
        if worker.result_fd >= 0:
            os.close(worker.result_fd)
            worker.result_fd = -1
        worker.close()


@pytest.fixture(autouse=True)
def _restore_mask() -> object:
    """A failing test must not leave this process's signals blocked."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


# --- DeferSignals ------------------------------------------------------------------


def test_interrupt_while_deferring_signals_restores_the_mask(no_leaks: None) -> None:
    """At every point inside DeferSignals' enter and exit: afterwards this
    thread's mask is what it was, and a worker forked later gets no signal
    blocked (otherwise it could not be cancelled with SIGTERM).  Regression
    test for a bug the soak found: a handler that ran right after the mask was
    blocked, before the ``with`` body, left every signal blocked for good."""
    from jobserver._signals import DeferSignals

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    fired = 0
    # On entry a handler may run right after the mask was blocked (for a
    # signal that arrived just before); on exit only once it is restored.
    for where, anywhere in (("__enter__", True), ("__exit__", False)):
        nth = 1
        while True:
            with interrupt_after(
                in_function("jobserver._signals", where),
                nth,
                deliverable_only=not anywhere,
            ) as hit:
                try:
                    with DeferSignals():
                        pass
                except KeyboardInterrupt:
                    pass
            if not hit.fired:
                break
            fired += 1
            assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask, hit.where
            nth += 1
    assert fired >= 2
    with Jobserver(context="fork", slots=1) as js:
        blocked = js.submit(signal.pthread_sigmask, args=(signal.SIG_BLOCK, [])).result(
            timeout=60
        )
        assert blocked == mask


# --- reading results ------------------------------------------------------------------


@pytest.mark.parametrize("call", ["read", "readv"])
def test_interrupt_right_after_a_result_read_loses_no_bytes(
    call: str, no_leaks: None
) -> None:
    size = 2 * MiB
    js = Jobserver(context="fork", slots=1).__enter__()
    try:
        future = js.submit(tasks.big_bytes, args=(size,))
        # Reads happen with signals deferred: no handler can run right after
        # one, so the interrupt cannot be delivered there at all.
        with interrupt_after(
            in_function("jobserver._wire", "read_available", call)
        ) as hit:
            try:
                future.result(timeout=60)
            except KeyboardInterrupt:
                pass
        try:
            value = future.result(timeout=60)
        except Exception as exc:  # the bug shows as any of several
            raise AssertionError(f"interrupted after {hit.where}: {exc!r}") from exc
        assert len(value) == size, f"interrupted after {hit.where}"
        assert_slots_conserved(js, 1)
    finally:
        abandon(js)


def test_interrupt_at_end_of_file_leaves_the_worker_reapable(no_leaks: None) -> None:
    with Jobserver(context="fork", slots=1) as js:
        future = js.submit(tasks.identity, args=(1,))
        # Wait (without reaping) until the worker is gone, so that wait()
        # finds end-of-file at once, before it polls anything.
        os.waitid(os.P_PID, future._worker.pid, os.WEXITED | os.WNOWAIT)
        with interrupt_after(
            in_function("jobserver._future", "_advance", "close")
        ) as hit:
            try:
                future.wait(60)
            except KeyboardInterrupt:
                pass
        # Whoever was interrupted drops the Future (an interrupted submit never
        # even returned it); reclaiming must still give the slot back.
        try:
            later = js.submit(tasks.identity, args=(2,), timeout=10)
        except Blocked:
            raise AssertionError(
                f"the slot of {future!r} never came back (interrupted after "
                f"{hit.where})"
            ) from None
        assert later.result(timeout=60) == 2
        assert future.result(timeout=60) == 1


@pytest.mark.parametrize("callee", ["release", "acquire"])
def test_interrupt_around_polling_keeps_the_future_whole(
    callee: str, no_leaks: None
) -> None:
    with Jobserver(context="fork", slots=1) as js:
        r, w = os.pipe()  # the worker waits for a byte from this test
        leaked: set[int] = set()
        try:
            future = js.submit(os.read, args=(r, 1))
            # After the first submit: the resource set's own epoll descriptor
            # (made on first use, closed with the set) is not a leak.
            before = open_fds() - {future._worker.result_fd}
            with interrupt_after(
                in_function("jobserver._future", "_settle", callee)
            ) as hit:
                try:
                    future.wait(0.05)
                except KeyboardInterrupt:
                    pass
                except Exception as exc:
                    raise AssertionError(
                        f"{exc!r} instead of KeyboardInterrupt after {hit.where}"
                    ) from exc
            os.write(w, b"x")
            assert future.result(timeout=60) == b"x"
            leaked = open_fds() - before
            assert not leaked, f"descriptors {leaked} left open after {hit.where}"
        finally:
            for fd in (r, w, *leaked):
                os.close(fd)
        assert_slots_conserved(js, 1)


def _close_leaks(before: set[int], where: str | None, problems: list[str]) -> None:
    """Report and close the descriptors opened since ``before``."""
    leaked = open_fds() - before
    if leaked:
        problems.append(f"descriptors {sorted(leaked)} leaked after {where}")
        for fd in leaked:
            os.close(fd)


# --- submit, reclaim and result, at every point ------------------------------------------


def _sweep(method: str, operation: str, event: str = "c_return") -> list[str]:
    """Interrupt ``operation`` after each C call the library makes (or, with
    ``event="call"``, at the entry of each of its Python functions), one
    point per round; what each round left broken."""
    problems: list[str] = []
    nth = 1
    while True:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        fds = open_fds()
        with Jobserver(context=method, slots=1) as js:
            future = None
            if operation != "submit":
                future = js.submit(tasks.identity, args=("x" * 100_000,))
            before = set(js._resources._tracked)
            with interrupt_after(in_package("jobserver"), nth, event=event) as hit:
                try:
                    if operation == "submit":
                        future = js.submit(tasks.identity, args=("x" * 100_000,))
                    elif operation == "result":
                        assert future is not None
                        future.result(timeout=60)
                    else:
                        js.reclaim_resources()
                except KeyboardInterrupt:
                    pass
                except Exception as exc:  # the interrupt turned into something else
                    problems.append(
                        f"{exc!r} instead of KeyboardInterrupt after {hit.where}"
                    )
            if not hit.fired:
                return problems
            if signal.pthread_sigmask(signal.SIG_BLOCK, []) != mask:
                problems.append(f"mask left blocked after {hit.where}")
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if future is None:  # an interrupted submit: find its work, if any
                launched = set(js._resources._tracked) - before
                future = launched.pop() if launched else None
            if future is not None:
                try:
                    if future.result(timeout=30) != "x" * 100_000:
                        problems.append(f"wrong value after {hit.where}")
                except Exception as exc:
                    problems.append(f"{exc!r} after {hit.where}")
            try:
                js.submit(tasks.identity, args=(1,), timeout=15).result(timeout=60)
            except Blocked:
                problems.append(f"slot not back after {hit.where}")
            if free_slots(js) != 1 and not js._resources.tracked_count:
                problems.append(f"slots wrong after {hit.where}")
        _close_leaks(fds, hit.where, problems)
        nth += 1


@pytest.mark.slow
@pytest.mark.parametrize("operation", ["submit", "result", "reclaim"])
def test_interrupt_anywhere_loses_nothing(operation: str, no_leaks: None) -> None:
    problems = _sweep("fork", operation)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("operation", ["submit", "result", "reclaim"])
def test_interrupt_at_any_function_entry_loses_nothing(
    operation: str, no_leaks: None
) -> None:
    """The other place CPython runs handlers: the entry of a Python function,
    before its first line (so before any ``try`` of its own).  Regression
    test for a bug the soak found: an interrupt at the entry of the step
    that stops polling left the Future counting a poller for good, its
    lock released twice (``RuntimeError``) and its pipe never closed."""
    problems = _sweep("fork", operation, event="call")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("event", EVENTS)
def test_interrupt_anywhere_in_a_timed_wait_keeps_the_future_whole(
    event: str, no_leaks: None
) -> None:
    """Every point of ``wait(timeout)`` on a running worker where a handler
    can run (after a C call, at a Python function's entry): the interrupt
    surfaces as itself, and the Future still delivers its value and closes
    its pipe."""
    problems: list[str] = []
    nth = 1
    while True:
        with Jobserver(context="fork", slots=1) as js:
            r, w = os.pipe()  # the worker waits for a byte from this test
            try:
                # The resource set's own descriptors exist from the first
                # submission on; after that, a finished Future leaves none.
                js.submit(tasks.identity, args=(0,)).result(timeout=60)
                before = open_fds()
                future = js.submit(os.read, args=(r, 1))
                with interrupt_after(in_package("jobserver"), nth, event=event) as hit:
                    try:
                        future.wait(0.05)
                    except KeyboardInterrupt:
                        pass
                    except Exception as exc:
                        problems.append(
                            f"{exc!r} instead of KeyboardInterrupt after {hit.where}"
                        )
                os.write(w, b"x")
                if future.result(timeout=60) != b"x":
                    problems.append(f"wrong value after {hit.where}")
                _close_leaks(before, hit.where, problems)
            finally:
                os.write(w, b"x")  # whatever happened, the worker may finish
                for tracked in list(js._resources._tracked):
                    tracked.wait(60)
                os.close(r)
                os.close(w)
        if not hit.fired:
            break
        nth += 1
    # Loops are few on this path: a back edge or two.
    assert nth > (1 if event == "backedge" else 3), "the interrupt never fired"
    assert not problems, "\n".join(problems)


# --- a submit that waits for the slot, and map, at every point ------------------------


def _outside_finalizers(frame: Any, arg: Any) -> bool:
    # Python ignores (prints) what a finalizer raises: an interrupt there
    # never reaches the caller, and there is nothing to check.
    return frame.f_code.co_name != "__del__" and in_package("jobserver")(frame, arg)


def _blocked_submit(js: Jobserver) -> list[object]:
    busy = js.submit(tasks.sleep_then, args=(0.02, "busy"))
    waited = js.submit(tasks.identity, args=("x",))  # waits for busy's slot
    return [busy, waited]


def _map(js: Jobserver) -> list[object]:
    values = list(js.map(tasks.identity, [(i,) for i in range(5)], chunksize=2))
    assert values == list(range(5))
    return []


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("operation", [_blocked_submit, _map], ids=["submit", "map"])
def test_interrupt_anywhere_in_a_slot_wait_or_map_loses_nothing(
    operation: Callable[[Jobserver], list[object]], event: str, no_leaks: None
) -> None:
    """A ``submit`` that waits for a slot (``wait_events``) and ``map`` (its
    refills and its iterator), interrupted at each point in turn: the
    interrupt surfaces as itself; afterwards the slot is free, no Future
    counts a poller, no descriptor is left and the mask is as before."""
    problems: list[str] = []
    nth = 1
    while True:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        fds = open_fds()
        with Jobserver(context="fork", slots=1) as js:
            with interrupt_after(_outside_finalizers, nth, event=event) as hit:
                try:
                    operation(js)
                except KeyboardInterrupt:
                    pass
                except Exception as exc:
                    problems.append(
                        f"{exc!r} instead of KeyboardInterrupt after {hit.where}"
                    )
            for future in list(js._resources._tracked):
                future.wait(60)
                if future._pollers:
                    problems.append(f"a poller left counted after {hit.where}")
            if signal.pthread_sigmask(signal.SIG_BLOCK, []) != mask:
                problems.append(f"mask left blocked after {hit.where}")
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if free_slots(js) != 1:
                problems.append(f"slot not back after {hit.where}")
        _close_leaks(fds, hit.where, problems)
        if not hit.fired:
            break
        nth += 1
    assert nth > (1 if event == "backedge" else 5), "the interrupt never fired"
    assert not problems, "\n".join(problems)


# --- an interrupted exit from the last ``with`` block ----------------------------------


@pytest.mark.parametrize("event", EVENTS)
def test_an_interrupted_exit_leaves_nothing_open_once_the_work_is_waited_for(
    event: str, no_leaks: None
) -> None:
    """``__exit__`` of the last scope waits for outstanding work and closes
    the resource set (in a ``finally``, so also when interrupted).  Work it
    did not wait for can still be waited for afterwards; once it has been,
    nothing of the set is open -- before the Jobserver is garbage collected
    (a wait used to make the set a new epoll descriptor after it closed)."""
    problems: list[str] = []
    nth = 1
    while True:
        fds = open_fds()
        js = Jobserver(context="fork", slots=1)
        js.__enter__()
        futures = [js.submit(tasks.identity, args=(i,), consume=0) for i in range(3)]
        with interrupt_after(_outside_finalizers, nth, event=event) as hit:
            try:
                js.__exit__(None, None, None)
            except KeyboardInterrupt:
                pass
        if not hit.fired:
            break
        for i, future in enumerate(futures):
            if future.result(timeout=60) != i:
                problems.append(f"wrong value after {hit.where}")
        if js._resources._closed:  # else the interrupt came before the exit began
            _close_leaks(fds, hit.where, problems)
        else:
            js.__exit__(None, None, None)
        del js, futures
        nth += 1
    # How many loops the exit runs depends on whether the work is done by
    # then (a loaded machine: sometimes only two back edges); never none.
    assert nth > (1 if event == "backedge" else 3), "the interrupt never fired"
    assert not problems, "\n".join(problems)


def _sweep_construction(build: Callable[[], Jobserver], event: str) -> list[str]:
    """Run ``build`` with an interrupt at each point in turn; close what it
    built, as the exit of its last scope would, and report the descriptors
    left open once the half-built objects are gone."""
    problems: list[str] = []
    nth = 1
    while True:
        fds = open_fds()
        with interrupt_after(_outside_finalizers, nth, event=event) as hit:
            try:
                js: Jobserver | None = build()
            except KeyboardInterrupt:
                js = None
        if js is not None:
            js._resources.close()
        del js
        gc.collect()
        _close_leaks(fds, hit.where, problems)
        if not hit.fired:
            break
        nth += 1
    assert nth > 3, "the interrupt never fired"
    return problems


@pytest.mark.parametrize("event", ["c_return", "call"])  # no loops on this path
@pytest.mark.parametrize("slots", [None, 2], ids=["default", "slots"])
def test_an_interrupted_constructor_leaves_no_descriptor_open(
    event: str, slots: int | None, no_leaks: None
) -> None:
    """``Jobserver(...)`` cut short at each point: the pipe it made for its
    slots is closed once the half-built object is dropped (before, an
    interrupt right after ``os.pipe()`` leaked both ends for good -- the
    soak's interrupted exits found it)."""
    problems = _sweep_construction(
        lambda: Jobserver(context="fork", slots=slots), event
    )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("event", ["c_return", "call"])  # no loops on this path
@pytest.mark.parametrize("form", ["fds", "fifo"])
def test_an_interrupted_join_of_make_leaves_no_descriptor_open(
    form: str, event: str, tmp_path: Any, no_leaks: None
) -> None:
    """Joining a Make jobserver (``Jobserver.join``, or ``Jobserver()``
    under Make) opens descriptors of its own on Make's pipe or FIFO.  Cut
    short at each point, it leaves none of them open (before, an interrupt
    between opening them and building the pool leaked them for good)."""
    r, w = os.pipe()  # Make's pipe
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    auth = f"{r},{w}" if form == "fds" else f"fifo:{fifo}"

    def join() -> Jobserver:
        js = Jobserver.join(f"-j2 --jobserver-auth={auth}", implicit=False)
        assert js is not None and js._resources.pool.kind == f"make-{form}"
        return js

    try:
        problems = _sweep_construction(join, event)
    finally:
        os.close(r)
        os.close(w)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("event", ["c_return", "call"])
def test_an_interrupted_submit_never_launches_a_worker_without_its_time_limit(
    event: str, no_leaks: None
) -> None:
    """With ``replace_time_limit``, the limit is attached in the same
    deferred step that launches and tracks the worker: whatever point the
    interrupt hits, a launched worker is one the parent will stop in time
    (before, an interrupt right after the launch left it without the
    parent's SIGTERM and SIGKILL)."""
    problems: list[str] = []
    nth = 1
    while True:
        with Jobserver(context="fork", slots=1) as plain:
            js = plain.replace_time_limit(60)
            with interrupt_after(_outside_finalizers, nth, event=event) as hit:
                try:
                    js.submit(tasks.identity, args=(1,))
                except KeyboardInterrupt:
                    pass
            for future in list(js._resources._tracked):
                if future._limit is None:
                    problems.append(f"a worker without its limit after {hit.where}")
                future.wait(60)
        if not hit.fired:
            break
        nth += 1
    assert nth > 5, "the interrupt never fired"
    assert not problems, "\n".join(problems)


# --- asyncio: the loop's driver and its slot wait, at every point ----------------------


async def _await_running(js: Jobserver, made: list[Any], r: int, w: int) -> None:
    from jobserver import aio

    made.append(js.submit(os.read, args=(r, 1)))
    waiter = asyncio.ensure_future(aio.result(made[0]))
    await asyncio.sleep(0)  # the loop now watches the result pipe
    os.write(w, b"x")
    assert await waiter == b"x"


async def _await_slot(js: Jobserver, made: list[Any], r: int, w: int) -> None:
    from jobserver import aio

    made.append(js.submit(os.read, args=(r, 1)))  # holds the only slot
    asyncio.get_running_loop().call_soon(os.write, w, b"x")  # once the wait began
    made.append(await aio.submit(js, tasks.identity, args=("y",)))
    assert await aio.result(made[-1]) == "y"


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize(
    "operation", [_await_running, _await_slot], ids=["await", "submit"]
)
def test_interrupt_anywhere_under_asyncio_loses_nothing(
    operation: Callable[..., Any], event: str, no_leaks: None
) -> None:
    """``asyncio.run`` of an ``await`` on a running worker, and of an
    ``aio.submit`` waiting for the slot, interrupted at each point of the
    library in turn (a second Ctrl-C under ``asyncio.run`` raises
    ``KeyboardInterrupt`` wherever the loop is): the interrupt ends the run,
    and afterwards every Future delivers its value, none counts a poller or
    keeps a driver, the slot is free and no descriptor is left."""
    from jobserver import aio

    problems: list[str] = []
    nth = 1
    while True:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        fds = open_fds()
        made: list[Any] = []
        r, w = os.pipe()  # the first worker waits for a byte from the loop
        with Jobserver(context="fork", slots=1) as js:
            with interrupt_after(_outside_finalizers, nth, event=event) as hit:
                try:
                    asyncio.run(operation(js, made, r, w))
                except KeyboardInterrupt:
                    pass
                except Exception as exc:
                    problems.append(
                        f"{exc!r} instead of KeyboardInterrupt after {hit.where}"
                    )
            os.write(w, b"x")  # in case the interrupt came before the loop's
            for future in {*made, *js._resources._tracked}:
                future.wait(60)
                if future._pollers:
                    problems.append(f"a poller left counted after {hit.where}")
            if aio._DRIVERS:
                problems.append(f"a driver left registered after {hit.where}")
                aio._DRIVERS.clear()
            if signal.pthread_sigmask(signal.SIG_BLOCK, []) != mask:
                problems.append(f"mask left blocked after {hit.where}")
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if free_slots(js) != 1:
                problems.append(f"slot not back after {hit.where}")
        os.close(r)
        os.close(w)
        del made
        gc.collect()
        _close_leaks(fds, hit.where, problems)
        if not hit.fired:
            break
        nth += 1
    assert nth > (1 if event == "backedge" else 5), "the interrupt never fired"
    assert not problems, "\n".join(problems)

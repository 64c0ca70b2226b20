"""The dispatcher's wake-up protocol never loses a wake-up.

User threads write one byte down the wake-up pipe only when no wake-up is
already in flight (a flag), so the dispatcher must empty the pipe before it
lowers the flag.  The first test injects a wake-up at the exact instant
between the two steps; the others hammer the paths that rely on it."""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any

import executor_tasks as et
import pytest
from conftest import START_METHODS
from executor_modes import executor_mode, fresh_only  # noqa: F401
from interrupts import (
    BACKEDGES_TRACEABLE,
    Predicate,
    in_function,
    in_package,
    interrupt_after,
)
from jobserver_executor import JobserverExecutor, WorkerLost

pytestmark = pytest.mark.filterwarnings(et.FORK_WARNING_FILTER)


@pytest.fixture(autouse=True, scope="module")
def _warm_up() -> None:
    et.warm_up(START_METHODS)


def test_a_wake_up_during_the_drain_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ex = JobserverExecutor(1, mp_context="fork")  # no submit: no thread yet
    dispatcher = ex._dispatcher
    dispatcher.wake()
    real_read = os.read
    injected = []

    def read_with_a_concurrent_wake(fd: int, size: int) -> bytes:
        if fd == dispatcher._wake_r and not injected:
            injected.append(True)
            dispatcher.wake()  # another thread queues work right now
        return real_read(fd, size)

    monkeypatch.setattr(os, "read", read_with_a_concurrent_wake)
    dispatcher._drain_wakeups()
    monkeypatch.setattr(os, "read", real_read)
    assert injected
    # The dispatcher re-checks its queues after draining; the next wake-up
    # must reach the pipe.
    dispatcher.wake()
    assert os.read(dispatcher._wake_r, 16) == b"\0"
    ex.shutdown()


@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_terminate_right_after_submitting(start: str, no_leaks: None) -> None:
    if start not in START_METHODS:
        pytest.skip(f"no {start} start method here")
    for _ in range(15):
        gate = et.Gate()
        try:
            ex = JobserverExecutor(2, mp_context=start)
            running = [ex.submit(et.wait_on_gate, gate.path) for _ in range(2)]
            pending = [ex.submit(abs, -1) for _ in range(3)]
            gate.wait_for_worker(2)
            ex.kill_workers()
            for future in running:
                assert isinstance(future.exception(et.PATIENCE), WorkerLost)
            assert all(f.cancelled() for f in pending)
            ex.shutdown()
        finally:
            gate.close()


def test_many_threads_submitting_and_cancelling(no_leaks: None) -> None:
    import threading

    ex = JobserverExecutor(2, mp_context="fork")
    results: list[Any] = []
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            futures = [ex.submit(abs, -(offset + i)) for i in range(40)]
            for future in futures[::3]:
                future.cancel()
            for future in futures:
                if not future.cancelled():
                    results.append(future.result(et.PATIENCE))
        except BaseException as exc:  # pragma: no cover - what we look for
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k * 100,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(et.PATIENCE * 2)
    ex.shutdown()
    assert not errors
    assert all(not t.is_alive() for t in threads)
    assert len(results) >= 4 * 40 // 2


@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_no_future_is_left_pending_by_cancel_futures(
    start: str, no_leaks: None
) -> None:
    # Shut down right after submitting, so the dispatcher is often in the
    # middle of launching the oldest item: when shutdown returns, every
    # future must be cancelled, running or done, as with the stdlib.
    if start not in START_METHODS:
        pytest.skip(f"no {start} start method here")
    for _ in range(30):
        ex = JobserverExecutor(1, mp_context=start)
        futures = [ex.submit(abs, -i) for i in range(6)]
        ex.shutdown(wait=False, cancel_futures=True)
        states = [f.cancelled() or f.running() or f.done() for f in futures]
        assert all(states), [f._state for f in futures]  # type: ignore[attr-defined]
        ex.shutdown(wait=True)
        assert all(f.cancelled() or f.result(0) == i for i, f in enumerate(futures))


def _sweep_submits(predicate: Predicate, event: str) -> list[str]:
    """``submit`` in the main thread, interrupted at each matching point in
    turn: afterwards later work still runs and the executor shuts down."""
    problems: list[str] = []
    nth = 1
    while True:
        ex = JobserverExecutor(1, mp_context="fork")
        try:
            assert ex.submit(et.identity, 0).result(timeout=60) == 0
            with interrupt_after(predicate, nth, event=event) as hit:
                try:
                    ex.submit(et.identity, 1)
                except KeyboardInterrupt:
                    pass
            try:
                if ex.submit(et.identity, 2).result(timeout=30) != 2:
                    problems.append(f"a wrong value after {hit.where}")
            except concurrent.futures.TimeoutError:
                problems.append(f"later work never ran after {hit.where}")
                dispatcher = ex._dispatcher
                with dispatcher._lock:  # unstick it, so that the test ends
                    dispatcher._woken = False
                    dispatcher._wake_locked()
        finally:
            ex.shutdown(wait=True)
        if not hit.fired:
            break
        nth += 1
    assert nth > 3, "the interrupt never fired"
    return problems


@pytest.mark.parametrize("event", ["c_return", "call"])
def test_an_interrupted_submit_leaves_the_executor_working(
    event: str, no_leaks: None
) -> None:
    """An interrupt (a signal handler raising in the submitting thread) at
    each point of ``submit`` where CPython runs handlers: later work runs
    and the executor shuts down.  (With reused workers, one after the fast
    path took an idle worker but before the call reached it left that
    worker busy for good, and ``shutdown`` waited for it forever.)"""
    problems = _sweep_submits(in_package("jobserver_executor"), event)
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(not BACKEDGES_TRACEABLE, reason="no opcode trace events here")
@pytest.mark.usefixtures("fresh_only")
def test_an_interrupted_wake_up_never_silences_the_dispatcher(no_leaks: None) -> None:
    """The same before each instruction of the wake-up itself, as CPython
    3.9 and 3.10 allow: it used to raise the in-flight flag before writing
    the byte, and an interrupt between the two left the flag up with no
    byte in the pipe, so no later ``submit`` or ``shutdown`` woke the
    dispatcher again.  (Fresh mode: there ``submit`` always wakes the
    dispatcher; with reused workers an idle worker takes the call
    directly.)"""
    wake = in_function("jobserver_executor._executor", "_wake_locked")
    problems = _sweep_submits(wake, "opcode")
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(not BACKEDGES_TRACEABLE, reason="no opcode trace events here")
def test_a_call_queued_by_an_interrupted_submit_is_not_left_waiting(
    executor_mode: str,  # noqa: F811 - the fixture
    no_leaks: None,
) -> None:
    """Interrupted before each instruction of its wake-up (as CPython 3.9
    and 3.10 allow), a ``submit`` has either not queued its call yet, or the
    call runs with no later ``submit`` or ``shutdown`` to wake the
    dispatcher.  (``submit`` used to queue the call before the wake-up, and
    an interrupt at the wake-up's entry left the call waiting for the next
    one.)  The dispatcher is asleep with no idle worker before it, so that
    reused workers take this queueing path too."""
    wake = in_function("jobserver_executor._executor", "_wake_locked")
    problems: list[str] = []
    nth = 1
    while True:
        ex = JobserverExecutor(1, mp_context="fork")
        try:
            if executor_mode == "reuse":
                # Its worker exits: none is left idle (the next call queues).
                with pytest.raises(WorkerLost):
                    ex.submit(et.exit_now, 0).result(timeout=et.PATIENCE)
            else:
                assert ex.submit(et.identity, 0).result(timeout=et.PATIENCE) == 0
            with interrupt_after(wake, nth, event="opcode") as hit:
                try:
                    ex.submit(et.identity, 1)
                except KeyboardInterrupt:
                    pass
            dispatcher = ex._dispatcher
            with dispatcher._lock:
                queued = [item.future for item in dispatcher._pending.values()]
            # Queued: the dispatcher must be on its way to it.  (Not queued,
            # or already taken: nothing to wait for.)
            done, _ = concurrent.futures.wait(queued, timeout=et.PATIENCE)
            if len(done) < len(queued):
                problems.append(f"a queued call was left waiting after {hit.where}")
        finally:
            ex.shutdown(wait=True)  # wakes the dispatcher in any case
        if problems or not hit.fired:
            break
        nth += 1
    assert not problems, "\n".join(problems)
    assert nth > 3, "the interrupt never fired"

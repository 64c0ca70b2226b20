"""The dispatcher's wake-up protocol never loses a wake-up.

User threads write one byte down the wake-up pipe only when no wake-up is
already in flight (a flag), so the dispatcher must empty the pipe before it
lowers the flag.  The first test injects a wake-up at the exact instant
between the two steps; the others hammer the paths that rely on it."""

from __future__ import annotations

import os
from typing import Any

import executor_tasks as et
import pytest
from conftest import START_METHODS
from executor_modes import executor_mode  # noqa: F401
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

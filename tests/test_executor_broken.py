"""When the executor's own machinery fails (the dispatcher thread dies), every
outstanding future fails with a ``BrokenExecutor`` subclass naming the cause,
running workers are stopped and reaped, and nothing hangs."""

from __future__ import annotations

import concurrent.futures as cf
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import executor_tasks as et
import pytest
from conftest import START_METHODS
from jobserver import Jobserver
from jobserver_executor import BrokenJobserverExecutor, JobserverExecutor

pytestmark = pytest.mark.filterwarnings(et.FORK_WARNING_FILTER)


@pytest.fixture(autouse=True, scope="module")
def _warm_up() -> None:
    et.warm_up(START_METHODS)


class Injected(BaseException):
    """Not an Exception: nothing on the way may swallow it."""


def _assert_broken(future: cf.Future[Any], cause: type, text: str) -> None:
    error = future.exception(et.PATIENCE)
    assert isinstance(error, BrokenJobserverExecutor), error
    assert isinstance(error, BrokenProcessPool)
    assert isinstance(error, cf.BrokenExecutor)
    assert isinstance(error.__cause__, cause)
    assert text in str(error)


def test_dispatcher_failure_fails_every_outstanding_future(
    method: str, no_leaks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = et.Gate()
    ex = JobserverExecutor(1, mp_context=method)
    try:
        running = ex.submit(et.wait_on_gate, gate.path)
        gate.wait_for_worker()
        pending = [ex.submit(abs, -i) for i in range(3)]

        def failing_wait(*args: Any, **kwargs: Any) -> None:
            raise OSError("injected failure")

        monkeypatch.setattr(ex._dispatcher, "_wait", failing_wait)
        ex._dispatcher.wake()  # the next turn of the loop hits the failure
        for future in [running, *pending]:
            _assert_broken(future, OSError, "OSError: injected failure")
        with pytest.raises(BrokenJobserverExecutor, match="injected failure"):
            ex.submit(abs, 1)
        ex.shutdown(wait=True)  # returns: the running worker was killed, reaped
        thread = ex._dispatcher.thread
        assert thread is not None
        thread.join(et.PATIENCE)
        assert not thread.is_alive()
        assert "broken" in repr(ex)
    finally:
        gate.close()


def test_failure_inside_a_core_call_while_launching(
    method: str, no_leaks: None
) -> None:
    with JobserverExecutor(2, mp_context=method) as ex:
        assert ex.submit(abs, -1).result(et.PATIENCE) == 1

        def exploding_submit(inner: Jobserver, *args: Any, **kwargs: Any) -> Any:
            raise Injected("the core exploded")

        # Only this executor's handle: other executors are not affected.
        ex._dispatcher.handle = et.PatchedHandle(  # type: ignore[assignment]
            ex._dispatcher.handle, submit=exploding_submit
        )
        future = ex.submit(abs, -2)
        _assert_broken(future, Injected, "Injected: the core exploded")


def test_callback_raising_system_exit_breaks_the_executor_cleanly(
    method: str, no_leaks: None
) -> None:
    gate = et.Gate()
    ex = JobserverExecutor(2, mp_context=method)
    try:
        running = ex.submit(et.wait_on_gate, gate.path)
        gate.wait_for_worker()
        first = ex.submit(abs, -1)
        first.add_done_callback(lambda f: _raise(SystemExit(4)))
        assert first.result(et.PATIENCE) == 1  # its own outcome is kept
        _assert_broken(running, SystemExit, "SystemExit: 4")
        with pytest.raises(BrokenJobserverExecutor):
            ex.submit(abs, 1)
        ex.shutdown()
    finally:
        gate.close()


def _raise(exc: BaseException) -> None:
    raise exc


def test_break_while_results_wait_for_delivery(
    no_leaks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = JobserverExecutor(2, mp_context="fork")
    assert ex.submit(abs, -1).result(et.PATIENCE) == 1
    original = ex._dispatcher._deliver
    calls = []

    def failing_deliver() -> None:
        calls.append(1)
        if ex._dispatcher._finished:
            raise RuntimeError("delivery failed")
        original()

    monkeypatch.setattr(ex._dispatcher, "_deliver", failing_deliver)
    future = ex.submit(abs, -2)
    _assert_broken(future, RuntimeError, "delivery failed")
    ex.shutdown()

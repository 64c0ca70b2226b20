"""Per-task wall-clock limits: replace_time_limit and TimeLimitExceeded."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pickle
import time

import limit_tasks
import pytest
import tasks
from conftest import assert_slots_conserved, child_pids
from executor_tasks import FORK_WARNING_FILTER
from jobserver import Jobserver, LostResult, TimeLimitExceeded


def test_exception_type_and_message() -> None:
    exc = TimeLimitExceeded(2.0, 2.25, pid=123, how="terminated with SIGTERM")
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, concurrent.futures.TimeoutError) or (
        concurrent.futures.TimeoutError is not TimeoutError
    )
    assert not isinstance(exc, LostResult)
    assert "2.25 s" in str(exc) and "limit of 2 s" in str(exc)
    again = pickle.loads(pickle.dumps(exc))
    assert (again.limit, again.elapsed, again.pid, again.how) == (
        2.0,
        2.25,
        123,
        "terminated with SIGTERM",
    )


def test_validation() -> None:
    with Jobserver("fork", slots=1) as js:
        for bad in (True, "1", None.__class__):
            with pytest.raises(TypeError):
                js.replace_time_limit(bad)  # type: ignore[arg-type]
        for bad_value in (0, -1, float("nan"), float("inf")):
            with pytest.raises(ValueError):
                js.replace_time_limit(bad_value)
        with pytest.raises(ValueError):
            js.replace_time_limit(1, grace=-1)
        unlimited = js.replace_time_limit(1).replace_time_limit(None)
        assert unlimited.submit(tasks.sleep_then, args=(0.01, 1)).result() == 1


def test_fast_work_is_unaffected(method: str) -> None:
    with Jobserver(method, slots=2) as js:
        limited = js.replace_time_limit(5)
        assert limited(limit_tasks.square, 6).result() == 36
        with pytest.raises(ValueError):
            limited(tasks.raise_value_error).result()


def test_overrun_raises_time_limit_exceeded(method: str) -> None:
    with Jobserver(method, slots=1) as js:
        limited = js.replace_time_limit(0.3, grace=0.5)
        start = time.monotonic()
        future = limited(tasks.sleep_then, 30)
        with pytest.raises(TimeLimitExceeded) as info:
            future.result()
        took = time.monotonic() - start
        assert took < 5
        assert info.value.limit == 0.3
        assert info.value.elapsed >= 0.29
        assert future._worker.pid not in child_pids()
        assert_slots_conserved(js, 1)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def test_worker_timer_lets_finally_blocks_run(tmp_path: object) -> None:
    # Nobody waits in the parent: the worker's own timer stops the task, which
    # unwinds through its finally block and reports the exception itself.
    path = os.path.join(str(tmp_path), "cleanup")
    with Jobserver("fork", slots=1) as js:
        future = js.replace_time_limit(0.2, grace=5).submit(
            limit_tasks.sleep_with_cleanup, args=(30, path)
        )
        # Nobody calls into the library until the block has run.
        deadline = time.monotonic() + 10
        while _read(path) != "cleaned up":
            assert time.monotonic() < deadline, f"finally wrote {_read(path)!r}"
            time.sleep(0.05)
        with pytest.raises(TimeLimitExceeded) as info:
            future.result()
        assert info.value.how == "interrupted by the worker's timer"


def test_a_waiting_parent_lets_finally_blocks_finish(
    method: str, tmp_path: object
) -> None:
    # The parent blocks in result() from the start, so it checks its
    # deadline the moment it is due: its SIGTERM must wait out the grace
    # after the worker's own timer, or it would cut the slow cleanup short.
    # The cleanup takes 0.3 s, well inside grace=30 and far longer than any
    # gap between the two clocks (the launch).
    path = os.path.join(str(tmp_path), "cleanup")
    with Jobserver(method, slots=1) as js:
        future = js.replace_time_limit(0.2, grace=30).submit(
            limit_tasks.sleep_with_slow_cleanup, args=(60, 0.3, path)
        )
        with pytest.raises(TimeLimitExceeded) as info:
            future.result(timeout=60)
        assert info.value.how == "interrupted by the worker's timer"
        assert _read(path) == "cleaned up"
        assert_slots_conserved(js, 1)


def test_sigterm_comes_a_grace_after_the_limit() -> None:
    # A task that swallows its timer's exception keeps running; the parent
    # terminates it once limit + grace have passed, not before.
    with Jobserver("fork", slots=1) as js:
        start = time.monotonic()
        future = js.replace_time_limit(0.2, grace=0.4).submit(
            limit_tasks.swallow_everything, args=(30,)
        )
        with pytest.raises(TimeLimitExceeded) as info:
            future.result(timeout=30)
        assert time.monotonic() - start >= 0.6
        assert info.value.how == "terminated with SIGTERM"


def test_sigkill_after_grace_for_a_stubborn_worker() -> None:
    with Jobserver("fork", slots=1) as js:
        future = js.replace_time_limit(0.2, grace=0.3).submit(
            limit_tasks.stubborn, args=(30,)
        )
        start = time.monotonic()
        with pytest.raises(TimeLimitExceeded) as info:
            future.result()
        # SIGTERM (ignored) at limit + grace, SIGKILL at limit + 2 * grace;
        # the 0.05 s allow for the parent's clock starting before ``start``.
        assert 0.8 <= time.monotonic() - start + 0.05 < 5
        assert info.value.how == "killed with SIGKILL"
        assert_slots_conserved(js, 1)


def test_a_task_that_swallows_the_timer_is_terminated() -> None:
    with Jobserver("fork", slots=1) as js:
        future = js.replace_time_limit(0.2, grace=0.3).submit(
            limit_tasks.swallow_everything, args=(30,)
        )
        with pytest.raises(TimeLimitExceeded):
            future.result(timeout=10)


def test_reclaim_and_submit_enforce_without_waiting_on_the_future() -> None:
    with Jobserver("fork", slots=1) as js:
        limited = js.replace_time_limit(0.2, grace=0.3)
        first = limited(limit_tasks.stubborn, 30)
        start = time.monotonic()
        # submit waits for the slot: it must wake and enforce the deadline.
        second = js(limit_tasks.square, 3)
        assert time.monotonic() - start < 5
        assert second.result() == 9
        with pytest.raises(TimeLimitExceeded):
            first.result(0)


def test_map_and_siblings_keep_the_limit() -> None:
    with Jobserver("fork", slots=2) as js:
        limited = js.replace_time_limit(0.3, grace=0.2).revise_env({"X": "1"})
        results = limited.map(tasks.sleep_then, [(0.01, 1), (0.02, 2)])
        assert list(results) == [1, 2]
        with pytest.raises(TimeLimitExceeded):
            list(limited.map(tasks.sleep_then, [(0.01, 1), (30, 2)]))
        js.reclaim_resources()


def test_nested_submissions_inherit_the_limit(method: str) -> None:
    with Jobserver(method, slots=2) as js:
        limited = js.replace_time_limit(20, grace=0.2)
        inner = limited.replace_time_limit(0.3, grace=0.2)
        # The outer task runs within its limit; its nested task overruns its own.
        future = limited.submit(limit_tasks.nested_limited, args=(inner, 30))
        assert future.result() == "nested: TimeLimitExceeded"
        assert_slots_conserved(js, 2)


def test_awaited_future_is_stopped_at_its_limit() -> None:
    aio = pytest.importorskip("jobserver.aio")

    async def main() -> None:
        with Jobserver("fork", slots=1) as js:
            limited = js.replace_time_limit(0.2, grace=0.2)
            future = await aio.submit(limited, limit_tasks.stubborn, args=(30,))
            start = time.monotonic()
            with pytest.raises(TimeLimitExceeded):
                await future
            assert time.monotonic() - start < 5

    asyncio.run(main())


@pytest.mark.filterwarnings(FORK_WARNING_FILTER)
def test_executor_with_a_limited_handle() -> None:
    from jobserver_executor import JobserverExecutor

    with Jobserver("fork", slots=2) as js:
        limited = js.replace_time_limit(0.3, grace=0.2)
        with JobserverExecutor(limited) as pool:
            ok = pool.submit(limit_tasks.square, 4)
            slow = pool.submit(tasks.sleep_then, 30)
            assert ok.result(timeout=10) == 16
            with pytest.raises(TimeLimitExceeded):
                slow.result(timeout=10)
            # As with pebble, it is also a (concurrent.futures) TimeoutError.
            assert isinstance(slow.exception(), TimeoutError)


def test_polling_done_enforces_the_limit() -> None:
    with Jobserver("fork", slots=1) as js:
        future = js.replace_time_limit(0.2, grace=0.2).submit(
            limit_tasks.stubborn, args=(30,)
        )
        start = time.monotonic()
        while not future.done():
            assert time.monotonic() - start < 5
            time.sleep(0.02)
        with pytest.raises(TimeLimitExceeded):
            future.result()


def test_slots_conserved_across_many_overruns() -> None:
    with Jobserver("fork", slots=3) as js:
        limited = js.replace_time_limit(0.15, grace=0.1)
        futures = [
            limited(tasks.sleep_then, 30 if i % 3 == 0 else 0.01, i) for i in range(24)
        ]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except TimeLimitExceeded:
                outcomes.append("limit")
        assert outcomes == ["limit" if i % 3 == 0 else i for i in range(24)]
        assert_slots_conserved(js, 3)

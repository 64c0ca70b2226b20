"""asyncio without threads: awaiting Futures, async submit, completion order."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from typing import Any

import limit_tasks
import pytest
import tasks
from conftest import assert_slots_conserved, child_pids, free_slots
from jobserver import Blocked, Future, Jobserver, LostResult

aio = pytest.importorskip("jobserver.aio")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_module_is_not_imported_by_the_core() -> None:
    import subprocess

    code = (
        "import sys, jobserver\n"
        "js = jobserver.Jobserver(slots=1)\n"
        "js.submit(abs, args=(-1,)).result()\n"
        "assert 'jobserver.aio' not in sys.modules\n"
        "assert 'asyncio' not in sys.modules, 'asyncio imported'\n"
        "assert callable(jobserver.aio.submit)  # a lazy attribute\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_await_gives_the_value(method: str) -> None:
    async def main() -> Any:
        with Jobserver(method, slots=2) as js:
            return await js(limit_tasks.square, 7)

    assert run(main()) == 49


def test_thousands_of_awaited_futures_start_no_thread() -> None:
    count = 2000

    async def main() -> list[int]:
        before = threading.active_count()
        with Jobserver("fork", slots=4) as js:
            futures = [
                await aio.submit(js, limit_tasks.square, args=(i,))
                for i in range(count)
            ]
            values = await asyncio.gather(*futures)
            assert threading.active_count() == before
            assert_slots_conserved(js, 4)
        return list(values)

    assert run(main()) == [i * i for i in range(count)]


def test_exceptions_and_lost_results_match_result() -> None:
    async def main() -> None:
        with Jobserver("fork", slots=2) as js:
            with pytest.raises(ValueError, match="boom") as info:
                await js(tasks.raise_value_error)
            assert "raise_value_error" in str(info.value.__cause__)
            with pytest.raises(LostResult):
                await js(tasks.kill_self, signal.SIGKILL)
            with pytest.raises(LostResult):
                await js(tasks.raise_system_exit)

    run(main())


def test_worker_killed_while_awaited(method: str) -> None:
    async def main() -> None:
        with Jobserver(method, slots=1) as js:
            future = js(tasks.sleep_then, 30)
            waiter = asyncio.ensure_future(aio.result(future))
            await asyncio.sleep(0.2)
            assert not waiter.done()
            os.kill(future._worker.pid, signal.SIGKILL)
            with pytest.raises(LostResult) as info:
                await asyncio.wait_for(waiter, 10)
            assert info.value.returncode == -signal.SIGKILL
            assert_slots_conserved(js, 1)

    run(main())


def test_cancel_leaves_the_worker_running_and_reaps_it() -> None:
    async def main() -> None:
        with Jobserver("fork", slots=1) as js:
            future = js(tasks.sleep_then, 0.3, "late")
            waiter = asyncio.ensure_future(aio.result(future))
            await asyncio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            # Nobody awaits it any more, but the loop still reaps it.
            for _ in range(200):
                if free_slots(js) == 1:
                    break
                await asyncio.sleep(0.01)
            assert free_slots(js) == 1
            assert js._resources.tracked_count == 0
            assert future.result(0) == "late"

    run(main())


def test_cancel_with_a_signal_terminates_the_worker() -> None:
    async def main() -> None:
        with Jobserver("fork", slots=1) as js:
            future = js(tasks.sleep_then, 30)
            pid = future._worker.pid
            waiter = asyncio.ensure_future(
                aio.result(future, cancel_signal=signal.SIGTERM)
            )
            await asyncio.sleep(0.05)
            start = time.monotonic()
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            while js._resources.tracked_count:
                await asyncio.sleep(0.01)
                assert time.monotonic() - start < 10
            assert pid not in child_pids()
            with pytest.raises(LostResult):
                future.result(0)

    run(main())


def test_wait_for_timeout_is_a_cancellation() -> None:
    async def main() -> None:
        with Jobserver("fork", slots=1) as js:
            future = js(tasks.sleep_then, 0.3, 1)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(aio.result(future), 0.05)
            assert await future == 1

    run(main())


def test_async_submit_waits_without_blocking_the_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async def main() -> None:
        with Jobserver("fork", slots=1) as js:
            tick = asyncio.ensure_future(ticker())
            first = await aio.submit(js, tasks.sleep_then, args=(0.4, 1))
            start = time.monotonic()
            second = await aio.submit(js, limit_tasks.square, args=(3,))
            assert time.monotonic() - start > 0.2
            assert ticks >= 10
            assert first.done() and await second == 9
            tick.cancel()

    run(main())


def test_async_submit_timeout_and_validation() -> None:
    async def main() -> None:
        with Jobserver("fork", slots=1) as js:
            busy = js(tasks.sleep_then, 0.5)
            with pytest.raises(Blocked):
                await aio.submit(js, limit_tasks.square, args=(1,), timeout=0.1)
            with pytest.raises(TypeError):
                await aio.submit(js, 42)  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                await aio.submit(js, limit_tasks.square, args=(1,), timeout=-1)
            await busy
            assert_slots_conserved(js, 1)

    run(main())


def test_async_submit_respects_a_gate() -> None:
    calls = []

    def gate() -> float | None:
        calls.append(time.monotonic())
        return None if len(calls) > 3 else 0.05

    async def main() -> None:
        with Jobserver("fork", slots=1) as js:
            gated = js.replace_sleep(gate)
            start = time.monotonic()
            future = await aio.submit(gated, limit_tasks.square, args=(4,))
            assert time.monotonic() - start >= 0.14
            assert await future == 16
            with pytest.raises(Blocked):
                calls.clear()
                await aio.submit(gated, limit_tasks.square, args=(4,), timeout=0.01)

    run(main())


def test_cancelled_submit_holds_no_slot() -> None:
    async def main() -> None:
        with Jobserver("fork", slots=1) as js:
            busy = js(tasks.sleep_then, 0.3)
            pending = asyncio.ensure_future(
                aio.submit(js, limit_tasks.square, args=(2,))
            )
            await asyncio.sleep(0.05)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            await busy
            assert_slots_conserved(js, 1)

    run(main())


def test_as_completed_yields_in_completion_order() -> None:
    async def main() -> list[Any]:
        with Jobserver("fork", slots=3) as js:
            futures = [js(tasks.sleep_then, d, d) for d in (0.4, 0.05, 0.2)]
            return [f.result(0) async for f in aio.as_completed(futures)]

    assert run(main()) == [0.05, 0.2, 0.4]


def test_map_unordered_and_run() -> None:
    async def main() -> tuple[list[int], int]:
        with Jobserver("fork", slots=2) as js:
            got = [
                v
                async for v in aio.map_unordered(
                    js, limit_tasks.square, [(i,) for i in range(20)], limit=4
                )
            ]
            one = await aio.run(js, limit_tasks.square, 5)
            with pytest.raises(ValueError):
                async for _ in aio.map_unordered(
                    js, limit_tasks.fail_if_odd, [(0,), (1,)]
                ):
                    pass
            await asyncio.sleep(0.2)
            js.reclaim_resources()
            return got, one

    got, one = run(main())
    assert sorted(got) == [i * i for i in range(20)] and one == 25


def test_many_awaiters_of_one_future_and_gather() -> None:
    async def main() -> list[int]:
        with Jobserver("fork", slots=1) as js:
            future = js(tasks.sleep_then, 0.1, 3)
            return list(await asyncio.gather(*(aio.result(future) for _ in range(5))))

    assert run(main()) == [3] * 5


def test_callbacks_run_and_callback_raised_surfaces() -> None:
    from jobserver import CallbackRaised

    seen: list[int] = []

    def bad() -> None:
        raise RuntimeError("cb")

    async def main() -> None:
        with Jobserver("fork", slots=1) as js:
            future = js(limit_tasks.square, 3)
            future.when_done(seen.append, 1)
            future.when_done(bad)
            with pytest.raises(CallbackRaised):
                await future
            assert await future == 9
            assert seen == [1]

    run(main())


def test_no_descriptor_or_child_left(no_leaks: None) -> None:
    async def main() -> None:
        with Jobserver("fork", slots=2) as js:
            futures = [js(limit_tasks.square, i) for i in range(20)]
            killed = js(tasks.sleep_then, 30)
            waiter = asyncio.ensure_future(
                aio.result(killed, cancel_signal=signal.SIGKILL)
            )
            await asyncio.gather(*futures)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)

    run(main())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="TaskGroup is 3.11+")
def test_taskgroup_and_wrap_future_conventions() -> None:
    async def main() -> list[int]:
        with Jobserver("fork", slots=2) as js:
            async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined]
                jobs = [
                    group.create_task(aio.run(js, limit_tasks.square, i))
                    for i in range(6)
                ]
            return [job.result() for job in jobs]

    assert run(main()) == [i * i for i in range(6)]


def test_a_future_from_another_process_is_refused() -> None:
    with Jobserver("fork", slots=1) as js:
        future = js(limit_tasks.square, 2)
        assert isinstance(future, Future)
        future.result()

    async def main() -> None:
        with pytest.raises(TypeError):
            await aio.result(object())  # type: ignore[arg-type]

    run(main())


def test_uvloop_if_installed() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[int]:
        with Jobserver("fork", slots=2) as js:
            futures = [
                await aio.submit(js, limit_tasks.square, args=(i,)) for i in range(200)
            ]
            killed = js(tasks.sleep_then, 30)
            os.kill(killed._worker.pid, signal.SIGKILL)
            with pytest.raises(LostResult):
                await killed
            return list(await asyncio.gather(*futures))

    assert uvloop.run(main()) == [i * i for i in range(200)]


def test_loop_shutdown_with_a_cancelled_await_leaks_nothing(no_leaks: None) -> None:
    # asyncio.run returns while the cancelled worker still runs: the loop's
    # watcher detaches at shutdown, and the Jobserver reaps the worker.
    with Jobserver("fork", slots=1) as js:
        future = js(tasks.sleep_then, 0.3, "late")

        async def main() -> None:
            waiter = asyncio.ensure_future(aio.result(future))
            await asyncio.sleep(0.05)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)

        run(main())
        assert not future.done()
        assert future._pollers == 0
        assert future.result(10) == "late"


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_async_submit_takes_slots_from_a_make_parent(loop_kind: str) -> None:
    # A pipe standing in for GNU Make's pool, with one token in it; this
    # process owns no implicit token (implicit=False).  Make's read end must
    # stay blocking whatever the event loop does with what it watches.
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"+")
    try:
        js = Jobserver.join(
            f" -j2 --jobserver-auth={read_fd},{write_fd}",
            context="fork",
            implicit=False,
        )
        assert js is not None

        async def main() -> list[Any]:
            with js:
                busy = await aio.submit(js, tasks.sleep_then, args=(0.3, "first"))
                start = time.monotonic()
                second = await aio.submit(js, limit_tasks.square, args=(5,))
                assert time.monotonic() - start > 0.15
                assert os.get_blocking(read_fd)
                return [await busy, await second]

        got = uvloop.run(main()) if loop_kind == "uvloop" else run(main())
        assert got == ["first", 25]
        assert os.read(read_fd, 10) == b"+"
    finally:
        os.close(read_fd)
        os.close(write_fd)

"""What CPython's own test suite checks of process executors, run against
JobserverExecutor on every start method.

Adapted from the behaviours Lib/test/test_concurrent_futures checks (submit,
map, exceptions and tracebacks, wait/as_completed, shutdown variants, pickling
failures, large results, argument validation); where JobserverExecutor
deliberately differs (a dead worker fails only its own future), the test says
so.  Where the standard library can be asked directly, a differential test
runs the same input through ProcessPoolExecutor and compares.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import multiprocessing
import pickle
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import executor_tasks as et
import pytest
from conftest import START_METHODS
from executor_modes import executor_mode, fresh_only  # noqa: F401
from jobserver import Blocked, Jobserver
from jobserver_executor import JobserverExecutor

pytestmark = pytest.mark.filterwarnings(et.FORK_WARNING_FILTER)


@pytest.fixture(autouse=True, scope="module")
def _warm_up() -> None:
    et.warm_up(START_METHODS)


@pytest.fixture
def executor(method: str) -> Iterator[JobserverExecutor]:
    ex = JobserverExecutor(2, mp_context=method)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[et.Gate]:
    g = et.Gate()
    try:
        yield g
    finally:
        g.close()


# --- submit --------------------------------------------------------------------


def test_submit(executor: JobserverExecutor) -> None:
    future = executor.submit(pow, 2, 8)
    assert future.result(et.PATIENCE) == 256
    assert isinstance(future, cf.Future)


def test_submit_keyword(executor: JobserverExecutor) -> None:
    assert executor.submit(et.mul, x=2, y=8).result(et.PATIENCE) == 16
    future = executor.submit(et.capture, 1, self=2, fn=3)
    assert future.result(et.PATIENCE) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=et.capture, arg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        executor.submit(arg=1)  # type: ignore[call-arg]


def test_submit_non_callable_fails_the_future(executor: JobserverExecutor) -> None:
    # ProcessPoolExecutor reports a TypeError through the future, not submit.
    future = executor.submit(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        future.result(et.PATIENCE)


# --- map -----------------------------------------------------------------------


def test_map_keeps_input_order(executor: JobserverExecutor) -> None:
    expected = list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10))) == expected


@pytest.mark.parametrize("chunksize", [2, 3, 100])
def test_map_chunksize(method: str, chunksize: int) -> None:
    with JobserverExecutor(2, mp_context=method) as ex:
        expected = list(map(pow, range(40), range(40)))
        got = list(ex.map(pow, range(40), range(40), chunksize=chunksize))
        assert got == expected


def test_map_chunksize_is_validated(executor: JobserverExecutor) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            executor.map(pow, range(4), range(4), chunksize=bad)


def test_map_exception_stops_at_the_failing_input(
    executor: JobserverExecutor,
) -> None:
    results = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_exception_in_a_chunk(executor: JobserverExecutor) -> None:
    results = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5], chunksize=2)
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_with_no_iterables(executor: JobserverExecutor) -> None:
    assert list(executor.map(pow)) == []


def test_map_timeout() -> None:
    # As CPython's test: two quick results, then one that misses the deadline.
    gate = et.Gate()
    timeout = 3.0
    try:
        with JobserverExecutor(3, mp_context="fork") as ex:
            started = time.monotonic()
            results = ex.map(_quick_or_blocking, [0, 1, gate.path], timeout=timeout)
            assert next(results) == 0
            assert next(results) == 1
            with pytest.raises(cf.TimeoutError):
                next(results)
            assert time.monotonic() - started >= timeout * 0.9
            gate.release()
    finally:
        gate.close()


def _quick_or_blocking(arg: Any) -> Any:
    if isinstance(arg, str):
        return et.wait_on_gate(arg, "late")
    return arg


@pytest.mark.slow
@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_map_timeout_other_start_methods(start: str) -> None:
    gate = et.Gate()
    timeout = 8.0
    try:
        with JobserverExecutor(3, mp_context=start) as ex:
            results = ex.map(et.wait_on_gate, [gate.path], timeout=timeout)
            with pytest.raises(cf.TimeoutError):
                next(results)
            gate.release()
            assert list(ex.map(et.identity, [0, 1], timeout=et.PATIENCE)) == [0, 1]
    finally:
        gate.close()


def test_map_leaving_the_iterator_cancels_what_has_not_started(
    method: str, gate: et.Gate
) -> None:
    with JobserverExecutor(1, mp_context=method) as ex:
        blocker = ex.submit(et.wait_on_gate, gate.path)
        gate.wait_for_worker()
        results = ex.map(et.identity, range(5))
        del results  # closes the generator: its futures are cancelled
        gc.collect()
        gate.release()
        assert blocker.result(et.PATIENCE) is None
        assert list(ex.map(et.identity, range(3))) == [0, 1, 2]


# --- map(buffersize=...), as Python 3.14 defines it ----------------------------


def test_map_buffersize_is_validated(executor: JobserverExecutor) -> None:
    for bad in ("foo", 2.0, True):
        with pytest.raises(TypeError, match="buffersize must be an integer or None"):
            executor.map(str, [1], buffersize=bad)  # type: ignore[arg-type]
    for bad in (0, -1):
        with pytest.raises(ValueError, match="buffersize must be None or > 0"):
            executor.map(str, [1], buffersize=bad)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_buffersize_on_infinite_iterable(
    executor: JobserverExecutor, chunksize: int
) -> None:
    import itertools

    results = executor.map(str, itertools.count(), buffersize=2, chunksize=chunksize)
    assert [next(results) for _ in range(7)] == [str(i) for i in range(7)]
    results.close()  # type: ignore[attr-defined]


def test_map_buffersize_on_multiple_infinite_iterables(
    executor: JobserverExecutor,
) -> None:
    import itertools

    results = executor.map(
        pow, itertools.count(), itertools.count(), buffersize=2, chunksize=1
    )
    assert [next(results) for _ in range(4)] == [1, 1, 4, 27]


def test_map_buffersize_on_empty_and_without_iterables(
    executor: JobserverExecutor,
) -> None:
    assert list(executor.map(str, [], buffersize=2)) == []
    assert list(executor.map(str, buffersize=2)) == []


def test_map_buffersize_reads_only_buffersize_inputs_before_iteration(
    method: str,
) -> None:
    ints = iter(range(4))
    with JobserverExecutor(2, mp_context=method) as ex:
        ex.map(str, ints, buffersize=2)
    assert next(ints) == 2


def test_map_buffersize_bounds_outstanding_submissions(
    method: str, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    with JobserverExecutor(4, mp_context=method) as ex:
        paths = [str(log)] * 10
        results = ex.map(
            et.append_line, paths, [str(i) for i in range(10)], buffersize=3
        )
        assert next(results) is None
        ex.shutdown(wait=True)
    # 3 submitted up front, 1 more before the first result was yielded.
    assert len(log.read_text().split()) == 4


# --- exceptions and tracebacks -------------------------------------------------


def test_exception_type_and_worker_traceback(executor: JobserverExecutor) -> None:
    future = executor.submit(et.raise_runtime_error)
    with pytest.raises(RuntimeError) as info:
        future.result(et.PATIENCE)
    exc = info.value
    assert type(exc) is RuntimeError
    assert exc.args == (123,)
    cause = exc.__cause__
    assert isinstance(cause, cf.process._RemoteTraceback)  # type: ignore[attr-defined]
    assert "raise RuntimeError(123)  # marker" in cause.tb
    printed = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert "raise RuntimeError(123)  # marker" in printed
    assert isinstance(future.exception(), RuntimeError)


def test_exception_that_cannot_be_pickled(method: str) -> None:
    # Differential: ProcessPoolExecutor reports the pickling error of the
    # exception; so do we.
    with JobserverExecutor(1, mp_context=method) as ex:
        ours = ex.submit(et.raise_error_with_lock).exception(et.PATIENCE)
    with cf.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context(method)
    ) as pp:
        theirs = pp.submit(et.raise_error_with_lock).exception(et.PATIENCE)
    assert type(ours) is type(theirs), (ours, theirs)


# --- pickling failures and crashes (CPython's ExecutorDeadlockTest) ------------


PICKLING_METHODS = [
    m for m in ("forkserver", "spawn") if m in multiprocessing.get_all_start_methods()
]


@pytest.mark.parametrize("start", PICKLING_METHODS)
def test_argument_that_cannot_be_pickled_fails_the_future(start: str) -> None:
    with JobserverExecutor(1, mp_context=start) as ex:
        ours = ex.submit(et.identity, threading.Lock()).exception(et.PATIENCE)
        fails = ex.submit(et.identity, et.FailOnPickle()).exception(et.PATIENCE)
        assert ex.submit(et.identity, 5).result(et.PATIENCE) == 5
    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(start)) as pp:
        theirs = pp.submit(et.identity, threading.Lock()).exception(et.PATIENCE)
    assert type(ours) is type(theirs) is TypeError, (ours, theirs)
    assert isinstance(fails, pickle.PicklingError)


@pytest.mark.parametrize("start", PICKLING_METHODS)
def test_lambda_under_pickling_start_methods(start: str) -> None:
    with JobserverExecutor(1, mp_context=start) as ex:
        ours = ex.submit(lambda: 1).exception(et.PATIENCE)
    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(start)) as pp:
        theirs = pp.submit(lambda: 1).exception(et.PATIENCE)
    assert type(ours) is type(theirs), (ours, theirs)


@pytest.mark.parametrize("start", PICKLING_METHODS)
@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        (et.FailOnUnpickle, BrokenProcessPool),  # error in the worker
        (et.CrashOnUnpickle, BrokenProcessPool),  # the worker dies
    ],
)
def test_argument_that_breaks_in_the_worker(
    start: str, argument: type, expected: type
) -> None:
    with JobserverExecutor(1, mp_context=start) as ex:
        error = ex.submit(et.identity, argument()).exception(et.PATIENCE)
        assert isinstance(error, expected), error
        # Only that future failed.
        assert ex.submit(et.identity, 1).result(et.PATIENCE) == 1


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (et.FailOnPickle, pickle.PicklingError),  # result pickling raises
        (et.CrashOnPickle, BrokenProcessPool),  # the worker dies pickling it
        (et.FailOnUnpickle, RuntimeError),  # rebuilding it in the parent raises
        (et.SystemExitOnUnpickle, BrokenProcessPool),  # ... raises SystemExit
    ],
)
def test_result_that_breaks(
    executor: JobserverExecutor, cls: type, expected: type
) -> None:
    error = executor.submit(et.return_instance, cls).exception(et.PATIENCE)
    assert isinstance(error, expected), error
    assert executor.submit(et.identity, 1).result(et.PATIENCE) == 1


def test_result_pickling_error_matches_the_stdlib(method: str) -> None:
    with JobserverExecutor(1, mp_context=method) as ex:
        ours = ex.submit(et.return_instance, et.FailOnPickle).exception(et.PATIENCE)
    with cf.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context(method)
    ) as pp:
        theirs = pp.submit(et.return_instance, et.FailOnPickle).exception(et.PATIENCE)
    assert type(ours) is type(theirs)
    assert isinstance(ours.__cause__, cf.process._RemoteTraceback)  # type: ignore[attr-defined]


# --- results -------------------------------------------------------------------


def test_large_result_and_argument(executor: JobserverExecutor) -> None:
    size = 10 * 1024 * 1024 + 7
    data = executor.submit(et.big_bytes, size).result(et.PATIENCE)
    assert len(data) == size
    assert executor.submit(et.length, data).result(et.PATIENCE) == size


def test_no_stale_references(executor: JobserverExecutor) -> None:
    # The executor drops its references to the callable and arguments.
    collected = threading.Event()
    holder = et.Holder()
    ref = weakref.ref(holder, lambda _: collected.set())
    future = executor.submit(et.identity, 5)
    assert future.result(et.PATIENCE) == 5
    future = executor.submit(holder.method)
    assert future.result(et.PATIENCE) == 1
    del holder
    gc.collect()
    assert collected.wait(et.PATIENCE)
    assert ref() is None


def test_result_is_freed_with_its_future(executor: JobserverExecutor) -> None:
    future = executor.submit(et.big_bytes, 1000)
    assert len(future.result(et.PATIENCE)) == 1000
    ref = weakref.ref(future)
    del future
    gc.collect()
    assert ref() is None


# --- wait and as_completed -----------------------------------------------------


def test_wait_first_completed(executor: JobserverExecutor, gate: et.Gate) -> None:
    slow = executor.submit(et.wait_on_gate, gate.path)
    quick = executor.submit(et.identity, 1)
    done, not_done = cf.wait(
        [slow, quick], timeout=et.PATIENCE, return_when=cf.FIRST_COMPLETED
    )
    assert done == {quick}
    assert not_done == {slow}
    gate.release()
    done, not_done = cf.wait([slow, quick], timeout=et.PATIENCE)
    assert done == {slow, quick}
    assert not not_done


def test_wait_first_exception(executor: JobserverExecutor, gate: et.Gate) -> None:
    slow = executor.submit(et.wait_on_gate, gate.path)
    bad = executor.submit(divmod, 1, 0)
    done, not_done = cf.wait(
        [slow, bad], timeout=et.PATIENCE, return_when=cf.FIRST_EXCEPTION
    )
    assert done == {bad}
    assert not_done == {slow}
    gate.release()


def test_wait_timeout_and_duplicates(
    executor: JobserverExecutor, gate: et.Gate
) -> None:
    slow = executor.submit(et.wait_on_gate, gate.path)
    done, not_done = cf.wait([slow, slow], timeout=0.1)
    assert not done
    assert not_done == {slow}
    gate.release()
    assert slow.result(et.PATIENCE) is None


def test_as_completed(executor: JobserverExecutor, gate: et.Gate) -> None:
    slow = executor.submit(et.wait_on_gate, gate.path, "slow")
    quick = [executor.submit(et.identity, i) for i in range(4)]
    seen = []
    for future in cf.as_completed([*quick, slow, slow], timeout=et.PATIENCE):
        seen.append(future)
        if len(seen) == 4:
            gate.release()
    assert seen[-1] is slow
    assert set(seen[:4]) == set(quick)
    assert len(seen) == 5


def test_as_completed_timeout(executor: JobserverExecutor, gate: et.Gate) -> None:
    slow = executor.submit(et.wait_on_gate, gate.path)
    with pytest.raises(cf.TimeoutError):
        for _ in cf.as_completed([slow], timeout=0.1):
            pass
    gate.release()


def test_done_callbacks(executor: JobserverExecutor) -> None:
    called = threading.Event()
    results: list[Any] = []

    def callback(future: cf.Future[Any]) -> None:
        results.append(future.result())
        called.set()

    future = executor.submit(et.identity, 9)
    future.add_done_callback(callback)
    assert called.wait(et.PATIENCE)
    assert results == [9]
    # Registered after completion: runs at once, in this thread.
    late: list[Any] = []
    future.add_done_callback(lambda f: late.append(f.result()))
    assert late == [9]


def test_a_raising_callback_is_logged_and_harmless(
    executor: JobserverExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    def bad(future: cf.Future[Any]) -> None:
        raise ValueError("callback failed")

    future = executor.submit(et.identity, 1)
    future.add_done_callback(bad)
    assert future.result(et.PATIENCE) == 1
    assert executor.submit(et.identity, 2).result(et.PATIENCE) == 2


def test_callback_may_submit(executor: JobserverExecutor) -> None:
    chained: list[cf.Future[Any]] = []
    submitted = threading.Event()

    def resubmit(future: cf.Future[Any]) -> None:
        chained.append(executor.submit(et.mul, future.result(), 2))
        submitted.set()

    executor.submit(et.identity, 21).add_done_callback(resubmit)
    assert submitted.wait(et.PATIENCE)
    assert chained[0].result(et.PATIENCE) == 42


def test_asyncio(executor: JobserverExecutor) -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        a = loop.run_in_executor(executor, et.mul, 6, 7)
        b = asyncio.wrap_future(executor.submit(et.identity, "x"))
        return list(await asyncio.gather(a, b))

    assert asyncio.run(main()) == [42, "x"]


# --- cancel and shutdown -------------------------------------------------------


def test_pending_future_cancels_running_one_does_not(
    method: str, gate: et.Gate
) -> None:
    with JobserverExecutor(1, mp_context=method) as ex:
        try:
            running = ex.submit(et.wait_on_gate, gate.path, "ran")
            pending = ex.submit(et.identity, "never")
            gate.wait_for_worker()
            # The dispatcher marks the future running once the launch has
            # returned, which may be after the worker reached the gate.
            et.wait_until(running.running)
            assert not running.cancel()
            assert pending.cancel()
            assert pending.cancelled()
            # Waiters see the cancellation at once (not when it reaches a slot).
            done, _ = cf.wait([pending], timeout=et.PATIENCE)
            assert done == {pending}
            with pytest.raises(cf.CancelledError):
                pending.result()
        finally:
            gate.release()  # a failure above must not hang the shutdown
        assert running.result(et.PATIENCE) == "ran"


def test_submit_after_shutdown(method: str) -> None:
    ex = JobserverExecutor(1, mp_context=method)
    ex.shutdown()
    with pytest.raises(
        RuntimeError, match="cannot schedule new futures after shutdown"
    ):
        ex.submit(pow, 2, 5)
    ex.shutdown()  # idempotent


def test_context_manager_waits(method: str) -> None:
    with JobserverExecutor(2, mp_context=method) as ex:
        futures = [ex.submit(et.sleep_then, 0.05, i) for i in range(4)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 2)


def test_hang_issue12364(executor: JobserverExecutor) -> None:
    futures = [executor.submit(time.sleep, 0.01) for _ in range(30)]
    executor.shutdown()
    for future in futures:
        assert future.result(0) is None


def test_shutdown_cancel_futures(method: str, gate: et.Gate) -> None:
    ex = JobserverExecutor(1, mp_context=method)
    running = ex.submit(et.wait_on_gate, gate.path, "ran")
    pending = [ex.submit(et.identity, i) for i in range(20)]
    gate.wait_for_worker()
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in pending)
    _, not_done = cf.wait(pending, timeout=0)
    assert not not_done
    assert not running.done()
    gate.release()
    ex.shutdown(wait=True)
    assert running.result(0) == "ran"


def test_cancel_futures_racing_a_refused_launch() -> None:
    # shutdown(cancel_futures=True) lands while the dispatcher is launching
    # the oldest pending item and finds no slot: that item is cancelled too,
    # not put back in the queue.  Only this executor's handle is patched, so
    # other executors alive in the process are not affected.
    ex = JobserverExecutor(1, mp_context="fork")
    all_submitted = threading.Event()

    def refuse_once(inner: Jobserver, *args: Any, **kwargs: Any) -> Any:
        assert all_submitted.wait(et.PATIENCE)
        ex.shutdown(wait=False, cancel_futures=True)
        raise Blocked("no free slot in time")

    ex._dispatcher.handle = et.PatchedHandle(  # type: ignore[assignment]
        ex._dispatcher.handle, submit=refuse_once
    )
    futures = [ex.submit(abs, -i) for i in range(3)]
    all_submitted.set()
    _, not_done = cf.wait(futures, timeout=et.PATIENCE)
    assert not not_done
    assert all(f.cancelled() for f in futures)
    thread = ex._dispatcher.thread
    assert thread is not None
    thread.join(et.PATIENCE)
    assert not thread.is_alive()


def test_shutdown_no_wait_returns_at_once_and_work_finishes(
    method: str, gate: et.Gate
) -> None:
    ex = JobserverExecutor(2, mp_context=method)
    running = ex.submit(et.wait_on_gate, gate.path, "ran")
    queued = [ex.submit(et.identity, i) for i in range(5)]
    gate.wait_for_worker()
    started = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - started < 5
    assert not running.done()
    gate.release()
    assert running.result(et.PATIENCE) == "ran"
    assert [f.result(et.PATIENCE) for f in queued] == list(range(5))
    thread = ex._dispatcher.thread
    assert thread is not None
    thread.join(et.PATIENCE)
    assert not thread.is_alive()


def test_del_executor_lets_its_thread_finish(method: str) -> None:
    ex = JobserverExecutor(2, mp_context=method)
    results = ex.map(abs, range(-16, 16))
    thread = ex._dispatcher.thread
    assert thread is not None
    del ex
    gc.collect()
    thread.join(et.PATIENCE)
    assert not thread.is_alive()
    assert list(results) == [abs(i) for i in range(-16, 16)]


def test_shutdown_race_with_submitters(executor: JobserverExecutor) -> None:
    errors: list[BaseException] = []
    futures: list[cf.Future[Any]] = []

    def submitter() -> None:
        try:
            for i in range(50):
                futures.append(executor.submit(et.identity, i))
        except RuntimeError:
            pass
        except BaseException as exc:  # pragma: no cover - the failure we look for
            errors.append(exc)

    threads = [threading.Thread(target=submitter) for _ in range(3)]
    for t in threads:
        t.start()
    executor.shutdown(wait=False)
    for t in threads:
        t.join()
    executor.shutdown(wait=True)
    assert not errors
    assert all(f.done() for f in futures)


# --- constructor validation ----------------------------------------------------


def test_max_workers_is_validated() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            JobserverExecutor(bad)
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            JobserverExecutor(max_workers=bad)
    with pytest.raises(TypeError):
        JobserverExecutor("4")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        JobserverExecutor(2, max_workers=2)


def test_max_workers_keyword(method: str) -> None:
    with JobserverExecutor(max_workers=3, mp_context=method) as ex:
        assert ex.submit(pow, 3, 3).result(et.PATIENCE) == 27
        assert "slots=3" in repr(ex)


def test_max_tasks_per_child_is_validated(method: str) -> None:
    with pytest.raises(TypeError, match="max_tasks_per_child must be an integer"):
        JobserverExecutor(1, max_tasks_per_child="3")  # type: ignore[arg-type]
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
            JobserverExecutor(1, max_tasks_per_child=bad)
    with JobserverExecutor(2, mp_context=method, max_tasks_per_child=1) as ex:
        pids = [f.result(et.PATIENCE) for f in [ex.submit(et.getpid) for _ in range(3)]]
    assert len(set(pids)) == 3  # a fresh process per task satisfies any value


def test_initializer_is_validated() -> None:
    with pytest.raises(TypeError, match="initializer must be a callable"):
        JobserverExecutor(1, initializer=5)  # type: ignore[arg-type]


def test_mp_context_as_object_or_name(method: str) -> None:
    for context in (multiprocessing.get_context(method), method):
        with JobserverExecutor(1, mp_context=context) as ex:
            assert ex.submit(pow, 2, 3).result(et.PATIENCE) == 8
            assert f"context={method!r}" in repr(ex)


def test_mp_context_with_a_jobserver_is_an_error(method: str) -> None:
    js = Jobserver(method, slots=1)
    with pytest.raises(ValueError, match="mp_context"):
        JobserverExecutor(js, mp_context=method)


def test_executor_cannot_be_pickled(executor: JobserverExecutor) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(executor)


def test_default_executor_runs_work() -> None:
    with JobserverExecutor() as ex:
        assert ex.submit(pow, 2, 10).result(et.PATIENCE) == 1024
        method = ex._dispatcher.handle.context.get_start_method()
    explicit = multiprocessing.get_start_method(allow_none=True)
    if explicit is not None:
        assert method == explicit
    elif (
        sys.version_info >= (3, 12)
        and multiprocessing.get_all_start_methods()[0] == "fork"
    ):
        assert method == "forkserver"
    else:
        assert method == multiprocessing.get_all_start_methods()[0]

"""What ``reuse_workers=True`` adds: long-lived workers that run many tasks
(recycled after ``max_tasks_per_child``, initializer once per worker), slots
counted by running task (an idle worker holds none), and the fork-specific
care of inherited descriptors.  The rest of the executor's behaviour runs
against this mode in the conformance, worker-death and slot-sharing
batteries (``executor_modes``)."""

from __future__ import annotations

import collections
import multiprocessing
import os
import select
import signal
from collections.abc import Iterator
from pathlib import Path

import executor_tasks as et
import pytest
from conftest import START_METHODS, assert_slots_conserved, free_slots
from jobserver import Jobserver
from jobserver_executor import (
    BrokenJobserverExecutor,
    InitializerFailed,
    JobserverExecutor,
)

pytestmark = pytest.mark.filterwarnings(et.FORK_WARNING_FILTER)


@pytest.fixture(autouse=True, scope="module")
def _warm_up() -> None:
    et.warm_up(START_METHODS)


def _reusing(*args: object, **kwargs: object) -> JobserverExecutor:
    return JobserverExecutor(*args, reuse_workers=True, **kwargs)  # type: ignore[arg-type]


def test_reuse_workers_is_validated(no_leaks: None) -> None:
    with pytest.raises(TypeError, match="reuse_workers must be a bool"):
        JobserverExecutor(1, reuse_workers="yes")  # type: ignore[arg-type]


def test_a_time_limited_jobserver_is_refused(no_leaks: None) -> None:
    if not hasattr(Jobserver, "replace_time_limit"):
        pytest.skip("this jobserver-core has no time limits")
    js = Jobserver("fork", slots=1).replace_time_limit(5.0, grace=1.0)
    with js:
        with pytest.raises(ValueError, match="time limit"):
            _reusing(js)
        assert_slots_conserved(js, 1)


def test_workers_run_many_tasks(method: str, no_leaks: None) -> None:
    with _reusing(2, mp_context=method) as ex:
        pids = [ex.submit(et.getpid).result(et.PATIENCE) for _ in range(20)]
        pids += list(ex.map(et.getpid_of, range(20)))
    assert 1 <= len(set(pids)) <= 2
    assert os.getpid() not in pids


def test_max_tasks_per_child_recycles_workers(method: str, no_leaks: None) -> None:
    with _reusing(1, mp_context=method, max_tasks_per_child=2) as ex:
        pids = [ex.submit(et.getpid).result(et.PATIENCE) for _ in range(6)]
    counts = collections.Counter(pids)
    assert len(counts) == 3, pids
    assert set(counts.values()) == {2}


def test_initializer_runs_once_per_worker(method: str, no_leaks: None) -> None:
    with _reusing(
        1, mp_context=method, initializer=et.count_init, max_tasks_per_child=3
    ) as ex:
        seen = [ex.submit(et.pid_and_init_count).result(et.PATIENCE) for _ in range(6)]
    assert [count for _, count in seen] == [1] * 6
    assert len({pid for pid, _ in seen}) == 2


def test_raising_initializer_fails_only_that_task(
    method: str, tmp_path: Path, no_leaks: None
) -> None:
    config = tmp_path / "config"
    config.write_text("fail")
    with _reusing(
        1, mp_context=method, initializer=et.init_from_file, initargs=(str(config),)
    ) as ex:
        error = ex.submit(et.identity, 1).exception(et.PATIENCE)
        assert isinstance(error, InitializerFailed)
        assert "ValueError: the initializer refused" in str(error.__cause__)
        config.write_text("fine")
        assert ex.submit(et.get_initialized).result(et.PATIENCE) == "fine"


def test_state_left_by_a_task_is_seen_by_the_next(method: str) -> None:
    # As with ProcessPoolExecutor: the price of reuse.
    with _reusing(1, mp_context=method) as ex:
        assert ex.submit(et.leave_behind, "first").result(et.PATIENCE) is None
        assert ex.submit(et.leave_behind, "second").result(et.PATIENCE) == "first"


def test_idle_workers_hold_no_slot(method: str, no_leaks: None) -> None:
    js = Jobserver(method, slots=2)
    with _reusing(js) as ex:
        assert list(ex.map(abs, [-1, -2, -3, -4])) == [1, 2, 3, 4]
        # Both workers are alive and idle: every slot is free for others.
        assert free_slots(js) == 2
        direct = [js.submit(abs, args=(-i,), timeout=0) for i in range(2)]
        assert [f.result(et.PATIENCE) for f in direct] == [0, 1]
    assert_slots_conserved(js, 2)


def test_a_running_task_holds_exactly_one_slot(method: str, no_leaks: None) -> None:
    js = Jobserver(method, slots=3)
    gate = et.Gate()
    try:
        with _reusing(js) as ex:
            assert ex.submit(abs, -1).result(et.PATIENCE) == 1
            running = ex.submit(et.wait_on_gate, gate.path, "done")
            gate.wait_for_worker()
            assert free_slots(js) == 2
            gate.release()
            assert running.result(et.PATIENCE) == "done"
    finally:
        gate.close()
    assert_slots_conserved(js, 3)


def test_a_jobserver_on_other_slots_cannot_travel(method: str) -> None:
    other = Jobserver(method, slots=1)
    with other, _reusing(1, mp_context=method) as ex:
        error = ex.submit(et.identity, other).exception(et.PATIENCE)
        assert isinstance(error, TypeError)
        assert ex.submit(abs, -3).result(et.PATIENCE) == 3


def test_kill_workers_fails_running_tasks_and_stops_idle_ones(
    method: str, no_leaks: None
) -> None:
    gate = et.Gate()
    try:
        ex = _reusing(2, mp_context=method)
        assert list(ex.map(abs, [-1, -2])) == [1, 2]
        running = ex.submit(et.wait_on_gate, gate.path)
        gate.wait_for_worker()
        ex.kill_workers()
        error = running.exception(et.PATIENCE)
        assert error is not None
        assert getattr(error, "returncode", None) == -signal.SIGKILL
        ex.shutdown(wait=True)
    finally:
        gate.close()


def test_dispatcher_failure_fails_outstanding_futures(
    monkeypatch: pytest.MonkeyPatch, no_leaks: None
) -> None:
    gate = et.Gate()
    try:
        ex = _reusing(1, mp_context="fork")
        running = ex.submit(et.wait_on_gate, gate.path)
        queued = ex.submit(abs, -1)
        gate.wait_for_worker()
        dispatcher = ex._dispatcher

        def failing_collect() -> None:
            raise RuntimeError("injected")

        monkeypatch.setattr(dispatcher, "_collect", failing_collect)
        dispatcher.wake()
        for future in (running, queued):
            assert isinstance(future.exception(et.PATIENCE), BrokenJobserverExecutor)
        with pytest.raises(BrokenJobserverExecutor):
            ex.submit(abs, -2)
        ex.shutdown(wait=True)
    finally:
        gate.close()


@pytest.mark.skipif("fork" not in START_METHODS, reason="needs fork")
def test_forked_workers_do_not_keep_pipes_open(no_leaks: None) -> None:
    read_fd, write_fd = os.pipe()
    try:
        with _reusing(1, mp_context="fork") as ex:
            assert ex.submit(abs, -1).result(et.PATIENCE) == 1  # a worker lives
            os.close(write_fd)
            write_fd = -1
            # The reader sees end-of-file although a worker forked while the
            # write end was open is still alive.
            readable, _, _ = select.select([read_fd], [], [], et.PATIENCE)
            assert readable
            assert os.read(read_fd, 1) == b""
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


@pytest.mark.skipif("fork" not in START_METHODS, reason="needs fork")
def test_forked_workers_keep_what_the_initializer_was_given() -> None:
    queue = multiprocessing.get_context("fork").SimpleQueue()
    with _reusing(
        1, mp_context="fork", initializer=et.init_with_queue, initargs=(queue,)
    ) as ex:
        ex.submit(et.put_on_init_queue, "hello").result(et.PATIENCE)
    assert queue.get() == "hello"
    queue.close()


@pytest.fixture
def executor(method: str) -> Iterator[JobserverExecutor]:
    ex = _reusing(2, mp_context=method)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def test_many_small_tasks_from_several_threads(executor: JobserverExecutor) -> None:
    import threading

    results: list[list[int]] = [[] for _ in range(4)]

    def submit_many(index: int) -> None:
        futures = [executor.submit(abs, -i) for i in range(200)]
        results[index] = [f.result(et.PATIENCE) for f in futures]

    threads = [threading.Thread(target=submit_many, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [list(range(200))] * 4

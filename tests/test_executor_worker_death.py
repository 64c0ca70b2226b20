"""A worker's death fails only its own future, with an exception that is both
``jobserver.LostResult`` and ``concurrent.futures.process.BrokenProcessPool``;
the executor stays usable (ProcessPoolExecutor would break as a whole)."""

from __future__ import annotations

import concurrent.futures as cf
import pickle
import signal
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

import executor_tasks as et
import pytest
import tasks
from conftest import START_METHODS
from executor_modes import executor_mode, fresh_only  # noqa: F401
from jobserver import LostResult
from jobserver_executor import JobserverExecutor, WorkerLost

pytestmark = pytest.mark.filterwarnings(et.FORK_WARNING_FILTER)


@pytest.fixture(autouse=True, scope="module")
def _warm_up() -> None:
    et.warm_up(START_METHODS)


DEATHS: list[tuple[str, Callable[..., Any], tuple[Any, ...], int | None]] = [
    ("os._exit", et.exit_now, (3,), 3),
    ("SIGKILL", et.kill_self, (signal.SIGKILL,), -signal.SIGKILL),
    ("SIGTERM", et.kill_self, (signal.SIGTERM,), -signal.SIGTERM),
    ("SIGSEGV", et.segfault_quietly, (), -signal.SIGSEGV),
    ("SystemExit", et.raise_system_exit, (3,), 3),
    ("KeyboardInterrupt", tasks.raise_keyboard_interrupt, (), None),
    ("exec", tasks.exec_true, (), 0),
]


@pytest.fixture
def executor(method: str, no_leaks: None) -> Iterator[JobserverExecutor]:
    ex = JobserverExecutor(3, mp_context=method)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def test_worker_lost_is_both_exception_types() -> None:
    assert issubclass(WorkerLost, LostResult)
    assert issubclass(WorkerLost, BrokenProcessPool)
    assert issubclass(WorkerLost, cf.BrokenExecutor)
    error = WorkerLost("gone", pid=12, returncode=-9)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is WorkerLost
    assert (str(copy), copy.pid, copy.returncode) == ("gone", 12, -9)


@pytest.mark.parametrize(
    ("fn", "args", "returncode"),
    [d[1:] for d in DEATHS],
    ids=[d[0] for d in DEATHS],
)
def test_death_fails_only_its_own_future(
    executor: JobserverExecutor,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    returncode: int | None,
) -> None:
    gate = et.Gate()
    try:
        neighbour = executor.submit(et.wait_on_gate, gate.path, "neighbour")
        gate.wait_for_worker()
        doomed = executor.submit(fn, *args)
        error = doomed.exception(et.PATIENCE)
        assert isinstance(error, WorkerLost), error
        assert isinstance(error, LostResult)
        assert isinstance(error, BrokenProcessPool)
        assert error.pid is not None
        if returncode is not None:
            assert error.returncode == returncode
        assert isinstance(error.__cause__, LostResult)
        # The neighbour that ran meanwhile is unaffected ...
        assert not neighbour.done()
        gate.release()
        assert neighbour.result(et.PATIENCE) == "neighbour"
    finally:
        gate.close()
    # ... and the executor takes more work.
    assert executor.submit(pow, 2, 5).result(et.PATIENCE) == 32
    assert list(executor.map(abs, [-1, -2])) == [1, 2]


def test_except_clauses_written_for_either_type(executor: JobserverExecutor) -> None:
    future = executor.submit(et.exit_now, 1)
    with pytest.raises(BrokenProcessPool):
        future.result(et.PATIENCE)
    with pytest.raises(LostResult):
        future.result(et.PATIENCE)
    with pytest.raises(cf.BrokenExecutor):
        future.result(et.PATIENCE)


def test_a_lost_result_the_task_raised_is_not_a_death(
    executor: JobserverExecutor,
) -> None:
    future = executor.submit(_raise_lost_result)
    error = future.exception(et.PATIENCE)
    assert type(error) is LostResult
    assert "raised on purpose" in str(error)


def _raise_lost_result() -> None:
    raise LostResult("raised on purpose")


def test_many_deaths_among_many_tasks(executor: JobserverExecutor) -> None:
    futures = [
        executor.submit(et.exit_now, 1) if i % 3 == 0 else executor.submit(abs, -i)
        for i in range(24)
    ]
    for i, future in enumerate(futures):
        if i % 3 == 0:
            assert isinstance(future.exception(et.PATIENCE), WorkerLost)
        else:
            assert future.result(et.PATIENCE) == i


def test_map_reports_a_death_at_its_position(executor: JobserverExecutor) -> None:
    results = executor.map(_die_on_two, range(5))
    assert next(results) == 0
    assert next(results) == 1
    with pytest.raises(WorkerLost):
        next(results)


def _die_on_two(x: int) -> int:
    if x == 2:
        et.exit_now(9)
    return x


def test_terminate_and_kill_workers(method: str, no_leaks: None) -> None:
    for stop in ("terminate_workers", "kill_workers"):
        gate = et.Gate()
        try:
            ex = JobserverExecutor(2, mp_context=method)
            running = [ex.submit(et.wait_on_gate, gate.path) for _ in range(2)]
            pending = [ex.submit(abs, -1) for _ in range(3)]
            gate.wait_for_worker(2)
            getattr(ex, stop)()
            for future in running:
                assert isinstance(future.exception(et.PATIENCE), WorkerLost)
            assert all(f.cancelled() for f in pending)
            with pytest.raises(RuntimeError):
                ex.submit(abs, 1)
            ex.shutdown(wait=True)
        finally:
            gate.close()

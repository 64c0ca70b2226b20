"""Given a Jobserver, the executor shares its N slots with every other user:
direct submissions from the caller's thread, nested work inside workers,
other executors.  Counted from outside: every worker appends its start and
end times to a file, and at no instant may more than N intervals overlap."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from pathlib import Path
from typing import Any

import executor_tasks as et
import pytest
from conftest import START_METHODS, assert_slots_conserved
from executor_modes import executor_mode, fresh_only  # noqa: F401
from jobserver import Blocked, Jobserver
from jobserver_executor import JobserverExecutor
from tasks import getenv, max_overlap

pytestmark = pytest.mark.filterwarnings(et.FORK_WARNING_FILTER)


@pytest.fixture(autouse=True, scope="module")
def _warm_up() -> None:
    et.warm_up(START_METHODS)


def _intervals(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_executor_direct_and_nested_work_share_the_slots(
    method: str, tmp_path: Path, no_leaks: None
) -> None:
    slots = 2
    path = tmp_path / "intervals"
    js = Jobserver(method, slots=slots)
    with JobserverExecutor(js) as ex:
        through_executor = [
            ex.submit(et.record_interval, str(path), 0.05) for _ in range(6)
        ]
        nesting = [ex.submit(et.nested_outer, js, str(path), 0.05, 2) for _ in range(2)]
        # Meanwhile this thread submits directly to the same Jobserver (it
        # waits for slots the dispatcher thread competes for).
        direct = [
            js.submit(et.record_interval, args=(str(path), 0.05)) for _ in range(4)
        ]
        # This thread reaps its own workers (the core has no background
        # thread): wait for them before blocking on the executor's futures,
        # or their finished workers would keep their slots meanwhile.
        for core_future in direct:
            core_future.result(et.PATIENCE)
        for future in through_executor:
            future.result(et.PATIENCE)
        separate = sum(future.result(et.PATIENCE) for future in nesting)
    assert _intervals(path) == 6 + 4 + 2 + separate
    assert max_overlap(str(path)) <= slots
    assert_slots_conserved(js, slots)


@pytest.mark.slow
@pytest.mark.parametrize("slots", [1, 3])
def test_many_users_never_exceed_the_limit(
    method: str, tmp_path: Path, slots: int
) -> None:
    path = tmp_path / "intervals"
    js = Jobserver(method, slots=slots)
    with JobserverExecutor(js) as first, JobserverExecutor(js) as second:
        futures = [
            ex.submit(et.record_interval, str(path), 0.02)
            for _ in range(10)
            for ex in (first, second)
        ]
        futures += [first.submit(et.nested_outer, js, str(path), 0.02, 3)]
        direct = [
            js.submit(et.record_interval, args=(str(path), 0.02)) for _ in range(10)
        ]
        for core_future in direct:
            core_future.result(et.PATIENCE)
        for future in futures:
            future.result(et.PATIENCE)
    assert max_overlap(str(path)) <= slots
    assert_slots_conserved(js, slots)


def test_two_executors_share_one_jobserver(tmp_path: Path, no_leaks: None) -> None:
    path = tmp_path / "intervals"
    js = Jobserver("fork", slots=2)
    with JobserverExecutor(js) as first, JobserverExecutor(js) as second:
        futures = [
            ex.submit(et.record_interval, str(path), 0.02)
            for _ in range(8)
            for ex in (first, second)
        ]
        for future in futures:
            future.result(et.PATIENCE)
    assert _intervals(path) == 16
    assert max_overlap(str(path)) <= 2
    assert_slots_conserved(js, 2)


def test_executor_waits_for_slots_other_users_hold(method: str, no_leaks: None) -> None:
    js = Jobserver(method, slots=2)
    gate = et.Gate()
    try:
        held = [js.submit(et.wait_on_gate, args=(gate.path,)) for _ in range(2)]
        gate.wait_for_worker(2)
        with pytest.raises(Blocked):
            js.submit(abs, args=(-1,), timeout=0)
        with JobserverExecutor(js) as ex:
            future = ex.submit(abs, -5)
            done, _ = cf.wait([future], timeout=0.3)
            assert not done
            assert not future.running()  # still pending: cancellable
            gate.release()
            # The slots go back when this thread reaps its workers; the
            # dispatcher notices the tokens arriving in the pool.
            for core_future in held:
                core_future.result(et.PATIENCE)
            assert future.result(et.PATIENCE) == 5
    finally:
        gate.close()
    assert_slots_conserved(js, 2)


def test_the_jobservers_environment_and_preexec_apply(
    method: str, tmp_path: Path
) -> None:
    marker = tmp_path / "preexec"
    js = (
        Jobserver(method, slots=1)
        .revise_env({"JOBSERVER_EXECUTOR_TEST": "from-js"})
        .replace_preexec(et.append_line, str(marker), "preexec ran")
    )
    with JobserverExecutor(js) as ex:
        value = ex.submit(getenv, "JOBSERVER_EXECUTOR_TEST").result(et.PATIENCE)
    assert value == "from-js"
    assert marker.read_text() == "preexec ran\n"


def test_executor_outlives_the_jobservers_scope(method: str, no_leaks: None) -> None:
    with Jobserver(method, slots=1) as js:
        ex = JobserverExecutor(js)
        assert ex.submit(abs, -1).result(et.PATIENCE) == 1
    # The Jobserver released its descriptors; the executor has its own.
    assert ex.submit(abs, -2).result(et.PATIENCE) == 2
    ex.shutdown()


def test_a_released_jobserver_is_refused(method: str) -> None:
    with Jobserver(method, slots=1) as js:
        pass
    with pytest.raises(RuntimeError, match="released"):
        JobserverExecutor(js)


def test_launch_gate_is_retried_without_spinning(method: str, no_leaks: None) -> None:
    calls: list[float] = []
    opened = threading.Event()

    def gate() -> float | None:
        calls.append(time.monotonic())
        return None if opened.is_set() else 0.05

    js = Jobserver(method, slots=2).replace_sleep(gate)
    with JobserverExecutor(js) as ex:
        future = ex.submit(abs, -3)
        done, _ = cf.wait([future], timeout=0.3)
        assert not done
        refused = len(calls)
        assert 1 <= refused < 40  # retried with backoff, not in a busy loop
        opened.set()
        assert future.result(et.PATIENCE) == 3


def test_a_raising_launch_gate_fails_that_task(method: str) -> None:
    refuse = [True]

    def gate() -> Any:
        if refuse[0]:
            refuse[0] = False
            raise OSError("gate broke")
        return None

    js = Jobserver(method, slots=1).replace_sleep(gate)
    with JobserverExecutor(js) as ex:
        with pytest.raises(OSError, match="gate broke"):
            ex.submit(abs, -1).result(et.PATIENCE)
        assert ex.submit(abs, -2).result(et.PATIENCE) == 2


@pytest.mark.usefixtures("fresh_only")
def test_a_time_limited_jobserver_limits_every_task(method: str) -> None:
    if not hasattr(Jobserver, "replace_time_limit"):
        pytest.skip("this jobserver-core has no time limits")
    from jobserver import TimeLimitExceeded  # type: ignore[attr-defined]

    js = Jobserver(method, slots=2).replace_time_limit(0.5, grace=0.5)
    gate = et.Gate()
    try:
        with JobserverExecutor(js) as ex:
            stuck = ex.submit(et.wait_on_gate, gate.path)
            error = stuck.exception(et.PATIENCE)
            assert isinstance(error, TimeLimitExceeded)
            assert isinstance(error, cf.TimeoutError)
            assert ex.submit(abs, -4).result(et.PATIENCE) == 4
    finally:
        gate.close()


def test_a_gate_that_cancels_futures_does_not_deadlock(
    method: str, no_leaks: None
) -> None:
    # The gate runs on the dispatcher thread in the middle of a launch; it
    # cancels every future (the one being launched too) while this thread
    # waits on all of them in concurrent.futures.wait.
    futures: list[cf.Future[Any]] = []
    all_submitted = threading.Event()

    def gate() -> float | None:
        assert all_submitted.wait(et.PATIENCE)
        for future in futures:
            future.cancel()
        return None

    js = Jobserver(method, slots=1).replace_sleep(gate)
    with JobserverExecutor(js) as ex:
        futures.extend(ex.submit(et.identity, i) for i in range(3))
        all_submitted.set()
        _, not_done = cf.wait(futures, timeout=et.PATIENCE)
        assert not not_done
        assert all(f.cancelled() for f in futures)

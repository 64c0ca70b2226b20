"""Future: done/wait/result timeouts, signals, and the no-thread promise."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection

import pytest
import tasks
from conftest import assert_slots_conserved, free_slots
from jobserver import Blocked, Jobserver, LostResult


def recv(conn: Connection) -> bytes:
    return conn.recv_bytes()


def test_done_wait_result_before_and_after(method: str) -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    with reader, writer, Jobserver(context=method, slots=1) as js:
        future = js.submit(recv, args=(reader,))
        assert future.done() is False
        assert future.done(timeout=0.05) is False
        assert future.wait(timeout=0.05) is False
        with pytest.raises(Blocked):
            future.result(timeout=0.05)
        with pytest.raises(Blocked):
            future.result(timeout=0)
        writer.send_bytes(b"z")
        assert future.wait() is True
        assert future.done() is True
        assert future.result() == b"z"
        assert future.result(timeout=0) == b"z"


@pytest.mark.parametrize("bad", [-1, float("nan"), "1", True, [1]])
def test_bad_timeouts_rejected(bad: object) -> None:
    with Jobserver(context="fork", slots=1) as js:
        future = js(tasks.identity, 1)
        for call in (future.wait, future.result, future.done):
            with pytest.raises((TypeError, ValueError)):
                call(bad)  # type: ignore[arg-type]
        assert future.result() == 1


def test_infinite_timeout_is_allowed() -> None:
    with Jobserver(context="fork", slots=1) as js:
        assert (
            js.submit(tasks.identity, args=(1,), timeout=float("inf")).result(
                float("inf")
            )
            == 1
        )


def test_sigterm_cancels_a_running_worker(method: str) -> None:
    with Jobserver(context=method, slots=2) as js:
        doomed = js(tasks.block_until_signalled)
        sibling = js(tasks.identity, "ok")
        assert doomed.wait(signal=signal.SIGTERM)
        with pytest.raises(LostResult) as info:
            doomed.result()
        assert info.value.returncode == -signal.SIGTERM
        assert sibling.result() == "ok"
        assert_slots_conserved(js, 2)


def wait_on(r: int) -> bytes:
    return os.read(r, 1)


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_sigstop_and_sigcont_pause_and_resume() -> None:
    r, w = os.pipe()
    try:
        with Jobserver(context="fork", slots=1) as js:
            future = js.submit(wait_on, args=(r,))
            pid = future._worker.pid
            assert future.wait(timeout=0, signal=signal.SIGSTOP) is False
            # The kernel reports the stop; poll for it rather than guessing.
            deadline = time.monotonic() + 30
            while process_state(pid) != "T":
                assert time.monotonic() < deadline
                time.sleep(0.001)
            os.write(w, b"p")
            assert future.wait(timeout=0.1) is False  # paused: cannot read
            with pytest.raises(Blocked):
                js.submit(tasks.identity, args=(1,), timeout=0)  # still holds its slot
            assert future.wait(signal=signal.SIGCONT)
            assert future.result() == b"p"
    finally:
        os.close(r)
        os.close(w)


def test_signal_to_a_finished_future_is_ignored() -> None:
    with Jobserver(context="fork", slots=1) as js:
        future = js(tasks.identity, 1)
        assert future.result() == 1
        assert future.wait(signal=signal.SIGKILL)
        assert future.result() == 1


@pytest.mark.parametrize(
    ("bad", "error"),
    [("TERM", TypeError), (-3, ValueError), (10_000, ValueError), (True, TypeError)],
)
def test_bad_signals_rejected(bad: object, error: type) -> None:
    with Jobserver(context="fork", slots=1) as js:
        future = js(tasks.identity, 1)
        with pytest.raises(error):
            future.wait(signal=bad)  # type: ignore[arg-type]
        assert future.result() == 1


def test_result_from_many_threads() -> None:
    with Jobserver(context="fork", slots=2) as js:
        futures = [js(tasks.sleep_then, 0.01, i) for i in range(6)]
        results: list = []
        lock = threading.Lock()

        def collect() -> None:
            got = [f.result() for f in futures]
            with lock:
                results.append(got)

        threads = [threading.Thread(target=collect) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [list(range(6))] * 4


def test_no_background_threads_in_the_core(method: str) -> None:
    before = threading.active_count()
    with Jobserver(context=method, slots=2) as js:
        futures = [js(tasks.identity, i) for i in range(4)]
        futures[0].when_done(lambda: None)
        assert list(js.map(tasks.identity, [(i,) for i in range(4)])) == [0, 1, 2, 3]
        assert threading.active_count() == before
        assert [f.result() for f in futures] == [0, 1, 2, 3]
        assert js.submit(tasks.nest, args=(js, 2)).result() == 1
        assert threading.active_count() == before
    assert threading.active_count() == before


def test_future_used_in_another_process_refuses() -> None:
    with Jobserver(context="fork", slots=2) as js:
        future = js(tasks.identity, 1)
        probe = js(probe_future, future)
        assert "belongs to process" in probe.result()
        assert future.result() == 1


def probe_future(future: object) -> str:
    try:
        future.done()  # type: ignore[attr-defined]
    except RuntimeError as exc:
        return str(exc)
    return "no error"


def test_one_reclaim_finishes_more_ready_work_than_one_epoll_batch(
    no_leaks: None,
) -> None:
    """reclaim asks epoll for a bounded batch of ready pipes at a time; one
    call still reaps every worker that has finished, however many."""
    from jobserver._jobserver import _READY_BATCH

    count = 2 * _READY_BATCH + 3
    r, w = os.pipe()  # each worker waits for one byte from this test
    try:
        with Jobserver(context="fork", slots=count) as js:
            futures = [js.submit(os.read, args=(r, 1)) for _ in range(count)]
            assert js._resources.tracked_count == count
            os.write(w, b"x" * count)
            for future in futures:
                # Exited, not reaped: its pipe is at end-of-file by now.
                os.waitid(os.P_PID, future._worker.pid, os.WEXITED | os.WNOWAIT)
            js.reclaim_resources()
            assert js._resources.tracked_count == 0
            assert free_slots(js) == count
            assert [f.result(timeout=0) for f in futures] == [b"x"] * count
    finally:
        os.close(r)
        os.close(w)

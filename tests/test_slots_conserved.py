"""Slot discipline: never more than N workers, and no slot ever lost or doubled."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import tasks
from conftest import (
    assert_slots_conserved,
    child_pids,
    free_slots,
    require_one_thread,
)
from executor_tasks import FORK_WARNING_FILTER
from jobserver import Blocked, CallbackRaised, Jobserver, LostResult


class ChildSampler:
    """Samples this process's children from a thread, recording the peak."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, len(child_pids()))
            self._stop.wait(0.0005)

    def __enter__(self) -> ChildSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("slots", [1, 3])
@pytest.mark.filterwarnings(FORK_WARNING_FILTER)  # the sampler is a thread
def test_never_more_live_children_than_slots(slots: int, tmp_path: object) -> None:
    # Observed from outside (/proc children, zombies included) and from inside
    # (each worker logs when it ran): the peak equals the limit, never more.
    # The first `slots` workers meet at a rendezvous (so the limit is reached
    # however loaded the machine is); the rest then compete for the slots.
    log = os.path.join(str(tmp_path), "intervals")
    started_r, started_w = os.pipe()
    release_r, release_w = os.pipe()
    try:
        with Jobserver(context="fork", slots=slots) as js, ChildSampler() as sampler:
            args = (log, started_w, release_r)
            first = [
                js(tasks.record_interval_at_rendezvous, *args) for _ in range(slots)
            ]
            for _ in range(slots):
                assert os.read(started_r, 1) == b"s"
            os.write(release_w, b"r" * slots)
            rest = [js(tasks.record_interval, log, 0.02) for _ in range(5 * slots)]
            for future in first + rest:
                future.result()
    finally:
        for fd in (started_r, started_w, release_r, release_w):
            os.close(fd)
    assert sampler.peak <= slots
    assert tasks.max_overlap(log) == slots


def test_slot_is_back_before_callbacks_run() -> None:
    with Jobserver(context="fork", slots=1) as js:
        seen: list = []

        def callback() -> None:
            seen.append(free_slots(js))
            seen.append(js.submit(tasks.identity, args=("from callback",), timeout=0))

        future = js(tasks.identity, 1)
        future.when_done(callback)
        assert future.result() == 1
        assert seen[0] == 1
        assert seen[1].result() == "from callback"
        assert_slots_conserved(js, 1)


def test_consume_zero_takes_no_slot() -> None:
    with Jobserver(context="fork", slots=1) as js:
        r, w = os.pipe()
        try:
            holder = js.submit(os.read, args=(r, 1))
            with pytest.raises(Blocked):
                js.submit(tasks.identity, args=(1,), timeout=0)
            free = js.submit(tasks.identity, args=(2,), consume=0, timeout=0)
            assert free.result() == 2
            os.write(w, b"x")
            assert holder.result() == b"x"
        finally:
            os.close(r)
            os.close(w)
        assert_slots_conserved(js, 1)


BAD_SUBMISSIONS = [
    ({"fn": 42}, TypeError),
    ({"fn": len, "args": "abc"}, TypeError),
    ({"fn": len, "args": 7}, TypeError),
    ({"fn": len, "kwargs": [1, 2]}, TypeError),
    ({"fn": len, "kwargs": {1: 2}}, TypeError),
    ({"fn": len, "consume": 3}, ValueError),
    ({"fn": len, "consume": True}, TypeError),
    ({"fn": len, "consume": 1.0}, TypeError),
    ({"fn": len, "timeout": -1}, ValueError),
    ({"fn": len, "timeout": float("nan")}, ValueError),
    ({"fn": len, "timeout": "1"}, TypeError),
    ({"fn": len, "timeout": True}, TypeError),
]


@pytest.mark.parametrize(("kwargs", "error"), BAD_SUBMISSIONS)
def test_bad_arguments_lose_nothing(kwargs: dict, error: type, no_leaks: None) -> None:
    with Jobserver(context="fork", slots=2) as js:
        with pytest.raises(error):
            js.submit(**kwargs)
        assert_slots_conserved(js, 2)


def test_unpicklable_arguments_under_spawn(no_leaks: None) -> None:
    with Jobserver(context="spawn", slots=2) as js:
        with pytest.raises(TypeError, match="cannot be pickled"):
            js.submit(tasks.identity, args=(lambda: 1,))
        with pytest.raises(TypeError, match="cannot be pickled"):
            js.submit(lambda: 1)
        assert_slots_conserved(js, 2)
        assert js(tasks.identity, 5).result() == 5


def test_raising_gate_loses_nothing(no_leaks: None) -> None:
    def gate() -> None:
        raise OSError("gate broke")

    with Jobserver(context="fork", slots=2) as js:
        with pytest.raises(OSError, match="gate broke"):
            js.replace_sleep(gate).submit(tasks.identity, args=(1,))
        assert_slots_conserved(js, 2)


def test_gate_returning_garbage_is_a_value_error(no_leaks: None) -> None:
    with Jobserver(context="fork", slots=2) as js:
        for garbage in ("soon", -1, float("nan"), True, [1]):
            with pytest.raises(ValueError, match="sleep function"):
                js.replace_sleep(lambda g=garbage: g).submit(tasks.identity, args=(1,))
        assert_slots_conserved(js, 2)


def test_dying_workers_give_their_slots_back(method: str, no_leaks: None) -> None:
    with Jobserver(context=method, slots=2) as js:
        futures = [js(tasks.kill_self, signal.SIGKILL) for _ in range(4)]
        for future in futures:
            with pytest.raises(LostResult):
                future.result()
        assert_slots_conserved(js, 2)


def blocked_signals() -> set:
    return signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_workers_start_with_the_parents_signal_mask(method: str) -> None:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
    try:
        with Jobserver(context=method, slots=1) as js:
            assert js(blocked_signals).result() == {signal.SIGUSR2}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    with Jobserver(context=method, slots=1) as js:
        assert js(blocked_signals).result() == set()


def test_keyboard_interrupt_during_submit_loses_nothing(no_leaks: None) -> None:
    # A timer signal raises KeyboardInterrupt at arbitrary points of submit,
    # result and reclaim; afterwards every slot, fd and child is accounted for.
    require_one_thread()
    interrupted = 0
    armed = False

    def handler(signum: int, frame: Any) -> None:
        # Raise at most once per arming, so the test's own bookkeeping below
        # never sees a KeyboardInterrupt outside its try block.  Not inside
        # a finalizer (a dropped Future's __del__): CPython swallows it
        # there ("Exception ignored"); the next tick raises instead.
        nonlocal armed
        if armed and not (frame and frame.f_code.co_name == "__del__"):
            armed = False
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with Jobserver(context="fork", slots=2) as js:
            signal.setitimer(signal.ITIMER_REAL, 0.0007, 0.0013)
            try:
                for _ in range(1500):
                    try:
                        armed = True
                        js.submit(tasks.identity, args=(1,))
                        js.reclaim_resources()
                        armed = False
                    except KeyboardInterrupt:
                        interrupted += 1
            finally:
                armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
            js._resources.drain()
            assert_slots_conserved(js, 2)
            # Deferring signals never leaves them blocked, in parent or worker.
            assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()
            assert js(blocked_signals).result() == set()
    finally:
        signal.signal(signal.SIGALRM, old)
    assert interrupted > 10


def test_callback_raised_from_submit_holds_no_slot() -> None:
    with Jobserver(context="fork", slots=1) as js:
        future = js(tasks.identity, 1)
        future.when_done(tasks.raise_value_error, "from callback")
        future._settle(None)  # finished, callbacks not yet run
        with pytest.raises(CallbackRaised):
            js.submit(tasks.identity, args=(2,))
        assert free_slots(js) == 1
        assert js.submit(tasks.identity, args=(2,)).result() == 2
        assert_slots_conserved(js, 1)


def test_submit_timeout_raises_blocked_in_time() -> None:
    with Jobserver(context="fork", slots=1) as js:
        r, w = os.pipe()
        try:
            holder = js.submit(os.read, args=(r, 1))
            start = time.monotonic()
            with pytest.raises(Blocked):
                js.submit(tasks.identity, args=(1,), timeout=0.2)
            assert time.monotonic() - start >= 0.2
            os.write(w, b"x")
            holder.result()
        finally:
            os.close(r)
            os.close(w)
        assert_slots_conserved(js, 1)


def _reads_and_waits(monkeypatch: pytest.MonkeyPatch, first_wait: Any) -> list[Any]:
    """Record, in order, each token read the pool makes (``True``: it got
    a token) and each wait for a slot (``"wait"``); ``first_wait()``, if
    given, is called as the first wait begins."""
    from jobserver import _jobserver
    from jobserver._slots import PipePool

    log: list[Any] = []
    real_take = PipePool.take
    real_wait = _jobserver._Resources.wait_events

    def take(self: Any, ledger: Any) -> bool:
        got = real_take(self, ledger)
        log.append(got)
        return got

    def wait_events(self: Any, *args: Any, **kwargs: Any) -> None:
        if first_wait is not None and "wait" not in log:
            first_wait()
        log.append("wait")
        real_wait(self, *args, **kwargs)

    monkeypatch.setattr(PipePool, "take", take)
    monkeypatch.setattr(_jobserver._Resources, "wait_events", wait_events)
    return log


@contextlib.contextmanager
def one_slot_held() -> Iterator[tuple[Jobserver, Any, int]]:
    """A one-slot Jobserver, the worker holding its slot, and a descriptor:
    a byte written to it lets that worker finish (one is written on the way
    out in any case, so that a failing test cannot leave it blocked)."""
    r, w = os.pipe()
    try:
        with Jobserver(context="fork", slots=1) as js:
            holder = js.submit(os.read, args=(r, 1))
            try:
                yield js, holder, w
            finally:
                os.write(w, b"x")
                holder.wait()
    finally:
        os.close(r)
        os.close(w)


def test_a_submit_waiting_for_its_own_workers_waits_before_reading_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # This process holds the only token (its worker blocks on a pipe), so
    # the pool's pipe is empty: the submit waits at once, with no read that
    # could only fail.  The worker is released as that wait begins; the
    # submit's last read gets the token the worker gave back (the result's
    # arrival may wake it once before the worker is gone).
    with one_slot_held() as (js, holder, w):
        log = _reads_and_waits(monkeypatch, lambda: os.write(w, b"x"))
        assert js.submit(tasks.identity, args=(2,)).result() == 2
        assert log[0] == "wait"
        assert log[-1] is True
        assert holder.result() == b"x"
        monkeypatch.undo()
        assert_slots_conserved(js, 1)


@pytest.mark.timeout(120)
def test_a_token_in_the_pipe_is_taken_even_when_this_process_holds_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stray token in a private pool (no well-behaved client writes one)
    # while this process holds every token: the submit that waits first is
    # woken by the pool's descriptor and takes it; it does not wait for a
    # worker of its own (which here never finishes on its own).
    with one_slot_held() as (js, holder, w):
        pool = js._resources.pool
        os.write(pool.write_fd, b"+")
        log = _reads_and_waits(monkeypatch, None)
        assert js.submit(tasks.identity, args=(3,)).result() == 3
        assert log == ["wait", True]
        assert not holder.done()
        monkeypatch.undo()
        os.write(w, b"x")
        assert holder.result() == b"x"
        js.reclaim_resources()
        assert os.read(pool.read_fd, 1) == b"+"  # the stray token, back
        assert_slots_conserved(js, 1)

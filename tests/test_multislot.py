"""Submissions that need several slots: ``consume=k`` and the gather strategy.

The strategy (``jobserver._multislot``): take what is free; hold a partial
set only for a bounded, randomised window while waiting for readiness; then
give it all back and back off.  These tests check the accounting, the two
greedy-clients scenario in one process step by step, and then two real
processes that each want three of four slots.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

import multislot_tasks
import pytest
import tasks
from conftest import assert_slots_conserved, free_slots
from jobserver import Blocked, Jobserver
from jobserver._future import poll_readable
from jobserver._multislot import MAX_WINDOW, Gather
from jobserver._slots import PipePool


def test_consume_is_validated() -> None:
    with Jobserver(slots=3) as js:
        for bad in (True, 1.0, "2", None):
            with pytest.raises(TypeError):
                js.submit(tasks.identity, args=(1,), consume=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=">= 0"):
            js.submit(tasks.identity, args=(1,), consume=-1)
        with pytest.raises(ValueError, match="more than the 3 slots"):
            js.submit(tasks.identity, args=(1,), consume=4)
        assert_slots_conserved(js, 3)


def test_consume_k_holds_k_slots_until_reaped(method: str, tmp_path: Path) -> None:
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    with Jobserver(method, slots=4) as js:
        future = js.submit(multislot_tasks.wait_for_fifo, args=(fifo,), consume=3)
        assert free_slots(js) == 1
        with pytest.raises(Blocked):
            js.submit(tasks.identity, args=(1,), consume=2, timeout=0)
        # The failed attempt gave back the one token it could take.
        assert free_slots(js) == 1
        with open(fifo, "wb", buffering=0) as f:  # waits for the worker
            f.write(b"x")
        assert future.result(timeout=60) == b"x"
        assert_slots_conserved(js, 4)


def test_consume_whole_pool_and_zero() -> None:
    with Jobserver(slots=2) as js:
        assert js.submit(tasks.identity, args=(5,), consume=2).result() == 5
        assert js.submit(tasks.identity, args=(6,), consume=0).result() == 6
        assert_slots_conserved(js, 2)


def test_timeout_gives_back_a_partial_set() -> None:
    with Jobserver(slots=3) as js, js.hold(2):
        started = time.monotonic()
        with pytest.raises(Blocked, match="3 slots"):
            js.submit(tasks.identity, args=(1,), consume=3, timeout=0.3)
        assert time.monotonic() - started >= 0.3
        assert free_slots(js) == 1


# --- the strategy, step by step ------------------------------------------------------


def _drive(gather: Gather, limit: float) -> bool:
    """Step ``gather`` as a caller would, for at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if gather.step():
            return True
        timeout, watch = gather.wait_plan(max(0.0, deadline - time.monotonic()))
        fds = [gather.pool.read_fd] if watch else []
        poll_readable(fds, timeout) if fds else time.sleep(timeout or 0)
    return False


def test_two_gatherers_holding_halves_do_not_deadlock() -> None:
    """A and B each hold 2 of 4 tokens and want 3.  Taking one by one and
    waiting would block both forever; here the first whose hold window closes
    gives its 2 back, and the other completes with them."""
    pool = PipePool(4)
    try:
        ledger_a: collections.deque[bytes] = collections.deque()
        ledger_b: collections.deque[bytes] = collections.deque()
        reserve: collections.deque[bytes] = collections.deque()
        assert pool.take(reserve)
        assert pool.take(reserve)  # only two free: A takes both
        a, b = Gather(pool, ledger_a, 3), Gather(pool, ledger_b, 3)
        assert not a.step()
        assert a.taken == 2
        pool.give(reserve)
        pool.give(reserve)  # now B takes the other two
        assert not b.step()
        assert (a.taken, b.taken) == (2, 2)
        # Step both until one completes; bounded by the longest hold window.
        deadline = time.monotonic() + 4 * MAX_WINDOW
        done = None
        while done is None and time.monotonic() < deadline:
            for name, gather in (("a", a), ("b", b)):
                if gather.step():
                    done = name
                    break
            else:
                plans = [g.wait_plan(None) for g in (a, b)]
                timeouts = [t for t, _ in plans if t is not None]
                time.sleep(min(timeouts, default=0.01))
        assert done is not None, "both kept their partial sets: deadlock"
        winner, loser = (a, b) if done == "a" else (b, a)
        assert winner.taken == 3
        assert loser.taken == 0  # it gave everything back
        assert len(winner.ledger) == 3
        assert len(loser.ledger) == 0
        winner.release()
        assert _drive(loser, 4 * MAX_WINDOW)
        loser.release()
        assert len(ledger_a) == len(ledger_b) == 0
        assert sum(1 for _ in iter(lambda: pool.take(reserve), False)) == 4
    finally:
        pool.close()


def test_a_single_slot_take_never_holds_a_partial_set() -> None:
    pool = PipePool(1)
    try:
        ledger: collections.deque[bytes] = collections.deque()
        other: collections.deque[bytes] = collections.deque()
        assert pool.take(other)
        gather = Gather(pool, ledger, 1)
        assert not gather.step()
        assert gather.wait_plan(None) == (None, True)  # plain readiness wait
        pool.give(other)
        assert gather.step()
        gather.release()
    finally:
        pool.close()


# --- two real processes, each wanting most of the pool -------------------------------


@pytest.mark.parametrize("mode", ["submit", "hold"])
def test_two_greedy_processes_share_the_pool(tmp_path: Path, mode: str) -> None:
    """Two workers, each running jobs that need 3 of the pool's 4 slots,
    back to back.  Both must finish (no deadlock, no starvation within the
    bound), and at no moment may more than 4 slots be in use: each job logs
    its weight at start and end, and the log's order is the kernel's."""
    log = tmp_path / "log"
    rounds = 4
    with Jobserver("fork", slots=4) as js:
        workers = [
            js.submit(
                multislot_tasks.greedy,
                args=(js, str(log), name, rounds, 3, 0.1, mode),
                consume=0,
            )
            for name in ("a", "b")
        ]
        started = time.monotonic()
        for worker in workers:
            assert worker.result(timeout=120) == rounds
        elapsed = time.monotonic() - started
        assert_slots_conserved(js, 4)
    peak, per_client = multislot_tasks.weighted_peak(log)
    assert peak <= 4, f"{peak} slots in use at once"
    assert per_client == {"a": rounds, "b": rounds}
    # Eight jobs of 0.1 s that cannot overlap take 0.8 s; the bound allows
    # for hold windows and back-off on a loaded machine.
    assert elapsed < 60

"""Shared fixtures and checks for the whole suite.

Helpers here observe the library from outside: open descriptors of this
process, its live child processes, and how many tokens its slot pool holds.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobserver import Jobserver

ROOT = Path(__file__).resolve().parent.parent
START_METHODS = [
    m
    for m in ("fork", "forkserver", "spawn")
    if m in multiprocessing.get_all_start_methods()
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", help="also run tests marked slow"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


#: Threads that outlived the test that started them: ident -> that test.
_LEFT_BY: dict[int | None, str] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: object) -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    for thread in threading.enumerate():
        if thread.ident not in before:
            _LEFT_BY.setdefault(thread.ident, item.nodeid)


def require_one_thread() -> None:
    """For tests whose timer signals must reach the main thread: fail, naming
    the test that left it running, if another thread is alive (with one, the
    kernel may hand the signal to that thread and Python then raises in the
    main thread at any bytecode -- the residual gap in docs/design.md)."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        pytest.fail(
            "other threads are alive: "
            + ", ".join(
                f"{t!r} (left running by {_LEFT_BY.get(t.ident, 'this test')})"
                for t in others
            )
        )


@pytest.fixture(params=START_METHODS)
def method(request: pytest.FixtureRequest) -> str:
    """Each start method this platform has."""
    return str(request.param)


def open_fds() -> set[int]:
    """Descriptors open in this process right now."""
    if os.path.isdir("/proc/self/fd"):
        fds = set()
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                os.fstat(fd)
            except OSError:
                continue  # the listing's own descriptor, closed by now
            fds.add(fd)
        return fds
    found = set()
    for fd in range(256):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.add(fd)
    return found


def _helper_pids() -> set[int]:
    """multiprocessing's own long-lived helpers (fork server, resource tracker)."""
    pids = set()
    try:
        from multiprocessing import forkserver

        pid = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
        if pid:
            pids.add(pid)
    except Exception:
        pass
    try:
        from multiprocessing import resource_tracker

        pid = resource_tracker._resource_tracker._pid  # type: ignore[attr-defined]
        if pid:
            pids.add(pid)
    except Exception:
        pass
    return pids


def child_pids() -> set[int]:
    """Live (or zombie) children of this process, less multiprocessing's helpers."""
    pids: set[int] = set()
    task_dir = f"/proc/{os.getpid()}/task"
    if not os.path.isdir(task_dir):
        pytest.skip("needs /proc")
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return pids - _helper_pids()


def free_slots(js: Jobserver) -> int:
    """How many tokens the pool holds right now (taken, counted, given back)."""
    pool = js._resources.pool
    ledger: collections.deque = collections.deque()
    while pool.take(ledger):
        pass
    count = len(ledger)
    while ledger:
        pool.give(ledger)
    return count


def assert_slots_conserved(js: Jobserver, slots: int) -> None:
    """Exactly ``slots`` tokens are free: N can be taken, the N+1th cannot."""
    js.reclaim_resources()
    assert js._resources.tracked_count == 0, js
    assert free_slots(js) == slots


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves descriptors or child processes behind."""
    # multiprocessing's long-lived helpers keep descriptors open once started;
    # start them first so that they are part of the baseline.
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()
    if "forkserver" in START_METHODS:
        forkserver.ensure_running()
    before_fds = open_fds()
    before_children = child_pids()
    before_threads = os_threads()
    yield
    leaked_children = child_pids() - before_children
    assert not leaked_children, f"child processes left behind: {leaked_children}"
    leaked_fds = open_fds() - before_fds
    assert not leaked_fds, f"descriptors left open: {leaked_fds}"
    leaked_threads = await_threads_gone(before_threads)
    assert not leaked_threads, f"threads left running: {leaked_threads}"


def os_threads() -> set[int]:
    """The kernel's thread ids of this process (empty without /proc)."""
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def await_threads_gone(baseline: set[int], timeout: float = 30.0) -> set[int]:
    """Wait until this process runs no thread beyond ``baseline``; return the
    ones still there after ``timeout`` seconds.

    A joined ``threading.Thread`` can outlive its ``join()`` by the kernel's
    teardown of the thread, and a fork in that window makes CPython 3.12+
    warn that the process is multi-threaded (the next test's fork, not this
    one's).  The kernel offers no descriptor or event for a thread's exit, so
    this polls ``/proc/self/task``; a thread left running for good fails the
    test after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        extra = os_threads() - baseline
        if not extra or time.monotonic() >= deadline:
            return extra
        time.sleep(0.001)


# Tasks live in a real module so that spawn and forkserver children can import them.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def close_template(template: Any) -> None:
    """Close what a ``_template._Template`` built in this process holds (the
    tests that drive its loop one poll at a time)."""
    for fd in list(template.clients):
        template.drop_client(fd)
    os.close(template.wake_r)
    os.close(template.wake_w)
    template.rendezvous.close()
    template.rendezvous_end.close()

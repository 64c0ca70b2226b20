"""The template launcher behind spawn and forkserver on Linux."""

from __future__ import annotations

import os
import threading

import pytest
from conftest import assert_slots_conserved
from jobserver import Jobserver, _template

pytestmark = pytest.mark.skipif(
    not _template.available(), reason="the template launcher is Linux-only"
)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_template_forks_the_workers_and_closes_with_the_resource_set(
    method: str,
) -> None:
    with Jobserver(method, slots=2) as js:
        assert isinstance(js._resources.launcher, _template.TemplateLauncher)
        parents = {f.result() for f in [js.submit(os.getppid) for _ in range(4)]}
        client = js._resources.launcher._client
        assert client is not None and not client.dead
        assert_slots_conserved(js, 2)
    # One template forked them all; it is not this process.
    assert len(parents) == 1
    assert os.getpid() not in parents
    assert client.dead


def _first_launch_from_two_threads(launcher: _template.TemplateLauncher) -> None:
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def first_launch() -> None:
        try:
            barrier.wait(timeout=60)
            launcher.prepare()  # what submit does before taking a slot
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first_launch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors


def test_threads_launching_first_at_once_start_one_template(
    monkeypatch: pytest.MonkeyPatch, no_leaks: None
) -> None:
    """Two threads making a resource set's first launch at the same moment
    must share one template process: a second one would be left running,
    its socket open, until garbage collection."""
    started: list[_template._Client] = []

    class CountingClient(_template._Client):
        def __init__(self, method: str) -> None:
            super().__init__(method)
            started.append(self)

    monkeypatch.setattr(_template, "_Client", CountingClient)
    rounds = 5  # without a lock, each round starts two almost always
    for _ in range(rounds):
        with Jobserver("spawn", slots=2) as js:
            launcher = js._resources.launcher
            assert isinstance(launcher, _template.TemplateLauncher)
            _first_launch_from_two_threads(launcher)
            assert launcher._client is started[-1]
            assert js.submit(os.getpid).result(timeout=60) > 0
            assert_slots_conserved(js, 2)
    assert len(started) == rounds, f"{len(started)} templates for {rounds} launches"
    assert all(client.dead for client in started)


def _nested_spawn_pid() -> int:
    with Jobserver("spawn", slots=1) as inner:
        return inner.submit(os.getppid).result(timeout=60)


def test_a_fork_while_a_template_is_being_started_can_start_its_own(
    no_leaks: None,
) -> None:
    """A process forked while some thread holds the template-starting lock
    must not inherit it held: its own first spawn launch would hang."""
    with _template._starting, Jobserver("fork", slots=2) as js:
        # The worker is forked with the lock held, as it would be while
        # another thread of this process was starting a template.
        future = js.submit(_nested_spawn_pid)
        template = future.result(timeout=120)
        assert template not in (os.getpid(), future._worker.pid)
        assert_slots_conserved(js, 2)

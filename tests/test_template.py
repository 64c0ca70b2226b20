"""The template launcher behind spawn and forkserver on Linux."""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
from multiprocessing.connection import Connection

import pytest
from conftest import assert_slots_conserved
from jobserver import Jobserver, LostResult, _template

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


# --- nested work goes through the template that forked the worker -------------------


def _nested_parents(js: Jobserver) -> tuple[int, int, bool]:
    nested = js.submit(os.getppid, consume=0).result(timeout=60)
    client = _template._inherited_client
    return os.getppid(), nested, client is not None and client.shared


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_nested_work_is_forked_by_the_template_that_forked_the_worker(
    method: str, no_leaks: None
) -> None:
    """No interpreter start per nesting worker: its nested workers are its
    siblings, forked by the same template over the worker's own connection."""
    with Jobserver(method, slots=2) as js:
        template, nested_template, shared = js.submit(
            _nested_parents, args=(js,)
        ).result(timeout=120)
        assert_slots_conserved(js, 2)
    assert shared
    assert nested_template == template != os.getpid()


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _one_nested_death(js: Jobserver) -> tuple[str, int]:
    doomed = js.submit(_kill_self)
    fine = js.submit(os.getpid)
    try:
        doomed.result(timeout=60)
    except LostResult as exc:
        outcome = type(exc).__name__
    else:  # pragma: no cover - reported by the assertion below
        outcome = "no exception"
    return outcome, fine.result(timeout=60)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_nested_workers_death_fails_only_its_future(
    method: str, no_leaks: None
) -> None:
    with Jobserver(method, slots=3) as js:
        outcome, pid = js.submit(_one_nested_death, args=(js,)).result(timeout=120)
        # The template is still serving, and the slots all came back.
        assert js.submit(os.getpid).result(timeout=60) > 0
        assert_slots_conserved(js, 3)
    assert outcome == "LostResult"
    assert pid > 0


def _hold(release: Connection) -> str:
    try:
        release.recv()
    except EOFError:
        pass
    return "released"


def _middle(js: Jobserver, report: Connection, release: Connection) -> None:
    nested = js.submit(_hold, args=(release,), consume=0)
    report.send((os.getppid(), nested._worker.pid))
    report.recv()  # until killed


def _wait_for_exit(pid: int, timeout: float) -> bool:
    pidfd = os.pidfd_open(pid)
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_killing_a_middle_worker_orphans_its_nested_work_without_harm(
    method: str, no_leaks: None
) -> None:
    """The killed worker's Future alone fails; its orphaned nested worker
    runs on and is reaped by the template, which keeps serving everybody
    else meanwhile and exits once that orphan is gone too."""
    ours, theirs = multiprocessing.Pipe()
    release_r, release_w = multiprocessing.Pipe(duplex=False)
    with Jobserver(method, slots=2) as js:
        middle = js.submit(_middle, args=(js, theirs, release_r))
        theirs.close()
        release_r.close()
        assert ours.poll(120)
        template, orphan = ours.recv()
        middle._worker.send_signal(signal.SIGKILL)
        with pytest.raises(LostResult):
            middle.result(timeout=60)
        # The orphan is alive, and the template serves new work meanwhile.
        assert not _wait_for_exit(orphan, 0)
        assert js.submit(os.getppid).result(timeout=60) == template
        assert_slots_conserved(js, 2)  # the orphan took no slot (consume=0)
    assert not _wait_for_exit(template, 0)  # still waiting for the orphan
    release_w.close()  # the orphan returns; its result has nowhere to go
    # Derived bound: the orphan needs one wake-up and an exit, the template
    # one reap; a minute covers any load this suite runs under.
    assert _wait_for_exit(orphan, 60)
    assert _wait_for_exit(template, 60)
    ours.close()


def _stall_halfway(js: Jobserver, report: Connection) -> None:
    # Half a request header on this worker's connection to the template,
    # and then nothing more until the test lets it go.
    launcher = js._resources.launcher
    assert isinstance(launcher, _template.TemplateLauncher)
    launcher.prepare()  # connects
    assert launcher._client is not None and launcher._client.shared
    launcher._client.sock.sendall(b"\0")
    report.send("stalled")
    try:
        report.recv()
    except EOFError:
        pass


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_client_stalled_halfway_through_a_request_stalls_nobody_else(
    method: str, no_leaks: None
) -> None:
    ours, theirs = multiprocessing.Pipe()
    with Jobserver(method, slots=3) as js:
        stalled = js.submit(_stall_halfway, args=(js, theirs))
        theirs.close()
        assert ours.poll(120) and ours.recv() == "stalled"
        # Other clients of the same template: the parent, and a nested one.
        assert js.submit(os.getpid).result(timeout=60) > 0
        template, nested_template, _ = js.submit(_nested_parents, args=(js,)).result(
            timeout=60
        )
        assert nested_template == template
        ours.close()
        assert stalled.result(timeout=60) is None
        assert_slots_conserved(js, 3)

"""ParentDeathSignal: a worker dies when the process that launched it dies."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

import extras_tasks
import pytest
from conftest import assert_slots_conserved
from extras_tasks import FifoReader, ProcessWatch
from jobserver import Jobserver, LostResult
from jobserver._launch import ForkLauncher, MultiprocessingLauncher

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="parent-death signals are Linux-only"
)

if sys.platform.startswith("linux"):
    from jobserver_extras import ParentDeathSignal

    # Built at import: the lifeline pipe it creates must predate no_leaks.
    PDS = ParentDeathSignal()
    PDS_TERM = ParentDeathSignal(signal.SIGTERM)

#: What the spec promises: the worker is gone within this long after its
#: launcher died (widened below if this machine is slow to reap anything).
PROMISE = 1.0


def exit_latency() -> float:
    """How long this machine takes to show a SIGKILLed process as exited."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with ProcessWatch(child.pid) as watch:
            start = time.monotonic()
            child.kill()
            assert watch.exited(60)
            return time.monotonic() - start
    finally:
        child.wait()


def allowed_delay() -> float:
    # A kernel-delivered signal needs only to be scheduled; give the loaded
    # machine twenty times its own plain kill-to-exit latency if that is more.
    return max(PROMISE, 20 * exit_latency())


def test_validation() -> None:
    with pytest.raises(TypeError, match="signum"):
        ParentDeathSignal("SIGKILL")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="signum"):
        ParentDeathSignal(True)
    with pytest.raises(ValueError, match="signum"):
        ParentDeathSignal(0)
    with pytest.raises(ValueError, match="signum"):
        ParentDeathSignal(100000)
    assert ParentDeathSignal(signal.SIGTERM).signum == signal.SIGTERM
    assert ParentDeathSignal().signum == signal.SIGKILL
    assert repr(PDS_TERM) == "ParentDeathSignal(SIGTERM)"


def test_plain_pickle_round_trip() -> None:
    copy = pickle.loads(pickle.dumps(PDS_TERM))
    assert copy == PDS_TERM
    assert copy.signum == signal.SIGTERM


def test_set_up_in_worker(method: str, no_leaks: None) -> None:
    """Under every start method the worker is armed, by prctl where its
    parent is the launcher and by the lifeline always."""
    with Jobserver(method, slots=1) as js:
        pdeathsig, armed = (
            js.replace_preexec(PDS_TERM).submit(extras_tasks.pdeathsig_state).result()
        )
    if method == "forkserver" or not isinstance(
        js._resources.launcher, (ForkLauncher, MultiprocessingLauncher)
    ):
        # The parent is the fork server (or the template process that forks
        # spawn/forkserver workers), which outlives the launcher.
        assert pdeathsig == 0
    else:
        assert pdeathsig == signal.SIGTERM
    assert armed == 1


def test_plain_copy_falls_back_to_parent() -> None:
    """A copy pickled outside any launch, called in a process we did not
    launch, sets the signal for whatever parent that process has."""
    script = (
        "import pickle, sys\n"
        "from jobserver_extras import current_pdeathsig\n"
        "pickle.loads(sys.stdin.buffer.read())()\n"
        "print(current_pdeathsig())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=pickle.dumps(PDS_TERM),
        capture_output=True,
        timeout=extras_tasks.PATIENCE,
        check=True,
    )
    assert int(done.stdout) == signal.SIGTERM


def kill_and_time(middle: ProcessWatch, worker: ProcessWatch, allowed: float) -> float:
    """SIGKILL the middle process, wait for it to exit, then return how long
    the worker took to follow (at most ``allowed``, or fail)."""
    assert not worker.exited(0), "the worker should still be running"
    middle.kill(signal.SIGKILL)
    assert middle.exited(extras_tasks.PATIENCE)
    start = time.monotonic()
    gone = worker.exited(allowed)
    waited = time.monotonic() - start
    assert gone, f"worker {worker.pid} outlived its launcher by {waited:.2f} s"
    return waited


def test_worker_dies_with_its_launcher(method: str, tmp_path, no_leaks) -> None:
    """A middle process launches a long worker and is SIGKILLed: the worker is
    gone promptly, under every start method."""
    allowed = allowed_delay()
    with FifoReader(tmp_path / "report") as report, Jobserver(method, slots=2) as js:
        guarded = js.replace_preexec(PDS)
        future = js.submit(extras_tasks.middle_launches, args=(guarded, report.path))
        with (
            ProcessWatch(int(report.read_line())) as middle,
            ProcessWatch(int(report.read_line())) as worker,
        ):
            kill_and_time(middle, worker, allowed)
        with pytest.raises(LostResult):
            future.result()
        assert_slots_conserved(js, 2)


def test_launch_from_a_thread_that_exits(method: str, tmp_path, no_leaks) -> None:
    """prctl would fire when the launching *thread* exits; a launch from a
    short-lived thread must survive that, yet die with the process."""
    allowed = allowed_delay()
    go = str(tmp_path / "go")
    os.mkfifo(go)
    with FifoReader(tmp_path / "report") as report, Jobserver(method, slots=2) as js:
        guarded = js.replace_preexec(PDS)
        future = js.submit(
            extras_tasks.middle_launches_from_thread, args=(guarded, report.path, go)
        )
        with (
            ProcessWatch(int(report.read_line())) as middle,
            ProcessWatch(int(report.read_line())) as worker,
        ):
            assert report.read_line() == "alive"
            kill_and_time(middle, worker, allowed)
        with pytest.raises(LostResult):
            future.result()


def test_launcher_already_dead_is_noticed() -> None:
    """The launcher died before the worker armed its lifeline: the worker
    signals itself at once instead of running on unsupervised."""
    with Jobserver("fork", slots=1) as js:
        future = js.submit(
            extras_tasks.apply_with_dead_launcher, args=(signal.SIGUSR1,)
        )
        with pytest.raises(LostResult) as info:
            future.result()
    assert info.value.returncode == -signal.SIGUSR1


def test_unwatchable_launch_is_an_error() -> None:
    with Jobserver("fork", slots=1) as js:
        future = js.submit(extras_tasks.apply_without_any_watch, args=(signal.SIGUSR1,))
        with pytest.raises(RuntimeError, match="cannot watch"):
            future.result()


def test_lifeline_write_end_stays_in_the_launcher(method: str) -> None:
    """Workers never hold the launcher's lifeline write end (else the
    launcher's death would go unnoticed while they live)."""
    from jobserver_extras import _pdeathsig

    assert _pdeathsig._own is not None
    _, write_fd = _pdeathsig._own
    lifeline = os.readlink(f"/proc/self/fd/{write_fd}")
    assert (lifeline, os.O_WRONLY) in extras_tasks.open_fd_targets()
    with Jobserver(method, slots=1) as js:
        held = js.replace_preexec(PDS).submit(extras_tasks.open_fd_targets).result()
    assert (lifeline, os.O_RDONLY) in held
    assert (lifeline, os.O_WRONLY) not in held


def test_as_a_subprocess_preexec_fn(no_leaks) -> None:
    """Documented use outside a Jobserver: Popen(preexec_fn=...) from the
    main thread; the prctl setting survives the exec."""
    allowed = allowed_delay()
    script = (
        "import subprocess, sys, time\n"
        "from jobserver_extras import ParentDeathSignal\n"
        "child = subprocess.Popen(['sleep', '60'], preexec_fn=ParentDeathSignal())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    middle = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert middle.stdout is not None
        with (
            ProcessWatch(middle.pid) as watch_middle,
            ProcessWatch(int(middle.stdout.readline())) as sleeper,
        ):
            kill_and_time(watch_middle, sleeper, allowed)
    finally:
        middle.kill()
        middle.wait()
        if middle.stdout is not None:
            middle.stdout.close()

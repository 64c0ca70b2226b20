"""AdvisoryLock: an flock held on a path for the duration of each task."""

from __future__ import annotations

import os
import pickle
import signal
import sys

import extras_tasks
import pytest
import tasks
from conftest import assert_slots_conserved
from extras_tasks import FifoReader, LockHolder
from jobserver import Jobserver, LostResult

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")

if sys.platform != "win32":
    import fcntl

    from jobserver_extras import AdvisoryLock


def try_lock(path: str) -> int | None:
    """An fd holding an exclusive lock on ``path``, or None if it is taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def test_same_path_never_overlaps(method: str, tmp_path, no_leaks) -> None:
    log = str(tmp_path / "intervals")
    lock = AdvisoryLock(tmp_path / "the.lock")
    with Jobserver(method, slots=3) as js:
        locked = js.replace_preexec(lock)
        futures = [
            locked.submit(tasks.record_interval, args=(log, 0.1)) for _ in range(3)
        ]
        for future in futures:
            future.result()
        assert_slots_conserved(js, 3)
    assert len(extras_tasks.read_lines(log)) == 3
    assert tasks.max_overlap(log) == 1


def rendezvous(js_a: Jobserver, js_b: Jobserver, tmp_path) -> None:
    """Both workers report from inside their locks before either may leave:
    possible only if the two locks are held at the same time."""
    go_a, go_b = str(tmp_path / "go-a"), str(tmp_path / "go-b")
    os.mkfifo(go_a)
    os.mkfifo(go_b)
    with FifoReader(tmp_path / "ready") as ready:
        a = js_a.submit(extras_tasks.locked_rendezvous, args=(ready.path, go_a, "a"))
        b = js_b.submit(extras_tasks.locked_rendezvous, args=(ready.path, go_b, "b"))
        try:
            arrived = {ready.read_line(), ready.read_line()}
        finally:
            # Release whoever is waiting, whatever happened above.
            for go in (go_a, go_b):
                extras_tasks.fifo_send_nowait(go, "go")
        assert arrived == {"a", "b"}
        assert a.result() == b.result() == "went"


def test_different_paths_run_in_parallel(method: str, tmp_path, no_leaks) -> None:
    with Jobserver(method, slots=2) as js:
        rendezvous(
            js.replace_preexec(AdvisoryLock(tmp_path / "a.lock")),
            js.replace_preexec(AdvisoryLock(tmp_path / "b.lock")),
            tmp_path,
        )


def test_shared_locks_run_in_parallel(tmp_path, no_leaks) -> None:
    shared = AdvisoryLock(tmp_path / "s.lock", shared=True)
    with Jobserver("fork", slots=2) as js:
        locked = js.replace_preexec(shared)
        rendezvous(locked, locked, tmp_path)


def test_waits_for_a_lock_held_elsewhere(method: str, tmp_path, no_leaks) -> None:
    path = str(tmp_path / "held.lock")
    with LockHolder(path) as holder, Jobserver(method, slots=1) as js:
        future = js.replace_preexec(AdvisoryLock(path)).submit(os.getpid)
        assert not future.done(0.2)  # waiting for the lock (never a false fail)
        holder.release()
        assert future.result(extras_tasks.PATIENCE) > 0


def test_non_blocking_fails_at_once(method: str, tmp_path, no_leaks) -> None:
    path = str(tmp_path / "held.lock")
    with LockHolder(path), Jobserver(method, slots=1) as js:
        future = js.replace_preexec(AdvisoryLock(path, blocking=False)).submit(
            os.getpid
        )
        with pytest.raises(BlockingIOError):
            future.result(extras_tasks.PATIENCE)


def test_released_when_the_task_ends_or_the_worker_dies(tmp_path) -> None:
    path = str(tmp_path / "x.lock")
    with Jobserver("fork", slots=1) as js:
        locked = js.replace_preexec(AdvisoryLock(path))
        locked.submit(os.getpid).result()
        fd = try_lock(path)
        assert fd is not None
        os.close(fd)
        with pytest.raises(LostResult):
            locked.submit(tasks.kill_self, args=(signal.SIGKILL,)).result()
        fd = try_lock(path)
        assert fd is not None
        os.close(fd)


def test_forked_children_do_not_keep_the_lock(tmp_path) -> None:
    with Jobserver("fork", slots=1) as js:
        future = js.submit(
            extras_tasks.lock_copy_in_forked_child, args=(str(tmp_path / "f.lock"),)
        )
        assert future.result() is True


def test_arguments(tmp_path) -> None:
    lock = AdvisoryLock(tmp_path / "p.lock")
    assert lock.path == str(tmp_path / "p.lock")
    assert not lock.shared
    assert os.path.isabs(AdvisoryLock("relative.lock").path)
    assert AdvisoryLock(b"/tmp/bytes.lock").path == b"/tmp/bytes.lock"
    copy = pickle.loads(pickle.dumps(lock))
    assert copy == lock
    assert hash(copy) == hash(lock)
    assert "p.lock" in repr(copy)
    with pytest.raises(TypeError, match="path"):
        AdvisoryLock(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path"):
        AdvisoryLock("")
    with pytest.raises(ValueError, match="NUL"):
        AdvisoryLock("a\0b")
    with pytest.raises(ValueError, match="directory"):
        AdvisoryLock(tmp_path)
    with pytest.raises(TypeError, match="shared"):
        AdvisoryLock("x", shared=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="blocking"):
        AdvisoryLock("x", blocking=None)  # type: ignore[arg-type]

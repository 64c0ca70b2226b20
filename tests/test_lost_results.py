"""A worker that ends without a result fails its own Future, and only that one."""

from __future__ import annotations

import signal

import pytest
import tasks
from conftest import assert_slots_conserved
from jobserver import Jobserver, LostResult

ENDINGS = {
    "SIGKILL": (tasks.kill_self, (signal.SIGKILL,), -signal.SIGKILL),
    "SIGSEGV": (tasks.segfault, (), -signal.SIGSEGV),
    "SIGTERM": (tasks.kill_self, (signal.SIGTERM,), -signal.SIGTERM),
    "os._exit(0)": (tasks.exit_now, (0,), 0),
    "os._exit(5)": (tasks.exit_now, (5,), 5),
    "exec": (tasks.exec_true, (), 0),
    "SystemExit": (tasks.raise_system_exit, (3,), 3),
    "KeyboardInterrupt": (tasks.raise_keyboard_interrupt, (), 128 + signal.SIGINT),
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_each_ending_is_lost_result_on_that_future_only(
    method: str, ending: str, no_leaks: None
) -> None:
    fn, args, returncode = ENDINGS[ending]
    with Jobserver(context=method, slots=3) as js:
        before = js(tasks.add, 1, 2)
        doomed = js.submit(fn, args=args)
        after = js(tasks.identity, "sibling")
        with pytest.raises(LostResult) as info:
            doomed.result()
        assert info.value.pid == doomed._worker.pid
        assert info.value.returncode == returncode
        assert str(doomed._worker.pid) in str(info.value)
        assert before.result() == 3
        assert after.result() == "sibling"
        assert doomed.done() and doomed.wait()
        with pytest.raises(LostResult):
            doomed.result()
        assert_slots_conserved(js, 3)


def test_lost_result_message_names_the_signal() -> None:
    with Jobserver(context="fork", slots=1) as js:
        with pytest.raises(LostResult, match="SIGKILL"):
            js(tasks.kill_self, signal.SIGKILL).result()


def sleep_long() -> None:
    import time

    time.sleep(60)


def middle_with_nested_sleeper(js: Jobserver, ready: str) -> None:
    import time

    nested = js.submit(sleep_long, consume=0)
    with open(ready, "w") as f:
        f.write(str(nested._worker.pid))
    time.sleep(60)


def test_killed_worker_is_lost_at_once_despite_its_nested_workers(tmp_path) -> None:
    # A nested worker forked by the worker must not hold the worker's result
    # pipe open: the parent sees the loss when the worker dies, not later.
    import os
    import time

    ready = str(tmp_path / "ready")
    with Jobserver(context="fork", slots=2) as js:
        future = js.submit(middle_with_nested_sleeper, args=(js, ready))
        deadline = time.monotonic() + 60
        while not os.path.exists(ready) or not (tmp_path / "ready").read_text():
            assert time.monotonic() < deadline
            assert not future.done(timeout=0.01)
        nested_pid = int((tmp_path / "ready").read_text())
        try:
            assert future.wait(timeout=30, signal=signal.SIGKILL)
            with pytest.raises(LostResult):
                future.result()
        finally:
            os.kill(nested_pid, signal.SIGKILL)

"""A task may fork children of its own that outlive it: its Future still
completes when the task's worker is gone (the core closes the worker's
result pipe in every process the worker forks)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import tasks
from jobserver import Jobserver

#: Seconds to wait for a result that arrives as soon as the worker exits; if
#: the grandchild kept the result pipe open it would never arrive.
NEVER = 60.0


def test_a_grandchild_that_outlives_its_task_does_not_hold_the_result(
    tmp_path: Path, method: str
) -> None:
    pid_path = tmp_path / "grandchild"
    try:
        with Jobserver(context=method, slots=1) as js:
            future = js.submit(tasks.fork_a_lingering_child, args=(str(pid_path),))
            grandchild = future.result(timeout=NEVER)
            # The grandchild is still running: it does not hold the slot.
            assert js.submit(tasks.add, args=(21, 21)).result(timeout=NEVER) == 42
        os.kill(grandchild, 0)  # still alive: the result did not wait for it
    finally:
        if pid_path.exists():
            try:
                os.kill(int(pid_path.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass

"""Leaving the interpreter with an executor still open neither hangs nor leaks
children: outstanding work finishes first (as with ProcessPoolExecutor), and
submitting from an ``atexit`` handler is a RuntimeError.  Each case runs a
small script in a subprocess and checks it from outside.

One exception, from CPython itself: from 3.12 ``os.fork()`` raises
RuntimeError once the interpreter is finalizing, so under the fork start
method work that had not started when the main thread finished fails with
that error (work already running finishes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import executor_tasks as et
import pytest
from conftest import START_METHODS

pytestmark = pytest.mark.filterwarnings(et.FORK_WARNING_FILTER)

TESTS = Path(__file__).resolve().parent

SCRIPT = """
import atexit
import executor_tasks as et
from jobserver_executor import JobserverExecutor

def record_outcome(future):
    error = future.exception()
    et.append_line({outcomes!r}, "ran" if error is None else f"failed: {{error}}")

@atexit.register
def submit_too_late():
    try:
        spare.submit(abs, -1)
    except RuntimeError as exc:
        print("late submit:", exc, flush=True)

if __name__ == "__main__":
    spare = JobserverExecutor(1, mp_context={method!r}, reuse_workers={reuse!r})
    executor = JobserverExecutor(2, mp_context={method!r}, reuse_workers={reuse!r})
    for _ in range(5):
        future = executor.submit(et.record_pid_then_sleep, {log!r}, 0.2)
        future.add_done_callback(record_outcome)
    {ending}
    print("main done", flush=True)
"""

ENDINGS = {
    "left-open": "pass",
    "shutdown-nowait": "executor.shutdown(wait=False)",
    "dropped": "del executor",
}


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "reuse"])
@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("method_", START_METHODS)
def test_exit_with_outstanding_work(
    tmp_path: Path, method_: str, ending: str, reuse: bool
) -> None:
    log = tmp_path / "log"
    outcomes = tmp_path / "outcomes"
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            SCRIPT.format(
                method=method_,
                log=str(log),
                outcomes=str(outcomes),
                ending=ENDINGS[ending],
                reuse=reuse,
            )
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS), env.get("PYTHONPATH")) if p
    )
    env.pop("MAKEFLAGS", None)
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=et.PATIENCE * 2)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the interpreter did not exit\n{stdout}\n{stderr}")
    assert process.returncode == 0, stderr
    assert stderr == ""
    lines = stdout.splitlines()
    assert lines[0] == "main done"
    assert len(lines) == 2
    assert lines[1] == (
        "late submit: cannot schedule new futures after interpreter shutdown"
    )
    # Every task has an outcome, and every task that started ran to its end
    # before the interpreter left ...
    results = outcomes.read_text().splitlines()
    assert len(results) == 5
    records = log.read_text().split("\n") if log.exists() else []
    pids = [int(r) for r in records if r.isdigit()]
    done = [int(r.split()[1]) for r in records if r.startswith("done ")]
    assert sorted(done) == sorted(pids)
    assert results.count("ran") == len(pids)
    if method_ == "fork" and sys.version_info >= (3, 12):
        # CPython 3.12+ refuses os.fork() once finalization has begun: what
        # had not started by then fails instead of running.
        refused = "failed: can't fork at interpreter shutdown"
        assert all(r in ("ran", refused) for r in results), results
    else:
        assert results == ["ran"] * 5
    # ... and no worker outlived it.
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

"""Run every script in examples/ and require exit status 0.

The examples check their own claims (they raise when a behaviour does not
hold), so running them is a test.  The scripts are found when the tests are
collected: a new ``examples/*.py`` is picked up without editing this file.
Files whose names start with ``_`` are helpers, not examples, and are skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
TIMEOUT = 120  # seconds per script; each normally takes a second or two


def _clean_environment() -> dict[str, str]:
    """This environment minus what would change how an example runs."""
    env = dict(os.environ)
    # A jobserver advertised by an enclosing make (or by a test) would make
    # Jobserver(slots=None) join it; examples must behave the same anywhere.
    for key in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _show(label: str, text: str | None) -> str:
    return f"--- {label} ---\n{text or '(empty)'}\n"


def _kill_group(pgid: int) -> None:
    """Kill a timed-out example together with every process it started."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def test_examples_were_found() -> None:
    assert SCRIPTS, f"no example scripts found in {EXAMPLES}"


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_runs(script: Path) -> None:
    # A session of its own, so that on a timeout the whole process tree of
    # the example (workers, fork servers) can be killed, not just the script.
    process = subprocess.Popen(
        [sys.executable, script.name],
        cwd=EXAMPLES,
        env=_clean_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
        outcome = f"exited with status {process.returncode}"
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        stdout, stderr = process.communicate()
        outcome = f"did not finish within {TIMEOUT} s and was killed"
    if process.returncode != 0:
        pytest.fail(
            f"{script.name} {outcome}\n"
            + _show("stdout", stdout)
            + _show("stderr", stderr),
            pytrace=False,
        )

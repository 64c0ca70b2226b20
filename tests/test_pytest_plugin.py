"""The pytest plugin in jobserver-extras, with real pytest-xdist.

Each run writes a small test module whose tests are logged jobs
(``makeutil.log_job``): start/end lines with one ``O_APPEND`` write each, and
between them a rendezvous the first N tests to start must all reach before
any may end (``rendezvous.py``).  The peak number of tests between their
start and end is the number that ran at once (``makeutil.max_overlap``).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from makeutil import gnu_make, job_count, max_overlap, python_env
from rendezvous import Rendezvous

TESTS = 16
TEST_MODULE = f"""
import os
import makeutil
import pytest

@pytest.mark.parametrize("i", range({TESTS}))
def test_job(i):
    makeutil.log_job(
        os.environ["JOBSERVER_TEST_LOG"], os.environ.get("JOBSERVER_TEST_RENDEZVOUS")
    )
"""

needs_xdist = pytest.mark.skipif(
    subprocess.run(
        [sys.executable, "-c", "import xdist"], capture_output=True
    ).returncode
    != 0,
    reason="needs pytest-xdist",
)


def _project(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_jobs.py").write_text(TEST_MODULE)
    return tmp_path / "log"


def _pytest_command(tmp_path: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(tmp_path),
        "-c",
        str(tmp_path / "pytest.ini"),
        str(tmp_path / "test_jobs.py"),
        *args,
    ]


def _run(
    cmd: list[str], log: Path, rendezvous: Rendezvous | None = None
) -> subprocess.CompletedProcess[str]:
    env = python_env(JOBSERVER_TEST_LOG=str(log))
    if rendezvous is not None:
        env["JOBSERVER_TEST_RENDEZVOUS"] = rendezvous.address
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_inactive_without_a_jobserver(tmp_path: Path) -> None:
    log = _project(tmp_path)
    proc = _run(_pytest_command(tmp_path, "-k", "job and 0"), log)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "jobserver:" not in proc.stdout
    proc = _run(_pytest_command(tmp_path, "--jobserver"), log)
    assert proc.returncode == 4  # a usage error
    assert "--jobserver: MAKEFLAGS names no jobserver" in proc.stderr


def test_no_jobserver_turns_it_off(tmp_path: Path) -> None:
    log = _project(tmp_path)
    with_cli = [sys.executable, "-m", "jobserver", "-j", "2", "--"]
    proc = _run([*with_cli, *_pytest_command(tmp_path, "-k", "job and 0")], log)
    assert "jobserver: one token per test" in proc.stdout
    off = _pytest_command(tmp_path, "-k", "job and 0", "--no-jobserver")
    proc = _run([*with_cli, *off], log)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "jobserver:" not in proc.stdout


@needs_xdist
@pytest.mark.skipif(gnu_make() is None, reason="needs GNU Make")
def test_xdist_under_make_j2_runs_two_tests_at_a_time(tmp_path: Path) -> None:
    log = _project(tmp_path)
    command = shlex.join(_pytest_command(tmp_path, "-n", "8", "-q"))
    (tmp_path / "Makefile").write_text(f"all:\n\t+{command}\n")
    with Rendezvous(tmp_path, 2) as rv:
        proc = _run(["make", "-j2", "-C", str(tmp_path)], log, rv)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert job_count(log) == TESTS
    assert max_overlap(log) == 2


@needs_xdist
def test_xdist_under_a_standing_server_runs_two_tests_at_a_time(
    tmp_path: Path,
) -> None:
    log = _project(tmp_path)
    fifo = tmp_path / "jobs"
    cli = shlex.join([sys.executable, "-m", "jobserver"])
    script = (
        f'eval "$({cli} serve -j 2 --fifo {fifo} --background 2>/dev/null)"\n'
        f"{shlex.join(_pytest_command(tmp_path, '-n', '8', '-q'))}\n"
        "status=$?\n"
        f"{cli} stop\n"
        'exit "$status"\n'
    )
    with Rendezvous(tmp_path, 2) as rv:
        proc = _run(["sh", "-c", script], log, rv)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lost: 0" in proc.stdout  # the controller took back what it lent
    assert job_count(log) == TESTS
    assert max_overlap(log) == 2


@needs_xdist
@pytest.mark.slow
def test_xdist_without_a_jobserver_is_unaffected(tmp_path: Path) -> None:
    log = _project(tmp_path)
    # 4 workers, each given tests at once, run 4 at a time: 3 meet, more
    # than a jobserver of 2 would allow.
    with Rendezvous(tmp_path, 3) as rv:
        proc = _run(_pytest_command(tmp_path, "-n", "4", "-q"), log, rv)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert job_count(log) == TESTS
    assert max_overlap(log) > 2

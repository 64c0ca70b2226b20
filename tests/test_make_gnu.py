"""Against the real GNU Make on this machine (skipped where there is none).

GNU Make 4.3 only speaks the fd form; the FIFO form with Make is tested
only where Make >= 4.4 is installed.  Note that Make run with an explicit
``-j`` under a jobserver starts a jobserver of its own (it says "-jN forced
in submake: resetting jobserver mode"), so a make that should join one is
run without ``-j``, as ``$(MAKE)`` in a recipe is.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_slots
from jobserver import Jobserver
from makeutil import (
    HERE,
    gnu_make,
    job_count,
    make_version,
    max_overlap,
    pool_tokens,
    python_env,
    write_makefile,
)

MAKE = gnu_make()
pytestmark = pytest.mark.skipif(MAKE is None, reason="GNU Make is not installed")

#: A recipe that logs its own start and end (one O_APPEND write each).
SHELL_JOB = "@echo start $@ >> $(LOG); sleep {seconds}; echo end $@ >> $(LOG)"
#: A recipe that is a Python program joining Make's jobserver (``+``: Make
#: passes it the jobserver descriptors).
PYTHON_RECIPE = "+@$(PY) $(UTIL) recipe $(LOG) {count} {seconds}"


def make_args(directory: Path, log: Path) -> list[str]:
    assert MAKE is not None
    return [
        MAKE,
        "--no-print-directory",
        "-C",
        str(directory),
        f"LOG={log}",
        f"PY={sys.executable}",
        f"UTIL={HERE / 'makeutil.py'}",
    ]


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=240,
        **kwargs,  # type: ignore[arg-type]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "INTERNAL" not in proc.stderr, proc.stderr  # Make counts its tokens
    return proc


@pytest.mark.parametrize(("recipes", "jobs"), [(2, 3), (3, 4)])
def test_python_recipes_share_makes_slots(
    tmp_path: Path, recipes: int, jobs: int
) -> None:
    """make -jN, several Python recipes each submitting many short jobs: all
    their workers together never exceed N, and reach N.  Each recipe runs
    one worker on its implicit token; the tokens left in Make's pipe go to
    whichever recipe asks first."""
    log = tmp_path / "log"
    write_makefile(tmp_path, recipes, PYTHON_RECIPE.format(count=8, seconds=0.15))
    proc = run([*make_args(tmp_path, log), f"-j{jobs}"], env=python_env())
    assert "warning" not in proc.stderr, proc.stderr
    assert job_count(log) == recipes * 8
    assert max_overlap(log) == jobs


def test_cli_runs_make_over_eight_recipes_in_four_slots(tmp_path: Path) -> None:
    log = tmp_path / "log"
    write_makefile(tmp_path, 8, SHELL_JOB.format(seconds=0.3))
    cli = [sys.executable, "-m", "jobserver", "-j", "4", "--"]
    proc = run([*cli, *make_args(tmp_path, log)], env=python_env())
    assert "warning" not in proc.stderr, proc.stderr
    assert job_count(log) == 8
    assert max_overlap(log) == 4


def test_cli_python_recipes_and_make_in_one_limit(tmp_path: Path) -> None:
    """CLI -> make -> Python recipes -> workers: one limit for all."""
    log = tmp_path / "log"
    write_makefile(tmp_path, 3, PYTHON_RECIPE.format(count=6, seconds=0.15))
    cli = [sys.executable, "-m", "jobserver", "-j3", "--"]
    run([*cli, *make_args(tmp_path, log)], env=python_env())
    assert job_count(log) == 18
    assert max_overlap(log) == 3


def test_make_with_explicit_j_starts_its_own_jobserver(tmp_path: Path) -> None:
    """Make's rule, and a control for the measurement: an explicit -j3 under
    a 2-slot tree makes Make ignore our jobserver, and the log sees 3."""
    log = tmp_path / "log"
    write_makefile(tmp_path, 3, SHELL_JOB.format(seconds=0.3))
    cli = [sys.executable, "-m", "jobserver", "-j", "2", "--"]
    proc = run([*cli, *make_args(tmp_path, log), "-j3"], env=python_env())
    assert "resetting jobserver mode" in proc.stderr
    assert max_overlap(log) == 3


def run_make_in_worker(directory: str, log: str) -> str:
    """In a worker: run make the lazy way, inheriting environment and fds."""
    proc = subprocess.run(
        make_args(Path(directory), Path(log)),
        close_fds=False,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if proc.returncode != 0 or "warning" in proc.stderr:
        raise RuntimeError(proc.stdout + proc.stderr)
    return os.environ["MAKEFLAGS"]


def run_make_with_advertisement(js: Jobserver, directory: str, log: str) -> None:
    """In a worker: the explicit way, lending the worker's slot to make."""
    with js.advertise(consume=0) as adv:
        proc = subprocess.run(
            make_args(Path(directory), Path(log)),
            env=adv.env,
            pass_fds=adv.pass_fds,
            capture_output=True,
            text=True,
            timeout=240,
        )
    if proc.returncode != 0 or "warning" in proc.stderr:
        raise RuntimeError(proc.stdout + proc.stderr)


@pytest.mark.usefixtures("no_leaks")
def test_worker_running_make_stays_within_two_slots(
    tmp_path: Path, method: str
) -> None:
    log = tmp_path / "log"
    write_makefile(tmp_path, 6, SHELL_JOB.format(seconds=0.2))
    with Jobserver(context=method, slots=2).advertise_to_workers() as js:
        makeflags = js.submit(run_make_in_worker, args=(str(tmp_path), str(log)))
        assert "--jobserver-auth=" in makeflags.result()
        assert free_slots(js) == 2
    assert job_count(log) == 6
    assert max_overlap(log) == 2


def test_two_workers_running_make_share_three_slots(tmp_path: Path) -> None:
    log = tmp_path / "log"
    dirs = [tmp_path / "a", tmp_path / "b"]
    for directory in dirs:
        directory.mkdir()
        write_makefile(directory, 6, SHELL_JOB.format(seconds=0.2))
    with Jobserver(slots=3) as js:
        futures = [
            js.submit(run_make_with_advertisement, args=(js, str(d), str(log)))
            for d in dirs
        ]
        for future in futures:
            future.result()
        assert free_slots(js) == 3
    assert job_count(log) == 12
    # Each worker's slot runs one recipe; the third slot goes to either make.
    assert max_overlap(log) == 3


@pytest.mark.usefixtures("no_leaks")
def test_make_started_from_the_main_process(tmp_path: Path) -> None:
    log = tmp_path / "log"
    write_makefile(tmp_path, 6, SHELL_JOB.format(seconds=0.2))
    with Jobserver(slots=2) as js, js.advertise() as adv:
        run(make_args(tmp_path, log), env=adv.env, pass_fds=adv.pass_fds)
    assert max_overlap(log) == 2


def test_make_gives_back_every_token(tmp_path: Path) -> None:
    """Tokens are opaque bytes.  We write back the very byte we read; GNU
    Make 4.3 writes back a '+' of its own whatever it read, so with Make
    only the count is kept (and the byte our advertisement held)."""
    log = tmp_path / "log"
    write_makefile(tmp_path, 8, SHELL_JOB.format(seconds=0.05))
    tokens = bytes([7, 0, 255, 43])
    with Jobserver(slots=4) as js:
        pool = js._resources.pool
        assert pool_tokens(pool) == b"++++"
        ledger: collections.deque[bytes] = collections.deque()
        while pool.take(ledger):
            pass
        os.write(pool.write_fd, tokens)
        with js.advertise() as adv:
            run(make_args(tmp_path, log), env=adv.env, pass_fds=adv.pass_fds)
        back = pool_tokens(pool)
        assert len(back) == 4
        assert set(back) <= {*tokens, ord("+")}
        assert 7 in back  # the one our advertisement held for make
    assert job_count(log) == 8
    assert max_overlap(log) == 4


@pytest.mark.skipif(make_version() < (4, 4), reason="the FIFO form needs Make 4.4")
def test_cli_fifo_form_with_make(tmp_path: Path) -> None:  # pragma: no cover
    log = tmp_path / "log"
    write_makefile(tmp_path, 6, SHELL_JOB.format(seconds=0.2))
    cli = [sys.executable, "-m", "jobserver", "-j", "3", "--fifo", "--"]
    run([*cli, *make_args(tmp_path, log)], env=python_env())
    assert max_overlap(log) == 3

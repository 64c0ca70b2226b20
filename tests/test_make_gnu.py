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
from rendezvous import Rendezvous

MAKE = gnu_make()
pytestmark = pytest.mark.skipif(MAKE is None, reason="GNU Make is not installed")

#: A recipe that is one job: it logs its start, meets the others at the
#: rendezvous, and logs its end (one O_APPEND write each); it does not join
#: Make's jobserver.
JOB = "@$(PY) $(UTIL) job $(LOG) $(RV)"
#: A recipe that is a Python program joining Make's jobserver (``+``: Make
#: passes it the jobserver descriptors) and running {count} such jobs.
PYTHON_RECIPE = "+@$(PY) $(UTIL) recipe $(LOG) {count} $(RV)"


def make_args(directory: Path, log: Path, rendezvous: str) -> list[str]:
    assert MAKE is not None
    return [
        MAKE,
        "--no-print-directory",
        "-C",
        str(directory),
        f"LOG={log}",
        f"PY={sys.executable}",
        f"UTIL={HERE / 'makeutil.py'}",
        f"RV={rendezvous}",
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
    write_makefile(tmp_path, recipes, PYTHON_RECIPE.format(count=8))
    with Rendezvous(tmp_path, jobs) as rv:
        args = make_args(tmp_path, log, rv.address)
        proc = run([*args, f"-j{jobs}"], env=python_env())
    assert "warning" not in proc.stderr, proc.stderr
    assert job_count(log) == recipes * 8
    assert max_overlap(log) == jobs


def test_cli_runs_make_over_eight_recipes_in_four_slots(tmp_path: Path) -> None:
    log = tmp_path / "log"
    write_makefile(tmp_path, 8, JOB)
    cli = [sys.executable, "-m", "jobserver", "-j", "4", "--"]
    with Rendezvous(tmp_path, 4) as rv:
        proc = run([*cli, *make_args(tmp_path, log, rv.address)], env=python_env())
    assert "warning" not in proc.stderr, proc.stderr
    assert job_count(log) == 8
    assert max_overlap(log) == 4


def test_cli_python_recipes_and_make_in_one_limit(tmp_path: Path) -> None:
    """CLI -> make -> Python recipes -> workers: one limit for all."""
    log = tmp_path / "log"
    write_makefile(tmp_path, 3, PYTHON_RECIPE.format(count=6))
    cli = [sys.executable, "-m", "jobserver", "-j3", "--"]
    with Rendezvous(tmp_path, 3) as rv:
        run([*cli, *make_args(tmp_path, log, rv.address)], env=python_env())
    assert job_count(log) == 18
    assert max_overlap(log) == 3


def test_make_with_explicit_j_starts_its_own_jobserver(tmp_path: Path) -> None:
    """Make's rule, and a control for the measurement: an explicit -j3 under
    a 2-slot tree makes Make ignore our jobserver, and the log sees 3."""
    log = tmp_path / "log"
    write_makefile(tmp_path, 3, JOB)
    cli = [sys.executable, "-m", "jobserver", "-j", "2", "--"]
    with Rendezvous(tmp_path, 3) as rv:
        args = [*cli, *make_args(tmp_path, log, rv.address), "-j3"]
        proc = run(args, env=python_env())
    assert "resetting jobserver mode" in proc.stderr
    assert max_overlap(log) == 3


def run_make_in_worker(directory: str, log: str, rendezvous: str) -> str:
    """In a worker: run make the lazy way, inheriting environment and fds."""
    proc = subprocess.run(
        make_args(Path(directory), Path(log), rendezvous),
        close_fds=False,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if proc.returncode != 0 or "warning" in proc.stderr:
        raise RuntimeError(proc.stdout + proc.stderr)
    return os.environ["MAKEFLAGS"]


def run_make_with_advertisement(
    js: Jobserver, directory: str, log: str, rendezvous: str
) -> None:
    """In a worker: the explicit way, lending the worker's slot to make."""
    with js.advertise(consume=0) as adv:
        proc = subprocess.run(
            make_args(Path(directory), Path(log), rendezvous),
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
    write_makefile(tmp_path, 6, JOB)
    with (
        Rendezvous(tmp_path, 2) as rv,
        Jobserver(context=method, slots=2).advertise_to_workers() as js,
    ):
        args = (str(tmp_path), str(log), rv.address)
        makeflags = js.submit(run_make_in_worker, args=args)
        assert "--jobserver-auth=" in makeflags.result()
        assert free_slots(js) == 2
    assert job_count(log) == 6
    assert max_overlap(log) == 2


def test_two_workers_running_make_share_three_slots(tmp_path: Path) -> None:
    log = tmp_path / "log"
    dirs = [tmp_path / "a", tmp_path / "b"]
    for directory in dirs:
        directory.mkdir()
        write_makefile(directory, 6, JOB)
    with Rendezvous(tmp_path, 3) as rv, Jobserver(slots=3) as js:
        futures = [
            js.submit(
                run_make_with_advertisement, args=(js, str(d), str(log), rv.address)
            )
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
    write_makefile(tmp_path, 6, JOB)
    with Rendezvous(tmp_path, 2) as rv, Jobserver(slots=2) as js, js.advertise() as adv:
        run(make_args(tmp_path, log, rv.address), env=adv.env, pass_fds=adv.pass_fds)
    assert max_overlap(log) == 2


def test_make_gives_back_every_token(tmp_path: Path) -> None:
    """Tokens are opaque bytes.  We write back the very byte we read; GNU
    Make 4.3 writes back a '+' of its own whatever it read, so with Make
    only the count is kept (and the byte our advertisement held)."""
    log = tmp_path / "log"
    write_makefile(tmp_path, 8, JOB)
    tokens = bytes([7, 0, 255, 43])
    with Rendezvous(tmp_path, 4) as rv, Jobserver(slots=4) as js:
        pool = js._resources.pool
        assert pool_tokens(pool) == b"++++"
        ledger: collections.deque[bytes] = collections.deque()
        while pool.take(ledger):
            pass
        os.write(pool.write_fd, tokens)
        with js.advertise() as adv:
            args = make_args(tmp_path, log, rv.address)
            run(args, env=adv.env, pass_fds=adv.pass_fds)
        back = pool_tokens(pool)
        assert len(back) == 4
        assert set(back) <= {*tokens, ord("+")}
        assert 7 in back  # the one our advertisement held for make
    assert job_count(log) == 8
    assert max_overlap(log) == 4


@pytest.mark.skipif(make_version() < (4, 4), reason="the FIFO form needs Make 4.4")
def test_cli_fifo_form_with_make(tmp_path: Path) -> None:  # pragma: no cover
    log = tmp_path / "log"
    write_makefile(tmp_path, 6, JOB)
    cli = [sys.executable, "-m", "jobserver", "-j", "3", "--fifo", "--"]
    with Rendezvous(tmp_path, 3) as rv:
        run([*cli, *make_args(tmp_path, log, rv.address)], env=python_env())
    assert max_overlap(log) == 3

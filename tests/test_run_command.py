"""``Jobserver.run``: an external command on slots of the pool, with the pool
advertised to it; GNU Make and ninja started that way."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import multislot_tasks
import pytest
from conftest import assert_slots_conserved, free_slots
from jobserver import Blocked, Jobserver
from jobserver._makeflags import parse
from makeutil import (
    HERE,
    gnu_make,
    job_count,
    listed_fds_code,
    max_overlap,
    python_env,
    write_makefile,
)
from rendezvous import Rendezvous

COUNT_TOKENS = (
    "import collections\n"
    "from jobserver import Jobserver\n"
    "js = Jobserver()\n"
    "ledger = collections.deque()\n"
    "while js._resources.pool.take(ledger):\n"
    "    pass\n"
    "print(js._resources.pool.kind, len(ledger), list(ledger).count(b''))\n"
    "while ledger:\n"
    "    js._resources.pool.give(ledger)\n"
)


@pytest.mark.usefixtures("no_leaks")
def test_fd_form_passes_only_the_advertised_descriptors() -> None:
    code = "import os\nprint(os.environ['MAKEFLAGS'])\n" + listed_fds_code()
    with Jobserver(slots=3) as js:
        proc = js.run(
            [sys.executable, "-c", code],
            env=python_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        makeflags, listed = proc.stdout.splitlines()
        auth = parse(makeflags).auth
        assert auth is not None
        advertised = set(map(int, auth.split(",")))
        # stdin, the two capture pipes, and the pool's two descriptors.
        assert set(map(int, listed.split())) == {0, 1, 2} | advertised
        assert_slots_conserved(js, 3)


@pytest.mark.usefixtures("no_leaks")
def test_fifo_form_passes_no_descriptor() -> None:
    code = "import os\nprint(os.environ['MAKEFLAGS'])\n" + listed_fds_code()
    with Jobserver.with_fifo(slots=2) as js:
        proc = js.run(
            [sys.executable, "-c", code],
            form="fifo",
            env=python_env(),
            capture_output=True,
            text=True,
        )
        makeflags, listed = proc.stdout.splitlines()
        assert parse(makeflags).auth == f"fifo:{js._resources.pool.fifo_path}"
        assert set(map(int, listed.split())) == {0, 1, 2}
        assert_slots_conserved(js, 2)


@pytest.mark.parametrize(("consume", "expected"), [(1, "4 1"), (2, "3 1"), (0, "5 1")])
def test_the_command_runs_on_consume_slots(consume: int, expected: str) -> None:
    """A Python client run this way sees one implicit slot (one of those
    held for it) plus what the pool has left."""
    with Jobserver(slots=5) as js, js.hold(1):
        proc = js.run(
            [sys.executable, "-c", COUNT_TOKENS],
            consume=consume,
            env=python_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        kind, total, implicit = proc.stdout.split()
        assert f"{total} {implicit}" == expected
        assert kind == "make-fds"
        assert free_slots(js) == 4


def test_subprocess_semantics() -> None:
    with Jobserver(slots=2) as js:
        done = js.run([sys.executable, "-c", "import sys; sys.exit(3)"])
        assert done.returncode == 3
        with pytest.raises(subprocess.CalledProcessError) as info:
            js.run(["sh", "-c", "echo out; exit 4"], check=True, capture_output=True)
        assert info.value.returncode == 4
        assert info.value.output == b"out\n"
        echoed = js.run(["cat"], input="hi", capture_output=True, text=True)
        assert echoed.stdout == "hi"
        with pytest.raises(ValueError):
            js.run(["true"], capture_output=True, stdout=subprocess.PIPE)
        with pytest.raises(ValueError):
            js.run(["true"], close_fds=False)
        with pytest.raises(ValueError):
            js.run(["true"], consume=3)
        with pytest.raises(FileNotFoundError):
            js.run(["no-such-program-for-jobserver-tests"])
        assert_slots_conserved(js, 2)


def test_slot_timeout_and_command_timeout() -> None:
    with Jobserver(slots=2) as js:
        with js.hold(2), pytest.raises(Blocked):
            js.run(["true"], slot_timeout=0.1)
        with pytest.raises(subprocess.TimeoutExpired):
            js.run(["sleep", "60"], timeout=0.5)
        # Killed and reaped before the slot went back.
        assert_slots_conserved(js, 2)


def test_interrupt_kills_and_reaps_before_the_slot_goes_back(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        with Jobserver(slots=1) as js:
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                js.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"])
            pid = int(pidfile.read_text())
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # already reaped
            assert_slots_conserved(js, 1)
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGUSR1, old)


# --- GNU Make and ninja started with run -------------------------------------------

needs_make = pytest.mark.skipif(gnu_make() is None, reason="needs GNU Make")


def _job(log: Path, rendezvous: str) -> str:
    """A command that is one logged job meeting the others at ``rendezvous``."""
    return (
        f"{sys.executable} -c \"import makeutil; makeutil.log_job('{log}', "
        f"'{rendezvous}')\""
    )


def _recipe(log: Path, rendezvous: str) -> str:
    return f"@{_job(log, rendezvous)}"


@needs_make
def test_make_under_run_stays_inside_the_limit(tmp_path: Path) -> None:
    log = tmp_path / "log"
    rv = Rendezvous(tmp_path, 3)
    write_makefile(tmp_path, 8, _recipe(log, rv.address))
    with rv, Jobserver(slots=3) as js:
        proc = js.run(
            ["make", "-C", str(tmp_path)],
            env=python_env(),
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert_slots_conserved(js, 3)
    assert job_count(log) == 8
    assert max_overlap(log) == 3  # make used the whole pool, and no more


@needs_make
def test_two_commands_in_two_workers_share_the_limit(tmp_path: Path) -> None:
    """Two workers each run make through the same pool (``consume=0``: the
    worker lends its own slot to its make); a Python client recipe joins
    too.  Together they never exceed the pool."""
    log = tmp_path / "log"
    # Each worker's slot runs one recipe of its make; the third slot goes
    # to whichever make asks first: 3 meet.
    rv = Rendezvous(tmp_path, 3)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_makefile(tmp_path / name, 5, _recipe(log, rv.address))
    with rv, Jobserver("fork", slots=3) as js:
        futures = [
            js.submit(
                multislot_tasks.run_make,
                args=(js, str(tmp_path / name), python_env()),
            )
            for name in ("a", "b")
        ]
        for future in futures:
            assert future.result(timeout=120) == 0
        assert_slots_conserved(js, 3)
    assert job_count(log) == 10
    assert max_overlap(log) == 3


def _ninja_version(ninja: str) -> tuple[int, ...] | None:
    out = subprocess.run([ninja, "--version"], capture_output=True, text=True)
    match = re.match(r"(\d+)\.(\d+)", out.stdout)
    return tuple(map(int, match.groups())) if match else None


def _ninjas() -> dict[tuple[int, ...], str]:
    """Every ninja at hand, by version: the test environment's own (the
    pinned PyPI build, next to this interpreter) and the one on PATH."""
    found: dict[tuple[int, ...], str] = {}
    candidates = [shutil.which("ninja", path=os.path.dirname(sys.executable))]
    candidates.append(shutil.which("ninja"))
    for ninja in candidates:
        if ninja is not None:
            version = _ninja_version(ninja)
            if version is not None:
                found.setdefault(version, ninja)
    return found


NINJAS = _ninjas()
JOINING_NINJAS = [v for v in NINJAS if v >= (1, 13)]
OLD_NINJAS = [v for v in NINJAS if v < (1, 13)]


def _label(version: tuple[int, ...]) -> str:
    return "ninja-" + ".".join(map(str, version))


def _write_ninja(directory: Path, log: Path, jobs: int, rendezvous: str) -> None:
    lines = [f"rule job\n  command = {_job(log, rendezvous)}\n"]
    lines += [f"build out{i}: job\n" for i in range(jobs)]
    (directory / "build.ninja").write_text("".join(lines))


def _run_ninja(
    js: Jobserver, ninja: str, directory: Path, *args: str, **kwargs: Any
) -> None:
    """Run ``ninja -C directory *args`` with ``js.run`` and check it built."""
    proc = js.run(
        [ninja, "-C", str(directory), *args],
        env=python_env(),
        capture_output=True,
        text=True,
        **kwargs,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(not JOINING_NINJAS, reason="needs ninja >= 1.13")
@pytest.mark.parametrize("form", ["fifo", "fds"])
@pytest.mark.parametrize("version", JOINING_NINJAS, ids=_label)
def test_ninja_1_13_joins_the_pool_and_fills_it(
    tmp_path: Path, version: tuple[int, ...], form: str
) -> None:
    """ninja >= 1.13 reads the jobserver in MAKEFLAGS and runs one job on
    its implicit slot plus one per token: a pool of 2 runs exactly 2 jobs at
    once.  Upstream ninja reads only the FIFO form; the PyPI build (the
    pinned one here) also reads the descriptor form."""
    log = tmp_path / "log"
    rv = Rendezvous(tmp_path, 2)  # both slots in use before any job ends
    _write_ninja(tmp_path, log, 8, rv.address)
    make = Jobserver.with_fifo if form == "fifo" else Jobserver
    with rv, make(slots=2) as js:
        _run_ninja(js, NINJAS[version], tmp_path, form=form)
        assert_slots_conserved(js, 2)
    assert job_count(log) == 8
    assert max_overlap(log) == 2


@pytest.mark.skipif(not OLD_NINJAS, reason="needs ninja < 1.13")
@pytest.mark.parametrize("version", OLD_NINJAS, ids=_label)
def test_old_ninja_ignores_the_pool(tmp_path: Path, version: tuple[int, ...]) -> None:
    """ninja < 1.13 ignores MAKEFLAGS and runs its own -j (CPUs + 2 by
    default): what docs/machine-wide.md warns about."""
    log = tmp_path / "log"
    rv = Rendezvous(tmp_path, 3)  # 3 jobs at once on 2 CPUs, more on more
    _write_ninja(tmp_path, log, 8, rv.address)
    with rv, Jobserver.with_fifo(slots=2) as js:
        _run_ninja(js, NINJAS[version], tmp_path, form="fifo")
        assert_slots_conserved(js, 2)
    assert job_count(log) == 8
    assert max_overlap(log) > 2  # it does not speak the protocol


@pytest.mark.skipif(not NINJAS, reason="needs ninja")
@pytest.mark.parametrize("version", list(NINJAS), ids=_label)
def test_ninja_inside_the_limit_with_consume_and_j(
    tmp_path: Path, version: tuple[int, ...]
) -> None:
    """For a program that does not speak the protocol: hold k slots and
    tell it -j k.  This works for any ninja: -j 2 caps it at 2 jobs."""
    log = tmp_path / "log"
    rv = Rendezvous(tmp_path, 2)
    _write_ninja(tmp_path, log, 6, rv.address)
    with rv, Jobserver(slots=3) as js:
        _run_ninja(js, NINJAS[version], tmp_path, "-j", "2", consume=2)
        assert_slots_conserved(js, 3)
    assert job_count(log) == 6
    assert max_overlap(log) == 2


def _cargo_workspace(root: Path, log: Path, crates: int, rendezvous: str) -> None:
    """A workspace of ``crates`` crates whose build scripts are logged jobs
    (``makeutil.py job``): cargo runs build scripts as jobs, one token each."""
    argv = [sys.executable, str(HERE / "makeutil.py"), "job", str(log), rendezvous]
    strings = ", ".join(f'r#"{arg}"#' for arg in argv)  # Rust raw strings
    build_rs = (
        "fn main() {\n"
        f"    let argv = [{strings}];\n"
        "    let status = std::process::Command::new(argv[0])\n"
        "        .args(&argv[1..]).status().unwrap();\n"
        '    assert!(status.success(), "the logged job failed");\n'
        "}\n"
    )
    members = []
    for i in range(crates):
        crate = root / f"c{i}"
        (crate / "src").mkdir(parents=True)
        (crate / "Cargo.toml").write_text(
            f'[package]\nname = "c{i}"\nversion = "0.1.0"\nedition = "2021"\n'
        )
        (crate / "src" / "lib.rs").write_text("pub fn f() {}\n")
        (crate / "build.rs").write_text(build_rs)
        members.append(f'"c{i}"')
    (root / "Cargo.toml").write_text(
        f'[workspace]\nmembers = [{", ".join(members)}]\nresolver = "2"\n'
    )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo")
@pytest.mark.parametrize(("slots", "form"), [(1, "fds"), (3, "fds"), (3, "fifo")])
def test_cargo_under_run_follows_the_limit(
    tmp_path: Path, slots: int, form: str
) -> None:
    log = tmp_path / "log"
    # Cargo runs at most its own -j (the CPU count) at once: with 3 slots,
    # 2 meet on a machine of 2 CPUs or more.
    rv = Rendezvous(tmp_path, min(slots, 2))
    _cargo_workspace(tmp_path / "ws", log, 6, rv.address)
    js = Jobserver.with_fifo(slots=slots) if form == "fifo" else Jobserver(slots=slots)
    with rv, js:
        proc = js.run(
            ["cargo", "build", "--offline", "-q"],
            form=form,
            cwd=tmp_path / "ws",
            env=python_env(CARGO_TARGET_DIR=str(tmp_path / "target")),
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert_slots_conserved(js, slots)
    assert job_count(log) == 6
    peak = max_overlap(log)
    assert peak <= slots
    assert slots == 1 or peak >= 2  # it did take tokens from the pool

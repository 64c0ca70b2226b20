"""``python -m jobserver`` and the ``jobserver`` console script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from jobserver._makeflags import parse
from makeutil import drain, python_env

CLI = [sys.executable, "-m", "jobserver"]


def cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=python_env(),
        **kwargs,  # type: ignore[arg-type]
    )


def test_help() -> None:
    proc = cli("--help")
    assert proc.returncode == 0
    assert "-j N" in proc.stdout
    assert "--fifo" in proc.stdout
    assert "COMMAND" in proc.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "jobserver"
    if not script.exists():
        pytest.skip("the jobserver console script is not installed here")
    proc = subprocess.run(
        [str(script), "-j", "2", "--", sys.executable, "-c", "print('hi')"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stdout) == (0, "hi\n")


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("-j", "2"),
        ("-j", "2", "--"),
        ("-j", "0", "--", "true"),
        ("-j", "-3", "--", "true"),
        ("-j", "many", "--", "true"),
        ("--fifo", "--fds", "--", "true"),
        ("--bogus", "--", "true"),
    ],
)
def test_bad_arguments_are_usage_errors(args: tuple[str, ...]) -> None:
    proc = cli(*args)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_exit_status_passes_through() -> None:
    assert cli("-j", "2", "--", "sh", "-c", "exit 7").returncode == 7
    assert cli("-j2", "true").returncode == 0


def test_command_not_found() -> None:
    proc = cli("--", "no-such-command-for-jobserver-tests")
    assert proc.returncode == 127
    assert "command not found" in proc.stderr


def test_makeflags_fd_form() -> None:
    code = "import os; print(os.environ['MAKEFLAGS'])"
    proc = cli("-j", "3", "--", sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    flags = parse(proc.stdout)
    assert flags.jobs == 3
    assert flags.auth is not None
    assert "," in flags.auth


def test_makeflags_fifo_form_and_cleanup() -> None:
    code = "import os; print(os.environ['MAKEFLAGS'])"
    proc = cli("-j", "3", "--fifo", "--", sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    auth = parse(proc.stdout).auth
    assert auth is not None
    assert auth.startswith("fifo:")
    assert not os.path.exists(auth[len("fifo:") :])
    assert not os.path.exists(os.path.dirname(auth[len("fifo:") :]))


@pytest.mark.parametrize("form", ["--fds", "--fifo"])
def test_command_owns_one_slot_and_the_pool_the_rest(form: str) -> None:
    code = (
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
    proc = cli("-j", "4", form, "--", sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [f"make-{form[2:]}", "4", "1"]


def test_only_the_advertised_descriptors_reach_the_command() -> None:
    code = (
        "import os\n"
        "fds = set()\n"
        "for name in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        os.fstat(int(name))\n"
        "    except OSError:\n"
        "        continue\n"
        "    fds.add(int(name))\n"
        "print(os.environ['MAKEFLAGS'])\n"
        "print(' '.join(map(str, sorted(fds))))\n"
    )
    baseline = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**python_env(), "MAKEFLAGS": ""},
        close_fds=False,
    ).stdout.splitlines()[1]
    proc = cli("-j", "2", "--", sys.executable, "-c", code, close_fds=False)
    makeflags, listed = proc.stdout.splitlines()
    auth = parse(makeflags).auth
    assert auth is not None
    advertised = set(map(int, auth.split(",")))
    assert set(map(int, listed.split())) == set(map(int, baseline.split())) | advertised


WAITS_FOR_SIGNAL = """
import os, signal, sys
def handler(signum, frame):
    print("got", signum, flush=True)
    os._exit(40 + signum % 10)
signal.signal(signal.SIGTERM, handler)
signal.signal(signal.SIGINT, handler)
print("ready", flush=True)
while True:
    signal.pause()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_are_forwarded(signum: int) -> None:
    proc = subprocess.Popen(
        [*CLI, "-j", "2", "--", sys.executable, "-c", WAITS_FOR_SIGNAL],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"  # the child's handlers are set
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # pragma: no cover - a failure
            proc.kill()
            proc.wait()
    assert out == f"got {int(signum)}\n", err
    assert proc.returncode == 40 + signum % 10


def test_command_killed_by_a_signal_kills_the_cli_alike() -> None:
    proc = cli("-j", "2", "--", "sh", "-c", "kill -TERM $$")
    assert proc.returncode == -signal.SIGTERM


def test_without_j_it_passes_on_the_jobserver_it_was_given() -> None:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, b"ab")
        code = (
            "import collections\n"
            "from jobserver import Jobserver\n"
            "js = Jobserver()\n"
            "pool = js._resources.pool\n"
            "ledger = collections.deque()\n"
            "while pool.take(ledger):\n"
            "    pass\n"
            "print(pool.kind, len(ledger))\n"
            "while ledger:\n"
            "    pool.give(ledger)\n"
        )
        env = python_env(MAKEFLAGS=f" -j3 --jobserver-auth={read_fd},{write_fd}")
        proc = subprocess.run(
            [*CLI, "--", sys.executable, "-c", code],
            env=env,
            pass_fds=(read_fd, write_fd),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        # The CLI's implicit slot went to COMMAND, with Make's two tokens.
        assert proc.stdout.split() == ["make-fds", "3"]
        proc = subprocess.run(
            [*CLI, "--fifo", "--", "true"],
            env=env,
            pass_fds=(read_fd, write_fd),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1
        assert "not a FIFO" in proc.stderr
        assert sorted(drain(read_fd)) == sorted(b"ab")
    finally:
        os.close(read_fd)
        os.close(write_fd)

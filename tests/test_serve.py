"""``jobserver serve``: a standing FIFO jobserver, and status/limit/stop."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobserver._makeflags import parse
from jobserver._serve import parse_reply, request
from makeutil import gnu_make, job_count, max_overlap, python_env, write_makefile
from rendezvous import Rendezvous

CLI = [sys.executable, "-m", "jobserver"]


class Served:
    """A ``jobserver serve`` running in the foreground of a child process."""

    def __init__(self, tmp_path: Path, jobs: int, *extra: str) -> None:
        self.fifo = str(tmp_path / "jobs")
        self.process = subprocess.Popen(
            [*CLI, "serve", "-j", str(jobs), "--fifo", self.fifo, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env(),
        )
        assert self.process.stdout is not None
        # The line is printed once the FIFO and the socket are ready.
        self.line = self.process.stdout.readline().strip()
        assert self.line.startswith("export MAKEFLAGS="), self.line
        self.makeflags = shlex.split(self.line[len("export MAKEFLAGS=") :])[0]

    def status(self) -> dict[str, str]:
        return parse_reply(request(self.fifo, "status"))

    def wait_status(self, key: str, value: str, timeout: float = 30) -> dict[str, str]:
        """Ask until ``key`` has ``value`` (the server acts on its own time)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status[key] == value or time.monotonic() > deadline:
                return status
            time.sleep(0.01)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        _, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[Served]]:
    started: list[Served] = []

    def start(jobs: int, *extra: str) -> Served:
        server = Served(tmp_path, jobs, *extra)
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        server.kill()


class Client:
    """A Python client of the served pool that holds ``count`` slots until
    told to let go (pipes, not sleeps, in both directions)."""

    def __init__(self, makeflags: str, count: int) -> None:
        self.ready_r, ready_w = os.pipe()
        go_r, self.go_w = os.pipe()
        code = (
            "import sys, multislot_tasks\n"
            "multislot_tasks.hold_and_report(sys.argv[1], int(sys.argv[2]), "
            "int(sys.argv[3]), int(sys.argv[4]))\n"
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                makeflags,
                str(count),
                str(ready_w),
                str(go_r),
            ],
            pass_fds=(ready_w, go_r),
            env=python_env(),
        )
        os.close(ready_w)
        os.close(go_r)
        assert os.read(self.ready_r, 1) == b"r"

    def let_go(self) -> None:
        os.write(self.go_w, b"g")
        assert self.process.wait(timeout=60) == 0
        self.close()

    def close(self) -> None:
        for fd in (self.ready_r, self.go_w):
            try:
                os.close(fd)
            except OSError:
                pass


def test_serve_prints_a_line_and_reports_tokens_in_use(serve: type[Served]) -> None:
    server = serve(4)
    flags = parse(server.makeflags)
    assert flags.auth == f"fifo:{server.fifo}"
    assert flags.jobs == 4
    assert os.stat(server.fifo).st_mode & 0o777 == 0o600
    status = server.status()
    assert (status["limit"], status["tokens"], status["free"], status["in-use"]) == (
        "4",
        "3",  # like make -j4: the top program owns one slot implicitly
        "3",
        "0",
    )
    client = Client(server.makeflags, 2)
    status = server.status()
    assert (status["free"], status["in-use"]) == ("1", "2")
    client.let_go()
    assert server.status()["in-use"] == "0"
    proc = subprocess.run(
        [*CLI, "status"],
        env={**python_env(), "MAKEFLAGS": server.makeflags},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "in-use: 0" in proc.stdout
    os.kill(server.process.pid, signal.SIGTERM)
    code, err = server.finish()
    assert code == 0, err
    assert "lost: 0" in err
    assert not os.path.exists(server.fifo)
    assert not os.path.exists(server.fifo + ".control")


def test_limit_goes_up_at_once_and_down_as_tokens_come_back(
    serve: type[Served],
) -> None:
    server = serve(4)
    client = Client(server.makeflags, 2)
    reply = parse_reply(request(server.fifo, "limit 2"))
    # One free token could go at once; one more must come back first.
    assert (reply["limit"], reply["tokens"], reply["to-remove"]) == ("2", "2", "1")
    client.let_go()
    status = server.wait_status("to-remove", "0")
    assert (status["tokens"], status["free"], status["in-use"]) == ("1", "1", "0")
    proc = subprocess.run(
        [*CLI, "limit", "6", "--fifo", server.fifo],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tokens: 5" in proc.stdout
    assert server.status()["free"] == "5"
    assert request(server.fifo, "limit 0").startswith("error:")
    assert request(server.fifo, "bogus").startswith("error:")


def test_stop_reports_tokens_that_never_came_back(serve: type[Served]) -> None:
    server = serve(3)
    client = Client(server.makeflags, 1)
    client.process.kill()  # died holding a token: a FIFO cannot know
    client.process.wait()
    client.close()
    assert server.status()["in-use"] == "1"
    proc = subprocess.run(
        [*CLI, "stop", "--fifo", server.fifo, "--grace", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "lost: 1" in proc.stdout
    code, err = server.finish()
    assert code == 1
    assert "1 token(s) never came back" in err


def test_sigusr1_prints_the_status(serve: type[Served]) -> None:
    server = serve(2)
    os.kill(server.process.pid, signal.SIGUSR1)
    assert server.process.stderr is not None
    lines = [server.process.stderr.readline()]  # what it serves, then status
    while lines[-1] and not lines[-1].startswith("state:"):
        lines.append(server.process.stderr.readline())
    assert "limit: 2\n" in lines
    os.kill(server.process.pid, signal.SIGINT)
    code, _ = server.finish()
    assert code == 0


def test_a_second_server_on_the_same_path_is_refused(serve: type[Served]) -> None:
    server = serve(2)
    proc = subprocess.run(
        [*CLI, "serve", "-j", "2", "--fifo", server.fifo],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "exists" in proc.stderr
    assert server.status()["state"] == "serving"


def test_control_commands_without_a_server(tmp_path: Path) -> None:
    for args in (("status",), ("limit", "3"), ("stop",)):
        proc = subprocess.run(
            [*CLI, *args, "--fifo", str(tmp_path / "none")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1
        assert "no jobserver serves" in proc.stderr
    proc = subprocess.run(
        [*CLI, "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**python_env(), "MAKEFLAGS": ""},
    )
    assert proc.returncode == 1


def _bash_recipe(log: Path, rendezvous: str) -> str:
    return (
        f'@{sys.executable} -c "import makeutil; '
        f"makeutil.log_job('{log}', '{rendezvous}')\""
    )


@pytest.mark.skipif(gnu_make() is None, reason="needs GNU Make")
def test_make_in_a_shell_that_joined_with_the_fd_line(tmp_path: Path) -> None:
    """GNU Make 4.3 reads only the fd form: ``--print fds`` gives shell code
    that opens the FIFO on two descriptors.  One make run from that shell
    runs at most N recipes, as make -jN would."""
    log = tmp_path / "log"
    rv = Rendezvous(tmp_path, 3)
    write_makefile(tmp_path, 8, _bash_recipe(log, rv.address))
    fifo = tmp_path / "jobs"
    script = (
        f'eval "$({shlex.join(CLI)} serve -j 3 --fifo {fifo} --print fds '
        '--background 2>/dev/null)"\n'
        f"make -C {tmp_path} >/dev/null\n"
        "status=$?\n"
        f"{shlex.join(CLI)} status | grep in-use\n"
        f"{shlex.join(CLI)} stop >/dev/null\n"
        'exit "$status"\n'
    )
    with rv:
        proc = subprocess.run(
            ["sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            env=python_env(),
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "in-use: 0"
    assert job_count(log) == 8
    assert max_overlap(log) == 3
    assert not fifo.exists()

"""machine_wide_server - one standing jobserver for a whole machine.

``jobserver serve -j N`` (here ``python -m jobserver serve``) owns a FIFO of
tokens and prints one line of shell code; a shell that evaluates it exports
``MAKEFLAGS``, and every program started from it that speaks GNU Make's
jobserver protocol shares the limit.  What this example checks:

1. The printed line names the FIFO; ``jobserver status`` shows the tokens
   in use while a client holds two slots.
2. ``jobserver limit`` raises the limit at once and lowers it as tokens come
   back.
3. GNU Make 4.3 reads only the fd form: ``serve --print fds`` gives a line
   that opens the FIFO on two descriptors; a make run from that shell runs
   at most N recipes.  (Skipped without GNU Make.)
4. A client killed while it holds a token cannot give it back, and a FIFO
   cannot take it back: ``jobserver stop`` reports it as lost.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("tour.serve")
CLI = [sys.executable, "-m", "jobserver"]
HOLD = (
    "import sys\n"
    "from jobserver import Jobserver\n"
    "js = Jobserver()\n"
    "with js, js.hold(int(sys.argv[1])):\n"
    "    print('holding', flush=True)\n"
    "    sys.stdin.read(1)\n"
)


def ask(fifo: str, *args: str) -> dict[str, str]:
    out = subprocess.run(
        [*CLI, *args, "--fifo", fifo], capture_output=True, text=True
    ).stdout
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def holder(makeflags: str, count: int) -> subprocess.Popen[str]:
    """A program of a joined shell holding ``count`` slots until its stdin
    gets a byte (it owns one implicitly, the FIFO gives the rest)."""
    client = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(count)],
        env={**os.environ, "MAKEFLAGS": makeflags},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    assert client.stdout.readline() == "holding\n"
    return client


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fifo = os.path.join(tmp, "jobs")
        server = subprocess.Popen(
            [*CLI, "serve", "-j", "4", "--fifo", fifo, "--grace", "0.5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        log.info("the server printed: %s", line)
        makeflags = shlex.split(line.split("=", 1)[1])[0]

        # 1. A client holding three slots: its implicit one plus two tokens.
        client = holder(makeflags, 3)
        status = ask(fifo, "status")
        assert (status["in-use"], status["free"]) == ("2", "1"), status
        log.info("while a client holds 3 slots: %s tokens in use", status["in-use"])

        # 2. Lower the limit to 2 (one token): one free token goes at once,
        #    another when the client gives its tokens back.
        status = ask(fifo, "limit", "2")
        assert status["to-remove"] == "1", status
        client.communicate("x")
        deadline = time.monotonic() + 30
        while ask(fifo, "status")["to-remove"] != "0":
            assert time.monotonic() < deadline, "the limit never came down"
            time.sleep(0.01)
        log.info("limit lowered to 2 once the client's tokens came back")
        status = ask(fifo, "limit", "3")
        assert status["free"] == "2", status

        # 3. GNU Make 4.3 in a shell that joined with the fd form.
        if shutil.which("make"):
            fds_line = shlex.quote(fifo)
            work = Path(tmp)
            names = " ".join(f"r{i}" for i in range(6))
            (work / "Makefile").write_text(
                f"all: {names}\n{names}:\n\t@echo start >> log; sleep 0.2; "
                f"echo end >> log\n.PHONY: all {names}\n"
            )
            script = (
                f"exec 8<{fds_line} 9>{fds_line}\n"
                "export MAKEFLAGS=' -j3 --jobserver-auth=8,9'\n"
                f"make -s -C {shlex.quote(tmp)}\n"
            )
            subprocess.run(["sh", "-c", script], check=True)
            current = most = 0
            for entry in (work / "log").read_text().split():
                current += 1 if entry == "start" else -1
                most = max(most, current)
            assert most <= 3, most
            log.info("make in a joined shell ran at most %d recipes at once", most)
        else:
            log.info("GNU Make is not installed: skipping the make part")

        # 4. A client that dies holding a token.
        victim = holder(makeflags, 2)
        victim.kill()
        victim.communicate()
        stop = subprocess.run(
            [*CLI, "stop", "--fifo", fifo, "--grace", "0.3"],
            capture_output=True,
            text=True,
        )
        _, err = server.communicate(timeout=60)
        assert stop.returncode == 1 and "lost: 1" in stop.stdout, stop.stdout
        assert "never came back" in err, err
        log.info("stop reported the token of the killed client as lost")
        assert not os.path.exists(fifo)
    log.info("all standing-server checks passed")
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    sys.exit(main())

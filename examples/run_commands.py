"""run_commands - external programs inside the limit with ``Jobserver.run``.

``js.run(args, ...)`` is ``subprocess.run`` on a slot of the pool, with the
pool advertised to the program in ``MAKEFLAGS``: a ``make``, ``ninja``
(>= 1.13) or Python program using ``Jobserver()`` that it starts joins the
limit.  What this example checks:

1. GNU Make run this way (without ``-j``: it learns the limit from
   ``MAKEFLAGS``) runs at most three recipes at once on a pool of three.
2. A Python program run this way runs its workers on the same pool.
3. ninja: version 1.13 and later join the jobserver; older ones ignore
   ``MAKEFLAGS`` and run CPUs + 2 jobs.  For those (and any program that
   does not speak the protocol) hold ``k`` slots and pass ``-j k``:
   ``js.run(["ninja", "-j", "2"], consume=2)``.

Each job logs a start and an end line; the peak is how many ran at once.
Programs that are not installed are skipped with a message.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from jobserver import Jobserver

log = logging.getLogger("tour.run")
JOB = (
    "import os, sys, time\n"
    "def line(text):\n"
    "    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)\n"
    "    os.write(fd, (text + chr(10)).encode())\n"
    "    os.close(fd)\n"
    "line('start'); time.sleep(0.2); line('end')\n"
)


def peak(path: Path) -> tuple[int, int]:
    """The most jobs running at once, and how many ran."""
    current = best = done = 0
    for line in path.read_text().splitlines():
        current += 1 if line == "start" else -1
        done += line == "end"
        best = max(best, current)
    return best, done


def main() -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "job.py").write_text(JOB)
        job = f"{sys.executable} {work / 'job.py'}"

        with Jobserver(slots=3) as js:
            # 1. GNU Make.
            if shutil.which("make"):
                names = " ".join(f"r{i}" for i in range(8))
                (work / "Makefile").write_text(
                    f"all: {names}\n{names}:\n\t@{job} {work / 'make.log'}\n"
                    f".PHONY: all {names}\n"
                )
                js.run(["make", "-C", str(work)], env=env, check=True)
                most, done = peak(work / "make.log")
                assert (most, done) == (3, 8), (most, done)
                log.info("make ran %d recipes, at most %d at once", done, most)
            else:
                log.info("GNU Make is not installed: skipping the make part")

            # 2. A Python program that uses Jobserver() itself.
            program = (
                "import subprocess, sys\n"
                "from jobserver import Jobserver\n"
                "with Jobserver() as js:\n"
                "    for _ in range(6):\n"
                "        js.submit(subprocess.run, args=(sys.argv[1:],))\n"
            )
            script = work / "client.py"
            script.write_text(program)
            js.run(
                [sys.executable, str(script), *job.split(), str(work / "py.log")],
                env=env,
                check=True,
            )
            most, done = peak(work / "py.log")
            assert done == 6 and most <= 3, (most, done)
            log.info("a Python client ran %d jobs, at most %d at once", done, most)

            # 3. ninja.
            # The one installed with this Python (pip install ninja) first.
            here = os.path.dirname(sys.executable)
            ninja = shutil.which("ninja", path=here) or shutil.which("ninja")
            if ninja is None:
                log.info("ninja is not installed: skipping the ninja part")
                return 0
            out = subprocess.run([ninja, "--version"], capture_output=True, text=True)
            match = re.match(r"(\d+)\.(\d+)", out.stdout)
            version = tuple(map(int, match.groups())) if match else (0, 0)
            rules = f"rule job\n  command = {job} {work / 'ninja.log'}\n"
            builds = "".join(f"build n{i}: job\n" for i in range(6))
            (work / "build.ninja").write_text(rules + builds)
            if version >= (1, 13):
                with Jobserver.with_fifo(slots=2) as fifo_js:
                    fifo_js.run(
                        [ninja, "-C", str(work)],
                        form="fifo",
                        env=env,
                        check=True,
                        stdout=subprocess.DEVNULL,
                    )
                log.info("ninja %s joined the jobserver", out.stdout.strip())
            else:
                log.info(
                    "ninja %s does not speak the jobserver protocol: holding 2 "
                    "slots and running it with -j 2",
                    out.stdout.strip(),
                )
                js.run(
                    [ninja, "-C", str(work), "-j", "2"],
                    consume=2,
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
            most, done = peak(work / "ninja.log")
            assert done == 6 and most <= 2, (most, done)
            log.info("ninja ran %d jobs, at most %d at once", done, most)
    log.info("all run checks passed")
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    sys.exit(main())

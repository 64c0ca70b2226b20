"""pytest_under_jobserver - pytest-xdist inside a jobserver's limit.

jobserver-extras installs a pytest plugin (entry point ``jobserver``) that
is inactive unless a jobserver is advertised in ``MAKEFLAGS`` (or
``--jobserver`` asks for it).  Then every test holds one token while it
runs, so ``pytest -n 4`` under a limit of two runs two tests at a time,
whatever else shares the limit -- a recipe of ``make -j2``, a shell joined
to ``jobserver serve -j 2``, or here ``python -m jobserver -j 2 --``.

What this example checks: eight tests that each log a start and an end
line; under ``python -m jobserver -j 2 -- pytest -n 4`` no more than two are
ever between their start and end.  Without pytest-xdist it says so and
exits 0.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("tour.pytest")
TESTS = """
import os, time
import pytest

@pytest.mark.parametrize("i", range(8))
def test_job(i):
    for what in ("start", "end"):
        fd = os.open(os.environ["EXAMPLE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (what + "\\n").encode())
        os.close(fd)
        if what == "start":
            time.sleep(0.3)
"""


def main() -> int:
    if importlib.util.find_spec("xdist") is None:
        log.info("pytest-xdist is not installed: nothing to show")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "pytest.ini").write_text("[pytest]\n")
        (work / "test_jobs.py").write_text(TESTS)
        env = {k: v for k, v in os.environ.items() if k != "MAKEFLAGS"}
        env["EXAMPLE_LOG"] = str(work / "log")
        command = [
            *(sys.executable, "-m", "jobserver", "-j", "2", "--"),
            *(
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-n",
                "4",
                "-p",
                "no:cacheprovider",
            ),
            *("-c", str(work / "pytest.ini"), "--rootdir", tmp, str(work)),
        ]
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        current = most = done = 0
        for line in (work / "log").read_text().split():
            current += 1 if line == "start" else -1
            done += line == "end"
            most = max(most, current)
        assert done == 8 and most <= 2, (done, most)
        log.info(
            "pytest -n 4 under a limit of 2: %d tests, at most %d at once", done, most
        )
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    sys.exit(main())

"""make - GNU Make and this library sharing one set of job slots.

Runs ``make -j3`` on ``examples/make/Makefile``: four recipes, each a Python
program (this file, called back with ``part``) that runs five short jobs
through ``Jobserver()``.  With no ``slots`` argument a ``Jobserver`` joins
the jobserver Make advertises in ``MAKEFLAGS``, so all the workers of all
the recipes share Make's three slots:

* Make runs three recipes at once (its own implicit slot plus two tokens);
* each recipe, like any job Make starts, owns one implicit slot and uses it
  for its first worker; more workers need tokens from Make's pipe, which
  the three running recipes hold already;
* so at most three workers run at any moment, across all recipes.

Then the same Makefile runs under ``python -m jobserver -j 2 -- make``: the
CLI is the top of the tree now, and the limit is two.  (``make`` runs
without ``-j`` there: an explicit ``-j`` makes Make start a jobserver of its
own.)

Each job logs a start and an end line to a shared log; the script prints the
largest number of jobs that ran at once and exits 0.  Without GNU Make it
says so and exits 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def job(log: str, part: str, number: int) -> None:
    """One short job: log start, pretend to work, log end."""
    append(log, f"start {part}{number}")
    time.sleep(0.1)
    append(log, f"end {part}{number}")


def append(log: str, line: str) -> None:
    # One O_APPEND write per line: the log's order is the kernel's order.
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def part(name: str, log: str) -> None:
    """A recipe: five jobs under whatever slots Make lends this program."""
    from jobserver import Jobserver

    sys.path.insert(0, str(HERE))
    import make_jobserver  # jobs by module name, for every start method

    with Jobserver() as js:
        for number in range(5):
            js.submit(make_jobserver.job, args=(log, name, number))


def most_at_once(log: Path) -> int:
    running = most = 0
    for line in log.read_text().splitlines():
        running += 1 if line.startswith("start") else -1
        most = max(most, running)
    return most


def run_make(command: list[str], log: Path) -> int:
    """Run ``command`` (which runs make on examples/make); return the most
    jobs that ran at once."""
    command = [
        *command,
        "--no-print-directory",
        "-C",
        str(HERE / "make"),
        f"PYTHON={sys.executable}",
        f"TOOL={Path(__file__).resolve()}",
        f"LOG={log}",
    ]
    env = dict(os.environ)
    env.pop("MAKEFLAGS", None)  # a tree of our own, even when run from make
    subprocess.run(command, check=True, env=env)
    return most_at_once(log)


def main() -> int:
    make = shutil.which("make")
    if make is None:
        print("GNU Make is not installed here; nothing to show.")
        return 0
    cli = [sys.executable, "-m", "jobserver"]
    with tempfile.TemporaryDirectory() as tmp:
        for label, command, limit in [
            ("make -j3", [make, "-j3"], 3),
            ("python -m jobserver -j 2 -- make", [*cli, "-j", "2", "--", make], 2),
        ]:
            log = Path(tmp) / f"{limit}.log"
            most = run_make(command, log)
            print(f"{label}: 20 jobs in 4 recipes, at most {most} at once")
            if most > limit:
                print(f"  ... which is more than {limit}: a bug!")
                return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "part":
        part(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())

"""Helpers for the GNU Make protocol tests (importable by workers and scripts).

Jobs log ``start``/``end`` lines with one ``O_APPEND`` write each, so the
log's order is the order in which the kernel saw them and the largest
number of jobs between a start and its end is an exact lower bound of how
many held slots at once (a job's lines fall inside its worker's life, which
falls inside its slot's).

Between the two lines a job meets the others at a rendezvous
(``rendezvous.py``): the first N to start are all between their lines
before any may end, so a log that should show N at once does so by
construction, not by timing.  The "at most N" half stays a real check:
every job then holds on for ``LINGER`` seconds, the window in which an
(N+1)th job, were one let in, would log its start while N are running.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rendezvous import meet

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def gnu_make() -> str | None:
    """The path of GNU Make, if it is installed."""
    path = shutil.which("make")
    if path is None:
        return None
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return path if out.startswith("GNU Make") else None


def make_version() -> tuple[int, int]:
    path = gnu_make()
    if path is None:
        return (0, 0)
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    match = re.match(r"GNU Make (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def log_line(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{text}\n".encode())
    finally:
        os.close(fd)


#: How long a job holds on after the rendezvous.  Not synchronisation (the
#: tests pass whatever it is): the window in which a job too many would be
#: seen running alongside the others.
LINGER = 0.1


def log_job(path: str, rendezvous: str | None = None) -> int:
    """A job: log start, meet the others at ``rendezvous`` (the address of
    a ``rendezvous.Rendezvous``) and hold on ``LINGER`` seconds, log end.
    Without a rendezvous, just the two lines."""
    log_line(path, f"start {os.getpid()}")
    if rendezvous is not None:
        meet(rendezvous)
        time.sleep(LINGER)
    log_line(path, f"end {os.getpid()}")
    return os.getpid()


def max_overlap(path: str | Path) -> int:
    """The most jobs between their start and end lines at once."""
    current = best = 0
    with open(path) as f:
        for line in f:
            if line.startswith("start"):
                current += 1
                best = max(best, current)
            elif line.startswith("end"):
                current -= 1
    return best


def job_count(path: str | Path) -> int:
    with open(path) as f:
        return sum(1 for line in f if line.startswith("end"))


def probe_tokens(js: object) -> list[bytes]:
    """In a worker: every token the handle's pool lets this process take."""
    pool = js._resources.pool  # type: ignore[attr-defined]
    ledger: collections.deque[bytes] = collections.deque()
    while pool.take(ledger):
        pass
    tokens = list(ledger)
    while ledger:
        pool.give(ledger)
    return tokens


def probe_fresh() -> tuple[str, list[bytes]]:
    """In a worker: what a brand-new ``Jobserver()`` here may take."""
    import warnings

    from jobserver import Jobserver

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        js = Jobserver()
    with js:
        return js._resources.pool.kind, probe_tokens(js)


def drain(read_fd: int) -> bytes:
    """Every byte a (non-blocking or blocking) pipe holds right now."""
    was_blocking = os.get_blocking(read_fd)
    os.set_blocking(read_fd, False)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(read_fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.set_blocking(read_fd, was_blocking)
    return b"".join(chunks)


def pool_tokens(pool: object) -> bytes:
    """Take every token a pool holds, then give them all back; return them."""
    ledger: collections.deque[bytes] = collections.deque()
    while pool.take(ledger):  # type: ignore[attr-defined]
        pass
    tokens = b"".join(ledger)
    while ledger:
        pool.give(ledger)  # type: ignore[attr-defined]
    return tokens


def python_env(**extra: str) -> dict[str, str]:
    """os.environ plus this directory on PYTHONPATH, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), env.get("PYTHONPATH", "")) if p
    )
    env.pop("MAKEFLAGS", None)
    env.pop("MFLAGS", None)
    env.update(extra)
    return env


def run_python(
    code: str,
    *,
    env: dict[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env if env is not None else python_env(),
        pass_fds=pass_fds,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_makefile(directory: Path, recipes: int, command: str) -> Path:
    """A Makefile whose ``all`` runs ``recipes`` recipes ``command`` (``$@``
    is the recipe's name)."""
    names = " ".join(f"r{i}" for i in range(recipes))
    text = f"all: {names}\n{names}:\n\t{command}\n.PHONY: all {names}\n"
    path = directory / "Makefile"
    path.write_text(text)
    return path


def listed_fds_code() -> str:
    """Python source that prints the descriptors open in the running process."""
    return (
        "import os\n"
        "names = os.listdir('/proc/self/fd')\n"
        "fds = []\n"
        "for n in names:\n"
        "    try:\n"
        "        os.fstat(int(n))\n"
        "    except OSError:\n"
        "        continue\n"
        "    fds.append(int(n))\n"
        "print(' '.join(map(str, sorted(fds))))\n"
    )


if __name__ == "__main__":  # pragma: no cover - used as a recipe by make
    # python makeutil.py job LOG RENDEZVOUS: a recipe that is one logged job.
    # python makeutil.py recipe LOG COUNT RENDEZVOUS: a recipe that joins
    # Make's jobserver with Jobserver() and runs COUNT logged jobs.
    import warnings

    warnings.simplefilter("error", RuntimeWarning)
    sys.path.insert(0, str(HERE))
    import makeutil  # by name, so that any start method finds the job

    if sys.argv[1] == "job":
        _, _, log, rendezvous = sys.argv
        makeutil.log_job(log, rendezvous)
        sys.exit(0)

    from jobserver import Jobserver

    _, what, log, count, rendezvous = sys.argv
    assert what == "recipe"
    with Jobserver() as js:
        kind = js._resources.pool.kind
        if not kind.startswith("make-"):
            print(f"recipe did not join Make's jobserver: {kind}", file=sys.stderr)
            sys.exit(3)
        futures = [
            js.submit(makeutil.log_job, args=(log, rendezvous))
            for _ in range(int(count))
        ]
        for future in futures:
            future.result()  # a job that gave up fails the recipe

"""A rendezvous for jobs that run in separate processes (recipes, workers,
tests under xdist), so that "the pool was fully used" is a derivation
rather than a hope about timing.

The test makes a ``Rendezvous(tmp_path, parties)``: a directory holding a
FIFO, an arrivals file and the parties count.  Every job calls
``meet(address)`` (``address`` is the directory's path, a plain string that
fits in argv, an environment variable or a Makefile).  The first
``parties - 1`` jobs to arrive wait on the FIFO; the ``parties``-th writes
one release byte for each of them and goes on; later arrivals go on at
once.  So the first ``parties`` jobs to start are all running at one moment
before any of them may end -- if the system lets that many run at once.

No server, thread or extra process: arrivals are counted under an ``flock``
on the arrivals file, and the release is bytes in a FIFO that every waiter
holds open (``O_RDWR`` on Linux: it never blocks and never sees EOF).

A job never waits forever: after ``deadline`` seconds it raises
``TimeoutError`` naming how many jobs arrived, so its command fails; the
test's ``with Rendezvous(...)`` then fails with the same count.  The
deadline (60 s) is far more than starting a few processes takes on a loaded
machine, and less than the smallest timeout of the commands the tests run
the jobs in (120 s), so a missing party shows up as that message and not as
a killed command.
"""

from __future__ import annotations

import fcntl
import os
import select
import types
from pathlib import Path

#: How long a job waits for the other parties before it gives up.
DEADLINE = 60.0

_CONFIG = "parties"
_ARRIVALS = "arrivals"
_RELEASE = "release"


class Rendezvous:
    """The test's side: make the rendezvous; afterwards, say how many came."""

    def __init__(
        self, directory: Path, parties: int, *, deadline: float = DEADLINE
    ) -> None:
        if parties < 1:
            raise ValueError(f"parties must be at least 1, not {parties}")
        self.parties = parties
        self.path = directory / "rendezvous"
        index = 0
        while self.path.exists():
            index += 1
            self.path = directory / f"rendezvous{index}"
        self.path.mkdir()
        os.mkfifo(self.path / _RELEASE, 0o600)
        (self.path / _ARRIVALS).write_bytes(b"")
        (self.path / _CONFIG).write_text(f"{parties} {deadline!r}\n")

    @property
    def address(self) -> str:
        """What the jobs are given: ``meet(address)``."""
        return str(self.path)

    def arrived(self) -> int:
        """How many jobs have arrived so far."""
        return arrived(self.address)

    def message(self) -> str:
        return (
            f"only {self.arrived()} of {self.parties} jobs arrived at the "
            f"rendezvous: {self.parties} never ran at once"
        )

    def check(self) -> None:
        """Fail unless ``parties`` jobs met (all running at once)."""
        assert self.arrived() >= self.parties, self.message()

    def __enter__(self) -> Rendezvous:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        if value is not None and self.arrived() < self.parties:
            # Whatever failed (a job's TimeoutError made the command fail),
            # the count is the clearest account of it.
            raise AssertionError(self.message()) from value
        if value is None:
            self.check()


def arrived(address: str) -> int:
    return os.stat(os.path.join(address, _ARRIVALS)).st_size


def _config(address: str) -> tuple[int, float]:
    with open(os.path.join(address, _CONFIG)) as f:
        parties, deadline = f.read().split()
    return int(parties), float(deadline)


def _arrive(address: str) -> int:
    """Count this job in; its number (1 for the first to arrive)."""
    fd = os.open(os.path.join(address, _ARRIVALS), os.O_WRONLY | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b".")
        return os.fstat(fd).st_size
    finally:
        os.close(fd)  # drops the lock


def meet(address: str) -> int:
    """The job's side: return once ``parties`` jobs have arrived (at once
    for later arrivals); the number this job arrived as."""
    parties, deadline = _config(address)
    # Open the FIFO before arriving: the release bytes go to waiters that
    # already hold it open.
    release = os.open(os.path.join(address, _RELEASE), os.O_RDWR)
    try:
        number = _arrive(address)
        if number == parties:
            os.write(release, b"r" * (parties - 1))
        elif number < parties:
            # select retries on EINTR with the remaining timeout.
            if not select.select([release], [], [], deadline)[0]:
                raise TimeoutError(
                    f"rendezvous {address}: only {arrived(address)} of {parties} "
                    f"jobs arrived within {deadline:g} s"
                )
            # One byte was written per waiter, all in one write: each
            # waiter's read finds one, whichever woke first.
            os.read(release, 1)
        return number
    finally:
        os.close(release)

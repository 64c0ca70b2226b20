"""jobserver_extras.ResourceLimits - setrlimit for every worker.

``js.replace_preexec(ResourceLimits(...))`` applies resource limits in each
worker just before its task, leaving the launching process untouched.
Because every task gets a fresh process, a limit can never leak from one
task into the next.  What this example checks:

1. ``address_space``: an allocation beyond the limit raises ``MemoryError``
   in the task, which ``result()`` re-raises; smaller ones still work.
2. ``cpu_seconds``: a task that spins past its CPU budget is killed by the
   kernel (``SIGXCPU``) and its Future reports ``LostResult``; other work
   carries on.
3. ``open_files``: opening descriptors past the limit fails with ``EMFILE``.
4. Limits the worker could not set are refused here, when the piece is
   built, not later in the worker.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import time
from typing import Any

from jobserver import Jobserver, LostResult
from jobserver_extras import ResourceLimits

log = logging.getLogger("extras.rlimits")

MIB = 1024**2


def allocate(nbytes: int) -> int:
    return len(bytearray(nbytes))


def spin(cpu_seconds: float) -> float:
    start = time.process_time()
    while time.process_time() - start < cpu_seconds:
        pass
    return time.process_time() - start


def open_many(count: int) -> int:
    fds = []
    try:
        for _ in range(count):
            fds.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        return exc.errno or 0
    finally:
        for fd in fds:
            os.close(fd)
    return 0


def virtual_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def main() -> None:
    import resource

    own_limits = [
        resource.getrlimit(r) for r in (resource.RLIMIT_CPU, resource.RLIMIT_NOFILE)
    ]
    with Jobserver(slots=2) as js:
        # 1. Address space (Linux enforces RLIMIT_AS).
        if sys.platform.startswith("linux"):
            limit = virtual_size() + 256 * MIB  # room for what a worker maps
            capped = js.replace_preexec(ResourceLimits(address_space=limit))
            assert capped.submit(allocate, args=(64 * MIB,)).result() == 64 * MIB
            try:
                capped.submit(allocate, args=(limit,)).result()
            except MemoryError:
                log.info("allocating %d MiB under the limit: MemoryError", limit // MIB)
            else:
                raise AssertionError("the address-space limit did not hold")

        # 2. CPU time: one second, then SIGXCPU.
        budget = js.replace_preexec(ResourceLimits(cpu_seconds=1))
        runaway = budget.submit(spin, args=(30.0,))
        fine = budget.submit(spin, args=(0.1,))
        try:
            runaway.result()
        except LostResult as exc:
            assert exc.returncode in (-signal.SIGXCPU, -signal.SIGKILL), exc
            log.info("the runaway task was stopped: %s", exc)
        else:
            raise AssertionError("the CPU limit did not hold")
        assert fine.result() >= 0.1
        log.info("the task within its budget finished normally")

        # 3. Open files.
        few = js.replace_preexec(ResourceLimits(open_files=32))
        assert few.submit(open_many, args=(100,)).result() == errno.EMFILE
        log.info("opening 100 files with open_files=32: EMFILE")

    # 4. Checked when built: soft above hard, or nonsense values.
    bad_limits: list[dict[str, Any]] = [{"open_files": (64, 32)}, {"cpu_seconds": 0}]
    for bad in bad_limits:
        try:
            ResourceLimits(**bad)
        except ValueError as exc:
            log.info("refused at once: %s", exc)
        else:
            raise AssertionError(f"{bad} was accepted")
    assert own_limits == [
        resource.getrlimit(r) for r in (resource.RLIMIT_CPU, resource.RLIMIT_NOFILE)
    ], "the launching process's own limits changed"
    log.info("this process's own limits were never touched")
    log.info("all resource-limit checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    if sys.platform == "win32":
        log.warning("resource limits need a POSIX system; skipping")
    else:
        main()

"""jobserver_extras.RamGate - hold launches while memory is short.

``js.replace_sleep(RamGate(threshold))`` gives a handle whose launches wait
while ``MemAvailable`` is below ``threshold``: an ``int`` number of bytes or
a ``float`` fraction of ``MemTotal``.  While it waits the gate re-reads the
figures every ``interval`` seconds (and sooner when earlier work finishes),
holding no slot.  What this example checks:

1. The real ``/proc/meminfo`` (Linux): a modest threshold lets work through.
2. A gate fed from a file in the same format (as a test or a cgroup-aware
   wrapper might provide): below the threshold a bounded ``submit`` ends in
   ``Blocked``; once the figures recover, the held launch proceeds.
3. The gate travels with the handle: a worker given the gated handle is
   gated the same way for its own launches.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time

from jobserver import Blocked, Jobserver
from jobserver_extras import RamGate

log = logging.getLogger("extras.ram_gate")

GIB = 1024**3


def write_meminfo(path: str, total: int, available: int) -> None:
    """Replace ``path`` atomically with meminfo-style figures (in kB)."""
    with open(path + ".new", "w") as f:
        f.write(f"MemTotal: {total // 1024} kB\nMemAvailable: {available // 1024} kB\n")
    os.replace(path + ".new", path)


def launch_through(js: Jobserver) -> str:
    """In a worker: launch through the handle it was given, without waiting."""
    try:
        js.submit(os.getpid, consume=0, timeout=0.2).result()
    except Blocked:
        return "blocked"
    return "launched"


def main() -> None:
    with Jobserver(slots=2) as js:
        # 1. The real figures.
        if sys.platform.startswith("linux"):
            real = RamGate(64 * 1024**2)  # 64 MiB available is enough here
            info = real.read()
            log.info(
                "MemAvailable %.1f GiB of %.1f GiB",
                info.available / GIB,
                info.total / GIB,
            )
            assert js.replace_sleep(real).submit(os.getpid).result() > 0
        else:
            log.info("no /proc/meminfo on %s; using a file only", sys.platform)

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "meminfo")
            write_meminfo(path, 16 * GIB, 2 * GIB)
            gate = RamGate(0.25, interval=0.05, meminfo=path)  # wants 4 GiB
            gated = js.replace_sleep(gate)

            # 2a. Short of memory: a bounded submit gives up.
            start = time.monotonic()
            try:
                gated.submit(os.getpid, timeout=0.3)
            except Blocked:
                waited = time.monotonic() - start
                log.info("2 GiB available, 4 GiB wanted: Blocked after %.2f s", waited)
            else:
                raise AssertionError("launched while memory was short")

            # 3. ... also for launches made by a worker through the handle.
            assert js.submit(launch_through, args=(gated,)).result() == "blocked"
            log.info("a worker holding the gated handle was gated too")

            # 2b. Memory recovers while a launch is held: it proceeds.
            asked = []

            def recovering() -> float | None:
                answer = gate()
                asked.append(answer)
                if len(asked) == 3:
                    write_meminfo(path, 16 * GIB, 8 * GIB)  # something freed RAM
                return answer

            assert js.replace_sleep(recovering).submit(os.getpid).result() > 0
            assert asked == [0.05, 0.05, 0.05, None], asked
            log.info(
                "held for %d checks, launched once 8 GiB were free", len(asked) - 1
            )
            assert js.submit(launch_through, args=(gated,)).result() == "launched"
    log.info("all RAM gate checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

"""Release-to-pickup latency between two processes sharing a jobserver pool.

    .venv/bin/python scripts/pickup_latency.py [--repeats 21] [--form fifo|fds]

One process (this one) holds the pool's only token; a second process (this
script again, as ``--client``) waits for it in ``Jobserver.hold(1)``, which
waits for the pool to become readable (``poll``).  Per repeat: the client
says it is about to wait, this process gives it a moment to block, reads
``CLOCK_MONOTONIC`` (system-wide on Linux) and gives the token back; the
client reads the clock as soon as it holds the token and reports it.  The
difference is the time from a release in one process to the pick-up in
another.  Prints the median, minimum and maximum in milliseconds.

The figure quoted in docs/machine-wide.md comes from this script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def client(makeflags: str, ready_fd: int, report_fd: int, go_fd: int) -> None:
    from jobserver import Jobserver

    js = Jobserver.join(makeflags, implicit=False)
    assert js is not None, "no jobserver in the given MAKEFLAGS"
    with js:
        while os.read(go_fd, 1) == b"n":
            os.write(ready_fd, b"w")
            with js.hold(1):
                picked = time.monotonic()
                os.write(report_fd, f"{picked!r}\n".encode())


def measure(form: str, repeats: int, settle: float) -> list[float]:
    from jobserver import Jobserver

    js = Jobserver.with_fifo(slots=1) if form == "fifo" else Jobserver(slots=1)
    latencies: list[float] = []
    with js, js.advertise(form, consume=0) as adv:
        ready_r, ready_w = os.pipe()
        report_r, report_w = os.pipe()
        go_r, go_w = os.pipe()
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client",
                adv.makeflags,
                str(ready_w),
                str(report_w),
                str(go_r),
            ],
            pass_fds=(ready_w, report_w, go_r, *adv.pass_fds),
            env={**os.environ, "MAKEFLAGS": adv.makeflags},
        )
        for fd in (ready_w, report_w, go_r):
            os.close(fd)
        report = os.fdopen(report_r)
        try:
            for _ in range(repeats):
                hold = js.hold(1).acquire()
                os.write(go_w, b"n")
                assert os.read(ready_r, 1) == b"w"
                time.sleep(settle)  # let the client block in its wait
                released = time.monotonic()
                hold.release()
                picked = float(report.readline())
                latencies.append(picked - released)
            os.write(go_w, b"q")
        finally:
            os.close(go_w)
            child.wait()
            report.close()
            os.close(ready_r)
    return latencies


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        makeflags, ready_fd, report_fd, go_fd = sys.argv[2:6]
        client(makeflags, int(ready_fd), int(report_fd), int(go_fd))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--form", choices=("fifo", "fds", "both"), default="both")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.05,
        help="seconds the waiting client gets to block before each release",
    )
    args = parser.parse_args()
    forms = ("fifo", "fds") if args.form == "both" else (args.form,)
    for form in forms:
        latencies = [s * 1000 for s in measure(form, args.repeats, args.settle)]
        print(
            f"{form}: release-to-pickup latency over {len(latencies)} repeats: "
            f"median {statistics.median(latencies):.3f} ms, "
            f"min {min(latencies):.3f} ms, max {max(latencies):.3f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

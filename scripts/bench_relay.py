"""Would a forked relay lift fork throughput?  A design probe, not a feature.

The idea: for ``map`` under fork, fork one intermediate process (a copy of
the caller at the time of the call) that forks every task and relays the
results down one pipe, so that the caller itself never forks and takes no
copy-on-write faults per task.  This script measures that topology against
the raw fork loop and ``Jobserver.submit``, with the parts a real version
could not leave out added one at a time: taking and giving back a token
from a slot pipe around each task, and deferring signals (block, then
restore the mask) around the fork and around the reap, as the core does.

Every figure comes from a fresh interpreter (with jobserver, logging,
multiprocessing and concurrent.futures imported, as a program using the
library would have), the variants taking turns, and the ratios to the raw
loop are medians over the rounds.  docs/performance.md has the results.

    python scripts/bench_relay.py [--rounds 7] [--tasks 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import select
import signal
import statistics
import struct
import subprocess
import sys
import time
from _signal import pthread_sigmask  # the C function, as the core calls it
from typing import Callable

from bench import SLOTS, _raw_fork_loop, noop  # the benchmark's own raw loop

#: Every signal a process can block, as plain ints: the core's DeferSignals
#: blocks them so (through ``_signal``, which returns ints; ``signal``'s
#: wrapper makes an enum member of each, about 70 us for a full mask).
ALL_SIGNALS = frozenset(
    int(s) for s in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
)
HEADER = struct.Struct("<iii")  # input index, worker pid, payload length


def fork_tasks(
    tasks: int,
    relay_fd: int | None,
    token_fds: tuple[int, int] | None,
    defer: bool,
) -> None:
    """The pipe loop (a result pipe per task, epoll, read to end-of-file,
    reap), optionally with a token per task and signals deferred, relaying
    each result to ``relay_fd`` if given."""
    epoll = select.epoll()
    live: dict[int, list] = {}
    launched = done = 0
    mask = None
    while done < tasks:
        while launched < tasks and len(live) < SLOTS:
            if defer:
                mask = pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
            if token_fds is not None:
                os.read(token_fds[0], 1)
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                os.write(write_fd, pickle.dumps((0, noop())))
                os._exit(0)
            os.close(write_fd)
            epoll.register(read_fd, select.EPOLLIN)
            live[read_fd] = [pid, b"", launched]
            launched += 1
            if defer:
                pthread_sigmask(signal.SIG_SETMASK, mask)
        for fd, _ in epoll.poll():
            entry = live[fd]
            chunk = os.read(fd, 65536)
            if chunk:
                entry[1] += chunk
                continue
            if defer:
                mask = pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
            epoll.unregister(fd)
            os.close(fd)
            os.waitpid(entry[0], 0)
            del live[fd]
            done += 1
            if token_fds is not None:
                os.write(token_fds[1], b"+")
            if defer:
                pthread_sigmask(signal.SIG_SETMASK, mask)
            if relay_fd is not None:
                os.write(
                    relay_fd, HEADER.pack(entry[2], entry[0], len(entry[1])) + entry[1]
                )


class Result:
    """What the caller keeps per task: a stand-in for a Future."""

    __slots__ = ("index", "pid", "value")

    def __init__(self, index: int, pid: int, value: object) -> None:
        self.index, self.pid, self.value = index, pid, value


def relay(tasks: int, slots: bool = False, defer: bool = False) -> float:
    """The caller forks one intermediate, which runs ``fork_tasks`` and
    relays; the caller only reads and unpickles."""
    token_fds = None
    if slots:
        token_fds = os.pipe()
        os.write(token_fds[1], b"+" * SLOTS)
    start = time.perf_counter()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            fork_tasks(tasks, write_fd, token_fds, defer)
        finally:
            os._exit(0)
    os.close(write_fd)
    results: list[Result | None] = [None] * tasks
    buffer = b""
    got = 0
    while got < tasks:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            raise RuntimeError("the intermediate died")
        buffer += chunk
        while len(buffer) >= HEADER.size:
            index, worker, size = HEADER.unpack_from(buffer)
            end = HEADER.size + size
            if len(buffer) < end:
                break
            results[index] = Result(
                index, worker, pickle.loads(buffer[HEADER.size : end])[1]
            )
            buffer = buffer[end:]
            got += 1
    os.close(read_fd)
    os.waitpid(pid, 0)
    return tasks / (time.perf_counter() - start)


def parent_loop(tasks: int) -> float:
    """``fork_tasks`` with tokens and deferral, in the caller itself."""
    token_fds = os.pipe()
    os.write(token_fds[1], b"+" * SLOTS)
    start = time.perf_counter()
    fork_tasks(tasks, None, token_fds, True)
    return tasks / (time.perf_counter() - start)


def submit(tasks: int) -> float:
    from jobserver import Jobserver

    js = Jobserver(context="fork", slots=SLOTS)
    js.submit(noop).result()
    start = time.perf_counter()
    futures = [js.submit(noop) for _ in range(tasks)]
    for future in futures:
        future.result()
    return tasks / (time.perf_counter() - start)


VARIANTS: dict[str, Callable[[int], float]] = {
    "raw fork loop": _raw_fork_loop,
    "relay (bare)": relay,
    "relay + tokens": lambda n: relay(n, slots=True),
    "relay + tokens + deferral": lambda n: relay(n, slots=True, defer=True),
    "pipe loop + tokens + deferral (no relay)": parent_loop,
    "jobserver.submit": submit,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=1500)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import concurrent.futures  # noqa: F401  (a program's usual imports)
        import logging  # noqa: F401
        import multiprocessing  # noqa: F401

        import jobserver  # noqa: F401

        run = VARIANTS[args.one]
        run(50)  # warm up
        print(json.dumps(run(args.tasks)))
        return
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--one", name, "--tasks", str(args.tasks)],
                capture_output=True,
                text=True,
                check=True,
            )
            rates[name].append(json.loads(out.stdout))
    raw = rates["raw fork loop"]
    print(f"{'variant':42} {'tasks/s':>8} {'/ raw':>6}")
    for name, values in rates.items():
        ratio = statistics.median(v / r for v, r in zip(values, raw))
        print(f"{name:42} {statistics.median(values):8.0f} {ratio:6.2f}")


if __name__ == "__main__":
    main()

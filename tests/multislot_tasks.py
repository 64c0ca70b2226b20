"""Tasks for the multi-slot, hold and machine-wide tests (importable by
spawned children and by scripts)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from jobserver import Jobserver
from makeutil import log_line


def wait_for_fifo(path: str) -> bytes:
    """Block until somebody writes to the FIFO at ``path``; return the byte."""
    with open(path, "rb", buffering=0) as f:
        return f.read(1)


def weighted_job(log: str, name: str, weight: int, seconds: float) -> None:
    log_line(log, f"start {name} {weight}")
    time.sleep(seconds)
    log_line(log, f"end {name} {weight}")


def greedy(
    js: Jobserver,
    log: str,
    name: str,
    rounds: int,
    weight: int,
    seconds: float,
    mode: str,
) -> int:
    """``rounds`` jobs of ``weight`` slots each, back to back, as greedily as
    possible: by ``submit(consume=weight)`` or in-process ``hold(weight)``."""
    if mode == "hold":
        for _ in range(rounds):
            with js.hold(weight):
                weighted_job(log, name, weight, seconds)
        return rounds
    futures = [
        js.submit(weighted_job, args=(log, name, weight, seconds), consume=weight)
        for _ in range(rounds)
    ]
    for future in futures:
        future.result()
    return len(futures)


def weighted_peak(path: str | Path) -> tuple[int, dict[str, int]]:
    """The most slots in use at once, and how many jobs each client ran."""
    current = peak = 0
    done: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            what, name, weight = line.split()
            if what == "start":
                current += int(weight)
                peak = max(peak, current)
            else:
                current -= int(weight)
                done[name] = done.get(name, 0) + 1
    return peak, done


def hold_and_report(makeflags: str, count: int, ready_fd: int, go_fd: int) -> None:
    """In a client process: join, hold ``count`` slots, say so, wait."""
    js = Jobserver.join(makeflags, implicit=False)
    assert js is not None
    with js, js.hold(count):
        os.write(ready_fd, b"r")
        os.read(go_fd, 1)


def run_make(js: Jobserver, directory: str, env: dict[str, str]) -> int:
    """In a worker: run make on this worker's own slot (``consume=0``)."""
    return js.run(["make", "-C", directory], consume=0, env=env).returncode

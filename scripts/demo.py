"""A two-minute tour of jobserver (run it with scripts/demo).

1. Nested fan-out: a divide-and-conquer job whose workers submit more work
   through the same Jobserver; every level shares one limit of N slots.
2. A worker killed by SIGKILL fails only its own Future.
3. Callbacks: progress counted from when_done, and a raising callback
   surfacing as CallbackRaised without losing anything.
4. A progress bar over a map run (tqdm if installed, else a plain counter),
   counting done, failed and lost tasks.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time

from jobserver import Blocked, CallbackRaised, Jobserver, LostResult

SLOTS = 3


def fan_out(js: Jobserver, lo: int, hi: int, log: str) -> int:
    """Sum squares of lo..hi-1, splitting in two while a slot is free."""
    start = time.monotonic_ns()
    if hi - lo > 4_000:
        mid = (lo + hi) // 2
        try:
            right = js.submit(fan_out, args=(js, mid, hi, log), timeout=0)
        except Blocked:  # no free slot: do the work here instead of waiting
            total = fan_out(js, lo, mid, log) + fan_out(js, mid, hi, log)
        else:
            total = fan_out(js, lo, mid, log) + right.result()
    else:
        total = sum(i * i for i in range(lo, hi))
        time.sleep(0.02)  # stand-in for real work: long enough to overlap
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {start} {time.monotonic_ns()}\n")
    return total


def peak_processes(log: str) -> tuple[int, int]:
    """(distinct worker processes, the most that were busy at one instant)."""
    spans: dict[int, list[int]] = {}
    with open(log) as f:
        for line in f:
            pid, start, end = map(int, line.split())
            span = spans.setdefault(pid, [start, end])
            span[0], span[1] = min(span[0], start), max(span[1], end)
    events = sorted((t, d) for s, e in spans.values() for t, d in ((s, 1), (e, -1)))
    busy = peak = 0
    for _, delta in events:
        busy += delta
        peak = max(peak, busy)
    return len(spans), peak


def die_or_square(n: int) -> int:
    if n == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return n * n


def flaky_cube(n: int) -> int:
    time.sleep(0.01 * (n % 5))
    if n == 17:
        os.kill(os.getpid(), signal.SIGKILL)  # lost
    if n % 10 == 9:
        raise ValueError(n)  # failed
    return n**3


def progress_section() -> None:
    from jobserver_extras.progress import Progress, make_bar

    print("== 4. a progress bar driven by completion callbacks", flush=True)
    bar = make_bar(total=40, desc="   cubes")  # tqdm if installed, else a counter
    with Jobserver(slots=SLOTS) as js, Progress(bar) as progress:
        futures = [progress.track(js(flaky_cube, n)) for n in range(40)]
        for future in futures:
            while not future.wait(0.05):
                js.reclaim_resources()  # runs finished work's callbacks now
    print(f"   done={progress.done} failed={progress.failed} lost={progress.lost}")
    assert (progress.done, progress.failed, progress.lost) == (35, 4, 1)


def main() -> None:
    print(f"== 1. nested fan-out on {SLOTS} shared slots")
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "spans")
        with Jobserver(slots=SLOTS) as js:
            began = time.monotonic()
            total = js.submit(fan_out, args=(js, 0, 64_000, log)).result()
            took = time.monotonic() - began
        assert total == sum(i * i for i in range(64_000))
        workers, peak = peak_processes(log)
        leaves = 64_000 // 4_000
        print(
            f"   sum of squares = {total}: {leaves} leaves of 20 ms each "
            f"({leaves * 0.02:.2f}s serially) took {took:.2f}s"
        )
        print(f"   {workers} worker processes at nested levels, at most {peak} at once")
        assert peak <= SLOTS

    print("== 2. a killed worker fails only its own Future")
    with Jobserver(slots=SLOTS) as js:
        futures = {n: js(die_or_square, n) for n in range(6)}
        for n, future in futures.items():
            try:
                print(f"   {n}^2 = {future.result()}")
            except LostResult as exc:
                print(f"   {n}: LostResult: {exc}")
        assert all(futures[n].result() == n * n for n in futures if n != 3)

    print("== 3. callbacks")
    done: list[int] = []
    raised: list[str] = []
    with Jobserver(slots=SLOTS) as js:
        futures = []
        for n in range(8):
            while True:  # submit reaps finished work first, so it may run
                try:  # (and report) an earlier callback; calling again proceeds
                    future = js(pow, n, 2)
                    break
                except CallbackRaised as exc:
                    raised.append(f"seqno={exc.seqno} {exc.__cause__!r}")
            future.when_done(done.append, n)
            if n == 0:
                future.when_done(lambda: 1 / 0)  # a buggy callback
            futures.append(future)
        for future in futures:
            while True:
                try:
                    future.wait()
                    break
                except CallbackRaised as exc:
                    raised.append(f"seqno={exc.seqno} {exc.__cause__!r}")
    print(f"   {len(done)} of {len(futures)} completion callbacks ran: {sorted(done)}")
    print(f"   the buggy one surfaced once as CallbackRaised: {raised}")
    assert sorted(done) == list(range(8)) and len(raised) == 1
    progress_section()
    print("demo finished: all checks held")


if __name__ == "__main__":
    main()

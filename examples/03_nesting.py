"""03 - Nesting: work that submits more work, under one shared limit.

A ``Jobserver`` handle can be passed as an argument to the work it runs.  The
worker receives a handle on the *same* slots, whichever start method launched
it (fork, forkserver or spawn), so a whole tree of processes stays inside the
one limit chosen at the top.  This is what makes the library nestable, like
GNU Make's ``-j`` across recursive makes.

Shown for every start method this platform offers:

1. A chain of workers, each submitting the next with ``timeout=0`` until that
   raises ``Blocked``.  With ``slots=3`` the chain is exactly three workers
   long: the nested workers took their slots from the parent's pool.
2. The pattern for nested fan-out that can never deadlock: try to hand a
   piece of the job to a new worker with ``submit(..., timeout=0)`` and, when
   that raises ``Blocked``, do the piece inline.  The answer is the same
   however many slots there are; only the parallelism changes.
3. ``consume=0``: a submission that takes no slot at all.  With ``slots=1``
   the only slot is held by the outer worker, so a normal nested submission
   is ``Blocked`` while one with ``consume=0`` runs.
"""

from __future__ import annotations

import logging
import multiprocessing
import time

from jobserver import Blocked, Jobserver

log = logging.getLogger("tour.nesting")


def chain_length(js: Jobserver, give_up_after: int) -> int:
    """How many workers deep a chain of nested submissions gets (self included)."""
    if give_up_after <= 1:
        return 1
    try:
        deeper = js.submit(chain_length, args=(js, give_up_after - 1), timeout=0)
    except Blocked:
        return 1  # every slot is taken by this chain
    return 1 + deeper.result()


def sum_of_squares(js: Jobserver, lo: int, hi: int) -> tuple[int, int]:
    """Sum i*i over [lo, hi), splitting the range among workers when slots allow.

    Returns the sum and how many extra workers this call tree launched.
    """
    if hi - lo <= 50:
        return sum(i * i for i in range(lo, hi)), 0
    mid = (lo + hi) // 2
    try:
        left = js.submit(sum_of_squares, args=(js, lo, mid), timeout=0)
    except Blocked:
        left = None  # no free slot: this half will run here, inline
    right_sum, right_workers = sum_of_squares(js, mid, hi)
    if left is None:
        left_sum, left_workers = sum_of_squares(js, lo, mid)
    else:
        left_sum, left_workers = left.result()
        left_workers += 1
    return left_sum + right_sum, left_workers + right_workers


def try_both_ways(js: Jobserver) -> tuple[bool, str]:
    """Inside the only slot: a normal nested submit, then one with consume=0."""
    try:
        js.submit(str.upper, args=("unreachable",), timeout=0)
    except Blocked:
        blocked = True
    else:
        blocked = False
    free_ride = js.submit(str.upper, args=("ran without a slot",), consume=0)
    return blocked, free_ride.result()


def expected_sum(lo: int, hi: int) -> int:
    def upto(n: int) -> int:  # sum of i*i for i in [0, n)
        return (n - 1) * n * (2 * n - 1) // 6

    return upto(hi) - upto(lo)


def tour(method: str) -> None:
    started = time.monotonic()
    with Jobserver(context=method, slots=3) as js:
        length = js.submit(chain_length, args=(js, 10)).result()
        assert length == 3, f"{method}: chain of {length} workers with 3 slots"
        log.info("%-10s chain of nested workers stopped at %d = slots", method, length)

        total, workers = js.submit(sum_of_squares, args=(js, 0, 400)).result()
        assert total == expected_sum(0, 400), (method, total)
        log.info(
            "%-10s fan-out with inline fallback: sum=%d using %d extra worker(s)",
            method,
            total,
            workers,
        )

    # The same computation with a single slot: everything below the top runs
    # inline, and the answer does not change.
    with Jobserver(context=method, slots=1) as js:
        total, workers = js.submit(sum_of_squares, args=(js, 0, 400)).result()
        assert total == expected_sum(0, 400), (method, total)
        assert workers == 0, f"{method}: {workers} nested workers with slots=1"
        log.info("%-10s with slots=1 the same sum ran all inline", method)

        blocked, value = js.submit(try_both_ways, args=(js,)).result()
        assert blocked, f"{method}: a nested submit found a second slot"
        assert value == "RAN WITHOUT A SLOT", value
        log.info("%-10s slots=1: nested submit Blocked, consume=0 ran", method)
    log.info("%-10s done in %.2f s", method, time.monotonic() - started)


def main() -> None:
    methods = [
        m
        for m in ("fork", "forkserver", "spawn")
        if m in multiprocessing.get_all_start_methods()
    ]
    for method in methods:
        tour(method)
    log.info("all nesting checks passed for %s", ", ".join(methods))


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

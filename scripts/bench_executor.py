"""Tiny-task throughput: JobserverExecutor (fresh and reuse modes) versus
ProcessPoolExecutor.

Runs every executor side by side in one process, on each start method with
the same worker count, interleaving rounds so that all see the same machine
load, and prints the median of several rounds (tasks per second) for:
``submit`` of every task then waiting for all, and ``map`` with
``chunksize`` 1 and 64.  The task is ``abs`` (no work at all), so the
numbers measure per-task overhead: a fresh process per task for the default
JobserverExecutor, reused workers for ``reuse_workers=True`` and for
ProcessPoolExecutor.  The last columns are the ratios to
ProcessPoolExecutor.

    python scripts/bench_executor.py [--methods fork,forkserver,spawn]
        [--workers 2] [--tasks 5000] [--fresh-tasks 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import statistics
import sys
import time
import warnings
from typing import Callable

from jobserver_executor import JobserverExecutor


def _submit_all(executor: cf.Executor, tasks: int) -> None:
    futures = [executor.submit(abs, -i) for i in range(tasks)]
    for future in futures:
        future.result()


def _map(chunksize: int) -> Callable[[cf.Executor, int], None]:
    def run(executor: cf.Executor, tasks: int) -> None:
        for _ in executor.map(abs, range(tasks), chunksize=chunksize):
            pass

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods", default=",".join(multiprocessing.get_all_start_methods())
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument(
        "--fresh-tasks",
        type=int,
        default=300,
        help="tasks per round for the fresh-process mode (0: skip it)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # Forking from the dispatcher thread is the documented choice here.
    warnings.filterwarnings("ignore", "This process", DeprecationWarning)
    workloads = {
        "submit": _submit_all,
        "map chunksize=1": _map(1),
        "map chunksize=64": _map(64),
    }
    print(
        f"Python {sys.version.split()[0]}, {args.workers} workers, abs() tasks, "
        f"median of {args.rounds} rounds, tasks/s"
    )
    print(
        f"{'method':10} {'workload':17} {'fresh':>9} {'reuse':>9} {'PPE':>9}"
        f" {'reuse/PPE':>9} {'fresh/PPE':>9}"
    )
    for method in args.methods.split(","):
        context = multiprocessing.get_context(method)
        makers: dict[str, tuple[Callable[[], cf.Executor], int]] = {
            "reuse": (
                lambda context=context: JobserverExecutor(
                    args.workers, mp_context=context, reuse_workers=True
                ),
                args.tasks,
            ),
            "PPE": (
                lambda context=context: cf.ProcessPoolExecutor(
                    args.workers, mp_context=context
                ),
                args.tasks,
            ),
        }
        if args.fresh_tasks:
            makers["fresh"] = (
                lambda context=context: JobserverExecutor(
                    args.workers, mp_context=context
                ),
                args.fresh_tasks,
            )
        for workload, run in workloads.items():
            rates: dict[str, list[float]] = {name: [] for name in makers}
            for _ in range(args.rounds):
                for name, (make, tasks) in makers.items():  # interleaved
                    with make() as executor:
                        run(executor, args.workers * 4)  # start the workers
                        started = time.perf_counter()
                        run(executor, tasks)
                        elapsed = time.perf_counter() - started
                    rates[name].append(tasks / elapsed)
            median = {name: statistics.median(v) for name, v in rates.items()}
            fresh = median.get("fresh", float("nan"))
            print(
                f"{method:10} {workload:17} {fresh:9.0f} {median['reuse']:9.0f}"
                f" {median['PPE']:9.0f} {median['reuse'] / median['PPE']:8.2f}x"
                f" {fresh / median['PPE']:8.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Tiny-task throughput: JobserverExecutor versus ProcessPoolExecutor.

Runs both executors side by side in one process, on the same start method
and worker count, and prints the median of several rounds (tasks per
second) for: ``submit`` of every task then waiting for all, and ``map``
with ``chunksize`` 1 and 64.  The task is ``abs`` (no work at all), so the
numbers measure per-task overhead: a fresh process per task for
JobserverExecutor, a reused worker for ProcessPoolExecutor.

    python scripts/bench_executor.py [--method fork] [--workers 2]
                                     [--tasks 2000] [--rounds 3]
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
    parser.add_argument("--method", default="fork")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    context = multiprocessing.get_context(args.method)
    # Forking from the dispatcher thread is the documented choice here.
    warnings.filterwarnings("ignore", "This process", DeprecationWarning)

    makers: dict[str, Callable[[], cf.Executor]] = {
        "JobserverExecutor": lambda: JobserverExecutor(
            args.workers, mp_context=context
        ),
        "ProcessPoolExecutor": lambda: cf.ProcessPoolExecutor(
            args.workers, mp_context=context
        ),
    }
    workloads = {
        "submit": _submit_all,
        "map chunksize=1": _map(1),
        "map chunksize=64": _map(64),
    }
    print(
        f"Python {sys.version.split()[0]}, start method {args.method}, "
        f"{args.workers} workers, {args.tasks} tasks of abs(), "
        f"median of {args.rounds} rounds (tasks/s)"
    )
    for workload, run in workloads.items():
        rates: dict[str, list[float]] = {name: [] for name in makers}
        for _ in range(args.rounds):
            for name, make in makers.items():  # interleaved: same conditions
                with make() as executor:
                    run(executor, args.workers * 2)  # warm up the workers
                    started = time.perf_counter()
                    run(executor, args.tasks)
                    elapsed = time.perf_counter() - started
                rates[name].append(args.tasks / elapsed)
        line = ", ".join(
            f"{name} {statistics.median(values):9.0f}" for name, values in rates.items()
        )
        print(f"{workload:18} {line}")


if __name__ == "__main__":
    main()

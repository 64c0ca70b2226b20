"""JobserverExecutor with reused workers: many tiny tasks, one shared limit.

``JobserverExecutor(..., reuse_workers=True)`` keeps its workers alive and
runs task after task in them, as ``ProcessPoolExecutor`` does, so tiny tasks
cost microseconds instead of a process start each.  Shown and checked here:

* Many tiny tasks run in at most N long-lived workers.
* ``max_tasks_per_child`` recycles a worker after that many tasks, and the
  initializer runs once per worker.
* Slots count *running tasks*, not workers: while the executor's workers sit
  idle, every slot of the shared Jobserver is free for direct submissions.
* A worker that dies fails only its own task; a new worker takes over.
"""

from __future__ import annotations

import collections
import os

from jobserver import Jobserver
from jobserver_executor import JobserverExecutor, WorkerLost

STARTED_IN: list[int] = []


def note_worker() -> None:
    STARTED_IN.append(os.getpid())


def whoami(_: int) -> tuple[int, int]:
    """This worker's pid and how often its initializer ran."""
    return os.getpid(), len(STARTED_IN)


def die() -> None:
    os._exit(7)


def main() -> None:
    js = Jobserver(slots=2)
    with JobserverExecutor(js, reuse_workers=True) as executor:
        squares = list(executor.map(pow, range(2000), [2] * 2000))
        assert squares == [i * i for i in range(2000)]
        pids = set(executor.map(whoami, range(200)))
        assert len({pid for pid, _ in pids}) <= 2, pids
        print(f"2200 tiny tasks ran in {len({pid for pid, _ in pids})} worker(s)")

        # Idle workers hold no slot: both are free for direct work.
        direct = [js.submit(abs, args=(-i,), timeout=0) for i in range(2)]
        assert [f.result() for f in direct] == [0, 1]
        print("while the workers were idle, both slots were free for others")

        # A death fails only its own task; the executor carries on.
        doomed = executor.submit(die)
        error = doomed.exception()
        assert isinstance(error, WorkerLost) and error.returncode == 7, error
        assert executor.submit(abs, -5).result() == 5
        print(f"a worker died ({error.returncode=}); the next task still ran")

    with JobserverExecutor(
        1, reuse_workers=True, initializer=note_worker, max_tasks_per_child=5
    ) as executor:
        seen = [executor.submit(whoami, i).result() for i in range(15)]
    per_worker = collections.Counter(pid for pid, _ in seen)
    assert sorted(per_worker.values()) == [5, 5, 5], per_worker
    assert {count for _, count in seen} == {1}  # initializer once per worker
    print("max_tasks_per_child=5: 15 tasks in 3 workers, one initializer run each")


if __name__ == "__main__":
    main()

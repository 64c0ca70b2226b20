"""JobserverExecutor: a ``concurrent.futures`` drop-in built on jobserver-core.

``JobserverExecutor`` runs every task in a fresh worker process launched by a
``jobserver.Jobserver``, so its tasks share that Jobserver's slots with any
other user of them, and a worker's death fails only its own future
(``WorkerLost``).  Also importable as ``jobserver.JobserverExecutor``.
"""

from __future__ import annotations

from ._errors import BrokenJobserverExecutor, InitializerFailed, WorkerLost
from ._executor import JobserverExecutor

__all__ = [
    "BrokenJobserverExecutor",
    "InitializerFailed",
    "JobserverExecutor",
    "WorkerLost",
]

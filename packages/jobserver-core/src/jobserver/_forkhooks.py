"""After-fork hooks, registered on first use.

Every hook registered with ``os.register_at_fork`` is a Python call (and its
copy-on-write page faults) in every child the process forks, workers
included.  So the core's modules register theirs only once they hold
something a forked child must forget, and a process that merely imported
jobserver runs none of its code in the children it forks.  A forked child
inherits both the registrations and the record of them here.
"""

from __future__ import annotations

import os
from typing import Callable

__all__ = ["run_in_forked_children"]

_registered: set[Callable[[], None]] = set()


def run_in_forked_children(hook: Callable[[], None]) -> None:
    """Run ``hook`` in every child this process forks from now on.

    Registers it once; ``hook`` must be idempotent (two threads racing here
    may register it twice)."""
    if hook not in _registered:
        _registered.add(hook)
        os.register_at_fork(after_in_child=hook)

"""Passing a descriptor to the spawn/forkserver child being started.

``multiprocessing`` can hand descriptors to a child only while it is pickling
that child's process object (``get_spawning_popen()`` is set then).  The
pieces that carry a descriptor use these two helpers from ``__reduce__`` and
from their rebuild functions.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["fd_for_child", "fd_from_parent", "spawning"]


def spawning() -> bool:
    """Whether ``multiprocessing`` is pickling a child process right now."""
    from multiprocessing import context

    return context.get_spawning_popen() is not None


def fd_for_child(fd: int) -> Any:
    """A picklable reference that becomes a copy of ``fd`` in the child.

    Only valid while ``spawning()``; the caller checks that first.
    """
    from multiprocessing import context

    popen = context.get_spawning_popen()
    if popen is None:  # pragma: no cover - callers check spawning() first
        raise TypeError("descriptors can be pickled only while starting a process")
    return popen.DupFd(popen.duplicate_for_child(fd))


def fd_from_parent(reference: Any) -> int:
    """The descriptor behind ``reference``, owned by the caller, close-on-exec."""
    fd = int(reference.detach())
    os.set_inheritable(fd, False)
    return fd

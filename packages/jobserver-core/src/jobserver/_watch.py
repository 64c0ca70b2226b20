"""Which tracked Futures may progress: a readiness set over their descriptors.

One per resource set and process.  On Linux it is an epoll instance, so
asking "who is ready?" costs time in proportion to the Futures that are
ready, not to those outstanding, and the epoll descriptor itself can be
polled together with the slot pool.  Elsewhere it falls back to ``poll`` over
all watched descriptors.
"""

from __future__ import annotations

import select
from typing import Any

__all__ = ["Watcher"]


class Watcher:
    """Maps watched descriptors to their owners; reports the ready owners."""

    __slots__ = ("_epoll", "_owners", "_poll")

    def __init__(self) -> None:
        self._owners: dict[int, Any] = {}
        self._epoll: Any = select.epoll() if hasattr(select, "epoll") else None
        self._poll: Any = None if self._epoll is not None else select.poll()

    def __len__(self) -> int:
        return len(self._owners)

    def add(self, fd: int, owner: Any) -> None:
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        else:
            self._poll.register(fd, select.POLLIN)
        self._owners[fd] = owner

    def remove(self, fd: int) -> None:
        if self._owners.pop(fd, None) is None:
            return
        try:
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                self._poll.unregister(fd)
        except (OSError, KeyError):
            pass  # already closed: the kernel dropped it

    def ready(self) -> list[Any]:
        """Owners whose descriptors are readable now (does not block)."""
        if not self._owners:
            return []
        events = (self._epoll or self._poll).poll(0)
        owners = self._owners
        ready = []
        for fd, _ in events:  # a loop, not a comprehension: one call fewer
            if fd in owners:
                ready.append(owners[fd])
        return ready

    def wait_fds(self) -> list[int]:
        """Descriptors a caller can poll to learn that some owner is ready."""
        if not self._owners:
            return []
        if self._epoll is not None:
            return [self._epoll.fileno()]
        return list(self._owners)

    def close(self) -> None:
        self._owners.clear()
        if self._epoll is not None:
            self._epoll.close()

    def forget_in_child(self) -> None:
        """In a forked child: drop the parent's epoll without touching it."""
        self._owners = {}
        if self._epoll is not None:
            try:
                self._epoll.close()
            except OSError:
                pass

"""Reading (and later advertising) GNU Make's jobserver in ``MAKEFLAGS``."""

from __future__ import annotations

from ._slots import SlotPool


def pool_from_environment() -> SlotPool | None:
    """The slot pool Make advertises to this process, if any (not yet joined)."""
    return None

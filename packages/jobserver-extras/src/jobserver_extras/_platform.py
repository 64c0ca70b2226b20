"""Platform checks shared by every piece, and the error they raise.

Each piece calls one of these from its constructor, so an unsupported
platform is reported in the process that builds the piece, before any
worker exists.  Tests replace ``current_platform`` to exercise the refusals.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["UnsupportedPlatform", "current_platform", "require_linux", "require_posix"]

logger = logging.getLogger("jobserver.extras")


class UnsupportedPlatform(OSError):
    """The running platform lacks what a ``jobserver_extras`` piece needs.

    Raised by the piece's constructor, in the process that builds it, never
    later in a worker.
    """


def current_platform() -> str:
    """The platform name the checks compare against (``sys.platform``)."""
    return sys.platform


def is_linux() -> bool:
    return current_platform().startswith("linux")


def require_linux(piece: str, needs: str) -> None:
    """Raise ``UnsupportedPlatform`` unless running on Linux."""
    name = current_platform()
    if not name.startswith("linux"):
        raise UnsupportedPlatform(f"{piece} needs Linux ({needs}); this is {name!r}")


def require_posix(piece: str, needs: str) -> None:
    """Raise ``UnsupportedPlatform`` on platforms without POSIX descriptors."""
    name = current_platform()
    if name.startswith(("win32", "emscripten", "wasi")):
        raise UnsupportedPlatform(
            f"{piece} needs a POSIX system ({needs}); this is {name!r}"
        )

"""jobserver: run work in fresh child processes under one shared slot limit.

Public names: ``Jobserver``, ``Future``, ``Blocked``, ``LostResult``,
``CallbackRaised``, ``TimeLimitExceeded`` and, when the
``jobserver-executor`` distribution is installed, ``JobserverExecutor``
(imported lazily, on first use).
"""

from __future__ import annotations

from typing import Any

from ._exceptions import (
    Blocked,
    CallbackRaised,
    LostResult,
    TimeLimitExceeded,
    WorkerTraceback,
)
from ._future import Future
from ._jobserver import Jobserver

__all__ = [
    "Blocked",
    "CallbackRaised",
    "Future",
    "Jobserver",
    "JobserverExecutor",
    "LostResult",
    "TimeLimitExceeded",
    "WorkerTraceback",
    "__version__",
]


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jobserver-core")
    except PackageNotFoundError:  # pragma: no cover - running from a bare tree
        return "0+unknown"


__version__: str  # set on first use, by __getattr__


def __getattr__(name: str) -> Any:
    if name == "__version__":
        # Looked up on first use: importlib.metadata is a large import, and
        # everything a process imports makes each of its forks slower.
        global __version__
        __version__ = _installed_version()
        return __version__
    if name == "JobserverExecutor":
        try:
            from jobserver_executor import (  # type: ignore[attr-defined,unused-ignore]
                JobserverExecutor,
            )
        except ImportError as exc:
            raise ImportError(
                "JobserverExecutor lives in the jobserver-executor distribution: "
                "pip install jobserver-executor",
                name="jobserver_executor",
            ) from exc
        return JobserverExecutor
    if name == "aio":  # asyncio support, imported on first use
        import importlib

        return importlib.import_module(".aio", __name__)
    raise AttributeError(f"module 'jobserver' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

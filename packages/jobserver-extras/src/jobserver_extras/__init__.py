"""Linux hardening and launch gates for jobserver-core.

Preexecs (for ``Jobserver.replace_preexec``; combine with ``chain_preexecs``):

* ``ParentDeathSignal`` - a worker dies when the process that launched it dies.
* ``WorkerLogging`` - logging configured in every worker, flushed on exit,
  optionally forwarded to the parent through a ``LogForwarder``.
* ``AdvisoryLock`` - an ``flock`` on a path held while the task runs.
* ``ResourceLimits`` - ``setrlimit`` (address space, CPU seconds, open files).

Gate (for ``Jobserver.replace_sleep``):

* ``RamGate`` - hold launches while ``MemAvailable`` is below a threshold.

Progress bars driven by completion callbacks: ``jobserver_extras.progress``
(imported on demand; ``tqdm`` optional; see docs/progress.md).

A piece the platform cannot support raises ``UnsupportedPlatform`` from its
constructor.  The library logs to the ``jobserver.extras`` logger.
"""

from __future__ import annotations

from ._chain import PreexecChain, chain_preexecs
from ._flock import AdvisoryLock
from ._logging import LogForwarder, WorkerLogging
from ._pdeathsig import ParentDeathSignal, current_pdeathsig
from ._platform import UnsupportedPlatform
from ._ramgate import MemInfo, RamGate, read_meminfo
from ._rlimits import ResourceLimits

__all__ = [
    "AdvisoryLock",
    "LogForwarder",
    "MemInfo",
    "ParentDeathSignal",
    "PreexecChain",
    "RamGate",
    "ResourceLimits",
    "UnsupportedPlatform",
    "WorkerLogging",
    "__version__",
    "chain_preexecs",
    "current_pdeathsig",
    "read_meminfo",
]


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jobserver-extras")
    except PackageNotFoundError:  # pragma: no cover - running from a bare tree
        return "0+unknown"


__version__ = _installed_version()

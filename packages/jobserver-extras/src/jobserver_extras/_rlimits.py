"""Resource-limit preexec: ``setrlimit`` in each worker before its task."""

from __future__ import annotations

import os
from typing import Any, Union

from . import _platform
from ._platform import UnsupportedPlatform, require_posix

__all__ = ["ResourceLimits"]

Limit = Union[int, tuple[int, int]]

# (keyword, RLIMIT_ name, minimum finite value, what it limits)
_LIMITS = (
    ("address_space", "RLIMIT_AS", 1, "bytes of virtual address space"),
    ("cpu_seconds", "RLIMIT_CPU", 1, "seconds of CPU time"),
    ("open_files", "RLIMIT_NOFILE", 0, "open file descriptors"),
)


def _resource_module() -> Any:
    try:
        import resource
    except ImportError:
        return None
    return resource


def _check_value(value: Any, name: str, minimum: int, infinity: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int, a (soft, hard) pair of ints or None, "
            f"not {type(value).__name__}"
        )
    if value != infinity and value < minimum:
        raise ValueError(
            f"{name} must be >= {minimum} or resource.RLIM_INFINITY, not {value}"
        )
    return int(value)


def _ordered(value: int, infinity: int) -> float:
    return float("inf") if value == infinity else float(value)


class ResourceLimits:
    """Preexec: apply ``setrlimit`` limits in each worker before its task.

    ``address_space`` (``RLIMIT_AS``, bytes; Linux only - elsewhere it is not
    enforced), ``cpu_seconds`` (``RLIMIT_CPU``) and ``open_files``
    (``RLIMIT_NOFILE``).  Each is ``None`` (inherit), an ``int`` (the soft
    limit; the hard limit is left as inherited) or a ``(soft, hard)`` pair;
    ``resource.RLIM_INFINITY`` means no limit.  Limits that an unprivileged
    worker could not set (above the current hard limit) are a ``ValueError``
    here, not a failure in the worker.

    What exceeding each does: an allocation beyond ``address_space`` raises
    ``MemoryError`` in the task (re-raised by ``Future.result``); passing
    ``cpu_seconds`` kills the worker with ``SIGXCPU`` (``LostResult``);
    ``open_files`` makes ``open`` fail with ``OSError(EMFILE)``.
    """

    __slots__ = ("_limits",)

    def __init__(
        self,
        *,
        address_space: Limit | None = None,
        cpu_seconds: Limit | None = None,
        open_files: Limit | None = None,
    ) -> None:
        require_posix("ResourceLimits", "setrlimit(2)")
        resource = _resource_module()
        if resource is None:  # pragma: no cover - every POSIX CPython has it
            raise UnsupportedPlatform("ResourceLimits needs the resource module")
        infinity = int(resource.RLIM_INFINITY)
        given = {
            "address_space": address_space,
            "cpu_seconds": cpu_seconds,
            "open_files": open_files,
        }
        privileged = hasattr(os, "geteuid") and os.geteuid() == 0
        limits: list[tuple[str, str, int, int | None]] = []
        for keyword, rname, minimum, _ in _LIMITS:
            value = given[keyword]
            if value is None:
                continue
            if isinstance(value, tuple):
                if len(value) != 2:
                    raise ValueError(f"{keyword} must be a (soft, hard) pair")
                soft = _check_value(
                    value[0], f"{keyword} soft limit", minimum, infinity
                )
                hard: int | None = _check_value(
                    value[1], f"{keyword} hard limit", minimum, infinity
                )
                assert hard is not None
                if _ordered(soft, infinity) > _ordered(hard, infinity):
                    raise ValueError(
                        f"{keyword}: the soft limit {soft} exceeds the hard "
                        f"limit {hard}"
                    )
            else:
                soft = _check_value(value, keyword, minimum, infinity)
                hard = None
            if keyword == "address_space" and not _platform.is_linux():
                raise UnsupportedPlatform(
                    "ResourceLimits(address_space=...) needs Linux: RLIMIT_AS "
                    f"is not enforced on {_platform.current_platform()!r}"
                )
            if not hasattr(resource, rname):
                raise UnsupportedPlatform(
                    f"ResourceLimits({keyword}=...) needs resource.{rname}, "
                    "which this platform lacks"
                )
            if not privileged:
                _, current_hard = resource.getrlimit(getattr(resource, rname))
                ceiling = _ordered(int(current_hard), infinity)
                wanted = hard if hard is not None else soft
                if _ordered(wanted, infinity) > ceiling:
                    raise ValueError(
                        f"{keyword}: {wanted} is above the current hard limit "
                        f"{current_hard}, which only a privileged process may raise"
                    )
            limits.append((keyword, rname, soft, hard))
        if not limits:
            raise ValueError(
                "give at least one of address_space, cpu_seconds, open_files"
            )
        self._limits = tuple(limits)

    @property
    def limits(self) -> dict[str, tuple[int, int | None]]:
        """The limits to apply: keyword -> (soft, hard or ``None``)."""
        return {keyword: (soft, hard) for keyword, _, soft, hard in self._limits}

    def __call__(self) -> None:
        """In the worker: apply the limits (before the task runs)."""
        import resource

        for _, rname, soft, hard in self._limits:
            which = getattr(resource, rname)
            if hard is None:
                _, hard = resource.getrlimit(which)
            resource.setrlimit(which, (soft, hard))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._limits,))

    def __repr__(self) -> str:
        parts = []
        for keyword, _, soft, hard in self._limits:
            parts.append(f"{keyword}={soft if hard is None else (soft, hard)!r}")
        return f"ResourceLimits({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResourceLimits):
            return NotImplemented
        return self._limits == other._limits

    def __hash__(self) -> int:
        return hash((ResourceLimits, self._limits))


def _rebuild(limits: tuple[tuple[str, str, int, int | None], ...]) -> ResourceLimits:
    obj = object.__new__(ResourceLimits)
    obj._limits = limits
    return obj

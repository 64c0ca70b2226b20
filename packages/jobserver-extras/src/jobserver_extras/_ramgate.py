"""RAM gate: hold launches while available memory is below a threshold."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, NamedTuple, Union

from ._platform import UnsupportedPlatform, is_linux, logger

__all__ = ["MemInfo", "RamGate"]

DEFAULT_MEMINFO = "/proc/meminfo"

_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}

PathArg = Union[str, "os.PathLike[str]"]


class MemInfo(NamedTuple):
    """Memory figures in bytes, as read from a ``/proc/meminfo``-style file."""

    total: int
    available: int


def read_meminfo(path: str) -> MemInfo:
    """Parse ``MemTotal`` and ``MemAvailable`` (in bytes) from ``path``.

    Raises ``OSError`` if the file cannot be read and ``ValueError`` if either
    figure is missing or malformed.
    """
    found: dict[str, int] = {}
    with open(path, encoding="ascii", errors="replace") as f:
        for line in f:
            key, sep, rest = line.partition(":")
            if not sep or key not in ("MemTotal", "MemAvailable"):
                continue
            parts = rest.split()
            unit = parts[1].lower() if len(parts) > 1 else ""
            if not parts or not parts[0].isdigit() or unit not in _UNITS:
                raise ValueError(f"{path}: malformed {key} line: {line.strip()!r}")
            found[key] = int(parts[0]) * _UNITS[unit]
            if len(found) == 2:
                break
    missing = [k for k in ("MemTotal", "MemAvailable") if k not in found]
    if missing:
        raise ValueError(f"{path} has no {' or '.join(missing)} line")
    return MemInfo(found["MemTotal"], found["MemAvailable"])


class RamGate:
    """``replace_sleep`` gate: launch only while enough memory is available.

    ``threshold`` is either an ``int`` number of bytes or a ``float``
    fraction of ``MemTotal`` in ``(0, 1]``.  Before each launch the gate reads
    ``MemAvailable``; below the threshold it asks the Jobserver to wait
    ``interval`` seconds and ask again (the wait ends early when earlier work
    finishes, since that is when memory usually comes back).  A bounded
    ``submit(timeout=...)`` raises ``Blocked`` if memory stays short.

    ``meminfo`` names the file to read (default ``/proc/meminfo``, Linux
    only); point it at a file of the same format to drive the gate from
    elsewhere, as the tests do.  The file is read once here, so a missing or
    malformed one is reported at construction.
    """

    __slots__ = ("_fraction", "_interval", "_meminfo", "_minimum")

    def __init__(
        self,
        threshold: int | float,
        *,
        interval: float = 0.25,
        meminfo: PathArg = DEFAULT_MEMINFO,
    ) -> None:
        self._minimum: int | None = None
        self._fraction: float | None = None
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(
                "threshold must be an int (bytes) or a float (fraction of "
                f"MemTotal), not {type(threshold).__name__}"
            )
        if isinstance(threshold, int):
            if threshold < 1:
                raise ValueError(f"threshold must be >= 1 byte, not {threshold}")
            self._minimum = int(threshold)
        else:
            if not 0.0 < threshold <= 1.0:  # also rejects NaN
                raise ValueError(
                    "a float threshold is a fraction of MemTotal in (0, 1], not "
                    f"{threshold!r} (pass an int for a number of bytes)"
                )
            self._fraction = float(threshold)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            raise TypeError(
                f"interval must be a number of seconds, not {type(interval).__name__}"
            )
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be > 0 and finite, not {interval!r}")
        self._interval = float(interval)
        if not isinstance(meminfo, (str, os.PathLike)):
            raise TypeError(
                f"meminfo must be a path (str or os.PathLike), not "
                f"{type(meminfo).__name__}"
            )
        path = os.fspath(meminfo)
        if not isinstance(path, str):
            raise TypeError("meminfo must be a str path, not bytes")
        if not path:
            raise ValueError("meminfo must not be empty")
        default = path == DEFAULT_MEMINFO
        if default and not is_linux():
            raise UnsupportedPlatform(
                "RamGate reads MemAvailable from /proc/meminfo, which only Linux "
                "has; pass meminfo= to read an equivalent file"
            )
        self._meminfo = path
        try:
            read_meminfo(path)
        except OSError as exc:
            if default:
                raise UnsupportedPlatform(f"RamGate cannot read {path}: {exc}")
            raise ValueError(f"meminfo: cannot read {path!r}: {exc}") from exc
        except ValueError as exc:
            if default:
                raise UnsupportedPlatform(
                    f"RamGate needs MemAvailable (Linux 3.14+): {exc}"
                )
            raise ValueError(f"meminfo: {exc}") from exc

    @property
    def interval(self) -> float:
        """Seconds to wait before asking again while memory is short."""
        return self._interval

    @property
    def meminfo(self) -> str:
        """The file the gate reads."""
        return self._meminfo

    def read(self) -> MemInfo:
        """The current ``MemTotal`` and ``MemAvailable`` in bytes."""
        return read_meminfo(self._meminfo)

    def threshold_bytes(self, info: MemInfo | None = None) -> int:
        """The threshold in bytes (for a fraction: of ``info.total``)."""
        if self._minimum is not None:
            return self._minimum
        assert self._fraction is not None
        if info is None:
            info = self.read()
        return math.ceil(self._fraction * info.total)

    def __call__(self) -> float | None:
        """``None`` (launch now) if enough memory is available, else the
        interval to wait before asking again."""
        info = self.read()
        needed = self.threshold_bytes(info)
        if info.available >= needed:
            return None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "RamGate holding a launch: MemAvailable %d < %d bytes",
                info.available,
                needed,
            )
        return self._interval

    def __repr__(self) -> str:
        if self._minimum is not None:
            threshold = f"{self._minimum}"
        else:
            threshold = f"{self._fraction!r}"
        return (
            f"RamGate({threshold}, interval={self._interval!r}, "
            f"meminfo={self._meminfo!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RamGate):
            return NotImplemented
        return self._state() == other._state()

    def __hash__(self) -> int:
        return hash(self._state())

    def _state(self) -> tuple[Any, ...]:
        return (self._minimum, self._fraction, self._interval, self._meminfo)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, self._state())


def _rebuild(
    minimum: int | None, fraction: float | None, interval: float, meminfo: str
) -> RamGate:
    # No re-validation: the child may run before the file is readable again.
    gate = object.__new__(RamGate)
    gate._minimum = minimum
    gate._fraction = fraction
    gate._interval = interval
    gate._meminfo = meminfo
    return gate

"""Loggers that import ``logging`` only when a record could be emitted.

Importing ``logging`` registers fork hooks (it takes and releases its module
lock around every ``os.fork`` and re-creates handler locks in every child),
which makes every fork in the process slower.  A program that never imported
``logging`` cannot have configured a handler or a level, so a debug record
would be dropped anyway: ``debug`` does nothing until ``logging`` is
imported.  Warnings and errors import it (its last-resort handler prints
them to stderr, as it would have).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["DEBUG", "LazyLogger", "get_logger"]

DEBUG = 10  # logging.DEBUG


class LazyLogger:
    """The parts of ``logging.Logger`` the library uses, imported lazily."""

    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: Any = None

    def _get(self) -> Any:
        logger = self._logger
        if logger is None:
            import logging

            logger = self._logger = logging.getLogger(self.name)
        return logger

    def isEnabledFor(self, level: int) -> bool:
        if level <= DEBUG and "logging" not in sys.modules:
            return False
        return bool(self._get().isEnabledFor(level))

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if "logging" in sys.modules:
            self._get().debug(msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._get().warning(msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._get().exception(msg, *args, **kwargs)


def get_logger(name: str) -> LazyLogger:
    return LazyLogger(name)

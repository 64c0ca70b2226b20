"""Tasks for test_state_machine.py (a module, so every start method finds them)."""

from __future__ import annotations

import os
import signal
from typing import Any


def value(token: int) -> tuple[str, int]:
    return ("value", token)


def fail(token: int) -> None:
    raise ValueError(f"model-error {token}")


def die(how: str) -> None:
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(9)


def hold(path: str, token: int) -> tuple[str, int]:
    """Hold a slot until the test writes a byte into the FIFO at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)
    return ("held", token)


def run(kind: str, token: int) -> Any:
    if kind == "raise":
        fail(token)
    return value(token)

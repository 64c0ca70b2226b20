"""Module-level tasks for the asyncio, time-limit and progress tests."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from jobserver import Jobserver


def square(x: int) -> int:
    return x * x


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def sleep_with_cleanup(seconds: float, path: str) -> None:
    try:
        time.sleep(seconds)
    finally:
        with open(path, "w") as f:
            f.write("cleaned up")


def sleep_with_slow_cleanup(seconds: float, cleanup: float, path: str) -> None:
    """Sleep; on the way out (the timer's exception) take ``cleanup``
    seconds, then write a marker."""
    try:
        time.sleep(seconds)
    finally:
        time.sleep(cleanup)
        with open(path, "w") as f:
            f.write("cleaned up")


def stubborn(seconds: float) -> None:
    """Ignore SIGTERM and the worker's own timer; only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)


def swallow_everything(seconds: float) -> str:
    """Catch the timer's exception and keep going (the parent must step in)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.01)
        except Exception:
            pass
    return "finished"


def nested_limited(js: Jobserver, seconds: float) -> str:
    """Submit a nested task through the (time-limited) handle we were given."""
    from jobserver import TimeLimitExceeded

    try:
        js.submit(sleep_then, args=(seconds,), consume=0).result()
    except TimeLimitExceeded as exc:
        return f"nested: {type(exc).__name__}"
    return "nested: finished"


def fail_if_odd(x: int) -> int:
    if x % 2:
        raise ValueError(x)
    return x


def die_if(x: int, which: int) -> int:
    if x == which:
        os.kill(os.getpid(), signal.SIGKILL)
    return x

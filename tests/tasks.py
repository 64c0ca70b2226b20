"""Module-level tasks used by the tests (importable by spawned children)."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from jobserver import Blocked, Jobserver


def identity(value: Any) -> Any:
    return value


def add(a: int, b: int = 0) -> int:
    return a + b


def getpid() -> int:
    return os.getpid()


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def raise_value_error(message: str = "boom") -> None:
    raise ValueError(message)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(60)


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def exit_now(code: int = 0) -> None:
    os._exit(code)


def exec_true() -> None:
    os.execv("/bin/sh", ["sh", "-c", "exit 0"])


def raise_system_exit(code: int = 3) -> None:
    sys.exit(code)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def block_until_signalled() -> None:
    signal.pause()


def big_bytes(size: int) -> bytes:
    return os.urandom(16) * (size // 16) + b"x" * (size % 16)


def nest(js: Jobserver, depth: int) -> int:
    """Submit nested work until Blocked or depth reached; return depth reached."""
    if depth < 1:
        return 0
    try:
        future = js.submit(nest, args=(js, depth - 1), timeout=0)
    except Blocked:
        return 0
    return 1 + future.result()


def nest_or_inline(js: Jobserver, depth: int) -> int:
    """The documented pattern: submit with timeout=0, run inline on Blocked."""
    if depth < 1:
        return 1
    total = 1
    futures = []
    for _ in range(2):
        try:
            futures.append(js.submit(nest_or_inline, args=(js, depth - 1), timeout=0))
        except Blocked:
            total += nest_or_inline(js, depth - 1)
    for future in futures:
        total += future.result()
    return total


def record_interval(path: str, seconds: float) -> None:
    """Append this worker's start and end times (monotonic ns) to ``path``."""
    start = time.monotonic_ns()
    time.sleep(seconds)
    end = time.monotonic_ns()
    with open(path, "a") as f:
        f.write(f"{start} {end}\n")


def record_interval_at_rendezvous(path: str, started: int, release: int) -> None:
    """Like ``record_interval``, but the interval spans a rendezvous: say so on
    the ``started`` pipe, then wait for a byte on the ``release`` pipe."""
    start = time.monotonic_ns()
    os.write(started, b"s")
    os.read(release, 1)
    end = time.monotonic_ns()
    with open(path, "a") as f:
        f.write(f"{start} {end}\n")


def max_overlap(path: str) -> int:
    """The largest number of intervals in ``path`` that overlap at one instant."""
    events = []
    with open(path) as f:
        for line in f:
            start, end = map(int, line.split())
            events.append((start, 1))
            events.append((end, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    current = best = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def getenv(key: str) -> str | None:
    return os.environ.get(key)


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable refuses to be pickled")


def return_unpicklable() -> Unpicklable:
    return Unpicklable()


class NotRebuildable:
    """Pickles fine, but rebuilding it raises."""

    def __reduce__(self) -> Any:
        return (_refuse_rebuild, ())


def _refuse_rebuild() -> None:
    raise RuntimeError("NotRebuildable cannot be rebuilt")


def return_not_rebuildable() -> NotRebuildable:
    return NotRebuildable()


def fork_a_lingering_child(pid_path: str) -> int:
    """Fork a child that waits until killed, record its pid, return it.

    The child inherits whatever this worker has open (its result pipe
    included, unless the core's at-fork hook closes it)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the grandchild, killed by the test
        try:
            while True:
                signal.pause()
        finally:
            os._exit(0)
    with open(pid_path, "w") as f:
        f.write(str(pid))
    return pid


def environment() -> dict[str, str]:
    return dict(os.environ)


def nested_getenv_after_setting(js: Any, key: str, value: str) -> str | None:
    """Set ``key`` in this worker's environment, then read it in a nested
    worker."""
    os.environ[key] = value
    return js.submit(getenv, args=(key,)).result()

"""Tasks and helpers for the JobserverExecutor tests.

Tasks live at module level so that spawn and forkserver workers can import
them.  Blocking tasks wait on a FIFO instead of sleeping: ``Gate`` opens the
write end (which waits until the worker has opened the read end, so it also
proves the worker is running) and closing it releases the worker.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from typing import Any

import pytest
from jobserver import Blocked, Jobserver

#: Forking from the dispatcher thread is what CPython 3.12+ warns about; the
#: executor documents the choice (docs/executor.md) and the tests that use
#: the fork start method on purpose silence exactly that warning.
FORK_WARNING = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):"
    "DeprecationWarning"
)

#: Generous bound for anything that should happen "soon" on a loaded machine.
PATIENCE = 60.0

INITIALIZED: Any = None


# --- plain tasks -------------------------------------------------------------------


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def raise_runtime_error() -> None:
    raise RuntimeError(123)  # marker: the line the traceback must show


def raise_system_exit(code: int) -> None:
    sys.exit(code)


def exit_now(code: int) -> None:
    os._exit(code)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(PATIENCE)


def getpid() -> int:
    return os.getpid()


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def sleep_and_print(seconds: float, text: str) -> None:
    time.sleep(seconds)
    print(text, flush=True)


def big_bytes(size: int) -> bytes:
    return os.urandom(64) * (size // 64) + b"x" * (size % 64)


def length(data: bytes) -> int:
    return len(data)


def append_line(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")


def record_pid_then_sleep(path: str, seconds: float) -> int:
    append_line(path, str(os.getpid()))
    time.sleep(seconds)
    append_line(path, f"done {os.getpid()}")
    return os.getpid()


# --- initializers ---------------------------------------------------------------


def init_from_file(path: str) -> None:
    """Refuse when the file says "fail", else remember what it says."""
    global INITIALIZED
    with open(path) as f:
        text = f.read()
    if text == "fail":
        raise ValueError("the initializer refused")
    INITIALIZED = text


def get_initialized() -> Any:
    return INITIALIZED


# --- blocking on a gate -----------------------------------------------------------


def wait_on_gate(directory: str, value: Any = None) -> Any:
    """Announce this worker on the gate, block until it opens; return ``value``.

    Event-driven: the worker polls the ``release`` FIFO, which becomes
    readable when the test releases the gate (a byte) or closes it (EOF).
    """
    import select

    try:
        fd = os.open(os.path.join(directory, "started"), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # the gate is closed already
        pass
    else:
        os.write(fd, b"s")
        os.close(fd)
    fd = os.open(os.path.join(directory, "release"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll()
    finally:
        os.close(fd)
    return value


class Gate:
    """Holds workers running ``wait_on_gate`` until released (or closed).

    The test keeps both FIFOs open read-write, so workers never block opening
    them and a release is never lost, whether the worker arrives before or
    after it.
    """

    def __init__(self, directory: str) -> None:
        os.mkdir(directory)
        self.path = directory
        os.mkfifo(os.path.join(directory, "started"))
        os.mkfifo(os.path.join(directory, "release"))
        self._started = os.open(
            os.path.join(directory, "started"), os.O_RDWR | os.O_NONBLOCK
        )
        self._release = os.open(
            os.path.join(directory, "release"), os.O_RDWR | os.O_NONBLOCK
        )

    def wait_for_worker(self, count: int = 1, timeout: float = PATIENCE) -> None:
        """Block until ``count`` more workers announced themselves."""
        import select

        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._started, select.POLLIN)
        while count > 0:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise AssertionError(f"no worker reached the gate within {timeout} s")
            count -= len(os.read(self._started, count))

    def release(self) -> None:
        """Let every worker through, now and later."""
        if self._release >= 0:
            os.write(self._release, b"r")

    def close(self) -> None:
        """Release and close (workers arriving later pass at once)."""
        for fd in (self._started, self._release):
            if fd >= 0:
                os.close(fd)
        self._started = self._release = -1


# --- slot sharing ------------------------------------------------------------------


def record_interval(path: str, seconds: float) -> None:
    start = time.monotonic_ns()
    time.sleep(seconds)
    end = time.monotonic_ns()
    with open(path, "a") as f:
        f.write(f"{start} {end}\n")


def nested_outer(js: Jobserver, path: str, seconds: float, inner: int) -> int:
    """Record this worker's whole life while it fans out ``inner`` nested
    tasks on ``js`` (run inline when no slot is free, the documented pattern).
    Returns how many ran as separate workers."""
    start = time.monotonic_ns()
    futures = []
    for _ in range(inner):
        try:
            futures.append(js.submit(record_interval, args=(path, seconds), timeout=0))
        except Blocked:
            record_interval(path, seconds)
    for future in futures:
        future.result()
    end = time.monotonic_ns()
    with open(path, "a") as f:
        f.write(f"{start} {end}\n")
    return len(futures)


# --- pickling failures (the CPython deadlock battery) ------------------------------


class FailOnPickle:
    def __reduce__(self) -> Any:
        raise pickle.PicklingError("refusing to be pickled")


def _raise_on_rebuild() -> None:
    raise RuntimeError("refusing to be rebuilt")


def _exit_on_rebuild() -> None:
    os._exit(1)


def _system_exit_on_rebuild() -> None:
    raise SystemExit(7)


class FailOnUnpickle:
    def __reduce__(self) -> Any:
        return (_raise_on_rebuild, ())


class CrashOnUnpickle:
    def __reduce__(self) -> Any:
        return (_exit_on_rebuild, ())


class SystemExitOnUnpickle:
    def __reduce__(self) -> Any:
        return (_system_exit_on_rebuild, ())


class CrashOnPickle:
    def __reduce__(self) -> Any:
        os._exit(1)


def identity(value: Any) -> Any:
    return value


def return_instance(cls: type) -> Any:
    return cls()


class ErrorWithLock(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_error_with_lock() -> None:
    raise ErrorWithLock()


def lambda_free_closure_factory(offset: int) -> Any:
    def add_offset(x: int) -> int:
        return x + offset

    return add_offset

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

from jobserver import Blocked, Jobserver

#: Forking from the dispatcher thread is what CPython 3.12+ warns about; the
#: executor documents the choice (docs/executor.md) and the tests that use
#: the fork start method on purpose silence exactly that warning.  (A string
#: for ``pytest.mark.filterwarnings``: workers import this module, and
#: importing pytest there would cost every spawn/forkserver task dearly.)
FORK_WARNING_FILTER = (
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


class Holder:
    """An object whose bound method is submitted (and must not be kept)."""

    def method(self) -> int:
        return 1


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
    """Block until the gate in ``directory`` opens; return ``value``.

    Event-driven: the worker connects to the gate's listening socket (which
    tells the test it is running), then, unless the gate's "closed" marker
    is already gone, waits for the test to end the connection.
    """
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect("\0" + directory)
        except (ConnectionError, FileNotFoundError):
            return value  # the gate is gone: open
        if not os.path.exists(os.path.join(directory, "closed")):
            return value
        try:
            conn.recv(1)
        except ConnectionError:
            pass
    return value


def wait_until(condition: Any, timeout: float = PATIENCE) -> None:
    """Poll ``condition()`` until it is true, for state that has no event to
    wait on (a Future's ``running()``); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{condition!r} stayed false for {timeout} s")
        time.sleep(0.001)


class Gate:
    """Holds workers running ``wait_on_gate`` until it is opened.

    A listening Unix socket (abstract namespace) plus a "closed" marker file.
    Opening the gate removes the marker, then accepts and closes every
    connection: a worker that connected before sees end-of-file, one that
    connects after finds no marker.  No ordering of worker and test can leave
    a worker behind, even when forked workers inherited the listener.
    """

    def __init__(self) -> None:
        import socket
        import tempfile

        self.path = tempfile.mkdtemp(prefix="jobserver-gate-")
        self._marker = os.path.join(self.path, "closed")
        open(self._marker, "w").close()
        self._listener: Any = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind("\0" + self.path)
        self._listener.listen(128)
        self._accepted: list[Any] = []
        self._open = False

    def wait_for_worker(self, count: int = 1, timeout: float = PATIENCE) -> None:
        """Block until ``count`` more workers reached the gate."""
        import socket

        self._listener.settimeout(timeout)
        for _ in range(count):
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                raise AssertionError(
                    f"no worker reached the gate within {timeout} s"
                ) from None
            self._accepted.append(conn)

    def release(self) -> None:
        """Open the gate for good: let every worker through, now and later."""
        if self._open:
            return
        self._open = True
        os.unlink(self._marker)
        self._listener.setblocking(False)
        while True:
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                break
            self._accepted.append(conn)
        for conn in self._accepted:
            conn.close()
        self._accepted.clear()

    def close(self) -> None:
        """Open the gate and release its resources."""
        self.release()
        self._listener.close()
        os.rmdir(self.path)


# --- slot sharing ------------------------------------------------------------------


def record_interval(path: str, seconds: float) -> None:
    start = time.monotonic_ns()
    time.sleep(seconds)
    end = time.monotonic_ns()
    with open(path, "a") as f:
        f.write(f"{start} {end}\n")


def nested_outer(js: Jobserver, path: str, seconds: float, inner: int) -> int:
    """Record this worker's whole life while it fans out ``inner`` nested
    tasks on ``js`` (run inline when no slot is free, the documented pattern;
    inline work uses this worker's own slot, so it records no interval).
    Returns how many ran as separate workers."""
    start = time.monotonic_ns()
    futures = []
    for _ in range(inner):
        try:
            futures.append(js.submit(record_interval, args=(path, seconds), timeout=0))
        except Blocked:
            time.sleep(seconds)
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


def segfault_quietly() -> None:
    """Crash with SIGSEGV without faulthandler's report on stderr."""
    import ctypes
    import faulthandler

    faulthandler.disable()
    ctypes.string_at(0)


class PatchedHandle:
    """A stand-in for one executor's Jobserver handle with some methods
    replaced (``name=fn``; ``fn`` gets the real handle first); everything
    else goes to the real handle.  Patches one executor, not the class."""

    def __init__(self, inner: Jobserver, **replacements: Any) -> None:
        self._inner = inner
        self._replacements = replacements

    def __getattr__(self, name: str) -> Any:
        replacement = self._replacements.get(name)
        if replacement is None:
            return getattr(self._inner, name)
        return lambda *args, **kwargs: replacement(self._inner, *args, **kwargs)


_WARMED: set[str] = set()


def warm_up(methods: list[str]) -> None:
    """Run one task per start method through a plain Jobserver, once.

    That starts whatever long-lived helpers the core uses for the method
    (multiprocessing's fork server and resource tracker, the core's template
    processes) before tests that count descriptors, and before two threads
    could race to start them.
    """
    for method in methods:
        if method not in _WARMED:
            Jobserver(method, slots=1).submit(abs, args=(-1,)).result(PATIENCE)
            _WARMED.add(method)


# --- reused workers ------------------------------------------------------------------

INIT_COUNT = 0
LEFT_BEHIND: Any = None


def count_init() -> None:
    global INIT_COUNT
    INIT_COUNT += 1


def pid_and_init_count() -> tuple[int, int]:
    return os.getpid(), INIT_COUNT


def leave_behind(value: Any) -> Any:
    """Set a module global in the worker; return what the previous task left."""
    global LEFT_BEHIND
    previous, LEFT_BEHIND = LEFT_BEHIND, value
    return previous


def init_with_queue(queue: Any) -> None:
    global LEFT_BEHIND
    LEFT_BEHIND = queue


def put_on_init_queue(value: Any) -> None:
    LEFT_BEHIND.put(value)


def getpid_of(_: Any) -> int:
    return os.getpid()

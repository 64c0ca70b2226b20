"""Tasks and helpers for the jobserver_extras tests.

Tasks live at module level so that spawn and forkserver children can import
them.  Synchronisation between the test and its workers uses FIFOs (named
pipes): a path reaches a worker under every start method, and the reading
side can wait for data with ``poll`` and a timeout instead of sleeping.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import threading
import time
from pathlib import Path
from typing import Any

from jobserver import Blocked, Future, Jobserver

#: How long any handshake may take before a test gives up.  Generous: the
#: machine may be loaded, and a passing run never waits this long.
PATIENCE = 60.0


# --- FIFO handshakes -------------------------------------------------------------


class FifoReader:
    """The reading end of a FIFO.

    Opened read-write (Linux allows it on a FIFO): this process then counts
    as a writer too, so the FIFO never reports end-of-file between two
    writers, and a writer never finds it without a reader.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        os.mkfifo(self.path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        self._buffer = b""

    def read_line(self, timeout: float = PATIENCE) -> str:
        """The next line written to the FIFO; ``TimeoutError`` if none in time."""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"nothing arrived on {self.path} in {timeout} s")
            if not poller.poll(left * 1000):
                continue
            try:
                self._buffer += os.read(self.fd, 4096)
            except BlockingIOError:
                continue
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FifoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fifo_send(path: str, line: str) -> None:
    """Write one line to a FIFO whose reader is open (waits until it is)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def fifo_send_nowait(path: str, line: str) -> bool:
    """Write one line if a reader is open; ``False`` if there is none."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    return True


class ProcessWatch:
    """Observes whether a process (not necessarily our child) has exited."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self.fd = os.pidfd_open(pid)
            except OSError:
                self.fd = None

    def _gone_now(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        return state in ("Z", "X")  # a zombie has exited already

    def exited(self, timeout: float) -> bool:
        """Whether the process exits within ``timeout`` seconds."""
        if self.fd is not None:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            return bool(poller.poll(max(0.0, timeout) * 1000))
        deadline = time.monotonic() + timeout
        while not self._gone_now():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)  # polling a state nothing can notify us of
        return True

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Signal the process (through the pidfd: never a reused pid)."""
        if self.fd is not None:
            signal.pidfd_send_signal(self.fd, signum)
        else:
            os.kill(self.pid, signum)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> ProcessWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- parent-death signal -----------------------------------------------------------


def report_pid_then_wait(report: str, go: str | None = None) -> None:
    """Report our pid; optionally wait for "go" and report "alive"; then wait
    to be killed (returning after PATIENCE seconds at most)."""
    fifo_send(report, str(os.getpid()))
    if go is not None:
        fd = os.open(go, os.O_RDONLY)  # waits for the writer
        try:
            os.read(fd, 1)
        finally:
            os.close(fd)
        fifo_send(report, "alive")
    time.sleep(PATIENCE)


def middle_launches(js: Jobserver, report: str) -> None:
    """Report our pid, launch a long worker through ``js`` (which reports
    its own) and wait for it (until killed)."""
    fifo_send(report, str(os.getpid()))
    future = js.submit(report_pid_then_wait, args=(report,), consume=0)
    future.wait()


def middle_launches_from_thread(js: Jobserver, report: str, go: str) -> None:
    """Launch from a thread that then exits; let the worker prove it lived
    through that; then wait (until killed)."""
    fifo_send(report, str(os.getpid()))
    futures: list[Future[Any]] = []

    def launch() -> None:
        futures.append(js.submit(report_pid_then_wait, args=(report, go), consume=0))

    thread = threading.Thread(target=launch)
    thread.start()
    thread.join()
    fifo_send(go, "go")  # the launching thread is gone by now
    futures[0].wait()


def pdeathsig_state() -> tuple[int, int]:
    """(parent-death signal set by prctl, armed lifeline descriptors)."""
    import fcntl

    from jobserver_extras import _pdeathsig, current_pdeathsig

    armed = 0
    for fd in _pdeathsig._inherited:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            owner = fcntl.fcntl(fd, fcntl.F_GETOWN)
        except OSError:
            continue
        if flags & os.O_ASYNC and owner == os.getpid():
            armed += 1
    return current_pdeathsig(), armed


def apply_with_dead_launcher(signum: int) -> str:
    """Set up a parent-death signal whose launcher is already gone."""
    from jobserver_extras import _pdeathsig

    read_fd, write_fd = os.pipe()
    os.close(write_fd)  # the "launcher" has exited
    launch = _pdeathsig._Launch(os.getppid(), False, read_fd, os.getpid())
    _pdeathsig._apply(signum, launch)
    return "survived"


def apply_without_any_watch(signum: int) -> str:
    """A launch the worker cannot watch: not its parent, no lifeline."""
    from jobserver_extras import _pdeathsig

    launch = _pdeathsig._Launch(os.getppid(), False, None, os.getpid())
    _pdeathsig._apply(signum, launch)
    return "survived"


def open_fd_targets() -> list[tuple[str, int]]:
    """(what each open descriptor refers to, its access mode)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            with open(f"/proc/self/fdinfo/{name}") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        found.append((target, int(fields["flags"].strip(), 8) & os.O_ACCMODE))
    return found


def call_preexec_then(preexec: Any, fn: Any, *args: Any) -> Any:
    """Run ``preexec`` in this worker by hand, then ``fn(*args)``."""
    manager = preexec()
    if manager is None:
        return fn(*args)
    with manager:
        return fn(*args)


# --- RAM gate ----------------------------------------------------------------------


def write_meminfo(path: str, total: int, available: int) -> None:
    """Atomically write a fake /proc/meminfo (figures in bytes, stored in kB)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(
            f"MemTotal:       {total // 1024} kB\n"
            f"MemFree:        {available // 1024} kB\n"
            f"MemAvailable:   {available // 1024} kB\n"
            "Buffers:               0 kB\n"
        )
    os.replace(tmp, path)


def submit_through(js: Jobserver, timeout: float | None) -> Any:
    """From a worker: submit through ``js`` (no slot); 'blocked' on Blocked."""
    try:
        future = js.submit(os.getpid, consume=0, timeout=timeout)
    except Blocked:
        return "blocked"
    return future.result()


# --- logging -----------------------------------------------------------------------


def log_messages(name: str, count: int, size: int = 0) -> int:
    """Log ``count`` INFO records (padded to ``size``), one DEBUG, one error."""
    log = logging.getLogger(name)
    pad = "x" * size
    for i in range(count):
        log.info("message %d from %d %s", i, os.getpid(), pad)
    log.debug("debug is below the level")
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("with a traceback")
    return os.getpid()


def log_then_die(name: str) -> None:
    logging.getLogger(name).warning("last words from %d", os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


def log_through_memory_handler(path: str) -> None:
    """Log through a buffering handler that only a flush empties."""
    import logging.handlers

    target = logging.FileHandler(path)
    buffered = logging.handlers.MemoryHandler(capacity=1000, target=target)
    log = logging.getLogger("extras.buffered")
    log.propagate = False
    log.addHandler(buffered)
    log.warning("buffered line")


def root_logging_state() -> tuple[int, list[str]]:
    root = logging.getLogger()
    return root.level, [type(h).__name__ for h in root.handlers]


def log_to_stderr(name: str) -> None:
    logging.getLogger(name).warning("to stderr from the worker")


# --- advisory lock -----------------------------------------------------------------


class LockHolder:
    """Another process holding an exclusive flock on ``path`` until released.

    Not this process: a forked worker would inherit our descriptor, and with
    it our lock, and then wait for itself.  Released through a FIFO opened
    only at release time, so no worker can hold the release channel open.
    """

    SCRIPT = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdout.close()\n"
        "open(sys.argv[2]).read()\n"
    )

    def __init__(self, path: str) -> None:
        import subprocess
        import sys

        self.release_path = f"{path}.release"
        os.mkfifo(self.release_path)
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, path, self.release_path],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        with self.process.stdout:
            assert self.process.stdout.readline() == b"locked\n"

    def release(self) -> None:
        if self.process.returncode is None:
            fifo_send(self.release_path, "release")
            self.process.wait(PATIENCE)

    def __enter__(self) -> LockHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.returncode is None and exc[0] is not None:
            self.process.kill()
            self.process.wait()
        self.release()


def locked_rendezvous(ready: str, go: str, tag: str) -> str:
    """Report ``tag`` on ``ready``; wait (bounded) for a line on ``go``."""
    fd = os.open(go, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fifo_send(ready, tag)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(PATIENCE * 1000):
            return "no go"
        return "went"
    finally:
        os.close(fd)


def lock_copy_in_forked_child(path: str) -> bool:
    """Hold an AdvisoryLock; does a child forked meanwhile keep the lock fd?"""
    from jobserver_extras import AdvisoryLock, _flock

    with AdvisoryLock(path)():
        (fd,) = _flock._held
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.fstat(fd)
                code = 1  # still open: the child would keep the lock
            except OSError:
                code = 0
            os._exit(code)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


# --- resource limits ---------------------------------------------------------------


def allocate(nbytes: int) -> int:
    return len(bytearray(nbytes))


def burn_cpu(limit: float) -> float:
    """Spin until this process used ``limit`` CPU seconds (a safety bound)."""
    start = time.process_time()
    while time.process_time() - start < limit:
        sum(range(10000))
    return time.process_time() - start


def getrlimits(names: list[str]) -> dict[str, tuple[int, int]]:
    import resource

    return {name: resource.getrlimit(getattr(resource, name)) for name in names}


def open_until_refused(limit: int) -> int:
    """Open /dev/null until refused (at most ``limit`` times); return errno."""
    fds = []
    try:
        for _ in range(limit):
            fds.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        return exc.errno or -1
    finally:
        for fd in fds:
            os.close(fd)
    return 0


def vm_size() -> int:
    """This process's virtual memory size in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


# --- composition -------------------------------------------------------------------


def note(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")


class Noting:
    """A context-manager factory that notes its entry and exit (picklable)."""

    def __init__(self, path: str, name: str, fail_on_enter: bool = False) -> None:
        self.path = path
        self.name = name
        self.fail_on_enter = fail_on_enter

    def __call__(self) -> Noting:
        return self

    def __enter__(self) -> Noting:
        if self.fail_on_enter:
            note(self.path, f"fail {self.name}")
            raise RuntimeError(f"{self.name} refused to enter")
        note(self.path, f"enter {self.name}")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        what = exc_type.__name__ if exc_type is not None else "-"
        note(self.path, f"exit {self.name} {what}")


class NotingCall:
    """A plain preexec (returns None) that notes the call (picklable)."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name

    def __call__(self) -> None:
        note(self.path, f"call {self.name}")


def note_task(path: str, fail: bool = False) -> str:
    note(path, "task")
    if fail:
        raise ValueError("task failed")
    return "done"


def read_lines(path: str | Path) -> list[str]:
    with open(path) as f:
        return f.read().splitlines()

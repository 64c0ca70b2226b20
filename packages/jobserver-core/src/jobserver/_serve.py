"""``jobserver serve``: a standing FIFO jobserver for a machine or a CI runner.

One long-lived process owns a FIFO of tokens; any shell joins the limit by
exporting the ``MAKEFLAGS`` line the server prints, and every program in it
that speaks GNU Make's jobserver protocol (``make``, ``ninja`` >= 1.13,
``cargo``, Python programs using ``Jobserver()``) takes its slots from it.

Like ``make -jN`` (and ``jobserver -j N -- CMD``), ``serve -j N`` puts N-1
tokens in the FIFO: the program at the top of a build owns one implicit
slot, so one build under the server runs at most N jobs.  Every further
top-level program running at the same time brings its own implicit slot,
as the protocol grants each client one (docs/machine-wide.md).

The server keeps both ends of the FIFO open (so joining never blocks and a
client never sees end-of-file) and watches, with ``poll``, its control
socket (``PATH.control``, a Unix socket, mode 0600), a self-pipe woken by
signals, and -- while the limit is being lowered -- the FIFO itself.

Control (``jobserver status|limit|stop``, or the socket directly: one line
in, ``key: value`` lines out):

* ``status``: the limit, the tokens in circulation, free (in the FIFO),
  in use (held by clients) and still to be removed;
* ``limit N``: raising writes the new tokens at once; lowering removes
  tokens from the FIFO as they come back (the server competes for them
  with waiting clients, so under heavy demand it can take a few releases);
* ``stop [GRACE]``: stop serving (the FIFO and socket are removed, so no
  new client can join), wait up to GRACE seconds for tokens in use to come
  back, then report the ones that did not, as GNU Make complains about
  lost tokens.  SIGINT, SIGTERM and SIGHUP do the same with ``--grace``;
  SIGUSR1 prints the status to stderr.

A plain FIFO cannot tell who holds a token, so the server cannot take back
a token from a client that died holding it (SIGKILL, a crash of the
process that took it): it stays "in use" until the server stops, and the
shutdown report counts it as lost.
"""

from __future__ import annotations

import errno
import os
import select
import shlex
import shutil
import signal
import socket
import stat
import tempfile
import time
from typing import Any, TextIO

from ._makeflags import compose
from ._slots import TOKEN, _bytes_waiting, _grow_pipe, open_fifo

__all__ = ["CONTROL_SUFFIX", "Server", "control_path", "request"]

#: The control socket of the FIFO at PATH is PATH + CONTROL_SUFFIX.
CONTROL_SUFFIX = ".control"
#: How long the server waits for a control client to send its request.
_CLIENT_TIMEOUT = 5.0
#: How often the server looks at the FIFO while waiting for tokens at shutdown.
_GRACE_POLL = 0.05
#: The descriptors a shell opens for the fd form (``--print fds``).
SHELL_FDS = (8, 9)


def control_path(fifo_path: str) -> str:
    return fifo_path + CONTROL_SUFFIX


class Server:
    """The state of one standing jobserver (see the module docstring)."""

    def __init__(self, limit: int, fifo_path: str | None = None) -> None:
        self.limit = limit
        self._private_dir: str | None = None
        if fifo_path is None:
            self._private_dir = tempfile.mkdtemp(prefix="jobserver-serve-")
            os.chmod(self._private_dir, 0o700)
            fifo_path = os.path.join(self._private_dir, "fifo")
        self.fifo_path = os.path.abspath(fifo_path)
        self.control_path = control_path(self.fifo_path)
        self._listener: socket.socket | None = None
        self.read_fd = self.write_fd = -1
        #: Tokens written into the FIFO and not removed again.
        self.circulating = 0
        self.stopping = False
        self._cut_short = False
        self._stop_grace: float | None = None
        self._status_wanted = False
        self._wake_r = self._wake_w = -1
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    # --- setup and teardown ---------------------------------------------------

    def _create(self) -> None:
        old_umask = os.umask(0o077)
        try:
            try:
                os.mkfifo(self.fifo_path, 0o600)
            except FileExistsError:
                raise FileExistsError(
                    errno.EEXIST,
                    f"{self.fifo_path} exists (another server, or one that was "
                    "killed: remove it)",
                ) from None
            self._created_fifo = True
            self.read_fd, self.write_fd = open_fifo(self.fifo_path, blocking=False)
            if os.path.lexists(self.control_path):
                raise FileExistsError(
                    errno.EEXIST, f"{self.control_path} exists: remove it"
                )
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener = listener
            listener.bind(self.control_path)
            listener.listen(8)
            listener.setblocking(False)
        finally:
            os.umask(old_umask)
        if self.limit - 1 > 4096:
            _grow_pipe(self.write_fd, self.limit)
        self._set_tokens()

    def close(self) -> None:
        """Remove the FIFO and the socket and close everything (idempotent)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            _unlink(self.control_path)
        if getattr(self, "_created_fifo", False):
            self._created_fifo = False
            _unlink(self.fifo_path)
        for fd in (self.read_fd, self.write_fd, self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.read_fd = self.write_fd = self._wake_r = self._wake_w = -1
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    # --- tokens ------------------------------------------------------------------

    @property
    def target(self) -> int:
        """Tokens the FIFO should have in circulation: the limit less the
        implicit slot of the program at the top."""
        return self.limit - 1

    def free(self) -> int:
        return _bytes_waiting(self.read_fd)

    def _set_tokens(self) -> None:
        """Write missing tokens; remove surplus ones that are free now."""
        missing = self.target - self.circulating
        if missing > 0:
            view = memoryview(TOKEN * missing)
            while view:
                written = os.write(self.write_fd, view)
                self.circulating += written
                view = view[written:]
        self._absorb()

    def _absorb(self) -> None:
        surplus = self.circulating - self.target
        while surplus > 0 and not self.stopping:
            try:
                got = os.read(self.read_fd, surplus)
            except BlockingIOError:
                return
            if not got:  # pragma: no cover - we hold a write end
                return
            self.circulating -= len(got)
            surplus -= len(got)

    def status(self) -> dict[str, Any]:
        free = self.free()
        return {
            "fifo": self.fifo_path,
            "pid": os.getpid(),
            "limit": self.limit,
            "tokens": self.circulating,
            "free": free,
            "in-use": self.circulating - free,
            "to-remove": max(0, self.circulating - self.target),
            "state": "stopping" if self.stopping else "serving",
        }

    # --- what clients export -------------------------------------------------------

    def makeflags(self, form: str = "fifo") -> str:
        if form == "fifo":
            auth = f"fifo:{self.fifo_path}"
        else:
            auth = "{},{}".format(*SHELL_FDS)
        return compose("", f"--jobserver-auth={auth}", self.limit)

    def shell_line(self, form: str = "fifo") -> str:
        """One line of POSIX shell that joins this jobserver."""
        line = f"export MAKEFLAGS={shlex.quote(self.makeflags(form))}"
        if form == "fds":
            path = shlex.quote(self.fifo_path)
            r, w = SHELL_FDS
            line = f"exec {r}<{path} {w}>{path}; {line}"
        return line

    # --- serving -----------------------------------------------------------------

    def install_signals(self) -> dict[int, Any]:
        """Signal handlers that wake the loop; returns the old ones."""
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        old: dict[int, Any] = {}

        def stop(signum: int, frame: Any) -> None:
            if self.stopping:
                self._cut_short = True  # a second signal: stop waiting
            self.stopping = True

        def want_status(signum: int, frame: Any) -> None:
            self._status_wanted = True

        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is not None:
                old[signum] = signal.signal(signum, stop)
        if hasattr(signal, "SIGUSR1"):
            old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, want_status)
        return old

    def serve(self, grace: float, err: TextIO) -> int:
        """Serve until stopped; return the exit status (0: every token came
        back, 1: some did not)."""
        stopper: socket.socket | None = None
        while not self.stopping:
            if self._status_wanted:
                self._status_wanted = False
                err.write(_format(self.status()))
                err.flush()
            poller = select.poll()
            assert self._listener is not None
            poller.register(self._listener.fileno(), select.POLLIN)
            if self._wake_r >= 0:
                poller.register(self._wake_r, select.POLLIN)
            if self.circulating > self.target:
                poller.register(self.read_fd, select.POLLIN)
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    _drain(self._wake_r)
                elif fd == self.read_fd:
                    self._absorb()
                else:
                    stopper = self._accept()
                if self._stop_requested():
                    break
        if self._stop_grace is not None:
            grace = self._stop_grace
        report = self.shutdown(grace)
        text = _format(report)
        if stopper is not None:
            try:
                stopper.sendall(text.encode())
            except OSError:
                pass
            stopper.close()
        err.write(text)
        lost = int(report["lost"])
        if lost > 0:
            err.write(
                f"jobserver: warning: {lost} token(s) never came back (a client "
                "still running, or one that died holding them)\n"
            )
        elif lost < 0:
            err.write(
                f"jobserver: warning: {-lost} token(s) too many came back (a "
                "client gave back more than it took)\n"
            )
        err.flush()
        return 0 if lost == 0 else 1

    def _stop_requested(self) -> bool:
        return self.stopping  # (a signal handler or a request may set it)

    def _accept(self) -> socket.socket | None:
        """Answer one control client; return it if it asked to stop."""
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return None
        try:
            conn.setblocking(True)
            conn.settimeout(_CLIENT_TIMEOUT)
            request = _read_line(conn)
            words = request.split()
            if not words:
                reply = "error: empty request\n"
            elif words[0] == "status" and len(words) == 1:
                reply = _format(self.status())
            elif words[0] == "limit" and len(words) == 2:
                reply = self._change_limit(words[1])
            elif words[0] == "stop" and len(words) <= 2:
                if len(words) == 2:
                    grace = _grace(words[1])
                    if grace is None:
                        raise _BadRequest(f"error: bad grace period {words[1]!r}\n")
                    self._stop_grace = grace
                self.stopping = True
                conn.settimeout(None)
                return conn
            else:
                reply = f"error: unknown request {request.strip()!r}\n"
            conn.sendall(reply.encode())
        except _BadRequest as exc:
            try:
                conn.sendall(str(exc).encode())
            except OSError:
                pass
        except OSError:
            pass
        conn.close()
        return None

    def _change_limit(self, text: str) -> str:
        try:
            limit = int(text)
        except ValueError:
            return f"error: not a number: {text!r}\n"
        if limit < 1:
            return f"error: the limit must be at least 1, not {limit}\n"
        if limit - 1 > 4096:
            try:
                _grow_pipe(self.write_fd, limit)
            except ValueError as exc:
                return f"error: {exc}\n"
        self.limit = limit
        self._set_tokens()
        return _format(self.status())

    def shutdown(self, grace: float) -> dict[str, Any]:
        """Stop serving; wait up to ``grace`` s for tokens; the final report."""
        self.stopping = True
        # Nobody new can join; clients that have the FIFO open keep it alive.
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            _unlink(self.control_path)
        if getattr(self, "_created_fifo", False):
            self._created_fifo = False
            _unlink(self.fifo_path)
        deadline = time.monotonic() + grace
        while (
            self.circulating - self.free() > 0
            and time.monotonic() < deadline
            and not self._cut_short
        ):
            time.sleep(min(_GRACE_POLL, max(0.0, deadline - time.monotonic())))
        free = self.free()
        return {
            "fifo": self.fifo_path,
            "limit": self.limit,
            "tokens": self.circulating,
            "returned": free,
            "lost": self.circulating - free,
            "state": "stopped",
        }


class _BadRequest(Exception):
    pass


def _grace(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if value != value or value < 0:
        return None
    return value


def _format(values: dict[str, Any]) -> str:
    return "".join(f"{key}: {value}\n" for key, value in values.items())


def _read_line(conn: socket.socket, limit: int = 1024) -> str:
    data = b""
    while b"\n" not in data and len(data) < limit:
        chunk = conn.recv(limit)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace")


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def request(fifo_path: str, line: str, timeout: float | None = 30.0) -> str:
    """Send one control request to the server of ``fifo_path``; its reply."""
    path = control_path(fifo_path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, f"no jobserver serves {fifo_path} (no {path})"
        ) from None
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.ENOTSOCK, f"{path} is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(path)
        conn.sendall(line.encode() + b"\n")
        chunks = []
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def parse_reply(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            values[key] = value
    return values

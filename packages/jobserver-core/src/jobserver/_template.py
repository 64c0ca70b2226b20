"""A pre-warmed template process that forks workers for spawn and forkserver.

Starting a fresh interpreter (spawn) or asking multiprocessing's fork server
for a process costs tens of milliseconds per task.  Instead, each resource
set (the slots and bookkeeping sibling handles share) with a spawn/forkserver
context starts one small *template* interpreter, lazily on its first launch,
closed with the resource set, and prepares it the way multiprocessing prepares a
spawned child (``sys.path``, working directory, ``__main__`` imported as
``__mp_main__``).  Per submission the parent sends the template, over a Unix
socket::

    request   !QB length and a mask of the standard streams sent, then
              the body: !Q length and the parent's os.environ as
              NUL-separated ``key=value`` bytes, then a pickle of
              (work, signal mask)
    fds       SCM_RIGHTS on the first byte: the result pipe's write end,
              the parent's current fds 0-2 (so that a worker writes where
              a spawned child would, even after the parent redirected
              them), then every descriptor the pickle refers to (slot pools)

The template forks; the fork unpickles the request *in the worker* (the
template never runs user code beyond ``__main__``'s import), restores the
parent's signal mask, and runs ``worker_main`` as a forked worker would.
The environment is the one thing the template applies itself: to its own
``os.environ``, before forking, and only when a request brings one that
differs from the last it applied (a comparison of bytes).  So the worker
inherits it, and a worker costs nothing for it while the parent's
environment stays the same (rebuilding ``os.environ`` in every worker was
about a quarter of a worker's copy-on-write faults).

The template reports back fixed-size records::

    LAUNCHED pid     in reply to each request, in request order, with the
                     worker's pidfd attached (SCM_RIGHTS)
    FAILED   errno   the fork failed (or the pidfd could not be opened:
                     the worker was killed and reaped first); the parent
                     raises OSError
    EXITED   pid, status   after reaping that worker

Signals go only through that pidfd.  The template is the worker's parent
and may reap it (and the kernel reuse its pid) before the parent has read
the EXITED record, so a pid, or a pidfd the parent opened from it, could
name an unrelated process.  The template opens the pidfd right after
forking, when the worker cannot have been reaped yet, and closes its own
copy once the record went out (each record and its descriptor are queued
together, and the descriptor goes with the first byte of its record).  The
parent keeps it on the worker until the worker is closed; signalling a
worker that is gone raises ProcessLookupError, which means "already
exited".

Slot discipline (a slot goes back only after its worker was reaped): the
template keeps its own copy of each worker's result-pipe write end and closes
it only after reaping the worker and sending EXITED.  So the parent sees
end-of-file on a result pipe only once the worker is gone for good, and the
EXITED record is already waiting on the socket when it looks.

The template never holds a token: it is started with ``close_fds`` and closes
every received descriptor except the result pipe's write end right after
forking.  It ignores SIGINT (as multiprocessing's fork server does).

Nested submissions go through the same template.  Its workers inherit one
end of a datagram socketpair, the *rendezvous* (close-on-exec, closed in any
process a worker forks).  A worker's first nested launch makes a fresh
stream socketpair and sends one end through the rendezvous: that is its own
connection to the template, speaking the same protocol as the parent's (so a
worker that never nests costs the template nothing more).  The template
serves every connection alike and sends each EXITED record to the client
that asked for that worker.  So a
nested launch costs a fork, not an interpreter start, nested workers take
the same slots (their pools travel in the request as before), and a nested
worker's exit status reaches only the worker that launched it.  The template
never blocks on a client: it reads requests piece by piece, so a client
stopped halfway through one stalls nobody else, and it queues the records a
client does not read (stopped, or busy) and sends them, in order, when poll
reports that client writable again.  A client that leaves too much unread
has its requests served only once it reads (``_Connection``), so its queue
stays bounded.  A forked worker keeps no other client's socket or
half-received descriptors.  When a client's connection closes (a worker
killed with nested work running), its workers are left to run, as a forked
worker's children would be; the template reaps them as usual.  It exits when
every connection is closed (the parent's and every worker's) and its last
worker was reaped.  A process that is no such worker (the parent, or a
process a worker forked) starts its own template.
"""

from __future__ import annotations

import array
import atexit
import collections
import errno
import multiprocessing.context
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
import weakref

from . import _forkhooks, _launch, _log, _signals

try:  # The C functions: signal.signal wraps them in enum conversions, which
    # cost a freshly forked worker a dozen copy-on-write faults more.
    import _signal as _c_signal  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    _c_signal = signal
_SIGCHLD = int(signal.SIGCHLD)
_SIGINT = int(signal.SIGINT)
_SIG_DFL = int(signal.SIG_DFL)

__all__ = ["TemplateLauncher", "available"]

_logger = _log.get_logger("jobserver.template")

_HEADER = struct.Struct("!Q")
_REQUEST = struct.Struct("!QB")  # payload length, which of fds 0-2 came along
_RECORD = struct.Struct("!Bqi")
LAUNCHED, FAILED, EXITED = 0, 1, 2
_MAX_FDS = 250
_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
#: Room for the descriptors that come with records: one pidfd per LAUNCHED
#: (and a request is answered before the next is sent); more, if a broken
#: template sent them, are closed by the kernel.
_ANCILLARY = socket.CMSG_SPACE(4 * 4) if hasattr(socket, "CMSG_SPACE") else 0
#: Bytes of records a client may leave unread before the template stops
#: serving its requests until it reads (``_Connection``): some 20,000
#: records, the order of a socket buffer of its own.
_BACKLOG = 1 << 18
#: Likewise for the pidfds queued with unread LAUNCHED records (each one a
#: descriptor the template holds until sent): a client that waits for each
#: reply has at most one queued.
_FD_BACKLOG = 16


def available() -> bool:
    """Whether this platform can run the template launcher."""
    return (
        sys.platform.startswith("linux")
        and hasattr(socket, "send_fds")
        and hasattr(os, "pidfd_open")
        and hasattr(os, "waitstatus_to_exitcode")
    )


# --- the parent side ------------------------------------------------------------


class _FdCollector:
    """Stands in for multiprocessing's spawning Popen while work is pickled:
    ``reduction.DupFd`` (and so ``share_fd_with_child``) records descriptors
    here instead of in a Popen."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        self.fds.append(fd)
        return len(self.fds) - 1

    def DupFd(self, index: int) -> _TemplateFd:
        return _TemplateFd(index)


class _TemplateFd:
    """A reference to the ``index``-th descriptor sent with the request."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def detach(self) -> int:
        return _inherited_fds[self.index]


#: In a worker: the descriptors that came with its request (after the pipe).
_inherited_fds: list[int] = []


class _Client:
    """This process's connection to one template process."""

    def __init__(self, method: str, connected: socket.socket | None = None) -> None:
        self.owner = os.getpid()
        self.method = method
        self.lock = threading.Lock()
        self.exited: dict[int, int] = {}
        self.dead = False
        self._pending = b""
        #: Descriptors received and not yet matched with their LAUNCHED
        #: record (the worker's pidfd arrives with its record's first byte).
        self._fds: list[int] = []
        #: Whether this is the connection a worker inherited from the
        #: template that forked it (shared by every launcher in the worker,
        #: never closed by one of them).
        self.shared = connected is not None
        if connected is not None:
            self.sock = connected
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        from multiprocessing import spawn, util

        package_root = os.path.dirname(
            os.path.dirname(os.path.abspath(_launch.__file__))
        )
        # The first process forks the template and exits at once, so the
        # template is nobody's child here: it never shows up among (or is
        # counted with) this process's workers, and needs no reaping.
        code = (
            "import os\nif os.fork(): os._exit(0)\n"
            f"import sys; sys.path.insert(0, {package_root!r}); "
            f"from jobserver._template import serve; serve({theirs.fileno()})"
        )
        try:
            process = subprocess.Popen(
                [
                    spawn.get_executable(),
                    *util._args_from_interpreter_flags(),  # type: ignore[attr-defined]
                    "-c",
                    code,
                ],
                pass_fds=(theirs.fileno(),),
                close_fds=True,
            )
            process.wait()
        finally:
            theirs.close()
        self.sock = ours
        data = spawn.get_preparation_data("jobserver-template")
        if "authkey" in data:
            data["authkey"] = bytes(data["authkey"])
        payload = pickle.dumps(data, pickle.HIGHEST_PROTOCOL)
        ours.sendall(_HEADER.pack(len(payload)) + payload)

    # Called with self.lock held.
    def _take_records(self, block: bool) -> list[tuple[int, int, int]]:
        """Read whole records from the socket (waiting for one if ``block``)."""
        records: list[tuple[int, int, int]] = []
        flags = _CMSG_CLOEXEC | (0 if block else socket.MSG_DONTWAIT)
        while not records:
            try:
                chunk, ancdata, msg_flags, _ = self.sock.recvmsg(
                    65536, _ANCILLARY, flags
                )
            except (BlockingIOError, InterruptedError):
                return records
            except OSError:  # reset: the template died with our request unread
                self.dead = True
                return records
            if ancdata:
                self._fds.extend(_received_fds(ancdata))
            if msg_flags & socket.MSG_CTRUNC:
                # This process had no descriptor to spare for a pidfd: the
                # kernel dropped it.  Its worker cannot be signalled.
                _logger.warning(
                    "no descriptor to spare for a template worker's pidfd: "
                    "signals to that worker (cancel, time limits) are dropped"
                )
            if not chunk:
                self.dead = True
                return records
            data = self._pending + chunk
            whole = len(data) - len(data) % _RECORD.size
            self._pending = data[whole:]
            records.extend(_RECORD.iter_unpack(data[:whole]))
        return records

    def _file(self, records: list[tuple[int, int, int]]) -> tuple[int, int, int] | None:
        """File EXITED records; return the first LAUNCHED/FAILED one (kind,
        value, and the worker's pidfd or -1)."""
        reply = None
        for kind, value, status in records:
            if kind == EXITED:
                self.exited[value] = status
            elif reply is None:
                pidfd = -1
                if kind == LAUNCHED and self._fds:
                    pidfd = self._fds.pop(0)
                reply = (kind, value, pidfd)
                self._close_fds()  # nothing else comes with a reply
            else:  # pragma: no cover - one request at a time
                raise RuntimeError("the template process sent an unexpected reply")
        return reply

    def _close_fds(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def launch(self, payload: bytes, stdio: int, fds: list[int]) -> tuple[int, int]:
        """Have the template fork a worker: its pid and its pidfd (-1 if
        this process had no descriptor to spare for it)."""
        with self.lock:
            if self.dead:
                raise OSError(errno.EPIPE, "the template process is gone")
            try:
                socket.send_fds(self.sock, [_REQUEST.pack(len(payload), stdio)], fds)
                self.sock.sendall(payload)
                while True:
                    records = self._take_records(block=True)
                    if self.dead:
                        raise OSError(errno.EPIPE, "the template process died")
                    reply = self._file(records)
                    if reply is not None:
                        break
            except OSError:
                self.dead = True
                raise
            kind, value, pidfd = reply
            if kind == FAILED:
                raise OSError(
                    value, f"the template could not fork: {os.strerror(value)}"
                )
            return value, pidfd

    def exit_status(self, pid: int) -> int | None:
        """The worker's exit code once the template reaped it, else ``None``."""
        with self.lock:
            if pid not in self.exited and not self.dead:
                self._file(self._take_records(block=False))
            code = self.exited.pop(pid, None)
            if code is None and self.dead:
                return -255  # the template died: nobody can tell us
            return code

    def close(self) -> None:
        """Close the socket: the template exits after its last worker."""
        self.dead = True
        self.sock.close()
        self._close_fds()

    def __del__(self) -> None:
        try:
            self.dead = True
            self.sock.close()  # a forked copy's close touches only its copy
            self._close_fds()
        except Exception:  # pragma: no cover - interpreter teardown
            pass


#: Every live client in this process (for the at-fork and at-exit hooks).
_clients: weakref.WeakSet[_Client] = weakref.WeakSet()

#: Held while a launcher starts its template.  Starting one is rare, so one
#: lock serves every launcher.  A child forked while another thread held it
#: gets a fresh one (the at-fork hook below).
_starting = threading.Lock()


#: In a worker the template forked: the worker end of the template's
#: rendezvous socket (close-on-exec), through which the worker connects to
#: that template for its nested submissions.
_rendezvous_fd: int | None = None
_inherited_pid = 0
#: That connection, once made.
_inherited_client: _Client | None = None


def _shared_client(method: str) -> _Client | None:
    """A connection to the template that forked this worker, if it has one.

    Called with ``_starting`` held."""
    global _rendezvous_fd, _inherited_client
    client = _inherited_client
    if client is not None and client.owner == os.getpid() and not client.dead:
        return client
    fd, _rendezvous_fd = _rendezvous_fd, None
    if fd is None:
        return None
    rendezvous = socket.socket(fileno=fd)
    try:
        if _inherited_pid != os.getpid():  # pragma: no cover - at-fork missed
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            socket.send_fds(rendezvous, [b"c"], [theirs.fileno()])
        except OSError:
            ours.close()
            return None  # the template is gone: start one of our own
        finally:
            theirs.close()
    finally:
        rendezvous.close()
    client = _inherited_client = _Client(method, ours)
    _clients.add(client)
    return client


def _forget_clients_in_child() -> None:  # pragma: no cover - forked children
    global _starting, _rendezvous_fd, _inherited_client
    _starting = threading.Lock()
    fd, _rendezvous_fd = _rendezvous_fd, None
    _inherited_client = None
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    for client in list(_clients):
        client.dead = True
        try:
            client.sock.close()
            client._close_fds()
        except OSError:
            pass
    _clients.clear()


@atexit.register
def _close_clients() -> None:
    for client in list(_clients):
        if client.owner == os.getpid() and not client.dead:
            client.close()


class _TemplateWorker(_launch.ForeignWorker):
    """A worker forked by this process's template (not our child).

    Signalled only through the pidfd the template opened right after
    forking it and sent along with its pid: the template reaps the worker,
    so by the time we signal, its pid may name another process."""

    __slots__ = ("_client",)

    def __init__(self, client: _Client, pid: int, result_fd: int, pidfd: int) -> None:
        super().__init__(pid, result_fd, pidfd if pidfd >= 0 else None)
        self._client = client

    def try_reap(self) -> bool:
        if self.returncode is None:
            code = self._client.exit_status(self.pid)
            if code is None:
                return False
            self.returncode = code
        return True

    def exit_fd(self) -> int | None:
        # End-of-file on the result pipe already means "reaped" (the
        # template closes its copy only then); nothing more to watch.
        return None

    def send_signal(self, signum: int) -> None:
        pidfd = self._pidfd
        if self.returncode is not None or pidfd is None:
            return  # reaped (its pidfd closed), or no pidfd came (logged)
        try:
            signal.pidfd_send_signal(pidfd, signum)
        except ProcessLookupError:
            pass  # already exited (and maybe reaped by the template)


class TemplateLauncher(_launch.Launcher):
    """spawn/forkserver through a pre-warmed template process that forks."""

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        self.method = context.get_start_method()

        self._client: _Client | None = None

    def _ensure(self) -> _Client:
        client = self._client
        if client is None or client.dead or client.owner != os.getpid():
            # Before _starting is first taken (_forkhooks: on first use).
            _forkhooks.run_in_forked_children(_forget_clients_in_child)
            # Two threads making the first launch at once must not start a
            # template each (one would be left running, its socket open).
            with _starting:
                client = self._client
                if client is None or client.dead or client.owner != os.getpid():
                    # A worker forked by a template asks that same template
                    # (no interpreter start); anyone else starts their own.
                    client = _shared_client(self.method)
                    if client is None:
                        client = _Client(self.method)
                        _clients.add(client)
                    self._client = client
        return client

    def prepare(self) -> None:
        self._ensure()

    def close(self) -> None:
        client, self._client = self._client, None
        if (
            client is not None
            and not client.shared
            and client.owner == os.getpid()
            and not client.dead
        ):
            client.close()

    def launch(self, work: _launch.Work) -> _launch.Worker:
        from multiprocessing.reduction import ForkingPickler

        client = self._ensure()
        collector = _FdCollector()
        set_popen = multiprocessing.context.set_spawning_popen
        set_popen(collector)
        try:
            pickled = ForkingPickler.dumps(
                (work, _signals.outer_mask()), pickle.HIGHEST_PROTOCOL
            )
        except (TypeError, AttributeError, pickle.PicklingError) as exc:
            raise TypeError(
                "the submitted work cannot be pickled for the "
                f"{self.method!r} start method: {exc}"
            ) from exc
        finally:
            set_popen(None)
        if len(collector.fds) >= _MAX_FDS:
            raise TypeError("the submitted work refers to too many descriptors")
        payload = request_body(pickled)
        stdio = [fd for fd in (0, 1, 2) if _is_open(fd)]
        mask = sum(1 << fd for fd in stdio)
        read_fd, write_fd = os.pipe()
        try:
            pid, pidfd = client.launch(
                payload, mask, [write_fd, *stdio, *collector.fds]
            )
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        return _TemplateWorker(client, pid, read_fd, pidfd)


def request_body(pickled: bytes | memoryview) -> bytes:
    """A request's body: this process's environment, then ``pickled``."""
    environ = environ_bytes()
    return b"".join((_HEADER.pack(len(environ)), environ, pickled))


def environ_bytes() -> bytes:
    """This process's environment as NUL-separated ``key=value`` bytes."""
    environb = os.environb
    return b"\0".join([key + b"=" + environb[key] for key in environb])


def apply_environ(blob: bytes) -> None:
    """Make ``os.environ`` what ``environ_bytes`` returned (in the template:
    its workers inherit it).  An entry the C library refuses (an empty
    name, which only a process's initial environment can hold) is left
    out, as a spawned child's ``os.environ.update`` would fail on it."""
    wanted: dict[bytes, bytes] = {}
    if blob:
        for entry in blob.split(b"\0"):
            key, _, value = entry.partition(b"=")
            wanted[key] = value
    environb = os.environb
    for key in [key for key in environb if key not in wanted]:
        try:
            del environb[key]
        except (ValueError, OSError):
            pass
    for key, value in wanted.items():
        if environb.get(key) != value:
            try:
                environb[key] = value
            except (ValueError, OSError):
                pass


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


# --- the template side -----------------------------------------------------------


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    parts = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


class _Connection:  # pragma: no cover - runs in the template process
    """One client of the template: the parent, or a worker it forked.

    Neither direction ever blocks the template (the socket is non-blocking).
    A request is read piece by piece, so that a client stopped (or killed)
    halfway through one never stalls the others.  Records go out through
    ``out``: what the socket does not take at once waits there, whole and in
    order, until poll reports the client writable again.

    A client that leaves more than ``_BACKLOG`` bytes of records (or
    ``_FD_BACKLOG`` pidfds) unread gets its next request read but not served
    (``held``) until it has read enough (``_Template.serve``).  A client
    reads every record up to the reply to its request before it sends
    another, so the one held is served as soon as its sender waits for the
    reply, and a client that never reads costs the template no more than
    ``_BACKLOG``, ``_FD_BACKLOG`` descriptors, one request, and one EXITED
    record per worker already launched for it.
    """

    __slots__ = (
        "body",
        "events",
        "fds",
        "header",
        "held",
        "out",
        "out_fds",
        "size",
        "sock",
    )

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.header = b""
        self.fds: list[int] = []
        self.size = -1  # body length once the header is complete
        self.body: list[bytes] = []
        self.out = bytearray()
        #: Descriptors to go with records in ``out``: (offset in ``out`` of
        #: the record's first byte, descriptor), in order.  Each is sent
        #: with the part of ``out`` that starts at that record, and closed
        #: once sent.
        self.out_fds: collections.deque[tuple[int, int]] = collections.deque()
        #: A complete request waiting for ``out`` to drain (``backlogged``).
        self.held: tuple[list[int], int, bytes] | None = None
        self.events = select.POLLIN  # what the template polls it for

    def flush(self) -> None:
        """Write as much of ``out`` as the socket takes without blocking."""
        try:
            while self.out:
                if not self.out_fds:
                    del self.out[: self.sock.send(self.out)]
                    continue
                start, fd = self.out_fds[0]
                if start:  # up to the record that carries a descriptor
                    sent = self.sock.send(self.out[:start])
                else:
                    # From that record on (up to the next one that carries a
                    # descriptor), with the descriptor: the kernel attaches
                    # it to the first byte the socket takes, so the client
                    # receives it no later than the record's first byte.
                    end = self.out_fds[1][0] if len(self.out_fds) > 1 else None
                    sent = self.sock.sendmsg(
                        [self.out[:end]],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _fd_bytes(fd))],
                    )
                    if sent:
                        self.out_fds.popleft()
                        os.close(fd)  # the client has its own copy now
                del self.out[:sent]
                if sent:
                    for _ in range(len(self.out_fds)):
                        offset, queued = self.out_fds.popleft()
                        self.out_fds.append((offset - sent, queued))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            # The client is gone: nobody will read these.  Its end-of-file
            # is handled on reading.
            self.discard_out()

    def backlogged(self) -> bool:
        """Whether the client left too much unread to be served more."""
        return len(self.out) > _BACKLOG or len(self.out_fds) >= _FD_BACKLOG

    def discard_out(self) -> None:
        """Drop the records not sent yet, and close their descriptors."""
        self.out.clear()
        fds, self.out_fds = self.out_fds, collections.deque()
        for _, fd in fds:
            os.close(fd)

    def drop_pending(self) -> None:
        fds, self.fds = self.fds, []
        if self.held is not None:
            fds += self.held[0]
            self.held = None
        for fd in fds:
            os.close(fd)

    def read(self) -> tuple[list[int], int, bytes] | None:
        """Advance the request; a complete one, ``None``, or raise EOFError."""
        flags = socket.MSG_DONTWAIT
        try:
            if self.size < 0:
                data, ancdata, _, _ = self.sock.recvmsg(
                    _REQUEST.size - len(self.header),
                    socket.CMSG_SPACE((_MAX_FDS + 4) * 4),
                    flags | _CMSG_CLOEXEC,
                )
                self.fds.extend(_received_fds(ancdata))
                if not data:
                    raise EOFError
                self.header += data
                if len(self.header) < _REQUEST.size:
                    return None
                self.size, _ = _REQUEST.unpack(self.header)
            remaining = self.size - sum(map(len, self.body))
            while remaining:
                chunk = self.sock.recv(min(remaining, 1 << 20), flags)
                if not chunk:
                    raise EOFError
                self.body.append(chunk)
                remaining -= len(chunk)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            raise EOFError from exc
        _, stdio = _REQUEST.unpack(self.header)
        request = (self.fds, stdio, b"".join(self.body))
        self.header, self.fds, self.size, self.body = b"", [], -1, []
        return request


def _fd_bytes(fd: int) -> bytes:
    return array.array("i", (fd,)).tobytes()


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % received.itemsize])
            fds.extend(received)
    if not _CMSG_CLOEXEC:
        # Close-on-exec before anything forks, so that programs a worker
        # starts get none of them.
        for fd in fds:
            os.set_inheritable(fd, False)
    return fds


class _Template:  # pragma: no cover - runs in the template process
    """The template's state: its clients and the workers it has not reaped."""

    def __init__(self, sock: socket.socket) -> None:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.poller = select.poll()  # no descriptor of its own to leak
        self.poller.register(self.wake_r, select.POLLIN)
        self.clients: dict[int, _Connection] = {}
        #: pid -> (the client that asked for it, our copy of its result
        #: pipe's write end)
        self.holding: dict[int, tuple[_Connection, int]] = {}
        #: The environment last applied to this process's ``os.environ``
        #: (from a request; ``None`` until the first).
        self.environ: bytes | None = None
        self.add_client(sock)
        # Workers connect for nested work by sending one end of a fresh
        # socketpair here; only those that do cost the template anything.
        self.rendezvous, self.rendezvous_end = socket.socketpair(
            socket.AF_UNIX, socket.SOCK_DGRAM
        )
        self.rendezvous.setblocking(False)
        self.poller.register(self.rendezvous.fileno(), select.POLLIN)

    def accept(self) -> None:
        while True:
            try:
                _, ancdata, _, _ = self.rendezvous.recvmsg(
                    1, socket.CMSG_SPACE(4 * 4), _CMSG_CLOEXEC
                )
            except (BlockingIOError, InterruptedError):
                return
            fds = _received_fds(ancdata)
            for fd in fds[1:]:
                os.close(fd)
            if fds:
                self.add_client(socket.socket(fileno=fds[0]))

    def add_client(self, sock: socket.socket) -> None:
        client = _Connection(sock)
        self.clients[sock.fileno()] = client
        self.poller.register(sock.fileno(), client.events)

    def drop_client(self, fd: int) -> None:
        # Its workers keep running (as a forked worker's would when its
        # parent dies) and are reaped as usual; their records go nowhere.
        client = self.clients.pop(fd)
        self.poller.unregister(fd)
        client.drop_pending()
        client.discard_out()
        client.sock.close()

    def send(self, client: _Connection, record: bytes, fd: int = -1) -> None:
        """Queue a record (and ``fd`` with it, if given: closed here once
        sent) for a client; never blocks."""
        if client.sock.fileno() < 0:
            if fd >= 0:
                os.close(fd)
            return  # dropped: its records go nowhere
        if fd >= 0:
            client.out_fds.append((len(client.out), fd))
        client.out += record
        if len(client.out) == len(record):  # nothing was waiting before it
            client.flush()
        self.watch(client)

    def watch(self, client: _Connection) -> None:
        """Poll the client for what it can do next: send requests unless one
        is held, take records if some are waiting."""
        events = (0 if client.held else select.POLLIN) | (
            select.POLLOUT if client.out else 0
        )
        if events != client.events:
            client.events = events
            self.poller.modify(client.sock, events)

    def serve(self, fd: int, client: _Connection, revents: int) -> None:
        """Handle what poll reported for one client."""
        if client.out and revents & (select.POLLOUT | select.POLLHUP | select.POLLERR):
            client.flush()
            if client.held is not None and not client.backlogged():
                held, client.held = client.held, None
                self.fork_worker(client, *held)
        if client.held is None and revents & ~select.POLLOUT:
            try:
                request = client.read()
            except EOFError:
                self.drop_client(fd)
                return
            if request is not None:
                if client.backlogged():
                    client.held = request  # until it reads what it was sent
                else:
                    self.fork_worker(client, *request)
        self.watch(client)

    def dispatch(self, events: list[tuple[int, int]]) -> None:
        for fd, revents in events:
            client = self.clients.get(fd)
            if client is not None:
                self.serve(fd, client, revents)
            elif fd == self.rendezvous.fileno():
                self.accept()

    def run(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        # Serve until every client is gone (the parent and every worker
        # that could still ask for nested work) and every worker is reaped.
        while self.clients or self.holding:
            events = self.poller.poll(None if self.clients else 1000)
            try:
                while os.read(self.wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            self.reap()
            self.dispatch(events)
        os._exit(0)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            client, fd = self.holding.pop(pid, (None, -1))
            if client is not None:
                self.send(
                    client,
                    _RECORD.pack(EXITED, pid, os.waitstatus_to_exitcode(status)),
                )
            if fd >= 0:
                os.close(fd)  # only now may the client see end-of-file

    def fork_worker(
        self, client: _Connection, fds: list[int], stdio: int, body: bytes
    ) -> None:
        global _rendezvous_fd, _inherited_pid
        start = -1
        if len(body) >= _HEADER.size:
            start = _HEADER.size + _HEADER.unpack_from(body)[0]
        if not fds or not 0 <= start <= len(body):
            # No result pipe (nothing to fork for), or a malformed body.
            for fd in fds:
                os.close(fd)
            self.send(client, _RECORD.pack(FAILED, errno.EINVAL, 0))
            return
        # The request's environment, applied here so that the worker
        # inherits it (see the module docstring).
        environ = body[_HEADER.size : start]
        if environ != self.environ:
            apply_environ(environ)
            self.environ = environ
        body = body[start:]
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            self.send(client, _RECORD.pack(FAILED, exc.errno or errno.EAGAIN, 0))
            return
        if pid == 0:
            code = 70
            try:
                _c_signal.set_wakeup_fd(-1)
                _c_signal.signal(_SIGCHLD, _SIG_DFL)
                _c_signal.signal(_SIGINT, _c_signal.default_int_handler)
                # Nothing of the template's but this worker's own request
                # and the rendezvous: no client's socket (a worker that kept
                # one would hide that client's end from the template) or
                # half-received descriptors, no other worker's pipe.  (The
                # methods only when there is something for them to do: each
                # function a worker runs costs it copy-on-write faults.)
                for other in self.clients.values():
                    os.close(other.sock.detach())
                    if other.fds or other.held is not None:
                        other.drop_pending()
                    if other.out_fds:
                        other.discard_out()  # other workers' pidfds
                os.close(self.wake_r)
                os.close(self.wake_w)
                for _, held in self.holding.values():
                    os.close(held)
                self.rendezvous.close()
                _rendezvous_fd = self.rendezvous_end.detach()
                _inherited_pid = os.getpid()
                # The worker's own forks close it.
                _forkhooks.run_in_forked_children(_forget_clients_in_child)
                code = _worker(fds, stdio, body)
            finally:
                os._exit(code)
        # The worker's pidfd, for the client to signal it through: opened
        # now, while the worker cannot have been reaped (only this process
        # reaps it, and not before this returns), so it names our worker
        # even if the pid is reused later.
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            # Out of descriptors: no worker the client could not signal
            # safely.  Killed and reaped before the reply, so that it is gone
            # before the client gives its slot back on FAILED.
            os.kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:  # pragma: no cover - only we reap it
                pass
            for fd in fds:
                os.close(fd)
            self.send(client, _RECORD.pack(FAILED, exc.errno or errno.EMFILE, 0))
            return
        # The template keeps only the result pipe (to close after reaping).
        self.holding[pid] = (client, fds[0])
        for fd in fds[1:]:
            os.close(fd)
        self.send(client, _RECORD.pack(LAUNCHED, pid, 0), pidfd)


def serve(fd: int) -> None:  # pragma: no cover - runs in the template process
    """The template's main loop (``python -c`` entry point)."""
    from multiprocessing import spawn

    sock = socket.socket(fileno=fd)
    # Started outside any deferral as a rule, but never rely on it: a blocked
    # SIGCHLD would leave workers unreaped.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    spawn.prepare(pickle.loads(_recv_exact(sock, size)))
    _Template(sock).run()


def _worker(fds: list[int], stdio: int, body: bytes) -> int:  # pragma: no cover
    result_fd = fds[0]
    index = 1
    for target in (0, 1, 2):
        if stdio & (1 << target):
            os.dup2(fds[index], target)
            os.close(fds[index])
            index += 1
    _inherited_fds[:] = fds[index:]
    _launch._reset_multiprocessing_in_forked_child()
    try:
        work, mask = pickle.loads(body)
    except BaseException:
        # As a spawned child that cannot rebuild its work: the traceback goes
        # to stderr and the parent reports LostResult for this one Future.
        traceback.print_exc()
        _launch._flush_std_streams()
        return 1
    _signals.restore_in_child(mask)
    return _launch.worker_main(work, result_fd)

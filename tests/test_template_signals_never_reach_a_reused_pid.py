"""Signals to template workers go through the pidfd the template sent.

The template forks and reaps the workers, so a worker's pid may be reused by
the time the parent signals it.  The template opens each worker's pidfd
right after forking it (before it could reap it) and sends it with the
LAUNCHED record; the parent signals only through that pidfd.

The pid reuse itself cannot be arranged on demand; these tests stand a live
process of ours in for the process that got the reaped worker's pid (they
set that pid on the worker) and check that it is left alone.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import select
import signal
import socket
import subprocess
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest
from conftest import assert_slots_conserved, close_template
from jobserver import Jobserver, LostResult, _launch, _template

pytestmark = pytest.mark.skipif(
    not _template.available(), reason="the template launcher is Linux-only"
)

METHODS = ["spawn", "forkserver"]


def _pidfd_target(fd: int, pid: int | str = "self") -> int | None:
    """The pid the pidfd ``fd`` of process ``pid`` refers to, or ``None``
    if ``fd`` is no pidfd."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    return None


def _pidfds_of(pid: int | str = "self") -> list[int]:
    """The pidfds process ``pid`` holds."""
    found = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if _pidfd_target(int(name), pid) is not None:
                found.append(int(name))
        except FileNotFoundError:  # the listing's own descriptor
            pass
    return found


def _wait_until_reaped(worker: _launch.Worker) -> None:
    """Until the template reaped ``worker``, without reading its result.

    The template closes its copy of the result pipe's write end only after
    reaping the worker (and queueing its EXITED record), so the pipe hangs
    up then; poll reports a hang-up even with no event asked for."""
    poller = select.poll()
    poller.register(worker.result_fd, 0)
    # Only a bound on failure: the worker needs one short run and an exit.
    assert poller.poll(60_000), "the template never reaped the worker"


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of ours that stands in for one that got a reaped
    worker's pid: ``cat``, which exits 0 once its stdin closes."""
    process = subprocess.Popen(
        ["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        if process.stdin is not None:
            process.stdin.close()
        process.wait(timeout=60)


def _left_alone(process: subprocess.Popen[bytes]) -> bool:
    """Whether ``process`` ends on its own (exit 0), not by a signal."""
    assert process.stdin is not None
    process.stdin.close()
    # Bound only on failure: cat exits at end-of-file at once.
    return process.wait(timeout=60) == 0


class _SignalSpy:
    """Records what ``signal.pidfd_send_signal`` did; fails the test on any
    signal sent by pid (``os.kill``) or pidfd opened by pid."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.outcomes: list[type[BaseException] | None] = []
        real = signal.pidfd_send_signal

        def spy(fd: int, signum: int, *args: Any) -> None:
            try:
                real(fd, signum, *args)
            except BaseException as exc:
                self.outcomes.append(type(exc))
                raise
            self.outcomes.append(None)

        def by_pid(*args: Any) -> None:
            raise AssertionError(f"signalled by pid: {args}")

        monkeypatch.setattr(signal, "pidfd_send_signal", spy)
        monkeypatch.setattr(os, "kill", by_pid)
        monkeypatch.setattr(os, "pidfd_open", by_pid)


# --- the pidfd arrives with LAUNCHED ---------------------------------------------


def _block(release: Connection) -> int:
    try:
        release.recv()
    except EOFError:
        pass
    return os.getpid()


@pytest.mark.parametrize("method", METHODS)
def test_a_template_worker_holds_its_pidfd_from_launch_on(
    method: str, no_leaks: None
) -> None:
    release_r, release_w = multiprocessing.Pipe(duplex=False)
    with Jobserver(method, slots=2) as js:
        future = js.submit(_block, args=(release_r,))
        worker = future._worker
        try:
            assert isinstance(worker, _template._TemplateWorker)
            pidfd = worker._pidfd
            assert pidfd is not None
            assert _pidfd_target(pidfd) == worker.pid
            assert not os.get_inheritable(pidfd)
        finally:
            release_w.close()  # the worker returns (also on failure)
        assert future.result(timeout=60) == worker.pid
        # Closed with the worker, once reaped.
        assert worker._pidfd is None
        assert pidfd not in _pidfds_of()
        assert_slots_conserved(js, 2)
    release_r.close()


def _held_pidfds() -> list[int]:
    return _pidfds_of()


@pytest.mark.parametrize("method", METHODS)
def test_the_template_and_its_workers_keep_no_pidfds(
    method: str, no_leaks: None
) -> None:
    """The template closes its copy of a pidfd once sent, and no worker
    inherits another's."""
    with Jobserver(method, slots=2) as js:
        futures = [js.submit(_held_pidfds) for _ in range(4)]
        assert [f.result(timeout=60) for f in futures] == [[]] * 4
        template = js.submit(os.getppid).result(timeout=60)
        # Every LAUNCHED record (and its pidfd) was read: nothing is queued.
        assert _pidfds_of(template) == []
        assert_slots_conserved(js, 2)


# --- a worker the template already reaped is never signalled ------------------------


def test_signalling_a_worker_the_template_already_reaped_signals_nothing(
    monkeypatch: pytest.MonkeyPatch,
    bystander: subprocess.Popen[bytes],
    no_leaks: None,
) -> None:
    """The worker's pid now names the bystander (as if reused): its pidfd
    says the worker is gone, so nothing is signalled and nothing raises."""
    with Jobserver("spawn", slots=1) as js:
        launcher = js._resources.launcher
        assert isinstance(launcher, _template.TemplateLauncher)
        worker = launcher.launch(_launch.Work(os.getpid, (), {}, (), None))
        try:
            assert isinstance(worker, _template._TemplateWorker)
            _wait_until_reaped(worker)
            pid, worker.pid = worker.pid, bystander.pid
            spy = _SignalSpy(monkeypatch)
            worker.send_signal(signal.SIGKILL)
            monkeypatch.undo()
            worker.pid = pid
            assert spy.outcomes == [ProcessLookupError]
            assert worker.try_reap() and worker.returncode == 0
        finally:
            os.close(worker.result_fd)
            worker.close()
        assert worker._pidfd is None
    assert _left_alone(bystander)


@pytest.mark.parametrize("method", METHODS)
def test_cancelling_a_future_whose_worker_was_reaped_signals_nothing(
    method: str,
    monkeypatch: pytest.MonkeyPatch,
    bystander: subprocess.Popen[bytes],
    no_leaks: None,
) -> None:
    """The window the pidfd closes: the template reaped the worker, but the
    Future has not read that yet (it still counts as running)."""
    with Jobserver(method, slots=1) as js:
        future = js.submit(os.getpid)
        worker = future._worker
        _wait_until_reaped(worker)
        pid, worker.pid = worker.pid, bystander.pid
        spy = _SignalSpy(monkeypatch)
        try:
            future._send_signal(signal.SIGKILL)  # what wait(signal=...) does
        finally:
            monkeypatch.undo()
            worker.pid = pid
        assert spy.outcomes == [ProcessLookupError]
        # The task's own outcome, untouched.
        assert future.result(timeout=60) == pid
        assert_slots_conserved(js, 1)
    assert _left_alone(bystander)


# --- signalling a running worker still works ------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
@pytest.mark.parametrize("method", METHODS)
def test_signalling_a_running_template_worker_ends_it(
    method: str, signum: int, no_leaks: None
) -> None:
    release_r, release_w = multiprocessing.Pipe(duplex=False)
    with Jobserver(method, slots=2) as js:
        future = js.submit(_block, args=(release_r,))
        release_r.close()
        try:
            assert future.wait(timeout=60, signal=signum)
        finally:
            release_w.close()  # it returns if the signal did not end it
        with pytest.raises(LostResult) as info:
            future.result()
        assert info.value.returncode == -signum
        assert future._worker._pidfd is None
        assert_slots_conserved(js, 2)


def _nested_pidfd_and_kill(js: Jobserver) -> tuple[int | None, int, int | None, bool]:
    release_r, release_w = multiprocessing.Pipe(duplex=False)
    nested = js.submit(_block, args=(release_r,), consume=0)
    release_r.close()
    worker = nested._worker
    try:
        pidfd = getattr(worker, "_pidfd", None)
        target = None if pidfd is None else _pidfd_target(pidfd)
        nested.wait(timeout=60, signal=signal.SIGKILL)
    finally:
        release_w.close()  # it returns if the signal did not end it
    try:
        nested.result(timeout=60)
    except LostResult as exc:
        code = exc.returncode
    else:  # pragma: no cover - reported by the assertion below
        code = None
    client = _template._inherited_client
    return target, worker.pid, code, client is not None and client.shared


@pytest.mark.parametrize("method", METHODS)
def test_nested_template_workers_get_their_pidfds_too(
    method: str, no_leaks: None
) -> None:
    with Jobserver(method, slots=2) as js:
        target, pid, code, shared = js.submit(
            _nested_pidfd_and_kill, args=(js,)
        ).result(timeout=120)
        assert_slots_conserved(js, 2)
    assert shared  # launched through the rendezvous connection
    assert target == pid
    assert code == -signal.SIGKILL


# --- the template's queue keeps each record and its descriptor together -------------

RECORD = _template._RECORD.size
BUFFER = 16384


def _small_connection() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    ours.setblocking(False)
    return ours, theirs


def _fill(template: _template._Template, client: _template._Connection) -> int:
    """Plain records until the socket takes no more; how many."""
    count = 0
    while not client.out:
        template.send(client, _template._RECORD.pack(_template.FAILED, errno.EINVAL, 0))
        count += 1
    return count


def test_queued_records_keep_their_descriptors_in_order(no_leaks: None) -> None:
    """Driven one poll at a time: records with descriptors queued behind a
    full socket go out in order, each descriptor arriving no later than its
    record's first byte and no earlier than the byte of the record before
    it; the template closes its copies once sent."""
    ours, theirs = _small_connection()
    template = _template._Template(theirs)
    pipes: list[tuple[int, int]] = []
    try:
        client = template.clients[theirs.fileno()]
        expected: list[tuple[int, int]] = []  # (record's offset, pipe inode)
        offset = _fill(template, client) * RECORD
        for i in range(40):
            if i % 3:  # a plain record between some of them
                template.send(client, _template._RECORD.pack(_template.EXITED, i, 0))
                offset += RECORD
            r, w = os.pipe()
            pipes.append((r, w))
            expected.append((offset, os.fstat(r).st_ino))
            template.send(client, _template._RECORD.pack(_template.LAUNCHED, i, 0), r)
            offset += RECORD
        assert len(client.out_fds) == 40
        received = 0
        arrivals: list[tuple[int, int, int]] = []  # (chunk start, end, inode)
        while received < offset:
            try:
                # Small reads: records split across them.
                data, ancdata, flags, _ = ours.recvmsg(
                    RECORD * 5 + 3, socket.CMSG_SPACE(16 * 4)
                )
            except BlockingIOError:
                data, ancdata, flags = b"", [], 0
            assert not flags & socket.MSG_CTRUNC
            for fd in _template._received_fds(ancdata):
                arrivals.append((received, received + len(data), os.fstat(fd).st_ino))
                os.close(fd)
            received += len(data)
            events = template.poller.poll(0)
            assert events or data or received == offset, "the template is stuck"
            template.dispatch(events)
        assert received == offset
        assert not client.out and not client.out_fds
        assert [inode for _, _, inode in arrivals] == [i for _, i in expected]
        previous = -1
        for (start, end, _), (record, _) in zip(arrivals, expected):
            assert start <= record < end
            assert start > previous
            previous = record
    finally:
        close_template(template)
        ours.close()
        for _, w in pipes:
            os.close(w)


def test_a_dropped_clients_queued_descriptors_are_closed(no_leaks: None) -> None:
    ours, theirs = _small_connection()
    template = _template._Template(theirs)
    pipes = []
    try:
        client = template.clients[theirs.fileno()]
        _fill(template, client)
        for i in range(3):
            r, w = os.pipe()
            pipes.append(w)
            template.send(client, _template._RECORD.pack(_template.LAUNCHED, i, 0), r)
        assert len(client.out_fds) == 3
        template.drop_client(theirs.fileno())
        assert not client.out_fds
        # A record (and descriptor) for a dropped client goes nowhere.
        r, w = os.pipe()
        pipes.append(w)
        template.send(client, _template._RECORD.pack(_template.LAUNCHED, 9, 0), r)
    finally:
        close_template(template)
        ours.close()
        for w in pipes:
            os.close(w)


def test_a_client_that_leaves_pidfds_unread_is_served_once_it_reads(
    no_leaks: None,
) -> None:
    """A client that never reads cannot make the template hold more than
    _FD_BACKLOG descriptors: its next request waits until it reads."""
    ours, theirs = _small_connection()
    template = _template._Template(theirs)
    pipes = []
    try:
        client = template.clients[theirs.fileno()]
        plain = _fill(template, client)
        for i in range(_template._FD_BACKLOG):
            r, w = os.pipe()
            pipes.append(w)
            template.send(client, _template._RECORD.pack(_template.LAUNCHED, i, 0), r)
        # Backlogged by its pidfds alone.
        assert client.backlogged() and len(client.out) <= _template._BACKLOG
        # A request without descriptors: served at once, it would be
        # answered FAILED/EINVAL without a fork.
        ours.sendall(_template._REQUEST.pack(0, 0))
        for _ in range(2):  # its header, then nothing more to read
            template.dispatch(template.poller.poll(0))
        assert client.held is not None
        assert client.events == select.POLLOUT
        total = (plain + _template._FD_BACKLOG + 1) * RECORD
        data = bytearray()
        while len(data) < total:
            try:
                chunk, ancdata, _, _ = ours.recvmsg(1 << 16, socket.CMSG_SPACE(64))
            except BlockingIOError:
                chunk, ancdata = b"", []
            for fd in _template._received_fds(ancdata):
                os.close(fd)
            data += chunk
            events = template.poller.poll(0)
            assert events or chunk or len(data) == total, "the template is stuck"
            template.dispatch(events)
        assert client.held is None and not client.out_fds
        assert _template._RECORD.unpack(bytes(data[-RECORD:])) == (
            _template.FAILED,
            errno.EINVAL,
            0,
        )
    finally:
        close_template(template)
        ours.close()
        for w in pipes:
            os.close(w)

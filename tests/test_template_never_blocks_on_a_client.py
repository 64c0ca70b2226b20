"""The template process never blocks on one client.

A client that stops reading its records (stopped, or busy) must not stall
the template, and with it every other client of the same template: records
it does not take wait in the template, whole and in order, and a client
that leaves too much unread has its requests served only once it reads.

The clients that stop reading here speak the template's protocol over a raw
connection of their own (made the way a worker's first nested launch makes
one), so that nothing reads for them.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import pickle
import select
import signal
import socket
from multiprocessing.connection import Connection

import pytest
from conftest import assert_slots_conserved, close_template
from jobserver import Jobserver, _launch, _template

pytestmark = pytest.mark.skipif(
    not _template.available(), reason="the template launcher is Linux-only"
)

RECORD = _template._RECORD.size
#: A request with no descriptors: the template answers FAILED/EINVAL at once
#: (no fork), which makes records cheaply.
EMPTY_REQUEST = _template._REQUEST.pack(0, 0)
#: What the test asks the kernel for as the template's send buffer and the
#: client's receive buffer (it rounds and doubles it: the code reads back
#: what it got).  Small, so that few records fill the connection.
BUFFER = 16384


def _most_a_connection_holds(template_end: socket.socket, ours: socket.socket) -> int:
    """More bytes than the connection can hold unread, from its buffer sizes.

    A Unix stream socket lets its sender have up to SO_SNDBUF in flight plus
    one more message of at most half that; other families buffer up to the
    receiver's SO_RCVBUF as well.  Twice their sum covers both."""
    sent = template_end.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    received = ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return 2 * (sent + received)


def _connect_raw() -> tuple[socket.socket, int]:
    """In a worker the template forked: a connection of our own to it, and
    how many records are certain to overflow that connection."""
    fd = _template._rendezvous_fd
    assert fd is not None, "not a worker the template forked"
    rendezvous = socket.socket(fileno=os.dup(fd))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        overflow = _most_a_connection_holds(theirs, ours) // RECORD + 1
        socket.send_fds(rendezvous, [b"c"], [theirs.fileno()])
    finally:
        theirs.close()
        rendezvous.close()
    return ours, overflow


def _send_launch(sock: socket.socket) -> int:
    """Send a real launch request (the worker returns its pid); the read end
    of its result pipe, which reaches end-of-file once the template reaped
    the worker."""
    work = _launch.Work(os.getpid, (), {}, (), None)
    payload = _template.request_body(
        pickle.dumps((work, None), pickle.HIGHEST_PROTOCOL)
    )
    read_fd, write_fd = os.pipe()
    try:
        socket.send_fds(sock, [_template._REQUEST.pack(len(payload), 0)], [write_fd])
        sock.sendall(payload)
    finally:
        os.close(write_fd)
    return read_fd


def _wait_reaped(read_fd: int) -> None:
    try:
        while os.read(read_fd, 65536):
            pass
    finally:
        os.close(read_fd)


def _read_records(sock: socket.socket, count: int) -> list[tuple[int, int, int]]:
    sock.setblocking(True)
    data = bytearray()
    while len(data) < count * RECORD:
        chunk = sock.recv(count * RECORD - len(data))
        assert chunk, "the template closed the connection"
        data += chunk
    return list(_template._RECORD.iter_unpack(bytes(data)))


def _check_in_order(
    records: list[tuple[int, int, int]], requests: list[str]
) -> list[int]:
    """Assert ``records`` answer ``requests`` ("empty" or "launch") one by
    one and in order, with each launched worker's exit after its launch;
    return the launched pids."""
    replies = [r for r in records if r[0] != _template.EXITED]
    exits = [r for r in records if r[0] == _template.EXITED]
    assert len(replies) == len(requests)
    pids = []
    for request, (kind, value, status) in zip(requests, replies):
        if request == "empty":
            assert (kind, value, status) == (_template.FAILED, errno.EINVAL, 0)
        else:
            assert kind == _template.LAUNCHED and status == 0
            pids.append(value)
    assert sorted(pid for _, pid, _ in exits) == sorted(pids)
    assert all(status == 0 for _, _, status in exits)
    for _, pid, _ in exits:
        launched = records.index((_template.LAUNCHED, pid, 0))
        assert records.index((_template.EXITED, pid, 0)) > launched
    return pids


def _flood_and_stop_reading(
    report: Connection, release: Connection
) -> tuple[list[str], list[tuple[int, int, int]]]:
    """More records than the connection holds, all left unread until the
    test says so; then every record, read."""
    sock, overflow = _connect_raw()
    try:
        launches = 4
        each = -(-overflow // launches)
        # Everything stays below the backlog: the template serves it all
        # (as it must for the test to know it tried to send all of it).
        assert (each + 2) * launches * RECORD <= _template._BACKLOG
        requests: list[str] = []
        pipes = []
        for _ in range(launches):
            sock.sendall(EMPTY_REQUEST * each)
            requests += ["empty"] * each
            pipes.append(_send_launch(sock))
            requests.append("launch")
        # The last launch was served after every request before it; and
        # each reaped worker's EXITED record was queued for us.
        for read_fd in pipes:
            _wait_reaped(read_fd)
        report.send(len(requests))
        try:
            release.recv()
        except EOFError:
            pass
        return requests, _read_records(sock, len(requests) + launches)
    finally:
        sock.close()


def _nested_round_trip(js: Jobserver) -> int:
    return js.submit(os.getppid, consume=0).result(timeout=60)


def test_a_client_that_stops_reading_stalls_nobody_else(no_leaks: None) -> None:
    """The template tried to send a stopped client more than its connection
    holds; the parent and a nested client still launch and get results, and
    the stopped client then gets every record, in order."""
    ours, theirs = multiprocessing.Pipe()
    release_r, release_w = multiprocessing.Pipe(duplex=False)
    with Jobserver("spawn", slots=3) as js:
        stopped = js.submit(_flood_and_stop_reading, args=(theirs, release_r))
        theirs.close()
        release_r.close()
        try:
            # Only a bound on failure: the flood takes the template well
            # under a second, and the suite's heaviest load a few times that.
            assert ours.poll(120), "the template stalled on the flooded client"
            assert ours.recv() > 0
            # Other clients of the same template: the parent, and a nested
            # one, with the stopped client's records still unread.
            assert sorted(
                js.map(abs, [(-i,) for i in range(1, 7)], timeout=60)
            ) == list(range(1, 7))
            template = js.submit(os.getppid).result(timeout=60)
            assert js.submit(_nested_round_trip, args=(js,)).result(timeout=60) == (
                template
            )
        except BaseException:
            stopped._worker.send_signal(signal.SIGKILL)
            raise
        finally:
            release_w.close()
        requests, records = stopped.result(timeout=60)
        assert_slots_conserved(js, 3)
    ours.close()
    assert len(_check_in_order(records, requests)) == requests.count("launch")


def _overrun_the_backlog() -> tuple[list[str], list[tuple[int, int, int]]]:
    """Send requests whose replies overflow the connection and the backlog
    besides, reading nothing; then read every record."""
    sock, overflow = _connect_raw()
    try:
        count = overflow + _template._BACKLOG // RECORD + 1
        requests = ["empty"] * count + ["launch"]
        # What the template leaves unread once it stops serving us stays in
        # our send buffer: at most the requests beyond the backlog's, sent in
        # small pieces so that no large message is charged to it whole.
        piece = 512
        unread = (count - _template._BACKLOG // RECORD + piece) * len(EMPTY_REQUEST)
        sent = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        assert 2 * unread <= sent, "the test's own sending could block for good"
        for start in range(0, count, piece):
            sock.sendall(EMPTY_REQUEST * min(piece, count - start))
        read_fd = _send_launch(sock)
        records = _read_records(sock, count + 2)
        _wait_reaped(read_fd)
        return requests, records
    finally:
        sock.close()


def test_a_client_over_the_backlog_gets_every_record_once_it_reads(
    no_leaks: None,
) -> None:
    with Jobserver("spawn", slots=2) as js:
        requests, records = js.submit(_overrun_the_backlog).result(timeout=120)
        assert js.submit(os.getpid).result(timeout=60) > 0
        assert_slots_conserved(js, 2)
    assert len(_check_in_order(records, requests)) == 1


# --- the bound, step by step, on a template object in this process -------------------


def test_a_client_that_never_reads_costs_the_template_a_bounded_backlog(
    no_leaks: None,
) -> None:
    """Driven one poll at a time (requests without descriptors never fork,
    and nothing here reaps): once a client leaves more than the backlog
    unread, the template holds its next request and stops reading it; once
    it reads, every record comes, in order, and the template reads on."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    template = _template._Template(theirs)
    try:
        client = template.clients[theirs.fileno()]
        backlog = _template._BACKLOG
        count = (_most_a_connection_holds(theirs, ours) + backlog) // RECORD + 2
        pending = bytearray(EMPTY_REQUEST * count)
        ours.setblocking(False)
        while True:  # send what the socket takes; the template serves what it can
            try:
                del pending[: ours.send(pending)]
            except BlockingIOError:
                pass
            events = template.poller.poll(0)
            if not events:
                break
            template.dispatch(events)
        # It stopped: a request held, the client not read from, its
        # records queued up to the backlog plus the last reply at most.
        assert client.held is not None
        assert client.events == select.POLLOUT
        assert backlog < len(client.out) <= backlog + RECORD
        assert select.select([ours], [], [], 0)[0], "nothing for the client?"

        data = bytearray()
        while len(data) < count * RECORD:
            try:
                data += ours.recv(1 << 20)
            except BlockingIOError:
                pass
            if pending:
                try:
                    del pending[: ours.send(pending)]
                except BlockingIOError:
                    pass
            events = template.poller.poll(0)
            assert events or len(data) == count * RECORD, "the template is stuck"
            template.dispatch(events)
        assert not pending
        assert len(data) == count * RECORD
        assert set(_template._RECORD.iter_unpack(bytes(data))) == {
            (_template.FAILED, errno.EINVAL, 0)
        }
        assert client.held is None and not client.out
        assert client.events == select.POLLIN
    finally:
        close_template(template)
        ours.close()

"""WorkerLogging and LogForwarder: logging in workers, forwarded to the parent."""

from __future__ import annotations

import logging
import os
import pickle
import sys

import extras_tasks
import pytest
from jobserver import Jobserver, LostResult
from jobserver_extras import LogForwarder, WorkerLogging
from jobserver_extras._logging import encode_record


class Collect(logging.Handler):
    """Keeps every record it handles."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def named_logger(request):
    """A parent-side logger with a collecting handler, removed afterwards."""
    name = f"extras.test.{request.node.name}"
    log = logging.getLogger(name)
    handler = Collect()
    log.addHandler(handler)
    yield name, handler
    log.removeHandler(handler)


def test_records_from_workers_arrive(method: str, named_logger, no_leaks) -> None:
    name, handler = named_logger
    with LogForwarder() as forwarder, Jobserver(method, slots=2) as js:
        logged = js.replace_preexec(WorkerLogging(logging.INFO, forward=forwarder))
        futures = [
            logged.submit(extras_tasks.log_messages, args=(name, 3)) for _ in "ab"
        ]
        pids = {f.result() for f in futures}
        assert forwarder.drain() == 8
    records = handler.records
    assert len(records) == 8  # 3 INFO + 1 ERROR per worker; DEBUG filtered
    assert {r.process for r in records} == pids
    for pid in pids:
        mine = [r for r in records if r.process == pid]
        assert [r.getMessage().split(" from ")[0] for r in mine] == [
            "message 0",
            "message 1",
            "message 2",
            "with a traceback",
        ]
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all("ZeroDivisionError" in (r.exc_text or "") for r in errors)
    assert all(r.name == name for r in records)


def test_target_handler_and_level_filter(no_leaks) -> None:
    handler = Collect(logging.ERROR)
    with LogForwarder(handler) as forwarder, Jobserver("fork", slots=1) as js:
        logged = js.replace_preexec(WorkerLogging("DEBUG", forward=forwarder))
        logged.submit(extras_tasks.log_messages, args=("anything", 2)).result()
    # The forwarder drained on close; the handler's own level still applies.
    assert handler.messages() == ["with a traceback"]


def test_target_logger(no_leaks) -> None:
    target = logging.getLogger("extras.test.target")
    target.propagate = False
    handler = Collect()
    target.addHandler(handler)
    try:
        with LogForwarder(target) as forwarder, Jobserver("fork", slots=1) as js:
            logged = js.replace_preexec(WorkerLogging(forward=forwarder))
            logged.submit(extras_tasks.log_messages, args=("elsewhere", 1)).result()
            forwarder.drain()
        assert len(handler.records) == 2
        assert handler.records[0].name == "elsewhere"
    finally:
        target.removeHandler(handler)
        target.propagate = True


def test_records_survive_a_killed_worker(method: str, named_logger, no_leaks) -> None:
    name, handler = named_logger
    with LogForwarder() as forwarder, Jobserver(method, slots=1) as js:
        logged = js.replace_preexec(WorkerLogging(forward=forwarder))
        with pytest.raises(LostResult):
            logged.submit(extras_tasks.log_then_die, args=(name,)).result()
        forwarder.drain()
    assert len(handler.records) == 1
    assert handler.records[0].getMessage().startswith("last words")


def test_concurrent_large_records_stay_whole(named_logger, no_leaks) -> None:
    """Records larger than a pipe buffer from concurrent workers arrive
    whole and uninterleaved."""
    name, handler = named_logger
    with LogForwarder() as forwarder, Jobserver("fork", slots=3) as js:
        logged = js.replace_preexec(WorkerLogging(forward=forwarder))
        futures = [
            logged.submit(extras_tasks.log_messages, args=(name, 200, 10000))
            for _ in range(3)
        ]
        for future in futures:
            future.result()
            forwarder.drain()  # draining while others still write
    assert forwarder.skipped_bytes == 0
    assert forwarder.handled == len(handler.records) == 3 * 201
    infos = [r for r in handler.records if r.levelno == logging.INFO]
    assert all(r.getMessage().endswith("x" * 10000) for r in infos)


def test_drain_resynchronises_after_a_cut_record(named_logger) -> None:
    """A record cut short by a killed writer costs only that record."""
    name, handler = named_logger
    log = logging.getLogger(name)
    garbage = b"garbage without any frame"

    def frame(text: str) -> bytes:
        record = log.makeRecord(name, logging.INFO, __file__, 1, text, (), None)
        return encode_record(record, logging.Formatter())

    with LogForwarder() as forwarder:
        fd = forwarder._fd
        os.write(fd, frame("first"))
        os.write(fd, frame("cut short")[:30])  # header + part of the payload
        os.write(fd, frame("second"))
        os.write(fd, garbage)
        os.write(fd, frame("third"))
        whole = frame("fourth")
        os.write(fd, whole[:20])
        assert forwarder.drain() == 3  # "fourth" may still be being written
        assert forwarder.skipped_bytes == 30 + len(garbage)
        os.write(fd, whole[20:])
        assert forwarder.drain() == 1
        # A cut record claiming more bytes than follow it: the complete
        # record after it shows that its writer is gone.
        os.write(fd, frame("long " * 2000)[:40])
        assert forwarder.drain() == 0
        os.write(fd, frame("fifth"))
        assert forwarder.drain() == 1
        assert forwarder.skipped_bytes == 30 + 40 + len(garbage)
        os.write(fd, frame("sixth")[:25])  # its writer died: dropped at close
    assert handler.messages() == ["first", "second", "third", "fourth", "fifth"]
    assert forwarder.skipped_bytes == 30 + 40 + 25 + len(garbage)


def test_spool_space_is_released(named_logger) -> None:
    name, _ = named_logger
    log = logging.getLogger(name)
    with LogForwarder(Collect()) as forwarder:
        record = log.makeRecord(name, logging.INFO, __file__, 1, "y" * 4000, (), None)
        data = encode_record(record, logging.Formatter()) * 1000  # about 4 MB
        os.write(forwarder._fd, data)
        assert forwarder.drain() == 1000
        if forwarder._puncher is None:
            pytest.skip("this file system cannot punch holes")
        assert os.fstat(forwarder._fd).st_blocks * 512 < 1024 * 1024


def test_flushes_every_handler_on_exit(method: str, tmp_path) -> None:
    """Workers end with os._exit; the scope's exit flushes buffered handlers."""
    path = str(tmp_path / "buffered.log")
    with Jobserver(method, slots=1) as js:
        js.submit(extras_tasks.log_through_memory_handler, args=(path,)).result()
        assert not os.path.exists(path) or os.path.getsize(path) == 0
        logged = js.replace_preexec(WorkerLogging())
        logged.submit(extras_tasks.log_through_memory_handler, args=(path,)).result()
    with open(path) as f:
        assert f.read() == "buffered line\n"


def test_configures_stderr_with_the_format(method: str, capfd) -> None:
    if method == "forkserver":
        pytest.skip("fork-server children write to the fork server's stderr")
    with Jobserver(method, slots=1) as js:
        logged = js.replace_preexec(
            WorkerLogging(
                logging.WARNING, format="W|%(levelname)s|%(name)s|%(message)s"
            )
        )
        logged.submit(extras_tasks.log_to_stderr, args=("fmt",)).result()
    assert "W|WARNING|fmt|to stderr from the worker" in capfd.readouterr().err


def test_worker_root_configuration(method: str) -> None:
    with Jobserver(method, slots=1) as js:
        level, handlers = (
            js.replace_preexec(WorkerLogging("warning"))
            .submit(extras_tasks.root_logging_state)
            .result()
        )
    assert level == logging.WARNING
    assert handlers == ["StreamHandler"]


def test_scope_restores_the_previous_configuration() -> None:
    root = logging.getLogger()
    before_level, before_handlers = root.level, list(root.handlers)
    with WorkerLogging(logging.CRITICAL)():
        assert root.level == logging.CRITICAL
        assert len(root.handlers) == 1
        assert root.handlers[0] not in before_handlers
    assert root.level == before_level
    assert root.handlers == before_handlers
    with WorkerLogging(logging.CRITICAL, replace_handlers=False)():
        assert root.handlers[: len(before_handlers)] == before_handlers
        assert len(root.handlers) == len(before_handlers) + 1
    assert root.handlers == before_handlers


def test_pickling() -> None:
    plain = WorkerLogging("INFO", format="%(message)s")
    copy = pickle.loads(pickle.dumps(plain))
    assert copy.level == logging.INFO
    assert not copy.forwarding
    with LogForwarder() as forwarder:
        forwarding = WorkerLogging(forward=forwarder)
        assert forwarding.forwarding
        with pytest.raises(TypeError, match="launched"):
            pickle.dumps(forwarding)
        with pytest.raises(TypeError, match="parent"):
            pickle.dumps(forwarder)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"level": "LOUD"}, ValueError, "level"),
        ({"level": -1}, ValueError, "level"),
        ({"level": True}, TypeError, "level"),
        ({"level": 1.5}, TypeError, "level"),
        ({"format": 3}, TypeError, "format"),
        ({"format": "%(message)s", "style": "{"}, ValueError, "format"),
        ({"style": "#"}, ValueError, "style"),
        ({"datefmt": 5}, TypeError, "datefmt"),
        ({"forward": "stderr"}, TypeError, "forward"),
        ({"replace_handlers": 1}, TypeError, "replace_handlers"),
    ],
)
def test_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        WorkerLogging(**kwargs)


def test_forwarder_arguments(tmp_path) -> None:
    with pytest.raises(TypeError, match="target"):
        LogForwarder("root")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="directory"):
        LogForwarder(directory=str(tmp_path / "missing"))
    with LogForwarder(directory=str(tmp_path)) as forwarder:
        assert os.listdir(tmp_path) == []  # the spool is unlinked at once
        assert "handled=0" in repr(forwarder)
    assert forwarder.closed
    assert forwarder.drain() == 0
    forwarder.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        WorkerLogging(forward=forwarder)


def test_stale_forwarding_is_refused(method: str, no_leaks) -> None:
    """A WorkerLogging outliving its forwarder must not write to a reused
    descriptor: launching with it fails clearly instead."""
    forwarder = LogForwarder()
    stale = WorkerLogging(forward=forwarder)
    forwarder.close()
    with Jobserver(method, slots=1) as js:
        with pytest.raises(ValueError, match="closed"):
            js.replace_preexec(stale).submit(os.getpid).result()
        assert js.submit(os.getpid).result() > 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")
def test_forwarder_dropped_unclosed_warns() -> None:
    forwarder = LogForwarder()
    with pytest.warns(ResourceWarning, match="close"):
        forwarder.__del__()
    assert forwarder.closed

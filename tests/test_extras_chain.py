"""chain_preexecs: several preexecs as one, entered in order, exited in reverse."""

from __future__ import annotations

import functools
import logging
import pickle
import signal
import sys

import extras_tasks
import pytest
from extras_tasks import Noting, NotingCall, read_lines
from jobserver import Jobserver
from jobserver_extras import (
    LogForwarder,
    PreexecChain,
    WorkerLogging,
    chain_preexecs,
)

if sys.platform.startswith("linux"):
    from jobserver_extras import ParentDeathSignal

    # Built at import: the lifeline pipe it creates must predate no_leaks.
    PDS_TERM = ParentDeathSignal(signal.SIGTERM)


def test_order_around_the_task(method: str, tmp_path, no_leaks) -> None:
    path = str(tmp_path / "notes")
    chain = chain_preexecs(
        Noting(path, "a"),
        NotingCall(path, "b"),
        functools.partial(extras_tasks.note, path, "call c"),
        Noting(path, "d"),
    )
    with Jobserver(method, slots=1) as js:
        assert js.replace_preexec(chain).submit(
            extras_tasks.note_task, args=(path,)
        ).result() == ("done")
    assert read_lines(path) == [
        "enter a",
        "call b",
        "call c",
        "enter d",
        "task",
        "exit d -",
        "exit a -",
    ]


def test_managers_see_the_task_fail(tmp_path) -> None:
    path = str(tmp_path / "notes")
    chain = chain_preexecs(Noting(path, "a"), Noting(path, "b"))
    with Jobserver("fork", slots=1) as js:
        future = js.replace_preexec(chain).submit(
            extras_tasks.note_task, args=(path, True)
        )
        with pytest.raises(ValueError, match="task failed"):
            future.result()
    assert read_lines(path) == [
        "enter a",
        "enter b",
        "task",
        "exit b ValueError",
        "exit a ValueError",
    ]


def test_failing_element_unwinds_and_skips_the_task(method: str, tmp_path) -> None:
    path = str(tmp_path / "notes")
    chain = chain_preexecs(
        Noting(path, "a"), Noting(path, "b", fail_on_enter=True), Noting(path, "c")
    )
    with Jobserver(method, slots=1) as js:
        future = js.replace_preexec(chain).submit(extras_tasks.note_task, args=(path,))
        with pytest.raises(RuntimeError, match="b refused"):
            future.result()
    assert read_lines(path) == ["enter a", "fail b", "exit a RuntimeError"]


def test_chains_nest_and_pickle(tmp_path) -> None:
    path = str(tmp_path / "notes")
    inner = chain_preexecs(Noting(path, "x"), NotingCall(path, "y"))
    outer = chain_preexecs(inner, Noting(path, "z"))
    copy = pickle.loads(pickle.dumps(outer))
    assert isinstance(copy, PreexecChain)
    assert len(copy.preexecs) == 2
    with copy():
        extras_tasks.note(path, "body")
    assert read_lines(path) == [
        "enter x",
        "call y",
        "enter z",
        "body",
        "exit z -",
        "exit x -",
    ]


def test_equality_follows_the_elements() -> None:
    from jobserver_extras import AdvisoryLock

    chain = chain_preexecs(AdvisoryLock("/tmp/a.lock"), AdvisoryLock("/tmp/b.lock"))
    copy = pickle.loads(pickle.dumps(chain))
    assert copy == chain
    assert hash(copy) == hash(chain)
    assert copy != chain_preexecs(AdvisoryLock("/tmp/a.lock"))
    assert "AdvisoryLock" in repr(copy)


def test_empty_chain_is_a_no_op() -> None:
    with chain_preexecs()() as stack:
        assert stack is not None


def test_elements_must_be_callable() -> None:
    with pytest.raises(TypeError, match=r"preexecs\[1\]"):
        chain_preexecs(print, "not callable")  # type: ignore[arg-type]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux pieces")
def test_every_piece_together(method: str, tmp_path, no_leaks) -> None:
    """All the preexecs in one chain, under every start method."""
    from jobserver_extras import AdvisoryLock, ResourceLimits

    handler_records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            handler_records.append(record)

    with LogForwarder(Keep()) as forwarder, Jobserver(method, slots=2) as js:
        chain = chain_preexecs(
            PDS_TERM,
            ResourceLimits(open_files=256),
            WorkerLogging(forward=forwarder),
            AdvisoryLock(tmp_path / "all.lock"),
        )
        hardened = js.replace_preexec(chain)
        futures = [
            hardened.submit(extras_tasks.log_messages, args=("together", 1))
            for _ in "ab"
        ]
        pids = {future.result() for future in futures}
        limits = hardened.submit(
            extras_tasks.getrlimits, args=(["RLIMIT_NOFILE"],)
        ).result()
        assert limits["RLIMIT_NOFILE"][0] == 256
        forwarder.drain()
    assert {r.process for r in handler_records} == pids
    assert len(handler_records) == 4

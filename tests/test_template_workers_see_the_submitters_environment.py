"""Under spawn and forkserver a worker sees the environment of the process
that submitted it, as of the submission.

The template applies each request's environment to itself before forking
(only when it differs from the last it applied), so that its workers inherit
it.  These tests pin what a user relies on through that: changes and removals
between two submissions, a nested submitter with an environment of its own,
and a malformed request that must fail alone."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

import pytest
import tasks
from conftest import close_template
from jobserver import Jobserver, _template

pytestmark = pytest.mark.skipif(
    not _template.available(), reason="the template launcher is Linux-only"
)

METHODS = ["spawn", "forkserver"]


@pytest.fixture
def scratch_environment() -> Iterator[None]:
    """Whatever a test does to os.environ is undone afterwards."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.parametrize("method", METHODS)
def test_changes_and_removals_between_submissions_are_seen(
    method: str, scratch_environment: None
) -> None:
    with Jobserver(context=method, slots=1) as js:
        os.environ["JOBSERVER_TEST_A"] = "1"
        assert js.submit(tasks.environment).result() == dict(os.environ)
        os.environ["JOBSERVER_TEST_A"] = "2"
        os.environ["JOBSERVER_TEST_B"] = "x=y"  # '=' in a value survives
        assert js.submit(tasks.environment).result() == dict(os.environ)
        del os.environ["JOBSERVER_TEST_A"]
        os.environ["JOBSERVER_TEST_EMPTY"] = ""
        seen = js.submit(tasks.environment).result()
        assert seen == dict(os.environ)
        assert "JOBSERVER_TEST_A" not in seen and seen["JOBSERVER_TEST_EMPTY"] == ""
        # Unchanged since the last submission: still exactly the same.
        assert js.submit(tasks.environment).result() == dict(os.environ)


@pytest.mark.parametrize("method", METHODS)
def test_a_nested_submitter_s_environment_reaches_only_its_own_workers(
    method: str, scratch_environment: None
) -> None:
    """A worker that changes its environment and submits nested work (through
    the same template) hands its environment to its nested worker; the
    parent's next worker sees the parent's again."""
    os.environ["JOBSERVER_TEST_WHO"] = "parent"
    with Jobserver(context=method, slots=2) as js:
        nested = js.submit(
            tasks.nested_getenv_after_setting,
            args=(js, "JOBSERVER_TEST_WHO", "worker"),
            consume=0,
        )
        assert nested.result() == "worker"
        assert js.submit(tasks.getenv, args=("JOBSERVER_TEST_WHO",)).result() == (
            "parent"
        )


def test_a_malformed_request_fails_alone(no_leaks: None) -> None:
    """A body too short for its environment's length is answered FAILED
    (EINVAL) without a fork; the template closes the descriptors that came
    with it and keeps serving."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    template = _template._Template(theirs)
    read_fd, write_fd = os.pipe()
    try:
        for body in (b"abc", _template._HEADER.pack(1000) + b"short"):
            socket.send_fds(
                ours, [_template._REQUEST.pack(len(body), 0) + body], [write_fd]
            )
            while True:
                template.dispatch(template.poller.poll(1000))
                ours.setblocking(False)
                try:
                    record = ours.recv(_template._RECORD.size)
                except BlockingIOError:
                    continue
                finally:
                    ours.setblocking(True)
                break
            assert _template._RECORD.unpack(record) == (
                _template.FAILED,
                errno.EINVAL,
                0,
            )
        os.close(write_fd)
        write_fd = -1
        # The template kept no copy of the write end: end-of-file at once.
        assert os.read(read_fd, 1) == b""
        assert not template.holding and template.environ is None
    finally:
        close_template(template)
        ours.close()
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def test_an_entry_the_c_library_refuses_is_left_out(scratch_environment: None) -> None:
    """An empty name can only come from a process's initial environment;
    the template leaves it out instead of failing (which would end the
    template, and every Future with it)."""
    blob = _template.environ_bytes() + b"\0=refused\0JOBSERVER_TEST_OK=a=b"
    _template.apply_environ(blob)
    assert os.environ["JOBSERVER_TEST_OK"] == "a=b"
    assert "" not in os.environ

"""Sibling handles share one resource set; scopes count; teardown is complete."""

from __future__ import annotations

import contextlib
import copy
import gc
import multiprocessing
import os
import warnings

import pytest
import tasks
from conftest import assert_slots_conserved
from jobserver import Blocked, Jobserver


def test_revise_env_sets_unsets_and_merges(method: str) -> None:
    os.environ["JOBSERVER_TEST_INHERITED"] = "parent"
    try:
        with Jobserver(context=method, slots=2) as js:
            a = js.revise_env({"JOBSERVER_TEST_A": "1"})
            b = a.revise_env(
                [("JOBSERVER_TEST_B", "2"), ("JOBSERVER_TEST_INHERITED", None)]
            )
            assert a(tasks.getenv, "JOBSERVER_TEST_A").result() == "1"
            assert a(tasks.getenv, "JOBSERVER_TEST_INHERITED").result() == "parent"
            assert b(tasks.getenv, "JOBSERVER_TEST_A").result() == "1"
            assert b(tasks.getenv, "JOBSERVER_TEST_B").result() == "2"
            assert b(tasks.getenv, "JOBSERVER_TEST_INHERITED").result() is None
            assert js(tasks.getenv, "JOBSERVER_TEST_A").result() is None
            assert "JOBSERVER_TEST_A" not in os.environ
    finally:
        del os.environ["JOBSERVER_TEST_INHERITED"]


@pytest.mark.parametrize(
    ("additions", "error"),
    [
        ({"": "x"}, ValueError),
        ({"A=B": "x"}, ValueError),
        ({"A\0": "x"}, ValueError),
        ({"A": "x\0y"}, ValueError),
        ({1: "x"}, TypeError),
        ({"A": 1}, TypeError),
        ({"A": b"x"}, TypeError),
        ("A=B", TypeError),
        ([("A",)], TypeError),
        (42, TypeError),
    ],
)
def test_revise_env_validates_eagerly(additions: object, error: type) -> None:
    js = Jobserver(context="fork", slots=1)
    with pytest.raises(error):
        js.revise_env(additions)


@contextlib.contextmanager
def marking(path: str):
    with open(path, "a") as f:
        f.write("enter\n")
    try:
        yield
    finally:
        with open(path, "a") as f:
            f.write("exit\n")


def write_mark(path: str, text: str) -> str:
    with open(path, "a") as f:
        f.write(text + "\n")
    return text


def append_line(path: str, text: str) -> None:
    write_mark(path, text)


def test_replace_preexec_plain_and_context_manager(
    method: str, tmp_path: object
) -> None:
    path = os.path.join(str(tmp_path), "marks")
    with Jobserver(context=method, slots=1) as js:
        plain = js.replace_preexec(append_line, path, text="pre")
        assert plain(write_mark, path, "task").result() == "task"
        managed = js.replace_preexec(marking, path)
        assert managed(write_mark, path, "task2").result() == "task2"
        with pytest.raises(ValueError):
            managed(tasks.raise_value_error).result()
    with open(path) as f:
        assert f.read().split() == [
            "pre",
            "task",
            "enter",
            "task2",
            "exit",
            "enter",
            "exit",
        ]


def test_raising_preexec_fails_the_task_like_the_task() -> None:
    with Jobserver(context="fork", slots=1) as js:
        with pytest.raises(ValueError, match="preexec says no"):
            js.replace_preexec(tasks.raise_value_error, "preexec says no")(
                len, "x"
            ).result()
        assert_slots_conserved(js, 1)


@pytest.mark.parametrize("bad", [None, 42, "fn"])
def test_non_callables_are_type_errors(bad: object) -> None:
    js = Jobserver(context="fork", slots=1)
    with pytest.raises(TypeError):
        js.replace_preexec(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        js.replace_sleep(bad)  # type: ignore[arg-type]


def test_replace_sleep_gates_and_respects_timeout() -> None:
    answers = [0.001, 0.001, None]
    asked = []

    def gate():
        asked.append(1)
        return answers.pop(0) if answers else None

    with Jobserver(context="fork", slots=1) as js:
        assert js.replace_sleep(gate)(tasks.identity, 1).result() == 1
        assert len(asked) == 3
        with pytest.raises(Blocked):
            js.replace_sleep(lambda: 0.05).submit(
                tasks.identity, args=(1,), timeout=0.2
            )
        with pytest.raises(Blocked):
            js.replace_sleep(lambda: 0.05).submit(tasks.identity, args=(1,), timeout=0)
        assert_slots_conserved(js, 1)


def test_copies_are_siblings_sharing_slots() -> None:
    js = Jobserver(context="fork", slots=2).revise_env({"K": "v"})
    for other in (copy.copy(js), copy.deepcopy(js)):
        assert other is not js
        assert other._resources is js._resources
        assert other(tasks.getenv, "K").result() == "v"
    assert_slots_conserved(js, 2)


def test_context_is_resolved() -> None:
    assert Jobserver(context="spawn", slots=1).context.get_start_method() == "spawn"
    ctx = multiprocessing.get_context("fork")
    assert Jobserver(context=ctx, slots=1).context is ctx
    default = Jobserver(slots=1).context.get_start_method()
    assert default in multiprocessing.get_all_start_methods()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"context": "nope"}, ValueError),
        ({"context": 3}, TypeError),
        ({"slots": 0}, ValueError),
        ({"slots": -1}, ValueError),
        ({"slots": True}, TypeError),
        ({"slots": 2.0}, TypeError),
        ({"slots": "2"}, TypeError),
    ],
)
def test_constructor_validates(kwargs: dict, error: type, no_leaks: None) -> None:
    with pytest.raises(error):
        Jobserver(**kwargs)


def test_slots_none_uses_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAKEFLAGS", raising=False)
    monkeypatch.delenv("MFLAGS", raising=False)
    js = Jobserver(context="fork")
    expected = (
        len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count()
    )
    assert js._resources.pool.size == expected


def test_scopes_are_reference_counted() -> None:
    js = Jobserver(context="fork", slots=2)
    sibling = js.revise_env({"A": "1"})
    with js:
        with sibling:
            future = sibling(tasks.sleep_then, 0.05, "late")
        # The inner exit was not the last: the sibling still works.
        assert js(tasks.identity, 1).result() == 1
    assert future.done()
    assert future.result() == "late"
    with pytest.raises(RuntimeError, match="released"):
        js(tasks.identity, 1)
    with pytest.raises(RuntimeError, match="released"), js:
        pass


def test_last_exit_waits_for_outstanding_work(tmp_path: object, no_leaks: None) -> None:
    log = os.path.join(str(tmp_path), "intervals")
    with Jobserver(context="fork", slots=2) as js:
        for _ in range(4):
            js(tasks.record_interval, log, 0.02)
    with open(log) as f:
        assert len(f.readlines()) == 4


def test_dropping_a_jobserver_with_running_work_warns() -> None:
    js = Jobserver(context="fork", slots=1)
    r, w = os.pipe()
    try:
        future = js.submit(os.read, args=(r, 1))
        pid = future._worker.pid
        del future
        with pytest.warns(ResourceWarning):
            del js
            gc.collect()
    finally:
        os.write(w, b"x")
        os.close(r)
        os.close(w)
        os.waitpid(pid, 0)


def test_dropping_a_finished_jobserver_is_silent() -> None:
    js = Jobserver(context="fork", slots=1)
    js(tasks.identity, 1).result()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del js
        gc.collect()


def test_workers_see_the_parents_current_environment(method: str) -> None:
    # The fork server is a snapshot of the environment at its start; workers
    # must still see variables the parent set afterwards, as with fork/spawn.
    from multiprocessing import forkserver

    if method == "forkserver":
        forkserver.ensure_running()
    os.environ["JOBSERVER_TEST_LATE"] = "late"
    try:
        with Jobserver(context=method, slots=1) as js:
            assert js(tasks.getenv, "JOBSERVER_TEST_LATE").result() == "late"
    finally:
        del os.environ["JOBSERVER_TEST_LATE"]

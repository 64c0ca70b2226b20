"""when_done callbacks: order, seqnos, errors, late registration, re-entrancy."""

from __future__ import annotations

import threading

import pytest
import tasks
from jobserver import CallbackRaised, Jobserver


@pytest.fixture
def js():
    with Jobserver(context="fork", slots=2) as handle:
        yield handle


def test_callbacks_get_exactly_their_arguments_in_order(js: Jobserver) -> None:
    calls: list = []
    future = js(tasks.identity, "v")
    assert future.when_done(calls.append, "first") == 0
    assert future.when_done(lambda *a, **k: calls.append((a, k)), 1, 2, key=3) == 1
    assert future.result() == "v"
    assert calls == ["first", ((1, 2), {"key": 3})]


def test_seqnos_count_per_future(js: Jobserver) -> None:
    a, b = js(tasks.identity, 1), js(tasks.identity, 2)
    assert [a.when_done(int) for _ in range(3)] == [0, 1, 2]
    assert b.when_done(int) == 0
    a.result()
    assert a.when_done(int) == 3


def test_registering_after_completion_runs_at_once(js: Jobserver) -> None:
    calls: list = []
    future = js(tasks.identity, 1)
    future.result()
    future.when_done(calls.append, "late")
    assert calls == ["late"]


def test_raising_callbacks_drain_by_calling_again(js: Jobserver) -> None:
    calls: list = []
    future = js(tasks.identity, "value")
    future.when_done(tasks.raise_value_error, "zero")
    future.when_done(calls.append, "one")
    future.when_done(tasks.raise_value_error, "two")
    future.when_done(calls.append, "three")
    seen = []
    for _ in range(5):
        try:
            future.wait()
            break
        except CallbackRaised as exc:
            seen.append((exc.seqno, str(exc.__cause__)))
    assert seen == [(0, "zero"), (2, "two")]
    assert calls == ["one", "three"]
    assert future.result() == "value"


def test_callback_raised_surfaces_from_result_then_value(js: Jobserver) -> None:
    future = js(tasks.identity, 7)
    future.when_done(tasks.raise_value_error)
    with pytest.raises(CallbackRaised) as info:
        future.result()
    assert info.value.seqno == 0
    assert isinstance(info.value.__cause__, ValueError)
    assert future.result() == 7


def test_callback_raised_from_when_done_after_completion(js: Jobserver) -> None:
    future = js(tasks.identity, 1)
    future.result()
    with pytest.raises(CallbackRaised) as info:
        future.when_done(tasks.raise_value_error)
    assert info.value.seqno == 0


def test_callbacks_from_reclaim_resources(js: Jobserver) -> None:
    calls: list = []
    future = js(tasks.identity, 1)
    future.when_done(calls.append, "reclaimed")
    future.when_done(tasks.raise_value_error)
    future._settle(None)
    with pytest.raises(CallbackRaised):
        js.reclaim_resources()
    assert calls == ["reclaimed"]
    js.reclaim_resources()  # nothing left; does not raise again


def test_base_exception_from_callback_is_not_wrapped(js: Jobserver) -> None:
    class Stop(BaseException):
        pass

    def stop() -> None:
        raise Stop

    calls: list = []
    future = js(tasks.identity, 1)
    future.when_done(stop)
    future.when_done(calls.append, "after")
    with pytest.raises(Stop):
        future.wait()
    assert calls == []
    assert future.wait()
    assert calls == ["after"]


def test_callbacks_registering_callbacks_do_not_recurse(js: Jobserver) -> None:
    depth = 10_000
    count = [0]
    future = js(tasks.identity, 1)

    def chain() -> None:
        count[0] += 1
        if count[0] < depth:
            future.when_done(chain)

    future.when_done(chain)
    future.result()
    assert count[0] == depth


def test_callbacks_registering_callbacks_after_completion(js: Jobserver) -> None:
    depth = 10_000
    count = [0]
    future = js(tasks.identity, 1)
    future.result()

    def chain() -> None:
        count[0] += 1
        if count[0] < depth:
            future.when_done(chain)

    future.when_done(chain)
    assert count[0] == depth


def test_non_callable_callback_is_a_type_error(js: Jobserver) -> None:
    future = js(tasks.identity, 1)
    with pytest.raises(TypeError, match="callable"):
        future.when_done("nope")  # type: ignore[arg-type]
    future.result()


def test_each_callback_runs_once_across_threads(js: Jobserver) -> None:
    calls: list = []
    futures = [js(tasks.identity, i) for i in range(4)]
    for i, future in enumerate(futures):
        for j in range(50):
            future.when_done(calls.append, (i, j))
    barrier = threading.Barrier(4)

    def waiter() -> None:
        barrier.wait()
        for future in futures:
            future.wait()

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(calls) == [(i, j) for i in range(4) for j in range(50)]
    for i in range(4):
        assert [c for c in calls if c[0] == i] == [(i, j) for j in range(50)]

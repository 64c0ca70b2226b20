"""Jobserver.map: ordered results, chunks, lazy buffering, timeouts, bad input."""

from __future__ import annotations

import itertools
import os

import pytest
import tasks
from conftest import assert_slots_conserved
from jobserver import Blocked, Jobserver, WorkerTraceback


@pytest.fixture
def js():
    with Jobserver(context="fork", slots=3) as handle:
        yield handle


def test_results_in_input_order(method: str) -> None:
    with Jobserver(context=method, slots=3) as js:
        delays = [0.03, 0.0, 0.02, 0.0, 0.01]
        got = list(js.map(tasks.sleep_then, [(d, i) for i, d in enumerate(delays)]))
        assert got == list(range(len(delays)))


def test_argses_kwargses_and_both(js: Jobserver) -> None:
    assert list(js.map(tasks.add, [(1, 2), (3, 4)])) == [3, 7]
    assert list(js.map(tasks.add, kwargses=[{"a": 1}, {"a": 2, "b": 5}])) == [1, 7]
    assert list(js.map(tasks.add, [(1,), (2,)], [{"b": 10}, {"b": 20}])) == [11, 22]
    assert list(js.map(tasks.add, [])) == []


@pytest.mark.parametrize("chunksize", [1, 2, 3, 10])
def test_chunksize_groups_calls_per_worker(js: Jobserver, chunksize: int) -> None:
    pids = list(js.map(tasks.getpid, [()] * 7, chunksize=chunksize))
    groups = [len(list(g)) for _, g in itertools.groupby(pids)]
    expected = [min(chunksize, 7 - i) for i in range(0, 7, chunksize)]
    assert groups == expected


def test_chunk_exception_yields_earlier_results_then_raises(js: Jobserver) -> None:
    results = js.map(int, [("1",), ("2",), ("x",), ("4",)], chunksize=4)
    assert next(results) == 1
    assert next(results) == 2
    with pytest.raises(ValueError) as info:
        next(results)
    assert isinstance(info.value.__cause__, WorkerTraceback)


def test_exception_at_its_position(js: Jobserver) -> None:
    results = js.map(int, [("1",), ("x",), ("3",)])
    assert next(results) == 1
    with pytest.raises(ValueError):
        next(results)


def test_buffersize_consumes_inputs_lazily(js: Jobserver) -> None:
    consumed = []

    def inputs():
        for i in itertools.count():
            consumed.append(i)
            yield (i,)

    results = js.map(tasks.identity, inputs(), buffersize=2)
    assert len(consumed) == 2
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert len(consumed) <= 5 + 2
    del results
    js._resources.drain()
    assert_slots_conserved(js, 3)


def test_without_buffersize_everything_is_submitted_up_front(js: Jobserver) -> None:
    consumed = []

    def inputs():
        for i in range(5):
            consumed.append(i)
            yield (i,)

    results = js.map(tasks.identity, inputs())
    assert consumed == [0, 1, 2, 3, 4]
    assert list(results) == [0, 1, 2, 3, 4]


def test_timeout_counts_from_the_call() -> None:
    with Jobserver(context="fork", slots=2) as js:
        r, w = os.pipe()
        try:
            results = js.map(os.read, [(r, 1), (r, 1)], timeout=0.2)
            with pytest.raises(Blocked):
                next(results)
            os.write(w, b"ab")
        finally:
            os.close(w)
        js._resources.drain()
        os.close(r)
        assert_slots_conserved(js, 2)


def test_stopping_early_does_not_cancel_running_work(tmp_path: object) -> None:
    log = os.path.join(str(tmp_path), "done")
    with Jobserver(context="fork", slots=2) as js:
        results = js.map(tasks.record_interval, [(log, 0.01)] * 4)
        next(results)
        del results
    with open(log) as f:
        assert len(f.readlines()) == 4


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"argses": None, "kwargses": None}, TypeError),
        ({"argses": "abc"}, TypeError),
        ({"argses": 5}, TypeError),
        ({"kwargses": {"a": 1}}, TypeError),
        ({"argses": [(1,), (2,)], "kwargses": [{}]}, ValueError),
        ({"argses": [(1,)], "chunksize": 0}, ValueError),
        ({"argses": [(1,)], "chunksize": True}, TypeError),
        ({"argses": [(1,)], "buffersize": 0}, ValueError),
        ({"argses": [(1,)], "buffersize": 1.5}, TypeError),
        ({"argses": [(1,)], "timeout": -1}, ValueError),
        ({"argses": [(1,)], "timeout": float("nan")}, ValueError),
    ],
)
def test_bad_arguments(
    js: Jobserver, kwargs: dict, error: type, no_leaks: None
) -> None:
    with pytest.raises(error):
        js.map(tasks.identity, **kwargs)
    assert_slots_conserved(js, 3)


def test_non_callable_fn(js: Jobserver) -> None:
    with pytest.raises(TypeError):
        js.map(42, [(1,)])  # type: ignore[arg-type]


def test_lazily_mismatched_lengths_raise_from_the_iterator(js: Jobserver) -> None:
    # Like Executor.map with buffersize, the next input is read (and the
    # mismatch found) before the current result is handed out.
    results = js.map(tasks.add, iter([(1,), (2,)]), iter([{"b": 1}]), buffersize=1)
    with pytest.raises(ValueError, match="differ in length"):
        list(results)


def test_string_element_of_argses_is_a_type_error(js: Jobserver) -> None:
    with pytest.raises(TypeError, match="argses"):
        js.map(len, ["abc"])

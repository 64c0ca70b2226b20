"""Every public entry point, called with wrong types, wrong values and edge
values: each bad call is a clear ``TypeError``/``ValueError`` naming the
argument, raised before anything is taken, and afterwards exactly N slots
remain and no descriptor or child process is left behind.

The tables below are also docs/reliability.md's bad-input table:
``python tests/test_bad_input.py`` prints it (Markdown) with the messages
the library gives today, and ``test_the_table_is_documented`` keeps the two
in step.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
import tasks
from conftest import START_METHODS, assert_slots_conserved
from jobserver import Blocked, Future, Jobserver

SLOTS = 2
DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"


class Case(NamedTuple):
    """``call(js, done_future)`` must raise ``error`` matching ``match``."""

    id: str
    call: Callable[[Jobserver, Future[Any]], Any]
    error: type[BaseException]
    match: str


def _gate(value: Any) -> Callable[[], Any]:
    return lambda: value


def _drain(iterator: Iterator[Any]) -> list[Any]:
    return list(iterator)


# --- Jobserver(...) and Jobserver.with_fifo(...) ---------------------------------

CONSTRUCTOR = [
    Case("Jobserver(context=42)", lambda js, f: Jobserver(42), TypeError, "context"),
    Case(
        "Jobserver(context=b'fork')",
        lambda js, f: Jobserver(b"fork"),  # type: ignore[arg-type]
        TypeError,
        "context",
    ),
    Case(
        "Jobserver(context='nope')",
        lambda js, f: Jobserver("nope"),
        ValueError,
        "context",
    ),
    Case("Jobserver(context='')", lambda js, f: Jobserver(""), ValueError, "context"),
    Case(
        "Jobserver(slots=True)", lambda js, f: Jobserver(slots=True), TypeError, "slots"
    ),
    Case(
        "Jobserver(slots=1.0)", lambda js, f: Jobserver(slots=1.0), TypeError, "slots"
    ),  # type: ignore[arg-type]
    Case(
        "Jobserver(slots='2')", lambda js, f: Jobserver(slots="2"), TypeError, "slots"
    ),  # type: ignore[arg-type]
    Case("Jobserver(slots=0)", lambda js, f: Jobserver(slots=0), ValueError, "slots"),
    Case("Jobserver(slots=-1)", lambda js, f: Jobserver(slots=-1), ValueError, "slots"),
    Case(
        "Jobserver.with_fifo(slots=0)",
        lambda js, f: Jobserver.with_fifo(slots=0),
        ValueError,
        "slots",
    ),
    Case(
        "Jobserver.with_fifo(context=3)",
        lambda js, f: Jobserver.with_fifo(context=3),  # type: ignore[arg-type]
        TypeError,
        "context",
    ),
]

# --- submit and __call__ -------------------------------------------------------------

SUBMIT = [
    Case("submit(fn=42)", lambda js, f: js.submit(42), TypeError, "fn"),  # type: ignore[arg-type]
    Case("js(42)", lambda js, f: js(42), TypeError, "fn"),  # type: ignore[arg-type]
    Case(
        "submit(args='abc')",
        lambda js, f: js.submit(len, args="abc"),
        TypeError,
        "args",
    ),
    Case(
        "submit(args=b'ab')",
        lambda js, f: js.submit(len, args=b"ab"),
        TypeError,
        "args",
    ),
    Case("submit(args=7)", lambda js, f: js.submit(len, args=7), TypeError, "args"),  # type: ignore[arg-type]
    Case(
        "submit(args=None)", lambda js, f: js.submit(len, args=None), TypeError, "args"
    ),  # type: ignore[arg-type]
    Case(
        "submit(args={'a': 1})",
        lambda js, f: js.submit(len, args={"a": 1}),
        TypeError,
        "args",
    ),
    Case(
        "submit(kwargs=[1, 2])",
        lambda js, f: js.submit(len, kwargs=[1, 2]),  # type: ignore[arg-type]
        TypeError,
        "kwargs",
    ),
    Case(
        "submit(kwargs={1: 2})",
        lambda js, f: js.submit(len, kwargs={1: 2}),  # type: ignore[dict-item]
        TypeError,
        "kwargs",
    ),
    Case(
        "submit(consume=True)",
        lambda js, f: js.submit(len, consume=True),
        TypeError,
        "consume",
    ),
    Case(
        "submit(consume=1.0)",
        lambda js, f: js.submit(len, consume=1.0),
        TypeError,
        "consume",
    ),  # type: ignore[arg-type]
    Case(
        "submit(consume='1')",
        lambda js, f: js.submit(len, consume="1"),
        TypeError,
        "consume",
    ),  # type: ignore[arg-type]
    Case(
        "submit(consume=-1)",
        lambda js, f: js.submit(len, consume=-1),
        ValueError,
        "consume",
    ),
    Case(
        "submit(consume=N+1)",
        lambda js, f: js.submit(len, consume=SLOTS + 1),
        ValueError,
        "consume",
    ),
    Case(
        "submit(timeout=-1)",
        lambda js, f: js.submit(len, timeout=-1),
        ValueError,
        "timeout",
    ),
    Case(
        "submit(timeout=nan)",
        lambda js, f: js.submit(len, timeout=math.nan),
        ValueError,
        "timeout",
    ),
    Case(
        "submit(timeout=-inf)",
        lambda js, f: js.submit(len, timeout=-math.inf),
        ValueError,
        "timeout",
    ),
    Case(
        "submit(timeout='1')",
        lambda js, f: js.submit(len, timeout="1"),
        TypeError,
        "timeout",
    ),  # type: ignore[arg-type]
    Case(
        "submit(timeout=True)",
        lambda js, f: js.submit(len, timeout=True),
        TypeError,
        "timeout",
    ),
    Case(
        "submit(timeout=[])",
        lambda js, f: js.submit(len, timeout=[]),
        TypeError,
        "timeout",
    ),  # type: ignore[arg-type]
]

# --- map -------------------------------------------------------------------------------

MAP = [
    Case("map(fn=42)", lambda js, f: js.map(42, [(1,)]), TypeError, "fn"),  # type: ignore[arg-type]
    Case("map() without inputs", lambda js, f: js.map(len), TypeError, "argses"),
    Case("map(argses='ab')", lambda js, f: js.map(len, "ab"), TypeError, "argses"),
    Case("map(argses=7)", lambda js, f: js.map(len, 7), TypeError, "argses"),  # type: ignore[arg-type]
    Case(
        "map(argses={'a': 1})",
        lambda js, f: js.map(len, {"a": 1}),  # type: ignore[arg-type]
        TypeError,
        "argses",
    ),
    Case(
        "map(kwargses={'a': 1})",
        lambda js, f: js.map(len, kwargses={"a": 1}),  # type: ignore[arg-type]
        TypeError,
        "kwargses",
    ),
    Case(
        "map(argses=['ab']) (lazily)",
        lambda js, f: _drain(js.map(len, ["ab"])),
        TypeError,
        "argses",
    ),
    Case(
        "map(kwargses=[1]) (lazily)",
        lambda js, f: _drain(js.map(len, kwargses=[1])),  # type: ignore[list-item]
        TypeError,
        "kwargses",
    ),
    Case(
        "map(argses, kwargses) of different lengths",
        lambda js, f: js.map(tasks.add, [(1,), (2,)], [{}]),
        ValueError,
        "argses and kwargses",
    ),
    Case(
        "map(argses, kwargses) of different lengths (lazily)",
        lambda js, f: _drain(js.map(tasks.add, iter([(1,), (2,)]), iter([{}]))),
        ValueError,
        "argses and kwargses",
    ),
    Case(
        "map(chunksize=0)",
        lambda js, f: js.map(len, [()], chunksize=0),
        ValueError,
        "chunksize",
    ),
    Case(
        "map(chunksize=-1)",
        lambda js, f: js.map(len, [()], chunksize=-1),
        ValueError,
        "chunksize",
    ),
    Case(
        "map(chunksize=True)",
        lambda js, f: js.map(len, [()], chunksize=True),
        TypeError,
        "chunksize",
    ),
    Case(
        "map(chunksize=1.5)",
        lambda js, f: js.map(len, [()], chunksize=1.5),  # type: ignore[arg-type]
        TypeError,
        "chunksize",
    ),
    Case(
        "map(buffersize=0)",
        lambda js, f: js.map(len, [()], buffersize=0),
        ValueError,
        "buffersize",
    ),
    Case(
        "map(buffersize=True)",
        lambda js, f: js.map(len, [()], buffersize=True),
        TypeError,
        "buffersize",
    ),
    Case(
        "map(buffersize='2')",
        lambda js, f: js.map(len, [()], buffersize="2"),  # type: ignore[arg-type]
        TypeError,
        "buffersize",
    ),
    Case(
        "map(timeout=-1)",
        lambda js, f: js.map(len, [()], timeout=-1),
        ValueError,
        "timeout",
    ),
    Case(
        "map(timeout=nan)",
        lambda js, f: js.map(len, [()], timeout=math.nan),
        ValueError,
        "timeout",
    ),
]

# --- siblings: revise_env, replace_preexec, replace_sleep, replace_time_limit ---------

SIBLINGS = [
    Case("revise_env(1)", lambda js, f: js.revise_env(1), TypeError, "additions"),
    Case("revise_env('AB')", lambda js, f: js.revise_env("AB"), TypeError, "additions"),
    Case(
        "revise_env([('A',)])",
        lambda js, f: js.revise_env([("A",)]),
        TypeError,
        "additions",
    ),
    Case(
        "revise_env({1: 'a'})", lambda js, f: js.revise_env({1: "a"}), TypeError, "key"
    ),
    Case(
        "revise_env({'': 'a'})",
        lambda js, f: js.revise_env({"": "a"}),
        ValueError,
        "key",
    ),
    Case(
        "revise_env({'A=B': 'a'})",
        lambda js, f: js.revise_env({"A=B": "a"}),
        ValueError,
        "key",
    ),
    Case(
        "revise_env({'A\\0': 'a'})",
        lambda js, f: js.revise_env({"A\0": "a"}),
        ValueError,
        "key",
    ),
    Case(
        "revise_env({'A': 'a\\0'})",
        lambda js, f: js.revise_env({"A": "a\0"}),
        ValueError,
        "value",
    ),
    Case(
        "revise_env({'A': 1})",
        lambda js, f: js.revise_env({"A": 1}),
        TypeError,
        "value",
    ),
    Case(
        "revise_env({'A': b'x'})",
        lambda js, f: js.revise_env({"A": b"x"}),
        TypeError,
        "value",
    ),
    Case("replace_preexec(3)", lambda js, f: js.replace_preexec(3), TypeError, "fn"),  # type: ignore[arg-type]
    Case("replace_sleep(3)", lambda js, f: js.replace_sleep(3), TypeError, "fn"),  # type: ignore[arg-type]
    Case(
        "replace_sleep(gate returning 'soon'), then submit",
        lambda js, f: js.replace_sleep(_gate("soon")).submit(len, args=((),)),
        ValueError,
        "sleep function",
    ),
    Case(
        "replace_sleep(gate returning -1), then submit",
        lambda js, f: js.replace_sleep(_gate(-1)).submit(len, args=((),)),
        ValueError,
        "sleep function",
    ),
    Case(
        "replace_sleep(gate returning nan), then submit",
        lambda js, f: js.replace_sleep(_gate(math.nan)).submit(len, args=((),)),
        ValueError,
        "sleep function",
    ),
    Case(
        "replace_sleep(gate returning True), then submit",
        lambda js, f: js.replace_sleep(_gate(True)).submit(len, args=((),)),
        ValueError,
        "sleep function",
    ),
    Case(
        "replace_time_limit(0)",
        lambda js, f: js.replace_time_limit(0),
        ValueError,
        "seconds",
    ),
    Case(
        "replace_time_limit(-1)",
        lambda js, f: js.replace_time_limit(-1),
        ValueError,
        "seconds",
    ),
    Case(
        "replace_time_limit(nan)",
        lambda js, f: js.replace_time_limit(math.nan),
        ValueError,
        "seconds",
    ),
    Case(
        "replace_time_limit(True)",
        lambda js, f: js.replace_time_limit(True),
        TypeError,
        "seconds",
    ),
    Case(
        "replace_time_limit('1')",
        lambda js, f: js.replace_time_limit("1"),  # type: ignore[arg-type]
        TypeError,
        "seconds",
    ),
    Case(
        "replace_time_limit(1, grace=-1)",
        lambda js, f: js.replace_time_limit(1, grace=-1),
        ValueError,
        "grace",
    ),
]

# --- Future ------------------------------------------------------------------------------

FUTURE = [
    Case("result(timeout=-1)", lambda js, f: f.result(-1), ValueError, "timeout"),
    Case(
        "result(timeout=nan)", lambda js, f: f.result(math.nan), ValueError, "timeout"
    ),
    Case("result(timeout='1')", lambda js, f: f.result("1"), TypeError, "timeout"),  # type: ignore[arg-type]
    Case("result(timeout=True)", lambda js, f: f.result(True), TypeError, "timeout"),
    Case("done(timeout=-1)", lambda js, f: f.done(-1), ValueError, "timeout"),
    Case("done(timeout=nan)", lambda js, f: f.done(math.nan), ValueError, "timeout"),
    Case("wait(timeout=-0.5)", lambda js, f: f.wait(-0.5), ValueError, "timeout"),
    Case(
        "wait(signal='SIGTERM')",
        lambda js, f: f.wait(signal="SIGTERM"),  # type: ignore[arg-type]
        TypeError,
        "signal",
    ),
    Case("wait(signal=True)", lambda js, f: f.wait(signal=True), TypeError, "signal"),
    Case("wait(signal=1.5)", lambda js, f: f.wait(signal=1.5), TypeError, "signal"),  # type: ignore[arg-type]
    Case("wait(signal=0)", lambda js, f: f.wait(signal=0), ValueError, "signal"),
    Case("wait(signal=-1)", lambda js, f: f.wait(signal=-1), ValueError, "signal"),
    Case(
        "wait(signal=NSIG + 10)",
        lambda js, f: f.wait(signal=signal.NSIG + 10),
        ValueError,
        "signal",
    ),
    Case("when_done(3)", lambda js, f: f.when_done(3), TypeError, "fn"),  # type: ignore[arg-type]
]

# --- the Make protocol and slot holds ----------------------------------------------

PROTOCOL = [
    Case("advertise('xml')", lambda js, f: js.advertise("xml"), ValueError, "form"),
    Case("advertise(1)", lambda js, f: js.advertise(1), TypeError, "form"),  # type: ignore[arg-type]
    Case(
        "advertise('fifo') on an anonymous pipe",
        lambda js, f: js.advertise("fifo"),
        ValueError,
        "FIFO",
    ),
    Case(
        "advertise(consume=True)",
        lambda js, f: js.advertise(consume=True),
        TypeError,
        "consume",
    ),
    Case(
        "advertise(consume=-1)",
        lambda js, f: js.advertise(consume=-1),
        ValueError,
        "consume",
    ),
    Case(
        "advertise(timeout=-1)",
        lambda js, f: js.advertise(timeout=-1),
        ValueError,
        "timeout",
    ),
    Case("advertise(env=[])", lambda js, f: js.advertise(env=[]), TypeError, "env"),  # type: ignore[arg-type]
    Case(
        "advertise_to_workers('x')",
        lambda js, f: js.advertise_to_workers("x"),
        ValueError,
        "form",
    ),
    Case("hold(True)", lambda js, f: js.hold(True), TypeError, "consume|count"),
    Case("hold('1')", lambda js, f: js.hold("1"), TypeError, "consume|count"),  # type: ignore[arg-type]
    Case("hold(-1)", lambda js, f: js.hold(-1), ValueError, "consume|count"),
    Case("hold(N+1)", lambda js, f: js.hold(SLOTS + 1), ValueError, "consume|count"),
    Case(
        "hold(1, timeout=-1)",
        lambda js, f: js.hold(1, timeout=-1),
        ValueError,
        "timeout",
    ),
    Case(
        "run(['true'], consume=True)",
        lambda js, f: js.run(["true"], consume=True),
        TypeError,
        "consume",
    ),
    Case(
        "run(['true'], form='x')",
        lambda js, f: js.run(["true"], form="x"),
        ValueError,
        "form",
    ),
    Case(
        "run(['true'], slot_timeout=-1)",
        lambda js, f: js.run(["true"], slot_timeout=-1),
        ValueError,
        "timeout",
    ),
    Case("run([])", lambda js, f: js.run([]), ValueError, "args"),
    Case("run(42)", lambda js, f: js.run(42), TypeError, "args"),
    Case("run(['true', 1])", lambda js, f: js.run(["true", 1]), TypeError, "args"),
    Case(
        "run(['true'], timeout=-1)",
        lambda js, f: js.run(["true"], timeout=-1),
        ValueError,
        "timeout",
    ),
    Case(
        "Jobserver.join(' -j2', context=3)",
        lambda js, f: Jobserver.join(" -j2", context=3),  # type: ignore[arg-type]
        TypeError,
        "context",
    ),
]

ALL = CONSTRUCTOR + SUBMIT + MAP + SIBLINGS + FUTURE + PROTOCOL


@pytest.fixture(scope="module", autouse=True)
def _warm_launchers() -> None:
    """Start each start method's long-lived helpers (multiprocessing's fork
    server, the library's template process) before any ``no_leaks`` baseline:
    they live as long as this process, like the fork server."""
    for method in START_METHODS:
        with Jobserver(context=method, slots=1) as js:
            js.submit(tasks.identity, args=(0,)).result(timeout=120)


@pytest.fixture
def js_and_future(no_leaks: None) -> Iterator[tuple[Jobserver, Future[Any]]]:
    """A Jobserver with a finished Future; afterwards exactly N slots remain
    (``no_leaks`` then checks descriptors and children)."""
    with Jobserver(context="fork", slots=SLOTS) as js:
        future = js.submit(tasks.identity, args=(1,))
        assert future.result(timeout=60) == 1
        yield js, future
        # Work a failed call had already launched keeps running (a map that
        # raised for its second call launched its first): let it finish.
        for launched in list(js._resources._tracked):
            assert launched.wait(timeout=60)
        assert_slots_conserved(js, SLOTS)


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_bad_input_is_a_clear_error_that_loses_nothing(
    case: Case, js_and_future: tuple[Jobserver, Future[Any]]
) -> None:
    js, future = js_and_future
    with pytest.raises(case.error, match=case.match):
        case.call(js, future)
    # The handle is still usable afterwards.
    assert js.submit(tasks.identity, args=(2,)).result(timeout=60) == 2


# --- inputs only some start methods reject ----------------------------------------


def _unpicklable_cases() -> list[Any]:
    cases = []
    for method in START_METHODS:
        if method == "fork":
            continue
        for where in ("fn", "args", "kwargs"):
            cases.append(pytest.param(method, where, id=f"{method}-{where}"))
    return cases


@pytest.mark.parametrize(("method", "where"), _unpicklable_cases())
def test_unpicklable_work_is_a_type_error_and_gives_the_slot_back(
    method: str, where: str, no_leaks: None
) -> None:
    with Jobserver(context=method, slots=SLOTS) as js:
        local = lambda: 1  # noqa: E731 - a lambda is what cannot be pickled
        call: dict[str, Any] = {
            "fn": {"fn": local},
            "args": {"fn": tasks.identity, "args": (local,)},
            "kwargs": {"fn": tasks.identity, "kwargs": {"value": local}},
        }[where]
        with pytest.raises(TypeError, match="cannot be pickled"):
            js.submit(**call)
        assert_slots_conserved(js, SLOTS)
        assert js.submit(tasks.identity, args=(3,)).result(timeout=60) == 3


def test_unpicklable_arguments_are_fine_under_fork(no_leaks: None) -> None:
    with Jobserver(context="fork", slots=SLOTS) as js:
        call = lambda fn: fn()  # noqa: E731
        assert js.submit(call, args=(lambda: 7,)).result(timeout=60) == 7
        assert_slots_conserved(js, SLOTS)


# --- edge values that are accepted ----------------------------------------------------


def test_edge_timeouts_are_accepted(no_leaks: None) -> None:
    """-0.0 is 0 (a poll), inf and 1e300 wait as long as it takes."""
    with Jobserver(context="fork", slots=SLOTS) as js:
        future = js.submit(tasks.identity, args=(1,), timeout=-0.0)
        assert future.wait(60)
        assert future.result(timeout=-0.0) == 1
        for timeout in (math.inf, 1e300):
            future = js.submit(tasks.identity, args=(timeout,), timeout=timeout)
            assert future.result(timeout=timeout) == timeout
            assert future.done(timeout)
            assert future.wait(timeout)
        assert_slots_conserved(js, SLOTS)


def test_zero_timeout_polls(no_leaks: None) -> None:
    with Jobserver(context="fork", slots=1) as js:
        r, w = os.pipe()
        try:
            holder = js.submit(os.read, args=(r, 1))
            with pytest.raises(Blocked):
                js.submit(tasks.identity, args=(1,), timeout=0)
            with pytest.raises(Blocked):
                holder.result(timeout=0)
            assert holder.done() is False
            assert holder.wait(0) is False
            os.write(w, b"x")
            assert holder.result(timeout=60) == b"x"
        finally:
            os.close(r)
            os.close(w)
        assert_slots_conserved(js, 1)


def test_signal_enum_and_signal_to_a_finished_worker(no_leaks: None) -> None:
    with Jobserver(context="fork", slots=SLOTS) as js:
        future = js.submit(tasks.identity, args=(1,))
        assert future.result(timeout=60) == 1
        # The worker is gone: nothing is sent, nothing breaks.
        assert future.wait(signal=signal.Signals.SIGKILL)
        assert future.wait(signal=signal.SIGTERM)
        assert future.result() == 1
        assert_slots_conserved(js, SLOTS)


def test_empty_inputs(no_leaks: None) -> None:
    with Jobserver(context="fork", slots=SLOTS) as js:
        assert list(js.map(tasks.identity, [])) == []
        assert list(js.map(tasks.identity, kwargses=[])) == []
        assert list(js.map(tasks.identity, [], [])) == []
        assert list(js.map(tasks.identity, iter([]), buffersize=1)) == []
        assert js.submit(tasks.getpid, args=[]).result(timeout=60) > 0
        assert js.submit(tasks.getpid, kwargs={}).result(timeout=60) > 0
        assert js.submit(tasks.add, args=(x for x in (1, 2))).result(timeout=60) == 3
        assert_slots_conserved(js, SLOTS)


def test_huge_lazy_input_with_buffersize_is_consumed_lazily(no_leaks: None) -> None:
    """An endless input: with buffersize, map takes only what it needs; stopping
    early cancels nothing and loses nothing."""
    with Jobserver(context="fork", slots=SLOTS) as js:
        taken = itertools.count()
        inputs = ((next(taken),) for _ in itertools.count())
        results = js.map(tasks.identity, inputs, buffersize=3)
        assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
        assert next(taken) <= 5 + 3 + 1
        del results
        js._resources.drain()
        assert_slots_conserved(js, SLOTS)


@pytest.mark.slow
def test_huge_arguments_and_many_inputs(method: str, no_leaks: None) -> None:
    with Jobserver(context=method, slots=SLOTS) as js:
        big = b"x" * (32 * 1024 * 1024)
        assert js.submit(len, args=(big,)).result(timeout=300) == len(big)
        assert sum(js.map(tasks.add, ((i, i) for i in range(300)), chunksize=25)) == (
            300 * 299
        )
        assert_slots_conserved(js, SLOTS)


# --- known core bugs ----------------------------------------------------------------------


def test_absurd_slots_is_a_value_error_naming_slots(no_leaks: None) -> None:
    with pytest.raises(ValueError, match="slots"):
        Jobserver(slots=2**62)
    with pytest.raises(ValueError, match="slots"):
        Jobserver.with_fifo(slots=2**62)


def _largest_timeout_calls() -> dict[str, Callable[[Jobserver, Future[Any]], Any]]:
    """Calls that must wait (the one slot is busy, or the Future unfinished)
    with a finite timeout no clock can count; each returns what it got."""
    big = sys.float_info.max

    def gated(js: Jobserver, f: Future[Any]) -> Any:
        answers = iter([big])  # "sleep that long", then "launch now"
        handle = js.replace_sleep(lambda: next(answers, None))
        return handle.submit(tasks.identity, args=(2,), timeout=big).result(big)

    def held(js: Jobserver, f: Future[Any]) -> Any:
        with js.hold(1, timeout=big):
            return 2

    def advertised(js: Jobserver, f: Future[Any]) -> Any:
        with js.advertise(consume=1, timeout=big):
            return 2

    def ran(js: Jobserver, f: Future[Any]) -> Any:
        command = [sys.executable, "-c", "print(2)"]
        done = js.run(command, slot_timeout=big, timeout=big, capture_output=True)
        return int(done.stdout)

    def aio_submit(js: Jobserver, f: Future[Any]) -> Any:
        import asyncio

        from jobserver import aio

        async def go() -> Any:
            return (
                await aio.submit(js, tasks.identity, args=(2,), timeout=big)
            ).result(big)

        return asyncio.run(go())

    return {
        "result": lambda js, f: f.result(timeout=big),
        "wait": lambda js, f: f.wait(big) and f.result(0),
        "done": lambda js, f: f.done(big) and f.result(0),
        "submit": lambda js, f: js.submit(
            tasks.identity, args=(2,), timeout=big
        ).result(big),
        "map": lambda js, f: list(js.map(tasks.identity, [(2,)], timeout=big)),
        "gate": gated,
        "hold": held,
        "advertise": advertised,
        "run": ran,
        "aio.submit": aio_submit,
    }


@pytest.mark.parametrize("call", sorted(_largest_timeout_calls()))
def test_largest_finite_timeout_waits(call: str, no_leaks: None) -> None:
    expected = {"result": 1, "wait": 1, "done": 1, "map": [2]}.get(call, 2)
    with Jobserver(context="fork", slots=1) as js:
        future = js.submit(tasks.sleep_then, args=(0.2, 1))
        try:
            assert _largest_timeout_calls()[call](js, future) == expected
        finally:
            future.wait()
        assert_slots_conserved(js, 1)


@pytest.mark.parametrize("args", [[], (), 42, None, {"a": 1}, ["true", 1]], ids=repr)
def test_run_with_bad_args_names_the_argument(args: Any, no_leaks: None) -> None:
    with Jobserver(context="fork", slots=SLOTS) as js:
        try:
            with pytest.raises((TypeError, ValueError), match="args"):
                js.run(args)
        finally:
            assert_slots_conserved(js, SLOTS)


# --- executor ----------------------------------------------------------------------------


def _executor_cases() -> list[Case]:
    try:
        from jobserver_executor import JobserverExecutor
    except ImportError:  # pragma: no cover - the executor is optional
        return []

    def after_shutdown(js: Jobserver, f: Future[Any]) -> Any:
        ex = JobserverExecutor(js)
        ex.shutdown()
        return ex.submit(len, ())

    def mapped(**kwargs: Any) -> Callable[[Jobserver, Future[Any]], Any]:
        def call(js: Jobserver, f: Future[Any]) -> Any:
            with JobserverExecutor(js) as ex:
                return list(ex.map(len, [()], **kwargs))

        return call

    return [
        Case(
            "JobserverExecutor(0)",
            lambda js, f: JobserverExecutor(0),
            ValueError,
            "max_workers",
        ),
        Case(
            "JobserverExecutor(-1)",
            lambda js, f: JobserverExecutor(-1),
            ValueError,
            "max_workers",
        ),
        Case(
            "JobserverExecutor(True)",
            lambda js, f: JobserverExecutor(True),
            TypeError,
            "max_workers",
        ),
        Case(
            "JobserverExecutor('2')",
            lambda js, f: JobserverExecutor("2"),  # type: ignore[arg-type]
            TypeError,
            "max_workers|first argument",
        ),
        Case(
            "JobserverExecutor(js, mp_context='fork')",
            lambda js, f: JobserverExecutor(js, mp_context="fork"),
            ValueError,
            "mp_context",
        ),
        Case(
            "JobserverExecutor(initializer=3)",
            lambda js, f: JobserverExecutor(js, initializer=3),  # type: ignore[arg-type]
            TypeError,
            "initializer",
        ),
        Case(
            "JobserverExecutor(max_tasks_per_child=0)",
            lambda js, f: JobserverExecutor(js, max_tasks_per_child=0),
            ValueError,
            "max_tasks_per_child",
        ),
        Case(
            "JobserverExecutor(max_tasks_per_child='1')",
            lambda js, f: JobserverExecutor(js, max_tasks_per_child="1"),  # type: ignore[arg-type]
            TypeError,
            "max_tasks_per_child",
        ),
        Case(
            "executor.submit after shutdown", after_shutdown, RuntimeError, "shutdown"
        ),
        Case("executor.map(chunksize=0)", mapped(chunksize=0), ValueError, "chunksize"),
        Case(
            "executor.map(buffersize=0)", mapped(buffersize=0), ValueError, "buffersize"
        ),
        Case(
            "executor.map(buffersize=True)",
            mapped(buffersize=True),
            TypeError,
            "buffersize",
        ),
    ]


EXECUTOR = _executor_cases()


@pytest.mark.parametrize("case", EXECUTOR, ids=[c.id for c in EXECUTOR])
def test_executor_bad_input(
    case: Case, js_and_future: tuple[Jobserver, Future[Any]]
) -> None:
    js, future = js_and_future
    with pytest.raises(case.error, match=case.match):
        case.call(js, future)


# --- the documentation ------------------------------------------------------------------------


def test_the_table_is_documented() -> None:
    text = DOC.read_text()
    missing = [c.id for c in ALL + EXECUTOR if f"`{c.id}`" not in text]
    assert not missing, (
        f"{len(missing)} bad-input cases are not in {DOC.name}; regenerate the "
        f"table with `python tests/test_bad_input.py`: {missing[:5]}"
    )


def markdown() -> str:
    """The table for docs/reliability.md, with the messages given today."""
    rows = ["| call | raises | message |", "|---|---|---|"]
    with Jobserver(context="fork", slots=SLOTS) as js:
        future = js.submit(tasks.identity, args=(1,))
        future.result()
        for case in ALL + EXECUTOR:
            try:
                case.call(js, future)
            except BaseException as exc:
                kind = type(exc).__name__
                ok = isinstance(exc, case.error) and re.search(case.match, str(exc))
                text = str(exc).replace("|", "\\|").replace("\n", " ")
                if len(text) > 110:
                    text = text[:107] + "..."
                mark = "" if ok else " **(unexpected)**"
                rows.append(f"| `{case.id}` | {kind}{mark} | {text} |")
            else:
                rows.append(f"| `{case.id}` | nothing **(unexpected)** | |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(markdown())

"""A model of slots and outcomes, checked against the public API by Hypothesis.

The machine submits work of known outcome (a value, a raised exception, a
worker that dies, a worker that holds its slot until released), through the
handle or its siblings and nested ``with`` scopes, and observes it with
``result``, ``wait``, ``done``, ``when_done``, ``reclaim_resources`` and
``map``.  Its model: which workers hold a slot for sure (the held ones), what
each Future must deliver, how many times each callback must run.

Invariants after every step: live children (zombies included) never exceed
N plus the unfinished ``consume=0`` submissions (counted under fork, where
the workers are this process's own children); the free slots never exceed
N minus the held workers; with every held worker's slot taken, a
``timeout=0`` submission is ``Blocked``.  At the end, with everything
collected: exactly N slots, every callback ran exactly once, no child and no
descriptor left.

The default run is small (fork only, about ten seconds); the ``slow``
variant runs many more examples under every start method.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import model_tasks
import pytest
from conftest import START_METHODS, child_pids, free_slots, open_fds
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)
from jobserver import Blocked, CallbackRaised, Future, Jobserver, LostResult

KINDS = ("value", "raise", "sigkill", "exit")
WAIT = 120.0  # generous: every bounded wait here is met in milliseconds


@dataclass
class Work:
    """What the model knows about one submission."""

    future: Future[Any]
    kind: str
    token: int
    consume: int
    callbacks: list[int] = field(default_factory=list)
    collected: bool = False

    def check(self, ok: bool, got: Any) -> None:
        if self.kind == "value":
            assert ok and got == ("value", self.token), (self, got)
        elif self.kind == "raise":
            assert not ok and isinstance(got, ValueError), (self, got)
            assert f"model-error {self.token}" in str(got)
        else:
            assert not ok and isinstance(got, LostResult), (self, got)
            if self.kind == "sigkill":
                assert got.returncode == -signal.SIGKILL
            else:
                assert got.returncode == 9


class JobserverMachine(RuleBasedStateMachine):
    methods: tuple[str, ...] = ("fork",)

    works = Bundle("works")

    def __init__(self) -> None:
        super().__init__()
        self.js: Jobserver | None = None
        self.slots = 0
        self.token = 0
        self.held: list[Future[Any]] = []
        self.scopes: list[Jobserver] = []
        self.all: list[Work] = []
        self.callback_runs: dict[int, int] = {}
        self.callback_raises: dict[int, bool] = {}
        self.callback_reported: dict[int, int] = {}
        self.callback_seqno: dict[int, int] = {}
        self.fds: set[int] = set()
        self.children: set[int] = set()
        self.tmp = ""
        self.release_fd = -1

    # --- set-up and tear-down -------------------------------------------------------

    @initialize(
        slots=st.integers(min_value=1, max_value=3),
        method=st.sampled_from(START_METHODS),
    )
    def start(self, slots: int, method: str) -> None:
        if method not in self.methods:
            method = "fork"
        self.fds = open_fds()
        self.children = child_pids()
        self.tmp = tempfile.mkdtemp(prefix="model-")
        path = os.path.join(self.tmp, "hold")
        os.mkfifo(path, 0o600)
        self.path = path
        # Held workers block opening the FIFO until a writer exists: keep one.
        self.release_fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.slots = slots
        self.js = Jobserver(context=method, slots=slots)
        self.js.__enter__()

    def teardown(self) -> None:
        js = self.js
        if js is None:
            return
        try:
            if self.held:
                os.write(self.release_fd, b"r" * len(self.held))
            for work in self.all:
                if not work.collected:
                    self.collect(work)
            for held in self.held:
                assert held.result(timeout=WAIT)[0] == "held"
            self.held.clear()
            # Work map launched after a failure runs on (it is not
            # cancelled): wait for everything still tracked.
            while True:
                try:
                    js._resources.drain()
                    break
                except CallbackRaised as exc:
                    self.reported(exc)
            assert free_slots(js) == self.slots
            for callback, runs in self.callback_runs.items():
                assert runs == 1, f"callback {callback} ran {runs} times"
                if self.callback_raises[callback]:
                    assert self.callback_reported[callback] == 1
            while self.scopes:
                self.scopes.pop().__exit__(None, None, None)
        finally:
            js.__exit__(None, None, None)
            os.close(self.release_fd)
            shutil.rmtree(self.tmp, ignore_errors=True)
        assert child_pids() <= self.children, "children left behind"
        assert open_fds() <= self.fds, "descriptors left open"

    # --- helpers ------------------------------------------------------------------------

    def next_token(self) -> int:
        self.token += 1
        return self.token

    def reported(self, exc: CallbackRaised) -> None:
        callback = exc.__cause__.args[0]  # type: ignore[union-attr]
        assert self.callback_seqno[callback] == exc.seqno
        self.callback_reported[callback] += 1

    def reclaim(self) -> None:
        assert self.js is not None
        while True:
            try:
                self.js.reclaim_resources()
                return
            except CallbackRaised as exc:
                self.reported(exc)

    def next_result(self, results: Iterator[Any]) -> Any:
        """``next(results)``, called again after another Future's callback
        raised in a refill (as the spec says a caller may)."""
        while True:
            try:
                return next(results)
            except CallbackRaised as exc:
                self.reported(exc)

    def submit_to(self, handle: Jobserver, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``submit``, called again after an earlier callback raised (as the
        spec says a caller may)."""
        while True:
            try:
                return handle.submit(fn, args=args, **kwargs)
            except CallbackRaised as exc:
                self.reported(exc)

    def outcome(self, future: Future[Any]) -> tuple[bool, Any]:
        while True:
            try:
                return True, future.result(timeout=WAIT)
            except CallbackRaised as exc:
                self.reported(exc)
            except Blocked:
                raise AssertionError(f"{future!r} took more than {WAIT} s") from None
            except Exception as exc:
                return False, exc

    def collect(self, work: Work) -> None:
        ok, got = self.outcome(work.future)
        work.check(ok, got)
        work.collected = True
        # Everything registered on it has run by now, exactly once.
        for callback in work.callbacks:
            assert self.callback_runs[callback] == 1

    def callback(self, callback: int) -> None:
        self.callback_runs[callback] += 1
        if self.callback_raises[callback]:
            raise RuntimeError(callback)

    def handle(self, via: str) -> Jobserver:
        assert self.js is not None
        if via == "copy":
            return copy.copy(self.js)
        if via == "env":
            return self.js.revise_env({"MODEL": "1"})
        if via == "scope" and self.scopes:
            return self.scopes[-1]
        return self.js

    def unfinished_consume0(self) -> int:
        # repr shows the state without running callbacks (done() would).
        return sum(
            1 for w in self.all if w.consume == 0 and "state=done" not in repr(w.future)
        )

    # --- rules ----------------------------------------------------------------------

    @precondition(lambda self: len(self.held) < self.slots)
    @rule(
        target=works,
        kind=st.sampled_from(KINDS),
        consume=st.sampled_from([1, 1, 1, 0]),
        via=st.sampled_from(["js", "copy", "env", "scope"]),
    )
    def submit(self, kind: str, consume: int, via: str) -> Work:
        token = self.next_token()
        fn, args = {
            "value": (model_tasks.value, (token,)),
            "raise": (model_tasks.fail, (token,)),
            "sigkill": (model_tasks.die, ("sigkill",)),
            "exit": (model_tasks.die, ("exit",)),
        }[kind]
        # A slot comes free in time: not every slot is held (precondition).
        future = self.submit_to(
            self.handle(via), fn, *args, consume=consume, timeout=WAIT
        )
        work = Work(future, kind, token, consume)
        self.all.append(work)
        return work

    @precondition(lambda self: len(self.held) < self.slots)
    @rule()
    def hold(self) -> None:
        assert self.js is not None
        self.held.append(
            self.submit_to(
                self.js, model_tasks.hold, self.path, self.next_token(), timeout=WAIT
            )
        )

    @precondition(lambda self: self.held)
    @rule()
    def release(self) -> None:
        # Whichever held worker reads the byte finishes; the model cannot
        # tell which, so it waits for one of them.
        os.write(self.release_fd, b"r")
        assert self.js is not None
        finished = None
        for _ in range(int(WAIT * 10)):
            for future in self.held:
                if future.wait(0.1):
                    finished = future
                    break
            if finished is not None:
                break
        assert finished is not None, "a released worker never finished"
        assert finished.result(0)[0] == "held"
        self.held.remove(finished)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(min_value=0, max_value=10))
    def cancel(self, index: int) -> None:
        future = self.held.pop(index % len(self.held))
        assert future.wait(WAIT, signal=signal.SIGTERM)
        with pytest.raises(LostResult) as info:
            future.result(0)
        assert info.value.returncode == -signal.SIGTERM

    @rule(work=consumes(works))
    def result(self, work: Work) -> None:
        self.collect(work)

    @rule(
        work=works,
        timeout=st.sampled_from([0, 0.01, WAIT]),
        how=st.sampled_from(["wait", "done"]),
    )
    def poll(self, work: Work, timeout: float, how: str) -> None:
        try:
            finished = (
                work.future.wait(timeout)
                if how == "wait"
                else work.future.done(timeout)
            )
        except CallbackRaised as exc:
            self.reported(exc)
            finished = True
        if timeout == WAIT:
            assert finished
        if finished and work.kind == "value":
            # Finished means the outcome is there: no waiting for it.
            while True:
                try:
                    assert work.future.result(0) == ("value", work.token)
                    break
                except CallbackRaised as exc:
                    self.reported(exc)

    @rule(work=works, raises=st.booleans())
    def when_done(self, work: Work, raises: bool) -> None:
        callback = len(self.callback_runs)
        self.callback_runs[callback] = 0
        self.callback_raises[callback] = raises
        self.callback_reported[callback] = 0
        self.callback_seqno[callback] = len(work.callbacks)
        work.callbacks.append(callback)
        try:
            seqno = work.future.when_done(self.callback, callback)
        except CallbackRaised as exc:  # already done: it ran at once
            self.reported(exc)
        else:
            assert seqno == self.callback_seqno[callback]

    @rule()
    def reclaim_resources(self) -> None:
        self.reclaim()

    # A raising callback of another Future, run by the reclaim in map (at the
    # call or in a refill), surfaces as CallbackRaised; iterating goes on.
    @precondition(lambda self: len(self.held) < self.slots)
    @rule(
        kinds=st.lists(st.sampled_from(["value", "value", "raise"]), max_size=6),
        chunksize=st.integers(min_value=1, max_value=3),
        buffersize=st.sampled_from([None, 1, 2]),
    )
    def map(self, kinds: list[str], chunksize: int, buffersize: int | None) -> None:
        assert self.js is not None
        tokens = [self.next_token() for _ in kinds]
        while True:
            try:
                results = self.js.map(
                    model_tasks.run,
                    list(zip(kinds, tokens)),
                    chunksize=chunksize,
                    buffersize=buffersize,
                    timeout=WAIT,
                )
                break
            except CallbackRaised as exc:  # nothing was launched: call again
                self.reported(exc)
        for kind, token in zip(kinds, tokens):
            if kind == "raise":
                with pytest.raises(ValueError, match=f"model-error {token}"):
                    self.next_result(results)
                break
            assert self.next_result(results) == ("value", token)
        else:
            with pytest.raises(StopIteration):
                self.next_result(results)
        # Work after a failure is not cancelled: it finishes on its own and
        # is reaped by later calls.

    @rule()
    def enter_scope(self) -> None:
        assert self.js is not None
        sibling = copy.copy(self.js)
        sibling.__enter__()
        self.scopes.append(sibling)

    @precondition(lambda self: self.scopes)
    @rule()
    def exit_scope(self) -> None:
        # Not the last scope: nothing is waited for, nothing is released.
        self.scopes.pop().__exit__(None, None, None)
        assert self.js is not None
        assert "closed" not in repr(self.js)

    @precondition(lambda self: len(self.held) == self.slots)
    @rule()
    def every_slot_held(self) -> None:
        assert self.js is not None
        with pytest.raises(Blocked):
            self.submit_to(self.js, model_tasks.value, 0, timeout=0)
        # consume=0 is the escape hatch: it runs anyway.
        extra = self.submit_to(self.js, model_tasks.value, 7, consume=0, timeout=0)
        assert extra.result(timeout=WAIT) == ("value", 7)

    # --- invariants --------------------------------------------------------------------

    @invariant()
    def never_more_workers_than_slots(self) -> None:
        if self.js is None:
            return
        allowed = self.slots + self.unfinished_consume0()
        live = child_pids() - self.children
        if self.js._resources.launcher.method == "fork":
            assert len(live) <= allowed, (live, allowed)

    @invariant()
    def held_slots_are_not_free(self) -> None:
        if self.js is None:
            return
        assert 0 <= free_slots(self.js) <= self.slots - len(self.held)


# The default run: small (fork only, ~10-20 s on a 2-core machine).  Data
# generation depends only on what Hypothesis drew (rule preconditions read
# model state, never timing), so a failure replays and shrinks.
SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TestJobserverModel = JobserverMachine.TestCase
TestJobserverModel.settings = SETTINGS


class SlowMachine(JobserverMachine):
    methods = tuple(START_METHODS)


TestJobserverModelSlow = pytest.mark.slow(SlowMachine.TestCase)
TestJobserverModelSlow.settings = settings(
    SETTINGS, max_examples=150, stateful_step_count=60
)

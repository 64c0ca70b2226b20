#!/usr/bin/env python3
"""Chaos soak for jobserver: a seeded random mix of everything a submission,
a worker and a caller can do, then proof that nothing was lost.

Run it through ``scripts/soak`` (which uses the repository's virtualenv,
made by ``scripts/test``)::

    scripts/soak --quick               # about a minute: what CI runs
    scripts/soak                       # 20 000 submissions per start method
    scripts/soak --seed 1234           # replay a run's schedule
    scripts/soak --pools own --methods spawn --submissions 500

Every run (one pool source x one start method) is a child process of this
driver: ``--child`` runs the soak itself (class ``Soak``) and writes a JSON
report that the driver folds into the tables it prints.  Pool sources:

* ``own``   ``Jobserver(context=method, slots=N)`` in the soak process;
* ``make``  the soak is the ``+`` recipe of a generated Makefile run with
            ``make -jN`` and joins Make's jobserver (``Jobserver()``);
* ``cli``   the soak runs under ``python -m jobserver -j N --`` (fd form);
* ``fifo``  the same with ``--fifo`` (the FIFO form);
* ``fake``  the driver plays Make: a pipe holding N-1 *distinct* token
            bytes (NUL and 0xff among them) advertised in ``MAKEFLAGS``;
            afterwards the pipe must hold exactly those bytes again.

docs/reliability.md describes the mix, the checks and the results.
"""

from __future__ import annotations

import argparse
import collections
import copy
import faulthandler
import gc
import hashlib
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import soak_tasks  # noqa: E402  (by name: spawn and forkserver workers import it)
from jobserver import (  # noqa: E402
    Blocked,
    CallbackRaised,
    Jobserver,
    LostResult,
    WorkerTraceback,
)


def executor_class() -> Any:
    """``JobserverExecutor`` if installed (it is mixed in then), else None."""
    try:
        from jobserver_executor import JobserverExecutor
    except ImportError:
        return None
    return JobserverExecutor


METHODS = ("fork", "forkserver", "spawn")
POOLS = ("own", "make", "cli", "fifo", "serve", "fake")
MiB = 1024 * 1024

#: Submissions per run.  ``own`` runs carry the bulk; the protocol runs
#: repeat the same soak with the pool coming from outside.
#: (Sized for about a minute on a 2-core machine.)
QUICK = {
    "own": {"fork": 3000, "forkserver": 1000, "spawn": 800},
    "make": {"fork": 600},
    "cli": {"spawn": 250},
    "fifo": {"forkserver": 250},
    "serve": {"spawn": 150},
    "fake": {"fork": 600},
}
FULL_OWN = 20_000
FULL_PROTOCOL = {"fork": 2000, "forkserver": 2000, "spawn": 2000}


# =============================================================================
# Small helpers shared by the driver and the soak
# =============================================================================


def derive_seed(seed: int, *parts: str) -> int:
    text = ":".join([str(seed), *parts]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


def open_fds() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        fds.add(int(name))
    return fds


def children_of(pid: int) -> set[int]:
    """Live and zombie children of ``pid`` (every thread's)."""
    pids: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return pids


#: Command-line marks of the helper processes multiprocessing and the
#: library start (they hold no slot and are not workers).
HELPER_MARKERS = {
    "multiprocessing.forkserver import main": "forkserver",
    "multiprocessing.resource_tracker import main": "tracker",
    "jobserver._template import serve": "template",
}


def helper_kind(pid: int) -> str | None:
    text = cmdline(pid)
    for marker, kind in HELPER_MARKERS.items():
        if marker in text:
            return kind
    return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def process_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:100]
    except OSError:
        return f"{pid}: gone"
    state = stat.rsplit(")", 1)[1].split()[0]
    return f"{pid}: state {state} {cmd}"


def fd_owner(fd: int) -> str:
    """Which live library object still holds descriptor ``fd`` (white-box)."""
    from jobserver import Future

    for obj in gc.get_objects():
        if isinstance(obj, Future):
            worker = obj._worker
            if fd in (worker.result_fd, getattr(worker, "_exit_fd", None)):
                return (
                    f"{obj!r} pollers={obj._pollers} close_pending={obj._close_pending}"
                )
    return "no live Future holds it"


def kernel_wait(pid: int) -> str:
    """Where the kernel says a process waits (wchan and syscall)."""
    parts = []
    for name in ("wchan", "syscall"):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                text = f.read().split()
            parts.append(f"{name}={text[0] if text else '?'}")
        except (OSError, IndexError):
            pass
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("SigBlk", "SigIgn", "SigPnd", "ShdPnd")):
                    parts.append(line.strip().replace(":\t", "="))
    except OSError:
        pass
    return " ".join(parts)


def multiprocessing_helper(module: str, attribute: str) -> int | None:
    """The pid of multiprocessing's fork server or resource tracker, if any."""
    try:
        import importlib

        holder = importlib.import_module(f"multiprocessing.{module}")
        instance = getattr(holder, f"_{module}")
        pid = getattr(instance, attribute)
    except Exception:
        return None
    return int(pid) if pid else None


#: Open core bugs the soak would hit again and again (docs/reliability.md,
#: "Bugs found"; each pinned by a strict xfail test).  Each run probes for
#: them first and, while one reproduces, avoids its trigger (and says so in
#: its report), so that the soak keeps finding *new* problems; once the
#: bug is fixed the probe passes and the full mix runs again.
KNOWN_BUGS = {
    "reentrant-callbacks": "bug 6: a callback that re-enters reclaim strands "
    "the callbacks after a raising one (re-entrant callbacks are registered "
    "last)",
    "map-callbacks": "bug 7: CallbackRaised of another Future ends map's "
    "iterator (map runs with no other callbacks pending)",
}


def _raise_in_callback() -> None:
    raise ValueError("probe")


def arm_watchdog(seconds: float) -> None:
    """``faulthandler.dump_traceback_later(seconds, exit=True)``, with the
    interrupt timer's SIGALRM blocked while the watchdog thread is created.

    Every call starts a new watchdog thread, which blocks every signal only
    once it first runs; until then it has the mask of the thread that created
    it.  On a busy machine that can be milliseconds, and a SIGALRM the kernel
    hands it meanwhile (the main thread blocks signals inside the core's
    deferred steps, so the kernel picks another thread) makes Python raise in
    the main thread at its next bytecode -- inside a deferred step: the
    residual gap of docs/design.md, which looked like core bugs 13 and 14 in
    docs/reliability.md.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        faulthandler.dump_traceback_later(seconds, exit=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


#: Functions in which the interrupt handler may legitimately run with SIGALRM
#: blocked: ``pthread_sigmask`` runs pending handlers right after changing the
#: mask (from ``DeferSignals.__enter__`` or the ``signal`` module's wrapper).
_BLOCKING_CALLERS = frozenset({"__enter__", "pthread_sigmask"})


def _exited(pid: int) -> None:
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def probe_known_bugs() -> list[str]:
    """Which of ``KNOWN_BUGS`` reproduce in this build (the minimal cases
    of tests/test_reentrancy.py)."""
    found = []
    # Bug 6: the third callback must run on the next reclaim_resources().
    with Jobserver(context="fork", slots=2) as js:
        ran: list[int] = []
        future = js.submit(soak_tasks.value, args=(1,))
        future.when_done(js.reclaim_resources)
        future.when_done(_raise_in_callback)
        future.when_done(ran.append, 3)
        _exited(future._worker.pid)
        try:
            js.reclaim_resources()
        except CallbackRaised:
            pass
        js.reclaim_resources()
        if ran != [3]:
            found.append("reentrant-callbacks")
            future.wait(60)  # its own wait runs the rest
    # Bug 7: map goes on after another Future's callback raised in a refill.
    with Jobserver(context="fork", slots=3) as js:
        r, w = os.pipe()
        try:
            other = js.submit(os.read, args=(r, 1))
            other.when_done(_raise_in_callback)
            results = js.map(
                soak_tasks.three, [() for _ in range(6)], buffersize=1, timeout=60
            )
            os.write(w, b"x")
            _exited(other._worker.pid)
            got = []
            while True:
                try:
                    got.append(next(results))
                except StopIteration:
                    break
                except CallbackRaised:
                    continue
        finally:
            os.close(r)
            os.close(w)
        if got != [3] * 6:
            found.append("map-callbacks")
        while True:
            try:
                js._resources.drain()
                break
            except CallbackRaised:
                continue
    return found


def become_subreaper() -> bool:
    """Orphaned descendants become our children, so none can hide."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        return False


# =============================================================================
# The soak (one run, in its own process: ``--child``)
# =============================================================================


class SoakBase(BaseException):
    """What a callback raises to test that BaseExceptions are not wrapped."""


class CallbackError(Exception):
    """What a raising callback raises; ``args[0]`` is the callback's id."""


class Hang(Exception):
    """A bounded wait of the soak itself ran out: reported, then recovered."""


class Expect:
    """What a submission was told to do, and how to check what it did."""

    __slots__ = ("data", "kinds", "returncode", "size", "token")

    def __init__(
        self,
        kinds: str,
        token: int | None = None,
        size: int | None = None,
        data: bytes | None = None,
        returncode: int | None = None,
    ) -> None:
        self.kinds = kinds  # one class, or several joined by "|"
        self.token = token
        self.size = size
        self.data = data
        self.returncode = returncode

    def check(self, cls: str, ok: bool, obj: Any) -> str:
        """Why the outcome ``(cls, ok, obj)`` is wrong, or ``""``."""
        if cls not in self.kinds.split("|"):
            return f"expected {self.kinds}, got {cls}: {describe(ok, obj)}"
        if cls == "value":
            if self.token is None:
                return check_any_value(obj)
            problem = soak_tasks.check_sealed(obj, self.token, self.size)
            if not problem and self.data is not None and obj[2] != self.data:
                problem = f"data {obj[2][:60]!r} where {self.data[:60]!r} expected"
            return problem
        if (
            cls == "raised"
            and self.token is not None
            and f"soak-error {self.token} " not in str(obj)
        ):
            return f"raised the wrong error: {str(obj)[:120]}"
        if cls in ("raised", "pickle-error") and not isinstance(
            obj.__cause__, WorkerTraceback
        ):
            return f"{cls} without the worker's traceback as __cause__"
        if (
            cls == "lost"
            and self.returncode is not None
            and obj.returncode != self.returncode
        ):
            return f"LostResult returncode {obj.returncode}, not {self.returncode}"
        return ""


def classify(ok: bool, obj: Any) -> str:
    if ok:
        return "value"
    if isinstance(obj, LostResult):
        return "lost"
    if isinstance(obj, ValueError) and "soak-error" in str(obj):
        return "raised"
    if isinstance(obj, TypeError) and "refuses to be pickled" in str(obj):
        return "pickle-error"
    if isinstance(obj, RuntimeError) and "cannot be rebuilt" in str(obj):
        return "unpickle-error"
    return f"other:{type(obj).__name__}"


def describe(ok: bool, obj: Any) -> str:
    text = repr(obj) if ok else f"{type(obj).__name__}: {obj}"
    return text if len(text) < 200 else text[:200] + "..."


def check_any_value(obj: Any) -> str:
    """A value from work whose token the soak does not know (map, orphans)."""
    if isinstance(obj, list):  # a map chunk
        for item in obj:
            problem = soak_tasks.check_sealed(item)
            if problem:
                return problem
        return ""
    if type(obj).__name__ == "_PartialChunk":
        return check_any_value(list(obj.values))
    return soak_tasks.check_sealed(obj)


class Sub:
    """One submission the soak holds a Future for."""

    __slots__ = ("action", "consume", "expect", "future", "how", "n", "ncb")

    def __init__(
        self, n: int, action: str, expect: Expect, future: Any, consume: int, how: str
    ) -> None:
        self.n = n
        self.action = action
        self.expect = expect
        self.future = future
        self.consume = consume
        self.how = how
        self.ncb = 0  # callbacks registered (the next seqno)


class Soak:
    """One run: one pool source, one start method, a seeded random schedule."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.method: str = opts.method
        self.pool: str = opts.pool
        self.name = f"{self.pool}/{self.method}"
        self.seed: int = opts.seed
        self.rng = random.Random(self.seed)
        self.slots: int = opts.slots
        self.target: int = opts.submissions
        self.limit: float = opts.hang_timeout
        self.expect_tokens: bytes | None = (
            bytes.fromhex(opts.expect_tokens) if opts.expect_tokens else None
        )
        self.js: Any = None
        self.window: collections.deque[Sub] = collections.deque()
        self.known: set[Any] = set()
        self.consume0: list[Any] = []
        self.n = 0  # submissions attempted
        self.token = 0
        self.actions: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.harvests: collections.Counter[str] = collections.Counter()
        self.episodes: collections.Counter[str] = collections.Counter()
        self.violations: list[str] = []
        self.checks: dict[str, tuple[bool, str]] = {}
        self.checked = 0
        self.peak_workers = 0
        self.limit_breaches = 0
        self.hangs = 0
        self.bookkeeping_breaks = 0
        self.mask_breaks = 0
        self.poller_breaks = 0
        self.unwatched_breaks = 0
        self.whitebox_skipped = False
        self.stacks_asked: set[int] = set()
        self.direct_workers = True
        self.own_helpers: set[int] = set()
        self.forking_helpers: set[int] = set()
        self.helper_seen: set[int] = set()
        self.process_helpers: set[int] = set()
        self.launcher_name = ""
        self.recent: collections.deque[tuple[int, str, str]] = collections.deque(
            maxlen=200
        )
        self.mask: Any = None
        # callbacks
        self.cb_next = 0
        self.cb_kind: dict[int, str] = {}
        self.cb_seqno: dict[int, int] = {}
        self.cb_runs: collections.Counter[int] = collections.Counter()
        self.cb_reported: collections.Counter[int] = collections.Counter()
        # interrupts
        self.armed = False
        self.delivered = 0
        self.foreign_alarms = 0
        # warnings and other noise
        self.resource_warnings: list[str] = []
        self.expected_warnings = 0
        self.unraisable: list[str] = []
        self.logged: list[str] = []
        self.last_arm = 0.0
        self.executor: Any = None
        self.hold_path = ""
        self.hold_fd = -1
        self.started = time.monotonic()
        self.next_progress = 0.0
        self.known_bugs: list[str] = []

    # --- bookkeeping ---------------------------------------------------------

    def violation(self, text: str) -> None:
        self.violations.append(text)
        print(f"[{self.name}] VIOLATION: {text}", file=sys.stderr, flush=True)

    def next_token(self) -> int:
        self.token += 1
        return self.token

    def tick(self) -> None:
        """Re-arm the last-resort watchdog (stacks, then exit) now and then."""
        now = time.monotonic()
        if now - self.last_arm >= 1.0:
            self.last_arm = now
            arm_watchdog(self.limit * 2 + 60)
            self.write_state()
        if now >= self.next_progress:
            self.next_progress = now + 15
            print(
                f"[{self.name}] {self.n}/{self.target} submissions, "
                f"{len(self.window)} outstanding, {len(self.violations)} "
                f"violations, {now - self.started:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    def write_state(self) -> None:
        """What the soak holds right now, for the driver to show if this
        process is stopped by the last-resort watchdog."""
        if not self.opts.report:
            return
        lines = [f"{self.n} submissions, {time.monotonic() - self.started:.0f} s"]
        lines += [f"outstanding: {s.future!r} ({s.action})" for s in self.window]
        if self.js is not None:
            lines.append(f"bookkeeping: {self.internals()}")
        with open(self.opts.report + ".state", "w") as f:
            f.write("\n".join(lines) + "\n")

    def record(self, sub: Sub, ok: bool, obj: Any) -> None:
        self.recent.append((sub.future._worker.pid, sub.action, repr(sub.future)))
        cls = classify(ok, obj)
        if sub.action == "cancel" and cls == "lost":
            cls = "cancelled"
            problem = sub.expect.check("lost", ok, obj)
        else:
            problem = sub.expect.check(cls, ok, obj)
        self.outcomes[cls] += 1
        self.checked += 1
        if not problem and cls == "lost" and obj.pid != sub.future._worker.pid:
            problem = f"LostResult names pid {obj.pid}, not the worker's"
        if problem:
            self.violation(
                f"outcome of #{sub.n} {sub.action} (harvested by {sub.how}): "
                f"{problem}; {sub.future!r}"
            )

    # --- process setup ----------------------------------------------------------

    def setup_process(self) -> None:
        self.subreaper = become_subreaper()
        warnings.simplefilter("always", ResourceWarning)
        # CPython >= 3.12 warns when a process with threads forks; the soak
        # has the executor's dispatcher thread (and fork is what it tests).
        warnings.filterwarnings(
            "ignore", message=r".*fork\(\) may lead to deadlocks", category=Warning
        )
        original = warnings.showwarning

        def showwarning(message: Any, category: Any, *args: Any, **kw: Any) -> None:
            if issubclass(category, ResourceWarning):
                self.resource_warnings.append(str(message))
                return
            original(message, category, *args, **kw)

        warnings.showwarning = showwarning  # type: ignore[assignment]

        def unraisable(info: Any) -> None:
            if isinstance(info.exc_value, KeyboardInterrupt):
                return  # the soak's own interrupt, swallowed by a finalizer
            self.unraisable.append(
                f"{info.err_msg or 'unraisable'}: {info.exc_type.__name__}: "
                f"{info.exc_value} in {info.object!r}"
            )

        sys.unraisablehook = unraisable

        soak = self

        class Capture(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                soak.logged.append(f"{record.name}: {record.getMessage()}")

        logging.getLogger("jobserver").addHandler(Capture(logging.WARNING))

        def on_alarm(signum: int, frame: Any) -> None:
            if (
                signal.SIGALRM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
                and frame is not None
                and frame.f_code.co_name not in _BLOCKING_CALLERS
            ):
                # Another thread took the signal while this one blocked it
                # (inside a deferred step of the core, say).
                self.foreign_alarms += 1
                if self.foreign_alarms <= 3:
                    where = "".join(traceback.format_stack(frame, limit=4))
                    self.violation(
                        "a thread other than the main one took the interrupt "
                        "timer's SIGALRM: its handler ran with SIGALRM blocked "
                        f"(the residual gap; a harness thread is missing the "
                        f"block), at:\n{where}"
                    )
            if self.armed:
                self.armed = False
                self.delivered += 1
                raise KeyboardInterrupt

        signal.signal(signal.SIGALRM, on_alarm)
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        if self.method == "fork":
            # Forked workers inherit this: a stuck one can be asked for its stack.
            faulthandler.register(signal.SIGUSR2, all_threads=True)

    def make_jobserver(self) -> Any:
        if self.pool == "own":
            return Jobserver(context=self.method, slots=self.slots)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            js = Jobserver(context=self.method)
        kind = js._resources.pool.kind
        if not kind.startswith("make-"):
            raise RuntimeError(f"did not join the advertised jobserver: {kind}")
        return js

    # --- worker counting -----------------------------------------------------------

    def warm_up(self) -> None:
        """Start the process-wide helpers a launch may need (multiprocessing's
        resource tracker and fork server) before the baseline is taken: they
        live as long as this process, so they are part of it."""
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        if self.method == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()
        # By pid: right after starting, a helper may not have exec'd yet,
        # so its command line would not tell what it is.
        fork_server = multiprocessing_helper("forkserver", "_forkserver_pid")
        tracker = multiprocessing_helper("resource_tracker", "_pid")
        self.own_helpers = {
            pid for pid in children_of(os.getpid()) if helper_kind(pid) is not None
        } | {pid for pid in (fork_server, tracker) if pid}
        self.forking_helpers = {
            pid for pid in self.own_helpers if helper_kind(pid) == "forkserver"
        } | ({fork_server} if fork_server else set())
        self.process_helpers = set(self.own_helpers)

    def first_launch(self, js: Any) -> None:
        """The resource set's first submission (named in any later report of
        an unaccounted worker by its pid: "first launch")."""
        future = js.submit(soak_tasks.value, args=(0,))
        self.recent.append((future._worker.pid, "first launch", repr(future)))
        future.result(timeout=self.limit)
        self.recent.append((future._worker.pid, "first launch", repr(future)))

    def adopt_helpers(self, handle: Any, first_launch: Callable[[], Any]) -> None:
        """Run ``first_launch`` (the first submission of a resource set) and
        make the helpers that appeared meanwhile -- the library's template
        process, which lives as long as that resource set -- the soak's own:
        their children are this run's workers."""
        before = children_of(os.getpid())
        first_launch()
        launcher = type(handle._resources.launcher).__name__
        if handle is self.js:
            self.launcher_name = launcher
            # Where workers come from: this process's own children (fork,
            # and spawn through multiprocessing), or children of a helper
            # that forks them (multiprocessing's fork server, the template).
            self.direct_workers = launcher == "ForkLauncher" or (
                launcher == "MultiprocessingLauncher" and self.method == "spawn"
            )
        for pid in children_of(os.getpid()) - before:
            kind = helper_kind(pid)
            if kind is not None:
                self.own_helpers.add(pid)
                if kind in ("forkserver", "template"):
                    self.forking_helpers.add(pid)

    def foreign_helpers(self, children: set[int]) -> set[int]:
        """Which of the soak's ``children`` are helpers that workers started
        for nested work (a worker starts a template or fork server of its
        own), orphaned to the soak -- a subreaper -- when that worker exited.
        They hold no slot.  Zombies among them are reaped here, as a
        subreaper must.  Where workers are never the soak's own children,
        every child but its own helpers is such a helper (even a zombie,
        whose command line is gone)."""
        found = set()
        for pid in children - self.own_helpers:
            if pid in self.helper_seen or helper_kind(pid) is not None:
                self.helper_seen.add(pid)
            elif self.direct_workers:
                continue
            found.add(pid)
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    self.outcomes["foreign-helpers-reaped"] += 1
            except ChildProcessError:
                pass
        return found

    def live_foreign_helpers(self) -> set[int]:
        found = self.foreign_helpers(children_of(os.getpid()))
        return found & children_of(os.getpid())  # less the ones just reaped

    def tracked_pids(self) -> set[int]:
        """Workers this process's resource sets track (the executor's too)."""
        sets = [] if self.js is None else [self.js._resources]
        if self.executor is not None:
            handle = getattr(self.executor._dispatcher, "handle", None)
            if handle is not None:
                sets.append(handle._resources)
        return {f._worker.pid for r in sets for f in list(r._tracked)}

    def workers(self) -> set[int]:
        """This run's workers alive or zombie, counted from outside.

        A forking helper (the template) also forks the nested workers that
        this run's spawn/forkserver workers ask it for; like a fork worker's
        own children they are not this process's workers (some are
        ``consume=0`` tree nodes that hold no slot), so of a helper's
        children only those this process tracks are counted.  The tokens
        nested work takes are checked at the end (slots, token bytes)."""
        children = children_of(os.getpid())
        pids = children - self.own_helpers - self.foreign_helpers(children)
        if self.forking_helpers:
            tracked = self.tracked_pids()
            for helper in self.forking_helpers:
                pids |= children_of(helper) & tracked
        return pids

    def sample_limit(self) -> None:
        live0 = 0
        for future in self.consume0:
            if future._state != "done":
                live0 += 1
        self.consume0 = [f for f in self.consume0 if f._state != "done"]
        pids = self.workers()
        count = len(pids)
        self.peak_workers = max(self.peak_workers, count)
        if count > self.slots + live0:
            recent = {pid: (action, state) for pid, action, state in self.recent}
            for sub in self.window:
                recent[sub.future._worker.pid] = (
                    "window " + sub.action,
                    repr(sub.future),
                )
            if self.method == "fork":
                # A worker nobody accounts for: it prints its own stack.
                for pid in pids - set(recent) - self.stacks_asked:
                    self.stacks_asked.add(pid)
                    try:
                        os.kill(pid, signal.SIGUSR2)
                    except OSError:
                        pass
            states = "; ".join(
                f"{process_state(p)[:60]} ppid {parent_of(p)} {recent.get(p, '')}"
                for p in sorted(pids)
            )
            self.limit_breaches += 1
            if self.limit_breaches <= 5:
                tracked = sorted(f._worker.pid for f in self.js._resources._tracked)
                if self.executor is not None:
                    try:
                        handle = self.executor._dispatcher.handle
                        tracked += [
                            f._worker.pid for f in list(handle._resources._tracked)
                        ]
                    except AttributeError:
                        pass
                self.violation(
                    f"{count} workers alive with {self.slots} slots and {live0} "
                    f"consume=0 submissions outstanding; tracked pids {tracked}; "
                    f"{states}"
                )

    # --- calling the library ----------------------------------------------------

    def note_callback_raised(self, exc: CallbackRaised) -> None:
        cause = exc.__cause__
        if isinstance(cause, CallbackError):
            cb = cause.args[0]
            self.cb_reported[cb] += 1
            self.outcomes["callback-raised"] += 1
            if exc.seqno != self.cb_seqno.get(cb):
                self.violation(
                    f"CallbackRaised seqno {exc.seqno}, callback had "
                    f"{self.cb_seqno.get(cb)}"
                )
        else:
            self.violation(f"CallbackRaised with unexpected cause {cause!r}")

    def note_base(self, exc: SoakBase) -> None:
        self.cb_reported[exc.args[0]] += 1
        self.outcomes["callback-base-exception"] += 1

    def guarded(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn``; a raising callback is recorded and the call repeated."""
        while True:
            try:
                return fn(*args, **kwargs)
            except CallbackRaised as exc:
                self.note_callback_raised(exc)
            except SoakBase as exc:
                self.note_base(exc)

    def settle_callbacks(self) -> None:
        self.guarded(self.js.reclaim_resources)

    def submit(
        self,
        handle: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        *,
        consume: int = 1,
        timeout: float | None = None,
    ) -> Any:
        if timeout is None and self.rng.random() < 0.7:
            timeout = self.limit
        if consume and timeout != 0:
            self.expect_a_slot_to_come_free("submit")
        try:
            return self.guarded(
                handle.submit, fn, args=args, consume=consume, timeout=timeout
            )
        except Blocked:
            if timeout != self.limit:
                raise
        self.hang("submit: no free slot", [])
        self.abort(f"no slot came free within {self.limit} s: {self.internals()}")

    def expect_a_slot_to_come_free(self, what: str) -> None:
        """A wait for a slot must be one that work ends by itself: ``cancel``
        tasks hold theirs until the soak cancels them (release_blockers), so
        with every slot held by one the wait could only hang."""
        blockers = sum(1 for s in self.window if s.action == "cancel" and s.consume)
        if blockers >= self.slots:
            self.violation(
                f"soak schedule: {what} waits for a slot while {blockers} cancel "
                "task(s) hold all of them (release_blockers was not called)"
            )

    def track(self, action: str, expect: Expect, future: Any, consume: int = 1) -> Sub:
        sub = Sub(self.n, action, expect, future, consume, "")
        self.known.add(future)
        if consume == 0:
            self.consume0.append(future)
        self.window.append(sub)
        return sub

    # --- collecting outcomes ---------------------------------------------------------

    def hang(self, what: str, futures: list[Any]) -> None:
        self.hangs += 1
        lines = [f"[{self.name}] HANG: {what} took more than {self.limit} s"]
        lines += [f"  stuck: {f!r}" for f in futures]
        for future in futures:
            lines.append(f"  diagnosis: {self.diagnose(future)}")
            pid = getattr(getattr(future, "_worker", None), "pid", None)
            if pid:
                lines.append(f"  stuck worker {process_state(pid)} {kernel_wait(pid)}")
                if self.method == "fork":
                    # Registered before any fork: the worker prints its stack.
                    try:
                        os.kill(pid, signal.SIGUSR2)
                        time.sleep(0.5)
                    except OSError:
                        pass
        lines += [f"  outstanding: {s.future!r} ({s.action})" for s in self.window]
        lines += [f"  process {process_state(p)}" for p in sorted(self.workers())]
        if self.js is not None:
            lines.append(f"  bookkeeping: {self.internals()}")
        print("\n".join(lines), file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        self.violation(f"hang: {what}: {', '.join(repr(f) for f in futures)}")

    def diagnose(self, future: Any) -> str:
        """What the core's bookkeeping says about a stuck Future (white-box)."""
        try:
            r = self.js._resources
            if future._state == "done" and future._callbacks:
                queued = future in r._callback_queue
                return (
                    f"finished, {len(future._callbacks)} callbacks pending, "
                    f"{'in' if queued else 'NOT in'} the callback queue"
                    + ("" if queued else ": reclaim_resources() never runs them")
                )
            if future._state != "done":
                where = [
                    name
                    for name, table in (
                        ("watched", r._watched),
                        ("lingering", r._lingering),
                    )
                    if future in table
                ]
                return f"state {future._state}, {' and '.join(where) or 'neither watched nor lingering'}"
            return f"state {future._state}"
        except Exception as exc:
            return f"(no diagnosis: {exc!r})"

    def outcome(self, sub: Sub, how: str) -> tuple[bool, Any]:
        """Wait for ``sub`` by ``how``; its (ok, value-or-exception)."""
        future = sub.future
        sub.how = how
        deadline = time.monotonic() + self.limit
        self.harvests[how] += 1
        try:
            if how == "result":
                pass
            elif how == "wait":
                self.wait_until(future, deadline, lambda left: future.wait(left))
            elif how == "done":
                self.wait_until(
                    future, deadline, lambda left: future.done(min(left, 0.05))
                )
            elif how == "poll":
                self.wait_until(future, deadline, self._poll(future))
            elif how == "callback":
                flag: list[int] = []
                cb = self.new_callback("ok")
                self.guarded_register(sub, cb, flag)
                self.wait_until(future, deadline, self._reclaim_until(flag))
            elif how == "cancel":
                self.guarded(future.wait, 0, signal=signal.SIGTERM)
                self.wait_until(future, deadline, lambda left: future.wait(left))
            elif how == "stop-cont":
                try:
                    self.guarded(future.wait, 0, signal=signal.SIGSTOP)
                    self.guarded(future.done, self.rng.choice([0, 0.005, 0.02]))
                finally:
                    self.guarded(future.wait, 0, signal=signal.SIGCONT)
            else:  # pragma: no cover
                raise AssertionError(how)
            while True:
                left = deadline - time.monotonic()
                try:
                    return True, self.guarded(future.result, max(left, 0))
                except Blocked:
                    if time.monotonic() < deadline:
                        continue
                    raise Hang(f"result of #{sub.n} {sub.action}") from None
        except Hang as exc:
            return self.recover(sub, str(exc))
        except (KeyboardInterrupt, SoakBase, CallbackRaised):
            raise
        except Exception as exc:
            return False, exc
        finally:
            self.known.discard(future)

    def _poll(self, future: Any) -> Callable[[float], bool]:
        def poll(left: float) -> bool:
            try:
                future.result(timeout=0)
            except Blocked:
                future.wait(min(left, 0.02))
                return False
            except (CallbackRaised, SoakBase):
                raise
            except Exception:
                return True
            return True

        return poll

    def _reclaim_until(self, flag: list[int]) -> Callable[[float], bool]:
        def step(left: float) -> bool:
            self.js.reclaim_resources()
            if flag:
                return True
            # Wait for any tracked work to progress, not for a free slot.
            self.js._resources.wait_events(min(left, 0.05), include_pool=False)
            return bool(flag)

        return step

    def wait_until(
        self, future: Any, deadline: float, step: Callable[[float], Any]
    ) -> None:
        while True:
            self.tick()
            left = deadline - time.monotonic()
            if left <= 0:
                raise Hang(f"waiting for {future!r}")
            if self.guarded(step, left):
                return

    def recover(self, sub: Sub, what: str) -> tuple[bool, Any]:
        """After a hang report: kill the worker and take what comes."""
        self.hang(f"{what} ({sub.action})", [sub.future])
        try:
            self.guarded(sub.future.wait, 0, signal=signal.SIGKILL)
            self.guarded(sub.future.wait, 0, signal=signal.SIGCONT)
            if self.guarded(sub.future.wait, 30):
                return False, Hang(what)
        except BaseException as exc:
            self.violation(f"recovering from the hang raised {exc!r}")
        self.abort(f"could not recover from: {what}")
        raise AssertionError("unreachable")

    def collect(self, sub: Sub, how: str | None = None) -> None:
        if how is None:
            how = self.pick_how(sub)
        ok, obj = self.outcome(sub, how)
        if isinstance(obj, Hang):
            return
        self.record(sub, ok, obj)

    def pick_how(self, sub: Sub) -> str:
        if sub.action == "cancel":
            return "cancel"
        if sub.action == "stop-cont":
            return "stop-cont"
        return self.rng.choices(
            ("result", "wait", "done", "poll", "callback"), (40, 15, 15, 15, 15)
        )[0]

    def harvest_one(self) -> None:
        if not self.window:
            return
        # Mostly the oldest, sometimes any.
        if self.rng.random() < 0.7:
            sub = self.window.popleft()
        else:
            index = self.rng.randrange(len(self.window))
            sub = self.window[index]
            del self.window[index]
        self.collect(sub)

    def harvest_all(self) -> None:
        while self.window:
            self.tick()
            self.harvest_one()
        self.adopt(set(), "leftover", Expect("value|raised|lost"))
        while self.window:
            self.harvest_one()
        self.settle_callbacks()

    def snapshot(self) -> set[Any]:
        return set(self.js._resources._tracked)

    def internals(self) -> str:
        """The resource set's bookkeeping, for reports (white-box)."""
        try:
            return self._internals()
        except AttributeError as exc:
            return f"(internals changed: {exc})"

    def _internals(self) -> str:
        r = self.js._resources
        consumes = sum(f._consumes for f in list(r._tracked))
        return (
            f"tracked={len(r._tracked)} (consuming {consumes}) "
            f"_consuming={r._consuming} ledger={list(r._ledger)!r} "
            f"lingering={len(r._lingering)} watched={len(r._watched)} "
            f"callback_queue={len(r._callback_queue)}"
        )

    def check_bookkeeping(self, after: str) -> None:
        """The core's own invariants, checked after every interrupted call so
        that the first call that broke one is named (white-box: skipped with
        a note if the core's internals changed)."""
        try:
            self._check_bookkeeping(after)
        except AttributeError as exc:
            if not self.whitebox_skipped:
                self.whitebox_skipped = True
                print(
                    f"[{self.name}] note: white-box check skipped: {exc}",
                    file=sys.stderr,
                )

    def _check_bookkeeping(self, after: str) -> None:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        if mask != self.mask:
            self.mask_breaks += 1
            if self.mask_breaks <= 3:
                self.violation(
                    f"signal mask not restored after {after}: "
                    f"{len(mask)} signals blocked, was {len(self.mask)}"
                )
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
        for sub in self.window:
            future = sub.future
            if future._pollers or future._close_pending:
                self.poller_breaks += 1
                if self.poller_breaks <= 3:
                    self.violation(
                        f"after {after}, no thread waits but {future!r} counts "
                        f"{future._pollers} pollers (close pending: "
                        f"{future._close_pending})"
                    )
        r = self.js._resources
        for future in list(r._tracked):
            if future._state != "done" and not (
                future in r._watched or future in r._lingering
            ):
                self.unwatched_breaks += 1
                if self.unwatched_breaks <= 3:
                    self.violation(
                        f"after {after}, {future!r} is tracked but neither watched "
                        "nor lingering: reclaim_resources() can never reap it"
                    )
        consumes = sum(f._consumes for f in list(r._tracked))
        if len(r._ledger) == r._consuming == consumes:
            return
        self.bookkeeping_breaks += 1
        if self.bookkeeping_breaks <= 5:
            self.violation(f"bookkeeping broken after {after}: {self.internals()}")

    def adopt(self, before: set[Any], why: str, expect: Expect) -> int:
        """Work launched by an interrupted call is tracked by the library but
        was never returned to the soak: find it and check it all the same."""
        found = 0
        for future in set(self.js._resources._tracked) - before - self.known:
            found += 1
            self.known.add(future)
            self.window.append(Sub(self.n, f"orphan:{why}", expect, future, 1, ""))
        if found:
            self.outcomes["orphans-adopted"] += found
        return found

    # --- callbacks ----------------------------------------------------------------

    def new_callback(self, kind: str) -> int:
        cb = self.cb_next
        self.cb_next += 1
        self.cb_kind[cb] = kind
        return cb

    def register(self, sub: Sub, cb: int, flag: list[int] | None = None) -> None:
        seqno = sub.ncb
        sub.ncb += 1
        self.cb_seqno[cb] = seqno
        got = sub.future.when_done(self.run_callback, cb, sub, flag)
        if got != seqno:
            self.violation(f"when_done returned seqno {got}, expected {seqno}")

    def run_callback(self, cb: int, sub: Sub, flag: list[int] | None) -> None:
        self.cb_runs[cb] += 1
        kind = self.cb_kind[cb]
        if flag is not None:
            flag.append(cb)
        if kind == "raise":
            raise CallbackError(cb)
        if kind == "base":
            raise SoakBase(cb)
        if kind == "reenter":
            # The slot is back already: the callback may submit, register
            # more callbacks, and look at its own Future.
            if not sub.future.done():
                self.violation(f"callback of #{sub.n} ran before done()")
            value = sub.future.result(0)
            problem = sub.expect.check("value", True, value)
            if problem:
                self.violation(f"re-entrant result() of #{sub.n}: {problem}")
            self.register(sub, self.new_callback("ok"))
            token = self.next_token()
            try:
                future = self.js.submit(soak_tasks.value, args=(token,), timeout=0)
            except Blocked:
                return
            except CallbackRaised as exc:
                self.note_callback_raised(exc)
                return
            self.outcomes["submitted-by-callback"] += 1
            self.track("from-callback", Expect("value", token, 0), future)

    # --- the schedule ---------------------------------------------------------------

    def run(self) -> int:
        self.setup_process()
        if not self.opts.exercise_known_bugs:
            self.known_bugs = probe_known_bugs()
            for bug in self.known_bugs:
                print(
                    f"[{self.name}] avoiding open {KNOWN_BUGS[bug]}",
                    file=sys.stderr,
                    flush=True,
                )
        self.warm_up()
        baseline_fds = open_fds()
        baseline_children = self.workers()
        tmp = tempfile.mkdtemp(prefix="soak-")
        self.hold_path = os.path.join(tmp, "hold")
        os.mkfifo(self.hold_path, 0o600)
        self.hold_fd = os.open(self.hold_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        print(
            f"[{self.name}] seed {self.seed}, {self.slots} slots, "
            f"{self.target} submissions, subreaper={self.subreaper}",
            file=sys.stderr,
            flush=True,
        )
        try:
            js = self.make_jobserver()
            with js:
                self.js = js
                self.adopt_helpers(js, lambda: self.first_launch(js))
                self.schedule()
                self.finish()
        except Exception:
            self.violation(f"the soak itself failed:\n{traceback.format_exc()}")
            self.kill_everything()
        finally:
            faulthandler.cancel_dump_traceback_later()
            os.close(self.hold_fd)
            shutil.rmtree(tmp, ignore_errors=True)
        self.js = None
        self.window.clear()
        self.known.clear()
        self.consume0.clear()
        gc.collect()
        self.final_checks(baseline_fds, baseline_children)
        return self.report()

    def schedule(self) -> None:
        # Both ends of the size range, every run.
        self.stream(forced=["value-empty", "value-64MiB"])
        episodes = (
            ("stream", 50),
            ("map", 9),
            ("full", 7),
            ("interrupt", 10),
            ("executor", 6 if executor_class() is not None else 0),
            ("scopes", 4),
            ("nested", 4),
        )
        names = [e[0] for e in episodes]
        weights = [e[1] for e in episodes]
        while self.n < self.target:
            self.tick()
            episode = self.rng.choices(names, weights)[0]
            self.episodes[episode] += 1
            try:
                getattr(self, f"episode_{episode}")()
            except (KeyboardInterrupt, SoakBase) as exc:
                self.violation(f"{episode} episode leaked {exc!r}")
            except Exception:
                self.violation(
                    f"{episode} episode raised unexpectedly:\n{traceback.format_exc()}"
                )
                self.harvest_all()

    # --- episodes -------------------------------------------------------------------

    def stream(self, forced: list[str] | None = None) -> None:
        count = len(forced) if forced else self.rng.randint(5, 60)
        width = self.rng.randint(1, 2 * self.slots + 3)
        for i in range(count):
            self.tick()
            action = forced[i] if forced else self.pick_action()
            self.launch(action)
            self.sample_limit()
            while len(self.window) > width:
                self.harvest_one()

    def episode_stream(self) -> None:
        self.stream()

    ACTIONS = (
        ("value-small", 30),
        ("value-empty", 3),
        ("value-medium", 8),
        ("value-large", 1.2),
        ("value-64MiB", 0.08),
        ("raise", 6),
        ("raise-big", 1),
        ("system-exit", 2),
        ("keyboard-interrupt", 2),
        ("os-exit", 2),
        ("sigkill", 2),
        ("sigsegv", 1.5),
        ("exec", 2),
        ("unpicklable-result", 2),
        ("unrebuildable-result", 2),
        ("cancel", 2),
        ("stop-cont", 2),
        ("callbacks", 6),
        ("nested", 1),
        ("forget", 0.7),
        ("nested-raise", 0.7),
        ("gate-ok", 1.5),
        ("gate-raise", 1.5),
        ("gate-blocked", 0.5),
        ("poll", 3),
        ("env-preexec", 1.5),
        ("lambda-args", 1.5),
        ("consume0", 1.5),
        ("sibling", 2),
    )
    ACTION_NAMES = tuple(a[0] for a in ACTIONS)
    ACTION_WEIGHTS = tuple(a[1] for a in ACTIONS)

    def pick_action(self) -> str:
        return self.rng.choices(self.ACTION_NAMES, self.ACTION_WEIGHTS)[0]

    def release_blockers(self, keep: int = 0) -> None:
        """Cancel outstanding workers that would never end on their own
        (``cancel`` tasks), keeping at most ``keep`` of them, so that the
        soak never waits for a slot that only it could free."""
        while True:
            blockers = [s for s in self.window if s.action == "cancel" and s.consume]
            if len(blockers) <= keep:
                return
            self.window.remove(blockers[0])
            self.collect(blockers[0], "cancel")

    def launch(self, action: str) -> None:
        """Submit one piece of work that does ``action``."""
        self.release_blockers(keep=self.slots - 1)
        self.n += 1
        self.actions[action] += 1
        rng = self.rng
        js = self.js
        token = self.next_token()
        fn: Callable[..., Any] = soak_tasks.value
        args: tuple[Any, ...] = (token,)
        expect = Expect("value", token, 0)
        handle = js
        consume = 1
        timeout: float | None = None
        if action == "value-small":
            size = rng.randint(0, 200)
            args, expect = (token, size), Expect("value", token, size)
        elif action == "value-medium":
            size = rng.randint(1024, MiB)
            args, expect = (token, size), Expect("value", token, size)
        elif action == "value-large":
            size = rng.randint(MiB, 16 * MiB)
            args, expect = (token, size), Expect("value", token, size)
        elif action == "value-64MiB":
            args, expect = (token, 64 * MiB), Expect("value", token, 64 * MiB)
        elif action in ("raise", "raise-big"):
            size = 0 if action == "raise" else rng.randint(64 * 1024, 2 * MiB)
            fn, args, expect = (
                soak_tasks.raise_error,
                (token, size),
                Expect("raised", token),
            )
        elif action == "system-exit":
            code = rng.choice([0, 1, 3, 42])
            fn, args = soak_tasks.system_exit, (code,)
            expect = Expect("lost", returncode=code)
        elif action == "keyboard-interrupt":
            fn, args = soak_tasks.keyboard_interrupt, ()
            expect = Expect("lost", returncode=128 + signal.SIGINT)
        elif action == "os-exit":
            code = rng.choice([0, 1, 7, 99])
            fn, args = soak_tasks.hard_exit, (code,)
            expect = Expect("lost", returncode=code)
        elif action == "sigkill":
            fn, args = soak_tasks.kill_self, (signal.SIGKILL,)
            expect = Expect("lost", returncode=-signal.SIGKILL)
        elif action == "sigsegv":
            fn, args = soak_tasks.segfault, ()
            expect = Expect("lost", returncode=-signal.SIGSEGV)
        elif action == "exec":
            code = rng.choice([0, 5])
            linger = rng.choice([0, 0, 0.02])
            fn, args = soak_tasks.exec_program, (code, linger)
            expect = Expect("lost", returncode=code)
        elif action == "unpicklable-result":
            fn, args, expect = soak_tasks.unpicklable_result, (), Expect("pickle-error")
        elif action == "unrebuildable-result":
            fn, args = soak_tasks.unrebuildable_result, ()
            expect = Expect("unpickle-error")
        elif action == "cancel":
            fn, args = soak_tasks.wait_for_cancel, ()
            expect = Expect("lost", returncode=-signal.SIGTERM)
        elif action == "stop-cont":
            fn, args = soak_tasks.nap, (rng.choice([0, 0.01, 0.03]), token)
        elif action in ("nested", "forget", "nested-raise"):
            if action == "nested":
                depth, width = rng.choice([(2, 2), (3, 2), (2, 3)])
                fn, args = soak_tasks.tree, (js, depth, width, token)
                data = str(soak_tasks.tree_size(depth, width)).encode()
            elif action == "forget":
                fn, args, data = soak_tasks.forget, (js, token), b"forgot"
            else:
                fn, args, data = soak_tasks.nested_raise, (js, token), b"caught"
            expect = Expect("value", token, data=data)
        elif action.startswith("gate-"):
            handle, timeout, failure = self.gated(action, token)
            if failure is not None:
                try:
                    self.submit(handle, fn, args, timeout=timeout)
                except failure:
                    self.outcomes[
                        "gate-error" if failure is OSError else "blocked"
                    ] += 1
                    return
                self.violation(f"{action} did not raise {failure.__name__}")
                return
        elif action == "poll":
            try:
                future = self.submit(js, fn, args, timeout=0)
            except Blocked:
                self.outcomes["blocked"] += 1
                return
            self.track(action, expect, future)
            return
        elif action == "env-preexec":
            wrap = rng.random() < 0.5
            handle = js.revise_env({"SOAK_ENV": str(token)}).replace_preexec(
                soak_tasks.mark_preexec, token, wrap
            )
            fn = soak_tasks.env_and_preexec
            data = f"{token}|{token}{'+wrapped' if wrap else ''}".encode()
            expect = Expect("value", token, data=data)
        elif action == "lambda-args":
            fn, args = (
                soak_tasks.call_it,
                (soak_tasks.three if rng.random() < 0.3 else (lambda: 3), token),
            )
            expect = Expect("value", token, 3)
            if self.method != "fork" and args[0] is not soak_tasks.three:
                try:
                    self.submit(js, fn, args)
                except TypeError as exc:
                    if "cannot be pickled" not in str(exc):
                        self.violation(f"unpicklable arguments: {exc}")
                    self.outcomes["unpicklable-args"] += 1
                    return
                self.violation("a lambda argument was accepted under " + self.method)
                return
        elif action == "consume0":
            consume = 0
        elif action == "sibling":
            handle = rng.choice(
                [copy.copy(js), copy.deepcopy(js), js.revise_env({"SOAK": "1"})]
            )
        elif action == "callbacks":
            pass
        elif action not in ("value-empty",):  # pragma: no cover
            raise AssertionError(action)
        future = self.submit(handle, fn, args, consume=consume, timeout=timeout)
        sub = self.track(action, expect, future, consume)
        if action == "callbacks":
            kinds = [
                rng.choices(("ok", "raise", "reenter", "base"), (5, 3, 2, 1))[0]
                for _ in range(rng.randint(1, 4))
            ]
            if "reentrant-callbacks" in self.known_bugs:
                kinds.sort(key=lambda kind: kind == "reenter")
            for kind in kinds:
                self.guarded_register(sub, self.new_callback(kind))

    def guarded_register(
        self, sub: Sub, cb: int, flag: list[int] | None = None
    ) -> None:
        """Register, recording a callback that ran (and raised) at once."""
        try:
            self.register(sub, cb, flag)
        except CallbackRaised as exc:
            self.note_callback_raised(exc)
        except SoakBase as exc:
            self.note_base(exc)

    def gated(self, action: str, token: int) -> tuple[Any, float | None, Any]:
        if action == "gate-raise":

            def gate() -> float | None:
                raise OSError(f"soak gate {token} broke")

            return self.js.replace_sleep(gate), None, OSError
        if action == "gate-blocked":
            return self.js.replace_sleep(lambda: 0.01), 0.02, Blocked
        refusals = [0.001] * self.rng.randint(1, 3)

        def gate_ok() -> float | None:
            return refusals.pop() if refusals else None

        return self.js.replace_sleep(gate_ok), None, None

    def episode_map(self) -> None:
        # map waits for slots: no ``cancel`` worker may hold the last one.
        self.release_blockers(keep=self.slots - 1)
        rng = self.rng
        if rng.random() < 0.5 or "map-callbacks" in self.known_bugs:
            # Otherwise map meets other Futures' callbacks (raising ones
            # too): per the spec, CallbackRaised from the iterator is
            # reported and iterating again continues.
            self.harvest_all()
        count = rng.randint(1, 30)
        tokens = [self.next_token() for _ in range(count)]
        sizes = [rng.choice([0, 10, 1000, 100_000]) for _ in range(count)]
        fail_at, failure = None, None
        if rng.random() < 0.35:
            fail_at = rng.randrange(count)
            failure = rng.choice(["raise", "lost"])
        chunksize = rng.choice([1, 1, 2, 3, 5])
        buffersize = rng.choice([None, None, 1, 2, 4])
        form = rng.choice(["argses", "kwargses", "both"])
        self.n += count
        self.actions["map-item"] += count
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        for i, (token, size) in enumerate(zip(tokens, sizes)):
            kind = failure if i == fail_at else "value"
            kwargs = {"kind": kind, "token": token, "size": size}
            calls.append(((), kwargs))
        if form == "argses":
            argses = [(c[1]["kind"], c[1]["token"], c[1]["size"]) for c in calls]
            it_args: dict[str, Any] = {"argses": argses}
        elif form == "kwargses":
            it_args = {"kwargses": [c[1] for c in calls]}
        else:
            it_args = {
                "argses": [(c[1]["kind"],) for c in calls],
                "kwargses": [
                    {"token": c[1]["token"], "size": c[1]["size"]} for c in calls
                ],
            }
        self.expect_a_slot_to_come_free("map")
        before = self.snapshot()
        got: list[Any] = []
        error: BaseException | None = None
        retries = 0
        while True:
            try:
                iterator = self.js.map(
                    soak_tasks.map_task,
                    timeout=self.limit,
                    chunksize=chunksize,
                    buffersize=buffersize,
                    **it_args,
                )
                break
            except CallbackRaised as exc:
                # From the reclaim before a submission: what was launched
                # before it runs on (adopted below); map() is called again.
                self.note_callback_raised(exc)
            except SoakBase as exc:
                self.note_base(exc)
            retries += 1
        while True:
            try:
                got.append(next(iterator))
            except StopIteration:
                break
            except CallbackRaised as exc:
                self.note_callback_raised(exc)
            except SoakBase as exc:
                self.note_base(exc)
            except Blocked:
                self.hang("map", [])
                break
            except Exception as exc:
                error = exc
                break
        # What map must have yielded: every value before the failure (before
        # the failing chunk when the whole chunk's worker was lost).
        stop = count
        if fail_at is not None:
            stop = fail_at
            if failure == "lost":
                stop = fail_at - fail_at % chunksize
        for i, item in enumerate(got):
            problem = soak_tasks.check_sealed(item, tokens[i], sizes[i])
            if problem:
                self.violation(f"map item {i}: {problem}")
        if len(got) != stop:
            self.violation(
                f"map yielded {len(got)} values, expected {stop} (chunksize "
                f"{chunksize}, buffersize {buffersize}; a raising callback of "
                "another Future can end the iterator)"
            )
        self.outcomes["value"] += len(got)
        if fail_at is None:
            if error is not None:
                self.violation(f"map raised {error!r}")
        else:
            want = ValueError if failure == "raise" else LostResult
            if not isinstance(error, want):
                self.violation(f"map raised {error!r}, expected {want.__name__}")
            else:
                self.outcomes["raised" if failure == "raise" else "lost"] += 1
        # Work after the failure was launched and is not cancelled (nor is
        # work of a map() call that a callback interrupted).
        self.adopt(before, "map", Expect("value|raised|lost"))
        self.harvest_all()

    def episode_full(self) -> None:
        """Every slot held: the N+1th submission is Blocked, deterministically."""
        self.harvest_all()
        self.n += self.slots
        holders = []
        for _ in range(self.slots):
            token = self.next_token()
            try:
                future = self.js.submit(
                    soak_tasks.hold, args=(self.hold_path, token), timeout=0
                )
            except Blocked:
                self.violation(
                    f"only {len(holders)} of {self.slots} slots were free with "
                    "no work outstanding"
                )
                break
            holders.append(
                Sub(self.n, "hold", Expect("value", token, 0), future, 1, "")
            )
            self.known.add(future)
        self.actions["hold"] += len(holders)
        try:
            if len(holders) == self.slots:
                self.check_full(holders)
        finally:
            os.write(self.hold_fd, b"h" * len(holders))
            for sub in holders:
                self.collect(sub, "result")
        try:
            leftover = os.read(self.hold_fd, 4096)
        except BlockingIOError:
            leftover = b""
        if leftover:
            self.violation(f"{len(leftover)} hold bytes were never consumed")

    def check_full(self, holders: list[Sub]) -> None:
        rng = self.rng
        js = self.js
        self.n += 1
        try:
            js.submit(soak_tasks.value, args=(0,), timeout=0)
            self.violation(
                f"submit(timeout=0) launched with all {self.slots} slots held"
            )
        except Blocked:
            self.outcomes["blocked"] += 1
        wait = rng.choice([0.005, 0.02, 0.05])
        start = time.monotonic()
        self.n += 1
        try:
            js.submit(soak_tasks.value, args=(0,), timeout=wait)
            self.violation("submit(timeout>0) launched with every slot held")
        except Blocked:
            self.outcomes["blocked"] += 1
            if time.monotonic() - start < wait:
                self.violation(f"Blocked before the {wait} s timeout")
        sub = rng.choice(holders)
        try:
            sub.future.result(timeout=0)
            self.violation("result(timeout=0) of a held worker returned")
        except Blocked:
            self.outcomes["blocked"] += 1
        if sub.future.done() or sub.future.wait(0.001):
            self.violation("done()/wait() of a held worker said finished")
        self.n += 1
        try:
            js.replace_sleep(lambda: 0.001).submit(
                soak_tasks.value, args=(0,), timeout=0.01
            )
            self.violation("a gated submission launched with every slot held")
        except Blocked:
            self.outcomes["blocked"] += 1
        try:
            adv = js.advertise(consume=1, timeout=0)
            adv.close()
            self.violation("advertise(consume=1) took a slot with every slot held")
        except Blocked:
            self.outcomes["blocked"] += 1
        # consume=0 is the escape hatch: it runs anyway.
        token = self.next_token()
        self.n += 1
        future = js.submit(soak_tasks.value, args=(token,), consume=0, timeout=0)
        self.known.add(future)
        self.collect(
            Sub(self.n, "consume0-full", Expect("value", token, 0), future, 0, "")
        )

    def episode_interrupt(self) -> None:
        """KeyboardInterrupt from a timer, in the middle of submit, result,
        map, wait and reclaim; then everything must still be accounted for."""
        self.harvest_all()  # callbacks and orphans must be attributable
        rng = self.rng
        first = rng.uniform(0.0002, 0.004)
        interval = rng.uniform(0.0003, 0.004)
        ops = rng.randint(5, 25)
        signal.setitimer(signal.ITIMER_REAL, first, interval)
        try:
            for _ in range(ops):
                self.tick()
                self.interruptible_op()
        finally:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        self.harvest_all()

    def interruptible_op(self) -> None:
        rng = self.rng
        js = self.js
        op = rng.choices(
            ("submit", "result", "map", "wait", "reclaim", "exit"),
            (40, 30, 10, 10, 10, 4),
        )[0]
        if op in ("result", "wait") and not self.window:
            op = "submit"
        if op == "exit" and self.method != "fork":
            op = "reclaim"  # a Jobserver of its own would start its own template
        before = self.snapshot()
        token = self.next_token()
        size = rng.choice([0, 100, 50_000, 2 * MiB, 8 * MiB])
        expect = Expect("value", token, size)
        if op in ("submit", "map", "exit"):
            count = {"submit": 1, "map": 3, "exit": 2}[op]
            self.n += count
            self.actions[f"interrupted-{op}"] += count
        sub = self.window[rng.randrange(len(self.window))] if self.window else None
        got: list[Any] = []
        future = None
        private: Jobserver | None = None
        entered = False
        try:
            self.armed = True
            if op == "exit":
                # The last scope of a Jobserver of its own, left with work
                # running (bug 17): its close must run whole.
                private = Jobserver(context="fork", slots=1)
                with private:
                    entered = True
                    for _ in range(2):
                        private.submit(soak_tasks.value, args=(token, size), consume=0)
            elif op == "submit":
                future = js.submit(soak_tasks.value, args=(token, size))
            elif op == "result":
                assert sub is not None
                try:
                    sub.future.result(self.limit)
                except (CallbackRaised, Blocked):
                    pass  # the outcome itself is checked when harvested
                except Exception as exc:
                    # Only the work's own outcome may come out here: once a
                    # core bug (16) turned an interrupt into RuntimeError.
                    problem = sub.expect.check(classify(False, exc), False, exc)
                    if problem:
                        self.violation(f"an interrupted result raised: {problem}")
            elif op == "wait":
                assert sub is not None
                sub.future.wait(rng.choice([0, 0.01, self.limit]))
            elif op == "map":
                tokens = [token, self.next_token(), self.next_token()]
                for item in js.map(
                    soak_tasks.value,
                    [(t, size) for t in tokens],
                    timeout=self.limit,
                    chunksize=rng.choice([1, 2]),
                ):
                    got.append(item)
            else:
                js.reclaim_resources()
            self.armed = False
        except KeyboardInterrupt:
            self.armed = False
            self.outcomes[f"interrupted-{op}"] += 1
        if private is not None:
            self.check_private_exit(private, entered, token, size)
        self.check_bookkeeping(f"an interrupted {op}")
        if future is not None:
            self.track("interrupted-submit", expect, future)
        for item in got:
            problem = soak_tasks.check_sealed(item)
            if problem:
                self.violation(f"map value under interrupts: {problem}")
        if op == "submit":
            self.adopt(before, "submit", expect)
        elif op == "map":
            self.outcomes["value"] += len(got)
            self.adopt(before, "map", Expect("value"))

    def check_private_exit(
        self, private: Jobserver, entered: bool, token: int, size: int
    ) -> None:
        """After an interrupted ``exit`` op: the work the exit did not wait
        for delivers its values; a Jobserver whose last exit began ends
        closed; and (checked at the end of the run with every descriptor)
        nothing is left open, also by one never entered, once dropped."""
        resources = private._resources
        if resources._scopes > 0:  # interrupted before the exit began
            private.__exit__(None, None, None)
        elif not entered and not resources._closed:
            return  # interrupted before (or in) __enter__: dropped below
        for future in list(resources._tracked):
            try:
                value = future.result(self.limit)
            except Exception as exc:
                self.violation(f"work of an interrupted exit: {exc!r}")
                continue
            problem = soak_tasks.check_sealed(value, token, size)
            if problem:
                self.violation(f"work of an interrupted exit: {problem}")
        if not resources._closed:
            self.violation("a Jobserver's last exit, interrupted, left it open")

    def episode_executor(self) -> None:
        """The executor on the same slots, next to this thread's own work."""
        self.release_blockers()
        ex = self.get_executor()
        rng = self.rng
        plan = []
        for _ in range(rng.randint(1, 8)):
            token = self.next_token()
            kind = rng.choices(
                ("value", "raise", "lost", "pickle", "cancel"), (10, 3, 2, 2, 1)
            )[0]
            plan.append((kind, token))
        self.n += len(plan)
        futures = []
        for kind, token in plan:
            self.actions[f"executor-{kind}"] += 1
            if kind in ("value", "cancel"):
                futures.append(ex.submit(soak_tasks.value, token, 100))
            elif kind == "raise":
                futures.append(ex.submit(soak_tasks.raise_error, token))
            elif kind == "lost":
                futures.append(ex.submit(soak_tasks.kill_self, signal.SIGKILL))
            else:
                futures.append(ex.submit(soak_tasks.unpicklable_result))
        cancelled = set()
        for (kind, _), future in zip(plan, futures):
            if kind == "cancel" and future.cancel():
                cancelled.add(future)
        if not self.wait_executor(futures):
            return
        from concurrent.futures.process import BrokenProcessPool

        for (kind, token), future in zip(plan, futures):
            if future in cancelled:
                self.outcomes["executor-cancelled"] += 1
                continue
            exc = future.exception()
            if kind in ("value", "cancel"):
                ok = exc is None and not soak_tasks.check_sealed(future.result(), token)
            elif kind == "raise":
                ok = isinstance(exc, ValueError) and f"soak-error {token}" in str(exc)
            elif kind == "lost":
                ok = isinstance(exc, LostResult) and isinstance(exc, BrokenProcessPool)
            else:
                ok = isinstance(exc, TypeError) and "refuses" in str(exc)
            self.outcomes[f"executor-{'value' if exc is None else kind}"] += 1
            if not ok:
                self.violation(f"executor {kind}: got {exc!r}")
        # map blocks in the executor's futures: this thread must hold no
        # slot of its own meanwhile (see wait_executor).
        self.harvest_all()
        map_tokens = [self.next_token() for _ in range(rng.randint(0, 5))]
        self.n += len(map_tokens)
        self.actions["executor-map-item"] += len(map_tokens)
        mapped = list(
            ex.map(
                soak_tasks.value, map_tokens, [10] * len(map_tokens), timeout=self.limit
            )
        )
        for token, item in zip(map_tokens, mapped):
            problem = soak_tasks.check_sealed(item, token, 10)
            if problem:
                self.violation(f"executor map: {problem}")
        self.outcomes["executor-value"] += len(mapped)

    def get_executor(self) -> Any:
        if self.executor is None:
            # The dispatcher thread inherits this mask: the interrupt timer's
            # SIGALRM must reach the main thread only (see docs/reliability.md).
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            try:
                self.executor = executor_class()(self.js)
                warm_up = self.executor.submit(soak_tasks.value, 0)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            handle = getattr(self.executor._dispatcher, "handle", self.js)
            self.adopt_helpers(handle, lambda: self.wait_executor([warm_up]))
        return self.executor

    def wait_executor(self, futures: list[Any]) -> bool:
        """Wait for executor futures while reaping this thread's own work:
        the core has no background thread, so slots of work this thread
        launched come back only when this thread reclaims them."""
        import concurrent.futures

        deadline = time.monotonic() + self.limit
        pending = set(futures)
        while pending:
            self.tick()
            if time.monotonic() > deadline:
                self.hang("executor futures", list(pending))
                return False
            _, pending = concurrent.futures.wait(pending, timeout=0.05)
            self.settle_callbacks()
        return True

    def episode_scopes(self) -> None:
        """Sibling handles and nested ``with`` scopes: leaving an inner scope
        must not release anything while the outer one is open."""
        # The scoped submissions wait for slots without a timeout: no
        # ``cancel`` worker may hold the last one.
        self.release_blockers(keep=self.slots - 1)
        rng = self.rng
        sibling = rng.choice([copy.copy(self.js), self.js.revise_env({"A": "b"})])
        with sibling as inner:
            for _ in range(rng.randint(1, 5)):
                token = self.next_token()
                self.n += 1
                self.actions["scoped"] += 1
                future = self.submit(inner, soak_tasks.value, (token, 10))
                self.track("scoped", Expect("value", token, 10), future)
            if rng.random() < 0.5:
                while self.window:
                    self.harvest_one()
        # The scope may have exited with work outstanding: it was not the
        # last scope, so the work goes on and the handle stays usable.
        self.stream()

    def episode_nested(self) -> None:
        for _ in range(self.rng.randint(1, 3)):
            self.launch(self.rng.choice(["nested", "forget", "nested-raise"]))
        self.stream()

    # --- the end of a run ---------------------------------------------------------------

    def finish(self) -> None:
        self.harvest_all()
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
        self.settle_callbacks()
        self.episode_dropped()
        # Every callback ran exactly once; every raising one was reported once.
        wrong = []
        for cb, kind in self.cb_kind.items():
            if self.cb_runs[cb] != 1:
                wrong.append(f"callback {cb} ({kind}) ran {self.cb_runs[cb]} times")
            reported = self.cb_reported[cb]
            if kind in ("raise", "base") and reported != 1:
                wrong.append(f"callback {cb} ({kind}) reported {reported} times")
        self.checks["callbacks"] = (
            not wrong,
            "; ".join(wrong[:5]) or f"{len(self.cb_kind)} ran once each",
        )
        for text in wrong:
            self.violation(text)
        self.probe_slots()

    def episode_dropped(self) -> None:
        """The spec's two ResourceWarnings: a Future and a resource set dropped
        with a worker running.  The orphaned worker is then killed and reaped."""
        before = len(self.resource_warnings)
        private = Jobserver(context=self.method, slots=1)
        future = private.submit(soak_tasks.wait_for_cancel)
        pid = int(re.search(r"pid=(\d+)", repr(future)).group(1))  # type: ignore[union-attr]
        del private, future
        gc.collect()
        got = len(self.resource_warnings) - before
        self.expected_warnings += got
        if got != 2:
            self.violation(f"dropping running work gave {got} ResourceWarnings, not 2")
        os.kill(pid, signal.SIGKILL)
        if self.direct_workers:
            os.waitpid(pid, 0)
        else:  # the fork server or template process reaps it
            deadline = time.monotonic() + self.limit
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.01)

    def probe_slots(self) -> None:
        """Exactly N slots: N can be taken without blocking, the N+1th cannot;
        first through the public API, then by counting the tokens."""
        js = self.js
        holders = []
        for _ in range(self.slots):
            token = self.next_token()
            try:
                future = js.submit(
                    soak_tasks.hold, args=(self.hold_path, token), timeout=0
                )
            except Blocked:
                break
            holders.append(
                Sub(self.n, "probe", Expect("value", token, 0), future, 1, "")
            )
            self.known.add(future)
        extra = True
        try:
            js.submit(soak_tasks.value, args=(0,), timeout=0)
        except Blocked:
            extra = False
        os.write(self.hold_fd, b"p" * len(holders))
        for sub in holders:
            self.collect(sub, "result")
        if extra:
            self.harvest_all()
        public_ok = len(holders) == self.slots and not extra
        # Now the tokens themselves.
        pool = js._resources.pool
        ledger: collections.deque[bytes] = collections.deque()
        while pool.take(ledger):
            pass
        tokens = list(ledger)
        while ledger:
            pool.give(ledger)
        counted_ok = len(tokens) == self.slots
        self.checks["slots"] = (
            public_ok and counted_ok,
            f"N={self.slots}: {len(holders)} launched, N+1th "
            f"{'launched' if extra else 'Blocked'}; {len(tokens)} tokens",
        )
        if not (public_ok and counted_ok):
            self.violation(f"slots: {self.checks['slots'][1]}")
        real = sorted(t for t in tokens if t)
        if self.expect_tokens is None:
            self.checks["tokens"] = (True, "count only (Make writes its own '+')")
            return
        want = sorted(
            self.expect_tokens[i : i + 1] for i in range(len(self.expect_tokens))
        )
        ok = real == want
        self.checks["tokens"] = (
            ok,
            f"{len(real)} bytes {'as at the start' if ok else 'DIFFER'}: "
            f"{b''.join(real)!r}",
        )
        if not ok:
            self.violation(
                f"token bytes {b''.join(real)!r}, expected {b''.join(want)!r}"
            )

    def final_checks(self, baseline_fds: set[int], baseline_children: set[int]) -> None:
        problems = [v for v in self.violations if v.startswith("outcome")]
        self.checks["outcomes"] = (
            not problems,
            f"{self.checked} futures checked, {len(problems)} wrong",
        )
        self.checks.setdefault("callbacks", (False, "not reached"))
        self.checks.setdefault("slots", (False, "not reached"))
        self.checks.setdefault("tokens", (False, "not reached"))
        fds = open_fds()
        leaked = sorted(fds - baseline_fds)
        closed = sorted(baseline_fds - fds)
        detail = "as at the start"
        if leaked or closed:
            detail = f"leaked {leaked[:10]} closed {closed[:10]}"
            for fd in leaked[:10]:
                try:
                    detail += f" {fd}->{os.readlink(f'/proc/self/fd/{fd}')}"
                except OSError:
                    pass
                detail += f" ({fd_owner(fd)})"
            self.violation(f"descriptors: {detail}")
        self.checks["fds"] = (not leaked and not closed, detail)
        # Template processes end with their resource set: from now on they
        # are helpers to wait for and reap like any other.
        ended = self.own_helpers - self.process_helpers
        self.own_helpers -= ended
        self.forking_helpers -= ended
        self.helper_seen |= ended
        deadline = time.monotonic() + self.limit
        while self.live_foreign_helpers() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.workers() - baseline_children
        left |= self.live_foreign_helpers()
        detail = "none left" + (" (subreaper)" if self.subreaper else "")
        if left:
            detail = "; ".join(process_state(p) for p in sorted(left))
            self.violation(f"processes left: {detail}")
        self.checks["children"] = (not left, detail)
        unexpected = self.resource_warnings[self.expected_warnings :]
        noise = unexpected + self.unraisable + self.logged
        self.checks["warnings"] = (
            not noise,
            f"{self.expected_warnings} expected ResourceWarnings; "
            f"{len(unexpected)} unexpected, {len(self.unraisable)} unraisable, "
            f"{len(self.logged)} logged",
        )
        for text in noise[:10]:
            self.violation(f"warning: {text}")
        self.checks["hang"] = (not self.hangs, f"{self.hangs} hangs")
        self.checks["limit"] = (
            not self.limit_breaches,
            f"peak {self.peak_workers} workers, {self.limit_breaches} breaches",
        )

    def kill_everything(self) -> None:
        for future in list(self.known) + [s.future for s in self.window]:
            try:
                future._worker.send_signal(signal.SIGKILL)
                future._worker.send_signal(signal.SIGCONT)
            except Exception:
                pass
        if self.executor is not None:
            try:
                self.executor.kill_workers()
            except Exception:
                pass

    def abort(self, why: str) -> None:
        self.violation(f"aborted: {why}")
        self.kill_everything()
        self.report()
        os._exit(3)

    def report(self) -> int:
        elapsed = time.monotonic() - self.started
        data = {
            "run": self.name,
            "pool": self.pool,
            "method": self.method,
            "slots": self.slots,
            "seed": self.seed,
            "submissions": self.n,
            "elapsed": round(elapsed, 1),
            "actions": dict(self.actions),
            "outcomes": dict(self.outcomes),
            "harvests": dict(self.harvests),
            "episodes": dict(self.episodes),
            "interrupts": self.delivered,
            "checks": {k: list(v) for k, v in self.checks.items()},
            "violations": self.violations,
            "known_bugs_avoided": self.known_bugs,
        }
        if self.opts.report:
            with open(self.opts.report, "w") as f:
                json.dump(data, f, indent=1, default=str)
        else:  # run by hand: nobody else prints it
            print(render_run(data), flush=True)
        return 1 if self.violations else 0


# =============================================================================
# Rendering
# =============================================================================

CHECK_ORDER = (
    "outcomes",
    "callbacks",
    "slots",
    "tokens",
    "fds",
    "children",
    "warnings",
    "hang",
    "limit",
    "make",
    "pipe",
    "server",
)
OUTCOME_ORDER = (
    "value",
    "raised",
    "lost",
    "cancelled",
    "pickle-error",
    "unpickle-error",
    "blocked",
    "gate-error",
    "unpicklable-args",
    "callback-raised",
    "callback-base-exception",
    "orphans-adopted",
)


def render_run(data: dict[str, Any]) -> str:
    lines = [
        f"== {data['run']}: {data['submissions']} submissions, {data['slots']} "
        f"slots, seed {data['seed']}, {data['elapsed']} s, "
        f"{data['interrupts']} interrupts delivered"
    ]
    outcomes = data["outcomes"]
    shown = [k for k in OUTCOME_ORDER if k in outcomes]
    shown += sorted(k for k in outcomes if k not in OUTCOME_ORDER)
    lines.append("   outcomes: " + ", ".join(f"{k} {outcomes[k]}" for k in shown))
    for name in CHECK_ORDER:
        if name in data["checks"]:
            ok, detail = data["checks"][name]
            lines.append(f"   {'ok  ' if ok else 'FAIL'} {name:<9} {detail}")
    lines.append(f"   violations: {len(data['violations'])}")
    for bug in data.get("known_bugs_avoided", []):
        lines.append(f"   avoided (open): {KNOWN_BUGS.get(bug, bug)}")
    return "\n".join(lines)


def render_tables(reports: list[dict[str, Any]], markdown: bool) -> str:
    columns = [
        ("run", lambda r: r["run"]),
        ("N", lambda r: str(r["slots"])),
        ("submissions", lambda r: str(r["submissions"])),
        ("s", lambda r: f"{r['elapsed']:.0f}"),
    ]
    for key, title in (
        ("value", "value"),
        ("raised", "raised"),
        ("lost", "lost"),
        ("cancelled", "cancelled"),
        ("pickle-error", "pickle err"),
        ("unpickle-error", "unpickle err"),
        ("blocked", "Blocked"),
        ("gate-error", "gate err"),
        ("unpicklable-args", "bad args"),
        ("callback-raised", "cb raised"),
        ("orphans-adopted", "orphans"),
    ):
        columns.append((title, lambda r, k=key: str(r["outcomes"].get(k, 0))))
    columns.append(
        (
            "interrupted",
            lambda r: str(
                sum(v for k, v in r["outcomes"].items() if k.startswith("interrupted"))
            ),
        )
    )
    columns.append(
        (
            "executor",
            lambda r: str(
                sum(v for k, v in r["outcomes"].items() if k.startswith("executor"))
            ),
        )
    )
    columns.append(("violations", lambda r: str(len(r["violations"]))))
    checks = [name for name in CHECK_ORDER if any(name in r["checks"] for r in reports)]
    outcome_rows = [[c[1](r) for c in columns] for r in reports]
    check_rows = []
    for r in reports:
        row = [r["run"]]
        for name in checks:
            if name not in r["checks"]:
                row.append("-")
            else:
                row.append("ok" if r["checks"][name][0] else "FAIL")
        check_rows.append(row)
    return (
        table([c[0] for c in columns], outcome_rows, markdown)
        + "\n\n"
        + table(["run", *checks], check_rows, markdown)
    )


def table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(header) + " |"]
        out.append("|" + "|".join("---" for _ in header) + "|")
        out += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    out += ["  ".join(str(x).rjust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(out)


# =============================================================================
# The driver
# =============================================================================


class Run:
    def __init__(self, pool: str, method: str, submissions: int, seed: int) -> None:
        self.pool = pool
        self.method = method
        self.name = f"{pool}/{method}"
        self.submissions = submissions
        self.seed = derive_seed(seed, pool, method)
        rng = random.Random(self.seed)
        if pool == "own":
            self.slots = rng.choices([1, 2, 3, 4], [1, 3, 4, 3])[0]
        else:
            self.slots = rng.choice([2, 3, 4])


def plan(opts: argparse.Namespace) -> list[Run]:
    runs = []
    for pool in opts.pools:
        for method in opts.methods:
            if opts.submissions is not None:
                count = opts.submissions
            elif opts.quick:
                count = QUICK.get(pool, {}).get(method, 0)
                if not count:
                    continue
            else:
                count = FULL_OWN if pool == "own" else FULL_PROTOCOL[method]
            runs.append(Run(pool, method, count, opts.seed))
    return runs


def child_command(
    run: Run, opts: argparse.Namespace, report: str, tokens: bytes
) -> list[str]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--pool",
        run.pool,
        "--methods",
        run.method,
        "--seed",
        str(run.seed),
        "--slots",
        str(run.slots),
        "--submissions",
        str(run.submissions),
        "--hang-timeout",
        str(opts.hang_timeout),
        "--report",
        report,
    ]
    if tokens:
        cmd += ["--expect-tokens", tokens.hex()]
    if opts.exercise_known_bugs:
        cmd.append("--exercise-known-bugs")
    return cmd


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(key, None)
    return env


def control(fifo: str, *args: str) -> tuple[int, dict[str, str]]:
    """``jobserver <args> --fifo FIFO``: its exit status and ``key: value`` lines."""
    done = subprocess.run(
        [sys.executable, "-m", "jobserver", *args, "--fifo", fifo],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    fields = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return done.returncode, fields


def stop_server(
    server: subprocess.Popen[bytes], fifo: str, tokens: int
) -> tuple[bool, str]:
    """After a ``serve`` run: every token is back in the server's FIFO
    (``status``), and ``stop`` reports them all returned, none lost."""
    try:
        _, status = control(fifo, "status")
        code, stopped = control(fifo, "stop")
        server_code = server.wait(timeout=60)
    except Exception as exc:
        server.kill()
        server.wait()
        return False, f"could not stop the server: {exc!r}"
    finally:
        assert server.stderr is not None and server.stdout is not None
        complaint = server.stderr.read().decode(errors="replace").strip()
        server.stderr.close()
        server.stdout.close()
    want = str(tokens)
    ok = (
        status.get("free") == want
        and status.get("in-use") == "0"
        and code == 0
        and server_code == 0
        and stopped.get("returned") == want
        and stopped.get("lost") == "0"
    )
    detail = (
        f"status free {status.get('free')}, in-use {status.get('in-use')}; stop: "
        f"returned {stopped.get('returned')}, lost {stopped.get('lost')} (of {want}); "
        f"exit {code}/{server_code}"
    )
    if complaint and not ok:
        detail += f"; server said: {complaint[-300:]}"
    return ok, detail


def execute(run: Run, opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    report = str(workdir / f"{run.pool}-{run.method}.json")
    env = child_env()
    extra: dict[str, tuple[bool, str]] = {}
    pass_fds: tuple[int, ...] = ()
    fake: tuple[int, int] | None = None
    server: subprocess.Popen[bytes] | None = None
    fifo = ""
    tokens = b""
    if run.pool == "own":
        tokens = b"+" * run.slots
        cmd = child_command(run, opts, report, tokens)
    elif run.pool in ("cli", "fifo"):
        tokens = b"+" * (run.slots - 1)
        inner = child_command(run, opts, report, tokens)
        form = ["--fifo"] if run.pool == "fifo" else []
        cmd = [
            sys.executable,
            "-m",
            "jobserver",
            "-j",
            str(run.slots),
            *form,
            "--",
            *inner,
        ]
    elif run.pool == "fake":
        rng = random.Random(run.seed)
        pool = [b"\x00", b"\xff", *(bytes([c]) for c in rng.sample(range(33, 127), 10))]
        tokens = b"".join(pool[: run.slots - 1])
        r, w = os.pipe()
        os.write(w, tokens)
        os.set_inheritable(r, True)
        os.set_inheritable(w, True)
        fake = (r, w)
        pass_fds = fake
        env["MAKEFLAGS"] = f" -j{run.slots} --jobserver-auth={r},{w}"
        cmd = child_command(run, opts, report, tokens)
    elif run.pool == "serve":
        tokens = b"+" * (run.slots - 1)
        fifo = str(workdir / f"serve-{run.method}")
        serve = ["serve", "-j", str(run.slots), "--fifo", fifo, "--grace", "5"]
        server = subprocess.Popen(
            [sys.executable, "-m", "jobserver", *serve],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert server.stdout is not None
        line = server.stdout.readline().decode().strip()
        prefix = "export MAKEFLAGS="
        if not line.startswith(prefix):
            server.kill()
            server.wait()
            return skipped(run, f"jobserver serve printed {line!r}")
        env["MAKEFLAGS"] = shlex.split(line[len(prefix) :])[0]
        cmd = child_command(run, opts, report, tokens)
    else:  # make
        make = shutil.which("make")
        if make is None:
            return skipped(run, "GNU Make is not installed")
        inner = child_command(run, opts, report, b"")
        recipe = " ".join(shlex.quote(a) for a in inner).replace("$", "$$")
        makefile = workdir / f"Makefile.{run.method}"
        makefile.write_text(f".PHONY: soak\nsoak:\n\t+@{recipe}\n")
        cmd = [make, "--no-print-directory", f"-j{run.slots}", "-f", str(makefile)]
    print(
        f"== running {run.name}: {' '.join(cmd[:6])} ...", file=sys.stderr, flush=True
    )
    budget = opts.run_timeout or max(300.0, run.submissions * 0.5)
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        env=env,
        pass_fds=pass_fds,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    if fake is not None:
        os.close(fake[1])
    stderr_lines: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            stderr_lines.append(line)
            sys.stderr.write(line)
            sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        extra["hang"] = (False, f"the run exceeded {budget:.0f} s and was killed")
    except BaseException:
        # The driver itself is stopped (Ctrl-C, SIGTERM): so is the run.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    reader.join(10)
    if fake is not None:
        r = fake[0]
        os.set_blocking(r, False)
        left = b""
        try:
            while True:
                chunk = os.read(r, 4096)
                if not chunk:
                    break
                left += chunk
        except BlockingIOError:
            pass
        os.close(r)
        ok = sorted(left) == sorted(tokens)
        extra["pipe"] = (
            ok,
            f"pipe holds {left!r} after the run, started with {tokens!r}",
        )
    if server is not None:
        extra["server"] = stop_server(server, fifo, run.slots - 1)
    if run.pool == "make":
        internal = [line for line in stderr_lines if "INTERNAL" in line]
        extra["make"] = (
            code == 0 and not internal,
            f"make exited {code}" + (f"; {internal[0].strip()}" if internal else ""),
        )
    try:
        with open(report) as f:
            data: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        data = {
            "run": run.name,
            "pool": run.pool,
            "method": run.method,
            "slots": run.slots,
            "seed": run.seed,
            "submissions": 0,
            "elapsed": round(time.monotonic() - start, 1),
            "outcomes": {},
            "checks": {},
            "violations": [],
            "interrupts": 0,
        }
        tail = "".join(stderr_lines[-30:])
        try:
            with open(report + ".state") as f:
                tail += "last state the soak wrote:\n" + f.read()
        except OSError:
            pass
        data["violations"].append(f"no report: the run exited with {code}\n{tail}")
        data["checks"]["hang"] = (False, f"no report (exit status {code})")
    for name, (ok, detail) in extra.items():
        data["checks"][name] = [ok, detail]
        if not ok:
            data["violations"].append(f"{name}: {detail}")
    if code != 0 and not data["violations"]:
        data["violations"].append(f"the run exited with status {code}")
    return data


def skipped(run: Run, why: str) -> dict[str, Any]:
    print(f"== skipping {run.name}: {why}", file=sys.stderr)
    return {}


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def driver(opts: argparse.Namespace) -> int:
    # SIGTERM unwinds like Ctrl-C, so that the current run is ended too.
    signal.signal(signal.SIGTERM, _terminate)
    if opts.seed is None:
        opts.seed = int.from_bytes(os.urandom(4), "big")
    runs = plan(opts)
    mode = "quick" if opts.quick else "full"
    print(
        f"soak seed {opts.seed} ({mode}; replay with: scripts/soak "
        f"{'--quick ' if opts.quick else ''}--seed {opts.seed})",
        flush=True,
    )
    print(
        "runs: " + ", ".join(f"{r.name} x{r.submissions} (N={r.slots})" for r in runs),
        flush=True,
    )
    reports = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-driver-") as tmp:
        for run in runs:
            data = execute(run, opts, Path(tmp))
            if data:
                reports.append(data)
                print(render_run(data), flush=True)
    violations = sum(len(r["violations"]) for r in reports)
    total = sum(r["submissions"] for r in reports)
    print(
        f"\n== soak summary: seed {opts.seed}, {mode}, {total} submissions, "
        f"{violations} violations, {time.monotonic() - started:.0f} s\n",
        flush=True,
    )
    print(render_tables(reports, markdown=False), flush=True)
    avoided = sorted({b for r in reports for b in r.get("known_bugs_avoided", [])})
    for bug in avoided:
        print(f"avoided (open, xfail-pinned): {KNOWN_BUGS.get(bug, bug)}", flush=True)
    if opts.markdown:
        with open(opts.markdown, "w") as f:
            f.write(render_tables(reports, markdown=True) + "\n")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"seed": opts.seed, "mode": mode, "runs": reports}, f, indent=1)
    if violations:
        print("\nviolations:", flush=True)
        for r in reports:
            for text in r["violations"][:20]:
                print(f"  {r['run']}: {text}", flush=True)
        print(
            f"\nreplay: scripts/soak {'--quick ' if opts.quick else ''}--seed {opts.seed}",
            flush=True,
        )
    return 1 if violations or not reports else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/soak",
        description="Chaos soak for jobserver (see docs/reliability.md).",
    )
    parser.add_argument("--quick", action="store_true", help="about a minute (CI)")
    parser.add_argument("--seed", type=int, default=None, help="replay this seed")
    parser.add_argument(
        "--methods",
        type=lambda s: s.split(","),
        default=list(METHODS),
        help="comma-separated start methods (default: all three)",
    )
    parser.add_argument(
        "--pools",
        type=lambda s: s.split(","),
        default=list(POOLS),
        help=f"comma-separated pool sources: {','.join(POOLS)} (default: all)",
    )
    parser.add_argument(
        "--submissions", type=int, default=None, help="per run (overrides the mode)"
    )
    parser.add_argument(
        "--hang-timeout",
        type=float,
        default=120.0,
        help="seconds any single wait may take before it is reported as a hang",
    )
    parser.add_argument("--run-timeout", type=float, default=None)
    parser.add_argument(
        "--exercise-known-bugs",
        action="store_true",
        help="do not avoid the triggers of open bugs that reproduce "
        "(KNOWN_BUGS; by default each run probes for them and avoids them)",
    )
    parser.add_argument("--markdown", help="also write the tables here (Markdown)")
    parser.add_argument("--json", help="also write every run's report here")
    # Internal: one run, started by the driver.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    parser.add_argument("--slots", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--expect-tokens", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    for method in opts.methods:
        if method not in METHODS:
            parser.error(f"unknown start method {method!r}")
    for pool in opts.pools:
        if pool not in POOLS:
            parser.error(f"unknown pool source {pool!r}")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts.child:
        opts.method = opts.methods[0]
        return Soak(opts).run()
    if not os.path.isdir("/proc/self/fd"):
        print("scripts/soak needs Linux (/proc)", file=sys.stderr)
        return 2
    return driver(opts)


if __name__ == "__main__":
    sys.exit(main())

"""Jobserver: submit work to fresh processes under a shared slot limit.

The data path, top to bottom in this module::

    Jobserver.submit(fn, args, kwargs, consume, timeout)
      |  validate fn/args/kwargs/consume/timeout     (nothing held yet)
      |  _Resources.reclaim()                        (finished work gives slots back)
      |  Jobserver._await_gate(deadline)             (replace_sleep gate)
      v
    _Resources.launch(work, consume, deadline)
      |  take_slot: token pipe -> ledger             (_slots: signal-atomic)
      |  launcher.launch(work) -> Worker             (_launch: fork/spawn/forkserver)
      |  Future(...) tracked; result pipe watched    (selector, per process)
      v
    Future.wait / result / done, or _Resources.reclaim
      |  read result pipe as data arrives; EOF       (_wire)
      |  reap the worker (waitpid / pidfd / forkserver sentinel)
      |  _Resources._finished: token ledger -> pipe  (slot back BEFORE callbacks)
      v
    callbacks run, outside every lock, in seqno order

Per-process state: a ``_Resources`` holds the pool (shared by every process
using it) and *this process's* bookkeeping: the Futures it launched and has
not reaped, its ledger of held tokens, and a selector over their pipes.  A
forked child starts with empty bookkeeping (``_after_fork_in_child``, run
lazily on first use in the child); a spawned child gets a fresh
``_Resources`` around descriptors on the same pool.

Load-bearing invariants:

* A worker's token goes back only after that worker was reaped, by the
  process that launched it.  So at most ``slots`` workers (zombies included)
  exist at once, whatever a worker does.
* Tokens this process holds are in ``_ledger`` and ``len(_ledger) ==
  _consuming`` (the slots its live Futures consume) except for an instant
  inside ``launch`` and ``_finished``; ``_reconcile`` restores it on the
  paths that unwind (close, drain).
* Callbacks run after the slot went back and outside every lock; if one
  raises, the Futures still holding callbacks stay queued in
  ``_callback_queue`` for the next call that runs callbacks.
* Futures with a time limit (``replace_time_limit``, ``_timelimit``) are in
  ``_limited``; every wait caps its timeout at the next due signal
  (``limit_wake``) and then calls ``enforce_limits``, never while holding a
  Future's lock.
"""

from __future__ import annotations

import collections
import itertools
import os
import select
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Optional,
    TypeVar,
)

from . import _advertise, _launch
from ._exceptions import Blocked, CallbackRaised
from ._future import (
    Future,
    check_gate_delay,
    check_timeout,
    deadline_of,
    from_callback,
    poll_readable,
    remaining,
)
from ._hold import LentSlot, SlotHold
from ._launch import ContextSpec, Work, as_mp_context, launcher_for
from ._log import DEBUG, get_logger
from ._multislot import Gather
from ._signals import DeferSignals
from ._slots import PipePool, SlotPool
from ._watch import Watcher

EPOLLIN = getattr(select, "EPOLLIN", 1)

if TYPE_CHECKING:
    import multiprocessing.context
    import subprocess

__all__ = ["Jobserver"]

logger = get_logger("jobserver")

T = TypeVar("T")
ContextArg = Optional[ContextSpec]
EnvValue = Optional[str]
Preexec = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]

#: The longest single sleep (a gate may ask for ``sys.float_info.max``).
_LONGEST_SLEEP = 86400.0

#: Every live resource set in this process (for at-fork reset and worker exit).
_REGISTRY: weakref.WeakSet[_Resources] = weakref.WeakSet()
#: The last process in which a resource set started its bookkeeping: a
#: worker that never used a Jobserver skips the registry at exit.
_BOOKKEEPING_PID = 0


#: How many ready descriptors reclaim takes from epoll at a time: a small
#: batch keeps epoll's event buffer small (the default, 1023 events, is a
#: 12 KiB allocation per call, and a forking parent pays for every page).
_READY_BATCH = 32


class _Resources:
    """Slots plus this process's bookkeeping, shared by sibling handles."""

    def __init__(self, pool: SlotPool, context: ContextSpec) -> None:
        self.pool = pool
        #: The start method as given: a name (``multiprocessing`` is then
        #: imported only if someone asks for ``context``) or a context.
        self._context = context
        self.launcher = launcher_for(context)
        self._scopes = 0
        self._closed = False
        self._reset_tracking()
        _REGISTRY.add(self)

    @property
    def context(self) -> multiprocessing.context.BaseContext:
        """The ``multiprocessing`` context of the start method."""
        context = self._context
        if isinstance(context, str):
            context = self._context = as_mp_context(context)
        return context

    def _reset_tracking(self) -> None:
        global _BOOKKEEPING_PID
        self._pid = _BOOKKEEPING_PID = os.getpid()
        self._lock = threading.RLock()
        self._tracked: dict[Future[Any], None] = {}
        self._ledger: collections.deque[bytes] = collections.deque()
        self._consuming = 0
        self._watcher: Watcher | None = None
        self._watched: dict[Future[Any], int] = {}
        self._lingering: dict[Future[Any], None] = {}
        self._callback_queue: collections.deque[Future[Any]] = collections.deque()
        #: Tracked Futures with a time limit (_timelimit), and only those.
        self._limited: dict[Future[Any], None] = {}

    # --- pickling into children ---------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_resources, (self.pool, self.launcher.method))

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's Futures and their fds."""
        for future in itertools.chain(self._tracked, self._lingering):
            worker = future._worker
            for fd in (
                worker.result_fd,
                getattr(worker, "_exit_fd", None),
                getattr(worker, "_pidfd", None),  # a foreign worker's
            ):
                if fd is not None and fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
        if self._watcher is not None:
            self._watcher.forget_in_child()
        self._reset_tracking()

    # --- scopes and teardown ----------------------------------------------------

    def check_usable(self) -> None:
        if self._closed:
            raise RuntimeError(
                "this Jobserver's resources were released when its last "
                "`with` block exited; create a new Jobserver"
            )
        if self._pid != os.getpid():  # a fork that bypassed at-fork hooks
            self._after_fork_in_child()

    def enter_scope(self) -> None:
        self.check_usable()
        self._scopes += 1

    def exit_scope(self, unwinding: bool) -> None:
        self._scopes -= 1
        if self._scopes > 0:
            return
        first_error: CallbackRaised | None = None
        interrupted: BaseException | None = None
        try:
            first_error = self.drain(collect_errors=True)
        finally:
            # close() runs whole (signals deferred), but a pending handler
            # may raise at its very entry, before it began: then try again,
            # and raise the exception once the set is closed (as _settle).
            while True:
                try:
                    if not self._closed:
                        self.close()
                    break
                except BaseException as exc:
                    if self._closed:
                        raise
                    interrupted = exc
            if interrupted is not None:
                raise interrupted
        if first_error is not None and not unwinding:
            raise first_error

    def drain(self, collect_errors: bool = False) -> CallbackRaised | None:
        """Wait for every tracked Future and run every callback."""
        first_error: CallbackRaised | None = None
        while True:
            with self._lock:
                pending = list(self._tracked)
            for future in pending:
                future._settle(None)
                if future._state == "done" and future in self._tracked:
                    # Never spin on a Future that finished without being
                    # untracked (an interrupted finish): finish it here.
                    self._finished(future)
            while True:
                try:
                    self._run_queued_callbacks()
                    break
                except CallbackRaised as exc:
                    if not collect_errors:
                        raise
                    if first_error is None:
                        first_error = exc
                    else:
                        logger.warning("callback raised during teardown", exc_info=exc)
            with self._lock:
                if not self._tracked:
                    break
        self._reconcile()
        return first_error

    def close(self) -> None:
        """Give back the tokens no Future accounts for, then close the
        watcher, the pool and the launcher.  With signals deferred, so an
        interrupt cannot leave it half done (``_closed`` set, and so never
        retried, with descriptors open for good); each step runs even if an
        earlier one raised."""
        with DeferSignals():
            if self._closed:
                return
            self._closed = True
            try:
                self._reconcile()
            finally:
                watcher, self._watcher = self._watcher, None
                try:
                    if watcher is not None:
                        watcher.close()
                finally:
                    try:
                        self.pool.close()
                    finally:
                        self.launcher.close()

    def __del__(self) -> None:
        try:
            if self._pid != os.getpid():
                return
            if self._tracked:
                warnings.warn(
                    f"Jobserver resources finalized with {len(self._tracked)} "
                    "worker(s) still running; use `with` or wait for the Futures",
                    ResourceWarning,
                    stacklevel=2,
                )
            if not self._closed:
                self._closed = True
                if self._watcher is not None:
                    self._watcher.close()
                self.pool.close()
        except Exception:  # pragma: no cover - interpreter teardown
            pass

    # --- slots ----------------------------------------------------------------

    def _reconcile(self) -> None:
        """Give back ledger tokens no live Future accounts for."""
        with self._lock:
            while len(self._ledger) > self._consuming and not self.pool.closed:
                self.pool.give(self._ledger)

    def _try_take(self, count: int) -> bool:
        """Take ``count`` tokens now, all or none.  Call inside DeferSignals."""
        gather = Gather(self.pool, self._ledger, count)
        if gather.step():
            return True
        gather.release()
        return False

    # --- launching --------------------------------------------------------------

    def launch(
        self,
        work: Work,
        consume: int,
        deadline: float | None,
        limit: tuple[float, float] | None = None,
    ) -> Future[Any]:
        """Take ``consume`` slots (waiting until ``deadline``), launch, track.

        Taking the tokens, launching and tracking happen with signals deferred
        (``_signals``), so no exception can leave a token taken for a worker
        nobody tracks, or a worker nobody will reap.  ``limit`` (time limit,
        grace) is attached in the same step, so that no worker escapes it.
        """
        launcher = self.launcher
        if type(consume) is not int or consume > 1:
            _check_consume(consume, self.pool.size)
        if launcher.needs_prepare:
            launcher.prepare()
        if consume <= 1:
            # One slot (or none) is a plain readiness wait, kept short: every
            # function a forking parent calls costs it a copy-on-write fault.
            pool = self.pool
            ledger = self._ledger
            # A private pool's pipe is surely empty while this process holds
            # every token (no other process can hold one): a submit that may
            # wait, waits first instead of making a read that can only fail
            # (an exception, and more pages copied).  Only once: after the
            # wait the read is made, as the pool's descriptor may have woken
            # it, so even a wrong guess costs a wake-up, never a slot.
            skip_read = (
                consume == 1
                and deadline is None
                and type(pool) is PipePool
                and pool.size is not None
                and len(ledger) >= pool.size
            )
            while True:
                if skip_read:
                    skip_read = False
                    self.wait_events(None, include_pool=True)
                    continue
                with DeferSignals():
                    if consume == 0 or pool.take(ledger):
                        # _start, inline.
                        try:
                            worker = launcher.launch(work)
                        except BaseException:
                            if consume:
                                pool.give(ledger)
                            raise
                        future: Future[Any] = Future(self, worker, consume)
                        with self._lock:
                            if limit is not None:
                                self._attach_limit(future, limit)
                            self._consuming += consume
                            self._tracked[future] = None
                            # What _watch does, for a Future that is new.
                            # (and Watcher.add, inline for epoll).
                            watcher = self._watcher
                            if watcher is None:
                                watcher = self._watcher = Watcher()
                            fd = worker.result_fd
                            if watcher._epoll is not None:
                                watcher._epoll.register(fd, EPOLLIN)
                                watcher._owners[fd] = future
                            else:
                                watcher.add(fd, future)
                            self._watched[future] = fd
                        break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Blocked("no free slot in time")
                self.wait_events(left, include_pool=True)
            if "logging" in sys.modules and logger.isEnabledFor(DEBUG):
                pid = future._worker.pid
                logger.debug("launched worker %d (%s)", pid, launcher.method)
            return future
        # Several slots are gathered all or nothing with a bounded hold and a
        # random back-off (_multislot).
        gather = Gather(self.pool, self._ledger, consume)
        try:
            while True:
                with DeferSignals():
                    if gather.step():
                        gather.taken = 0  # from here on they are the worker's
                        future = self._start(work, consume, limit)
                        break
                    left = remaining(deadline)
                    expired = left is not None and left <= 0
                    if expired:
                        gather.release()  # before leaving the deferral
                if expired:
                    raise Blocked(f"{consume} slots were not free at once in time")
                timeout, watch_pool = gather.wait_plan(left)
                self.wait_events(timeout, include_pool=watch_pool)
        finally:
            if gather.taken:
                with DeferSignals():
                    gather.release()
        if logger.isEnabledFor(DEBUG):
            logger.debug("launched worker %d (%s)", future._worker.pid, launcher.method)
        return future

    def _start(
        self, work: Work, consume: int, limit: tuple[float, float] | None
    ) -> Future[Any]:
        """Launch with ``consume`` tokens taken and track the Future.  Call
        with signals deferred; on failure the tokens go back."""
        try:
            worker = self.launcher.launch(work)
        except BaseException:
            for _ in range(consume):
                self.pool.give(self._ledger)
            raise
        future: Future[Any] = Future(self, worker, consume)
        with self._lock:
            if limit is not None:
                self._attach_limit(future, limit)
            self._consuming += consume
            self._tracked[future] = None
            # What _watch does, for a Future that is new.
            watcher = self._watcher
            if watcher is None:
                watcher = self._watcher = Watcher()
            watcher.add(worker.result_fd, future)
            self._watched[future] = worker.result_fd
        return future

    # --- watching Futures (called with the Future's lock held) ------------------

    def _watch(self, future: Future[Any], fd: int | None) -> None:
        with self._lock:
            if future not in self._tracked:
                return
            if fd is None:
                self._unwatch(future)
                self._lingering[future] = None
                return
            if self._watched.get(future) == fd:
                return
            self._unwatch(future)
            if self._closed:
                # Closed with work running (an interrupted exit): nothing
                # drives the set any more, and a watcher made now would stay
                # open until the set is collected.  The Future waits on its
                # own descriptors.
                return
            if self._watcher is None:
                self._watcher = Watcher()
            self._watcher.add(fd, future)
            self._watched[future] = fd

    def _unwatch(self, future: Future[Any]) -> None:
        with self._lock:
            fd = self._watched.pop(future, None)
            watcher = self._watcher
            if fd is not None and watcher is not None:
                # Watcher.remove, inline for epoll (once per Future).
                epoll = watcher._epoll
                if epoll is None:
                    watcher.remove(fd)
                elif watcher._owners.pop(fd, None) is not None:
                    try:
                        epoll.unregister(fd)
                    except (OSError, KeyError):
                        pass  # already closed: the kernel dropped it

    def _finished(self, future: Future[Any]) -> None:
        """A Future's worker was reaped: slot back, then queue its callbacks."""
        with self._lock:
            if future in self._watched:
                self._unwatch(future)
            self._lingering.pop(future, None)
            self._limited.pop(future, None)
            if self._tracked.pop(future, 0) is None:
                consumes = future._consumes
                self._consuming -= consumes
                pool = self.pool
                for _ in range(consumes):
                    if self._ledger and not pool._closed:
                        pool.give(self._ledger)
            if future._callbacks:  # future._has_pending_callbacks(), inline
                self._callback_queue.append(future)
        if "logging" in sys.modules and logger.isEnabledFor(DEBUG):
            logger.debug("reaped worker %d", future._worker.pid)

    # --- progress ---------------------------------------------------------------

    def reclaim(self) -> None:
        """Advance Futures whose pipes are ready; run queued callbacks."""
        if self._limited:
            self.enforce_limits()
        watcher = self._watcher
        if self._lingering or (watcher is not None and watcher._epoll is None):
            self.advance_ready()
        elif watcher is not None and watcher._owners:
            # advance_ready and Watcher.ready, inline for epoll: this runs
            # once per submission, and every function a forking parent calls
            # costs it a copy-on-write fault.
            epoll = watcher._epoll
            budget = len(watcher._owners)  # never loop on what cannot progress
            while True:
                ready: list[Future[Any]] = []
                with self._lock:
                    owners = watcher._owners
                    events = epoll.poll(0, _READY_BATCH)
                    for fd, _ in events:
                        if fd in owners:
                            ready.append(owners[fd])
                for future in ready:
                    with future._lock:
                        future._advance()
                budget -= len(events)
                if len(events) < _READY_BATCH or budget <= 0:
                    break
        if self._callback_queue:
            self._run_queued_callbacks()

    # --- time limits (_timelimit; call without any Future's lock held) ----------

    def _attach_limit(self, future: Future[Any], limit: tuple[float, float]) -> None:
        """Give a Future that is being launched its time limit (inside
        ``launch``'s deferred step, with ``self._lock`` held, before any
        other thread can see the Future)."""
        from ._timelimit import Deadline

        future._limit = Deadline(*limit)
        self._limited[future] = None

    def limit_wake(self) -> float | None:
        """Seconds until some tracked worker's time-limit signal is due."""
        if not self._limited:
            return None
        with self._lock:
            times = [f._next_enforcement() for f in self._limited]
        due = [t for t in times if t is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def enforce_limits(self) -> None:
        """Signal the workers whose time limit (or grace) has run out."""
        now = time.monotonic()
        with self._lock:
            due = [
                f
                for f in self._limited
                if (t := f._next_enforcement()) is not None and t <= now
            ]
        for future in due:
            future._check_time_limit()

    def advance_ready(self) -> None:
        """Advance Futures whose pipes are ready, without running callbacks."""
        ready: list[Future[Any]] = []
        with self._lock:
            if self._watcher is not None:
                ready.extend(self._watcher.ready())
            ready.extend(self._lingering)
        for future in ready:
            with future._lock:
                future._advance()

    def watched_fds(self) -> list[int]:
        """Descriptors readable when some tracked Future may progress."""
        watcher = self._watcher
        if watcher is None or self._pid != os.getpid():
            return []
        with self._lock:
            return watcher.wait_fds()

    def _run_queued_callbacks(self) -> None:
        while True:
            with self._lock:
                future = self._next_queued()
                if future is None:
                    return
            future._run_callbacks()

    def _next_queued(self) -> Future[Any] | None:
        """The first queued Future with callbacks to run (call with the lock).

        Futures with none left leave the queue here.  A Future whose callback
        is running (a callback that re-entered reclaim, or another thread) is
        skipped but stays queued: should a later callback of it raise, the
        rest still run from the next call that runs callbacks.
        """
        queue = self._callback_queue
        index = 0
        while index < len(queue):
            future = queue[index]
            if future._draining:
                index += 1
            elif future._has_pending_callbacks():
                return future
            else:
                del queue[index]
        return None

    def wait_events(
        self,
        timeout: float | None,
        include_pool: bool,
        extra_fds: Iterable[int] = (),
    ) -> None:
        """Block until a slot may be free (``include_pool``), a tracked Future
        may progress, an ``extra_fds`` is readable, or ``timeout`` passes; then
        reclaim."""
        fds: list[int] = list(extra_fds)
        if include_pool:
            fds.append(self.pool.read_fd)
        with self._lock:
            watcher = self._watcher
            if watcher is not None and watcher._owners:
                epoll = watcher._epoll  # Watcher.wait_fds, inline
                fds.extend(watcher._owners if epoll is None else (epoll.fileno(),))
            if self._lingering:
                timeout = 0.002 if timeout is None else min(timeout, 0.002)
        wake = self.limit_wake() if self._limited else None
        if wake is not None:
            timeout = wake if timeout is None else min(timeout, wake)
        if fds and timeout is None:
            # poll_readable, inline for the commonest wait.
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            poller.poll()
        elif fds:
            poll_readable(fds, timeout)
        elif timeout:
            time.sleep(min(timeout, _LONGEST_SLEEP))  # callers loop
        self.reclaim()

    @property
    def tracked_count(self) -> int:
        return len(self._tracked)


def _rebuild_resources(pool: SlotPool, method: str) -> _Resources:
    return _Resources(pool, method)


def _drain_nested_work() -> None:  # pragma: no cover - runs in workers
    if os.getpid() != _BOOKKEEPING_PID:
        return  # no resource set has bookkeeping in this process
    for resources in list(_REGISTRY):
        if resources._pid == os.getpid() and resources._tracked:
            try:
                resources.drain(collect_errors=True)
            except BaseException:
                logger.exception("waiting for nested work at worker exit failed")


# A forked child resets a resource set lazily, on first use (``check_usable``
# compares pids), rather than in an at-fork hook: a worker that never touches
# the Jobserver pays nothing for it.
_launch.drain_nested_work = _drain_nested_work


# --- argument checking ---------------------------------------------------------


def _check_callable(fn: Any, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, not {type(fn).__name__}")


def _as_args(args: Any, name: str) -> tuple[Any, ...]:
    if isinstance(args, tuple):
        return args
    if isinstance(args, (str, bytes, bytearray, Mapping)) or not isinstance(
        args, Iterable
    ):
        raise TypeError(
            f"{name} must be an iterable of positional arguments "
            f"(a tuple or list), not {type(args).__name__}"
        )
    return tuple(args)


def _as_kwargs(kwargs: Any, name: str) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"{name} must be a mapping, not {type(kwargs).__name__}")
    result = dict(kwargs)
    for key in result:
        if not isinstance(key, str):
            raise TypeError(f"{name} keys must be str, not {type(key).__name__}")
    return result


def _check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    return int(value)


def _check_consume(consume: Any, size: int | None = None) -> int:
    """``consume``: an int from 0 to the pool's size (when it is known)."""
    if isinstance(consume, bool) or not isinstance(consume, int):
        raise TypeError(f"consume must be an int >= 0, not {type(consume).__name__}")
    if consume < 0:
        raise ValueError(f"consume must be >= 0, not {consume}")
    if size is not None and consume > size:
        raise ValueError(
            f"consume={consume} is more than the {size} slots of this pool"
        )
    return int(consume)


def _check_env_pair(key: Any, value: Any) -> None:
    if not isinstance(key, str):
        raise TypeError(f"environment keys must be str, not {type(key).__name__}")
    if not key:
        raise ValueError("environment keys must not be empty")
    if "=" in key:
        raise ValueError(f"environment key {key!r} must not contain '='")
    if "\0" in key:
        raise ValueError(f"environment key {key!r} must not contain NUL")
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(
            f"environment value for {key!r} must be str or None, "
            f"not {type(value).__name__}"
        )
    if "\0" in value:
        raise ValueError(f"environment value for {key!r} must not contain NUL")


def _resolve_context(context: ContextArg) -> ContextSpec:
    """A start method's name, or the caller's (concrete) context object.

    ``fork``, by name or as the default, is resolved without importing
    ``multiprocessing``: a forking process that never imported it does not
    carry it into every fork.
    """
    if context is None:
        if (
            "multiprocessing" not in sys.modules
            and sys.version_info < (3, 14)
            and sys.platform not in ("darwin", "win32")
        ):
            # multiprocessing's default here, and nobody can have changed it
            # (set_start_method) without importing multiprocessing.
            return "fork"
        import multiprocessing

        # allow_none: asking must not fix the program's default start method.
        method = multiprocessing.get_start_method(allow_none=True)
        return method or multiprocessing.get_all_start_methods()[0]
    if isinstance(context, str):
        if context == "fork" and hasattr(os, "fork"):
            return context
        import multiprocessing

        methods = multiprocessing.get_all_start_methods()
        if context not in methods:
            raise ValueError(
                f"context must be one of {methods} or a multiprocessing "
                f"context, not {context!r}"
            )
        return context
    if "multiprocessing.context" in sys.modules:  # else it cannot be a context
        import multiprocessing.context

        if isinstance(context, multiprocessing.context.DefaultContext):
            return _resolve_context(None)
        if isinstance(context, multiprocessing.context.BaseContext):
            return context
    raise TypeError(
        "context must be None, a start method name or a multiprocessing "
        f"context, not {type(context).__name__}"
    )


def _usable_cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:  # pragma: no cover
            pass
    return max(1, os.cpu_count() or 1)


def _default_pool() -> SlotPool:
    from ._makeflags import pool_from_environment

    pool = pool_from_environment()
    if pool is not None:
        return pool
    return PipePool(_usable_cpu_count())


# --- map helpers (module level: they must pickle under spawn) ------------------


class _PartialChunk:
    """A chunk that stopped at a raising call: results so far plus the error."""

    __slots__ = ("error", "note", "values")

    def __init__(self, values: list[Any], error: BaseException, note: str) -> None:
        self.values = values
        self.error = error
        self.note = note

    def __reduce__(self) -> tuple[Any, ...]:
        return (_PartialChunk, (self.values, self.error, self.note))


def _run_chunk(
    fn: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> Any:
    import traceback

    values: list[Any] = []
    for args, kwargs in calls:
        try:
            values.append(fn(*args, **kwargs))
        except Exception as exc:
            note = "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__)
            )
            return _PartialChunk(values, exc, note)
    return values


_Chunk = list[tuple[tuple[Any, ...], dict[str, Any]]]


class _MapIterator:
    """``Jobserver.map``'s iterator: results in input order.

    Not a generator, so that it survives ``CallbackRaised``: a refill submits,
    submitting reclaims finished work, and another Future's raising callback
    surfaces from ``__next__`` as it would from ``submit``; the next call
    goes on where this one stopped, so no launched result is lost and no
    input is skipped.  The same holds for a ``BaseException`` a callback
    raised (not wrapped, but marked by ``_future``).  Any other exception
    (the task's, ``Blocked``, bad input, an interrupt) ends the iteration,
    as it ends a generator.
    """

    __slots__ = (
        "_chunk",
        "_chunks",
        "_chunksize",
        "_current",
        "_deadline",
        "_deferred",
        "_ended",
        "_fn",
        "_handle",
        "_limit",
        "_outstanding",
        "_values",
    )

    def __init__(
        self,
        handle: Jobserver,
        fn: Callable[..., Any],
        chunks: Iterator[_Chunk],
        chunksize: int,
        limit: int | None,
        deadline: float | None,
    ) -> None:
        self._handle = handle
        self._fn = fn
        #: Inputs not consumed yet (``None`` once exhausted), and one taken
        #: from them whose submission has not succeeded yet.
        self._chunks: Iterator[_Chunk] | None = chunks
        self._chunk: _Chunk | None = None
        self._chunksize = chunksize
        self._limit = limit
        self._deadline = deadline
        self._outstanding: collections.deque[tuple[Future[Any], bool]] = (
            collections.deque()
        )
        #: The submission whose result is collected next, once taken off
        #: ``_outstanding``.
        self._current: tuple[Future[Any], bool] | None = None
        #: Results ready to yield (the rest of a chunk), then a chunk's error.
        self._values: collections.deque[Any] = collections.deque()
        self._deferred: BaseException | None = None
        self._ended = False

    def __iter__(self) -> _MapIterator:
        return self

    def __next__(self) -> Any:
        while True:
            if self._values:
                return self._values.popleft()
            deferred, self._deferred = self._deferred, None
            if deferred is not None:
                raise deferred
            if self._ended:
                raise StopIteration
            try:
                self._step()
            except BaseException as exc:
                # A callback's exception (CallbackRaised, or a BaseException
                # it raised unwrapped) is another Future's business: the
                # next call goes on.  Anything else ends the iteration.
                if not from_callback(exc):
                    self._ended = True
                raise

    def _fill(self) -> None:
        """Submit inputs until ``_limit`` are outstanding or none are left."""
        handle, fn, limit = self._handle, self._fn, self._limit
        while self._chunks is not None and (
            limit is None or len(self._outstanding) < limit
        ):
            chunk = self._chunk
            if chunk is None:
                chunk = next(self._chunks, None)
                if chunk is None:
                    self._chunks = None
                    return
                self._chunk = chunk
            if self._chunksize == 1:
                args, kwargs = chunk[0]
                future = handle._submit(fn, args, kwargs, 1, self._deadline)
            else:
                future = handle._submit(_run_chunk, (fn, chunk), {}, 1, self._deadline)
            self._chunk = None
            self._outstanding.append((future, self._chunksize != 1))

    def _step(self) -> None:
        """Collect the next submission's result(s) into ``_values``."""
        from ._exceptions import WorkerTraceback

        if self._current is None:
            if not self._outstanding:
                self._fill()  # inputs an interrupted refill did not submit
                if not self._outstanding:
                    self._ended = True
                    return
            self._current = self._outstanding.popleft()
        self._fill()
        future, chunked = self._current
        value = future.result(remaining(self._deadline))
        self._current = None
        if not chunked:
            self._values.append(value)
        elif isinstance(value, _PartialChunk):
            self._values.extend(value.values)
            error = value.error
            error.__cause__ = WorkerTraceback(value.note)
            self._deferred = error
            self._ended = True
        else:
            self._values.extend(value)


# --- the handle -----------------------------------------------------------------


class Jobserver:
    """Runs each submission in a fresh child process, at most ``slots`` at once.

    ``context``: ``None`` (the platform's default start method), a start
    method name (``"fork"``, ``"forkserver"``, ``"spawn"``) or a
    ``multiprocessing`` context.  ``slots``: a positive int; ``None`` joins the
    GNU Make jobserver advertised in ``MAKEFLAGS`` if there is one, else uses
    the number of CPUs this process may run on.

    A handle is thin: sibling handles from ``revise_env``, ``replace_preexec``,
    ``replace_sleep`` and ``copy.copy`` share the same slots and bookkeeping.
    Passing a handle to submitted work gives the worker a handle on the same
    slots under every start method, so nested work shares the limit.
    Not thread-safe for concurrent ``submit`` on one set of slots; Futures are.
    """

    __slots__ = ("_env", "_preexec", "_resources", "_sleep", "_time_limit")

    def __init__(self, context: ContextArg = None, slots: int | None = None) -> None:
        method = _resolve_context(context)
        if slots is None:
            pool = _default_pool()
        else:
            pool = PipePool(_check_positive_int(slots, "slots"))
        self._resources = _Resources(pool, method)
        self._env: dict[str, EnvValue] = {}
        self._preexec: Preexec | None = None
        self._sleep: Callable[[], float | None] | None = None
        self._time_limit: tuple[float, float] | None = None

    # --- siblings --------------------------------------------------------------

    def _sibling(self) -> Jobserver:
        other = object.__new__(Jobserver)
        other._resources = self._resources
        other._env = dict(self._env)
        other._preexec = self._preexec
        other._sleep = self._sleep
        other._time_limit = self._time_limit
        return other

    def revise_env(self, additions: Any, /) -> Jobserver:
        """A sibling whose workers apply ``additions`` to ``os.environ``.

        ``additions`` is a mapping or an iterable of ``(key, value)`` pairs; a
        ``None`` value unsets the key.  Merges onto earlier revisions.
        """
        if isinstance(additions, Mapping):
            pairs = list(additions.items())
        elif isinstance(additions, (str, bytes)) or not isinstance(additions, Iterable):
            raise TypeError(
                "additions must be a mapping or an iterable of (key, value) "
                f"pairs, not {type(additions).__name__}"
            )
        else:
            pairs = []
            for item in additions:
                if not isinstance(item, (tuple, list)) or len(item) != 2:
                    raise TypeError(
                        f"additions must hold (key, value) pairs, not {item!r}"
                    )
                pairs.append((item[0], item[1]))
        for key, value in pairs:
            _check_env_pair(key, value)
        other = self._sibling()
        other._env.update(pairs)
        return other

    def replace_preexec(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Jobserver:
        """A sibling whose workers call ``fn(*args, **kwargs)`` before the task.

        A non-``None`` return value is used as a context manager around the
        task.  An exception from ``fn`` fails the task like one from the task.
        """
        _check_callable(fn, "fn")
        other = self._sibling()
        other._preexec = (fn, args, dict(kwargs))
        return other

    def replace_sleep(self, fn: Callable[[], float | None], /) -> Jobserver:
        """A sibling whose launches are gated by ``fn``.

        Before each launch ``fn()`` is called: ``None`` means launch now, a
        number means sleep that many seconds and ask again (finished work is
        reaped meanwhile).  Any other return value is a ``ValueError``.  The
        gating counts against ``submit``'s timeout (``Blocked`` when it runs
        out).  The gate is consulted before a slot is taken, so a refusing gate
        holds no slot.
        """
        _check_callable(fn, "fn")
        other = self._sibling()
        other._sleep = fn
        return other

    def replace_time_limit(
        self, seconds: float | None, /, *, grace: float = 1.0
    ) -> Jobserver:
        """A sibling whose submissions may run at most ``seconds`` each.

        Past the limit the task is interrupted by a timer in the worker (its
        ``finally`` blocks run) and, should the worker still be running
        ``grace`` seconds later, the parent sends it ``SIGTERM`` and, after
        another ``grace`` seconds, ``SIGKILL``.  The Future then raises
        ``TimeLimitExceeded`` (a ``TimeoutError``).  ``None`` removes the
        limit.  Handles passed to workers keep it, so nested work is limited
        too.  See docs/time-limits.md.
        """
        from ._timelimit import check_limit

        other = self._sibling()
        if seconds is None:
            other._time_limit = None
            return other
        limit = check_limit(seconds, "seconds")
        grace = check_limit(grace, "grace")
        if limit <= 0:
            raise ValueError(f"seconds must be > 0, not {seconds!r}")
        if grace < 0:
            raise ValueError(f"grace must be >= 0, not {grace!r}")
        other._time_limit = (limit, grace)
        return other

    def __copy__(self) -> Jobserver:
        return self._sibling()

    def __deepcopy__(self, memo: Any) -> Jobserver:
        return self._sibling()

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_jobserver,
            (self._resources, self._env, self._preexec, self._sleep, self._time_limit),
        )

    # --- properties -----------------------------------------------------------

    @property
    def context(self) -> multiprocessing.context.BaseContext:
        """The ``multiprocessing`` context whose start method launches workers
        (made, and ``multiprocessing`` imported, on first use)."""
        return self._resources.context

    def __repr__(self) -> str:
        resources = self._resources
        pool = resources.pool
        slots = pool.size if pool.size is not None else pool.kind
        state = " closed" if resources._closed else ""
        return (
            f"<Jobserver context={resources.launcher.method!r} slots={slots} "
            f"tracked={resources.tracked_count}{state}>"
        )

    # --- scopes ----------------------------------------------------------------

    def __enter__(self) -> Jobserver:
        self._resources.enter_scope()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._resources.exit_scope(unwinding=exc_type is not None)

    # --- submission ------------------------------------------------------------

    def submit(
        self,
        fn: Callable[..., T],
        *,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        consume: int = 1,
        timeout: float | None = None,
    ) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` in a fresh child process.

        Takes ``consume`` slots (0 or 1; 0 lets nested fan-out progress where
        waiting for a slot would deadlock), waiting up to ``timeout`` seconds
        (``None``: forever, ``0``: poll) and raising ``Blocked`` if none is
        free in time.  Finished work is reclaimed first, so this may raise
        ``CallbackRaised`` from an earlier Future's callback; calling again
        proceeds.  Bad arguments are a ``TypeError``/``ValueError`` before any
        slot is taken; work that cannot be pickled for the start method is a
        ``TypeError`` and the slot is given back.
        """
        # The checks of _check_callable, _as_args, _as_kwargs, _check_consume
        # and check_timeout, with the common cases inline: every function a
        # forking parent calls costs it a copy-on-write page fault.
        target: Any = fn  # (typed Any: mypy would call the check unreachable)
        if not callable(target):
            _check_callable(target, "fn")
        call_args = args if type(args) is tuple else _as_args(args, "args")
        call_kwargs = {} if kwargs is None else _as_kwargs(kwargs, "kwargs")
        if type(consume) is not int or consume < 0:
            consume = _check_consume(consume)
        deadline = None if timeout is None else deadline_of(check_timeout(timeout))
        # _submit, inline for the common case (no gate, no time limit).
        resources = self._resources
        if resources._closed or resources._pid != os.getpid():
            resources.check_usable()
        resources.reclaim()
        if self._sleep is not None or self._time_limit is not None:
            return self._submit_prepared(fn, call_args, call_kwargs, consume, deadline)
        env = self._env
        work = Work(
            fn, call_args, call_kwargs, tuple(env.items()) if env else (), self._preexec
        )
        return resources.launch(work, consume, deadline)

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        consume: int,
        deadline: float | None,
    ) -> Future[Any]:
        resources = self._resources
        if resources._closed or resources._pid != os.getpid():
            resources.check_usable()
        resources.reclaim()
        return self._submit_prepared(fn, args, kwargs, consume, deadline)

    def _submit_prepared(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        consume: int,
        deadline: float | None,
    ) -> Future[Any]:
        """``_submit`` after the resource set was checked and reclaimed."""
        resources = self._resources
        if self._sleep is not None:
            self._await_gate(deadline)
        if self._time_limit is None:
            env = self._env
            work = Work(
                fn, args, kwargs, tuple(env.items()) if env else (), self._preexec
            )
        else:
            work = self._work(fn, args, kwargs)
        return resources.launch(work, consume, deadline, self._time_limit)

    def _work(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Work:
        preexec = self._preexec
        if self._time_limit is not None:
            from ._timelimit import time_limit_preexec

            preexec = (time_limit_preexec, (self._time_limit[0], preexec), {})
        return Work(fn, args, kwargs, tuple(self._env.items()), preexec)

    def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Shorthand for ``submit(fn, args=args, kwargs=kwargs)``."""
        return self.submit(fn, args=args, kwargs=kwargs)

    def _await_gate(self, deadline: float | None) -> None:
        gate = self._sleep
        if gate is None:
            return
        while True:
            delay = check_gate_delay(gate())
            if delay is None:
                return
            left = remaining(deadline)
            if left is not None and delay >= left:
                raise Blocked("the launch gate kept refusing until the timeout")
            self._resources.wait_events(delay, include_pool=False)

    def reclaim_resources(self) -> None:
        """Reap finished work, give its slots back and run pending callbacks.

        Costs time in proportion to the work that finished, not to the work
        outstanding.  May raise ``CallbackRaised``; call again to continue.
        """
        resources = self._resources
        if resources._closed:
            return
        resources.check_usable()
        resources.reclaim()

    def _wait_for_progress(
        self, timeout: float | None = None, extra_fds: Iterable[int] = ()
    ) -> None:
        """Block until a slot may have come free, tracked work may have
        finished, one of ``extra_fds`` is readable, or ``timeout`` passes; then
        reclaim (which may raise ``CallbackRaised``).

        For drivers built on the core (the executor's dispatcher thread); a
        wake-up may be spurious, so re-check whatever you waited for.
        """
        resources = self._resources
        resources.check_usable()
        resources.wait_events(
            check_timeout(timeout), include_pool=True, extra_fds=extra_fds
        )

    # --- map ----------------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., T],
        argses: Iterable[Iterable[Any]] | None = None,
        kwargses: Iterable[Mapping[str, Any]] | None = None,
        *,
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Run ``fn`` once per input and yield the results in input order.

        ``argses`` is an iterable of positional-argument iterables and
        ``kwargses`` an iterable of keyword mappings; given both, they pair up
        and must have the same length (``ValueError``).  ``chunksize`` calls
        go to each worker.  Without ``buffersize`` every call is submitted
        before this returns; with it, at most ``buffersize`` submissions are
        outstanding and inputs are consumed lazily.  ``timeout`` counts from
        this call: a later result raises ``Blocked`` from the iterator.
        Stopping early does not cancel work already submitted.  Submitting
        reclaims finished work, as ``submit`` does, so this call and the
        iterator may raise ``CallbackRaised`` from another Future's callback;
        calling (or iterating) again goes on, losing no result and skipping
        no input.  Any other exception ends the iteration.
        """
        _check_callable(fn, "fn")
        deadline = deadline_of(check_timeout(timeout))
        chunksize = _check_positive_int(chunksize, "chunksize")
        if buffersize is not None:
            buffersize = _check_positive_int(buffersize, "buffersize")
        if argses is None and kwargses is None:
            raise TypeError("map() needs argses, kwargses or both")
        for value, name in ((argses, "argses"), (kwargses, "kwargses")):
            if value is None:
                continue
            if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(
                value, Iterable
            ):
                hint = (
                    " (pass a list of mappings)" if isinstance(value, Mapping) else ""
                )
                raise TypeError(
                    f"{name} must be an iterable of "
                    f"{'argument iterables' if name == 'argses' else 'mappings'}"
                    f", not {type(value).__name__}{hint}"
                )
        if argses is not None and kwargses is not None:
            try:
                a_len, k_len = len(argses), len(kwargses)  # type: ignore[arg-type]
            except TypeError:
                pass
            else:
                if a_len != k_len:
                    raise ValueError(
                        f"argses and kwargses differ in length ({a_len} != {k_len})"
                    )
        # Finished work's callbacks run (and may raise) before any input is
        # consumed or anything launched, as in submit.
        resources = self._resources
        resources.check_usable()
        resources.reclaim()
        chunks = _chunks(_calls(argses, kwargses), chunksize)
        results = _MapIterator(self, fn, chunks, chunksize, buffersize, deadline)
        try:
            results._fill()
        except CallbackRaised as exc:
            # Another Future finished meanwhile and its callback raised: what
            # was launched must not be lost with the iterator, so the error
            # surfaces from the first next() instead (which then goes on).
            results._deferred = exc
        return results

    # --- GNU Make protocol ---------------------------------------------------------
    # The work is in _advertise, _makeflags and _slots; see docs/make-protocol.md.

    @classmethod
    def with_fifo(
        cls, context: ContextArg = None, slots: int | None = None
    ) -> Jobserver:
        """Like ``Jobserver(context, slots)``, but a pool of its own is a FIFO
        (in a private directory, removed on close), so that it can also be
        advertised in the FIFO form (``--jobserver-auth=fifo:PATH``)."""
        return _advertise.fifo_jobserver(context, slots)

    def advertise(
        self,
        form: str = "fds",
        *,
        consume: int = 1,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> _advertise.MakeAdvertisement:
        """Advertise these slots to a child program (``make``, ``ninja``, ...).

        Returns a ``MakeAdvertisement`` (a context manager) whose ``env`` (a
        copy of ``env`` or ``os.environ`` with ``MAKEFLAGS`` naming the pool)
        and ``pass_fds`` go to ``subprocess``.  ``form``: ``"fds"`` (GNU Make
        >= 4.2: inherited descriptors) or ``"fifo"`` (Make >= 4.4: a path;
        needs ``with_fifo``).  The program owns one implicit slot, as a job
        Make starts does: ``consume=1`` takes it from the pool (waiting up
        to ``timeout``, then ``Blocked``) and holds it until the
        advertisement is closed; ``consume=0`` when this process already
        holds a slot it lends to the program (a worker running ``make``).
        """
        return _advertise.advertise(self, form, consume, timeout, env)

    def advertise_to_workers(self, form: str = "fds") -> Jobserver:
        """A sibling whose workers see these slots in ``MAKEFLAGS``.

        A program such a worker starts (``make``, ``ninja``, a Python script
        using ``Jobserver()``) joins the pool and uses the worker's own slot
        as its implicit one.  The fd form's descriptors are inheritable in
        the worker (``os.system``, ``subprocess`` with ``close_fds=False``
        or ``pass_fds``); the FIFO form needs none.  Wraps the current
        preexec; a later ``replace_preexec`` replaces both.
        """
        return _advertise.advertise_to_workers(self, form)

    # --- holding slots and running commands ---
    # The work is in _hold, _run and _multislot; see docs/machine-wide.md.

    def hold(self, count: int = 1, *, timeout: float | None = None) -> SlotHold:
        """Hold ``count`` slots in this process while a ``with`` block runs.

        For work the library does not launch (a compiler started with
        ``subprocess``, a thread pool, a native library)::

            with js.hold(2):
                heavy_native_call()

        Entering takes the slots all or nothing (see ``submit``'s
        ``consume``), waiting up to ``timeout`` (``None``: forever, ``0``:
        poll) and raising ``Blocked`` if they are not free in time; leaving
        gives exactly those tokens back, also on an exception or
        ``KeyboardInterrupt``.  ``count`` may be 0 to the pool's size.  While
        waiting, finished work is reaped (so, like ``submit``, entering may
        raise ``CallbackRaised``).  ``acquire()``/``release()`` do the same
        without ``with``.
        """
        resources = self._resources
        resources.check_usable()
        count = _check_consume(count, resources.pool.size)
        return SlotHold(resources, count, check_timeout(timeout))

    def run(
        self,
        args: Any,
        *,
        consume: int = 1,
        form: str = "fds",
        slot_timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        input: Any = None,
        capture_output: bool = False,
        timeout: float | None = None,
        check: bool = False,
        pass_fds: Iterable[int] = (),
        **popen_kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run(args, ...)`` on ``consume`` slots of this pool.

        The pool is advertised to the command in ``MAKEFLAGS`` in ``form``
        (``"fds"``: GNU Make >= 4.2, cargo, this library; ``"fifo"``: GNU Make
        >= 4.4, ninja >= 1.13, this library; needs ``with_fifo``), so a
        ``make``, ``ninja`` or Python program it starts joins the limit, with
        one of the held slots as its implicit one.  Only the advertised
        descriptors are inherited.  ``slot_timeout`` bounds the wait for the
        slots (then ``Blocked``); ``timeout``, ``input``, ``capture_output``,
        ``check`` and the other keywords are ``subprocess.run``'s.  The slots
        go back after the command was reaped; on any exception (a timeout,
        ``KeyboardInterrupt``) it is killed and reaped first.  From inside a
        worker, ``consume=0`` lends the worker's own slot to the command.
        """
        from ._run import run_command

        consume = _check_consume(consume, self._resources.pool.size)
        return run_command(
            self,
            args,
            consume=consume,
            form=form,
            slot_timeout=slot_timeout,
            env=env,
            input=input,
            capture_output=capture_output,
            timeout=timeout,
            check=check,
            pass_fds=tuple(pass_fds),
            popen_kwargs=popen_kwargs,
        )

    @classmethod
    def join(
        cls,
        makeflags: str | None = None,
        *,
        context: ContextArg = None,
        implicit: bool = True,
    ) -> Jobserver | None:
        """A Jobserver on the jobserver that ``makeflags`` names; ``None`` if
        it names none.

        ``makeflags`` defaults to this process's ``MAKEFLAGS``; a broken
        jobserver word gives ``None`` and a ``RuntimeWarning``, as for
        ``Jobserver()``.  ``implicit=False`` for a process that was started
        by a program that took no slot for it (a test runner's worker): it
        then owns no implicit slot and takes every slot from the pool.
        """
        from ._makeflags import pool_from_environment

        method = _resolve_context(context)
        environ = None if makeflags is None else {"MAKEFLAGS": makeflags}
        pool = pool_from_environment(environ, stacklevel=3, implicit=bool(implicit))
        if pool is None:
            return None
        return _rebuild_jobserver(_Resources(pool, method), {}, None, None)

    def pool_path(self) -> str | None:
        """A path another process of this user can open to join these slots
        (``--jobserver-auth=fifo:PATH``): the FIFO's path for a FIFO pool;
        elsewhere on Linux ``/proc/PID/fd/N`` of this process's descriptor,
        valid while this Jobserver's resources are open.  ``None`` where
        there is no such path.
        """
        pool = self._resources.pool
        if pool.closed:
            return None
        if pool.fifo_path is not None:
            return pool.fifo_path
        path = f"/proc/{os.getpid()}/fd/{pool.read_fd}"
        return path if os.path.exists(path) else None

    def lend_implicit_slot(self) -> LentSlot:
        """Lend this process's implicit slot to the pool while a ``with``
        block runs.

        For a process that Make (or another jobserver) started as a job but
        that runs no work on that job's slot itself, because it starts
        helpers that take their own slots (pytest-xdist's controller): one
        token is written into the pool on entry and one taken back on exit
        (waiting for it if need be).  A no-op (``lent`` is ``False``) unless
        this process owns a free implicit slot of this pool.
        """
        self._resources.check_usable()
        return LentSlot(self._resources)


def _rebuild_jobserver(
    resources: _Resources,
    env: dict[str, EnvValue],
    preexec: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None,
    sleep: Callable[[], float | None] | None,
    time_limit: tuple[float, float] | None = None,
) -> Jobserver:
    handle = object.__new__(Jobserver)
    handle._resources = resources
    handle._env = env
    handle._preexec = preexec
    handle._sleep = sleep
    handle._time_limit = time_limit
    return handle


def _calls(
    argses: Iterable[Iterable[Any]] | None,
    kwargses: Iterable[Mapping[str, Any]] | None,
) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    if kwargses is None:
        assert argses is not None
        for args in argses:
            yield _as_args(args, "each element of argses"), {}
        return
    if argses is None:
        for kwargs in kwargses:
            yield (), _as_kwargs(kwargs, "each element of kwargses")
        return
    sentinel: Any = object()
    for args, kwargs in itertools.zip_longest(argses, kwargses, fillvalue=sentinel):
        if args is sentinel or kwargs is sentinel:
            raise ValueError("argses and kwargses differ in length")
        yield (
            _as_args(args, "each element of argses"),
            _as_kwargs(kwargs, "each element of kwargses"),
        )


def _chunks(
    calls: Iterator[tuple[tuple[Any, ...], dict[str, Any]]], size: int
) -> Iterator[list[tuple[tuple[Any, ...], dict[str, Any]]]]:
    while True:
        chunk = list(itertools.islice(calls, size))
        if not chunk:
            return
        yield chunk

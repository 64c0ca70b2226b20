"""JobserverExecutor: ProcessPoolExecutor's interface on top of jobserver-core.

Each task runs in a fresh worker process launched by the core (with
``reuse_workers=True``, in a long-lived worker instead: see ``_reuse``); the
executor adds the one thing the core deliberately lacks, a background
thread, so that ``concurrent.futures.Future`` objects complete on their
own::

    submit(fn, *args)                               any user thread
      |  cf.Future + _WorkItem queued in _pending (FIFO, O(1) removal)
      |  one byte down the wake-up pipe (at most one in flight)
      v
    _Dispatcher thread                              one per executor
      |  drain the wake-up pipe
      |  deliver: finished core Futures -> cf.Future.set_result/_exception
      |  launch:  oldest pending first, Jobserver.submit(..., timeout=0),
      |           until Blocked (no free slot, or the launch gate refused)
      |  sleep:   Jobserver._wait_for_progress(extra_fds=(wake-up pipe,))
      v           -> a slot may be free / own work finished / woken
    core Future.when_done -> _finished queue -> delivered on the next turn

Load-bearing rules:

* Only the dispatcher thread calls into the core for this executor's
  resource set (the core is not thread-safe for concurrent ``submit`` on one
  set).  A caller-supplied ``Jobserver`` is not used directly: the executor
  keeps its own bookkeeping on the same slots (see ``_private_handle``), just
  as a child process would, so the caller's thread may keep using its handle.
* A pending future is launched while its ``_launch_lock`` is held (never a
  lock of the standard library: see ``_ExecutorFuture``), so ``cancel()``
  either wins before the launch (nothing runs) or returns ``False`` after
  it; ``set_running_or_notify_cancel`` is called exactly once per future by
  whichever party removed the item from ``_pending``.
* Wake-ups: a user thread writes to the pipe only while no wake-up is in
  flight (``_woken``), and raises the flag only after writing; the
  dispatcher empties the pipe *before* lowering the flag, then re-checks
  its queues, so no wake-up is ever lost.
* Core callbacks only queue the finished item; results reach the
  ``cf.Future`` (and user callbacks run) at the top of the dispatcher's loop,
  outside every lock.
* Anything unexpected in the dispatcher fails every outstanding future with
  ``BrokenJobserverExecutor`` (never a hang), kills and reaps the running
  workers, and releases the executor's descriptors.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import copy
import itertools
import logging
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union, cast

from jobserver import Blocked, CallbackRaised, Jobserver, LostResult, WorkerTraceback

from ._errors import BrokenJobserverExecutor, InitializerFailed, WorkerLost

if TYPE_CHECKING:
    from ._reuse import _ReuseDispatcher

__all__ = ["JobserverExecutor"]

logger = logging.getLogger("jobserver.executor")

T = TypeVar("T")
Context = Union[str, multiprocessing.context.BaseContext]
_Future = concurrent.futures.Future

#: Seconds between launch attempts while a ``replace_sleep`` gate refuses
#: (the core does not tell how long it asked to wait): doubles up to the max.
_GATE_RETRY_MIN = 0.005
_GATE_RETRY_MAX = 0.1

#: CPython 3.12+ warns (DeprecationWarning) when a multi-threaded process forks.
_FORK_WARNS_WITH_THREADS: bool = sys.version_info >= (3, 12)

#: Dispatchers alive in this process, woken and joined at interpreter exit.
_DISPATCHERS: weakref.WeakSet[_Dispatcher | _ReuseDispatcher] = weakref.WeakSet()
_interpreter_exiting = False


def _python_exit() -> None:
    """At interpreter exit: let every dispatcher finish its work, then join it."""
    global _interpreter_exiting
    _interpreter_exiting = True
    dispatchers = [d for d in list(_DISPATCHERS) if d.pid == os.getpid()]
    for dispatcher in dispatchers:
        dispatcher.wake()
    for dispatcher in dispatchers:
        dispatcher.join()


_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    # Runs before the interpreter joins non-daemon threads (what the standard
    # library's executors use), so our daemon threads finish their work first.
    _register_atexit(_python_exit)
else:  # pragma: no cover - CPython 3.9+ always has it
    import atexit

    atexit.register(_python_exit)


# --- tracebacks -----------------------------------------------------------------

_StdlibRemoteTraceback: Optional[type] = getattr(  # noqa: UP045 - runtime alias
    concurrent.futures.process, "_RemoteTraceback", None
)

if _StdlibRemoteTraceback is not None:

    class _RemoteTraceback(WorkerTraceback, _StdlibRemoteTraceback):  # type: ignore[misc,valid-type]
        """A worker traceback that is also what ``ProcessPoolExecutor`` attaches.

        ``isinstance(exc.__cause__, concurrent.futures.process._RemoteTraceback)``
        and its ``tb`` attribute keep working for code written for the stdlib.
        """

        def __init__(self, text: str) -> None:
            WorkerTraceback.__init__(self, text)
            self.tb = f'\n"""\n{text}"""'

    def _as_remote_traceback(cause: WorkerTraceback) -> BaseException:
        return _RemoteTraceback(cause.text)

else:  # pragma: no cover - every supported CPython has it

    def _as_remote_traceback(cause: WorkerTraceback) -> BaseException:
        return cause


def _task_error(exc: Exception) -> Exception:
    """The exception a cf.Future should hold for a core ``result()`` error."""
    cause = exc.__cause__
    if isinstance(exc, LostResult) and not isinstance(cause, WorkerTraceback):
        # The worker died (a LostResult the task raised itself has a cause).
        lost = WorkerLost(str(exc), pid=exc.pid, returncode=exc.returncode)
        lost.__cause__ = exc
        return lost
    if type(cause) is WorkerTraceback:
        exc.__cause__ = _as_remote_traceback(cause)
    return exc


def _submit_error(exc: Exception) -> Exception:
    """The exception a cf.Future should hold when the core refused to launch.

    The core wraps pickling failures of the work in a ``TypeError`` whose
    cause is the pickler's own error; ``ProcessPoolExecutor`` reports the
    pickler's error itself, so unwrap it.
    """
    cause = exc.__cause__
    if (
        isinstance(exc, TypeError)
        and isinstance(cause, Exception)
        and "cannot be pickled" in str(exc)
    ):
        return cause
    return exc


# --- what workers run -----------------------------------------------------------


def _process_chunk(
    fn: Callable[..., Any], chunk: tuple[tuple[Any, ...], ...]
) -> list[Any]:
    """Run ``fn`` over a chunk of argument tuples in one worker (``map``)."""
    return [fn(*args) for args in chunk]


def _initialize_then_call(
    initializer: Callable[..., Any],
    initargs: tuple[Any, ...],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run the executor's initializer, then the task, in the worker."""
    try:
        initializer(*initargs)
    except Exception as exc:
        name = getattr(initializer, "__qualname__", repr(initializer))
        raise InitializerFailed(
            f"the executor's initializer {name} raised "
            f"{type(exc).__name__}: {exc}; the task did not run"
        ) from exc
    return fn(*args, **kwargs)


def _batched(
    iterable: Iterator[tuple[Any, ...]], size: int
) -> Iterator[tuple[tuple[Any, ...], ...]]:
    while True:
        chunk = tuple(itertools.islice(iterable, size))
        if not chunk:
            return
        yield chunk


# --- the core handle the dispatcher uses ----------------------------------------


def _private_handle(jobserver: Jobserver) -> Jobserver | None:
    """A handle on ``jobserver``'s slots with bookkeeping of its own.

    It is what a spawned child gets when the handle is pickled to it: the same
    pool through duplicated descriptors (closing either side never closes the
    other's, and a FIFO is removed only by its creator), the same per-handle
    settings (environment, preexec, gate, ...), but its own ledger, tracked
    Futures and selector.  The
    one thing a child does not get and this process keeps is GNU Make's
    implicit token, which belongs to the process and is shared by every pool
    on that jobserver in it.  The caller's thread may keep using
    ``jobserver`` while the dispatcher thread uses this handle.

    Returns ``None`` when the core's internals are not what this was written
    against; the caller then shares ``jobserver`` itself.
    """
    try:
        from jobserver import _jobserver, _slots

        resources = jobserver._resources
        pool = resources.pool
        if pool.closed:
            raise RuntimeError(
                "this Jobserver's resources were released when its last "
                "`with` block exited; create a new Jobserver"
            )
        child_state = getattr(pool, "_child_state", None)
        extra = () if child_state is None else (child_state(),)
        read_fd = os.dup(pool.read_fd)
        try:
            write_fd = os.dup(pool.write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        try:
            clone = _slots._rebuild_pool(
                type(pool), read_fd, write_fd, pool.size, *extra
            )
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if hasattr(pool, "_implicit"):
            clone._implicit = pool._implicit  # type: ignore[attr-defined]
        # A sibling carries every per-handle setting (environment, preexec,
        # gate, ...); only its resources are replaced.
        handle = copy.copy(jobserver)
        handle._resources = _jobserver._Resources(clone, resources.context)
        return handle
    except (ImportError, AttributeError, TypeError) as exc:  # pragma: no cover
        logger.warning(
            "cannot give the executor its own bookkeeping on %r (%s); sharing "
            "the handle: do not submit to it from other threads meanwhile",
            jobserver,
            exc,
        )
        return None


def _default_context() -> multiprocessing.context.BaseContext:
    """The start method of a private Jobserver when none is given.

    The program's explicitly chosen start method if it chose one; otherwise
    the platform default, except that on CPython 3.12+ "fork" becomes
    "forkserver" (as ``ProcessPoolExecutor`` does from 3.14): the dispatcher
    thread makes this process multi-threaded, and forking such a process is
    what 3.12 started warning about.
    """
    # (typeshed says str; it is None while the program has not chosen one)
    method = cast("str | None", multiprocessing.get_start_method(allow_none=True))
    if method is None:
        methods = multiprocessing.get_all_start_methods()
        method = methods[0]
        if method == "fork" and _FORK_WARNS_WITH_THREADS and "forkserver" in methods:
            method = "forkserver"
    return multiprocessing.get_context(method)


# --- the dispatcher -------------------------------------------------------------


class _ExecutorFuture(concurrent.futures.Future[Any]):
    """A ``concurrent.futures.Future`` whose ``cancel`` waits for an attempt
    to launch it that is under way.

    The dispatcher holds ``_launch_lock`` while it checks that the future is
    still pending, asks the core to launch it and marks it running, so
    ``cancel()`` either wins before the launch (nothing runs) or returns
    ``False`` after it.  It is a lock of its own, not the future's
    ``_condition``: ``concurrent.futures.wait`` and ``as_completed`` take every
    future's condition, and code that runs during a launch (a launch gate,
    pickling of arguments) may touch other futures.
    """

    def __init__(self) -> None:
        super().__init__()
        self._launch_lock = threading.RLock()

    def cancel(self) -> bool:
        with self._launch_lock:
            return super().cancel()


class _WorkItem:
    """One submission: pending until launched, then its core Future."""

    __slots__ = ("args", "core", "fn", "future", "kwargs", "work_id")

    def __init__(
        self,
        work_id: int,
        future: _ExecutorFuture,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.work_id = work_id
        self.future = future
        self.fn: Callable[..., Any] | None = fn
        self.args: tuple[Any, ...] = args
        self.kwargs: dict[str, Any] = kwargs
        self.core: Any = None

    def forget_call(self) -> None:
        """Drop the references to the callable and its arguments."""
        self.fn = None
        self.args = ()
        self.kwargs = {}


class _WakeableDispatcher:
    """What both dispatchers (fresh processes here, reused workers in
    ``_reuse``) share: the wake-up pipe, shutdown requests and signals for
    the running workers, and joining the thread.  A subclass sets these
    attributes in ``__init__`` and provides ``_release``."""

    _lock: threading.Lock
    _shutdown: bool
    _released: bool
    _woken: bool
    _thread: threading.Thread | None
    _wake_r: int
    _wake_w: int
    _cancel_pending: bool
    _signals: collections.deque[int]

    def _release(self) -> None:
        raise NotImplementedError

    pid: int

    def _init_wakeup(self) -> None:
        """The shared state; call from ``__init__``."""
        self._signals = collections.deque()
        self._shutdown = False
        self._cancel_pending = False
        self._broken: BrokenJobserverExecutor | None = None
        self._released = False
        self._woken = False
        self._thread = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def _check_owner(self) -> None:
        if os.getpid() != self.pid:
            raise RuntimeError(
                f"this JobserverExecutor belongs to process {self.pid}, "
                f"not {os.getpid()}"
            )

    def _drain_wakeups(self) -> None:
        # Empty the pipe first, then clear the flag: whatever a user thread
        # queued before the flag went down is seen by the checks that follow,
        # and whatever it queues after writes a fresh byte.  (The other order
        # could swallow a byte written in between and leave the flag set, so
        # that no later wake-up would write one.)
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            self._woken = False

    def request_shutdown(self) -> None:
        """The executor was collected: finish the work, then stop."""
        with self._lock:
            self._shutdown = True
            thread = self._thread
            self._wake_locked()
        if thread is None:
            self._release()

    def send_signal(self, signum: int) -> None:
        """Have the dispatcher send ``signum`` to every running worker."""
        self._signals.append(signum)
        self.wake()

    def wake(self) -> None:
        with self._lock:
            self._wake_locked()

    def _wake_locked(self) -> None:
        if self._woken or self._released:
            return
        # The byte before the flag: an interrupt between the two (a signal
        # handler raising in the submitting thread) then leaves one wake-up
        # too many, never the flag up with no byte in the pipe, which would
        # silence every later wake-up (submit, shutdown) for good.
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # pragma: no cover - the pipe is full: awake
            pass
        self._woken = True

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread


class _Dispatcher(_WakeableDispatcher):
    """The executor's state and the thread that drives the core.

    Holds no reference to the executor, so an executor dropped without
    ``shutdown`` can be collected; its finalizer then asks the dispatcher to
    finish the outstanding work and stop.
    """

    def __init__(self, handle: Jobserver, scoped: bool) -> None:
        self.handle = handle
        self.pid = os.getpid()
        self._scoped = scoped
        if scoped:
            handle.__enter__()
        self._gated = getattr(handle, "_sleep", None) is not None
        self._lock = threading.Lock()
        self._pending: collections.OrderedDict[int, _WorkItem] = (
            collections.OrderedDict()
        )
        self._ids = itertools.count()
        self._running: dict[int, _WorkItem] = {}
        self._finished: collections.deque[_WorkItem] = collections.deque()
        #: The item the dispatcher is launching or delivering right now.
        self._in_hand: _WorkItem | None = None
        self._init_wakeup()

    # --- called from user threads ------------------------------------------------

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> _Future[Any]:
        self._check_owner()
        future = _ExecutorFuture()
        work_id = next(self._ids)
        item = _WorkItem(work_id, future, fn, args, kwargs)
        future.add_done_callback(self._make_cancel_hook(work_id))
        with self._lock:
            if self._broken is not None:
                raise BrokenJobserverExecutor(str(self._broken))
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _interpreter_exiting:
                raise RuntimeError(
                    "cannot schedule new futures after interpreter shutdown"
                )
            if self._thread is None:
                self._start_thread()
            # The wake-up first, then the queueing (the dispatcher looks only
            # under the lock, which this holds): an interrupt between the two
            # leaves one wake-up too many and nothing queued.  The other
            # order could leave the call queued with no wake-up on its way,
            # waiting for the next submit or shutdown.
            self._wake_locked()
            self._pending[work_id] = item
        return future

    def _make_cancel_hook(self, work_id: int) -> Callable[[_Future[Any]], None]:
        ref = weakref.ref(self)

        def hook(future: _Future[Any]) -> None:
            dispatcher = ref()
            if dispatcher is not None and future.cancelled():
                dispatcher._cancelled(work_id, future)

        return hook

    def _cancelled(self, work_id: int, future: _Future[Any]) -> None:
        """A future was cancelled: if still pending, drop it and notify waiters."""
        with self._lock:
            item = self._pending.pop(work_id, None)
        if item is not None:
            item.forget_call()
            _notify_cancelled(future)

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        if os.getpid() != self.pid:
            return
        with self._lock:
            self._shutdown = True
            dropped: list[_WorkItem] = []
            in_hand = None
            if cancel_futures:
                self._cancel_pending = True
                dropped = list(self._pending.values())
                self._pending.clear()
                in_hand = self._in_hand
            thread = self._thread
            self._wake_locked()
        for item in dropped:
            item.forget_call()
            if item.future.cancel():
                _notify_cancelled(item.future)
        if in_hand is not None:
            # A launch attempt under way ends with the future running or
            # cancelled, never pending: wait for it.
            with in_hand.future._launch_lock:
                pass
        if thread is None:
            self._release()
        elif wait and thread is not threading.current_thread():
            thread.join()

    def counts(self) -> tuple[int, int]:
        return len(self._pending), len(self._running) + len(self._finished)

    def state(self) -> str:
        if self._broken is not None:
            return "broken"
        if self._shutdown:
            return "shutdown"
        return "running"

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._main, name="JobserverExecutor-dispatcher", daemon=True
        )
        self._thread = thread
        try:
            thread.start()
        except BaseException:
            self._thread = None
            raise
        _DISPATCHERS.add(self)

    # --- the dispatcher thread -----------------------------------------------------

    def _main(self) -> None:
        logger.debug("dispatcher started on %r", self.handle)
        try:
            self._loop()
        except BaseException as exc:
            self._break(exc)
        finally:
            self._release()
            logger.debug("dispatcher stopped")

    def _loop(self) -> None:
        gate_delay = 0.0
        while True:
            self._drain_wakeups()
            if self._signals:
                self._send_signals()
            self._deliver()
            gated = self._launch()
            gate_delay = (
                min(max(gate_delay * 2, _GATE_RETRY_MIN), _GATE_RETRY_MAX)
                if gated
                else 0.0
            )
            with self._lock:
                want_slot = bool(self._pending)
                stopping = self._shutdown or _interpreter_exiting
            if self._finished:
                continue
            if stopping and not want_slot and not self._running:
                return
            try:
                self._wait(want_slot and not gated, gate_delay if gated else None)
            except CallbackRaised as exc:  # pragma: no cover - ours never raise
                logger.warning("a core callback raised", exc_info=exc)

    def _launch(self) -> bool:
        """Launch pending work, oldest first, until it runs out or is Blocked.

        Returns ``True`` when a launch gate (``replace_sleep``) may be what
        refused, so that the caller retries after a while instead of waiting
        for a slot that is already free.
        """
        while True:
            with self._lock:
                if not self._pending:
                    return False
                work_id, item = next(iter(self._pending.items()))
                launch_lock = item.future._launch_lock
                # Taken together with the item (never blocking while the
                # queue lock is held), so that shutdown(cancel_futures=True)
                # finding it in hand can wait for the attempt to end.
                taken = launch_lock.acquire(blocking=False)
                if taken:
                    del self._pending[work_id]
                    self._in_hand = item
            if not taken:
                # Another thread is in cancel() of this very future.
                with launch_lock:
                    pass
                continue
            try:
                launched = self._launch_one(work_id, item)
            finally:
                launch_lock.release()
            self._in_hand = None
            if launched is None:
                return self._gated
            if launched:
                item.core.when_done(self._core_finished, item)
            if self._finished:
                self._deliver()

    def _launch_one(self, work_id: int, item: _WorkItem) -> bool | None:
        """Try to launch one item: ``True`` launched, ``False`` settled (it was
        cancelled or could not be launched), ``None`` Blocked (requeued)."""
        future = item.future
        with future._launch_lock:
            # Held across the launch: cancel() waits, then sees RUNNING.
            if future.cancelled():
                item.forget_call()
                _notify_cancelled(future)
                return False
            try:
                assert item.fn is not None
                core = self.handle.submit(
                    item.fn, args=item.args, kwargs=item.kwargs, timeout=0
                )
            except Blocked:
                if self._requeue(work_id, item):
                    return None
                # shutdown(cancel_futures=True) came meanwhile: cancel it
                # here, under the launch lock that shutdown waits for.
                item.forget_call()
                if future.cancel():
                    _notify_cancelled(future)
                return False
            except CallbackRaised as exc:  # pragma: no cover - ours never raise
                logger.warning("a core callback raised", exc_info=exc)
                if self._requeue(work_id, item):
                    return False
                item.forget_call()
                if future.cancel():
                    _notify_cancelled(future)
                return False
            except Exception as exc:
                failure = _submit_error(exc)
                future.set_running_or_notify_cancel()
            else:
                item.forget_call()
                if not future.set_running_or_notify_cancel():
                    # Code run by the launch itself (a gate) cancelled it.
                    core.wait(None, signal=signal.SIGKILL)
                    return False
                item.core = core
                self._running[work_id] = item
                return True
        item.forget_call()
        _settle(future, exception=failure)
        return False

    def _requeue(self, work_id: int, item: _WorkItem) -> bool:
        """Put an item back at the head of the queue; ``False`` if pending
        work was cancelled by ``shutdown(cancel_futures=True)`` meanwhile."""
        with self._lock:
            if self._cancel_pending:
                return False
            self._pending[work_id] = item
            self._pending.move_to_end(work_id, last=False)
            return True

    def _core_finished(self, item: _WorkItem) -> None:
        """Core callback: queue the item; results are delivered by the loop."""
        self._finished.append(item)
        if threading.current_thread() is not self._thread:  # pragma: no cover
            self.wake()

    def _deliver(self) -> None:
        while self._finished:
            item = self._in_hand = self._finished.popleft()
            self._running.pop(item.work_id, None)
            core = item.core
            try:
                value = core.result(0)
            except Exception as exc:
                _settle(item.future, exception=_task_error(exc))
            except BaseException as exc:
                # Rebuilding the result ran code that raised SystemExit (or
                # the like) here, in the dispatcher: fail only this future.
                error = BrokenProcessPool(
                    f"rebuilding the result of a task in this process raised "
                    f"{type(exc).__name__}: {exc}"
                )
                error.__cause__ = exc
                _settle(item.future, exception=error)
            else:
                _settle(item.future, value=value)
            item.core = self._in_hand = None

    def _wait(self, want_slot: bool, timeout: float | None) -> None:
        """Sleep until something the loop acts on may have happened."""
        extra = (self._wake_r,)
        if want_slot:
            self.handle._wait_for_progress(timeout, extra_fds=extra)
            return
        # No pending work: a free slot is no reason to wake (the pool's
        # descriptor would stay readable), so wait without watching it.
        resources = self.handle._resources
        resources.wait_events(timeout, include_pool=False, extra_fds=extra)

    def _send_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            for item in list(self._running.values()):
                if item.core is not None:
                    item.core.wait(0, signal=signum)

    # --- failure and teardown --------------------------------------------------------

    def _break(self, cause: BaseException) -> None:
        """The loop failed: fail everything outstanding, kill running workers."""
        message = (
            "the JobserverExecutor's dispatcher thread failed with "
            f"{type(cause).__name__}: {cause}; outstanding futures were failed "
            "and the executor cannot be used any more"
        )
        logger.error("%s", message, exc_info=cause)
        with self._lock:
            self._broken = BrokenJobserverExecutor(message)
            items = list(self._pending.values())
            self._pending.clear()
        items.extend(self._running.values())
        items.extend(self._finished)
        if self._in_hand is not None:
            items.append(self._in_hand)
        self._running.clear()
        self._finished.clear()
        self._in_hand = None
        unique = list({id(item): item for item in items}.values())
        for item in unique:
            item.forget_call()
            error = BrokenJobserverExecutor(message)
            error.__cause__ = cause
            try:
                _fail(item.future, error)
            except BaseException:
                logger.exception("failing a future after the dispatcher broke")
        for item in unique:
            core, item.core = item.core, None
            if core is None:
                continue
            try:
                core.wait(10, signal=signal.SIGKILL)
            except BaseException:
                logger.exception("stopping a worker after the dispatcher broke")

    def _release(self) -> None:
        """Close the wake-up pipe and, if scoped, release the core resources."""
        with self._lock:
            if self._released:
                return
            self._released = True
            os.close(self._wake_r)
            os.close(self._wake_w)
        if self._scoped:
            try:
                if self.handle._resources.tracked_count:  # pragma: no cover
                    logger.warning("workers still running; leaving them to the core")
                    return
                self.handle.__exit__(None, None, None)
            except BaseException:  # pragma: no cover - defensive
                logger.exception("releasing the executor's Jobserver failed")


def _notify_cancelled(future: _Future[Any]) -> None:
    try:
        future.set_running_or_notify_cancel()
    except RuntimeError:  # pragma: no cover - a caller forged the state
        pass


def _fail(future: _Future[Any], error: BaseException) -> None:
    """Fail ``future`` whatever its state, unless it is already done."""
    if future.cancelled():
        _notify_cancelled(future)
        return
    if future.done():
        return
    if future.running() or future.set_running_or_notify_cancel():
        _settle(future, exception=error)


def _settle(
    future: _Future[Any], *, value: Any = None, exception: BaseException | None = None
) -> None:
    """Complete ``future``; a state changed behind our back is only logged."""
    try:
        if exception is None:
            future.set_result(value)
        else:
            future.set_exception(exception)
    except concurrent.futures.InvalidStateError:  # pragma: no cover
        logger.warning("%r was completed by someone else", future)


# --- map's result iterator ------------------------------------------------------


def _result_or_cancel(future: _Future[Any], end_time: float | None) -> Any:
    try:
        if end_time is None:
            return future.result()
        return future.result(end_time - time.monotonic())
    finally:
        future.cancel()


def _map_results(
    futures: collections.deque[_Future[Any]],
    inputs: Iterator[Any],
    executor_ref: weakref.ref[JobserverExecutor] | None,
    fn: Callable[..., Any],
    chunked: bool,
    end_time: float | None,
) -> Iterator[Any]:
    """Yield results in input order (``Executor.map`` as of CPython 3.14)."""
    try:
        futures.reverse()
        while futures:
            if executor_ref is not None:
                executor = executor_ref()
                if executor is not None:
                    args = next(inputs, None)
                    if args is not None:
                        futures.appendleft(executor._map_submit(fn, args, chunked))
                del executor
            value = _result_or_cancel(futures.pop(), end_time)
            if chunked:
                value.reverse()
                while value:
                    yield value.pop()
            else:
                yield value
    finally:
        for future in futures:
            future.cancel()


# --- the executor ----------------------------------------------------------------


class JobserverExecutor(concurrent.futures.Executor):
    """A drop-in ``ProcessPoolExecutor`` whose tasks share a Jobserver's slots.

    ``jobserver``: a ``Jobserver`` whose slots the tasks share with any other
    user of them (its own submissions, nested work, other processes), or an
    ``int`` read as ``ProcessPoolExecutor``'s ``max_workers`` (a private
    Jobserver with that many slots), or ``None`` for a private default
    Jobserver (Make's jobserver if advertised, else the usable CPUs).
    ``max_workers=`` is accepted as a keyword for the ``int`` form.
    ``mp_context`` (a context or start method name) picks the start method of
    a private Jobserver.  ``initializer(*initargs)`` runs in every worker
    before its task.  ``max_tasks_per_child`` is validated and otherwise
    satisfied trivially: every task gets a fresh process.

    Each task runs in its own fresh process; a worker's death fails only its
    own future with ``WorkerLost`` and the executor stays usable.

    ``reuse_workers=True`` opts in to long-lived workers that run many tasks
    each (``_reuse``), as ``ProcessPoolExecutor``'s do: much faster for tiny
    tasks, at the price of state shared between tasks of one worker.  The
    initializer then runs once per worker, ``max_tasks_per_child`` recycles
    workers, and slots still count running tasks (an idle worker holds
    none); a worker's death still fails only the task it was running.
    """

    def __init__(
        self,
        jobserver: Jobserver | int | None = None,
        mp_context: Context | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_child: int | None = None,
        *,
        max_workers: int | None = None,
        reuse_workers: bool = False,
    ) -> None:
        if not isinstance(reuse_workers, bool):
            raise TypeError(
                f"reuse_workers must be a bool, not {type(reuse_workers).__name__}"
            )
        if max_workers is not None:
            if jobserver is not None:
                raise TypeError("pass either jobserver or max_workers, not both")
            if not isinstance(max_workers, int) or isinstance(max_workers, bool):
                raise TypeError(
                    f"max_workers must be an int, not {type(max_workers).__name__}"
                )
            jobserver = max_workers
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        initargs = tuple(initargs)

        if isinstance(jobserver, Jobserver):
            if mp_context is not None:
                raise ValueError(
                    "mp_context picks the start method of a private Jobserver; "
                    "with a Jobserver, choose the start method when creating it"
                )
            handle = _private_handle(jobserver)
            scoped = handle is not None
            if handle is None:
                handle = jobserver
        elif jobserver is None or isinstance(jobserver, int):
            if isinstance(jobserver, bool):
                raise TypeError("max_workers must be an int, not bool")
            if jobserver is not None and jobserver <= 0:
                raise ValueError("max_workers must be greater than 0")
            context = _default_context() if mp_context is None else mp_context
            handle = Jobserver(context=context, slots=jobserver)
            scoped = True
        else:
            raise TypeError(
                "the first argument must be a Jobserver, an int (max_workers) "
                f"or None, not {type(jobserver).__name__}"
            )
        self._initializer = initializer
        self._initargs = initargs
        self._max_tasks_per_child = max_tasks_per_child
        self._reuse_workers = reuse_workers
        self._dispatcher: _Dispatcher | _ReuseDispatcher
        if reuse_workers:
            from ._reuse import _ReuseDispatcher

            try:
                self._dispatcher = _ReuseDispatcher(
                    handle, scoped, initializer, initargs, max_tasks_per_child
                )
            except BaseException:
                if scoped:
                    handle._resources.pool.close()
                raise
        else:
            self._dispatcher = _Dispatcher(handle, scoped)
        finalizer = weakref.finalize(self, self._dispatcher.request_shutdown)
        finalizer.atexit = False  # type: ignore[misc]

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> _Future[T]:
        """Schedule ``fn(*args, **kwargs)`` in a fresh worker; return its Future.

        The work waits (cancellable) until a slot is free.  Raises
        ``RuntimeError`` after ``shutdown`` and ``BrokenJobserverExecutor``
        once the executor's machinery failed.
        """
        if self._initializer is not None and not self._reuse_workers:
            return self._dispatcher.submit(
                _initialize_then_call,
                (self._initializer, self._initargs, fn, args, kwargs),
                {},
            )
        return self._dispatcher.submit(fn, args, kwargs)

    def _map_submit(
        self, fn: Callable[..., Any], args: Any, chunked: bool
    ) -> _Future[Any]:
        if chunked:
            return self.submit(_process_chunk, fn, args)
        return self.submit(fn, *args)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Like ``map(fn, *iterables)``, run in workers; results in input order.

        ``chunksize`` calls run in each worker.  Without ``buffersize`` every
        call is submitted before this returns; with it, at most ``buffersize``
        submissions are outstanding and the inputs are read lazily.  A result
        later than ``timeout`` seconds after this call raises ``TimeoutError``
        from the iterator; leaving the iterator cancels calls not yet started.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and (
            not isinstance(buffersize, int) or isinstance(buffersize, bool)
        ):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        end_time = None if timeout is None else timeout + time.monotonic()
        chunked = chunksize > 1
        inputs: Iterator[Any] = zip(*iterables)
        if chunked:
            inputs = _batched(inputs, chunksize)
        if buffersize is None:
            first: Iterable[Any] = inputs
        else:
            first = itertools.islice(inputs, buffersize)
        futures = collections.deque(
            self._map_submit(fn, args, chunked) for args in first
        )
        executor_ref = None if buffersize is None else weakref.ref(self)
        return _map_results(futures, inputs, executor_ref, fn, chunked, end_time)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; release resources once the work is done.

        ``wait``: return only after every submitted task finished (otherwise
        return at once; the work still finishes in the background).
        ``cancel_futures``: cancel every task not yet started.
        """
        self._dispatcher.shutdown(wait, cancel_futures)

    def terminate_workers(self) -> None:
        """Shut down, cancel pending tasks and SIGTERM running workers.

        Their futures fail with ``WorkerLost``.  (``ProcessPoolExecutor``
        has this from CPython 3.14.)
        """
        self._force_shutdown(signal.SIGTERM)

    def kill_workers(self) -> None:
        """Like ``terminate_workers`` with SIGKILL."""
        self._force_shutdown(signal.SIGKILL)

    def _force_shutdown(self, signum: int) -> None:
        self._dispatcher.shutdown(wait=False, cancel_futures=True)
        self._dispatcher.send_signal(signum)

    def __reduce__(self) -> Any:
        raise TypeError(
            "a JobserverExecutor cannot be pickled; pass a Jobserver to the "
            "work instead (nested work then shares the same slots)"
        )

    def __repr__(self) -> str:
        dispatcher = self._dispatcher
        pending, running = dispatcher.counts()
        return (
            f"<JobserverExecutor {dispatcher.state()} pending={pending} "
            f"running={running} jobserver={dispatcher.handle!r}>"
        )

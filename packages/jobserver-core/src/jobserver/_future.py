"""Future: the parent's view of one submission, from launch to callbacks.

States, in order (a Future never goes back)::

    RUNNING  --result pipe reaches EOF-->  EXITED  --worker reaped-->  DONE

* RUNNING: the result pipe is read without blocking as data arrives, so a
  worker writing a result larger than a pipe buffer is never stuck.
* EXITED: the outcome is known (a message, or none: a lost result); the
  worker may still be alive (it may have exec'd another program) and still
  counts against the limit.
* DONE: the worker was reaped and its slot given back *before* any user
  callback runs (so a callback can submit, even with ``slots=1``).

Load-bearing invariants:

* Descriptors are closed only when no thread is blocked polling them
  (``_pollers == 0``); a closing thread that finds pollers leaves the close
  to the last poller.  A descriptor closed under a poller could be reused by
  an unrelated ``open`` and leave that poller waiting on the wrong file.
  An asyncio loop that has the descriptor registered (``aio``) counts as a
  poller until it unregisters it.
* Callbacks run outside every lock, one at a time per Future
  (``_draining``), so callbacks registering callbacks loop instead of
  recursing.
"""

from __future__ import annotations

import collections
import math
import os
import select
import signal as signal_module
import threading
import time
import warnings
from _thread import allocate_lock
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Generic,
    TypeVar,
)

from ._exceptions import Blocked, CallbackRaised, LostResult
from ._launch import Worker
from ._signals import DeferSignals
from ._timelimit import Deadline
from ._wire import (
    NONE_FRAME,
    NONE_MESSAGE,
    RETURNED_NONE,
    Message,
    MessageReader,
    decode,
    whole_message,
)

if TYPE_CHECKING:
    from collections.abc import Generator

    from ._jobserver import _Resources

__all__ = ["Future"]

T = TypeVar("T")

RUNNING = "running"
EXITED = "exited"
DONE = "done"

_Callback = tuple[int, Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def check_gate_delay(delay: Any) -> float | None:
    """What a launch gate (``replace_sleep``) returned: ``None`` (launch now)
    or a number of seconds >= 0 to wait before asking again."""
    if delay is None:
        return None
    if (
        isinstance(delay, bool)
        or not isinstance(delay, (int, float))
        or math.isnan(delay)
        or delay < 0
    ):
        raise ValueError(
            "the sleep function must return None or a number of seconds "
            f">= 0, not {delay!r}"
        )
    return float(delay)


def check_timeout(timeout: float | None, name: str = "timeout") -> float | None:
    """Validate a timeout: ``None`` or a number >= 0; ``None`` means forever,
    and so does a timeout no clock can count (``inf``, ``sys.float_info.max``)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"{name} must be None or a number of seconds, not {type(timeout).__name__}"
        )
    if (isinstance(timeout, float) and math.isnan(timeout)) or timeout < 0:
        raise ValueError(f"{name} must be None or >= 0, not {timeout!r}")
    if timeout >= threading.TIMEOUT_MAX:
        return None  # forever (inf, or longer than any wait the OS can do)
    return float(timeout)


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def poll_readable(fds: list[int], timeout: float | None) -> list[int]:
    """Block until one of ``fds`` is readable or ``timeout`` passes.

    Returns the readable descriptors.  With no descriptors it waits a short
    while (callers use that only to re-check a state they cannot watch).
    """
    if not fds:
        time.sleep(0.002 if timeout is None else min(timeout, 0.002))
        return []
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    if timeout is None:
        events = poller.poll()
    else:
        millis = timeout * 1000  # clamped before ceil: it may be inf
        events = poller.poll(math.ceil(millis) if millis < 2**31 - 1 else 2**31 - 1)
    return [fd for fd, _ in events]


class Future(Generic[T]):
    """The outcome of one submission, run in its own worker process.

    Thread-safe.  Cannot be copied or pickled.  Obtained from
    ``Jobserver.submit`` (or ``Jobserver(...)``); never constructed directly.
    """

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_close_pending",
        "_consumes",
        "_decoded",
        "_draining",
        "_limit",
        "_lock",
        "_lost",
        "_message",
        "_next_seqno",
        "_pid",
        "_pollers",
        "_reader",
        "_resources",
        "_state",
        "_worker",
    )

    def __init__(self, resources: _Resources, worker: Worker, consumes: int) -> None:
        # allocate_lock is threading.Lock, without a lookup in the threading
        # module (one page fewer for a forking parent to copy per Future).
        self._lock = allocate_lock()
        self._resources: _Resources | None = resources
        self._worker = worker
        self._consumes = consumes
        self._state = RUNNING
        #: Made only for a message that does not come whole in one read.
        self._reader: MessageReader | None = None
        self._message: Message | None = None
        self._decoded: tuple[bool, Any] | None = None
        self._lost: Exception | None = None  # LostResult or TimeLimitExceeded
        self._limit: Deadline | None = None
        #: Made on the first ``when_done`` (most Futures never get one).
        self._callbacks: collections.deque[_Callback] | None = None
        self._next_seqno = 0
        self._draining = False
        self._pollers = 0
        self._close_pending = False
        self._pid = os.getpid()

    # --- public API ----------------------------------------------------------

    def done(self, timeout: float = 0) -> bool:
        """Whether the work has finished (waiting up to ``timeout`` seconds).

        Never raises ``Blocked``; runs pending callbacks once finished (so it
        may raise ``CallbackRaised``).
        """
        return self.wait(timeout)

    def wait(self, timeout: float | None = None, *, signal: int | None = None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: forever) for the outcome.

        ``signal``, if given, is first sent to the worker when it is still
        running: ``SIGTERM`` to cancel it, ``SIGSTOP``/``SIGCONT`` to pause and
        resume it.  Returns ``True`` once the outcome is known and the worker
        is gone, ``False`` on timeout.  Runs pending callbacks once finished.
        """
        timeout = check_timeout(timeout)
        self._check_process()
        if signal is not None:
            self._send_signal(signal)
        if not self._settle(deadline_of(timeout)):
            resources = self._resources
            if resources is not None and resources._limited:
                resources.enforce_limits()  # done(0) polling enforces limits too
            return False
        self._run_callbacks()
        return True

    def _settle(self, deadline: float | None) -> bool:
        """Wait until DONE (worker reaped, slot back) without running callbacks."""
        with self._lock:
            while self._state is not DONE:
                self._advance()
                if self._state is DONE:
                    break
                left = remaining(deadline)
                if left is not None and left <= 0:
                    return False
                fd = self._wait_fd()
                resources = self._resources
                others = resources.watched_fds() if resources is not None else []
                fds = others if fd is None else [fd, *others]
                # Time limits (_timelimit): wake when a worker's signal is due.
                wake = resources.limit_wake() if resources is not None else None
                if wake is not None:
                    left = wake if left is None else min(left, wake)
                # Becoming a poller and dropping the lock, then taking it back
                # and ceasing to be one, must each happen whole (signals
                # deferred): a handler raising between the two steps would
                # leave _pollers raised for good, or the lock released twice.
                # ``polling[0]`` is True exactly while this thread is a
                # poller without the lock; each step flips it inside its
                # deferred block, so after any exception it says which
                # steps happened.
                polling = [False]
                interrupted: BaseException | None = None
                try:
                    with DeferSignals():
                        self._pollers += 1
                        self._lock.release()
                        polling[0] = True
                    ready = poll_readable(fds, left)
                    if others and ready and ready != [fd]:
                        # Reap siblings that finished meanwhile so their slots
                        # go back now; their callbacks stay queued.
                        assert resources is not None
                        resources.advance_ready()
                    if wake is not None:
                        assert resources is not None
                        resources.enforce_limits()
                finally:
                    # A pending handler may raise at the very entry of
                    # _stop_polling, before any line of it runs (CPython
                    # checks for signals there): then nothing was done, so
                    # try again, and raise the exception once the step is
                    # whole.  (The loop starts with its ``try``: CPython 3.9
                    # and 3.10 check for signals before most instructions,
                    # but not before entering a ``try``.)
                    while True:
                        try:
                            if polling[0]:
                                self._stop_polling(polling)
                            break
                        except BaseException as exc:
                            if not polling[0]:
                                raise  # after the step: the lock is held
                            interrupted = exc
                    if interrupted is not None:
                        raise interrupted
        return True

    def _stop_polling(self, polling: list[bool]) -> None:
        """Take the lock back and cease to be a poller, as one step, and
        clear ``polling[0]`` inside it.

        Entering ``DeferSignals`` runs the handlers of signals already
        pending, and one may raise: then nothing was done (the mask is
        restored) and ``polling[0]`` is still set; the caller tries again.
        An exception with ``polling[0]`` clear (a handler run when the mask
        is restored) leaves the lock held, as the caller's ``with`` expects.
        """
        with DeferSignals():
            self._lock.acquire()
            self._pollers -= 1
            polling[0] = False
            if self._pollers == 0 and self._close_pending:
                self._close_fds()

    def result(self, timeout: float | None = None) -> T:
        """The value the work returned, waiting up to ``timeout`` seconds.

        Re-raises the worker's ``Exception`` (its formatted traceback is the
        ``__cause__``); raises ``LostResult`` if the worker ended without a
        result and ``Blocked`` if ``timeout`` passes first.  Runs pending
        callbacks (so it may raise ``CallbackRaised``; call again for the
        value).
        """
        if (
            timeout is None
            and self._state is DONE
            and self._callbacks is None
            and self._lost is None
            and self._pid == os.getpid()
        ):
            # Done, nothing to run, decoded: what wait() and the rest come
            # to, without their calls (most results are asked for once done).
            decoded = self._decoded
            if decoded is not None:
                if decoded[0]:
                    return decoded[1]  # type: ignore[no-any-return]
                raise decoded[1]
        if not self.wait(timeout):
            raise Blocked(f"no result within {timeout} seconds from {self!r}")
        with self._lock:
            if self._lost is not None:
                raise self._lost
            if self._decoded is None:
                assert self._message is not None
                self._decoded = decode(self._message)
                self._message = None
            ok, payload = self._decoded
        if ok:
            return payload  # type: ignore[no-any-return]
        raise payload

    def when_done(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> int:
        """Register ``fn(*args, **kwargs)`` to run once the work is done.

        The callback receives exactly these arguments (not the Future).  It
        runs on whichever thread first observes completion, or at once when
        the work is already done.  Returns the callback's seqno (0 for the
        first).  A callback raising an ``Exception`` surfaces as
        ``CallbackRaised`` from the method that ran it.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        with self._lock:
            seqno = self._next_seqno
            self._next_seqno += 1
            if self._callbacks is None:
                self._callbacks = collections.deque()
            self._callbacks.append((seqno, fn, args, kwargs))
            done = self._state is DONE
        if done:
            self._run_callbacks()
        return seqno

    # --- copying, pickling, repr ---------------------------------------------

    def __copy__(self) -> Future[T]:
        raise TypeError("a Future cannot be copied")

    def __deepcopy__(self, memo: Any) -> Future[T]:
        raise TypeError("a Future cannot be copied")

    def __reduce__(self) -> Any:
        raise TypeError("a Future cannot be pickled; pass its result instead")

    def __repr__(self) -> str:
        state = self._state
        if state is DONE:
            if self._lost is not None:
                state = "done: lost"
            elif self._decoded is not None:
                state = "done: value" if self._decoded[0] else "done: raised"
            else:
                state = "done"
        return (
            f"<Future pid={self._worker.pid} state={state} "
            f"callbacks={len(self._callbacks or ())}>"
        )

    def __del__(self) -> None:
        try:
            if self._state is DONE or self._pid != os.getpid():
                return
            warnings.warn(
                f"Future for worker pid {self._worker.pid} dropped while the "
                "worker may still be running; its slot is not given back",
                ResourceWarning,
                stacklevel=2,
            )
            self._close_fds(everything=True)
        except Exception:  # pragma: no cover - interpreter teardown
            pass

    # --- the state machine (call with self._lock held) -----------------------

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            raise RuntimeError(
                f"this Future belongs to process {self._pid}, not {os.getpid()}"
            )

    def _wait_fd(self) -> int | None:
        if self._state is RUNNING:
            return self._worker.result_fd
        return self._worker.exit_fd()

    def _advance(self) -> None:
        """Make whatever progress is possible without blocking.

        Runs with signals deferred: reading a chunk and recording it, reaching
        end-of-file and watching the exit instead, reaping and giving the slot
        back -- a handler raising between any two of these steps would drop
        result bytes or leave a worker nobody watches.

        One flat function on purpose (with ``Worker.try_reap`` and the
        closing of descriptors inline for plain forked workers): a forking
        parent takes a copy-on-write fault for every function it calls
        between two forks (docs/performance.md).
        """
        with DeferSignals():
            worker = self._worker
            if self._state is RUNNING:
                fd = worker.result_fd
                reader = self._reader
                try:
                    if reader is None:
                        # Nothing buffered yet: a small message comes whole in
                        # one read (kept in _message until end-of-file); the
                        # rest goes through a MessageReader.
                        while True:
                            chunk = os.read(fd, 65536)
                            if not chunk:
                                break  # end-of-file
                            if self._message is not None:
                                continue  # complete; anything more is not ours
                            if chunk == NONE_FRAME:
                                self._message = NONE_MESSAGE
                                self._decoded = RETURNED_NONE
                                continue
                            message = whole_message(chunk)
                            if message is not None:
                                self._message = message
                                continue
                            reader = self._reader = MessageReader()
                            reader._accept_prefix_bytes(chunk)
                            break
                    if reader is not None:
                        if not reader.read_available(fd):
                            return
                        self._message = reader.message()
                        self._reader = None
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # pragma: no cover - defensive
                    self._lost = LostResult(
                        f"reading the result of worker {worker.pid} failed: {exc}",
                        pid=worker.pid,
                    )
                    if reader is not None:
                        self._message = reader.message()
                        self._reader = None
                self._state = EXITED
                # Stop watching the pipe, then close it (unless polled).
                resources = self._resources
                if resources is not None and self in resources._watched:
                    resources._unwatch(self)
                if self._pollers:
                    self._close_pending = True
                else:
                    worker.result_fd = -1
                    if fd >= 0:
                        os.close(fd)
            if self._state is EXITED:
                # Reaping and giving the slot back must not be split by a
                # signal handler (deferred above): the slot would be lost.
                if worker.returncode is None:
                    if type(worker) is Worker:  # Worker.try_reap, inline
                        try:
                            pid, status = os.waitpid(worker.pid, os.WNOHANG)
                        except ChildProcessError:
                            # Somebody else reaped it (os.wait() in user code).
                            worker.returncode = -255
                        else:
                            if pid:
                                worker.returncode = os.waitstatus_to_exitcode(status)
                        reaped = worker.returncode is not None
                    else:
                        reaped = worker.try_reap()
                    if not reaped:
                        resources = self._resources
                        if resources is not None:
                            resources._watch(self, worker.exit_fd())
                        return
                if self._message is None and self._lost is None:
                    limit = self._limit
                    if limit is not None and limit.stage:
                        self._lost = limit.exception(worker.pid)
                    else:
                        self._lost = _lost_result(worker)
                self._state = DONE
                resources, self._resources = self._resources, None
                try:
                    if resources is not None and self in resources._watched:
                        resources._unwatch(self)
                    if self._pollers or worker.result_fd >= 0:
                        self._close_fds()
                    elif type(worker) is not Worker or worker._exit_fd is not None:
                        worker.close()
                finally:
                    # Whatever closing raised, the slot goes back and the
                    # Future stops being tracked.
                    if resources is not None:
                        resources._finished(self)

    def _close_fds(self, everything: bool = False) -> None:
        if self._pollers:
            self._close_pending = True
            return
        self._close_pending = False
        fd, self._worker.result_fd = self._worker.result_fd, -1
        if fd >= 0:
            os.close(fd)
        if everything or self._state is DONE:
            self._worker.close()

    def _check_time_limit(self) -> None:
        """Signal the worker if its time limit (and grace) ran out."""
        with self._lock:
            if self._limit is not None and self._state is not DONE:
                self._limit.enforce(self._worker)

    def _next_enforcement(self) -> float | None:
        limit = self._limit
        if limit is None or self._state is DONE:
            return None
        return limit.next_time()

    def __await__(self) -> Generator[Any, None, T]:
        """``await future`` in an asyncio event loop (see ``jobserver.aio``)."""
        from .aio import result

        return result(self).__await__()

    def _send_signal(self, signum: int) -> None:
        if isinstance(signum, bool) or not isinstance(signum, int):
            raise TypeError(
                f"signal must be a signal number, not {type(signum).__name__}"
            )
        if signum not in signal_module.valid_signals() or signum == 0:
            raise ValueError(f"signal must be a valid signal number, not {signum!r}")
        with self._lock:
            if self._state is not DONE:
                self._worker.send_signal(signum)

    # --- callbacks -------------------------------------------------------------

    def _has_pending_callbacks(self) -> bool:
        return bool(self._callbacks)

    def _run_callbacks(self) -> None:
        """Run pending callbacks in order; raise ``CallbackRaised`` on the first
        that raises (the rest stay pending).

        Claiming the next callback (``_draining``) and releasing the claim are
        done with signals deferred, so an interrupt can never leave the claim
        held and the remaining callbacks stranded.
        """
        while True:
            claimed = False
            try:
                with DeferSignals(), self._lock:
                    if self._state is not DONE or self._draining or not self._callbacks:
                        return
                    seqno, fn, args, kwargs = self._callbacks.popleft()
                    self._draining = True
                    claimed = True
                fn(*args, **kwargs)
            except Exception as exc:
                if not claimed:
                    raise
                raise CallbackRaised(seqno) from exc
            except BaseException as exc:
                # Not wrapped (the spec), but marked: whoever sees it pass
                # (map's iterator) can tell it from an interrupt of its own.
                if claimed:
                    mark_from_callback(exc)
                raise
            finally:
                if claimed:
                    with DeferSignals(), self._lock:
                        self._draining = False


#: The attribute ``mark_from_callback`` sets on a callback's BaseException.
_FROM_CALLBACK = "_jobserver_from_callback"


def mark_from_callback(exc: BaseException) -> None:
    """Mark ``exc`` as raised by a user callback (it is not wrapped)."""
    try:
        setattr(exc, _FROM_CALLBACK, True)
    except AttributeError:  # pragma: no cover - an exception without a dict
        pass


def from_callback(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by a user callback: ``CallbackRaised``, or
    a ``BaseException`` a callback raised unwrapped."""
    return isinstance(exc, CallbackRaised) or getattr(exc, _FROM_CALLBACK, False)


def _lost_result(worker: Worker) -> LostResult:
    code = worker.returncode
    if code is None or code == -255:
        how = "ended"
        code = None
    elif code < 0:
        try:
            name = signal_module.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"was killed by {name}"
    else:
        how = f"exited with status {code}"
    return LostResult(
        f"worker {worker.pid} {how} without delivering a result "
        "(killed, crashed, os._exit, exec, SystemExit or KeyboardInterrupt)",
        pid=worker.pid,
        returncode=code,
    )

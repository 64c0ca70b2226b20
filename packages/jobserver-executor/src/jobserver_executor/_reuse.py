"""Worker-reuse mode of JobserverExecutor (``reuse_workers=True``).

Long-lived workers run many tasks each, as ``ProcessPoolExecutor``'s do, and
still share the Jobserver's slots by *running task*, not by process::

    submit(fn, *args)                                  any user thread
      |  pickle (fn, args, kwargs) here, in the caller's thread
      |  fast path: no pending work, an idle worker, a free token
      |     -> take the token, write the call down that worker's task pipe
      |  otherwise: queue it (FIFO) and wake the dispatcher
      v
    dispatcher thread                                  one per executor
      |  read results from the workers' result pipes (non-blocking)
      |  hand each freed token straight to the oldest pending call
      |  (spawn a worker, through the core, when none is idle)
      |  complete the cf.Futures, outside every lock
      |  sleep: one poll over the wake-up pipe, the result pipes, the
      v         core's own descriptors and (when a token is wanted) the pool

Slot invariant: a token is taken from the pool for each *task* when it is
handed to a worker, held in the executor's ledger while the task runs, and
handed on or given back when its result (or its worker's death) has been
processed.  Workers are launched by the core with ``consume=0``: an idle
worker holds no slot.  So the executor's running tasks never exceed the
tokens it holds, and busy work across the executor, direct submissions to
the same Jobserver, nested work and other processes never exceeds N.

Workers are core submissions (``Jobserver.submit(_serve, consume=0)``), so
they get everything the core gives a worker: the fastest launch for the
start method (a fork, or a fork of the core's pre-warmed template for
spawn/forkserver), the handle's environment revisions and preexec (applied
once per worker), its launch gate (consulted per worker start), signal
masks, nested-work draining, and a reaped exit status when one dies.  Only
the dispatcher thread calls into the core; user threads touch the slot pool
(one non-blocking read of a token) and a worker's task pipe, under locks of
the executor.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import os
import pickle
import signal
import struct
import threading
import weakref
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from jobserver import (
    Blocked,
    CallbackRaised,
    Jobserver,
    LostResult,
    _launch,
    _slots,
    _wire,
)
from jobserver._signals import DeferSignals

from . import _executor as _ex
from ._errors import BrokenJobserverExecutor, InitializerFailed, WorkerLost

_Future = concurrent.futures.Future
logger = _ex.logger

#: Frame of a call on a task pipe: the length of the pickle that follows.
_CALL = struct.Struct("!Q")
_PREFIX = _wire.PREFIX
_READ_SIZE = 1 << 16
#: Flag on a result's kind: the worker ends after this message.
_LAST = 0x80


# --- the worker side ------------------------------------------------------------


class _Fd:
    """A descriptor handed to a worker: inherited as is under fork, passed
    along with the work under spawn/forkserver."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_launch.fd_from_parent, (_launch.share_fd_with_child(self.fd),))


def _as_fd(ref: Any) -> int:
    return ref.fd if isinstance(ref, _Fd) else int(ref)


#: In a worker: its own pipe descriptors, closed in any process it forks.
_own_fds: list[int] = []


def _close_own_fds() -> None:  # pragma: no cover - forked grandchildren
    fds = list(_own_fds)
    _own_fds.clear()
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_own_fds)


#: In a worker: the executor's slot pool, inherited when the worker started.
_inherited_pool: Any = None


def _task_pool() -> Any:
    """In a worker: a pool of its own on the executor's slots, for a
    ``Jobserver`` that came with a call (closed with that Jobserver)."""
    pool = _inherited_pool
    if pool is None:  # pragma: no cover - the parent never sends one then
        raise RuntimeError("this worker was started without the executor's slots")
    read_fd = os.dup(pool.read_fd)
    try:
        write_fd = os.dup(pool.write_fd)
    except BaseException:
        os.close(read_fd)
        raise
    child_state = getattr(pool, "_child_state", None)
    extra = () if child_state is None else (child_state(),)
    return _slots._rebuild_pool(type(pool), read_fd, write_fd, pool.size, *extra)


def _pool_types() -> dict[type, Any]:
    types: list[type] = [_slots.SlotPool]
    index = 0
    while index < len(types):
        types.extend(types[index].__subclasses__())
        index += 1
    return dict.fromkeys(types)


def _dumps_with_pool(obj: Any, pool: Any) -> bytes:
    """Pickle ``obj``, sending slot pools on ``pool``'s pipe as a reference to
    the pool every worker inherited (a running worker cannot receive new
    descriptors through a pickle)."""

    def reduce_pool(candidate: Any) -> Any:
        if not candidate.closed and _slots.same_pipe(candidate.read_fd, pool.read_fd):
            return (_task_pool, ())
        return candidate.__reduce__()  # the core's own error

    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = dict.fromkeys(_pool_types(), reduce_pool)
    pickler.dump(obj)
    return buffer.getvalue()


def _close_inherited_write_ends(keep: set[int]) -> None:  # pragma: no cover
    """In a forked worker: close the write ends of pipes and FIFOs it inherited.

    A long-lived worker would otherwise keep them open for its whole life,
    and whoever reads such a pipe would never see end-of-file: the result
    pipe of a worker another thread was launching at that instant, a
    subprocess's stdin, a FIFO used as a gate.  Kept: the standard streams,
    this worker's own pipes and slot pool, the core's result pipe,
    multiprocessing's resource tracker, and whatever ``keep`` lists (the
    descriptors the initializer's arguments carry).
    """
    import fcntl
    import stat
    from multiprocessing import resource_tracker

    keep = set(keep)
    keep.update((0, 1, 2))
    own = getattr(_launch, "_own_result_fd", None)
    if own is not None:
        keep.add(own)
    pool = _inherited_pool
    if pool is not None:
        keep.update((pool.read_fd, pool.write_fd))
    tracker_fd = getattr(resource_tracker._resource_tracker, "_fd", None)
    if isinstance(tracker_fd, int):
        keep.add(tracker_fd)
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            fds = [int(name) for name in os.listdir(directory)]
        except (OSError, ValueError):
            continue
        break
    else:
        return
    for fd in fds:
        if fd in keep:
            continue
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY:
                continue
            os.close(fd)
        except OSError:
            continue


class _FdCollector:
    """Stands in for a spawning Popen: records the descriptors
    ``multiprocessing``'s reducers would pass to a spawned child."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def DupFd(self, fd: int) -> Any:
        return fd


def _descriptors_of(obj: Any) -> tuple[int, ...]:
    """The descriptors ``obj`` would carry to a spawned child (best effort):
    what a forked worker must keep open for its initializer's arguments."""
    from multiprocessing import context, reduction

    collector = _FdCollector()
    previous = context.get_spawning_popen()
    context.set_spawning_popen(collector)
    try:
        reduction.ForkingPickler.dumps(obj)
    except Exception:
        pass  # what was recorded before the failure still counts
    finally:
        context.set_spawning_popen(previous)
    return tuple(collector.fds)


def _read_call(fd: int, buffer: bytearray) -> bytes | None:
    """The next call on a (blocking) task pipe; ``None`` at end-of-file."""
    while True:
        if len(buffer) >= _CALL.size:
            (size,) = _CALL.unpack_from(buffer)
            end = _CALL.size + size
            if len(buffer) >= end:
                payload = bytes(buffer[_CALL.size : end])
                del buffer[:end]
                return payload
        chunk = os.read(fd, _READ_SIZE)
        if not chunk:
            return None
        buffer += chunk


def _serve(
    task_ref: Any,
    result_ref: Any,
    pool: Any,
    keep: tuple[int, ...] | None,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    max_tasks: int | None,
) -> None:  # pragma: no cover - runs in workers
    """A reused worker: run calls from the task pipe until end-of-file.

    Each result (or exception, with its traceback) goes down the result pipe
    in the core's result framing.  A task that ends the process's normal
    flow (``SystemExit``, ``os._exit``, a signal) ends the worker: the parent
    fails that one task with ``WorkerLost`` and starts another worker.
    """
    global _inherited_pool
    _inherited_pool = pool
    task_fd = _as_fd(task_ref)
    result_fd = _as_fd(result_ref)
    if keep is not None:
        _close_inherited_write_ends({task_fd, result_fd, *keep})
    _own_fds[:] = [task_fd, result_fd]
    os.set_blocking(task_fd, True)
    os.set_blocking(result_fd, True)
    failed: InitializerFailed | None = None
    if initializer is not None:
        try:
            try:
                initializer(*initargs)
            except Exception as exc:
                name = getattr(initializer, "__qualname__", repr(initializer))
                raise InitializerFailed(
                    f"the executor's initializer {name} raised "
                    f"{type(exc).__name__}: {exc}; the task did not run"
                ) from exc
        except InitializerFailed as exc:
            failed = exc
    buffer = bytearray()
    done = 0
    while max_tasks is None or done < max_tasks:
        payload = _read_call(task_fd, buffer)
        if payload is None:
            return
        if failed is not None:
            # The call that was waiting for this worker fails; the worker
            # ends, and the next call gets a fresh one (and initializer).
            parts = _wire.encode_exception(failed)
            kind, note_len, body_len = _PREFIX.unpack(parts[0])
            parts[0] = _PREFIX.pack(kind | _LAST, note_len, body_len)
            _wire.write_all(result_fd, parts)
            return
        parts = _run_call(payload)
        del payload
        _wire.write_all(result_fd, parts)
        del parts
        done += 1
        _launch.drain_nested_work()


def _run_call(payload: bytes) -> list[bytes]:  # pragma: no cover - in workers
    try:
        try:
            fn, args, kwargs = pickle.loads(payload)
        except Exception as exc:
            # ProcessPoolExecutor's pool breaks here; only this call fails.
            raise BrokenProcessPool(
                "the task's callable or arguments could not be rebuilt in the "
                f"worker: {type(exc).__name__}: {exc}"
            ) from exc
        value = fn(*args, **kwargs)
    except Exception as exc:
        parts = _wire.encode_exception(exc)
        exc.__traceback__ = None
        return parts
    return _wire.encode_value(value)


# --- the parent side --------------------------------------------------------------


class _Item:
    """One submission: its future and its pickled call."""

    __slots__ = ("future", "payload", "work_id")

    def __init__(self, work_id: int, future: _Future[Any], payload: bytes) -> None:
        self.work_id = work_id
        self.future = future
        self.payload = payload


class _Worker:
    """The parent's side of one reused worker."""

    __slots__ = (
        "buffer",
        "closed",
        "core",
        "done",
        "eof",
        "item",
        "result_fd",
        "retiring",
        "send_lock",
        "task_fd",
    )

    def __init__(self, task_fd: int, result_fd: int) -> None:
        self.task_fd = task_fd
        self.result_fd = result_fd
        self.core: Any = None
        self.item: _Item | None = None
        self.done = 0
        self.retiring = False
        self.eof = False
        self.closed = False
        self.buffer = bytearray()
        self.send_lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        worker = getattr(self.core, "_worker", None)
        return getattr(worker, "pid", None)

    def send(self, payload: bytes) -> None:
        """Write one call (any thread); a dead worker is left to the exit path."""
        with self.send_lock:
            if self.closed:
                return
            try:
                _wire.write_all(self.task_fd, [_CALL.pack(len(payload)), payload])
            except OSError:
                pass  # it died: its exit fails the call with WorkerLost

    def ended(self) -> bool:
        """Whether its result pipe reached end-of-file."""
        return self.eof

    def close_task_pipe(self) -> None:
        # Flag and close as one step: an interrupt between them would leave
        # the pipe open for good (flagged closed) or close it twice.
        with DeferSignals(), self.send_lock:
            if self.closed:
                return
            self.closed = True
            os.close(self.task_fd)

    def read_messages(self) -> list[tuple[int, str, memoryview]] | None:
        """Complete messages now in the result pipe (``None``: end-of-file)."""
        buffer = self.buffer
        at_eof = False
        while True:
            try:
                chunk = os.read(self.result_fd, _READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                at_eof = True
                break
            buffer += chunk
            if len(chunk) < _READ_SIZE:
                break
        messages = []
        start = 0
        while len(buffer) - start >= _PREFIX.size:
            kind, note_len, body_len = _PREFIX.unpack_from(buffer, start)
            end = start + _PREFIX.size + note_len + body_len
            if end > len(buffer):
                break
            note_start = start + _PREFIX.size
            note = bytes(buffer[note_start : note_start + note_len]).decode(
                "utf-8", "replace"
            )
            body = memoryview(bytes(buffer[note_start + note_len : end]))
            if kind & _LAST:
                self.retiring = True
                kind &= ~_LAST
            messages.append((kind, note, body))
            start = end
        if start:
            del buffer[:start]
        if at_eof:
            self.eof = True
            if not messages:
                return None
        return messages


def _exit_error(worker: _Worker, outcome: BaseException | None) -> Exception:
    """The ``WorkerLost`` for the call a worker was running when it ended."""
    if isinstance(outcome, LostResult):
        error = _ex._task_error(outcome)
        if isinstance(error, WorkerLost):
            return error
    pid = worker.pid
    lost = WorkerLost(
        f"worker {pid} ended without delivering a result"
        + ("" if outcome is None else f" ({type(outcome).__name__}: {outcome})"),
        pid=pid,
        returncode=getattr(outcome, "returncode", None),
    )
    lost.__cause__ = outcome
    return lost


class _ReuseDispatcher(_ex._WakeableDispatcher):
    """State of a reusing executor and the thread that drives it."""

    def __init__(
        self,
        handle: Jobserver,
        scoped: bool,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        max_tasks_per_child: int | None,
    ) -> None:
        if getattr(handle, "_time_limit", None) is not None:
            raise ValueError(
                "reuse_workers=True cannot honour the Jobserver's time limit "
                "(replace_time_limit), which bounds a whole worker process; "
                "use the default fresh-process mode for time-limited tasks"
            )
        self.handle = handle
        self.pid = os.getpid()
        self._scoped = scoped
        self._initializer = initializer
        self._initargs = initargs
        self._max_tasks = max_tasks_per_child
        self._fork = handle.context.get_start_method() == "fork"
        self._initializer_fds: tuple[int, ...] = ()
        if self._fork and initializer is not None:
            self._initializer_fds = _descriptors_of((initializer, initargs))
        pool = handle._resources.pool
        self._pool = pool
        size = pool.size if pool.size else (os.cpu_count() or 1)
        self._max_workers = max(1, size)
        if scoped:
            handle.__enter__()
        self._lock = threading.Lock()
        self._ledger: collections.deque[bytes] = collections.deque()
        self._busy = 0
        self._pending: collections.OrderedDict[int, _Item] = collections.OrderedDict()
        self._ids = 0
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._exited: collections.deque[_Worker] = collections.deque()
        self._init_wakeup()

    # --- called from user threads ------------------------------------------------

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> _Future[Any]:
        self._check_owner()
        future: _Future[Any] = _Future()
        error: Exception | None = None
        try:
            payload = pickle.dumps((fn, args, kwargs), pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            payload = b""
            error = exc
        if error is not None:
            # A Jobserver on the executor's own slots may travel (by
            # reference to the pool the workers inherited); then retry.
            try:
                payload = _dumps_with_pool((fn, args, kwargs), self._pool)
            except Exception:
                pass
            else:
                error = None
        if error is not None:
            with self._lock:
                self._check_accepting_locked()
            future.set_running_or_notify_cancel()
            future.set_exception(error)
            return future
        # Fast path: straight to an idle worker from this thread.  A worker
        # taken from the idle list must get the whole call, or end-of-file:
        # an interrupt (a signal handler raising in this thread) after
        # taking it, or halfway through the call, would leave it busy for
        # good, waiting for the rest of a frame.  So it is taken with
        # signals deferred, and on any exception from then on it is retired
        # and its task pipe closed: it exits (after the call, if the call got
        # through whole), and its exit frees its slot, failing the call with
        # WorkerLost if it did not, as any worker death does.
        # (Deferring signals costs two system calls: only when the unlocked
        # peek says an idle worker may be there; the lock decides.)
        worker: _Worker | None = None
        try:
            if not self._pending and self._idle:
                with DeferSignals(), self._lock:
                    self._check_accepting_locked()
                    if not self._pending and self._idle and self._take_token_locked():
                        self._ids += 1
                        worker = self._idle.pop()
                        worker.item = _Item(self._ids, future, payload)
                        self._busy += 1
            if worker is not None:
                future.set_running_or_notify_cancel()
                worker.send(payload)
                return future
        except BaseException:
            while worker is not None and not worker.closed:
                try:
                    worker.retiring = True  # no more calls for it
                    worker.close_task_pipe()
                except BaseException:  # interrupted at its entry: again
                    pass
            raise
        # Otherwise the dispatcher launches it (not with signals deferred:
        # the dispatcher thread, started here, would inherit the mask, and
        # so would every worker it forks).
        with self._lock:
            self._check_accepting_locked()
            self._ids += 1
            item = _Item(self._ids, future, payload)
            future.add_done_callback(self._make_cancel_hook(item.work_id))
            if self._thread is None:
                self._start_thread()
            # The wake-up first, then the queueing (_Dispatcher.submit).
            self._wake_locked()
            self._pending[item.work_id] = item
        return future

    def _check_accepting_locked(self) -> None:
        if self._broken is not None:
            raise BrokenJobserverExecutor(str(self._broken))
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _ex._interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _take_token_locked(self) -> bool:
        """A token for one more running task (spare ones first)."""
        if len(self._ledger) > self._busy:
            return True
        return self._pool.take(self._ledger)

    def _make_cancel_hook(self, work_id: int) -> Callable[[_Future[Any]], None]:
        ref = weakref.ref(self)

        def hook(future: _Future[Any]) -> None:
            dispatcher = ref()
            if dispatcher is not None and future.cancelled():
                with dispatcher._lock:
                    item = dispatcher._pending.pop(work_id, None)
                if item is not None:
                    _ex._notify_cancelled(future)

        return hook

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        if os.getpid() != self.pid:
            return
        with self._lock:
            self._shutdown = True
            dropped: list[_Item] = []
            if cancel_futures:
                self._cancel_pending = True
                dropped = list(self._pending.values())
                self._pending.clear()
            thread = self._thread
            self._wake_locked()
        for item in dropped:
            if item.future.cancel():
                _ex._notify_cancelled(item.future)
        if thread is None:
            self._release()
        elif wait and thread is not threading.current_thread():
            thread.join()

    def counts(self) -> tuple[int, int]:
        return len(self._pending), self._busy

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
        _ex._DISPATCHERS.add(self)

    # --- the dispatcher thread -----------------------------------------------------

    def _main(self) -> None:
        logger.debug("reusing dispatcher started on %r", self.handle)
        try:
            self._loop()
        except BaseException as exc:
            self._break(exc)
        finally:
            self._release()
            logger.debug("reusing dispatcher stopped")

    def _loop(self) -> None:
        gate_delay = 0.0
        while True:
            self._drain_wakeups()
            if self._signals:
                self._send_signals()
            settled = self._collect()
            want_pool, gated = self._fill()
            self._reconcile()
            self._settle_all(settled)
            if self._exited:
                self._handle_exits()
                continue
            gate_delay = (
                min(max(gate_delay * 2, _ex._GATE_RETRY_MIN), _ex._GATE_RETRY_MAX)
                if gated
                else 0.0
            )
            with self._lock:
                pending = bool(self._pending)
                stopping = self._shutdown or _ex._interpreter_exiting
            if stopping and not pending and not self._busy:
                if not self._workers:
                    return
                for worker in self._workers:
                    worker.close_task_pipe()  # end-of-file: the worker returns
            if settled:
                continue  # callbacks may have submitted or cancelled
            fds = [self._wake_r]
            fds.extend(w.result_fd for w in self._workers if not w.eof)
            try:
                self.handle._resources.wait_events(
                    gate_delay if gated else None,
                    include_pool=want_pool,
                    extra_fds=fds,
                )
            except CallbackRaised as exc:  # pragma: no cover - ours never raise
                logger.warning("a core callback raised", exc_info=exc)

    def _collect(self) -> list[tuple[_Item, Any]]:
        """Read every result that arrived; free those workers (and tokens)."""
        settled: list[tuple[_Item, Any]] = []
        for worker in self._workers:
            if worker.eof:
                continue
            messages = worker.read_messages()
            if messages:
                self._accept(worker, messages, settled)
            if messages is None or worker.ended():
                # Gone (its exit is handled when the core has reaped it):
                # hand it no more calls.
                with self._lock:
                    if worker in self._idle:
                        self._idle.remove(worker)
        return settled

    def _accept(
        self,
        worker: _Worker,
        messages: list[tuple[int, str, memoryview]],
        settled: list[tuple[_Item, Any]],
    ) -> None:
        for message in messages:
            with self._lock:
                item, worker.item = worker.item, None
                if item is None:  # pragma: no cover - nothing was asked
                    logger.warning("an unexpected message from a worker")
                    continue
                self._busy -= 1
                worker.done += 1
                if self._max_tasks is not None and worker.done >= self._max_tasks:
                    worker.retiring = True  # it ends by itself after this
                elif not worker.eof and not worker.retiring:
                    self._idle.append(worker)
            settled.append((item, message))

    def _fill(self) -> tuple[bool, bool]:
        """Hand pending calls to workers, oldest first.

        Returns ``(want_pool, gated)``: wait for a token to come free, or
        retry a worker start that a launch gate refused.
        """
        while True:
            with self._lock:
                if not self._pending:
                    return False, False
                worker = self._idle.pop() if self._idle else None
                if worker is None and len(self._workers) >= self._max_workers:
                    return False, False  # a busy worker will come free
                if not self._take_token_locked():
                    if worker is not None:
                        self._idle.append(worker)
                    return True, False
            if worker is None:
                try:
                    worker = self._spawn()
                except Blocked:
                    # The launch gate refused: no token waits for it meanwhile.
                    with self._lock:
                        while len(self._ledger) > self._busy:
                            self._pool.give(self._ledger)
                    return False, True
                except Exception as exc:
                    self._fail_oldest(exc)
                    continue
            with self._lock:
                if not self._pending:
                    self._idle.append(worker)
                    continue
                _, item = self._pending.popitem(last=False)
                worker.item = item
                self._busy += 1
            if not item.future.set_running_or_notify_cancel():
                with self._lock:
                    worker.item = None
                    self._busy -= 1
                    self._idle.append(worker)
                continue
            worker.send(item.payload)

    def _reconcile(self) -> None:
        """With nothing pending, spare tokens go back to the pool, before the
        results that freed them are delivered (as the core gives a slot back
        before a Future's callbacks run)."""
        with self._lock:
            if self._pending:
                return
            while len(self._ledger) > self._busy and not self._pool.closed:
                self._pool.give(self._ledger)

    def _spawn(self) -> _Worker:
        """Start one worker through the core; it holds no slot while idle."""
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        worker = _Worker(task_w, result_r)
        try:
            os.set_blocking(result_r, False)
            keep: tuple[int, ...] | None = None
            if self._fork:
                keep = self._initializer_fds
            worker.core = self.handle.submit(
                _serve,
                args=(
                    task_r if self._fork else _Fd(task_r),
                    result_w if self._fork else _Fd(result_w),
                    self._pool,
                    keep,
                    self._initializer,
                    self._initargs,
                    self._max_tasks,
                ),
                consume=0,
                timeout=0,
            )
        except BaseException:
            for fd in (task_w, result_r):
                os.close(fd)
            raise
        finally:
            os.close(task_r)
            os.close(result_w)
        worker.core.when_done(self._core_exited, worker)
        self._workers.append(worker)
        return worker

    def _fail_oldest(self, exc: Exception) -> None:
        """A worker could not be started: fail the call that wanted it."""
        with self._lock:
            if not self._pending:
                return
            _, item = self._pending.popitem(last=False)
        if item.future.set_running_or_notify_cancel():
            _ex._settle(item.future, exception=_ex._submit_error(exc))

    def _core_exited(self, worker: _Worker) -> None:
        """Core callback: a worker process was reaped."""
        self._exited.append(worker)

    def _handle_exits(self) -> None:
        settled: list[tuple[_Item, Any]] = []
        while self._exited:
            worker = self._exited.popleft()
            if not worker.eof:
                messages = worker.read_messages()
                if messages:
                    self._accept(worker, messages, settled)
            worker.eof = True
            with self._lock:
                if worker in self._workers:
                    self._workers.remove(worker)
                if worker in self._idle:
                    self._idle.remove(worker)
                item, worker.item = worker.item, None
                if item is not None:
                    self._busy -= 1
            worker.close_task_pipe()
            os.close(worker.result_fd)
            try:
                outcome: BaseException | None = None
                worker.core.result(0)
            except Exception as exc:
                outcome = exc
            if item is not None:
                settled.append((item, _exit_error(worker, outcome)))
            elif outcome is not None and not isinstance(outcome, LostResult):
                logger.warning("a reused worker failed: %s", outcome)
        self._fill()
        self._reconcile()
        self._settle_all(settled)

    def _settle_all(self, settled: list[tuple[_Item, Any]]) -> None:
        for item, outcome in settled:
            future = item.future
            item.payload = b""
            if isinstance(outcome, BaseException):
                _ex._settle(future, exception=outcome)
                continue
            try:
                ok, value = _wire.decode(outcome)
            except BaseException as exc:
                error = BrokenProcessPool(
                    f"rebuilding the result of a task in this process raised "
                    f"{type(exc).__name__}: {exc}"
                )
                error.__cause__ = exc
                _ex._settle(future, exception=error)
                continue
            if ok:
                _ex._settle(future, value=value)
            else:
                _ex._settle(future, exception=_ex._task_error(value))
            del value

    def _send_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            for worker in list(self._workers):
                if worker.core is not None:
                    worker.core.wait(0, signal=signum)

    # --- failure and teardown --------------------------------------------------------

    def _break(self, cause: BaseException) -> None:
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
            for worker in self._workers:
                if worker.item is not None:
                    items.append(worker.item)
                    worker.item = None
            self._busy = 0
            self._idle.clear()
        for item in items:
            error = BrokenJobserverExecutor(message)
            error.__cause__ = cause
            try:
                _ex._fail(item.future, error)
            except BaseException:
                logger.exception("failing a future after the dispatcher broke")
        for worker in self._workers:
            try:
                worker.close_task_pipe()
                if not worker.eof:
                    worker.eof = True
                    os.close(worker.result_fd)
                worker.core.wait(10, signal=signal.SIGKILL)
            except BaseException:
                logger.exception("stopping a worker after the dispatcher broke")
        self._workers.clear()

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            os.close(self._wake_r)
            os.close(self._wake_w)
            while self._ledger and not self._pool.closed:
                self._pool.give(self._ledger)
        if self._scoped:
            try:
                if self.handle._resources.tracked_count:  # pragma: no cover
                    logger.warning("workers still running; leaving them to the core")
                    return
                self.handle.__exit__(None, None, None)
            except BaseException:  # pragma: no cover - defensive
                logger.exception("releasing the executor's Jobserver failed")

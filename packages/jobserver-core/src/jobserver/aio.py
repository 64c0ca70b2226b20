"""asyncio support: await Futures and submit without threads.

Imported only on demand (``await future`` imports it lazily), so programs
that never use asyncio pay nothing for it.

How it works: the event loop watches the Future's own descriptors with
``loop.add_reader`` -- the result pipe while the worker runs, then its exit
descriptor (a pidfd, or the fork server's sentinel) until it is reaped --
and advances the Future's state machine from the reader callback.  No helper
thread is started.  While a descriptor is registered with the loop, the
Future counts the loop as a poller (``Future._pollers``), so no other thread
closes the descriptor under it (the invariant in ``_future``).

Public API:

* ``await future`` / ``await result(future, cancel_signal=None)``: the value
  or exception ``future.result()`` would give (``LostResult`` included).
* ``await submit(js, fn, args=..., kwargs=..., consume=1, timeout=None)``:
  waits for a slot (and a ``replace_sleep`` gate) without blocking the loop.
* ``await run(js, fn, *args, **kwargs)``: submit, then await the result.
* ``async for f in as_completed(futures)``: Futures in completion order.
* ``async for value in map_unordered(js, fn, argses, limit=None)``: results
  in completion order.

Cancelling a task that awaits a Future never leaks the worker: the loop keeps
watching it and reaps it (giving its slot back) when it ends.  By default the
worker is left to finish; ``result(future, cancel_signal=signal.SIGTERM)``
sends that signal to it on cancellation.
"""

from __future__ import annotations

import asyncio
import itertools
import select
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ._exceptions import Blocked
from ._future import (
    DONE,
    Future,
    check_gate_delay,
    check_timeout,
    deadline_of,
    remaining,
)
from ._signals import DeferSignals

if TYPE_CHECKING:
    from ._jobserver import Jobserver, _Resources

__all__ = ["as_completed", "map_unordered", "result", "run", "submit"]

T = TypeVar("T")

#: Poll interval when a state cannot be watched through a descriptor.
_POLL = 0.005


class _Hub:
    """Per-loop multiplexer: several watchers may want the same descriptor,
    but ``loop.add_reader`` keeps one callback per descriptor."""

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_loop",
        "_sentinel",
        "_tokens",
        "drivers",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        self._callbacks: dict[int, dict[int, Callable[[], None]]] = {}
        self._tokens = itertools.count()
        #: Drivers still watching a Future: detached when the loop shuts down.
        self.drivers: set[_Driver] = set()
        # An async generator started on this loop is closed by the loop's
        # shutdown_asyncgens() (asyncio.run, uvloop.run) before it closes:
        # the moment to stop watching, so that no Future keeps counting a
        # dead loop among its pollers (its descriptors would never close).
        self._sentinel = _until_shutdown(self)
        try:
            self._sentinel.asend(None).send(None)
        except StopIteration:
            pass

    def detach_all(self) -> None:
        for driver in list(self.drivers):
            driver.detach()

    def add(self, fd: int, callback: Callable[[], None]) -> int:
        loop = self._loop()
        assert loop is not None
        token = next(self._tokens)
        watchers = self._callbacks.get(fd)
        if watchers is None:
            watchers = self._callbacks[fd] = {}
            loop.add_reader(fd, self._fire, fd)
        watchers[token] = callback
        return token

    def remove(self, fd: int, token: int) -> None:
        watchers = self._callbacks.get(fd)
        if watchers is None or watchers.pop(token, None) is None:
            return
        if not watchers:
            del self._callbacks[fd]
            loop = self._loop()
            if loop is not None and not loop.is_closed():
                loop.remove_reader(fd)

    def _fire(self, fd: int) -> None:
        for callback in list(self._callbacks.get(fd, {}).values()):
            callback()


async def _until_shutdown(hub: _Hub) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        hub.detach_all()


_HUBS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Hub] = (
    weakref.WeakKeyDictionary()
)


def _hub(loop: asyncio.AbstractEventLoop) -> _Hub:
    hub = _HUBS.get(loop)
    if hub is None:
        with DeferSignals():  # made, its sentinel started, and recorded, whole
            hub = _HUBS[loop] = _Hub(loop)
    return hub


class _Driver:
    """Advances one Future to DONE from one loop's reader callbacks."""

    __slots__ = ("_alarm", "_fd", "_timer", "_token", "future", "loop", "waiter")

    def __init__(self, future: Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.future = future
        self.loop = loop
        self.waiter: asyncio.Future[None] = loop.create_future()
        self._fd: int | None = None
        self._token = 0
        self._timer: asyncio.TimerHandle | None = None
        self._alarm: asyncio.TimerHandle | None = None  # next time-limit signal
        self._step()

    # Signals are deferred wherever the driver changes what it watches.
    # Under asyncio.run a second Ctrl-C raises KeyboardInterrupt wherever the
    # loop happens to be (and a plain SIGINT handler does so under any loop):
    # between counting itself a poller and recording the descriptor it
    # watches, or between either and being listed among the hub's drivers,
    # it would leave the Future counting a poller nobody ever removes, and
    # its descriptors open for good.  Each step below is whole or not begun;
    # the interrupt surfaces when the step is done.

    def detach(self) -> None:
        """Stop watching for good (the loop is shutting down).  The Future
        stays tracked by its Jobserver, which reaps it on its next wait."""
        future = self.future
        with DeferSignals():
            with future._lock:
                self._unregister()
            _hub(self.loop).drivers.discard(self)
            if _DRIVERS.get(future) is self:
                del _DRIVERS[future]

    def _unregister(self) -> None:
        """Stop watching (call with the Future's lock held)."""
        future = self.future
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None
        if self._fd is not None:
            _hub(self.loop).remove(self._fd, self._token)
            self._fd = None
            future._pollers -= 1
            if future._pollers == 0 and future._close_pending:
                future._close_fds()

    def _step(self) -> None:
        future = self.future
        if future._limit is not None:
            future._check_time_limit()  # signals the worker if a limit ran out
        with DeferSignals():
            hub = _hub(self.loop)
            with future._lock:
                self._unregister()
                future._advance()
                done = future._state is DONE
                if not done:
                    fd = future._wait_fd()
                    if fd is None or fd < 0:
                        self._timer = self.loop.call_later(_POLL, self._step)
                    else:
                        self._token = hub.add(fd, self._step)
                        self._fd = fd
                        future._pollers += 1
                    due = future._next_enforcement()
                    if due is not None:
                        delay = max(0.0, due - time.monotonic())
                        self._alarm = self.loop.call_later(delay, self._step)
            if done:
                hub.drivers.discard(self)
                if _DRIVERS.get(future) is self:
                    del _DRIVERS[future]
                if not self.waiter.done():
                    self.waiter.set_result(None)
            else:
                hub.drivers.add(self)  # so that the loop's shutdown detaches it


_DRIVERS: dict[Future[Any], _Driver] = {}


def _driver(future: Future[Any]) -> _Driver:
    loop = asyncio.get_running_loop()
    driver = _DRIVERS.get(future)
    if driver is None or driver.loop is not loop or loop.is_closed():
        future._check_process()
        with DeferSignals():  # a driver made is a driver recorded
            driver = _Driver(future, loop)
            if not driver.waiter.done():
                _DRIVERS[future] = driver
    return driver


async def result(future: Future[T], *, cancel_signal: int | None = None) -> T:
    """Await ``future`` on the running loop; give what ``future.result()``
    would (its value, the worker's exception, ``LostResult``,
    ``CallbackRaised`` from a callback).

    If the awaiting task is cancelled, the worker is left running unless
    ``cancel_signal`` is given (``signal.SIGTERM``, ``signal.SIGKILL``), in
    which case that signal is sent to it.  Either way the loop keeps watching
    the worker and reaps it (giving its slot back) once it has ended.
    """
    if not isinstance(future, Future):
        raise TypeError(f"expected a jobserver.Future, not {type(future).__name__}")
    driver = _driver(future)
    try:
        await asyncio.shield(driver.waiter)
    except asyncio.CancelledError:
        if cancel_signal is not None:
            future._send_signal(cancel_signal)
        raise
    return future.result(0)


class _PoolWatch:
    """A private descriptor that is readable when the slot pool may have a
    token.  An epoll instance over the pool's read end, so the loop never
    touches an inherited descriptor (some loops set O_NONBLOCK on what they
    watch, which would change Make's descriptor too).  ``None`` where epoll
    does not exist: then the caller polls."""

    __slots__ = ("epoll",)

    def __init__(self, pool_fd: int) -> None:
        self.epoll: Any = None
        if hasattr(select, "epoll") and pool_fd >= 0:
            self.epoll = select.epoll()
            self.epoll.register(pool_fd, select.EPOLLIN)

    def close(self) -> None:
        if self.epoll is not None:
            self.epoll.close()


async def _readable(fds: list[int], timeout: float | None) -> None:
    """Wait until one of ``fds`` is readable or ``timeout`` passes."""
    loop = asyncio.get_running_loop()
    hub = _hub(loop)
    wake: asyncio.Future[None] = loop.create_future()

    def fire() -> None:
        if not wake.done():
            wake.set_result(None)

    with DeferSignals():  # registered whole, and unregistered whole below
        tokens = [(fd, hub.add(fd, fire)) for fd in fds]
        timer = None if timeout is None else loop.call_later(timeout, fire)
    try:
        await wake
    finally:
        # An interrupt as the deferral begins undoes nothing: try again, and
        # raise it once the callbacks are gone (as Future._settle does).
        interrupted: BaseException | None = None
        while True:
            try:
                with DeferSignals():
                    while tokens:
                        hub.remove(*tokens.pop())
                    if timer is not None:
                        timer.cancel()
                break
            except BaseException as exc:
                if not tokens:
                    raise
                interrupted = exc
        if interrupted is not None:
            raise interrupted


async def submit(
    js: Jobserver,
    fn: Callable[..., T],
    /,
    *,
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    consume: int = 1,
    timeout: float | None = None,
) -> Future[T]:
    """``js.submit(...)`` that waits for a slot without blocking the loop.

    Slots may come from this process's pool, a gate (``replace_sleep``) or a
    GNU Make parent; the loop wakes when the pool may have a token or when
    tracked work may have finished.  ``timeout`` bounds the whole wait
    (``Blocked``), as for ``Jobserver.submit``.  A cancelled ``submit``
    holds no slot.
    """
    from ._jobserver import _as_args, _as_kwargs, _check_callable, _check_consume

    _check_callable(fn, "fn")
    call_args = _as_args(args, "args")
    call_kwargs = _as_kwargs(kwargs, "kwargs")
    consume = _check_consume(consume)
    deadline = deadline_of(check_timeout(timeout))
    resources = js._resources
    resources.check_usable()
    _check_consume(consume, resources.pool.size)
    work = js._work(fn, call_args, call_kwargs)
    watch: _PoolWatch | None = None
    try:
        while True:
            resources.reclaim()
            left = remaining(deadline)
            gate = js._sleep
            delay = None if gate is None else check_gate_delay(gate())
            if delay is not None:
                if left is not None and delay >= left:
                    raise Blocked("the launch gate kept refusing until the timeout")
                await _sleep_reclaiming(resources, delay)
                continue
            try:
                future: Future[T] = resources.launch(
                    work, consume, time.monotonic(), js._time_limit
                )
            except Blocked:
                pass
            else:
                return future
            left = remaining(deadline)
            if left is not None and left <= 0:
                raise Blocked(
                    "no free slot in time"
                    if consume <= 1
                    else f"{consume} slots were not free at once in time"
                )
            if watch is None:
                watch = _PoolWatch(resources.pool.read_fd)
            fds = list(resources.watched_fds())
            wait = left
            if watch.epoll is not None:
                fds.append(watch.epoll.fileno())
            else:
                wait = _POLL if wait is None else min(wait, _POLL)
            if resources._lingering or consume > 1:
                wait = _POLL if wait is None else min(wait, _POLL)
            await _readable(fds, wait)
    finally:
        if watch is not None:
            watch.close()


async def _sleep_reclaiming(resources: _Resources, delay: float) -> None:
    fds = list(resources.watched_fds())
    end = time.monotonic() + delay
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        await _readable(fds, left)
        resources.reclaim()


async def run(js: Jobserver, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Submit ``fn(*args, **kwargs)`` (waiting for a slot) and await its
    result."""
    future = await submit(js, fn, args=args, kwargs=kwargs)
    return await result(future)


async def as_completed(futures: Iterable[Future[Any]]) -> AsyncIterator[Future[Any]]:
    """Yield each of ``futures`` once it is done, in completion order.

    ``f.result()`` on a yielded Future returns (or raises) at once.
    """
    pending = list(dict.fromkeys(futures))
    waiters: dict[asyncio.Future[None], Future[Any]] = {}
    for future in pending:
        waiters[_driver(future).waiter] = future
    while waiters:
        finished, _ = await asyncio.wait(
            list(waiters),
            return_when=asyncio.FIRST_COMPLETED,
        )
        for waiter in finished:
            yield waiters.pop(waiter)


async def map_unordered(
    js: Jobserver,
    fn: Callable[..., T],
    argses: Iterable[Iterable[Any]],
    *,
    limit: int | None = None,
) -> AsyncIterator[T]:
    """Run ``fn(*args)`` for each of ``argses``; yield results as they come.

    Inputs are consumed lazily; at most ``limit`` submissions are outstanding
    (default: as many as the slots allow).  An exception from a task is
    raised from the iterator; work already submitted keeps running and is
    reaped by the loop.
    """
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
    ):
        raise ValueError(f"limit must be None or an int >= 1, not {limit!r}")
    inputs = iter(argses)
    outstanding: dict[asyncio.Future[None], Future[Any]] = {}
    exhausted = False
    while True:
        while not exhausted and (limit is None or len(outstanding) < limit):
            if outstanding and not _slot_likely(js):
                break
            args = next(inputs, None)
            if args is None:
                exhausted = True
                break
            future = await submit(js, fn, args=args)
            outstanding[_driver(future).waiter] = future
        if not outstanding:
            return
        finished, _ = await asyncio.wait(
            list(outstanding), return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in finished:
            yield outstanding.pop(waiter).result(0)


def _slot_likely(js: Jobserver) -> bool:
    """Whether a submission might get a slot now (cheap; may be wrong)."""
    resources = js._resources
    fd = resources.pool.read_fd
    if fd < 0:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # pragma: no cover - defensive
        return True

"""Progress for long runs: a bar driven by completion callbacks.

``Progress`` counts finished submissions -- done (a value), failed (the task
raised, including ``TimeLimitExceeded``) and lost (``LostResult``: the worker
died) -- and advances a bar as each one finishes, from the Future's
``when_done`` callback.  The bar is any object with ``update(n)`` (and,
optionally, ``set_postfix(**counts)``, ``refresh()`` and ``close()``): a
``tqdm`` bar, a ``rich`` adapter, a test double.  Without one, ``Progress``
makes a ``tqdm`` bar if ``tqdm`` is installed (imported only then) and a
plain text counter otherwise.  The core never imports this module.

::

    from jobserver import Jobserver
    from jobserver_extras.progress import Progress

    with Jobserver() as js, Progress(total=len(inputs), desc="render") as p:
        for value in p.map(js, render, [(x,) for x in inputs]):
            ...

Callbacks run on whichever thread observes a completion (see
``Future.when_done``); the counters are guarded by a lock.
"""

from __future__ import annotations

import collections
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Protocol, TextIO, TypeVar

from jobserver import Future, Jobserver, LostResult

__all__ = ["Bar", "PlainCounter", "Progress", "make_bar"]

T = TypeVar("T")


class Bar(Protocol):
    """What ``Progress`` needs of a bar (``tqdm.tqdm`` has it)."""

    def update(self, n: int = 1) -> Any: ...


class PlainCounter:
    """A one-line text counter, for when ``tqdm`` is not installed."""

    def __init__(
        self,
        total: int | None = None,
        desc: str | None = None,
        file: TextIO | None = None,
    ) -> None:
        self.total = total
        self.desc = desc
        self.n = 0
        self.file = file if file is not None else sys.stderr
        self._postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        self._draw()

    def set_postfix(self, refresh: bool = True, **counts: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in counts.items())

    def _draw(self) -> None:
        head = f"{self.desc}: " if self.desc else ""
        of = f"/{self.total}" if self.total is not None else ""
        tail = f" [{self._postfix}]" if self._postfix else ""
        self.file.write(f"\r{head}{self.n}{of}{tail}")
        self.file.flush()

    def close(self) -> None:
        self._draw()
        self.file.write("\n")
        self.file.flush()


def make_bar(total: int | None = None, desc: str | None = None) -> Any:
    """A ``tqdm`` bar if ``tqdm`` is installed, else a ``PlainCounter``."""
    try:
        from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return PlainCounter(total, desc)
    return tqdm(total=total, desc=desc, unit="task")


class Progress:
    """Counts finished Futures and advances ``bar`` as each one finishes.

    ``bar``: any object with ``update(n)`` (``None``: ``make_bar(total,
    desc)``).  ``done``, ``failed`` and ``lost`` count the outcomes so far;
    the bar's postfix shows them when it has ``set_postfix``.  Use as a
    context manager (or call ``close``) to close the bar.
    """

    def __init__(
        self,
        bar: Any = None,
        *,
        total: int | None = None,
        desc: str | None = None,
    ) -> None:
        if bar is not None and not callable(getattr(bar, "update", None)):
            raise TypeError("bar must have an update(n) method")
        self.bar = bar if bar is not None else make_bar(total, desc)
        self.done = 0
        self.failed = 0
        self.lost = 0
        self._lock = threading.Lock()

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.lost

    def track(self, future: Future[T]) -> Future[T]:
        """Count ``future`` when it finishes; returns it, for chaining."""
        future.when_done(self._finished, future)
        return future

    def _finished(self, future: Future[Any]) -> None:
        try:
            future.result(0)
        except LostResult:
            kind = "lost"
        except Exception:
            kind = "failed"
        else:
            kind = "done"
        with self._lock:
            setattr(self, kind, getattr(self, kind) + 1)
            counts = {"done": self.done, "failed": self.failed, "lost": self.lost}
            set_postfix = getattr(self.bar, "set_postfix", None)
            if set_postfix is not None:
                set_postfix(**counts)  # first, so update() draws the new counts
            self.bar.update(1)

    def map(
        self,
        js: Jobserver,
        fn: Callable[..., T],
        argses: Iterable[Iterable[Any]],
        *,
        buffersize: int | None = None,
        poll: float = 0.1,
    ) -> Iterator[T]:
        """Like ``js.map(fn, argses)`` (results in input order; a task's
        exception is raised from the iterator), but every submission is
        tracked, so the bar moves in completion order.

        ``buffersize`` bounds outstanding submissions (default: all of
        them).  While it waits for the next result in order, finished work
        is reclaimed every ``poll`` seconds so that callbacks, and so the
        bar, do not wait for that one result.
        """
        if buffersize is not None and (
            isinstance(buffersize, bool) or not isinstance(buffersize, int)
        ):
            raise TypeError("buffersize must be None or an int")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be >= 1")
        inputs = iter(argses)
        outstanding: collections.deque[Future[T]] = collections.deque()

        def fill() -> None:
            while buffersize is None or len(outstanding) < buffersize:
                args = next(inputs, None)
                if args is None:
                    return
                outstanding.append(self.track(js.submit(fn, args=tuple(args))))

        fill()
        while outstanding:
            head = outstanding.popleft()
            while not head.wait(poll):
                js.reclaim_resources()
            fill()
            yield head.result()
        js.reclaim_resources()

    def close(self) -> None:
        close = getattr(self.bar, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Progress done={self.done} failed={self.failed} lost={self.lost}>"

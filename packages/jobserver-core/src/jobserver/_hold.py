"""Slots held by this process itself, for work the library does not launch.

``Jobserver.hold(k)`` returns a ``SlotHold``: entering it takes ``k`` slots
(all or nothing, with the strategy of ``_multislot``), leaving it gives
exactly those tokens back -- the same bytes, to the pool they came from --
also when the block is left by an exception or ``KeyboardInterrupt``::

    with js.hold(2):
        subprocess.run(["cc", ...])        # or a thread pool, a native library

The tokens live in a ledger of the hold's own, not in the resource set's,
so finished Futures, ``reclaim_resources`` and the end of the Jobserver's
``with`` block never touch them; the hold writes them back through a
duplicate of the pool's write end, so it can give them back even after the
Jobserver released its own descriptors.  Taking and giving back happen with
signals deferred (``_signals``), so a signal handler that raises cannot
split a token between the pool and the ledger.

Residual gap: CPython may run a signal handler between ``__enter__``
returning and the first statement of the ``with`` body; the exception then
skips ``__exit__``.  The hold is then unreferenced, and its finalizer
(``weakref.finalize``, registered only while it holds tokens) gives the
tokens back, with a ``ResourceWarning``.

``LentSlot`` (``Jobserver.lend_implicit_slot()``) is the other direction: a
process that owns the implicit slot of a jobserver but runs no job on it
(a test runner's controller that starts workers which take their own slots)
writes a token for it into the pool, and takes one back when it is done.
"""

from __future__ import annotations

import collections
import os
import warnings
import weakref
from typing import TYPE_CHECKING, Any

from ._exceptions import Blocked
from ._future import deadline_of, remaining
from ._log import get_logger
from ._multislot import Gather
from ._signals import DeferSignals
from ._slots import _IMPLICIT, TOKEN, Ledger, MakePool, give_token

if TYPE_CHECKING:
    from ._jobserver import _Resources

__all__ = ["LentSlot", "SlotHold"]

logger = get_logger("jobserver")


class SlotHold:
    """``count`` slots held by this process while a ``with`` block runs.

    Obtained from ``Jobserver.hold``.  Entering (or ``acquire()``) waits for
    the slots; leaving (or ``release()``) gives them back.  Single use.
    """

    __slots__ = (
        "__weakref__",
        "_finalizer",
        "_give_fd",
        "_ledger",
        "_pid",
        "_resources",
        "_state",
        "_timeout",
        "count",
    )

    def __init__(
        self, resources: _Resources, count: int, timeout: float | None
    ) -> None:
        self._resources = resources
        self.count = count
        self._timeout = timeout
        self._ledger: Ledger = collections.deque()
        self._give_fd: int | None = None
        self._pid = os.getpid()
        self._state = "new"
        #: While held: gives the tokens back if the hold is dropped unreleased.
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def held(self) -> int:
        """How many slots this hold holds right now."""
        return len(self._ledger) if self._state == "held" else 0

    def acquire(self) -> SlotHold:
        """Take the slots, waiting up to the timeout (then ``Blocked``).

        While waiting, finished work of the same Jobserver is reaped and its
        callbacks run, so this may raise ``CallbackRaised`` (nothing is held
        then).
        """
        if self._state != "new":
            raise RuntimeError("a SlotHold is used once; call Jobserver.hold again")
        resources = self._resources
        resources.check_usable()
        pool = resources.pool
        deadline = deadline_of(self._timeout)
        gather = Gather(pool, self._ledger, self.count)
        try:
            with DeferSignals():
                self._state = "acquiring"
                give_fd = os.dup(pool.write_fd)  # close-on-exec, as the original
                self._give_fd = give_fd
                # From here on whatever the ledger holds is given back even if
                # this hold is dropped on a path that was cut short.
                self._finalizer = weakref.finalize(
                    self, _unreleased, self._ledger, give_fd, self._pid
                )
            while True:
                expired = False
                with DeferSignals():
                    if gather.step():
                        self._state = "held"
                        return self
                    left = remaining(deadline)
                    if left is not None and left <= 0:
                        gather.release()  # before leaving the deferral
                        expired = True
                if expired:
                    raise Blocked(f"{self.count} slot(s) were not free at once in time")
                timeout, watch_pool = gather.wait_plan(left)
                resources.wait_events(timeout, include_pool=watch_pool)
        except BaseException:
            # Taken (a deferred signal's handler raised on the way out: the
            # caller never gets this hold) or not: give back what it has.
            self._finish("failed")
            raise

    def release(self) -> None:
        """Give every held token back (idempotent; a no-op in a forked child)."""
        if self._state == "held":
            self._finish("released")

    def _finish(self, state: str) -> None:
        if self._pid != os.getpid():
            return
        with DeferSignals():
            self._state = state
            give_fd = self._give_fd
            self._give_fd = None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            if give_fd is not None:
                _give_back(self._ledger, give_fd)

    def __enter__(self) -> SlotHold:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<SlotHold count={self.count} state={self._state!r}>"


def _give_back(ledger: Ledger, give_fd: int) -> None:
    """Write every token of ``ledger`` to ``give_fd``, then close it."""
    try:
        while ledger:
            give_token(ledger, give_fd)
    except OSError as exc:  # nobody reads the pool any more
        logger.warning("could not give %d slot(s) back: %s", len(ledger), exc)
        ledger.clear()
    finally:
        os.close(give_fd)


def _unreleased(ledger: Ledger, give_fd: int, pid: int) -> None:
    """Finalizer of a hold dropped while held (see the module docstring)."""
    if pid != os.getpid():
        return
    count = len(ledger)
    with DeferSignals():
        _give_back(ledger, give_fd)
    if count:
        warnings.warn(
            f"a SlotHold of {count} slot(s) was never released; use `with`",
            ResourceWarning,
            stacklevel=2,
        )


class LentSlot:
    """This process's implicit slot, lent to the pool as a real token.

    Obtained from ``Jobserver.lend_implicit_slot()``.  Entering writes one
    token into the pool if this process owns the implicit slot of that
    jobserver and it is free (``lent`` says whether it did); leaving takes
    one token back out of the pool -- waiting for one if all are in use --
    and makes the implicit slot this process's own again.

    If the process dies between the two (SIGKILL), the pool keeps one token
    too many: prefer this only where a process would otherwise sit on a slot
    it cannot use.
    """

    __slots__ = ("_ledger", "_pid", "_resources", "lent")

    def __init__(self, resources: _Resources) -> None:
        self._resources = resources
        self._ledger: Ledger = collections.deque()
        self._pid = os.getpid()
        self.lent = False

    def __enter__(self) -> LentSlot:
        resources = self._resources
        resources.check_usable()
        pool = resources.pool
        if not isinstance(pool, MakePool) or not pool._implicit:
            return self
        with DeferSignals():
            if not _IMPLICIT:
                return self
            self._ledger.append(_IMPLICIT.popleft())
            os.write(pool.write_fd, TOKEN)
            self.lent = True
        logger.debug("lent the implicit slot to the pool")
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.lent or self._pid != os.getpid():
            return
        resources = self._resources
        pool = resources.pool
        if pool.closed:
            logger.warning(
                "the pool was released before the lent implicit slot came back; "
                "it keeps one token too many"
            )
            self.lent = False
            return
        assert isinstance(pool, MakePool)
        taken: Ledger = collections.deque()
        while True:
            with DeferSignals():
                # Only a token from the pipe will do: the implicit one is lent.
                if _plain_take(pool, taken):
                    taken.clear()  # the lent token: out of circulation again
                    while self._ledger:
                        give_token(self._ledger, pool.write_fd)
                    self.lent = False
                    break
            resources.wait_events(None, include_pool=True)
        logger.debug("took the lent implicit slot back")


def _plain_take(pool: MakePool, ledger: Ledger) -> bool:
    implicit = pool._implicit
    pool._implicit = False
    try:
        return pool.take(ledger)
    finally:
        pool._implicit = implicit

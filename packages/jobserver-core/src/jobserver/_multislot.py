"""Taking several slots at once from a pool that others share.

A pool is a pipe of one-byte tokens with no queue and no owner: any number
of processes (this library's, GNU Make, ninja, cargo) read from it.  A job
that needs ``k`` slots must hold ``k`` tokens, and taking them one at a time
can go wrong in two ways:

* deadlock: two clients that each want 3 of 4 tokens take 2 each and wait
  for the third forever;
* starvation: a client that wants ``k`` waits for ``k`` to be free at one
  instant, which never happens while single-slot clients keep the pool busy.

``Gather`` is the strategy every multi-slot take in this library uses
(``submit(consume=k)``, ``Jobserver.hold(k)``, ``advertise(consume=k)``):

1. Take whatever is free, up to ``k``, without blocking.  All ``k``: done.
2. Otherwise keep the partial set and wait for the pool to become readable
   (a readiness wait, so a released token is picked up at once), taking
   more as they appear -- but only for a bounded *hold window*, counted from
   the moment the first token of the set was taken.
3. When the window closes before the set is complete, give every token of
   the set back and *back off* for a random delay, without watching the
   pool; then start again at 1 with a window twice as long (up to a cap).

Why this is safe and live:

* No client holds a partial set for longer than its current window (at most
  ``MAX_WINDOW`` seconds), so two greedy clients cannot block each other
  forever: the first whose window closes gives its tokens back, and the
  other, which is in a readiness wait at that moment, takes them.
* The windows are randomised (factor 0.5 to 1.5), so the two rarely give up
  at the same instant; when they do, the random back-off separates them.
* The window doubles after each failed round, so a large job competing with
  a stream of small ones holds on to what it collected longer each time and
  eventually collects its ``k``; while gathering it takes every token that
  comes back, as a single-slot client would.
* A one-slot take (``k == 1``) never holds a partial set, so it simply waits
  for readiness; nothing above applies to it.

What it does not give: a queue.  A pipe cannot say who waited first, so two
greedy clients are served in no particular order.  And from inside a worker,
``k`` equal to the whole pool can never be satisfied (the worker's own slot
is held by its parent); use at most ``size - 1`` there.

``Gather`` only moves tokens between the pool and a ledger; callers run
``step`` and ``release`` with signals deferred (``_signals.DeferSignals``)
and do the waiting themselves, as ``wait_plan`` says.
"""

from __future__ import annotations

import time

from ._slots import Ledger, SlotPool

__all__ = ["BASE_WINDOW", "MAX_WINDOW", "Gather"]

#: The first hold window, seconds (randomised by a factor of 0.5 to 1.5).
BASE_WINDOW = 0.05
#: The longest hold window, seconds.
MAX_WINDOW = 2.0


class Gather:
    """One multi-slot take of ``count`` tokens from ``pool`` into ``ledger``.

    ``taken`` counts the tokens of this take now in ``ledger``; ``release``
    gives back exactly that many.  Single use: once ``step`` returned
    ``True`` the tokens belong to the caller.
    """

    __slots__ = ("count", "ledger", "phase_end", "pool", "rounds", "taken", "waiting")

    def __init__(self, pool: SlotPool, ledger: Ledger, count: int) -> None:
        self.pool = pool
        self.ledger = ledger
        self.count = count
        self.taken = 0
        self.rounds = 0
        #: False while backing off (the pool is not watched).
        self.waiting = True
        #: When the current hold window or back-off ends (monotonic), if any.
        self.phase_end: float | None = None

    def window(self) -> float:
        return float(min(BASE_WINDOW * 2.0**self.rounds, MAX_WINDOW))

    def step(self) -> bool:
        """Take what is free; ``True`` once all ``count`` are held.

        Call with signals deferred.  Gives the partial set back when the
        hold window has closed.
        """
        now = time.monotonic()
        if not self.waiting:
            if self.phase_end is not None and now < self.phase_end:
                return False
            self.waiting = True
            self.phase_end = None
        pool = self.pool
        while self.taken < self.count and pool.take(self.ledger):
            self.taken += 1
            if self.phase_end is None and self.count > 1:
                import random  # lazily: its fork hook reseeds every child

                jitter = random.uniform(0.5, 1.5)
                self.phase_end = now + self.window() * jitter
        if self.taken == self.count:
            return True
        if self.phase_end is not None and now >= self.phase_end:
            import random

            window = self.window()
            self.release()
            self.rounds += 1
            self.waiting = False
            self.phase_end = now + random.uniform(0.0, window)
        return False

    def release(self) -> None:
        """Give back every token this take holds (call with signals deferred)."""
        pool = self.pool
        while self.taken > 0:
            self.taken -= 1
            pool.give(self.ledger)
        self.phase_end = None

    def wait_plan(self, left: float | None) -> tuple[float | None, bool]:
        """How long to wait before the next ``step`` and whether to watch the
        pool: ``(timeout, watch_pool)``; ``left`` is the caller's own limit."""
        timeout = left
        if self.phase_end is not None:
            until = max(0.0, self.phase_end - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        return timeout, self.waiting

"""Per-task time limits: replace_time_limit and TimeLimitExceeded.

A handle from ``js.replace_time_limit(seconds, grace=...)`` limits each of
its submissions' wall-clock time.  Past the limit the task is interrupted
(a timer in the worker raises ``TimeLimitExceeded`` inside it, so
``finally`` blocks run); a worker still going ``grace`` seconds later is
sent ``SIGTERM``, and after another ``grace``, ``SIGKILL`` by the parent.
Either way the
Future raises ``TimeLimitExceeded`` -- a ``TimeoutError`` that says how long
the work ran -- and the slot comes back.  No thread is involved.
"""

from __future__ import annotations

import signal
import time

from jobserver import Jobserver, TimeLimitExceeded


def work(seconds: float) -> str:
    time.sleep(seconds)
    return f"slept {seconds}"


def stubborn(seconds: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(seconds)


def main() -> None:
    with Jobserver(slots=2) as js:
        limited = js.replace_time_limit(0.5, grace=0.5)
        print(limited(work, 0.1).result())
        started = time.monotonic()
        try:
            limited(work, 30).result()
        except TimeLimitExceeded as exc:
            print("stopped:", exc)
            assert isinstance(exc, TimeoutError)
            assert exc.how == "interrupted by the worker's timer", exc.how
        took = time.monotonic() - started
        assert took < 5, took
        try:
            limited(stubborn, 30).result()
        except TimeLimitExceeded as exc:
            print("stubborn worker:", exc.how)
            assert exc.how == "killed with SIGKILL"
        # map through the limited handle: the first overrun raises in order.
        print(list(limited.map(work, [(0.05,), (0.1,)])))


if __name__ == "__main__":
    main()

"""asyncio without threads: await Futures, submit without blocking the loop.

* ``await future`` gives what ``future.result()`` would: the value, the
  worker's exception, or ``LostResult``.  The event loop watches the
  Future's own result pipe and the worker's exit; no helper thread starts.
* ``jobserver.aio.submit`` waits for a slot while other coroutines run.
* ``jobserver.aio.as_completed`` / ``map_unordered`` give completion order.
* Cancelling the awaiting task does not leak the worker: it is reaped by the
  loop when it ends; ``cancel_signal=SIGTERM`` also stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

from jobserver import Jobserver, LostResult, aio


def slow_square(x: int, delay: float = 0.05) -> int:
    time.sleep(delay)
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


async def main() -> None:
    threads = threading.active_count()
    with Jobserver(slots=3) as js:
        # 1. await a Future like any awaitable; gather many.
        assert await js(slow_square, 4) == 16
        futures = [await aio.submit(js, slow_square, args=(i,)) for i in range(30)]
        assert await asyncio.gather(*futures) == [i * i for i in range(30)]
        print(
            "gathered 30 results; threads started:", threading.active_count() - threads
        )

        # 2. exceptions and lost workers surface from the await.
        try:
            await js(fail, "bad input")
        except ValueError as exc:
            print("worker raised:", exc)
        doomed = js(slow_square, 1, 30)
        os.kill(doomed._worker.pid, signal.SIGKILL)
        try:
            await doomed
        except LostResult as exc:
            print("lost:", exc.returncode)

        # 3. completion order, and the loop stays responsive meanwhile.
        order = [
            value
            async for value in aio.map_unordered(
                js, slow_square, [(3, 0.3), (1, 0.05), (2, 0.15)]
            )
        ]
        assert order == [1, 4, 9], order
        print("completion order:", order)

        # 4. cancellation: with a signal the worker is stopped and reaped.
        long = js(slow_square, 5, 30)
        task = asyncio.ensure_future(aio.result(long, cancel_signal=signal.SIGTERM))
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        while js._resources.tracked_count:
            await asyncio.sleep(0.01)
        print("cancelled task's worker was reaped; slots are free again")
    assert threading.active_count() == threads


if __name__ == "__main__":
    asyncio.run(main())

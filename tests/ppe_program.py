"""A small program written for concurrent.futures.ProcessPoolExecutor.

Not a test module: tests/test_executor_dropin.py runs it in a subprocess as
it is, and again with only the import line below changed to
``from jobserver import JobserverExecutor as ProcessPoolExecutor``; both runs
must print the same thing.  It uses the executor the way ordinary programs
do: map (with chunks and timeouts), submit, as_completed, wait, callbacks,
an initializer, exceptions, a worker that dies, shutdown and asyncio.
"""

from concurrent.futures import ProcessPoolExecutor  # noqa: I001 (the one line to change)

import asyncio
import concurrent.futures
import math
import os
import threading
from concurrent.futures.process import BrokenProcessPool

NUMBERS = [2, 97, 7919, 1_000_001, 1_000_003, 998_244_353]

PREFIX = "unset"


def is_prime(n):
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % divisor != 0 for divisor in range(3, math.isqrt(n) + 1, 2))


def set_prefix(prefix):
    global PREFIX
    PREFIX = prefix


def tag(word):
    return f"{PREFIX}{word}"


def fail(n):
    raise ValueError(f"refusing {n}")


def crash():
    os._exit(1)


def describe(future):
    if future.cancelled():
        return "cancelled"
    error = future.exception()
    if error is not None:
        return f"{type(error).__name__}: {error}"
    return repr(future.result())


def main():
    with ProcessPoolExecutor(max_workers=2) as executor:
        for number, prime in zip(NUMBERS, executor.map(is_prime, NUMBERS)):
            print(number, "is prime" if prime else "is not prime")
        print(list(executor.map(pow, range(8), range(8), chunksize=3)))
        print(list(executor.map(abs, range(-3, 0), timeout=60)))

        futures = {executor.submit(math.factorial, n): n for n in (5, 10, 15)}
        results = {}
        for future in concurrent.futures.as_completed(futures, timeout=60):
            results[futures[future]] = future.result()
        print(sorted(results.items()))

        done, not_done = concurrent.futures.wait(
            [executor.submit(abs, -i) for i in range(5)], timeout=60
        )
        print(sorted(f.result() for f in done), len(not_done))

        failing = executor.submit(fail, 3)
        try:
            failing.result()
        except ValueError as error:
            print(
                "caught", error, "with remote traceback:", error.__cause__ is not None
            )

        called = threading.Event()
        seen = []
        future = executor.submit(sum, [1, 2, 3])
        future.add_done_callback(lambda f: (seen.append(describe(f)), called.set()))
        called.wait(60)
        print("callback saw", seen)

        async def use_asyncio():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, math.gcd, 84, 36)

        print("asyncio:", asyncio.run(use_asyncio()))

    with ProcessPoolExecutor(
        2, initializer=set_prefix, initargs=("item-",)
    ) as executor:
        print(list(executor.map(tag, "abc")))

    executor = ProcessPoolExecutor(2)
    future = executor.submit(sum, range(10))
    executor.shutdown()
    print("after shutdown:", future.result())
    try:
        executor.submit(sum, [1])
    except RuntimeError as error:
        print("RuntimeError:", error)

    with ProcessPoolExecutor(1) as executor:
        try:
            executor.submit(crash).result()
        except BrokenProcessPool:
            print("a worker died: BrokenProcessPool")


if __name__ == "__main__":
    main()

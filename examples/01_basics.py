"""01 - Basics: submit work, call the handle, and map over many inputs.

A ``Jobserver`` runs every submission in a brand-new child process and never
has more than ``slots`` of them alive at once.  This tour stop shows the three
ways to hand it work and what comes back:

* ``submit(fn, args=..., kwargs=...)`` is the explicit form and returns a
  ``Future``; ``handle(fn, *args, **kwargs)`` is the same thing, shorter.
* ``map(fn, argses=..., kwargses=...)`` runs one call per input and yields the
  results in input order.  ``argses`` holds one tuple of positional arguments
  per call and ``kwargses`` one dict of keyword arguments per call; given
  both, they are paired up.
* ``chunksize`` sends several calls to one worker (fewer processes for tiny
  tasks) and ``buffersize`` bounds how many submissions are outstanding, so a
  long or endless input is read lazily instead of all at once.

It also shows that a task's exception is re-raised by ``result()`` with the
worker's own traceback attached as ``__cause__``, and that malformed ``map``
arguments are rejected before any work starts.

Run it directly: ``python 01_basics.py``.  It exits non-zero if any of the
behaviour above does not hold.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from typing import Any

from jobserver import Jobserver

log = logging.getLogger("tour.basics")


# Tasks live at module level so that every start method can find them again
# in the child (spawn and forkserver re-import this file there).
def greet(name: str, *, punctuation: str = ".") -> str:
    return f"Hello, {name}{punctuation}"


def worker_pid(_label: object = None) -> int:
    return os.getpid()


def area(width: float, height: float = 1.0) -> float:
    return width * height


def parse_port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return port


def show_submit_and_call(js: Jobserver) -> None:
    explicit = js.submit(greet, args=("Ada",), kwargs={"punctuation": "!"})
    shorthand = js(greet, "Grace", punctuation="?")
    elsewhere = js(worker_pid)
    assert explicit.result() == "Hello, Ada!", explicit.result()
    assert shorthand.result() == "Hello, Grace?", shorthand.result()
    assert elsewhere.result() != os.getpid(), "the task ran in this process"
    log.info("submit() -> %r", explicit.result())
    log.info("__call__  -> %r", shorthand.result())
    log.info("the work ran in pid %d, not here (%d)", elsewhere.result(), os.getpid())


def show_map(js: Jobserver) -> None:
    # Positional arguments only: one tuple per call.
    gcds = list(js.map(math.gcd, argses=[(12, 18), (35, 49), (17, 5)]))
    assert gcds == [6, 7, 1], gcds
    log.info("map(argses=...)          -> %s", gcds)

    # Keyword arguments only: one dict per call.
    areas = list(js.map(area, kwargses=[{"width": 2.0}, {"width": 3.0, "height": 4.0}]))
    assert areas == [2.0, 12.0], areas
    log.info("map(kwargses=...)        -> %s", areas)

    # Both: the n-th tuple goes with the n-th dict.
    greetings = list(
        js.map(
            greet,
            argses=[("Linus",), ("Barbara",)],
            kwargses=[{"punctuation": "!"}, {}],
        )
    )
    assert greetings == ["Hello, Linus!", "Hello, Barbara."], greetings
    log.info("map(argses, kwargses)    -> %s", greetings)


def show_chunksize(js: Jobserver) -> None:
    # Six tiny calls in chunks of three: two workers, each running three calls.
    pids = list(js.map(worker_pid, argses=[(i,) for i in range(6)], chunksize=3))
    assert len(pids) == 6, pids
    assert len(set(pids[:3])) == 1, f"first chunk spread over workers: {pids}"
    assert len(set(pids[3:])) == 1, f"second chunk spread over workers: {pids}"
    log.info("chunksize=3 over 6 calls ran in pids %s", pids)


def show_buffersize(js: Jobserver) -> None:
    pulled: list[int] = []

    def inputs() -> Iterator[tuple[int]]:
        for n in range(1, 7):
            pulled.append(n)
            yield (n,)

    results = js.map(area, argses=inputs(), buffersize=2)
    # map() has started only as many calls as the buffer allows ...
    assert len(pulled) == 2, f"buffersize=2 but {len(pulled)} inputs were read"
    first = next(results)
    # ... and reads the next input only as results are taken out.
    assert first == 1.0, first
    assert len(pulled) == 3, f"expected 3 inputs read, got {len(pulled)}"
    rest = list(results)
    assert rest == [2.0, 3.0, 4.0, 5.0, 6.0], rest
    log.info("buffersize=2 read inputs lazily; results %s", [first, *rest])


def show_errors(js: Jobserver) -> None:
    failing = js(parse_port, "70000")
    try:
        failing.result()
    except ValueError as exc:
        cause = exc.__cause__
        assert cause is not None, "the worker's traceback is missing"
        assert "parse_port" in str(cause), str(cause)
        log.info("result() re-raised %r; worker traceback:%s", exc, cause)
    else:
        raise AssertionError("parse_port('70000') should have raised")

    # map() validates its inputs before anything runs.
    lone_mapping: Any = {"width": 1.0}  # a dict, not a list of dicts
    try:
        js.map(area, kwargses=lone_mapping)
    except TypeError as exc:
        log.info("a lone mapping as kwargses is a TypeError: %s", exc)
    else:
        raise AssertionError("a single mapping for kwargses should be rejected")
    try:
        js.map(area, argses=[(1.0,), (2.0,)], kwargses=[{}])
    except ValueError as exc:
        log.info("argses/kwargses of different lengths: %s", exc)
    else:
        raise AssertionError("mismatched argses/kwargses should be rejected")


def main() -> None:
    # slots=2: at most two workers at once, whatever is submitted.
    with Jobserver(slots=2) as js:
        log.info("%r", js)
        show_submit_and_call(js)
        show_map(js)
        show_chunksize(js)
        show_buffersize(js)
        show_errors(js)
    log.info("all basics checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

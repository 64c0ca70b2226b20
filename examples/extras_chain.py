"""jobserver_extras.chain_preexecs - several preexecs as one.

``replace_preexec`` takes a single function, so to harden workers in more
than one way, chain the pieces.  ``chain_preexecs(a, b, c)`` calls each in
order in the worker; those that return a context manager (``WorkerLogging``,
``AdvisoryLock``, your own) are entered at once and exited in reverse order
when the task ends, like nested ``with`` statements.  Use
``functools.partial`` to pass arguments to your own functions.

What this example checks, on a handle hardened four ways at once:

1. The order: each step notes itself in a file; the notes show the chain
   entered first to last and left last to first, around the task.
2. Everything took effect in the worker: its CPU limit, its parent-death
   signal (Linux), its log records (forwarded to this process) and its lock.
3. If a step fails, the steps already entered are undone and the task does
   not run; the error reaches ``result()``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, Callable

from jobserver import Jobserver
from jobserver_extras import (
    AdvisoryLock,
    LogForwarder,
    ResourceLimits,
    WorkerLogging,
    chain_preexecs,
)

log = logging.getLogger("extras.chain")


def note(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")


@contextlib.contextmanager
def noted(path: str, name: str, fail: bool = False) -> Iterator[None]:
    note(path, f"enter {name}")
    if fail:
        raise RuntimeError(f"{name} could not be set up")
    try:
        yield
    finally:
        note(path, f"exit {name}")


def task(path: str) -> tuple[int, int]:
    note(path, "task")
    logging.getLogger("extras.chain.worker").info("hello from the task")
    cpu_soft, _ = resource.getrlimit(resource.RLIMIT_CPU)
    pdeathsig = 0
    if sys.platform.startswith("linux"):
        from jobserver_extras import current_pdeathsig

        pdeathsig = current_pdeathsig()
    return cpu_soft, pdeathsig


def main() -> None:
    seen: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    with tempfile.TemporaryDirectory() as tmp, LogForwarder(Seen()) as forwarder:
        notes = os.path.join(tmp, "notes")
        steps: list[Callable[[], Any]] = [
            functools.partial(note, notes, "call first"),
            ResourceLimits(cpu_seconds=60),
            functools.partial(noted, notes, "outer"),
            WorkerLogging(logging.INFO, forward=forwarder),
            AdvisoryLock(os.path.join(tmp, "task.lock")),
            functools.partial(noted, notes, "inner"),
        ]
        if sys.platform.startswith("linux"):
            from jobserver_extras import ParentDeathSignal

            steps.insert(0, ParentDeathSignal())
        with Jobserver(slots=2) as js:
            hardened = js.replace_preexec(chain_preexecs(*steps))
            cpu_soft, pdeathsig = hardened.submit(task, args=(notes,)).result()
            forwarder.drain()

            # 1. The order around the task.
            with open(notes) as f:
                order = f.read().splitlines()
            assert order == [
                "call first",
                "enter outer",
                "enter inner",
                "task",
                "exit inner",
                "exit outer",
            ], order
            log.info("order: %s", " -> ".join(order))

            # 2. Every step took effect.
            assert cpu_soft == 60, cpu_soft
            assert seen == ["hello from the task"], seen
            # Under forkserver the worker's parent is the fork server, so the
            # launcher is watched through a pipe rather than with prctl.
            method = js.context.get_start_method()
            if sys.platform.startswith("linux") and method != "forkserver":
                assert pdeathsig != 0
            log.info(
                "CPU limit %d s, parent-death signal %d, log forwarded",
                cpu_soft,
                pdeathsig,
            )

            # 3. A failing step unwinds what was entered; the task never runs.
            os.unlink(notes)
            broken = js.replace_preexec(
                chain_preexecs(
                    functools.partial(noted, notes, "outer"),
                    functools.partial(noted, notes, "broken", fail=True),
                )
            )
            try:
                broken.submit(task, args=(notes,)).result()
            except RuntimeError as exc:
                log.info("a failing step reached result(): %s", exc)
            else:
                raise AssertionError("the broken chain ran the task")
            with open(notes) as f:
                order = f.read().splitlines()
            assert order == ["enter outer", "enter broken", "exit outer"], order
    log.info("all chain checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

"""What the soak's workers run (see scripts/soak.py and docs/reliability.md).

A module of its own, imported by name, so that spawn and forkserver workers
(and their nested workers) find every task.  Each task does exactly one thing
the soak told it to do, so that the outcome the parent observes can be
checked against what was asked for.

Values are self-checking: ``sealed(token, data)`` carries a CRC of its data
computed in the worker, so a value that arrives damaged, truncated or
belonging to another submission is caught even when the soak does not know
which submission it came from (work launched by an interrupted ``submit``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import zlib
from typing import Any

from jobserver import Blocked, Jobserver

#: The marker every soak value starts with.
MAGIC = "soak-value"


def pattern(token: int, size: int) -> bytes:
    """``size`` bytes that depend on ``token`` (cheap even for 64 MiB)."""
    if size <= 0:
        return b""
    unit = (token & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
    return (unit * (size // 8 + 1))[:size]


def seal(token: int, data: bytes) -> tuple[str, int, bytes, int]:
    return (MAGIC, token, data, zlib.crc32(data, token & 0xFFFFFFFF))


def check_sealed(value: Any, token: int | None = None, size: int | None = None) -> str:
    """Why ``value`` is not a sound sealed value (for ``token``), or ``""``."""
    if not (isinstance(value, tuple) and len(value) == 4 and value[0] == MAGIC):
        return f"not a soak value: {type(value).__name__} {str(value)[:80]!r}"
    _, got_token, data, crc = value
    if not isinstance(data, bytes) or zlib.crc32(data, got_token & 0xFFFFFFFF) != crc:
        return f"damaged value for token {got_token} ({len(data)} bytes, bad CRC)"
    if token is not None and got_token != token:
        return f"value of token {got_token} where token {token} was expected"
    if size is not None and len(data) != size:
        return f"value of {len(data)} bytes where {size} were expected"
    return ""


# --- ordinary outcomes ---------------------------------------------------------


def value(token: int, size: int = 0) -> tuple[str, int, bytes, int]:
    """Return a sealed value of ``size`` bytes."""
    return seal(token, pattern(token, size))


def nap(seconds: float, token: int) -> tuple[str, int, bytes, int]:
    """Sleep, then return a sealed value (paused and resumed by the soak)."""
    time.sleep(seconds)
    return seal(token, b"")


def hold(path: str, token: int) -> tuple[str, int, bytes, int]:
    """Hold a slot until the soak writes one byte into the FIFO at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)
    return seal(token, b"")


def raise_error(token: int, size: int = 0) -> None:
    """Raise a ``ValueError`` whose message may be bigger than a pipe buffer."""
    raise ValueError(f"soak-error {token} " + "e" * size)


def call_it(fn: Any, token: int) -> tuple[str, int, bytes, int]:
    """Call an argument that only pickles by value under fork (a lambda)."""
    return seal(token, pattern(token, int(fn())))


def env_and_preexec(token: int) -> tuple[str, int, bytes, int]:
    """Return what revise_env and replace_preexec set in this worker."""
    text = f"{os.environ.get('SOAK_ENV')}|{os.environ.get('SOAK_PREEXEC')}"
    return seal(token, text.encode())


def mark_preexec(token: int, wrap: bool) -> Any:
    """A preexec: set an environment variable, maybe wrap the task."""
    os.environ["SOAK_PREEXEC"] = str(token)
    return _Wrapper() if wrap else None


class _Wrapper:
    def __enter__(self) -> None:
        os.environ["SOAK_PREEXEC"] += "+wrapped"

    def __exit__(self, *exc: object) -> None:
        pass


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("soak: this result refuses to be pickled")


def unpicklable_result() -> Unpicklable:
    return Unpicklable()


def _refuse() -> None:
    raise RuntimeError("soak: this result cannot be rebuilt in the parent")


class NotRebuildable:
    def __reduce__(self) -> Any:
        return (_refuse, ())


def unrebuildable_result() -> NotRebuildable:
    return NotRebuildable()


# --- endings without a result ----------------------------------------------------


def system_exit(code: int) -> None:
    sys.exit(code)


def keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def hard_exit(code: int) -> None:
    os._exit(code)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(600)


def segfault() -> None:
    import ctypes
    import faulthandler

    faulthandler.disable()  # a forked worker inherits the parent's setting
    ctypes.string_at(0)


def exec_program(code: int, linger: float) -> None:
    """Replace the worker with a shell that (maybe) lingers, then exits."""
    script = f"sleep {linger}; exit {code}" if linger else f"exit {code}"
    os.execv("/bin/sh", ["sh", "-c", script])


def wait_for_cancel() -> None:
    """Run until the soak cancels it with wait(signal=SIGTERM)."""
    time.sleep(600)


# --- nested work ---------------------------------------------------------------------


def tree_size(depth: int, width: int) -> int:
    return sum(width**level for level in range(depth + 1))


def tree(js: Jobserver, depth: int, width: int, token: int) -> tuple[Any, ...]:
    """Count the nodes of a tree, submitting children when a slot is free
    (``timeout=0``, some with ``consume=0``) and running them inline otherwise.
    Returns a sealed count, whatever the slots allowed."""
    total = 1
    futures = []
    for i in range(width if depth > 0 else 0):
        child = token * 7 + i + 1
        try:
            consume = 0 if child % 5 == 0 else 1
            futures.append(
                js.submit(
                    tree,
                    args=(js, depth - 1, width, child),
                    consume=consume,
                    timeout=0,
                )
            )
        except Blocked:
            _, _, data, _ = tree(js, depth - 1, width, child)
            total += int(data)
    for future in futures:
        _, _, data, _ = future.result()
        total += int(data)
    return seal(token, str(total).encode())


def forget(js: Jobserver, token: int) -> tuple[str, int, bytes, int]:
    """Submit nested work and return without waiting for it (the worker
    waits for it before exiting, so its slot comes back)."""
    try:
        js.submit(nap, args=(0.01, token), timeout=0)
    except Blocked:
        pass
    return seal(token, b"forgot")


def nested_raise(js: Jobserver, token: int) -> tuple[str, int, bytes, int]:
    """Nested work that raises; the worker catches it and says so."""
    try:
        future = js.submit(raise_error, args=(token,), timeout=0)
    except Blocked:
        return seal(token, b"caught")
    try:
        future.result()
    except ValueError:
        return seal(token, b"caught")
    return seal(token, b"not raised")


def signal_names() -> dict[int, str]:
    return {int(s): s.name for s in signal.Signals}


def three() -> int:
    return 3


def map_task(kind: str, token: int, size: int = 0) -> Any:
    """What map runs: a value, or the failure the map was told to hit."""
    if kind == "raise":
        raise_error(token)
    if kind == "lost":
        kill_self(signal.SIGKILL)
    return value(token, size)

"""GNU Make's jobserver as ``MAKEFLAGS`` describes it: reading and writing.

Client side: ``pool_from_environment`` joins the jobserver advertised to
this process, if any; ``Jobserver(slots=None)`` calls it.  Server side:
``compose`` writes the ``MAKEFLAGS`` a child program needs to join one of our
pools (``_advertise`` decides which words).

``MAKEFLAGS`` as GNU Make 4.3 exports it to a recipe run with ``make -j3 -k
FOO=bar`` (other versions differ only in details)::

    k -j3 --jobserver-auth=3,4 -- FOO=bar

* The first word may be a cluster of single-letter flags without a dash;
  words after a lone ``--`` are variable definitions, never options (so a
  variable whose value looks like ``--jobserver-auth=...`` is ignored).
  A backslash escapes the next character, blanks included.
* ``--jobserver-auth=R,W`` (Make >= 4.2, the fd form: inherited descriptors
  of one pipe), ``--jobserver-auth=fifo:PATH`` (Make >= 4.4, the FIFO form)
  and the legacy ``--jobserver-fds=R,W`` (Make < 4.2) all name the
  jobserver.  There may be several; only the last counts.  Negative
  descriptors mean the jobserver is disabled for this process.
* ``-jN`` without a jobserver word means no jobserver for us: Make writes
  it for ``-j1`` (and ``-j`` for an unlimited build), and a recipe that Make
  does not consider recursive keeps ``-jN --jobserver-auth=R,W`` but not the
  descriptors.

What ``pool_from_environment`` returns, case by case:

* no ``MAKEFLAGS``, no jobserver word, or a disabled one (negative fds):
  ``None``, silently (the caller then uses the CPU count);
* a jobserver word that is malformed, names descriptors that are closed or
  are not the two ends of one pipe (a stale word: Make did not pass them,
  most often because the recipe lacks ``+``), or a path that is not a FIFO
  we can open: ``None`` with a ``RuntimeWarning`` -- never an exception,
  never a wait;
* otherwise a ``MakePool`` on descriptions of our own (see ``_slots``),
  holding this process's implicit token if it is the process Make started.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping

from ._log import get_logger
from ._signals import DeferSignals
from ._slots import (
    MakePool,
    claim_implicit,
    open_fifo,
    renounce_implicit,
    reopen,
    same_pipe,
)

__all__ = ["Makeflags", "compose", "parse", "pool_from_environment"]

logger = get_logger("jobserver.make")

AUTH_OPTIONS = ("--jobserver-auth=", "--jobserver-fds=")
_JOBS = re.compile(r"-j(\d*)\Z")
_FD_PAIR = re.compile(r"(-?\d+),(-?\d+)\Z")


def split_words(value: str) -> list[str]:
    """Split on blanks not escaped by a backslash; words keep their escapes."""
    words: list[str] = []
    current: list[str] = []
    escaped = False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char in " \t\n":
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


class Makeflags:
    """``MAKEFLAGS`` split into option words and the variable definitions."""

    __slots__ = ("auth", "jobs", "options", "variables")

    def __init__(self, value: str) -> None:
        words = split_words(value)
        if "--" in words:
            cut = words.index("--")
            self.options, self.variables = words[:cut], words[cut:]
        else:
            self.options, self.variables = words, []
        #: The value of the last jobserver word, if any.
        self.auth: str | None = None
        #: ``N`` from the last ``-jN`` word; 0 for a bare ``-j``; else None.
        self.jobs: int | None = None
        for word in self.options:
            for option in AUTH_OPTIONS:
                if word.startswith(option):
                    self.auth = word[len(option) :]
            match = _JOBS.match(word)
            if match:
                self.jobs = int(match.group(1) or 0)


def parse(value: str) -> Makeflags:
    """Parse a ``MAKEFLAGS`` value."""
    return Makeflags(value)


def compose(base: str | None, auth_word: str, jobs: int | None) -> str:
    """``base`` with its jobserver words replaced by ``auth_word``.

    With ``jobs`` its ``-j`` words are replaced by ``-j{jobs}`` as well
    (what Make itself exports next to the jobserver word); other options and
    the variable definitions are kept as they were.
    """
    flags = Makeflags(base or "")
    kept = [
        word
        for word in flags.options
        if not word.startswith(AUTH_OPTIONS)
        and not (jobs is not None and _JOBS.match(word))
    ]
    if jobs is not None:
        kept.append(f"-j{jobs}")
    kept.append(auth_word)
    # A first word without a dash is a cluster of flags, which Make expects
    # first; a leading blank is what Make writes when there is none.
    prefix = "" if kept[0][:1] not in ("", "-") else " "
    return prefix + " ".join(kept + flags.variables)


def _fallback(reason: str, stacklevel: int) -> None:
    warnings.warn(
        f"ignoring the GNU Make jobserver in MAKEFLAGS ({reason}); "
        "using the number of CPUs instead",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )
    logger.debug("MAKEFLAGS jobserver ignored: %s", reason)


def pool_from_environment(
    environ: Mapping[str, str] | None = None,
    *,
    stacklevel: int = 4,
    implicit: bool = True,
) -> MakePool | None:
    """The jobserver advertised to this process, joined; ``None`` if none.

    ``environ`` defaults to ``os.environ``.  See the module docstring for
    what counts as no jobserver (silently ``None``) and as a broken one
    (``None`` and a ``RuntimeWarning``).  ``implicit=False``: this process
    was started by a program that took no slot for it (a test runner's
    worker, say), so it owns no implicit token and takes every slot from
    the pipe; that also holds for later joins in this process.
    """
    value = (os.environ if environ is None else environ).get("MAKEFLAGS")
    if not value:
        return None
    flags = Makeflags(value)
    auth = flags.auth
    if auth is None:
        logger.debug("MAKEFLAGS names no jobserver")
        return None
    size = flags.jobs or None
    if auth.startswith("fifo:"):
        return _join_fifo(auth, size, stacklevel + 1, implicit)
    match = _FD_PAIR.match(auth)
    if match is None:
        _fallback(f"malformed jobserver word {auth!r}", stacklevel)
        return None
    read_fd, write_fd = int(match.group(1)), int(match.group(2))
    if read_fd < 0 or write_fd < 0:
        logger.debug("MAKEFLAGS jobserver disabled for this process (%s)", auth)
        return None
    return _join_fds(auth, read_fd, write_fd, size, stacklevel + 1, implicit)


def _implicit(auth: str, wanted: bool) -> bool:
    return claim_implicit(auth) if wanted else renounce_implicit()


def _join_fifo(
    auth: str, size: int | None, stacklevel: int, implicit: bool = True
) -> MakePool | None:
    path = auth[len("fifo:") :]
    if not path:
        _fallback(f"malformed jobserver word {auth!r}", stacklevel)
        return None
    with DeferSignals():  # descriptors opened are descriptors the pool owns
        try:
            read_fd, write_fd = open_fifo(path, blocking=False)
        except (OSError, ValueError) as exc:
            problem = f"cannot use the jobserver FIFO {path!r}: {exc}"
        else:
            try:
                pool = MakePool(
                    read_fd,
                    write_fd,
                    form="fifo",
                    auth=auth,
                    fifo_path=path,
                    size=size,
                    implicit=_implicit(auth, implicit),
                )
            except BaseException:
                os.close(read_fd)
                os.close(write_fd)
                raise
            logger.debug("joined the jobserver FIFO %s", path)
            return pool
    _fallback(problem, stacklevel)
    return None


def _join_fds(
    auth: str,
    read_fd: int,
    write_fd: int,
    size: int | None,
    stacklevel: int,
    implicit: bool = True,
) -> MakePool | None:
    import fcntl

    try:
        if not same_pipe(read_fd, write_fd):
            raise ValueError("they are not the two ends of one pipe")
        read_mode = fcntl.fcntl(read_fd, fcntl.F_GETFL) & os.O_ACCMODE
        write_mode = fcntl.fcntl(write_fd, fcntl.F_GETFL) & os.O_ACCMODE
        if read_mode == os.O_WRONLY or write_mode == os.O_RDONLY:
            raise ValueError("they are open in the wrong direction")
    except (OSError, ValueError) as exc:
        reason = "closed" if isinstance(exc, OSError) else str(exc)
        _fallback(
            f"descriptors {read_fd},{write_fd}: {reason}; a recipe must start "
            "with '+' or use $(MAKE) to receive them",
            stacklevel,
        )
        return None
    with DeferSignals():  # descriptors opened are descriptors the pool owns
        return _open_own_ends(auth, read_fd, write_fd, size, implicit)


def _open_own_ends(
    auth: str, read_fd: int, write_fd: int, size: int | None, implicit: bool
) -> MakePool:
    """Open descriptors of our own on Make's pipe and give them to a pool;
    on failure, close what was opened.  Call with signals deferred."""
    opened: list[int] = []
    try:
        # Descriptions of our own, non-blocking: Make's stay exactly as they are.
        own_read = reopen(read_fd, os.O_RDONLY | os.O_NONBLOCK)
        own_write = None
        if own_read is not None:
            opened.append(own_read)
            own_write = reopen(write_fd, os.O_WRONLY | os.O_NONBLOCK)
            if own_write is not None:
                opened.append(own_write)
        shared = own_read is None or own_write is None
        if shared:
            # No /proc: duplicates share Make's descriptions and their mode.
            logger.debug("no private reopen of %s; sharing Make's descriptions", auth)
            while opened:  # pragma: no cover - /proc half works
                os.close(opened.pop())
            own_read = os.dup(read_fd)
            opened.append(own_read)
            own_write = os.dup(write_fd)
            opened.append(own_write)
        assert own_read is not None
        assert own_write is not None
        pool = MakePool(
            own_read,
            own_write,
            form="fds",
            auth=auth,
            size=size,
            implicit=_implicit(auth, implicit),
            shared_read=shared,
        )
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    logger.debug("joined the jobserver pipe %s", auth)
    return pool

"""Advertising a pool to child programs through GNU Make's protocol.

Three ways in (all on ``Jobserver``; docs/make-protocol.md has the user's
view):

* ``Jobserver.advertise(form)`` -> ``MakeAdvertisement``: ``env`` and
  ``pass_fds`` for one ``subprocess`` call, holding one slot for the
  program's implicit token until closed (``consume=1``, the default).
* ``Jobserver.advertise_to_workers(form)`` -> a sibling whose workers run
  with ``MAKEFLAGS`` naming the pool (and, for the fd form, inheritable
  descriptors), so a worker that runs ``make`` stays inside the limit.  The
  program uses the worker's own slot as its implicit token.
* ``Jobserver.with_fifo(...)``: a ``Jobserver`` whose own pool is a FIFO, so
  that the FIFO form can be advertised at all.

Each fd-form advertisement hands out *fresh* open file descriptions of the
pool's pipe, in blocking mode as the protocol expects (reopened through the
FIFO's path or ``/proc/self/fd``).  Whatever the program does to their mode
(GNU Make 4.3 makes its read end non-blocking) stays with that program's
tree.  They are close-on-exec in this process: only a child that is given
them (``pass_fds``) inherits them.
"""

from __future__ import annotations

import collections
import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

from ._exceptions import Blocked
from ._future import check_timeout, deadline_of, remaining
from ._log import get_logger
from ._makeflags import compose, pool_from_environment
from ._multislot import Gather
from ._signals import DeferSignals
from ._slots import (
    FifoPool,
    Ledger,
    MakePool,
    SlotPool,
    give_token,
    open_fifo,
    reopen,
    same_pipe,
)

if TYPE_CHECKING:
    from ._jobserver import ContextArg, Jobserver

__all__ = ["FORMS", "MakeAdvertisement"]

logger = get_logger("jobserver.make")

#: The two forms of ``--jobserver-auth``: inherited descriptors or a FIFO path.
FORMS = ("fds", "fifo")


def check_form(form: Any, pool: SlotPool) -> str:
    if not isinstance(form, str):
        raise TypeError(f"form must be 'fds' or 'fifo', not {type(form).__name__}")
    if form not in FORMS:
        raise ValueError(f"form must be 'fds' or 'fifo', not {form!r}")
    if pool.closed:
        raise RuntimeError("this Jobserver's slots were already released")
    if form == "fifo" and pool.fifo_path is None:
        raise ValueError(
            "the FIFO form needs a pool that is a FIFO: create the Jobserver "
            "with Jobserver.with_fifo(...) (or join a Make that advertises "
            "a FIFO), or advertise the 'fds' form"
        )
    return form


def _fresh_descriptions(pool: SlotPool) -> tuple[int, int]:
    """Blocking descriptions of the pool's pipe for a child program."""
    path = pool.fifo_path
    if path is not None:
        try:
            read_fd, write_fd = open_fifo(path, blocking=True)
        except (OSError, ValueError):
            pass
        else:
            if same_pipe(read_fd, pool.read_fd):
                return read_fd, write_fd
            os.close(read_fd)
            os.close(write_fd)
    read_fd2 = reopen(pool.read_fd, os.O_RDONLY | os.O_NONBLOCK)
    if read_fd2 is not None:
        write_fd2 = reopen(pool.write_fd, os.O_WRONLY | os.O_NONBLOCK)
        if write_fd2 is not None:
            os.set_blocking(read_fd2, True)
            os.set_blocking(write_fd2, True)
            return read_fd2, write_fd2
        os.close(read_fd2)  # pragma: no cover - /proc half works
    logger.warning(
        "cannot open private descriptions of the jobserver pipe here (no "
        "/proc); the child shares this process's (non-blocking) descriptions"
    )
    return os.dup(pool.read_fd), os.dup(pool.write_fd)


class MakeAdvertisement:
    """A pool advertised to child programs in one form of Make's protocol.

    ``env`` is a complete environment (the base environment with
    ``MAKEFLAGS`` rewritten), ``pass_fds`` the descriptors the program must
    inherit (empty for the FIFO form), ``makeflags`` the new ``MAKEFLAGS``::

        with js.advertise() as adv:
            subprocess.run(["make"], env=adv.env, pass_fds=adv.pass_fds)

    While open it holds the slot taken for the program's implicit token, if
    any; ``close`` (or leaving the ``with`` block) gives it back and closes
    ``pass_fds`` in this process.  Close it only after the program exited.
    """

    def __init__(
        self,
        pool: SlotPool,
        form: str,
        base_env: Mapping[str, str],
        ledger: Ledger,
        give_fd: int | None,
    ) -> None:
        self._pid = os.getpid()
        self._ledger = ledger
        self._give_fd = give_fd
        self._closed = False
        self.pass_fds: tuple[int, ...] = ()
        self.form = form
        if form == "fifo":
            auth = f"fifo:{pool.fifo_path}"
        else:
            self.pass_fds = _fresh_descriptions(pool)
            auth = "{},{}".format(*self.pass_fds)
        #: What Make itself writes next to the jobserver word: the total.
        jobs = None if isinstance(pool, MakePool) else pool.size
        self.makeflags = compose(
            base_env.get("MAKEFLAGS"), f"--jobserver-auth={auth}", jobs
        )
        self.env: dict[str, str] = dict(base_env)
        self.env["MAKEFLAGS"] = self.makeflags

    @property
    def holds(self) -> int:
        """How many slots this advertisement holds for the program."""
        return len(self._ledger)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Give the held slot back and close ``pass_fds`` here (idempotent)."""
        if self._closed or self._pid != os.getpid():
            return
        self._closed = True
        fds = [*self.pass_fds, self._give_fd]
        try:
            with DeferSignals():
                while self._ledger and self._give_fd is not None:
                    give_token(self._ledger, self._give_fd)
        finally:
            for fd in fds:
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:  # pragma: no cover
                        pass

    def __enter__(self) -> MakeAdvertisement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed and self._pid == os.getpid():
                description = repr(self)
                self.close()  # first: the warning may be an error
                warnings.warn(
                    f"unclosed {description}; use `with` or close()",
                    ResourceWarning,
                    stacklevel=2,
                )
        except Exception:  # pragma: no cover - interpreter teardown
            pass

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (
            f"<MakeAdvertisement form={self.form!r} makeflags={self.makeflags!r} "
            f"holds={self.holds}{state}>"
        )


# --- the Jobserver methods (thin wrappers in _jobserver) -------------------------


def advertise(
    js: Jobserver,
    form: Any,
    consume: Any,
    timeout: float | None,
    env: Mapping[str, str] | None,
) -> MakeAdvertisement:
    from ._jobserver import _check_consume

    resources = js._resources
    resources.check_usable()
    pool = resources.pool
    form = check_form(form, pool)
    consume = _check_consume(consume, pool.size)
    deadline = deadline_of(check_timeout(timeout))
    if env is None:
        base: Mapping[str, str] = os.environ
    elif isinstance(env, Mapping):
        base = env
    else:
        raise TypeError(f"env must be a mapping, not {type(env).__name__}")
    ledger: Ledger = collections.deque()
    give_fd: int | None = None
    try:
        if consume:
            give_fd = os.dup(pool.write_fd)
            # All or nothing, as submit(consume=k) takes them (_multislot).
            gather = Gather(pool, ledger, consume)
            while True:
                expired = False
                with DeferSignals():
                    if gather.step():
                        break
                    left = remaining(deadline)
                    if left is not None and left <= 0:
                        gather.release()  # before leaving the deferral
                        expired = True
                if expired:
                    raise Blocked("no free slot in time for the advertised program")
                wait_for, watch_pool = gather.wait_plan(left)
                resources.wait_events(wait_for, include_pool=watch_pool)
        return MakeAdvertisement(pool, form, base, ledger, give_fd)
    except BaseException:
        with DeferSignals():
            try:
                while ledger and give_fd is not None:
                    give_token(ledger, give_fd)
            finally:
                if give_fd is not None:
                    os.close(give_fd)
        raise


def advertise_to_workers(js: Jobserver, form: Any) -> Jobserver:
    pool = js._resources.pool
    form = check_form(form, pool)
    other = js._sibling()
    other._preexec = (_advertise_in_worker, (pool, form, js._preexec), {})
    return other


#: Advertisements a worker keeps open for as long as it lives.
_IN_WORKER: list[MakeAdvertisement] = []


def _advertise_in_worker(
    pool: SlotPool,
    form: str,
    inner: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None,
) -> Any:  # pragma: no cover - runs in workers
    """Preexec: name the pool in this worker's ``MAKEFLAGS``, then ``inner``."""
    advertisement = MakeAdvertisement(pool, form, os.environ, collections.deque(), None)
    _IN_WORKER.append(advertisement)
    for fd in advertisement.pass_fds:
        os.set_inheritable(fd, True)
    os.environ["MAKEFLAGS"] = advertisement.makeflags
    if inner is None:
        return None
    fn, args, kwargs = inner
    return fn(*args, **kwargs)


def fifo_jobserver(context: ContextArg, slots: int | None) -> Jobserver:
    from ._jobserver import (
        _check_positive_int,
        _rebuild_jobserver,
        _resolve_context,
        _Resources,
        _usable_cpu_count,
    )

    method = _resolve_context(context)
    pool: SlotPool | None
    if slots is None:
        pool = pool_from_environment(stacklevel=4)
        if pool is None:
            pool = FifoPool(_usable_cpu_count())
    else:
        pool = FifoPool(_check_positive_int(slots, "slots"))
    return _rebuild_jobserver(_Resources(pool, method), {}, None, None)

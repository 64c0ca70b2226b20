"""The launch seam: start one fresh worker process for one submission.

Everything that knows *how* a process is started lives here, behind two
small types:

* ``Launcher.launch(work) -> Worker`` starts a process that runs ``work`` and
  writes its outcome to a fresh result pipe (see ``_wire``).
* ``Worker`` is the parent's handle on that process: the read end of the
  result pipe, a way to learn that the process has exited (``try_reap`` and
  ``exit_fd``), and ``send_signal``.

Start methods:

* ``fork``: ``os.fork`` directly.  Nothing is pickled, so lambdas and closures
  work.  The child inherits the parent's objects; ``_jobserver`` resets its
  per-process bookkeeping there on first use (it compares pids).
* ``spawn`` and ``forkserver`` on Linux: a pre-warmed template process that
  forks per task (``_template``; docs/performance.md).
* ``spawn`` and ``forkserver`` elsewhere (or with ``JOBSERVER_NO_TEMPLATE``
  set): ``multiprocessing``'s own machinery (it knows how to re-import
  ``__main__`` and pass descriptors), with the process removed from
  ``multiprocessing``'s child registry so that its bookkeeping never reaps
  our workers or joins them at exit.

Descriptors cross into spawn/forkserver children with ``share_fd_with_child``
(used by the reducers of slot pools and of the result pipe), which works
only while ``multiprocessing`` is pickling a process it is starting.

``multiprocessing`` itself is imported only by the spawn and forkserver
launchers (and by whoever asks for a context object): a process that forks
its workers and never imported it does not carry it.  Everything a process
has imported makes each of its forks slower (docs/performance.md).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Union

from . import _signals, _wire

if TYPE_CHECKING:
    import multiprocessing.context

    #: A start method: its name, or a ``multiprocessing`` context object.
    ContextSpec = Union[str, multiprocessing.context.BaseContext]
else:
    # Not a string forward reference: typing compiles those, and the first
    # compile() in a process keeps about 200 KiB for good.
    ContextSpec = Union[str, object]

__all__ = ["Launcher", "Work", "Worker", "launcher_for"]

_HAVE_PIDFD = hasattr(os, "pidfd_open")


class Work:
    """What a worker runs: ``fn(*args, **kwargs)`` after env and preexec."""

    __slots__ = ("args", "env", "fn", "kwargs", "preexec")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        env: tuple[tuple[str, str | None], ...],
        preexec: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.env = env
        self.preexec = preexec

    def __reduce__(self) -> tuple[Any, ...]:
        return (Work, (self.fn, self.args, self.kwargs, self.env, self.preexec))

    def call(self) -> Any:
        for key, value in self.env:
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self.preexec is None:
            return self.fn(*self.args, **self.kwargs)
        pre_fn, pre_args, pre_kwargs = self.preexec
        manager = pre_fn(*pre_args, **pre_kwargs)
        if manager is None:
            return self.fn(*self.args, **self.kwargs)
        with manager:
            return self.fn(*self.args, **self.kwargs)


class Worker:
    """The parent's handle on one launched worker process."""

    __slots__ = ("_exit_fd", "pid", "result_fd", "returncode")

    def __init__(self, pid: int, result_fd: int) -> None:
        self.pid = pid
        self.result_fd = result_fd
        self.returncode: int | None = None
        self._exit_fd: int | None = None

    def try_reap(self) -> bool:
        """Reap the process if it has exited; ``True`` once it has been."""
        if self.returncode is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Somebody else reaped it (os.wait() in user code, say).
            self.returncode = -255
            return True
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        return True

    def exit_fd(self) -> int | None:
        """A descriptor that becomes readable when the process exits, if any."""
        if self._exit_fd is None and _HAVE_PIDFD and self.returncode is None:
            try:
                self._exit_fd = os.pidfd_open(self.pid)
            except OSError:
                return None
        return self._exit_fd

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` unless the process was already reaped."""
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Close the exit descriptor (the result pipe belongs to the Future)."""
        fd, self._exit_fd = self._exit_fd, None
        if fd is not None:
            os.close(fd)


class ForeignWorker(Worker):
    """A worker that another process forked and reaps (multiprocessing's fork
    server, or the template): signalled through a pidfd, since once that
    process reaps it, its pid may name another process."""

    __slots__ = ("_pidfd",)

    def __init__(self, pid: int, result_fd: int, pidfd: int | None = None) -> None:
        super().__init__(pid, result_fd)
        #: Opened when (or as soon as possible after) the process was forked,
        #: by whoever could not have reaped it yet; closed by ``close``.
        self._pidfd = pidfd

    def _open_pidfd(self) -> None:
        """Open the pidfd unless it is open; raises ProcessLookupError if the
        process is gone.  Without pidfds (or a descriptor to spare) signals
        go by pid."""
        if self._pidfd is None and _HAVE_PIDFD:
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except ProcessLookupError:
                raise
            except OSError:
                pass

    def _signal(self, signum: int) -> None:
        """Send ``signum``; a process already gone is no error."""
        try:
            self._open_pidfd()
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            os.close(fd)
        super().close()


class _ForkserverWorker(ForeignWorker):
    """A worker forked by multiprocessing's fork server (not our child)."""

    __slots__ = ("_popen",)

    def __init__(self, popen: Any, result_fd: int) -> None:
        super().__init__(popen.pid, result_fd)
        self._popen = popen
        # The pidfd at once: the fork server reaps the process whenever it
        # exits, and our Future learns of that only later.
        try:
            self._open_pidfd()
        except ProcessLookupError:
            pass

    def try_reap(self) -> bool:
        if self.returncode is None:
            code = self._popen.poll(os.WNOHANG)
            if code is None:
                return False
            self.returncode = int(code)
        return True

    def exit_fd(self) -> int | None:
        if self.returncode is not None:
            return None
        return int(self._popen.sentinel)

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            self._signal(signum)

    def close(self) -> None:
        super().close()
        self._popen.close()


class Launcher:
    """Starts workers for one start method."""

    method = ""
    #: Whether ``prepare`` does anything (launch skips calling it if not).
    needs_prepare = True

    def prepare(self) -> None:
        """Start helper processes this launcher needs.

        Called before signals are deferred for a launch, so that long-lived
        helpers (multiprocessing's fork server and resource tracker) never
        inherit a blocked signal mask.
        """

    def launch(self, work: Work) -> Worker:
        """Start a worker for ``work`` (called with signals deferred)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop helper processes (the resource set was closed)."""


def _result_pipe() -> tuple[int, int]:
    """A fresh result pipe: (read end for the parent, write end for the child)."""
    return os.pipe()  # both ends close-on-exec


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, ValueError, OSError):
            pass


class ForkLauncher(Launcher):
    """``os.fork`` per submission: the fastest, and no pickling of the work."""

    method = "fork"
    needs_prepare = False

    def launch(self, work: Work) -> Worker:
        # _result_pipe and _flush_std_streams inline (see _Resources.launch).
        read_fd, write_fd = os.pipe()
        try:
            for stream in (sys.stdout, sys.stderr):
                try:
                    if stream is not None:
                        stream.flush()
                except (AttributeError, ValueError, OSError):
                    pass
            pid = os.fork()
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:  # pragma: no cover - runs in the child, which _exits
            code = 70
            try:
                _signals.restore_outer_in_child()
                os.close(read_fd)
                _reset_multiprocessing_in_forked_child()
                code = worker_main(work, write_fd)
            finally:
                os._exit(code)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        return Worker(pid, read_fd)


def _reset_multiprocessing_in_forked_child() -> None:  # pragma: no cover
    """Do for our forked worker what multiprocessing does for its own (if
    the parent imported it: otherwise there is nothing to reset)."""
    # Either module may be half imported: another thread was importing it
    # when this process was forked.  Then it has nothing to reset yet.
    process: Any = sys.modules.get("multiprocessing.process")
    if process is not None and getattr(process, "_children", None):
        process._children = set()
    util: Any = sys.modules.get("multiprocessing.util")
    registry = getattr(util, "_afterfork_registry", None)
    # Its dict, not len(registry): WeakValueDictionary.__len__ is one more
    # function for every worker (an entry that died meanwhile is harmless).
    if registry is not None and getattr(registry, "data", registry):
        util._run_after_forkers()


class MultiprocessingLauncher(Launcher):
    """``spawn`` or ``forkserver`` through ``multiprocessing``'s Process."""

    def __init__(self, context: ContextSpec) -> None:
        self.mp_context = as_mp_context(context)
        self.method = self.mp_context.get_start_method()

    def prepare(self) -> None:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        if self.method == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()

    def launch(self, work: Work) -> Worker:
        import multiprocessing.process

        read_fd, write_fd = _result_pipe()
        try:
            process = self.mp_context.Process(  # type: ignore[attr-defined]
                target=_mp_entry,
                args=(
                    work,
                    _InheritedFd(write_fd),
                    _signals.outer_mask(),
                    # The fork server's environment is a snapshot from when it
                    # started; workers must see the parent's current one.
                    dict(os.environ) if self.method == "forkserver" else None,
                ),
                name="jobserver-worker",
            )
            try:
                process.start()
            except (TypeError, AttributeError, pickle.PicklingError) as exc:
                raise TypeError(
                    "the submitted work cannot be pickled for the "
                    f"{self.method!r} start method: {exc}"
                ) from exc
            # multiprocessing must never reap or join our workers.
            multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        popen = process._popen
        if self.method == "forkserver":
            return _ForkserverWorker(popen, read_fd)
        worker = Worker(popen.pid, read_fd)
        # Our pidfd/waitpid replace multiprocessing's sentinel for this child.
        popen.close()
        return worker


def start_method(context: ContextSpec) -> str:
    """The name of a start method given by name or by context."""
    return context if isinstance(context, str) else context.get_start_method()


def as_mp_context(context: ContextSpec) -> multiprocessing.context.BaseContext:
    """The ``multiprocessing`` context for a start method (imports it)."""
    if not isinstance(context, str):
        return context
    import multiprocessing

    return multiprocessing.get_context(context)


def launcher_for(context: ContextSpec) -> Launcher:
    """The launcher for a start method (a name or a ``multiprocessing``
    context; only the name matters under fork)."""
    if start_method(context) == "fork":
        return ForkLauncher()
    from . import _template

    if _template.available() and not os.environ.get("JOBSERVER_NO_TEMPLATE"):
        return _template.TemplateLauncher(as_mp_context(context))
    return MultiprocessingLauncher(context)


# --- descriptors for spawn/forkserver children -------------------------------


def share_fd_with_child(fd: int) -> Any:
    """Arrange for ``fd`` to reach the child ``multiprocessing`` is starting.

    Call only from a ``__reduce__`` that runs while a spawn/forkserver child
    is being prepared; returns a picklable reference for ``fd_from_parent``.
    """
    from multiprocessing import context as mp_context
    from multiprocessing import reduction

    if mp_context.get_spawning_popen() is None:
        raise TypeError(
            "a Jobserver can be pickled only as part of work submitted to a "
            "Jobserver (or started by multiprocessing), not on its own"
        )
    return reduction.DupFd(fd)


def fd_from_parent(reference: Any) -> int:
    """The descriptor behind a reference made by ``share_fd_with_child``."""
    if isinstance(reference, int):
        return reference
    return int(reference.detach())


class _InheritedFd:
    """An int descriptor that pickles as a descriptor passed to the child."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (fd_from_parent, (share_fd_with_child(self.fd),))


def _mp_entry(
    work: Work, result_fd: Any, mask: Any, environ: dict[str, str] | None
) -> None:  # pragma: no cover - runs in the child
    code = 70
    try:
        _signals.restore_in_child(mask)
        if environ is not None:
            os.environ.clear()
            os.environ.update(environ)
        fd = result_fd.fd if isinstance(result_fd, _InheritedFd) else int(result_fd)
        _close_on_exec_in_mp_child(fd)
        code = worker_main(work, fd)
    finally:
        os._exit(code)


def _close_on_exec_in_mp_child(result_fd: int) -> None:  # pragma: no cover
    """Make what multiprocessing passed this child close-on-exec.

    multiprocessing hands descriptors to spawn/forkserver children
    inheritable: the result pipe's write end, its resource tracker's pipe,
    the pipes that tell the parent (spawn) or the fork server (forkserver)
    that this process lives.  None is meant for the programs a worker
    starts, and no user code but ``__main__``'s import has run yet: every
    inheritable descriptor above 2 is one of them.
    """
    fds: set[Any] = {result_fd}
    try:
        from multiprocessing import forkserver, resource_tracker
    except ImportError:
        pass
    else:
        fds.add(getattr(resource_tracker._resource_tracker, "_fd", None))
        fds.add(getattr(forkserver._forkserver, "_forkserver_alive_fd", None))
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            fds.update(int(name) for name in os.listdir(listing))
        except (OSError, ValueError):
            continue
        break
    for fd in fds:
        if isinstance(fd, int) and fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, closed since


# --- the child side ----------------------------------------------------------


#: Set by ``_jobserver``: waits for this process's own nested submissions.
def drain_nested_work() -> None:
    return None


#: In a worker: the write end of its own result pipe.  A process forked from
#: the worker (a nested worker, or the task's own os.fork) must not keep it
#: open, or the parent would not see end-of-file when the worker dies.
_own_result_fd: int | None = None


def _close_inherited_result_fd() -> None:  # pragma: no cover - forked children
    global _own_result_fd
    fd, _own_result_fd = _own_result_fd, None
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


#: Whether this interpreter runs ``_close_inherited_result_fd`` in its forked
#: children.  The first ``worker_main`` registers it (as ``_forkhooks`` does
#: for the other modules, inline here: it runs in every worker): a process
#: that is no worker has no result pipe to close.  Forked children inherit
#: both the registration and this flag.
_close_hook_registered = False


def worker_main(work: Work, result_fd: int) -> int:  # pragma: no cover - child
    """Run ``work`` in this (worker) process; return the exit status.

    The outcome goes down ``result_fd`` unless the task ended the process's
    normal flow (``SystemExit``, ``KeyboardInterrupt``, other non-``Exception``
    ``BaseException``): then nothing is written and the parent reports
    ``LostResult``.  Nested work this process submitted and did not wait for
    is waited for before exiting, so its slots go back to the pool.
    """
    global _own_result_fd, _close_hook_registered
    _own_result_fd = result_fd
    if not _close_hook_registered:
        _close_hook_registered = True
        os.register_at_fork(after_in_child=_close_inherited_result_fd)
    code = 0
    parts: list[bytes] | None = None
    # Work.call, encode_value, write_all and _flush_std_streams are inline
    # for the common cases: every function a freshly forked worker calls
    # costs it a copy-on-write fault, and on a busy machine the worker's
    # time competes with its parent's.
    try:
        try:
            if work.preexec is None and not work.env:
                value = work.fn(*work.args, **work.kwargs)
            else:
                value = work.call()
        except Exception as exc:
            parts = _wire.encode_exception(exc)
        else:
            parts = _NONE_PARTS if value is None else _wire.encode_value(value)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:
        code = 1
    if parts is not None:
        try:
            if parts is _NONE_PARTS:
                os.write(result_fd, _wire.NONE_FRAME)  # all of it: < PIPE_BUF
            else:
                _wire.write_all(result_fd, parts)
        except OSError:
            code = 1
    # The result pipe is left for the exit to close: the parent then sees
    # end-of-file when the process is (all but) gone and can usually reap it
    # at once, instead of waking a second time for the exit.
    try:
        drain_nested_work()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
    return code


#: What ``_wire.encode_value(None)`` returns.
_NONE_PARTS = _wire.encode_value(None)


def env_items(
    env: Mapping[str, str | None],
) -> tuple[tuple[str, str | None], ...]:
    return tuple(env.items())

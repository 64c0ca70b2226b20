"""``Jobserver.run``: an external command inside the limit.

``subprocess.run`` with two additions: the command runs on ``consume``
slots taken from the pool (waiting up to ``slot_timeout``), and the pool is
advertised to it in ``MAKEFLAGS`` (``Jobserver.advertise``), so a ``make``,
``ninja`` (>= 1.13), ``cargo`` or Python program using ``Jobserver()`` that
it starts joins the same limit, using one of those slots as its implicit
one.  In the fd form the two descriptors of the advertisement are passed
with ``pass_fds`` and nothing else is inherited (``close_fds`` stays on);
the FIFO form passes none.

The slots go back only after the command has been reaped: on a timeout,
an exception or ``KeyboardInterrupt`` the command is killed and waited for
first, so the limit also holds while a build is being torn down.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._future import check_timeout
from ._signals import DeferSignals

if TYPE_CHECKING:
    from ._jobserver import Jobserver

__all__ = ["run_command"]


def run_command(
    js: Jobserver,
    args: Any,
    *,
    consume: int,
    form: str,
    slot_timeout: float | None,
    env: Mapping[str, str] | None,
    input: Any,
    capture_output: bool,
    timeout: float | None,
    check: bool,
    pass_fds: Sequence[int],
    popen_kwargs: dict[str, Any],
) -> subprocess.CompletedProcess[Any]:
    args = _check_args(args)
    if capture_output:
        if (
            popen_kwargs.get("stdout") is not None
            or popen_kwargs.get("stderr") is not None
        ):
            raise ValueError(
                "stdout and stderr arguments may not be used with capture_output."
            )
        popen_kwargs["stdout"] = subprocess.PIPE
        popen_kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        if popen_kwargs.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        popen_kwargs["stdin"] = subprocess.PIPE
    if popen_kwargs.get("close_fds") is False:
        raise ValueError(
            "close_fds=False would leak descriptors into the command; pass "
            "the ones it needs in pass_fds"
        )
    # As every timeout here: one no clock can count means no timeout.
    timeout = check_timeout(timeout)
    extra_fds = tuple(pass_fds)
    for fd in extra_fds:
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"pass_fds must hold ints, not {type(fd).__name__}")
    # The advertisement (the slots) outlives the Popen block: the command is
    # reaped before they go back.
    with js.advertise(  # noqa: SIM117 - 3.9 has no parenthesized with
        form, consume=consume, timeout=slot_timeout, env=env
    ) as adv:
        with subprocess.Popen(
            args, env=adv.env, pass_fds=(*extra_fds, *adv.pass_fds), **popen_kwargs
        ) as process:
            try:
                stdout, stderr = process.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                process.kill()
                # Collect what it wrote; this also reaps it.
                exc.stdout, exc.stderr = process.communicate()
                raise
            except BaseException:
                process.kill()
                _reap(process)
                raise
            returncode = process.poll()
            assert returncode is not None
    if check and returncode:
        raise subprocess.CalledProcessError(
            returncode, process.args, output=stdout, stderr=stderr
        )
    return subprocess.CompletedProcess(process.args, returncode, stdout, stderr)


def _check_args(args: Any) -> Any:
    """``args`` as ``subprocess`` takes it: a program (str, bytes, path) or
    a non-empty sequence of them; checked before any slot is taken."""
    if isinstance(args, (str, bytes, os.PathLike)):
        return args
    if not isinstance(args, Sequence):
        raise TypeError(
            "args must be a str, bytes, path or a sequence of them, "
            f"not {type(args).__name__}"
        )
    if not args:
        raise ValueError("args must not be empty: it names the program to run")
    for item in args:
        if not isinstance(item, (str, bytes, os.PathLike)):
            raise TypeError(
                f"args must hold str, bytes or paths, not {type(item).__name__}"
            )
    return args


def _reap(process: subprocess.Popen[Any]) -> None:
    """Wait for a killed command before its slots go back."""
    with DeferSignals():
        process.wait()

"""The ``serve``, ``status``, ``limit`` and ``stop`` subcommands of the CLI.

``jobserver serve -j N [--fifo PATH]`` runs a standing jobserver (``_serve``)
and prints the line a shell evaluates to join it; the other three talk to
a running server through its control socket.  Without ``--fifo`` they find
the server through the FIFO named in this shell's ``MAKEFLAGS``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "main"]

SUBCOMMANDS = ("serve", "status", "limit", "stop")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobserver",
        description=(
            "A standing GNU Make jobserver (a FIFO of tokens) that any shell "
            "on this machine can join, and the commands that inspect, resize "
            "and stop it. See docs/machine-wide.md."
        ),
    )
    sub = parser.add_subparsers(dest="subcommand", required=True)
    serve = sub.add_parser(
        "serve",
        help="run a standing jobserver",
        description=(
            "Create a FIFO jobserver of N slots and serve it until stopped. "
            "The first line on stdout is shell code that joins it: "
            'eval "$(jobserver serve -j N --background)". Like make -jN, '
            "the FIFO holds N-1 tokens: the program at the top of a build "
            "owns one implicit slot."
        ),
    )
    serve.add_argument(
        "-j",
        "--jobs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="the limit (default: the CPUs this process may use)",
    )
    serve.add_argument(
        "--fifo",
        metavar="PATH",
        help=(
            "create the FIFO at PATH (it must not exist; the control socket "
            "is PATH.control); default: a fresh private directory"
        ),
    )
    serve.add_argument(
        "--print",
        dest="print_form",
        choices=("fifo", "fds"),
        default="fifo",
        help=(
            "the form of the printed line: fifo (--jobserver-auth=fifo:PATH, "
            "GNU Make >= 4.4, ninja >= 1.13, this library) or fds (the shell "
            "opens the FIFO on descriptors 8 and 9: GNU Make >= 4.2, cargo)"
        ),
    )
    serve.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help=(
            "on SIGINT/SIGTERM/SIGHUP, wait this long for tokens in use to "
            "come back before reporting the lost ones (default 10; a second "
            "signal stops waiting)"
        ),
    )
    serve.add_argument(
        "--background",
        action="store_true",
        help="print the line, then serve in a background process and exit",
    )
    serve.add_argument(
        "--log",
        metavar="FILE",
        help="with --background: append the server's messages to FILE",
    )
    for name, text in (
        ("status", "print the status of a running jobserver"),
        ("limit", "change the limit of a running jobserver"),
        ("stop", "stop a running jobserver and report lost tokens"),
    ):
        command = sub.add_parser(name, help=text, description=text)
        command.add_argument(
            "--fifo",
            metavar="PATH",
            help="the server's FIFO (default: the one in MAKEFLAGS)",
        )
        if name == "limit":
            command.add_argument("jobs", type=_positive_int, metavar="N")
        if name == "stop":
            command.add_argument(
                "--grace",
                type=_seconds,
                default=None,
                metavar="SECONDS",
                help="how long to wait for tokens in use (default: the server's)",
            )
    return parser


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(list(argv))
    if args.subcommand == "serve":
        return _serve(args)
    fifo = args.fifo or _fifo_from_makeflags()
    if fifo is None:
        print(
            "jobserver: no --fifo PATH, and MAKEFLAGS names no jobserver FIFO",
            file=sys.stderr,
        )
        return 1
    from ._serve import parse_reply, request

    if args.subcommand == "status":
        line = "status"
    elif args.subcommand == "limit":
        line = f"limit {args.jobs}"
    else:
        line = "stop" if args.grace is None else f"stop {args.grace}"
    try:
        reply = request(fifo, line, timeout=None if line.startswith("stop") else 30)
    except OSError as exc:
        print(f"jobserver: {exc.strerror or exc}", file=sys.stderr)
        return 1
    sys.stdout.write(reply)
    if reply.startswith("error:"):
        return 1
    if args.subcommand == "stop":
        lost = parse_reply(reply).get("lost", "0")
        return 0 if lost == "0" else 1
    return 0


def _fifo_from_makeflags() -> str | None:
    from ._makeflags import parse

    auth = parse(os.environ.get("MAKEFLAGS", "")).auth
    if auth is None:
        return None
    if auth.startswith("fifo:"):
        return auth[len("fifo:") :] or None
    # The fd form a shell opened on the server's FIFO (serve --print fds).
    read_fd = auth.split(",", 1)[0]
    try:
        target = os.readlink(f"/proc/self/fd/{int(read_fd)}")
    except (OSError, ValueError):
        return None
    return target if target.startswith("/") else None


def _serve(args: argparse.Namespace) -> int:
    from ._jobserver import _usable_cpu_count
    from ._serve import Server

    limit: int = args.jobs or _usable_cpu_count()
    if args.log and not args.background:
        print("jobserver: --log goes with --background", file=sys.stderr)
        return 2
    try:
        server = Server(limit, args.fifo)
    except (OSError, ValueError) as exc:
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"jobserver: cannot serve: {message}", file=sys.stderr)
        return 1
    # Handlers first: once the line is out, clients and signals may come.
    try:
        server.install_signals()
    except BaseException:
        server.close()
        raise
    line = server.shell_line(args.print_form)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if args.background:
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            print(
                f"jobserver: serving {limit} slots at {server.fifo_path} "
                f"(pid {pid}); stop it with: jobserver stop",
                file=sys.stderr,
            )
            return 0
        _become_daemon(args.log)
    else:
        print(
            f"jobserver: serving {limit} slots at {server.fifo_path} (pid "
            f"{os.getpid()}); stop with Ctrl-C or: jobserver stop",
            file=sys.stderr,
        )
    status = 1
    try:
        status = server.serve(args.grace, sys.stderr)
    finally:
        server.close()
    if args.background:
        sys.stderr.flush()
        os._exit(status)
    return status


def _become_daemon(log: str | None) -> None:  # pragma: no cover - forked
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    err = null
    if log:
        err = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(err, 2)
    for fd in {null, err}:
        if fd > 2:
            os.close(fd)

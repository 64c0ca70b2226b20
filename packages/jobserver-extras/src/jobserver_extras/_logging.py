"""Logging preexec: configure logging in every worker, optionally forwarding
its records to the parent's handlers.

Forwarding design (no threads, workers never block on the parent):

* ``LogForwarder`` creates an unlinked temporary file opened ``O_APPEND`` -
  the *spool*.  Workers receive its descriptor (inherited under ``fork``,
  passed by ``multiprocessing`` under ``spawn``/``forkserver``) and append
  one self-delimiting frame per record with a single ``write``.  Appends to
  one file are placed atomically, so frames from concurrent workers never
  interleave.
* The parent reads new frames whenever it calls ``drain()`` (or leaves the
  forwarder's ``with`` block) and hands each rebuilt ``LogRecord`` to its
  own loggers.  Nothing waits on the parent: a worker's records are on disk
  the moment it logs them, even if it is killed right after.
* Frames are ``magic | length | crc32 | JSON``.  The JSON text is printable
  ASCII and the magic starts with a NUL byte, so the reader can always find
  the next frame after a fragment that a killed worker left half-written.
  Nothing is unpickled: a record's arguments arrive already formatted into
  its message, and extra attributes that JSON cannot carry arrive as their
  ``repr``.
* Consumed data is released with ``fallocate(PUNCH_HOLE)`` where the file
  system supports it, so a long-lived forwarder does not keep disk space.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import struct
import sys
import tempfile
import threading
import warnings
import zlib
from types import TracebackType
from typing import Any, Union

from . import _fds
from ._platform import logger, require_posix

__all__ = ["LogForwarder", "WorkerLogging"]

DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s [pid %(process)d]: %(message)s"

_MAGIC = b"\x00\xffJR"
_HEADER = struct.Struct("!4sII")  # magic, payload length, crc32 of payload
_MAX_PAYLOAD = 64 * 1024 * 1024
_READ_CHUNK = 1024 * 1024
_PUNCH_EVERY = 1024 * 1024

_RECORD_FIELDS = (
    "name",
    "msg",
    "levelname",
    "levelno",
    "pathname",
    "filename",
    "module",
    "lineno",
    "funcName",
    "created",
    "msecs",
    "relativeCreated",
    "thread",
    "threadName",
    "processName",
    "process",
    "exc_text",
    "stack_info",
)

Target = Union[logging.Logger, logging.Handler, None]


# --- worker side -------------------------------------------------------------


def _jsonable(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def encode_record(record: logging.LogRecord, formatter: logging.Formatter) -> bytes:
    """One spool frame for ``record`` (message pre-formatted, no pickles)."""
    fields = dict(record.__dict__)
    fields["msg"] = record.getMessage()
    fields["args"] = None
    if record.exc_info and not record.exc_text:
        fields["exc_text"] = formatter.formatException(record.exc_info)
    fields["exc_info"] = None
    fields.pop("message", None)
    try:
        text = json.dumps(fields, default=_jsonable, separators=(",", ":"))
    except (TypeError, ValueError):  # e.g. an extra dict with non-str keys
        basic = {key: fields.get(key) for key in _RECORD_FIELDS}
        text = json.dumps(basic, default=_jsonable, separators=(",", ":"))
    payload = text.encode("ascii")
    return _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


class _Sink:
    """The spool descriptor as carried to workers."""

    __slots__ = ("closed", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False  # set by LogForwarder.close(): fd is stale

    def check_open(self) -> None:
        if self.closed:
            raise ValueError(
                "the LogForwarder this WorkerLogging forwards to is closed"
            )

    def __reduce__(self) -> tuple[Any, ...]:
        self.check_open()
        if not _fds.spawning():
            raise TypeError(
                "a WorkerLogging that forwards to a LogForwarder can be pickled "
                "only as part of work being launched, not on its own"
            )
        return (_rebuild_sink, (_fds.fd_for_child(self.fd),))


def _rebuild_sink(reference: Any) -> _Sink:
    return _Sink(_fds.fd_from_parent(reference))


class _SpoolHandler(logging.Handler):
    """Appends each record to the spool with one ``write``."""

    def __init__(self, sink: _Sink) -> None:
        super().__init__()
        self._fd = sink.fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            view = memoryview(encode_record(record, self.formatter or _FORMATTER))
            while view:
                view = view[os.write(self._fd, view) :]
        except Exception:
            self.handleError(record)


_FORMATTER = logging.Formatter()


def _all_handlers() -> list[logging.Handler]:
    loggers: list[logging.Logger] = [logging.getLogger()]
    for item in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(item, logging.Logger):
            loggers.append(item)
    seen: dict[int, logging.Handler] = {}
    for each in loggers:
        for handler in list(each.handlers):
            seen.setdefault(id(handler), handler)
    return list(seen.values())


def flush_all_handlers() -> None:
    """Flush every handler attached to any logger in this process."""
    for handler in _all_handlers():
        try:
            handler.flush()
        except Exception:
            pass


class _LoggingScope:
    """Logging configured for one task; flushed and restored on exit."""

    def __init__(self, config: WorkerLogging) -> None:
        self._config = config
        self._handler: logging.Handler | None = None
        self._saved_level = logging.NOTSET
        self._removed: list[logging.Handler] = []

    def __enter__(self) -> _LoggingScope:
        config = self._config
        if config._sink is not None:
            config._sink.check_open()
        root = logging.getLogger()
        self._saved_level = root.level
        if config.replace_handlers:
            self._removed = list(root.handlers)
            for old in self._removed:
                root.removeHandler(old)
        handler: logging.Handler
        if config._sink is not None:
            handler = _SpoolHandler(config._sink)
        else:
            handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(config.formatter())
        root.addHandler(handler)
        root.setLevel(config.level)
        self._handler = handler
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        flush_all_handlers()
        root = logging.getLogger()
        handler, self._handler = self._handler, None
        if handler is not None:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(self._saved_level)
        for old in self._removed:
            root.addHandler(old)
        self._removed = []


def _check_level(level: Any) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, str)):
        raise TypeError(
            f"level must be an int or a level name, not {type(level).__name__}"
        )
    if isinstance(level, int):
        if level < 0:
            raise ValueError(f"level must be >= 0, not {level}")
        return level
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"level {level!r} is not a known logging level name")
    return number


class WorkerLogging:
    """Preexec: configure logging in each worker for the task's duration.

    In the worker the root logger gets ``level`` and one handler: a stream
    handler on ``sys.stderr`` using ``format``/``datefmt``/``style`` or, with
    ``forward=``, a handler that sends every record to that ``LogForwarder``
    in the parent.  With ``replace_handlers`` (the default) handlers the
    worker inherited (under ``fork``) are detached for the task, so workers
    do not write through copies of the parent's handlers.  On exit every
    handler in the worker is flushed and the previous configuration is
    restored - the worker exits with ``os._exit``, so nothing else would
    flush them.
    """

    __slots__ = ("_datefmt", "_format", "_level", "_replace", "_sink", "_style")

    def __init__(
        self,
        level: int | str = logging.INFO,
        *,
        format: str = DEFAULT_FORMAT,
        datefmt: str | None = None,
        style: str = "%",
        forward: LogForwarder | None = None,
        replace_handlers: bool = True,
    ) -> None:
        self._level = _check_level(level)
        if not isinstance(format, str):
            raise TypeError(f"format must be a str, not {type(format).__name__}")
        if datefmt is not None and not isinstance(datefmt, str):
            raise TypeError(
                f"datefmt must be a str or None, not {type(datefmt).__name__}"
            )
        if style not in ("%", "{", "$"):
            raise ValueError(f"style must be '%', '{{' or '$', not {style!r}")
        try:
            logging.Formatter(format, datefmt, style, validate=True)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"format: {exc}") from None
        self._format = format
        self._datefmt = datefmt
        self._style = style
        if not isinstance(replace_handlers, bool):
            raise TypeError(
                "replace_handlers must be a bool, not "
                f"{type(replace_handlers).__name__}"
            )
        self._replace = replace_handlers
        if forward is not None and not isinstance(forward, LogForwarder):
            raise TypeError(
                f"forward must be a LogForwarder or None, not {type(forward).__name__}"
            )
        if forward is not None and forward.closed:
            raise ValueError("forward: the LogForwarder is closed")
        self._sink = None if forward is None else forward._sink

    @property
    def level(self) -> int:
        """The root logger's level in the worker."""
        return self._level

    @property
    def replace_handlers(self) -> bool:
        """Whether inherited root handlers are detached for the task."""
        return self._replace

    @property
    def forwarding(self) -> bool:
        """Whether records go to a ``LogForwarder`` instead of ``stderr``."""
        return self._sink is not None

    def formatter(self) -> logging.Formatter:
        """A formatter built from ``format``, ``datefmt`` and ``style``."""
        return logging.Formatter(self._format, self._datefmt, self._style)  # type: ignore[arg-type]

    def __call__(self) -> _LoggingScope:
        """In the worker: the context manager that wraps the task."""
        return _LoggingScope(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_logging,
            (
                self._level,
                self._format,
                self._datefmt,
                self._style,
                self._replace,
                self._sink,
            ),
        )

    def __repr__(self) -> str:
        target = "forward" if self._sink is not None else "stderr"
        return (
            f"WorkerLogging({logging.getLevelName(self._level)!r}, "
            f"format={self._format!r}, to={target})"
        )


def _rebuild_logging(
    level: int,
    format: str,
    datefmt: str | None,
    style: str,
    replace: bool,
    sink: _Sink | None,
) -> WorkerLogging:
    obj = object.__new__(WorkerLogging)
    obj._level = level
    obj._format = format
    obj._datefmt = datefmt
    obj._style = style
    obj._replace = replace
    obj._sink = sink
    return obj


# --- parent side -------------------------------------------------------------


def _hole_puncher() -> Any:
    """``fallocate`` from the C library, or ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    return fallocate


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


class LogForwarder:
    """Parent side of log forwarding: collects records that workers send.

    Pass it to ``WorkerLogging(forward=...)``.  Records wait in a private,
    unlinked temporary file (in ``directory``, default ``tempfile``'s) until
    ``drain()`` reads them and hands each to ``target``: ``None`` (the
    default) dispatches to the parent's logger of the record's name, as if
    it had been logged here; a ``Logger`` or ``Handler`` receives every
    record.  Logger levels were applied in the worker; the parent's handler
    levels and filters still apply.

    No thread is involved and workers never wait for the parent: call
    ``drain()`` when convenient (after ``result()``, from a ``when_done``
    callback, periodically).  A worker's records are all in the spool before
    its result reaches the parent.  Use as a context manager or call
    ``close()``: both drain what is left first.
    """

    def __init__(self, target: Target = None, *, directory: str | None = None) -> None:
        require_posix("LogForwarder", "pread(2) and O_APPEND")
        if target is not None and not isinstance(
            target, (logging.Logger, logging.Handler)
        ):
            raise TypeError(
                "target must be None, a logging.Logger or a logging.Handler, not "
                f"{type(target).__name__}"
            )
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise TypeError(
                f"directory must be a path or None, not {type(directory).__name__}"
            )
        if directory is not None and not os.path.isdir(directory):
            raise ValueError(f"directory {os.fspath(directory)!r} is not a directory")
        self._target = target
        self._lock = threading.RLock()
        fd, path = tempfile.mkstemp(prefix="jobserver-log-", dir=directory)
        try:
            os.unlink(path)
            import fcntl

            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_APPEND)
        except BaseException:
            os.close(fd)
            raise
        self._sink: _Sink | None = _Sink(fd)
        self._fd = fd
        self._pid = os.getpid()
        self._buffer = bytearray()
        self._read_at = 0  # file offset of the next byte to read
        self._punched = 0  # bytes before this offset were released
        self._puncher = _hole_puncher()
        self._handled = 0
        self._skipped = 0

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._sink is None

    @property
    def handled(self) -> int:
        """How many records ``drain()`` has handed on so far."""
        return self._handled

    @property
    def skipped_bytes(self) -> int:
        """Bytes discarded as fragments of records cut short (killed writers)."""
        return self._skipped

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            "a LogForwarder stays in the parent; pass WorkerLogging(forward=...) "
            "to workers instead"
        )

    def drain(self) -> int:
        """Hand every complete record now in the spool to the target.

        Returns how many records were handled.  Safe to call from any thread;
        calls are serialized.
        """
        with self._lock:
            if self._sink is None:
                return 0
            self._read_new()
            records = self._parse(final=False)
            self._release()
            for record in records:
                self._handled += 1
                self._dispatch(record)
        return len(records)

    def close(self) -> None:
        """Drain what is left, then release the spool.  Idempotent."""
        with self._lock:
            if self._sink is None:
                return
            self._read_new()
            records = self._parse(final=True)
            self._sink.closed = True
            self._sink = None
            fd, self._fd = self._fd, -1
            os.close(fd)
            for record in records:
                self._handled += 1
                self._dispatch(record)

    def __enter__(self) -> LogForwarder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_sink", None) is not None and self._pid == os.getpid():
                warnings.warn(
                    "LogForwarder dropped without close(); undrained records are lost",
                    ResourceWarning,
                    stacklevel=2,
                )
                os.close(self._fd)
                self._sink = None
        except Exception:  # pragma: no cover - interpreter teardown
            pass

    def __repr__(self) -> str:
        state = "closed" if self._sink is None else f"fd={self._fd}"
        return f"<LogForwarder {state} handled={self._handled}>"

    # --- internals ---------------------------------------------------------

    def _read_new(self) -> None:
        while True:
            chunk = os.pread(self._fd, _READ_CHUNK, self._read_at)
            if not chunk:
                return
            self._buffer += chunk
            self._read_at += len(chunk)

    def _parse(self, final: bool) -> list[logging.LogRecord]:
        buffer = self._buffer
        records: list[logging.LogRecord] = []
        pos = 0
        size = len(buffer)
        while size - pos >= _HEADER.size:
            magic, length, _ = _HEADER.unpack_from(buffer, pos)
            if magic == _MAGIC and length <= _MAX_PAYLOAD:
                end = pos + _HEADER.size + length
                if end <= size:
                    record = _frame_at(buffer, pos, end)
                    if record is not _CORRUPT:
                        if record is not None:
                            records.append(record)
                        pos = end
                        continue
                else:
                    # Incomplete: still being written, unless a complete
                    # frame follows it (then a killed writer cut it short).
                    nxt = _next_valid_frame(buffer, pos + 1)
                    if nxt < 0:
                        break
                    self._skip(nxt - pos)
                    pos = nxt
                    continue
            nxt = buffer.find(_MAGIC, pos + 1)
            if nxt < 0:
                # Keep a tail that might be the start of a magic.
                keep = max(pos, size - (len(_MAGIC) - 1))
                self._skip(keep - pos)
                pos = keep
                break
            self._skip(nxt - pos)
            pos = nxt
        if final and pos < size:
            self._skip(size - pos)
            pos = size
        del buffer[:pos]
        return records

    def _skip(self, count: int) -> None:
        if count > 0:
            self._skipped += count
            logger.warning(
                "LogForwarder discarded %d byte(s) of a record cut short "
                "(was a worker killed while logging?)",
                count,
            )

    def _release(self) -> None:
        """Give the disk blocks of consumed records back, where supported."""
        consumed = self._read_at - len(self._buffer)
        if self._puncher is None or consumed - self._punched < _PUNCH_EVERY:
            return
        end = consumed - consumed % 65536
        mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        if self._puncher(self._fd, mode, 0, end) != 0:
            self._puncher = None  # not supported here; stop trying
            return
        self._punched = end

    def _dispatch(self, record: logging.LogRecord) -> None:
        target = self._target
        if isinstance(target, logging.Handler):
            if record.levelno >= target.level:
                target.handle(record)
            return
        if target is None:
            name = record.name
            target = (
                logging.getLogger(name)
                if name and name != "root"
                else logging.getLogger()
            )
        target.handle(record)


_CORRUPT: Any = object()


def _frame_at(buffer: bytearray, pos: int, end: int) -> Any:
    """The record in the complete frame at ``pos``: a ``LogRecord``, ``None``
    (valid frame, unusable content) or ``_CORRUPT``."""
    _, _, crc = _HEADER.unpack_from(buffer, pos)
    payload = bytes(buffer[pos + _HEADER.size : end])
    if zlib.crc32(payload) != crc:
        return _CORRUPT
    try:
        fields = json.loads(payload.decode("ascii"))
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    fields["args"] = None
    fields["exc_info"] = None
    return logging.makeLogRecord(fields)


def _next_valid_frame(buffer: bytearray, start: int) -> int:
    """Offset of the next complete, intact frame at or after ``start``, or -1."""
    size = len(buffer)
    pos = buffer.find(_MAGIC, start)
    while pos >= 0 and size - pos >= _HEADER.size:
        _, length, _ = _HEADER.unpack_from(buffer, pos)
        end = pos + _HEADER.size + length
        if (
            length <= _MAX_PAYLOAD
            and end <= size
            and _frame_at(buffer, pos, end) is not _CORRUPT
        ):
            return pos
        pos = buffer.find(_MAGIC, pos + 1)
    return -1

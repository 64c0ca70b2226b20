"""The result channel: one pipe per submission, one message per pipe.

The worker writes at most one message and closes the pipe; the parent reads
it without blocking, however large it is, while the worker is still writing.
A pipe that reaches end-of-file without a complete message means the result
was lost (the worker died, exited early or exec'd).

Message layout::

    !BQQ   kind, len(note), len(body)
    note   UTF-8 text: the worker's formatted traceback (may be empty)
    body   a pickle: the value, the exception, or the pickling error;
           or (kind BYTES) a large returned ``bytes`` value as it is

A message larger than a pipe buffer first grows its pipe (Linux
``F_SETPIPE_SZ``, best effort), so the parent wakes up less often.

Trust boundary: the parent unpickles only bodies read from the pipe of a
child it launched itself.  Nothing else is ever unpickled.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
from typing import Any

from ._exceptions import WorkerTraceback

__all__ = ["VALUE", "MessageReader", "encode_exception", "encode_value", "write_all"]

PREFIX = struct.Struct("!BQQ")

VALUE = 0  # body: the returned value
RAISED = 1  # body: the exception the task raised; note: its traceback
UNPICKLABLE = 2  # body: the error pickling raised; note: tracebacks
DEGRADED = 3  # body: a str explaining what could not cross the pipe
BYTES = 4  # body: a returned ``bytes`` value itself, not pickled

#: A returned ``bytes`` at least this large skips pickling (one copy less).
_RAW_BYTES_MIN = 1 << 16

Message = tuple[int, str, memoryview]


def encode_value(value: Any) -> list[bytes]:
    """Frame a returned value (or the failure to pickle it)."""
    if value is None:
        return _NONE_MESSAGE
    if type(value) is bytes and len(value) >= _RAW_BYTES_MIN:
        return _frame(BYTES, "", value)
    try:
        body = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        return _encode_pickling_error(error, "", "the result")
    return _frame(VALUE, "", body)


def encode_exception(exc: BaseException) -> list[bytes]:
    """Frame an exception the task raised, with its formatted traceback."""
    import traceback  # only here: a large import that slows every fork

    note = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        body = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        return _encode_pickling_error(error, note, f"the {type(exc).__name__}")
    return _frame(RAISED, note, body)


def _encode_pickling_error(error: Exception, note: str, what: str) -> list[bytes]:
    import traceback

    note += "".join(traceback.format_exception(type(error), error, error.__traceback__))
    note += f"\n{what} could not be pickled in the worker\n"
    try:
        return _frame(UNPICKLABLE, note, pickle.dumps(error, pickle.HIGHEST_PROTOCOL))
    except Exception as second:
        text = (
            f"{what} could not be pickled in the worker "
            f"({type(error).__name__}: {error}), "
            f"and neither could that error ({type(second).__name__}: {second})"
        )
        return _frame(DEGRADED, note, pickle.dumps(text, pickle.HIGHEST_PROTOCOL))


def _frame(kind: int, note: str, body: bytes) -> list[bytes]:
    note_bytes = note.encode("utf-8", "backslashreplace")
    return [PREFIX.pack(kind, len(note_bytes), len(body)), note_bytes, body]


#: The message for a returned ``None`` (the commonest result), made once.
_NONE_MESSAGE = _frame(VALUE, "", pickle.dumps(None, pickle.HIGHEST_PROTOCOL))
#: The same as the bytes on the pipe, and as the parent's reader makes it:
#: the parent recognises it without parsing, and without unpickling
#: (``RETURNED_NONE`` is what ``decode`` would return).
NONE_FRAME = b"".join(_NONE_MESSAGE)
NONE_MESSAGE: Message = (VALUE, "", memoryview(_NONE_MESSAGE[2]))
RETURNED_NONE: tuple[bool, Any] = (True, None)


def whole_message(chunk: bytes) -> Message | None:
    """The message if ``chunk`` is exactly one whole message (a small result
    read in one go, the common case), else ``None``: then a
    ``MessageReader`` takes over, starting with ``chunk``."""
    size = len(chunk)
    if size < PREFIX.size:
        return None
    kind, note_len, body_len = PREFIX.unpack_from(chunk)
    if size != PREFIX.size + note_len + body_len:
        return None
    view = memoryview(chunk)[PREFIX.size :]
    note = bytes(view[:note_len]).decode("utf-8", "replace") if note_len else ""
    return kind, note, view[note_len:]


#: Linux's F_SETPIPE_SZ (fcntl has it by name from Python 3.10 on).
_F_SETPIPE_SZ = 1031 if sys.platform.startswith("linux") else None
#: A large message grows its pipe to this (the unprivileged default limit
#: in /proc/sys/fs/pipe-max-size): 16 times fewer wake-ups than 64 KiB.
_BIG_PIPE = 1 << 20


def _grow_pipe(fd: int, size: int) -> None:
    """Best effort: a bigger pipe buffer for a message that will not fit."""
    if _F_SETPIPE_SZ is None or size <= 65536:
        return
    import fcntl

    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, min(size, _BIG_PIPE))
    except OSError:
        pass  # over the limit, or not a pipe: the default size still works


def write_all(fd: int, parts: list[bytes]) -> None:
    """Write every part to the (blocking) pipe ``fd``: one system call for a
    small message, a loop over what is left for a large one (after growing
    the pipe buffer, so that the reader wakes up less often)."""
    total = 0
    for part in parts:
        total += len(part)
    if total > 65536:
        _grow_pipe(fd, total)
    written = os.writev(fd, parts)
    if written == total:
        return
    for part in parts:
        if written >= len(part):
            written -= len(part)
            continue
        view = memoryview(part)[written:]
        written = 0
        while view:
            view = view[os.write(fd, view) :]


class MessageReader:
    """Reassembles one message from a non-blocking pipe, chunk by chunk."""

    __slots__ = ("_buffer", "_filled", "_prefix", "_view")

    def __init__(self) -> None:
        self._prefix = b""
        self._buffer: bytes | bytearray | None = None
        #: The unfilled rest of ``_buffer``, writable (None once complete).
        self._view: memoryview | None = None
        self._filled = 0

    def read_available(self, fd: int) -> bool:
        """Read what the pipe holds now; ``True`` once it reached end-of-file."""
        while True:
            try:
                if self._buffer is None:
                    chunk = os.read(fd, max(PREFIX.size - len(self._prefix), 65536))
                    if not chunk:
                        return True
                    self._accept_prefix_bytes(chunk)
                elif self._view is None:
                    # Complete; anything more is not ours.  Wait for EOF.
                    if not os.read(fd, 65536):
                        return True
                else:
                    count = os.readv(fd, [self._view])
                    if not count:
                        return True
                    self._filled += count
                    self._view = self._view[count:] or None
            except (BlockingIOError, InterruptedError):
                return False

    def _accept_prefix_bytes(self, chunk: bytes) -> None:
        data = self._prefix + chunk if self._prefix else chunk
        if len(data) < PREFIX.size:
            self._prefix = data
            return
        kind, note_len, body_len = PREFIX.unpack_from(data)
        self._prefix = data[: PREFIX.size]
        size = note_len + body_len
        if len(data) - PREFIX.size >= size:
            # The whole message came in one read (the common case): keep it.
            self._buffer = data[PREFIX.size : PREFIX.size + size]
            self._filled = size
            return
        rest = memoryview(data)[PREFIX.size :]
        buffer: bytes | bytearray | None = None
        view: memoryview | None = None
        if kind == BYTES and note_len == 0 and size >= _IN_PLACE_MIN:
            # A large returned bytes: read it straight into the bytes object
            # the caller will get, instead of into a buffer and then copying.
            buffer, view = _new_bytes(size)
        if buffer is None or view is None:
            buffer = bytearray(size)
            view = memoryview(buffer)
        view[: len(rest)] = rest
        self._buffer = buffer
        self._filled = len(rest)
        self._view = view[len(rest) :]

    def message(self) -> Message | None:
        """The complete message, or ``None`` if the pipe closed before one."""
        buffer = self._buffer
        if buffer is None or self._filled < len(buffer):
            return None
        self._view = None
        kind, note_len, _ = PREFIX.unpack(self._prefix)
        view = memoryview(buffer)
        note = bytes(view[:note_len]).decode("utf-8", "replace") if note_len else ""
        return kind, note, view[note_len:]


#: A returned bytes at least this large is read into place (see _new_bytes).
_IN_PLACE_MIN = 1 << 20


def _new_bytes(size: int) -> tuple[bytes | None, memoryview | None]:
    """A new, not yet initialised ``bytes`` of ``size`` bytes and a writable
    view of its contents, on CPython; ``(None, None)`` elsewhere.

    The object is filled in place before anyone else can see it (nobody has
    hashed it, nobody holds it), which saves copying a large result once
    more at the end.
    """
    maker = _bytes_maker()
    if maker is None:
        return None, None
    import ctypes

    obj = maker(None, size)
    array = (ctypes.c_char * size).from_address(id(obj) + _BYTES_OFFSET)
    return obj, memoryview(array).cast("B")


_BYTES_OFFSET = bytes.__basicsize__ - 1  # where a bytes object's data starts
_maker: Any = None


def _bytes_maker() -> Any:
    """``PyBytes_FromStringAndSize`` through ctypes, checked once; or None."""
    global _maker
    if _maker is None:
        _maker = False
        if sys.implementation.name == "cpython":
            try:
                import ctypes

                maker = ctypes.PYFUNCTYPE(
                    ctypes.py_object, ctypes.c_char_p, ctypes.c_ssize_t
                )(("PyBytes_FromStringAndSize", ctypes.pythonapi))
                probe = maker(b"jobserver", 9)
                if (
                    probe == b"jobserver"
                    and ctypes.string_at(id(probe) + _BYTES_OFFSET, 9) == probe
                ):
                    _maker = maker
            except Exception:  # pragma: no cover - no ctypes, or another layout
                _maker = False
    return _maker or None


def decode(message: Message) -> tuple[bool, Any]:
    """Rebuild a message: ``(True, value)`` or ``(False, exception_to_raise)``."""
    kind, note, body = message
    if kind == BYTES:
        whole = body.obj
        if type(whole) is bytes and len(whole) == len(body):
            return True, whole  # read into place (MessageReader): no copy
        return True, bytes(body)
    cause = WorkerTraceback(note) if note else None
    try:
        obj = pickle.loads(body)
    except Exception as unpickling_error:
        _add_note(
            unpickling_error, "while rebuilding a worker's result in the parent process"
        )
        if cause is not None:
            unpickling_error.__cause__ = cause
        return False, unpickling_error
    if kind == VALUE:
        return True, obj
    error: BaseException
    if kind == DEGRADED:
        error = RuntimeError(str(obj))
    elif isinstance(obj, BaseException):
        error = obj
    else:  # pragma: no cover - our own worker never frames anything else
        error = RuntimeError(f"malformed result message of kind {kind}")
    error.__cause__ = cause
    return False, error


def _add_note(error: BaseException, note: str) -> None:
    add_note = getattr(error, "add_note", None)
    if add_note is not None:
        add_note(note)

"""Values, exceptions and the failures in between cross the result pipe intact."""

from __future__ import annotations

import pickle

import pytest
import tasks
from jobserver import Jobserver, WorkerTraceback


def test_values_round_trip(method: str) -> None:
    with Jobserver(context=method, slots=2) as js:
        assert js.submit(tasks.add, args=(2,), kwargs={"b": 3}).result() == 5
        assert js(tasks.identity, None).result() is None
        assert js(tasks.identity, b"").result() == b""
        assert js(tasks.identity, {"a": [1, (2, 3)]}).result() == {"a": [1, (2, 3)]}


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 64 * 2**20 + 7])
def test_results_larger_than_a_pipe_buffer(size: int) -> None:
    with Jobserver(context="fork", slots=2) as js:
        futures = [js(tasks.big_bytes, size) for _ in range(2)]
        for future in futures:
            value = future.result()
            assert len(value) == size


def test_large_result_under_spawn() -> None:
    with Jobserver(context="spawn", slots=1) as js:
        assert len(js(tasks.big_bytes, 64 * 2**20).result()) == 64 * 2**20


def test_large_result_collected_by_reclaim_while_worker_writes() -> None:
    # Nobody calls result(): reclaim_resources alone must drain the pipe so the
    # worker can finish writing and exit (otherwise its slot never comes back).
    with Jobserver(context="fork", slots=1) as js:
        first = js(tasks.big_bytes, 8 * 2**20)
        # This submit can only get the single slot once the first worker,
        # blocked writing 8 MiB into a 64 KiB pipe, has been drained and reaped.
        second = js.submit(tasks.identity, args=(1,), timeout=120)
        assert second.result() == 1
        assert len(first.result()) == 8 * 2**20


def test_worker_exception_reraised_with_traceback_cause(method: str) -> None:
    with Jobserver(context=method, slots=1) as js:
        future = js(tasks.raise_value_error, "bad input")
        with pytest.raises(ValueError, match="bad input") as info:
            future.result()
        cause = info.value.__cause__
        assert isinstance(cause, WorkerTraceback)
        assert "raise_value_error" in str(cause)
        assert "Traceback" in str(cause)
        # The same outcome again: result() is repeatable.
        with pytest.raises(ValueError, match="bad input"):
            future.result()


def test_unpicklable_result_raises_the_pickling_error(method: str) -> None:
    with Jobserver(context=method, slots=1) as js:
        with pytest.raises(TypeError, match="refuses to be pickled") as info:
            js(tasks.return_unpicklable).result()
        assert isinstance(info.value.__cause__, WorkerTraceback)
        assert "could not be pickled in the worker" in str(info.value.__cause__)


def test_unpicklable_lambda_result_under_fork() -> None:
    with Jobserver(context="fork", slots=1) as js:
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            js(lambda: lambda: 1).result()


def test_result_that_cannot_be_rebuilt_raises_the_unpickling_error(method: str) -> None:
    with Jobserver(context=method, slots=1) as js:
        with pytest.raises(RuntimeError, match="cannot be rebuilt"):
            js(tasks.return_not_rebuildable).result()


class UnpicklableError(Exception):
    def __reduce__(self) -> object:
        raise TypeError("this exception refuses to be pickled")


def raise_unpicklable_error() -> None:
    raise UnpicklableError("original")


def test_unpicklable_exception_degrades_to_the_pickling_error() -> None:
    with Jobserver(context="fork", slots=1) as js:
        with pytest.raises(TypeError, match="refuses to be pickled") as info:
            js(raise_unpicklable_error).result()
        text = str(info.value.__cause__)
        assert "UnpicklableError: original" in text


class DoublyUnpicklable(Exception):
    def __reduce__(self) -> object:
        raise DoublyUnpicklable("again")


def return_doubly_unpicklable() -> DoublyUnpicklable:
    return DoublyUnpicklable("value")


def test_when_even_the_pickling_error_cannot_cross_it_is_a_runtime_error() -> None:
    with Jobserver(context="fork", slots=1) as js:
        with pytest.raises(RuntimeError, match="could not be pickled"):
            js(return_doubly_unpicklable).result()


class NeedsTwoArgs(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


def raise_needs_two_args() -> None:
    raise NeedsTwoArgs(1, 2)


def test_exception_that_cannot_be_rebuilt_keeps_the_worker_traceback() -> None:
    with Jobserver(context="fork", slots=1) as js:
        with pytest.raises(TypeError) as info:
            js(raise_needs_two_args).result()
        assert "NeedsTwoArgs" in str(info.value.__cause__)


def _pattern_bytes(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"z" * (size % 256)


@pytest.mark.parametrize("size", [2**20 - 1, 2**20, 2**20 + 1, 9 * 2**20 + 3])
def test_large_bytes_result_is_exact_and_a_real_bytes(size: int) -> None:
    # From 1 MiB on, a returned bytes is read into place (no final copy).
    with Jobserver(context="fork", slots=2) as js:
        futures = [js(_pattern_bytes, size) for _ in range(2)]
        expected = _pattern_bytes(size)
        for future in futures:
            value = future.result()
            assert type(value) is bytes
            assert value == expected
            assert hash(value) == hash(expected)
            assert future.result() is value  # repeatable, same object


def _truncated_large_bytes_message() -> None:
    import os

    from jobserver import _launch, _wire

    fd = _launch._own_result_fd
    assert fd is not None
    os.write(fd, _wire.PREFIX.pack(_wire.BYTES, 0, 4 * 2**20))
    chunk = b"y" * 2**20
    os.write(fd, chunk)
    os._exit(0)


def test_large_bytes_message_cut_short_is_a_lost_result() -> None:
    from jobserver import LostResult

    with Jobserver(context="fork", slots=1) as js:
        future = js(_truncated_large_bytes_message)
        with pytest.raises(LostResult):
            future.result()
        assert js(_pattern_bytes, 10).result() == _pattern_bytes(10)

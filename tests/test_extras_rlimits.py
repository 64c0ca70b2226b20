"""ResourceLimits: setrlimit in each worker before its task."""

from __future__ import annotations

import errno
import pickle
import signal
import sys

import extras_tasks
import pytest
from conftest import assert_slots_conserved
from jobserver import Jobserver, LostResult

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX rlimits")

if sys.platform != "win32":
    import resource

    from jobserver_extras import ResourceLimits

MIB = 1024**2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux")
def test_address_space_limit_raises_memory_error(method: str, no_leaks) -> None:
    # Room for what a worker already maps (a forked one maps what this
    # process does) plus 256 MiB; then ask for 1 GiB more than that.
    limit = extras_tasks.vm_size() + 256 * MIB
    with Jobserver(method, slots=1) as js:
        limited = js.replace_preexec(ResourceLimits(address_space=limit))
        assert limited.submit(extras_tasks.allocate, args=(16 * MIB,)).result() == (
            16 * MIB
        )
        with pytest.raises(MemoryError):
            limited.submit(extras_tasks.allocate, args=(limit + 1024 * MIB,)).result()
        limits = limited.submit(extras_tasks.getrlimits, args=(["RLIMIT_AS"],)).result()
        assert limits["RLIMIT_AS"][0] == limit
        assert_slots_conserved(js, 1)


def test_cpu_limit_ends_in_lost_result(method: str, no_leaks) -> None:
    with Jobserver(method, slots=1) as js:
        limited = js.replace_preexec(ResourceLimits(cpu_seconds=1))
        # The safety bound (60 CPU seconds) is never reached: SIGXCPU comes
        # after one.
        future = limited.submit(extras_tasks.burn_cpu, args=(60.0,))
        with pytest.raises(LostResult) as info:
            future.result()
        assert info.value.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
        assert_slots_conserved(js, 1)


def test_open_files_limit(method: str) -> None:
    with Jobserver(method, slots=1) as js:
        limited = js.replace_preexec(ResourceLimits(open_files=64))
        assert limited.submit(
            extras_tasks.open_until_refused, args=(100,)
        ).result() == (errno.EMFILE)
        soft, hard = limited.submit(
            extras_tasks.getrlimits, args=(["RLIMIT_NOFILE"],)
        ).result()["RLIMIT_NOFILE"]
    assert soft == 64
    assert hard == resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # left alone


def test_soft_and_hard_pair() -> None:
    _, hard_now = resource.getrlimit(resource.RLIMIT_NOFILE)
    pair = (32, 48 if hard_now == resource.RLIM_INFINITY else min(48, hard_now))
    with Jobserver("fork", slots=1) as js:
        limited = js.replace_preexec(ResourceLimits(open_files=pair))
        limits = limited.submit(
            extras_tasks.getrlimits, args=(["RLIMIT_NOFILE"],)
        ).result()
    assert limits["RLIMIT_NOFILE"] == pair


def test_infinity_is_accepted() -> None:
    limits = ResourceLimits(
        cpu_seconds=(resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    )
    assert limits.limits == {
        "cpu_seconds": (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    }


def test_pickles_and_compares() -> None:
    limits = ResourceLimits(cpu_seconds=5, open_files=(100, 200))
    copy = pickle.loads(pickle.dumps(limits))
    assert copy == limits
    assert hash(copy) == hash(limits)
    assert copy.limits == {"cpu_seconds": (5, None), "open_files": (100, 200)}
    assert repr(copy) == "ResourceLimits(cpu_seconds=5, open_files=(100, 200))"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "at least one"),
        ({"cpu_seconds": 0}, ValueError, "cpu_seconds"),
        ({"cpu_seconds": 1.5}, TypeError, "cpu_seconds"),
        ({"cpu_seconds": True}, TypeError, "cpu_seconds"),
        ({"open_files": -2}, ValueError, "open_files"),
        ({"open_files": "10"}, TypeError, "open_files"),
        ({"open_files": (1, 2, 3)}, ValueError, "open_files"),
        ({"open_files": (20, 10)}, ValueError, "open_files"),
        ({"open_files": (10, None)}, TypeError, "open_files hard"),
        ({"address_space": 0}, ValueError, "address_space"),
    ],
)
def test_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        ResourceLimits(**kwargs)


def test_above_the_hard_limit_is_refused_here(monkeypatch) -> None:
    """An unprivileged worker could not raise its hard limit: say so now."""
    from jobserver_extras import _rlimits

    monkeypatch.setattr(_rlimits.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(
        _rlimits,
        "_resource_module",
        lambda: FakeResource(hard=1000),
    )
    with pytest.raises(ValueError, match="hard limit"):
        ResourceLimits(open_files=2000)
    with pytest.raises(ValueError, match="hard limit"):
        ResourceLimits(open_files=(10, 2000))
    assert ResourceLimits(open_files=(10, 1000)).limits["open_files"] == (10, 1000)


class FakeResource:
    """Stands in for the resource module with a chosen hard limit."""

    RLIM_INFINITY = -1
    RLIMIT_AS = 9
    RLIMIT_CPU = 0
    RLIMIT_NOFILE = 7

    def __init__(self, hard: int) -> None:
        self.hard = hard

    def getrlimit(self, which: int) -> tuple[int, int]:
        return (self.hard, self.hard)

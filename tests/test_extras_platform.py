"""Unsupported platforms are refused at construction, and the public surface."""

from __future__ import annotations

import signal

import extras_tasks
import jobserver_extras
import pytest
from jobserver_extras import (
    AdvisoryLock,
    LogForwarder,
    ParentDeathSignal,
    RamGate,
    ResourceLimits,
    UnsupportedPlatform,
    WorkerLogging,
    _platform,
)

GIB = 1024**3


@pytest.fixture
def pretend(monkeypatch):
    """Make the platform checks see another platform."""

    def set_platform(name: str) -> None:
        monkeypatch.setattr(_platform, "current_platform", lambda: name)

    return set_platform


@pytest.fixture
def meminfo(tmp_path) -> str:
    path = str(tmp_path / "meminfo")
    extras_tasks.write_meminfo(path, 8 * GIB, 4 * GIB)
    return path


@pytest.mark.parametrize("name", ["darwin", "win32", "freebsd14"])
def test_parent_death_signal_needs_linux(pretend, name: str) -> None:
    pretend(name)
    with pytest.raises(UnsupportedPlatform, match=r"ParentDeathSignal needs Linux"):
        ParentDeathSignal(signal.SIGTERM)


@pytest.mark.parametrize("name", ["darwin", "win32"])
def test_ram_gate_needs_linux_for_proc_meminfo(
    pretend, name: str, meminfo: str
) -> None:
    pretend(name)
    with pytest.raises(UnsupportedPlatform, match="/proc/meminfo"):
        RamGate(0.5)
    # An equivalent file works anywhere.
    assert RamGate(0.5, meminfo=meminfo)() is None


def test_lock_needs_posix(pretend, tmp_path) -> None:
    pretend("win32")
    with pytest.raises(UnsupportedPlatform, match="AdvisoryLock"):
        AdvisoryLock(tmp_path / "x.lock")
    pretend("darwin")
    AdvisoryLock(tmp_path / "x.lock")


def test_resource_limits_per_platform(pretend) -> None:
    pretend("win32")
    with pytest.raises(UnsupportedPlatform, match="ResourceLimits"):
        ResourceLimits(cpu_seconds=10)
    pretend("darwin")
    with pytest.raises(UnsupportedPlatform, match="RLIMIT_AS"):
        ResourceLimits(address_space=GIB)
    assert ResourceLimits(cpu_seconds=10, open_files=100).limits["cpu_seconds"] == (
        10,
        None,
    )


def test_forwarder_needs_posix(pretend) -> None:
    pretend("win32")
    with pytest.raises(UnsupportedPlatform, match="LogForwarder"):
        LogForwarder()
    WorkerLogging()  # plain worker logging works anywhere


def test_unsupported_platform_is_an_os_error() -> None:
    assert issubclass(UnsupportedPlatform, OSError)


def test_public_surface() -> None:
    for name in jobserver_extras.__all__:
        assert hasattr(jobserver_extras, name), name
    assert jobserver_extras.__version__ == "0.1.0"

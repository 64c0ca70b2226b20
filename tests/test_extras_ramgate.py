"""RamGate: launches wait while MemAvailable is below a threshold."""

from __future__ import annotations

import os
import pickle
import sys
import time

import extras_tasks
import pytest
from conftest import assert_slots_conserved
from jobserver import Blocked, Jobserver
from jobserver_extras import MemInfo, RamGate, read_meminfo

GIB = 1024**3


@pytest.fixture
def meminfo(tmp_path) -> str:
    """A fake /proc/meminfo: 8 GiB total, 4 GiB available."""
    path = str(tmp_path / "meminfo")
    extras_tasks.write_meminfo(path, 8 * GIB, 4 * GIB)
    return path


def test_reads_figures_in_bytes(meminfo: str) -> None:
    assert read_meminfo(meminfo) == MemInfo(8 * GIB, 4 * GIB)
    assert RamGate(1, meminfo=meminfo).read() == MemInfo(8 * GIB, 4 * GIB)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")
def test_reads_the_real_meminfo() -> None:
    gate = RamGate(1)
    info = gate.read()
    assert 0 < info.available <= info.total
    assert gate() is None  # one byte is always available
    assert gate.meminfo == "/proc/meminfo"


def test_both_sides_of_a_byte_threshold(meminfo: str) -> None:
    assert RamGate(4 * GIB, meminfo=meminfo)() is None  # exactly enough
    held = RamGate(4 * GIB + 1, interval=0.125, meminfo=meminfo)
    assert held() == 0.125
    extras_tasks.write_meminfo(meminfo, 8 * GIB, 5 * GIB)
    assert held() is None  # figures are re-read on every call


def test_both_sides_of_a_fraction(meminfo: str) -> None:
    assert RamGate(0.5, meminfo=meminfo)() is None
    assert RamGate(0.5, meminfo=meminfo).threshold_bytes() == 4 * GIB
    assert RamGate(0.51, meminfo=meminfo)() == 0.25
    assert RamGate(1.0, meminfo=meminfo)() == 0.25


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"threshold": True}, TypeError, "threshold"),
        ({"threshold": "1G"}, TypeError, "threshold"),
        ({"threshold": 0}, ValueError, "threshold"),
        ({"threshold": -5}, ValueError, "threshold"),
        ({"threshold": 0.0}, ValueError, "threshold"),
        ({"threshold": 1.5}, ValueError, "threshold"),
        ({"threshold": float("nan")}, ValueError, "threshold"),
        ({"threshold": 1, "interval": 0}, ValueError, "interval"),
        ({"threshold": 1, "interval": float("inf")}, ValueError, "interval"),
        ({"threshold": 1, "interval": "1"}, TypeError, "interval"),
        ({"threshold": 1, "interval": False}, TypeError, "interval"),
        ({"threshold": 1, "meminfo": 3}, TypeError, "meminfo"),
        ({"threshold": 1, "meminfo": b"/proc/meminfo"}, TypeError, "meminfo"),
        ({"threshold": 1, "meminfo": ""}, ValueError, "meminfo"),
    ],
)
def test_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        RamGate(**kwargs)


def test_unreadable_or_malformed_meminfo_fails_at_construction(tmp_path) -> None:
    with pytest.raises(ValueError, match="meminfo"):
        RamGate(1, meminfo=tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("MemTotal: 100 kB\n")
    with pytest.raises(ValueError, match="MemAvailable"):
        RamGate(1, meminfo=bad)
    bad.write_text("MemTotal: lots kB\nMemAvailable: 1 kB\n")
    with pytest.raises(ValueError, match="malformed"):
        RamGate(1, meminfo=bad)


def test_pickles_and_compares(meminfo: str) -> None:
    gate = RamGate(0.25, interval=0.5, meminfo=meminfo)
    copy = pickle.loads(pickle.dumps(gate))
    assert copy == gate
    assert hash(copy) == hash(gate)
    assert "0.25" in repr(copy)


def test_launches_when_memory_suffices(method: str, meminfo: str, no_leaks) -> None:
    with Jobserver(method, slots=2) as js:
        gated = js.replace_sleep(RamGate(2 * GIB, meminfo=meminfo))
        assert gated.submit(os.getpid, timeout=extras_tasks.PATIENCE).result() > 0
        assert_slots_conserved(js, 2)


def test_blocked_when_memory_stays_short(method: str, meminfo: str, no_leaks) -> None:
    gate = RamGate(6 * GIB, interval=0.05, meminfo=meminfo)
    with Jobserver(method, slots=2) as js:
        gated = js.replace_sleep(gate)
        start = time.monotonic()
        with pytest.raises(Blocked):
            gated.submit(os.getpid, timeout=0.3)
        assert time.monotonic() - start >= 0.2  # it waited, then gave up
        with pytest.raises(Blocked):
            gated.submit(os.getpid, timeout=0)
        assert_slots_conserved(js, 2)  # a refusing gate holds no slot
        assert js.submit(os.getpid).result() > 0  # the ungated handle is free


def test_holds_then_launches_once_memory_returns(meminfo: str, no_leaks) -> None:
    """The gate refuses, re-checks every interval, and lets the launch
    through once the figures change (changed here, on the second refusal)."""
    gate = RamGate(6 * GIB, interval=0.05, meminfo=meminfo)
    refusals: list[float] = []

    def watching_gate() -> float | None:
        answer = gate()
        if answer is not None:
            refusals.append(answer)
            if len(refusals) == 2:
                extras_tasks.write_meminfo(meminfo, 8 * GIB, 7 * GIB)
        return answer

    with Jobserver("fork", slots=1) as js:
        start = time.monotonic()
        future = js.replace_sleep(watching_gate).submit(
            os.getpid, timeout=extras_tasks.PATIENCE
        )
        assert future.result() > 0
        assert refusals == [0.05, 0.05]
        assert time.monotonic() - start >= 0.09  # slept the interval twice


def test_gate_travels_with_nested_handles(method: str, meminfo: str, no_leaks) -> None:
    """A gated handle passed to a worker gates the worker's own launches."""
    with Jobserver(method, slots=1) as js:
        open_gate = js.replace_sleep(RamGate(GIB, meminfo=meminfo))
        shut_gate = js.replace_sleep(RamGate(6 * GIB, interval=0.05, meminfo=meminfo))
        child_pid = js.submit(
            extras_tasks.submit_through, args=(open_gate, extras_tasks.PATIENCE)
        ).result()
        assert isinstance(child_pid, int)
        assert js.submit(
            extras_tasks.submit_through, args=(shut_gate, 0.2)
        ).result() == ("blocked")
        assert_slots_conserved(js, 1)

"""The soak's interrupt timer must reach the main thread only (bugs 13 and 14
in docs/reliability.md).

With a second thread that does not block SIGALRM, the kernel hands that
thread a process-directed SIGALRM while the main thread defers signals, and
Python then runs the handler in the main thread at its next bytecode --
inside the deferred step (the residual gap of docs/design.md).  The soak's
last-resort watchdog (``faulthandler.dump_traceback_later``) starts a new
thread at every re-arm, and that thread blocks signals only once it first
runs: it must be created with SIGALRM blocked.
"""

from __future__ import annotations

import faulthandler
import importlib.util
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "pthread_sigmask"), reason="needs pthread_sigmask"
)


def load_soak() -> Any:
    spec = importlib.util.spec_from_file_location("soak_under_test", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path  # it puts scripts/ first
    return module


def test_the_watchdog_thread_is_created_with_the_timer_signal_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    soak = load_soak()
    masks: list[set[int]] = []

    def record(seconds: float, exit: bool = False) -> None:
        # The mask a thread created here would start with.
        masks.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    monkeypatch.setattr(faulthandler, "dump_traceback_later", record)
    soak.arm_watchdog(600)
    assert len(masks) == 1
    assert signal.SIGALRM in masks[0]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before

"""Run an executor test module against both modes of JobserverExecutor.

A test module imports ``executor_mode`` (an autouse fixture) and refers to
``JobserverExecutor`` through its own module global, as usual; in the
``reuse`` run the fixture swaps that global for ``ReusingExecutor``, a
subclass whose ``reuse_workers`` defaults to ``True``.  Tests that pin a
fresh-process-only behaviour ask for ``fresh_only``.
"""

from __future__ import annotations

from typing import Any

import pytest
from jobserver_executor import JobserverExecutor

MODES = ["fresh", "reuse"]


class ReusingExecutor(JobserverExecutor):
    """``JobserverExecutor`` with ``reuse_workers=True`` unless told otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("reuse_workers", True)
        super().__init__(*args, **kwargs)


@pytest.fixture(autouse=True, params=MODES)
def executor_mode(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Each executor mode: fresh process per task, or reused workers."""
    if request.param == "reuse":
        monkeypatch.setattr(request.module, "JobserverExecutor", ReusingExecutor)
    return str(request.param)


@pytest.fixture
def fresh_only(executor_mode: str) -> None:
    """Skip in reuse mode: the test pins a fresh-process-per-task behaviour."""
    if executor_mode == "reuse":
        pytest.skip("a fresh-process-per-task behaviour")

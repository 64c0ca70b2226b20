"""pytest plugin: every test runs on a slot of the GNU Make jobserver.

Registered through the ``pytest11`` entry point ``jobserver``.  Inactive
unless this pytest was given a jobserver (``MAKEFLAGS`` names one: it runs
under ``make -jN``, ``jobserver -j N --``, or in a shell that joined
``jobserver serve``) or ``--jobserver`` asks for it; ``--no-jobserver`` (or
``-p no:jobserver``) turns it off.  When active, each test takes a token
before its setup and gives it back after its teardown, so

    make -j2      # whose recipe runs: pytest -n 8

runs at most two tests at a time across the eight pytest-xdist workers and
everything else the build runs.  Collection and reporting are unchanged.

How the slots are shared with pytest-xdist:

* The controller (the process Make started) owns the job's implicit slot
  but runs no tests; it lends that slot to the pool as a token while the
  session runs (``Jobserver.lend_implicit_slot``) and takes one back at the
  end.
* Workers are started by execnet, which passes no descriptors, so the
  controller hands them a path to the pool (``Jobserver.pool_path``: the
  FIFO's path, or ``/proc/PID/fd/N`` on Linux for Make's inherited pipe)
  through xdist's ``workerinput``.  A worker owns no implicit slot: it takes
  every token from the pool (``Jobserver.join(implicit=False)``).

Without xdist the single pytest process holds its implicit slot for the
first test it runs, like any job Make starts.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Generator
from typing import Any

import pytest

__all__ = ["JobserverPlugin"]

#: The key under which the controller hands the pool to xdist workers.
_WORKER_KEY = "jobserver_makeflags"
_NAME = "jobserver-tokens"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jobserver", "GNU Make jobserver")
    group.addoption(
        "--jobserver",
        action="store_true",
        dest="jobserver",
        default=None,
        help=(
            "hold a token of the GNU Make jobserver in MAKEFLAGS while each "
            "test runs (the default when MAKEFLAGS names one); an error if "
            "there is none"
        ),
    )
    group.addoption(
        "--no-jobserver",
        action="store_false",
        dest="jobserver",
        help="do not take jobserver tokens for tests, even under make -jN",
    )


def pytest_configure(config: pytest.Config) -> None:
    choice = config.getoption("jobserver", None)
    if choice is False:
        return
    from jobserver import Jobserver

    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # an xdist worker
        makeflags = workerinput.get(_WORKER_KEY)
        if not makeflags:
            return
        js = _join(Jobserver, makeflags, implicit=False)
        if js is not None:
            config.pluginmanager.register(
                JobserverPlugin(js, f"{makeflags} (xdist worker)"), _NAME
            )
        return
    makeflags = os.environ.get("MAKEFLAGS", "")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        js = Jobserver.join(makeflags, implicit=True) if makeflags else None
    if js is None:
        reason = str(caught[-1].message) if caught else "MAKEFLAGS names no jobserver"
        if choice:
            raise pytest.UsageError(f"--jobserver: {reason}")
        if caught:
            config.issue_config_time_warning(
                pytest.PytestConfigWarning(f"jobserver plugin inactive: {reason}"),
                stacklevel=2,
            )
        return
    plugin = JobserverPlugin(js, makeflags.strip())
    if _xdist_distributes(config):
        plugin.lend_to_workers()
    config.pluginmanager.register(plugin, _NAME)


def _join(cls: Any, makeflags: str, implicit: bool) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        js = cls.join(makeflags, implicit=implicit)
    for warning in caught:
        warnings.warn(str(warning.message), RuntimeWarning, stacklevel=3)
    return js


def _xdist_distributes(config: pytest.Config) -> bool:
    """Whether this is an xdist controller that hands tests to workers."""
    dist = getattr(config.option, "dist", "no")
    return bool(dist and dist != "no")


class JobserverPlugin:
    """Holds one jobserver token per running test (see the module docstring)."""

    def __init__(self, js: Any, description: str) -> None:
        self.js = js
        self.description = description
        self.worker_makeflags: str | None = None
        self._lent: Any = None
        js.__enter__()

    def lend_to_workers(self) -> None:
        """In an xdist controller: share the pool and the implicit slot."""
        path = self.js.pool_path()
        if path is None:
            warnings.warn(
                "jobserver plugin: this platform gives no path to the pool, "
                "so xdist workers run without it",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        self.worker_makeflags = f"--jobserver-auth=fifo:{path}"
        self._lent = self.js.lend_implicit_slot()
        self._lent.__enter__()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.worker_makeflags is not None:
            node.workerinput[_WORKER_KEY] = self.worker_makeflags

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, Any, None]:
        hold = self.js.hold(1)
        hold.acquire()
        try:
            yield
        finally:
            hold.release()

    def pytest_report_header(self, config: pytest.Config) -> str:
        return f"jobserver: one token per test from {self.description}"

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        try:
            if self._lent is not None:
                lent, self._lent = self._lent, None
                lent.__exit__(None, None, None)
        finally:
            self.js.__exit__(None, None, None)
            config.pluginmanager.unregister(self, _NAME)

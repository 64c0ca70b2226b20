"""``initializer(*initargs)`` runs in every worker before its task; a raising
initializer fails only that task, with an exception that is a
``BrokenProcessPool``, and the executor stays usable."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import executor_tasks as et
import pytest
from conftest import START_METHODS
from jobserver_executor import InitializerFailed, JobserverExecutor

pytestmark = pytest.mark.filterwarnings(et.FORK_WARNING_FILTER)


@pytest.fixture(autouse=True, scope="module")
def _warm_up() -> None:
    et.warm_up(START_METHODS)


def test_initializer_runs_before_every_task(method: str, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("ready")
    with JobserverExecutor(
        2, mp_context=method, initializer=et.init_from_file, initargs=(str(config),)
    ) as ex:
        assert ex.submit(et.get_initialized).result(et.PATIENCE) == "ready"
        # Every task has a fresh worker, so every task sees a fresh initializer run.
        config.write_text("changed")
        values = list(ex.map(_initialized_plus, ["a", "b", "c"], chunksize=2))
        assert values == ["changed-a", "changed-b", "changed-c"]


def _initialized_plus(suffix: str) -> str:
    return f"{et.get_initialized()}-{suffix}"


def test_raising_initializer_fails_only_that_task(
    method: str, tmp_path: Path, no_leaks: None
) -> None:
    config = tmp_path / "config"
    config.write_text("fail")
    with JobserverExecutor(
        2, mp_context=method, initializer=et.init_from_file, initargs=(str(config),)
    ) as ex:
        future = ex.submit(et.identity, 1)
        error = future.exception(et.PATIENCE)
        assert isinstance(error, InitializerFailed)
        assert isinstance(error, BrokenProcessPool)
        assert "the initializer refused" in str(error)
        assert "init_from_file" in str(error)
        # The worker's traceback shows the initializer's own failure.
        assert "ValueError: the initializer refused" in str(error.__cause__)
        with pytest.raises(BrokenProcessPool):
            ex.submit(et.identity, 2).result(et.PATIENCE)
        # Still usable: once the initializer succeeds, tasks run.
        config.write_text("fine")
        assert ex.submit(et.get_initialized).result(et.PATIENCE) == "fine"


def test_initializer_may_be_a_closure_under_fork() -> None:
    seen = []

    def initializer(value: int) -> None:
        seen.append(value)  # in the worker's copy of the list

    with JobserverExecutor(
        1, mp_context="fork", initializer=initializer, initargs=(7,)
    ) as ex:
        assert ex.submit(lambda: list(seen)).result(et.PATIENCE) == [7]
    assert seen == []  # the parent's list is untouched

"""jobserver_extras.progress: a bar driven by completion callbacks."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from typing import Any

import limit_tasks
import pytest
import tasks
from jobserver import Jobserver
from jobserver_extras.progress import PlainCounter, Progress, make_bar


class FakeBar:
    def __init__(self) -> None:
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, refresh: bool = True, **counts: Any) -> None:
        self.postfix = counts

    def close(self) -> None:
        self.closed = True


def test_counts_done_failed_and_lost() -> None:
    bar = FakeBar()
    with Jobserver("fork", slots=2) as js, Progress(bar) as progress:
        futures = [
            progress.track(js(limit_tasks.square, 2)),
            progress.track(js(limit_tasks.square, 3)),
            progress.track(js(tasks.raise_value_error)),
            progress.track(js(tasks.kill_self, signal.SIGKILL)),
            progress.track(js.replace_time_limit(0.2, grace=0.1)(tasks.sleep_then, 30)),
        ]
        for future in futures:
            future.wait()
    assert (progress.done, progress.failed, progress.lost) == (2, 2, 1)
    assert progress.finished == 5
    assert bar.n == 5 and bar.closed
    assert bar.postfix == {"done": 2, "failed": 2, "lost": 1}
    assert "done=2" in repr(progress)


def test_map_keeps_input_order_and_moves_the_bar() -> None:
    bar = FakeBar()
    progress = Progress(bar)
    with Jobserver("fork", slots=3) as js:
        inputs = [(0.2, "a"), (0.01, "b"), (0.05, "c"), (0.01, "d")]
        got = list(progress.map(js, tasks.sleep_then, inputs, buffersize=3))
    assert got == ["a", "b", "c", "d"]
    assert bar.n == 4 and progress.done == 4


def test_map_raises_the_first_failure_in_order() -> None:
    bar = FakeBar()
    progress = Progress(bar)
    with Jobserver("fork", slots=2) as js:
        results = progress.map(js, limit_tasks.fail_if_odd, [(0,), (1,), (2,)])
        assert next(results) == 0
        with pytest.raises(ValueError):
            next(results)
    assert progress.failed == 1 and progress.done == 2


def test_bar_must_have_update() -> None:
    with pytest.raises(TypeError):
        Progress(object())
    with Jobserver("fork", slots=1) as js, pytest.raises(ValueError):
        list(Progress(FakeBar()).map(js, abs, [], buffersize=0))


def test_plain_counter_output() -> None:
    out = io.StringIO()
    counter = PlainCounter(total=3, desc="work", file=out)
    counter.update()
    counter.set_postfix(done=1, failed=0)
    counter.update()
    counter.close()
    assert out.getvalue().endswith("\rwork: 2/3 [done=1, failed=0]\n")


def test_make_bar_uses_tqdm_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    tqdm = pytest.importorskip("tqdm")
    # tqdm's monitor thread outlives every bar (a daemon, never joined); it
    # would be left running for the rest of the suite, where signal tests
    # need this process to have one thread.
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)
    bar = make_bar(total=2, desc="x")
    try:
        assert isinstance(bar, tqdm.tqdm)
    finally:
        bar.close()


def test_make_bar_falls_back_without_tqdm() -> None:
    code = (
        "import sys; sys.modules['tqdm'] = None\n"
        "from jobserver_extras.progress import make_bar, PlainCounter\n"
        "assert isinstance(make_bar(3), PlainCounter)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_core_does_not_import_progress_or_tqdm() -> None:
    code = (
        "import sys, jobserver, jobserver_extras\n"
        "assert 'tqdm' not in sys.modules\n"
        "assert 'jobserver_extras.progress' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

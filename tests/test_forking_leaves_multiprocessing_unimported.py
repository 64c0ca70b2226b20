"""Forking needs no ``multiprocessing``: a program that never imported it
does not carry it into every fork (docs/performance.md), and the start
method chosen is still the one ``multiprocessing`` would choose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from jobserver import Jobserver


def run_fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter; return its stripped stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_forked_workers_run_without_importing_multiprocessing() -> None:
    out = run_fresh(
        "import sys, jobserver\n"
        "def probe():\n"
        "    return 'multiprocessing' in sys.modules\n"
        "for js in (jobserver.Jobserver('fork', slots=2),\n"
        "           jobserver.Jobserver(slots=2)):\n"
        "    assert js.submit(probe).result() is False, 'imported in a worker'\n"
        "    assert list(js.map(abs, [(-1,), (-2,)])) == [1, 2]\n"
        "print('multiprocessing' in sys.modules)\n"
    )
    assert out == "False", "submitting under fork imported multiprocessing"


def test_the_default_start_method_is_multiprocessings_default() -> None:
    out = run_fresh(
        "import sys, jobserver\n"
        "ours = jobserver.Jobserver(slots=1).context.get_start_method()\n"
        "import multiprocessing\n"
        "print(ours, multiprocessing.get_context().get_start_method())\n"
    )
    ours, theirs = out.split()
    assert ours == theirs


def test_a_start_method_set_in_multiprocessing_is_honoured() -> None:
    out = run_fresh(
        "import multiprocessing, jobserver\n"
        "multiprocessing.set_start_method('spawn')\n"
        "js = jobserver.Jobserver(slots=1)\n"
        "print(js.context.get_start_method(), js.submit(abs, args=(-3,)).result())\n"
    )
    assert out == "spawn 3"


def test_context_gives_one_multiprocessing_context_on_demand() -> None:
    js = Jobserver("fork", slots=1)
    context = js.context
    assert context.get_start_method() == "fork"
    assert js.context is context
    assert js.submit(abs, args=(-4,)).result() == 4


def test_a_default_context_object_means_the_default_start_method() -> None:
    import multiprocessing

    js = Jobserver(multiprocessing.get_context(), slots=1)
    method = js.context.get_start_method()
    assert method == multiprocessing.get_context().get_start_method()
    assert js.submit(abs, args=(-5,)).result() == 5


@pytest.mark.parametrize("bad", ["forks", "", "FORK"])
def test_an_unknown_start_method_name_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="context"):
        Jobserver(bad, slots=1)


@pytest.mark.parametrize("bad", [object(), 3, b"fork"])
def test_something_else_as_context_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="context"):
        Jobserver(bad, slots=1)  # type: ignore[arg-type]


class _Marker:
    """An object ``multiprocessing.util.register_after_fork`` can hold."""

    ran_after_fork = False


def _mark(marker: _Marker) -> None:
    marker.ran_after_fork = True


def test_a_forked_worker_of_a_multiprocessing_user_gets_its_after_fork_reset() -> None:
    """A parent that uses ``multiprocessing``: in our forked worker, its
    children are not the worker's, and its after-fork hooks have run."""
    import multiprocessing
    import multiprocessing.util

    context = multiprocessing.get_context("fork")
    read_fd, write_fd = os.pipe()
    child = context.Process(target=os.read, args=(read_fd, 1))
    child.start()
    marker = _Marker()
    multiprocessing.util.register_after_fork(marker, _mark)
    try:
        assert multiprocessing.active_children() == [child]

        def inside() -> tuple[int, bool]:
            return len(multiprocessing.active_children()), marker.ran_after_fork

        js = Jobserver("fork", slots=1)
        assert js.submit(inside).result() == (0, True)
        assert marker.ran_after_fork is False  # in the parent: untouched
    finally:
        os.write(write_fd, b"x")
        child.join(60)
        os.close(read_fd)
        os.close(write_fd)
    assert child.exitcode == 0


def test_a_worker_forked_while_another_thread_imports_multiprocessing_runs() -> None:
    # Forked while another thread is halfway through importing
    # multiprocessing, a worker finds its modules half built in sys.modules
    # (no _children, no _afterfork_registry yet): it must run its task, not
    # die on the missing attributes.  Half-built modules stand in for the
    # race, which a test could only hit by chance.
    out = run_fresh(
        "import sys, types, jobserver\n"
        "for name in ('multiprocessing', 'multiprocessing.process',\n"
        "             'multiprocessing.util'):\n"
        "    sys.modules[name] = types.ModuleType(name)\n"
        "js = jobserver.Jobserver('fork', slots=2)\n"
        "print(js.submit(abs, args=(-5,)).result(), list(js.map(abs, [(-1,)])))\n"
    )
    assert out == "5 [1]"

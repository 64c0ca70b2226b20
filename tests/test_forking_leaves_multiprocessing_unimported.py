"""Forking needs no ``multiprocessing``: a program that never imported it
does not carry it into every fork (docs/performance.md), and the start
method chosen is still the one ``multiprocessing`` would choose."""

from __future__ import annotations

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
    if out == "True":
        pytest.fail("submitting under fork imported multiprocessing")
    assert out == "False"


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

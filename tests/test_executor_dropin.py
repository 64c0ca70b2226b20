"""JobserverExecutor as a drop-in: an unmodified ProcessPoolExecutor program
runs with only its import changed, the class is reachable from ``jobserver``,
and under the fork start method lambdas and closures work."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
from pathlib import Path

import executor_tasks as et
import jobserver_executor
import pytest
from conftest import START_METHODS
from jobserver_executor import JobserverExecutor

pytestmark = pytest.mark.filterwarnings(et.FORK_WARNING_FILTER)

TESTS = Path(__file__).resolve().parent
STDLIB_IMPORT = "from concurrent.futures import ProcessPoolExecutor"
OUR_IMPORT = "from jobserver import JobserverExecutor as ProcessPoolExecutor"
REUSING_IMPORT = (
    "import functools, jobserver; ProcessPoolExecutor = functools.partial("
    "jobserver.JobserverExecutor, reuse_workers=True)"
)


@pytest.fixture(autouse=True, scope="module")
def _warm_up() -> None:
    et.warm_up(START_METHODS)


def _run(script: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for key in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS), env.get("PYTHONPATH")) if p
    )
    process = subprocess.Popen(
        [sys.executable, script.name],
        cwd=script.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{script.name} hung\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize(
    "import_line", [OUR_IMPORT, REUSING_IMPORT], ids=["fresh", "reuse"]
)
def test_unmodified_processpool_program_runs_with_only_the_import_changed(
    tmp_path: Path, import_line: str
) -> None:
    source = (TESTS / "ppe_program.py").read_text()
    lines = source.splitlines(keepends=True)
    changed = [i for i, line in enumerate(lines) if line.startswith(STDLIB_IMPORT)]
    assert len(changed) == 1
    lines[changed[0]] = import_line + "\n"
    ours = tmp_path / "ppe_program.py"
    ours.write_text("".join(lines))
    # The two files differ in exactly that one line.
    diff = [
        (a, b)
        for a, b in zip(source.splitlines(), ours.read_text().splitlines())
        if a != b
    ]
    assert len(diff) == 1

    expected = _run(TESTS / "ppe_program.py")
    got = _run(ours)
    assert expected.returncode == 0, expected.stderr
    assert got.returncode == 0, got.stderr
    assert got.stdout == expected.stdout
    assert "a worker died: BrokenProcessPool" in got.stdout
    assert got.stderr == ""


def test_importable_from_jobserver_lazily(tmp_path: Path) -> None:
    script = tmp_path / "lazy.py"
    script.write_text(
        "import sys\n"
        "import jobserver\n"
        "assert 'jobserver_executor' not in sys.modules\n"
        "from jobserver import JobserverExecutor\n"
        "import jobserver_executor\n"
        "assert JobserverExecutor is jobserver_executor.JobserverExecutor\n"
        "assert 'JobserverExecutor' in dir(jobserver)\n"
        "print('ok')\n"
    )
    result = _run(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_public_names() -> None:
    import jobserver

    assert jobserver.JobserverExecutor is JobserverExecutor
    assert issubclass(JobserverExecutor, cf.Executor)
    assert set(jobserver_executor.__all__) == {
        "BrokenJobserverExecutor",
        "InitializerFailed",
        "JobserverExecutor",
        "WorkerLost",
    }


@pytest.mark.skipif("fork" not in START_METHODS, reason="needs the fork start method")
def test_lambdas_and_closures_under_fork(no_leaks: None) -> None:
    offset = 10

    def add_offset(x: int) -> int:
        return x + offset

    unpicklable_state = {"lock": __import__("threading").Lock(), "n": 5}
    with JobserverExecutor(2, mp_context="fork") as ex:
        assert ex.submit(lambda: 42).result(et.PATIENCE) == 42
        assert ex.submit(add_offset, 1).result(et.PATIENCE) == 11
        assert ex.submit(lambda: unpicklable_state["n"]).result(et.PATIENCE) == 5
        assert list(ex.map(lambda x: x * 2, range(5))) == [0, 2, 4, 6, 8]
        assert list(ex.map(add_offset, range(5), chunksize=2)) == list(range(10, 15))
        assert ex.submit(et.lambda_free_closure_factory(3), 4).result(et.PATIENCE) == 7

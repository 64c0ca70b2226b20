"""The public surface is exactly what the specification promises."""

from __future__ import annotations

import copy
import importlib.metadata
import inspect
import pickle
import sys
from pathlib import Path

import jobserver
import pytest
from conftest import ROOT
from jobserver import Blocked, CallbackRaised, Future, Jobserver, LostResult


def params(fn: object) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


P, K, PK, VA, VK = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.KEYWORD_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL,
    inspect.Parameter.VAR_KEYWORD,
)
E = inspect.Parameter.empty


def test_public_names() -> None:
    for name in ("Jobserver", "Future", "Blocked", "LostResult", "CallbackRaised"):
        assert name in jobserver.__all__
        assert getattr(jobserver, name) is not None


def test_signatures_match_the_spec() -> None:
    assert params(Jobserver.__init__)[1:] == [
        ("context", PK, None),
        ("slots", PK, None),
    ]
    assert params(Jobserver.submit)[1:] == [
        ("fn", PK, E),
        ("args", K, ()),
        ("kwargs", K, None),
        ("consume", K, 1),
        ("timeout", K, None),
    ]
    assert params(Jobserver.__call__)[1:] == [
        ("fn", P, E),
        ("args", VA, E),
        ("kwargs", VK, E),
    ]
    assert params(Jobserver.map)[1:] == [
        ("fn", PK, E),
        ("argses", PK, None),
        ("kwargses", PK, None),
        ("timeout", K, None),
        ("chunksize", K, 1),
        ("buffersize", K, None),
    ]
    assert params(Jobserver.revise_env)[1:] == [("additions", P, E)]
    assert params(Jobserver.replace_preexec)[1:] == [
        ("fn", P, E),
        ("args", VA, E),
        ("kwargs", VK, E),
    ]
    assert params(Jobserver.replace_sleep)[1:] == [("fn", P, E)]
    assert params(Jobserver.reclaim_resources)[1:] == []
    assert params(Future.done)[1:] == [("timeout", PK, 0)]
    assert params(Future.wait)[1:] == [("timeout", PK, None), ("signal", K, None)]
    assert params(Future.result)[1:] == [("timeout", PK, None)]
    assert params(Future.when_done)[1:] == [
        ("fn", P, E),
        ("args", VA, E),
        ("kwargs", VK, E),
    ]
    assert isinstance(Jobserver.context, property)


def test_exceptions() -> None:
    for cls in (Blocked, LostResult, CallbackRaised):
        assert issubclass(cls, Exception)
    raised = CallbackRaised(3)
    assert raised.seqno == 3
    assert "3" in repr(raised) and "3" in str(raised)
    try:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise CallbackRaised(7) from exc
    except CallbackRaised as outer:
        assert isinstance(outer.__cause__, KeyError)
        assert "seqno=7" in str(outer)
    lost = pickle.loads(pickle.dumps(LostResult("gone", pid=5, returncode=-9)))
    assert (str(lost), lost.pid, lost.returncode) == ("gone", 5, -9)


def test_version_is_the_installed_one() -> None:
    assert jobserver.__version__ == importlib.metadata.version("jobserver-core")


def test_one_version_and_exact_pins() -> None:
    core = importlib.metadata.version("jobserver-core")
    for dist in ("jobserver-executor", "jobserver-extras"):
        assert importlib.metadata.version(dist) == core
        requires = importlib.metadata.requires(dist) or []
        assert f"jobserver-core=={core}" in [r.replace(" ", "") for r in requires]


def test_py_typed_in_every_package() -> None:
    for package in ("jobserver", "jobserver_executor", "jobserver_extras"):
        module = __import__(package)
        assert (Path(module.__file__).parent / "py.typed").is_file(), package


def test_layout() -> None:
    for path in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "packages",
        "tests",
        "examples",
        "docs",
        "scripts",
    ):
        assert (ROOT / path).exists(), path
    assert "Mozilla Public License Version 2.0" in (ROOT / "LICENSE").read_text()


def test_executor_import_names_its_distribution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "jobserver_executor", None)
    with pytest.raises(ImportError, match="jobserver-executor"):
        jobserver.JobserverExecutor
    with pytest.raises(ImportError, match="jobserver-executor"):
        from jobserver import JobserverExecutor  # noqa: F401


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError):
        jobserver.NoSuchThing


def test_future_cannot_be_copied_or_pickled() -> None:
    with Jobserver(context="fork", slots=1) as js:
        future = js.submit(len, args=("abc",))
        with pytest.raises(TypeError):
            copy.copy(future)
        with pytest.raises(TypeError):
            copy.deepcopy(future)
        with pytest.raises(TypeError):
            pickle.dumps(future)
        assert future.result() == 3


def test_reprs() -> None:
    with Jobserver(context="fork", slots=3) as js:
        text = repr(js)
        assert "fork" in text and "slots=3" in text and "tracked=0" in text
        future = js.submit(len, args=("abc",))
        future.when_done(lambda: None)
        assert f"pid={future._worker.pid}" in repr(future)
        assert "callbacks=1" in repr(future)
        assert "running" in repr(future) or "exited" in repr(future)
        assert "tracked=1" in repr(js)
        future.result()
        assert "done" in repr(future) and "callbacks=0" in repr(future)

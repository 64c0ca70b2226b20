"""Security: which descriptors reach programs, and what the library unpickles.

* Token pipes, result pipes and every other descriptor of the library are
  close-on-exec for everything not meant to inherit them: a program started
  from the parent or from inside a worker -- by ``subprocess`` with
  ``close_fds=False`` (what ``os.system`` does too) or by the worker
  ``exec``-ing itself -- sees only 0, 1, 2, what this test process itself
  inherited from whoever started it, and what was passed on purpose
  (``pass_fds``, ``advertise_to_workers``).
* The trust boundary (docs/reliability.md): the library unpickles only data
  from its own side of a process it started -- a result from the pipe of a
  worker this process launched, and a worker's orders from the process that
  launched it.  Token bytes, ``MAKEFLAGS`` and the control socket of
  ``jobserver serve`` are never unpickled.
"""

from __future__ import annotations

import ast
import collections
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tasks
from conftest import ROOT, START_METHODS, assert_slots_conserved
from jobserver import Jobserver, LostResult

#: Prints "FD TARGET" for every descriptor open in the program running it.
LISTING = (
    "import os, sys\n"
    "out = []\n"
    "for name in os.listdir('/proc/self/fd'):\n"
    "    fd = int(name)\n"
    "    try:\n"
    "        os.fstat(fd)\n"
    "        out.append(f'{fd} {os.readlink(f\"/proc/self/fd/{fd}\")}')\n"
    "    except OSError:\n"
    "        pass\n"
    "text = '\\n'.join(sorted(out)) + '\\n'\n"
    "if len(sys.argv) > 1:\n"
    "    with open(sys.argv[1], 'w') as f:\n"
    "        f.write(text)\n"
    "else:\n"
    "    sys.stdout.write(text)\n"
)

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="lists descriptors through /proc"
)


def parse(text: str) -> dict[int, str]:
    fds = {}
    for line in text.splitlines():
        fd, _, target = line.partition(" ")
        fds[int(fd)] = target
    return fds


def program_fds(**popen_kwargs: Any) -> dict[int, str]:
    """The descriptors a freshly started program has."""
    proc = subprocess.run(
        [sys.executable, "-c", LISTING],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        **popen_kwargs,
    )
    return parse(proc.stdout)


def program_fds_from_worker(js: Jobserver, how: str, path: str) -> dict[int, str]:
    """In a worker (which holds ``js``'s token descriptors): start a program
    the lazy way, or become one, and list what it got."""
    assert js is not None
    if how == "subprocess":
        return program_fds(close_fds=False)
    os.execv(sys.executable, [sys.executable, "-c", LISTING, path])


@pytest.fixture(scope="module")
def outside() -> set[int]:
    """What a program started by this test process gets before the library
    does anything: 0, 1, 2 and what this process inherited from its parent
    (a CI runner may pass some).  None of it is the library's."""
    return set(program_fds(close_fds=False))


@pytest.fixture(scope="module", autouse=True)
def _warm_launchers() -> None:
    """Long-lived helpers (fork server, template process) exist before the
    tests look, as they would in any program that has submitted once."""
    for method in START_METHODS:
        with Jobserver(context=method, slots=1) as js:
            js.submit(tasks.identity, args=(0,)).result(timeout=120)


def pipe_names(js: Jobserver, futures: list[Any]) -> dict[str, str]:
    """``pipe:[inode]`` of the library's own pipes, to name any that leak."""
    names = {}
    pool = js._resources.pool
    names[os.readlink(f"/proc/self/fd/{pool.read_fd}")] = "the token pool"
    for future in futures:
        fd = future._worker.result_fd
        if fd >= 0:
            names[os.readlink(f"/proc/self/fd/{fd}")] = (
                f"the result pipe of worker {future._worker.pid}"
            )
    return names


def explain(extra: dict[int, str], names: dict[str, str]) -> str:
    return ", ".join(
        f"{fd} -> {target} ({names.get(target, 'unknown')})"
        for fd, target in sorted(extra.items())
    )


# --- from the parent ----------------------------------------------------------------


def _pool(kind: str, method: str) -> tuple[Jobserver, tuple[int, ...]]:
    """A Jobserver on each kind of pool, and descriptors to close afterwards."""
    if kind == "pipe":
        return Jobserver(context=method, slots=3), ()
    if kind == "fifo":
        return Jobserver.with_fifo(context=method, slots=3), ()
    # A pool advertised the way GNU Make does it, joined without the
    # implicit slot (this test process was not started by that "Make").
    r, w = os.pipe()
    os.write(w, b"++")
    js = Jobserver.join(
        f" -j3 --jobserver-auth={r},{w}", context=method, implicit=False
    )
    assert js is not None and js._resources.pool.kind.startswith("make-")
    return js, (r, w)


@pytest.mark.parametrize("kind", ["pipe", "fifo", "make"])
@pytest.mark.parametrize("method", START_METHODS)
def test_programs_the_parent_starts_get_none_of_the_librarys_descriptors(
    method: str, kind: str, outside: set[int], no_leaks: None
) -> None:
    js, own = _pool(kind, method)
    try:
        with js:
            # Work outstanding: result pipes, exit descriptors and the
            # watcher are all open in this process right now.
            running = [js.submit(signal.pause) for _ in range(2)]
            names = pipe_names(js, running)
            got = program_fds(close_fds=False)
            with js.advertise(consume=0) as adv:
                passed = program_fds(pass_fds=adv.pass_fds)
            for future in running:
                future.wait(60, signal=signal.SIGTERM)
            extra = {fd: t for fd, t in got.items() if fd not in outside}
            assert not extra, f"a program inherited {explain(extra, names)}"
            assert set(passed) == {0, 1, 2, *adv.pass_fds}
            assert_slots_conserved(js, 3 if kind != "make" else 2)
    finally:
        for fd in own:
            os.close(fd)


# --- from inside a worker ------------------------------------------------------------


def _worker_cases() -> list[Any]:
    cases = []
    for method in START_METHODS:
        for how in ("subprocess", "exec"):
            cases.append(pytest.param(method, how, id=f"{method}-{how}"))
    return cases


@pytest.mark.parametrize(("method", "how"), _worker_cases())
def test_programs_a_worker_starts_get_none_of_the_librarys_descriptors(
    method: str, how: str, outside: set[int], tmp_path: Path, no_leaks: None
) -> None:
    path = str(tmp_path / "fds")
    with Jobserver(context=method, slots=3) as js:
        # The handle goes along, so the worker holds token descriptors too.
        future = js.submit(program_fds_from_worker, args=(js, how, path))
        names = pipe_names(js, [future])
        if how == "subprocess":
            got = future.result(timeout=120)
        else:
            with pytest.raises(LostResult):
                future.result(timeout=120)
            got = parse(Path(path).read_text())
        assert_slots_conserved(js, 3)
    extra = {fd: t for fd, t in got.items() if fd not in outside}
    assert not extra, f"a program started in a worker inherited {explain(extra, names)}"


@pytest.mark.parametrize("method", [m for m in START_METHODS if m != "fork"])
def test_multiprocessing_launches_leak_nothing_either(
    method: str,
    outside: set[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_leaks: None,
) -> None:
    """The path without the template (other platforms; forced here): what
    multiprocessing passes its children (result pipe, resource tracker,
    liveness pipes) is close-on-exec in the worker too."""
    monkeypatch.setenv("JOBSERVER_NO_TEMPLATE", "1")
    with Jobserver(context=method, slots=3) as js:
        assert type(js._resources.launcher).__name__ == "MultiprocessingLauncher"
        future = js.submit(program_fds_from_worker, args=(js, "subprocess", ""))
        names = pipe_names(js, [future])
        got = future.result(timeout=120)
        assert_slots_conserved(js, 3)
    extra = {fd: t for fd, t in got.items() if fd not in outside}
    assert not extra, f"a program started in a worker inherited {explain(extra, names)}"


@pytest.mark.parametrize("method", START_METHODS)
def test_advertised_workers_pass_on_exactly_the_advertised_pair(
    method: str, outside: set[int], tmp_path: Path, no_leaks: None
) -> None:
    with Jobserver(context=method, slots=3) as plain:
        js = plain.advertise_to_workers()
        future = js.submit(makeflags_and_program_fds)
        names = pipe_names(plain, [future])
        makeflags, got = future.result(timeout=120)
        assert_slots_conserved(plain, 3)
    auth = [w for w in makeflags.split() if w.startswith("--jobserver-auth=")][-1]
    advertised = {int(fd) for fd in auth.split("=", 1)[1].split(",")}
    assert advertised <= set(got)
    extra = {fd: t for fd, t in got.items() if fd not in outside | advertised}
    assert not extra, f"besides the advertised pair: {explain(extra, names)}"


def makeflags_and_program_fds() -> tuple[str, dict[int, str]]:
    return os.environ["MAKEFLAGS"], program_fds(close_fds=False)


# --- the trust boundary ------------------------------------------------------------------

#: Where the library may unpickle, and why that data is trusted.  Adding a
#: site means extending the trust boundary in docs/reliability.md first.
UNPICKLING_ALLOWED = {
    ("jobserver/_wire.py", "decode"): "a result read from the pipe of a worker "
    "this process launched",
    ("jobserver/_template.py", "serve"): "the preparation data the parent sends "
    "its own template process over a socketpair",
    ("jobserver/_template.py", "_worker"): "a worker's orders, sent by the "
    "process that launched it over that socketpair, or by one of the "
    "template's own workers over a socketpair passed through its rendezvous",
    ("jobserver_executor/_reuse.py", "_run_call"): "a reused worker's next "
    "call, sent by the executor that started it over the worker's task pipe",
}
_PICKLE_MODULES = {
    "pickle",
    "_pickle",
    "cPickle",
    "marshal",
    "shelve",
    "dill",
    "cloudpickle",
}
_PICKLE_NAMES = {"loads", "load", "Unpickler", "open"}
#: multiprocessing objects whose receiving end unpickles.
_UNPICKLING_CHANNELS = {
    "Pipe",
    "Queue",
    "SimpleQueue",
    "JoinableQueue",
    "Manager",
    "Listener",
    "Client",
}


def unpickling_sites() -> dict[tuple[str, str], list[int]]:
    sites: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for path in sorted((ROOT / "packages").glob("*/src/**/*.py")):
        tree = ast.parse(path.read_text(), str(path))
        relative = Path(*path.parts[path.parts.index("src") + 1 :]).as_posix()
        for function, node in _walk_with_function(tree):
            hit = False
            if isinstance(node, ast.Attribute):
                base = node.value
                if (
                    isinstance(base, ast.Name)
                    and base.id in _PICKLE_MODULES
                    and node.attr in _PICKLE_NAMES
                ):
                    hit = True
                if node.attr in _UNPICKLING_CHANNELS:
                    hit = True
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = {a.name for a in node.names}
                if (
                    node.module.split(".")[0] in _PICKLE_MODULES
                    and names & _PICKLE_NAMES
                ):
                    hit = True
                if node.module == "multiprocessing.connection":
                    hit = True
            if hit:
                sites[(relative, function)].append(node.lineno)
    return dict(sites)


def _walk_with_function(tree: ast.AST) -> Any:
    def visit(node: ast.AST, function: str) -> Any:
        for child in ast.iter_child_nodes(node):
            name = function
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = child.name
            yield name, child
            yield from visit(child, name)

    yield from visit(tree, "<module>")


def test_only_known_places_unpickle() -> None:
    sites = unpickling_sites()
    unexpected = {
        site: lines for site, lines in sites.items() if site not in UNPICKLING_ALLOWED
    }
    assert not unexpected, (
        "new places that unpickle (or use a multiprocessing channel that does): "
        f"{unexpected}; check where the data comes from and extend the trust "
        "boundary in docs/reliability.md and UNPICKLING_ALLOWED"
    )
    assert ("jobserver/_wire.py", "decode") in sites


def test_token_bytes_are_never_interpreted(method: str, no_leaks: None) -> None:
    """Tokens that look like pickle opcodes (and NUL, 0xff) go back exactly
    as they came, through nested work too; nothing reads them as data."""
    tokens = b"cR.\x80\x00\xff"
    r, w = os.pipe()
    try:
        os.write(w, tokens)
        js = Jobserver.join(
            f" -j{len(tokens) + 1} --jobserver-auth={r},{w}",
            context=method,
            implicit=False,
        )
        assert js is not None
        with js:
            futures = [js.submit(tasks.nest, args=(js, 2)) for _ in range(3)]
            assert all(f.result(timeout=120) >= 0 for f in futures)
            values = js.map(tasks.add, [(i, i) for i in range(10)])
            assert list(values) == [2 * i for i in range(10)]
        os.set_blocking(r, False)
        assert sorted(os.read(r, 100)) == sorted(tokens)
    finally:
        os.close(r)
        os.close(w)

"""The client side of GNU Make's jobserver protocol: joining Make's pool.

The tests play Make themselves (a pipe or FIFO seeded with tokens, named in
MAKEFLAGS of a fresh Python process), so that the process-global implicit
token starts out as it does in a program Make started.  The real Make is
in test_make_gnu.py.
"""

from __future__ import annotations

import collections
import os
import stat
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobserver import Jobserver, _slots
from jobserver._makeflags import compose, parse, pool_from_environment, split_words
from makeutil import drain, max_overlap, python_env, run_python
from rendezvous import Rendezvous

# --- parsing MAKEFLAGS ------------------------------------------------------------


def test_split_words_respects_escaped_blanks() -> None:
    assert split_words(r" k  -I a\ b  -- X=1\ 2") == [
        "k",
        "-I",
        r"a\ b",
        "--",
        r"X=1\ 2",
    ]


def test_only_the_last_jobserver_word_counts() -> None:
    flags = parse(
        " -j4 --jobserver-fds=3,4 --jobserver-auth=5,6 --jobserver-auth=fifo:/x -j8"
    )
    assert flags.auth == "fifo:/x"
    assert flags.jobs == 8
    assert parse("--jobserver-auth=5,6 --jobserver-fds=7,8").auth == "7,8"


def test_variables_after_double_dash_are_not_options() -> None:
    flags = parse("k -j2 -- X=--jobserver-auth=3,4 Y=-j9")
    assert flags.auth is None
    assert flags.jobs == 2
    assert flags.variables == ["--", "X=--jobserver-auth=3,4", "Y=-j9"]


def test_bare_j_means_unlimited() -> None:
    assert parse(" -j").jobs == 0
    assert parse(" -k").jobs is None


def test_compose_replaces_jobserver_words_and_keeps_the_rest() -> None:
    base = "ks -j8 --jobserver-auth=3,4 --no-print-directory -- FOO=a\\ b"
    assert compose(base, "--jobserver-auth=9,10", 4) == (
        "ks --no-print-directory -j4 --jobserver-auth=9,10 -- FOO=a\\ b"
    )
    # Without a total, Make's own -j word stays.
    assert compose(" -j3 --jobserver-fds=3,4", "--jobserver-auth=fifo:/p", None) == (
        " -j3 --jobserver-auth=fifo:/p"
    )
    assert compose(None, "--jobserver-auth=5,6", 2) == " -j2 --jobserver-auth=5,6"


# --- pool_from_environment in this process ----------------------------------------


@pytest.fixture
def fresh_implicit() -> Iterator[None]:
    """Let this test claim (and release) a process-global implicit token."""
    saved = (
        _slots._implicit_state,
        _slots._implicit_auth,
        _slots._implicit_pid,
        list(_slots._IMPLICIT),
    )
    _slots._implicit_state = "unclaimed"
    _slots._IMPLICIT.clear()
    try:
        yield
    finally:
        (
            _slots._implicit_state,
            _slots._implicit_auth,
            _slots._implicit_pid,
            implicit,
        ) = saved
        _slots._IMPLICIT.clear()
        _slots._IMPLICIT.extend(implicit)


@pytest.fixture
def make_pipe() -> Iterator[tuple[int, int]]:
    """A blocking pipe like Make's, both ends inheritable."""
    read_fd, write_fd = os.pipe()
    os.set_inheritable(read_fd, True)
    os.set_inheritable(write_fd, True)
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


def closed_fds(count: int) -> list[int]:
    """Descriptor numbers that are certainly closed right now."""
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]
    for fd in fds:
        os.close(fd)
    return fds


@pytest.mark.parametrize(
    "makeflags",
    [
        "",
        " -j1",
        " -j",
        "ks -j4",
        " -j2 -- X=--jobserver-auth=3,4",
        " -j3 --jobserver-auth=-2,-2",
        " -j3 --jobserver-auth=5,-1",
        " -j3 --jobserver-fds=-1,-1",
    ],
)
def test_no_jobserver_is_silent(makeflags: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pool_from_environment({"MAKEFLAGS": makeflags}) is None


@pytest.mark.parametrize(
    "auth",
    ["x", "1", "1,2,3", ",", "a,b", "3;4", "fifo:", "fifo:/nonexistent/jobserver"],
)
def test_malformed_jobserver_word_warns(auth: str) -> None:
    with pytest.warns(RuntimeWarning, match="ignoring the GNU Make jobserver"):
        pool = pool_from_environment({"MAKEFLAGS": f" -j3 --jobserver-auth={auth}"})
    assert pool is None


def test_stale_descriptors_warn() -> None:
    read_fd, write_fd = closed_fds(2)
    makeflags = f" -j3 --jobserver-auth={read_fd},{write_fd}"
    with pytest.warns(RuntimeWarning, match=r"'\+' or use \$\(MAKE\)"):
        assert pool_from_environment({"MAKEFLAGS": makeflags}) is None


@pytest.mark.usefixtures("no_leaks")
def test_descriptors_of_other_files_warn(tmp_path: Path) -> None:
    a_read, a_write = os.pipe()
    b_read, b_write = os.pipe()
    regular = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        for pair in [
            (a_read, b_write),  # two different pipes
            (a_write, a_read),  # the right pipe, the wrong way round
            (regular, regular),  # not a pipe at all
        ]:
            makeflags = "--jobserver-auth={},{}".format(*pair)
            with pytest.warns(RuntimeWarning):
                assert pool_from_environment({"MAKEFLAGS": makeflags}) is None
        assert drain(a_read) == b""
    finally:
        for fd in (a_read, a_write, b_read, b_write, regular):
            os.close(fd)


@pytest.mark.parametrize("kind", ["regular file", "directory"])
def test_fifo_path_that_is_no_fifo_warns(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "thing"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_text("+++")
    with pytest.warns(RuntimeWarning):
        assert (
            pool_from_environment({"MAKEFLAGS": f"--jobserver-auth=fifo:{path}"})
            is None
        )


def test_broken_makeflags_fall_back_to_the_cpu_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_fd, write_fd = closed_fds(2)
    monkeypatch.setenv("MAKEFLAGS", f" -j3 --jobserver-auth={read_fd},{write_fd}")
    with pytest.warns(RuntimeWarning):
        js = Jobserver()
    with js:
        assert js._resources.pool.kind == "pipe"
        assert js._resources.pool.size == len(os.sched_getaffinity(0))


def test_explicit_slots_ignore_makeflags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAKEFLAGS", " -j3 --jobserver-auth=garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Jobserver(slots=2) as js:
            assert js._resources.pool.size == 2


@pytest.mark.usefixtures("no_leaks")
def test_inherited_read_end_stays_blocking(
    fresh_implicit: None, make_pipe: tuple[int, int]
) -> None:
    read_fd, write_fd = make_pipe
    os.write(write_fd, b"\x00\xff")
    pool = pool_from_environment(
        {"MAKEFLAGS": f" -j3 --jobserver-auth={read_fd},{write_fd}"}
    )
    assert pool is not None
    try:
        assert pool.kind == "make-fds"
        assert pool.size == 3
        assert os.get_blocking(read_fd), "Make's read end must stay blocking"
        assert not os.get_blocking(pool.read_fd)
        assert {pool.read_fd, pool.write_fd}.isdisjoint({read_fd, write_fd})
        assert not os.get_inheritable(pool.read_fd)
        ledger: collections.deque[bytes] = collections.deque()
        while pool.take(ledger):
            pass
        # The implicit token first (b""), then Make's bytes, exactly as read.
        assert list(ledger) == [b"", b"\x00", b"\xff"]
        assert os.get_blocking(read_fd)
        while ledger:
            pool.give(ledger)
        assert sorted(drain(read_fd)) == [0x00, 0xFF]
    finally:
        pool.close()


@pytest.mark.usefixtures("no_leaks")
def test_fifo_without_a_peer_does_not_hang(
    fresh_implicit: None, tmp_path: Path
) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    pool = pool_from_environment({"MAKEFLAGS": f"--jobserver-auth=fifo:{path}"})
    assert pool is not None
    try:
        assert pool.kind == "make-fifo"
        ledger: collections.deque[bytes] = collections.deque()
        assert pool.take(ledger)  # the implicit token
        assert ledger == collections.deque([b""])
        assert not pool.take(ledger)  # an empty FIFO: no wait, no token
        pool.give(ledger)
    finally:
        pool.close()


# --- in a process "Make" started -----------------------------------------------


def run_under_fake_make(
    code: str,
    tokens: bytes,
    tmp_path: Path,
    form: str = "fds",
    makeflags_extra: str = " -j{n}",
    **env_extra: str,
) -> tuple[str, bytes]:
    """Run ``code`` in a fresh Python whose MAKEFLAGS names a pool holding
    ``tokens`` (``env_extra`` added to its environment); return its stdout
    and the tokens the pool holds afterwards."""
    n = len(tokens) + 1
    prefix = makeflags_extra.format(n=n)
    if form == "fifo":
        path = tmp_path / "make-fifo"
        os.mkfifo(path, 0o600)
        read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        write_fd = os.open(path, os.O_WRONLY)
        auth, pass_fds = f"fifo:{path}", ()
    else:
        read_fd, write_fd = os.pipe()
        auth, pass_fds = f"{read_fd},{write_fd}", (read_fd, write_fd)
    try:
        os.write(write_fd, tokens)
        env = python_env(
            MAKEFLAGS=f"{prefix} --jobserver-auth={auth}",
            LOG=str(tmp_path / "log"),
            **env_extra,
        )
        proc = run_python(textwrap.dedent(code), env=env, pass_fds=pass_fds)
        assert proc.returncode == 0, proc.stderr
        if form == "fds":
            assert os.get_blocking(read_fd), "the client changed Make's read end"
        return proc.stdout, drain(read_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)


@pytest.mark.parametrize("form", ["fds", "fifo"])
def test_implicit_token_gives_one_more_worker(tmp_path: Path, form: str) -> None:
    code = """
        import os, makeutil
        from jobserver import Jobserver
        with Jobserver() as js:
            print(js._resources.pool.kind)
            args = (os.environ["LOG"], os.environ["RENDEZVOUS"])
            futures = [js.submit(makeutil.log_job, args=args) for _ in range(9)]
            for future in futures:
                future.result()
    """
    # 2 tokens in the pipe + the implicit one: the first 3 jobs meet.
    with Rendezvous(tmp_path, 3) as rv:
        out, left = run_under_fake_make(
            code, b"ab", tmp_path, form, RENDEZVOUS=rv.address
        )
    assert out.split() == [f"make-{form}"]
    # 3 at once, never more.
    assert max_overlap(tmp_path / "log") == 3
    assert sorted(left) == sorted(b"ab")


def test_token_bytes_are_written_back_exactly(tmp_path: Path) -> None:
    tokens = bytes([0, 10, 32, 43, 200, 255])
    code = """
        import os, makeutil
        from jobserver import Jobserver
        with Jobserver() as js:
            args = (os.environ["LOG"], os.environ["RENDEZVOUS"])
            futures = [js.submit(makeutil.log_job, args=args) for _ in range(20)]
            for future in futures:
                future.result()
    """
    # Every token plus the implicit one: each token was taken at least once.
    with Rendezvous(tmp_path, len(tokens) + 1) as rv:
        _, left = run_under_fake_make(code, tokens, tmp_path, RENDEZVOUS=rv.address)
    assert sorted(left) == sorted(tokens)


def test_implicit_token_is_one_per_process_not_per_jobserver(tmp_path: Path) -> None:
    code = """
        import collections
        from jobserver import Jobserver
        first, second = Jobserver(), Jobserver()
        a, b = collections.deque(), collections.deque()
        while first._resources.pool.take(a):
            pass
        while second._resources.pool.take(b):
            pass
        print(len(a), len(b), list(a).count(b"") + list(b).count(b""))
        while a:
            first._resources.pool.give(a)
        # Given back, the implicit token serves the other handle.
        while second._resources.pool.take(b):
            pass
        print(list(b).count(b""))
        while b:
            second._resources.pool.give(b)
        # And a Jobserver created after the first was closed.
        with first, second:
            pass
        third = Jobserver()
        c = collections.deque()
        third._resources.pool.take(c)
        print(list(c))
        third._resources.pool.give(c)
    """
    out, left = run_under_fake_make(code, b"xy", tmp_path)
    assert out.splitlines() == ["3 0 1", "1", "[b'']"]
    assert sorted(left) == sorted(b"xy")


@pytest.mark.parametrize("tokens", [b"", b"q"])
def test_workers_never_see_the_implicit_token(
    tmp_path: Path, method: str, tokens: bytes
) -> None:
    code = f"""
        import makeutil
        from jobserver import Jobserver
        with Jobserver(context={method!r}) as js:
            # The implicit token runs this worker; the worker may take only
            # what the pipe holds.
            print(js.submit(makeutil.probe_tokens, args=(js,)).result())
            print(js.submit(makeutil.probe_fresh).result())
    """
    out, left = run_under_fake_make(code, tokens, tmp_path)
    handle_line, fresh_line = out.splitlines()
    assert handle_line == repr([bytes([t]) for t in tokens])
    # A brand-new Jobserver() in the worker joins Make's pool where the
    # descriptors survived (fork), else falls back (spawn closes them), and
    # never holds an implicit token either way.
    assert "b''" not in fresh_line
    assert sorted(left) == sorted(tokens)


def test_a_process_forked_before_any_jobserver_never_claims_the_implicit_token(
    tmp_path: Path,
) -> None:
    # The at-fork hook that forgets the implicit token is registered on its
    # first use; a child forked before that must still see that it is a fork.
    code = """
        import os, makeutil
        import jobserver
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            os.write(write_fd, repr(makeutil.probe_fresh()).encode())
            os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd) as f:
            print(f.read())
        os.waitpid(pid, 0)
        print(makeutil.probe_fresh())
    """
    out, left = run_under_fake_make(code, b"q", tmp_path)
    child_line, parent_line = out.splitlines()
    assert child_line == repr(("make-fds", [b"q"]))
    assert parent_line == repr(("make-fds", [b"", b"q"]))
    assert sorted(left) == sorted(b"q")


def test_make_pool_nests_under_every_start_method(tmp_path: Path, method: str) -> None:
    code = f"""
        import tasks
        from jobserver import Jobserver
        with Jobserver(context={method!r}) as js:
            print(js.submit(tasks.nest_or_inline, args=(js, 3)).result())
    """
    out, left = run_under_fake_make(code, b"ab", tmp_path)
    assert out.split() == ["15"]
    assert sorted(left) == sorted(b"ab")


def test_stale_makeflags_never_crash_a_program(tmp_path: Path) -> None:
    read_fd, write_fd = closed_fds(2)
    env = python_env(MAKEFLAGS=f" -j3 --jobserver-auth={read_fd},{write_fd}")
    proc = run_python(
        "from jobserver import Jobserver\n"
        "with Jobserver() as js:\n"
        "    print(js._resources.pool.kind, js(abs, -3).result())\n",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["pipe", "3"]
    assert "RuntimeWarning" in proc.stderr


def test_fifo_form_descriptors_are_private(
    tmp_path: Path, fresh_implicit: None
) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    keep = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        pool = pool_from_environment({"MAKEFLAGS": f"--jobserver-auth=fifo:{path}"})
        assert pool is not None
        try:
            assert stat.S_ISFIFO(os.fstat(pool.read_fd).st_mode)
            assert not os.get_inheritable(pool.read_fd)
            assert not os.get_inheritable(pool.write_fd)
            assert pool.fifo_path == str(path)
        finally:
            pool.close()
    finally:
        os.close(keep)

"""The server side: advertising our own pool to child programs.

Our own client (a Python program using ``Jobserver()``) stands in for Make
here; the real GNU Make is in test_make_gnu.py.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_slots
from jobserver import Blocked, Jobserver
from jobserver._makeflags import parse
from makeutil import (
    listed_fds_code,
    max_overlap,
    pool_tokens,
    python_env,
    run_python,
)
from rendezvous import Rendezvous

#: Our client: runs logged jobs (``makeutil.log_job``), meeting at the
#: rendezvous named in RENDEZVOUS if there is one.
CLIENT = """
import os, sys, makeutil
from jobserver import Jobserver
with Jobserver() as js:
    print(js._resources.pool.kind)
    args = (os.environ["LOG"], os.environ.get("RENDEZVOUS"))
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    futures = [js.submit(makeutil.log_job, args=args) for _ in range(count)]
    for future in futures:
        future.result()
"""


def seed(js: Jobserver, tokens: bytes) -> None:
    """Replace the tokens of ``js``'s (idle) pool with ``tokens``."""
    pool = js._resources.pool
    ledger: collections.deque[bytes] = collections.deque()
    while pool.take(ledger):
        pass  # taken for good: the pipe is empty now
    os.write(pool.write_fd, tokens)


# --- the advertisement itself ------------------------------------------------------


@pytest.mark.usefixtures("no_leaks")
def test_fd_form_gives_fresh_blocking_private_descriptors() -> None:
    with Jobserver(slots=3) as js, js.advertise() as adv:
        pool = js._resources.pool
        flags = parse(adv.makeflags)
        assert flags.auth == "{},{}".format(*adv.pass_fds)
        assert flags.jobs == 3
        assert adv.env["MAKEFLAGS"] == adv.makeflags
        read_fd, write_fd = adv.pass_fds
        assert os.get_blocking(read_fd)
        assert os.get_blocking(write_fd)
        # Close-on-exec here: only a child given pass_fds inherits them.
        assert not os.get_inheritable(read_fd)
        assert not os.get_inheritable(write_fd)
        # Descriptions of their own: what a client does to their mode (Make
        # 4.3 makes its read end non-blocking) does not reach ours.
        assert not os.get_blocking(pool.read_fd)
        os.set_blocking(read_fd, False)
        os.set_blocking(pool.read_fd, True)
        assert not os.get_blocking(read_fd)
        os.set_blocking(pool.read_fd, False)
        assert os.fstat(read_fd).st_ino == os.fstat(pool.read_fd).st_ino


@pytest.mark.usefixtures("no_leaks")
def test_advertisement_holds_the_programs_slot_until_closed() -> None:
    with Jobserver(slots=2) as js:
        with js.advertise() as adv:
            assert adv.holds == 1
            assert free_slots(js) == 1
            with js.advertise(consume=0) as lent:
                assert lent.holds == 0
                assert free_slots(js) == 1
            with js.advertise() as second:
                assert free_slots(js) == 0
                with pytest.raises(Blocked):
                    js.advertise(timeout=0)
                with pytest.raises(Blocked):
                    js.advertise(timeout=0.05)
            assert second.closed
        assert free_slots(js) == 2
        assert adv.pass_fds
        assert adv.closed


def test_advertise_rejects_bad_arguments() -> None:
    with Jobserver(slots=1) as js:
        with pytest.raises(ValueError, match="with_fifo"):
            js.advertise("fifo")
        with pytest.raises(ValueError):
            js.advertise_to_workers("fifo")
        with pytest.raises(ValueError):
            js.advertise("pipe")
        with pytest.raises(TypeError):
            js.advertise(1)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            js.advertise(consume=2)
        with pytest.raises(ValueError):
            js.advertise(timeout=-1)
        with pytest.raises(TypeError):
            js.advertise(env=["MAKEFLAGS"])  # type: ignore[arg-type]
        assert free_slots(js) == 1


def test_env_is_a_copy_with_makeflags_rewritten() -> None:
    base = {"PATH": "/bin", "MAKEFLAGS": "k -j9 --jobserver-auth=3,4 -- V=1"}
    with Jobserver(slots=2) as js, js.advertise(env=base) as adv:
        assert base["MAKEFLAGS"] == "k -j9 --jobserver-auth=3,4 -- V=1"
        assert adv.env["PATH"] == "/bin"
        assert adv.makeflags == "k -j2 --jobserver-auth={},{} -- V=1".format(
            *adv.pass_fds
        )


def test_unclosed_advertisement_warns_and_gives_its_slot_back() -> None:
    with Jobserver(slots=1) as js:
        with pytest.warns(ResourceWarning, match="unclosed"):
            js.advertise()  # dropped at once
        assert free_slots(js) == 1


# --- FIFO pools -------------------------------------------------------------------


@pytest.mark.usefixtures("no_leaks")
def test_fifo_pool_is_private_and_removed_on_close() -> None:
    with Jobserver.with_fifo(slots=2) as js, js.advertise("fifo") as adv:
        path = js._resources.pool.fifo_path
        assert path is not None
        assert adv.makeflags == f" -j2 --jobserver-auth=fifo:{path}"
        assert adv.pass_fds == ()
        assert stat.S_ISFIFO(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert os.listdir(os.path.dirname(path)) == ["fifo"]
        assert free_slots(js) == 1
    assert not os.path.exists(os.path.dirname(path))


@pytest.mark.usefixtures("no_leaks")
def test_fifo_is_removed_after_an_exception() -> None:
    with pytest.raises(ZeroDivisionError), Jobserver.with_fifo(slots=1) as js:
        path = js._resources.pool.fifo_path
        assert path is not None
        js(abs, 1).result()
        1 / 0
    assert not os.path.exists(path)


def test_fifo_is_removed_when_the_jobserver_is_garbage(tmp_path: Path) -> None:
    js = Jobserver.with_fifo(slots=1)
    path = js._resources.pool.fifo_path
    assert path is not None
    assert os.path.exists(path)
    del js
    gc.collect()
    assert not os.path.exists(path)


@pytest.mark.usefixtures("no_leaks")
def test_fifo_pool_nests_and_survives_workers(method: str) -> None:
    import tasks

    with Jobserver.with_fifo(context=method, slots=3) as js:
        path = js._resources.pool.fifo_path
        assert js.submit(tasks.nest_or_inline, args=(js, 3)).result() == 15
        # Workers closing their copies never remove the creator's FIFO.
        assert path is not None
        assert os.path.exists(path)
        assert free_slots(js) == 3
    assert path is not None
    assert not os.path.exists(path)


def test_fifo_jobserver_without_slots_uses_cpu_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MAKEFLAGS", raising=False)
    with Jobserver.with_fifo() as js:
        assert js._resources.pool.size == len(os.sched_getaffinity(0))
        assert js._resources.pool.kind == "fifo"


# --- our server, our client -----------------------------------------------------------


@pytest.mark.parametrize("form", ["fds", "fifo"])
@pytest.mark.usefixtures("no_leaks")
def test_our_client_stays_inside_our_limit(tmp_path: Path, form: str) -> None:
    log = tmp_path / "log"
    factory = Jobserver.with_fifo if form == "fifo" else Jobserver
    with (
        Rendezvous(tmp_path, 3) as rv,
        factory(slots=3) as js,
        js.advertise(form, env=python_env(LOG=str(log), RENDEZVOUS=rv.address)) as adv,
    ):
        proc = subprocess.run(
            [sys.executable, "-c", CLIENT],
            env=adv.env,
            pass_fds=adv.pass_fds,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [f"make-{form}"]
    # Our held slot became the client's implicit token; 2 more in the pool.
    assert max_overlap(log) == 3


@pytest.mark.parametrize("form", ["fds", "fifo"])
def test_our_clients_give_back_the_very_bytes(tmp_path: Path, form: str) -> None:
    tokens = bytes([1, 2, 3, 254])
    factory = Jobserver.with_fifo if form == "fifo" else Jobserver
    # The advertisement holds one token as the client's implicit one, 3 are
    # in the pool: the first 4 jobs meet, so every token was taken.
    rv = Rendezvous(tmp_path, 4)
    env = python_env(LOG=str(tmp_path / "log"), RENDEZVOUS=rv.address)
    with rv, factory(slots=4) as js:
        seed(js, tokens)
        with js.advertise(form, env=env) as adv:
            proc = subprocess.run(
                [sys.executable, "-c", CLIENT, "12"],
                env=adv.env,
                pass_fds=adv.pass_fds,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
        assert sorted(pool_tokens(js._resources.pool)) == sorted(tokens)


@pytest.mark.usefixtures("no_leaks")
def test_advertised_to_workers(tmp_path: Path, method: str) -> None:
    log = tmp_path / "log"
    with (
        Rendezvous(tmp_path, 3) as rv,
        Jobserver(context=method, slots=3).advertise_to_workers() as js,
    ):
        returncode, stderr, stdout = js.submit(
            run_client_in_worker, args=(CLIENT, str(log), rv.address)
        ).result()
    assert returncode == 0, stderr
    assert stdout.split() == ["make-fds"]
    # The worker's own slot is the client's implicit token; 2 more in the pool.
    assert max_overlap(log) == 3


def run_client_in_worker(code: str, log: str, rendezvous: str) -> tuple[int, str, str]:
    """In a worker: run our client the lazy way, inheriting everything."""
    os.environ["LOG"] = log
    os.environ["RENDEZVOUS"] = rendezvous
    os.environ["PYTHONPATH"] = python_env()["PYTHONPATH"]
    proc = subprocess.run(
        [sys.executable, "-c", code, "9"],
        close_fds=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stderr, proc.stdout


def test_advertised_to_workers_fifo_form(method: str) -> None:
    import tasks

    with Jobserver.with_fifo(context=method, slots=2).advertise_to_workers(
        "fifo"
    ) as js:
        path = js._resources.pool.fifo_path
        makeflags = js.submit(tasks.getenv, args=("MAKEFLAGS",)).result()
    assert makeflags == f" -j2 --jobserver-auth=fifo:{path}"


def test_advertising_sibling_keeps_the_preexec() -> None:
    import tasks

    with (
        Jobserver(slots=1)
        .revise_env({"MAKEFLAGS": "-k"})
        .replace_preexec(os.environ.__setitem__, "PRE", "yes")
        .advertise_to_workers()
    ) as js:
        assert js.submit(tasks.getenv, args=("PRE",)).result() == "yes"
        makeflags = js.submit(tasks.getenv, args=("MAKEFLAGS",)).result()
    assert makeflags.startswith(" -k -j1 --jobserver-auth=")


# --- descriptors reach only the children meant to get them ---------------------------


def child_fds(**kwargs: object) -> set[int]:
    proc = subprocess.run(
        [sys.executable, "-c", listed_fds_code()],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        **kwargs,  # type: ignore[arg-type]
    )
    return set(map(int, proc.stdout.split()))


def test_no_descriptor_leaks_into_other_children(tmp_path: Path) -> None:
    baseline = child_fds(close_fds=False)
    with contextlib.ExitStack() as stack:
        plain = stack.enter_context(Jobserver(slots=2))
        fifo = stack.enter_context(Jobserver.with_fifo(slots=2))
        adv = stack.enter_context(plain.advertise())
        fifo_fds = stack.enter_context(fifo.advertise())
        stack.enter_context(fifo.advertise("fifo"))
        assert plain(abs, -1).result() == 1
        assert child_fds(close_fds=False) == baseline
        assert child_fds(pass_fds=adv.pass_fds) == {0, 1, 2, *adv.pass_fds}
        assert child_fds(pass_fds=fifo_fds.pass_fds) == {0, 1, 2, *fifo_fds.pass_fds}


def test_workers_pass_the_advertised_descriptors_and_nothing_else(method: str) -> None:
    with Jobserver(context=method, slots=2).advertise_to_workers() as js:
        makeflags, listed, own = js.submit(list_fds_in_worker).result()
    auth = parse(makeflags).auth
    assert auth is not None
    advertised = set(map(int, auth.split(",")))
    # The programs a worker starts get the advertised pair; never the pool's
    # own descriptors nor anything else of ours.
    assert advertised <= listed
    assert not (own & listed)


def list_fds_in_worker() -> tuple[str, set[int], set[int]]:
    import gc as gc_module

    from jobserver._slots import SlotPool

    own = {
        fd
        for obj in gc_module.get_objects()
        if isinstance(obj, SlotPool) and not obj.closed
        for fd in (obj.read_fd, obj.write_fd)
    }
    return os.environ["MAKEFLAGS"], child_fds(close_fds=False), own


def test_our_client_subprocess_sees_makeflags_from_run_python() -> None:
    # Sanity of the helpers: a plain child has no MAKEFLAGS at all.
    proc = run_python("import os; print(os.environ.get('MAKEFLAGS'))")
    assert proc.stdout.strip() == "None"

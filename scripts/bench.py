"""Side-by-side launch benchmarks for jobserver and its peers.

Run through ``scripts/bench`` (which prepares ``.venv-bench`` with the peers
and matplotlib); see docs/performance.md for what each figure means.

Every measurement runs in a fresh interpreter (``bench.py --one ...``) so
that one contender's imports, helper processes and heap never slow the next
one down, and the contenders take turns within each repeat so that noise
from other load on the machine spreads over all of them.  Figures are the
median over the repeats; ratios are computed from those medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

SLOTS = 2
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# --- tasks (module level, so every start method can import them) -------------


def noop() -> None:
    return None


def busy(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def split_sum(js: Any, depth: int, n: int) -> int:
    """Divide and conquer: inner nodes take no slot, leaves take one."""
    if depth == 0:
        return busy(n)
    inner = depth > 1
    futures = [
        js.submit(split_sum, args=(js, depth - 1, n // 2), consume=0 if inner else 1)
        for _ in range(2)
    ]
    return sum(f.result() for f in futures)


def block(read_fd: int, write_fd: int) -> None:
    """Hold the worker until the parent closes its end of the pipe."""
    os.close(write_fd)
    os.read(read_fd, 1)


def big_result(size: int) -> bytes:
    return bytes(size)


# --- throughput contenders ----------------------------------------------------


def _ctx(method: str) -> Any:
    import multiprocessing

    return multiprocessing.get_context(method)


def tp_jobserver_submit(method: str, n: int) -> float:
    from jobserver import Jobserver

    js = Jobserver(context=method, slots=SLOTS)
    js.submit(noop).result()  # start helpers (fork server) outside the timing
    start = time.perf_counter()
    futures = [js.submit(noop) for _ in range(n)]
    for future in futures:
        future.result()
    return n / (time.perf_counter() - start)


def tp_jobserver_map(method: str, n: int) -> float:
    from jobserver import Jobserver

    js = Jobserver(context=method, slots=SLOTS)
    js.submit(noop).result()
    start = time.perf_counter()
    for _ in js.map(noop, [()] * n):
        pass
    return n / (time.perf_counter() - start)


def tp_jobserver_executor(method: str, n: int) -> float:
    from jobserver_executor import JobserverExecutor

    with JobserverExecutor(SLOTS, mp_context=_ctx(method)) as ex:
        ex.submit(noop).result()
        start = time.perf_counter()
        futures = [ex.submit(noop) for _ in range(n)]
        for future in futures:
            future.result()
        return n / (time.perf_counter() - start)


def tp_jobserver_executor_reuse(method: str, n: int) -> float:
    from jobserver_executor import JobserverExecutor

    ex = JobserverExecutor(SLOTS, mp_context=_ctx(method), reuse_workers=True)
    with ex:
        for f in [ex.submit(noop) for _ in range(SLOTS)]:
            f.result()  # workers up before the timing, as for the pools
        start = time.perf_counter()
        futures = [ex.submit(noop) for _ in range(n)]
        for future in futures:
            future.result()
        return n / (time.perf_counter() - start)


def tp_process_pool(method: str, n: int) -> float:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(SLOTS, mp_context=_ctx(method)) as ex:
        for f in [ex.submit(noop) for _ in range(SLOTS)]:
            f.result()  # workers up before the timing
        start = time.perf_counter()
        futures = [ex.submit(noop) for _ in range(n)]
        for future in futures:
            future.result()
        return n / (time.perf_counter() - start)


def tp_mp_pool(method: str, n: int) -> float:
    with _ctx(method).Pool(SLOTS) as pool:
        pool.apply(noop)
        start = time.perf_counter()
        results = [pool.apply_async(noop) for _ in range(n)]
        for r in results:
            r.get()
        return n / (time.perf_counter() - start)


def tp_loky(method: str, n: int) -> float:
    from loky import ProcessPoolExecutor as LokyPool
    from loky.backend.context import get_context

    # loky's own "loky" context is its spawn; it refuses plain fork.
    name = {"spawn": "loky", "forkserver": "forkserver"}.get(method)
    if name is None:
        raise RuntimeError("loky does not offer the fork start method")
    ex = LokyPool(SLOTS, context=get_context(name))
    try:
        for f in [ex.submit(noop) for _ in range(SLOTS)]:
            f.result()
        start = time.perf_counter()
        futures = [ex.submit(noop) for _ in range(n)]
        for future in futures:
            future.result()
        return n / (time.perf_counter() - start)
    finally:
        ex.shutdown(wait=True)


def tp_pebble(method: str, n: int) -> float:
    from pebble import ProcessPool

    with ProcessPool(max_workers=SLOTS, context=_ctx(method)) as pool:
        pool.schedule(noop).result()
        start = time.perf_counter()
        futures = [pool.schedule(noop) for _ in range(n)]
        for future in futures:
            future.result()
        return n / (time.perf_counter() - start)


def tp_raw_fork(method: str, n: int) -> float:
    if method != "fork":
        raise RuntimeError("the raw loop is fork only")
    return _raw_fork_loop(n)


def tp_raw_fork_imported(method: str, n: int) -> float:
    """The raw loop in a process that imported jobserver (and made one
    Jobserver), as the jobserver contenders' processes did: what is left
    of the gap to the raw loop is the work jobserver does per task."""
    if method != "fork":
        raise RuntimeError("the raw loop is fork only")
    from jobserver import Jobserver

    js = Jobserver(context=method, slots=SLOTS)
    js.submit(noop).result()
    return _raw_fork_loop(n)


def _raw_fork_loop(n: int) -> float:
    start = time.perf_counter()
    running = 0
    for _ in range(n):
        if running == SLOTS:
            os.waitpid(-1, 0)
            running -= 1
        if os.fork() == 0:
            os._exit(0)
        running += 1
    while running:
        os.waitpid(-1, 0)
        running -= 1
    return n / (time.perf_counter() - start)


def tp_pipe_loop(method: str, n: int) -> float:
    """The least any fresh-process library can do in Python: one function,
    a result pipe per task, fork, the child pickles the return value and
    writes it, the parent waits in epoll, reads to end-of-file and reaps.
    No Future objects, no slot pool, no signal deferral, no stream flush."""
    if method != "fork":
        raise RuntimeError("the pipe loop is fork only")
    import pickle
    import select

    epoll = select.epoll()
    live: dict[int, list[Any]] = {}
    submitted = done = 0
    start = time.perf_counter()
    while done < n:
        while submitted < n and len(live) < SLOTS:
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                os.write(write_fd, pickle.dumps((0, noop())))
                os._exit(0)
            os.close(write_fd)
            epoll.register(read_fd, select.EPOLLIN)
            live[read_fd] = [pid, b""]
            submitted += 1
        for fd, _ in epoll.poll():
            entry = live[fd]
            chunk = os.read(fd, 65536)
            if chunk:
                entry[1] += chunk
                continue
            epoll.unregister(fd)
            os.close(fd)
            os.waitpid(entry[0], 0)
            pickle.loads(entry[1])
            del live[fd]
            done += 1
    rate = n / (time.perf_counter() - start)
    epoll.close()
    return rate


def tp_pidfd_loop(method: str, n: int) -> float:
    """The pipe loop without the pipe: the child leaves its pickled result in
    a shared memory area (one page per slot) and exits; the parent waits on a
    pidfd in epoll, reaps and reads the area.  One descriptor and two reads
    fewer per task than the pipe loop: how much a design without a result
    pipe could hope to gain."""
    if method != "fork":
        raise RuntimeError("the pidfd loop is fork only")
    import mmap
    import pickle
    import select

    page = mmap.PAGESIZE
    area = mmap.mmap(-1, page * SLOTS)
    epoll = select.epoll()
    live: dict[int, tuple[int, int]] = {}
    free = list(range(SLOTS))
    submitted = done = 0
    start = time.perf_counter()
    while done < n:
        while submitted < n and free:
            offset = free.pop() * page
            pid = os.fork()
            if pid == 0:
                data = pickle.dumps((0, noop()))
                area[offset + 4 : offset + 4 + len(data)] = data
                area[offset : offset + 4] = len(data).to_bytes(4, "little")
                os._exit(0)
            pidfd = os.pidfd_open(pid)
            epoll.register(pidfd, select.EPOLLIN)
            live[pidfd] = (pid, offset)
            submitted += 1
        for pidfd, _ in epoll.poll():
            pid, offset = live.pop(pidfd)
            epoll.unregister(pidfd)
            os.close(pidfd)
            os.waitpid(pid, 0)
            size = int.from_bytes(area[offset : offset + 4], "little")
            pickle.loads(area[offset + 4 : offset + 4 + size])
            free.append(offset // page)
            done += 1
    rate = n / (time.perf_counter() - start)
    epoll.close()
    area.close()
    return rate


def tp_lean_launcher(method: str, n: int) -> float:
    """A prototype of the common fork path cut to the bone, with what SPEC 2
    and 3 need there: a token read from a private pool pipe, every signal
    blocked around take, fork and tracking, the standard streams flushed, a
    result pipe per task in epoll, a Future-like object with its own lock,
    reaping and the token written back.  Left out: callbacks, time limits,
    gates, lost-result reporting, results that need decoding or more than one
    read, and the pidfd wait for a worker not yet reapable at end-of-file
    (this loop polls again).  docs/performance.md, "A lean prototype"."""
    if method != "fork":
        raise RuntimeError("the lean launcher is fork only")
    import select
    import signal
    from _signal import pthread_sigmask as sigmask  # type: ignore[import-not-found]
    from _thread import allocate_lock

    block_all = frozenset(
        int(s)
        for s in signal.valid_signals()
        if s not in (signal.SIGKILL, signal.SIGSTOP)
    )
    nothing: frozenset[int] = frozenset()
    from jobserver._wire import NONE_FRAME as none_frame  # what its workers write

    class LeanFuture:
        __slots__ = ("data", "done", "fd", "lock", "pid")

    pool_r, pool_w = os.pipe()
    os.set_blocking(pool_r, False)
    os.write(pool_w, b"+" * SLOTS)
    ledger: list[bytes] = []
    epoll = select.epoll()
    owners: dict[int, LeanFuture] = {}

    def reclaim() -> None:
        for fd, _ in epoll.poll(0, 32):
            future = owners.get(fd)
            if future is None:
                continue
            with future.lock:
                saved = sigmask(signal.SIG_BLOCK, nothing)
                sigmask(signal.SIG_BLOCK, block_all)
                try:
                    try:
                        while True:
                            chunk = os.read(fd, 65536)
                            if not chunk:
                                break
                            future.data = chunk
                    except BlockingIOError:
                        continue
                    if not os.waitpid(future.pid, os.WNOHANG)[0]:
                        continue
                    epoll.unregister(fd)
                    del owners[fd]
                    os.close(fd)
                    os.write(pool_w, ledger.pop())
                    future.done = True
                finally:
                    sigmask(signal.SIG_SETMASK, saved)

    def submit(fn: Callable[[], Any]) -> LeanFuture:
        reclaim()
        while True:
            saved = sigmask(signal.SIG_BLOCK, nothing)
            sigmask(signal.SIG_BLOCK, block_all)
            try:
                try:
                    ledger.append(os.read(pool_r, 1))
                except BlockingIOError:
                    pass
                else:
                    read_fd, write_fd = os.pipe()
                    for stream in (sys.stdout, sys.stderr):
                        if stream is not None:
                            stream.flush()
                    pid = os.fork()
                    if pid == 0:
                        sigmask(signal.SIG_SETMASK, saved)
                        os.close(read_fd)
                        fn()
                        os.write(write_fd, none_frame)
                        os._exit(0)
                    os.close(write_fd)
                    os.set_blocking(read_fd, False)
                    future = LeanFuture()
                    future.pid, future.fd, future.done = pid, read_fd, False
                    future.lock, future.data = allocate_lock(), None
                    epoll.register(read_fd, select.EPOLLIN)
                    owners[read_fd] = future
                    return future
            finally:
                sigmask(signal.SIG_SETMASK, saved)
            poller = select.poll()
            poller.register(pool_r, select.POLLIN)
            poller.register(epoll.fileno(), select.POLLIN)
            poller.poll()
            reclaim()

    def result(future: LeanFuture) -> None:
        while not future.done:
            poller = select.poll()
            poller.register(epoll.fileno(), select.POLLIN)
            poller.poll()
            reclaim()

    result(submit(noop))
    start = time.perf_counter()
    futures = [submit(noop) for _ in range(n)]
    for future in futures:
        result(future)
    rate = n / (time.perf_counter() - start)
    epoll.close()
    os.close(pool_r)
    os.close(pool_w)
    return rate


THROUGHPUT: dict[str, Callable[[str, int], float]] = {
    "jobserver.submit": tp_jobserver_submit,
    "jobserver.map": tp_jobserver_map,
    "JobserverExecutor": tp_jobserver_executor,
    "JobserverExecutor(reuse)": tp_jobserver_executor_reuse,
    "ProcessPoolExecutor": tp_process_pool,
    "multiprocessing.Pool": tp_mp_pool,
    "loky": tp_loky,
    "pebble": tp_pebble,
    "raw fork loop": tp_raw_fork,
    "raw loop+jobserver": tp_raw_fork_imported,
    "pipe loop (floor)": tp_pipe_loop,
    "pidfd loop (no pipe)": tp_pidfd_loop,
    "lean launcher (prototype)": tp_lean_launcher,
}


def one_throughput(name: str, method: str, n: int) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    rate = THROUGHPUT[name](method, n)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "rate": rate,
        "minflt_per_task": (after.ru_minflt - before.ru_minflt) / n,
        "cpu_us_per_task": (
            (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            / n
            * 1e6
        ),
    }


# --- nested divide and conquer -----------------------------------------------


def one_nested(method: str, n: int) -> dict[str, Any]:
    from jobserver import Jobserver

    depth = 2
    start = time.perf_counter()
    busy(n)
    serial = time.perf_counter() - start
    js = Jobserver(context=method, slots=SLOTS)
    js.submit(noop).result()
    start = time.perf_counter()
    js.submit(split_sum, args=(js, depth, n), consume=0).result()
    nested = time.perf_counter() - start
    # The machine's own ceiling, right after: the same work as two plain
    # forked halves, no jobserver at all.
    start = time.perf_counter()
    pids = []
    for _ in range(SLOTS):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            busy(n // SLOTS)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    plain = time.perf_counter() - start
    return {
        "serial_s": serial,
        "nested_s": nested,
        "speedup": serial / nested,
        "ceiling": serial / plain,
    }


# --- latency, memory and fds with outstanding Futures -------------------------


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def one_latency(method: str, outstanding: int, samples: int) -> dict[str, Any]:
    from jobserver import Jobserver

    js = Jobserver(context=method, slots=outstanding + SLOTS)
    js.submit(noop).result()
    read_fd, write_fd = os.pipe()
    rss0, fds0 = _rss_kib(), _fd_count()
    held = [js.submit(block, args=(read_fd, write_fd)) for _ in range(outstanding)]
    js.reclaim_resources()
    rss1, fds1 = _rss_kib(), _fd_count()
    reclaim = []
    for _ in range(samples):
        start = time.perf_counter()
        js.reclaim_resources()
        reclaim.append(time.perf_counter() - start)
    submit = []
    for _ in range(samples):
        start = time.perf_counter()
        future = js.submit(noop)
        submit.append(time.perf_counter() - start)
        future.result()
    os.close(write_fd)
    for future in held:
        future.result()
    os.close(read_fd)
    return {
        "reclaim_us": statistics.median(reclaim) * 1e6,
        "submit_us": statistics.median(submit) * 1e6,
        "rss_kib_per_future": (rss1 - rss0) / outstanding,
        "fds_per_future": (fds1 - fds0) / outstanding,
    }


# --- a large result -------------------------------------------------------------


def one_bigresult(method: str, size: int) -> dict[str, Any]:
    from jobserver import Jobserver

    js = Jobserver(context=method, slots=SLOTS)
    js.submit(noop).result()
    start = time.perf_counter()
    value = js.submit(big_result, args=(size,)).result()
    ours = time.perf_counter() - start
    assert len(value) == size
    del value
    # The raw baseline: a forked child makes the same bytes and writes them
    # down a default-sized pipe; the parent reads into a preallocated buffer.
    start = time.perf_counter()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        data = memoryview(bytes(size))
        while data:
            data = data[os.write(write_fd, data) :]
        os._exit(0)
    os.close(write_fd)
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        count = os.readv(read_fd, [view[filled:]])
        if not count:
            break
        filled += count
    os.close(read_fd)
    os.waitpid(pid, 0)
    raw = time.perf_counter() - start
    return {
        "ours_mb_s": size / ours / 1e6,
        "raw_mb_s": size / raw / 1e6,
        "ratio": raw / ours,
    }


# --- the driver -------------------------------------------------------------------


def run_one(argv: list[str]) -> Any:
    """Run one measurement in a fresh interpreter and return its JSON."""
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--one", *argv],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--methods", default="fork,forkserver,spawn")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-results"))
    parser.add_argument("--chart", default=None, help="PNG path (default: in --out)")
    parser.add_argument("--only", default="throughput,nested,latency,bigresult")
    parser.add_argument(
        "--markdown", action="store_true", help="also print Markdown tables"
    )
    parser.add_argument("--one", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one is not None:
        kind, method, *rest = args.one
        if kind == "throughput":
            result = one_throughput(rest[0], method, int(rest[1]))
        elif kind == "nested":
            result = one_nested(method, int(rest[0]))
        elif kind == "latency":
            result = one_latency(method, int(rest[0]), int(rest[1]))
        else:
            result = one_bigresult(method, int(rest[0]))
        print(json.dumps(result))
        return 0

    quick = args.quick
    repeats = args.repeats or (3 if quick else 5)
    methods = [m for m in args.methods.split(",") if m]
    only = set(args.only.split(","))
    # Fresh-process contenders (and the raw loop) run this many tasks; the
    # pools, which reuse their workers, run more for a measurable interval.
    fresh_tasks = 300 if quick else 1500
    peer_tasks = 500 if quick else 4000
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "slots": SLOTS,
        },
        "quick": quick,
        "repeats": repeats,
        "throughput": {},
        "nested": {},
        "latency": {},
        "bigresult": {},
    }

    if "throughput" in only:
        for method in methods:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in THROUGHPUT}
            for _ in range(repeats):
                for name in THROUGHPUT:
                    fork_only = name.startswith(("raw", "pipe", "pidfd", "lean"))
                    if fork_only and method != "fork":
                        continue
                    fresh = fork_only or name.startswith(("jobserver", "Jobserver"))
                    fresh = fresh and not name.endswith("(reuse)")
                    n = fresh_tasks if fresh else peer_tasks
                    runs[name].append(run_one(["throughput", method, name, str(n)]))
            table = {}
            for name, results in runs.items():
                if not results:
                    continue
                errors = [r["error"] for r in results if "error" in r]
                table[name] = {
                    "rate": median_of(results, "rate"),
                    "minflt_per_task": median_of(results, "minflt_per_task"),
                    "cpu_us_per_task": median_of(results, "cpu_us_per_task"),
                    "error": errors[0] if len(errors) == len(results) else None,
                }
            report["throughput"][method] = table
            print_throughput(method, table)

    if "nested" in only:
        n = 12_000_000 if quick else 30_000_000
        for method in methods if not quick else methods[:1]:
            runs_n = [run_one(["nested", method, str(n)]) for _ in range(repeats)]
            speedup = median_of(runs_n, "speedup")
            ceiling = median_of(runs_n, "ceiling")
            report["nested"][method] = {
                "speedup": speedup,
                "serial_s": median_of(runs_n, "serial_s"),
                "nested_s": median_of(runs_n, "nested_s"),
                "ceiling": ceiling,
            }
            print(
                f"nested divide and conquer, {method}: {fmt(speedup, 2)}x serial"
                f" (two plain forked halves: {fmt(ceiling, 2)}x)"
            )

    if "latency" in only:
        counts = [1, 10, 100] if quick else [1, 10, 100, 1000]
        method = methods[0]
        for count in counts:
            runs_l = [
                run_one(["latency", method, str(count), "50"]) for _ in range(repeats)
            ]
            report["latency"][str(count)] = {
                key: median_of(runs_l, key)
                for key in (
                    "reclaim_us",
                    "submit_us",
                    "rss_kib_per_future",
                    "fds_per_future",
                )
            }
        print_latency(method, report["latency"])

    if "bigresult" in only:
        size = 100 * 1000 * 1000
        for method in methods[:1]:
            runs_b = [run_one(["bigresult", method, str(size)]) for _ in range(repeats)]
            report["bigresult"][method] = {
                key: median_of(runs_b, key)
                for key in ("ours_mb_s", "raw_mb_s", "ratio")
            }
            b = report["bigresult"][method]
            print(
                f"100 MB result, {method}: {fmt(b['ours_mb_s'], 0)} MB/s vs raw pipe "
                f"{fmt(b['raw_mb_s'], 0)} MB/s = {fmt(b['ratio'], 2)}x"
            )

    report["targets"] = targets(report)
    print_targets(report["targets"])
    if args.markdown:
        print(markdown(report))
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "bench.json")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {json_path}")
    chart = args.chart or os.path.join(args.out, "bench.png")
    if render_chart(report, chart):
        print(f"wrote {chart}")
    return 0


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_throughput(method: str, table: dict[str, Any]) -> None:
    print(f"\ntiny-task throughput, {method}, {SLOTS} slots (tasks/s, median)")
    print(f"  {'contender':<27}{'tasks/s':>10}{'faults/task':>13}{'cpu us/task':>13}")
    for name, row in table.items():
        if row["error"]:
            print(f"  {name:<27}{'n/a':>10}  ({row['error'][:60]})")
            continue
        print(
            f"  {name:<27}{fmt(row['rate'], 0):>10}"
            f"{fmt(row['minflt_per_task'], 0):>13}{fmt(row['cpu_us_per_task'], 0):>13}"
        )


def print_latency(method: str, table: dict[str, Any]) -> None:
    print(f"\nwith N outstanding Futures, {method} (median)")
    print(
        f"  {'N':>6}{'reclaim us':>12}{'submit us':>12}{'KiB/Future':>12}"
        f"{'fds/Future':>12}"
    )
    for count, row in table.items():
        print(
            f"  {count:>6}{fmt(row['reclaim_us'], 1):>12}"
            f"{fmt(row['submit_us'], 0):>12}"
            f"{fmt(row['rss_kib_per_future'], 1):>12}"
            f"{fmt(row['fds_per_future'], 2):>12}"
        )


def _rate(report: dict[str, Any], method: str, name: str) -> float | None:
    row = report["throughput"].get(method, {}).get(name)
    return None if row is None else row["rate"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(what: str, value: float | None, goal: float, higher: bool = True) -> None:
        ok = None
        if value is not None:
            ok = value >= goal if higher else value <= goal
        rows.append({"target": what, "value": value, "goal": goal, "met": ok})

    fork = _rate(report, "fork", "jobserver.submit")
    add(
        "fork submit / raw fork loop",
        _ratio(fork, _rate(report, "fork", "raw fork loop")),
        0.8,
    )
    # Not targets: the raw loop in a process of the same size (jobserver
    # imported), which isolates the per-task overhead, and the least a Python
    # library with a result pipe per task can do (the pipe loop) against the
    # raw loop, which shows how much of the gap any such library pays.
    raw = _rate(report, "fork", "raw fork loop")
    floor = _rate(report, "fork", "pipe loop (floor)")
    for what, num, den in (
        ("(fork submit / raw loop, jobserver imported)", fork, None),
        ("(pipe loop, the Python floor / raw fork loop)", floor, raw),
        ("(fork submit / pipe loop)", fork, floor),
        (
            "(pidfd loop, no result pipe / pipe loop)",
            _rate(report, "fork", "pidfd loop (no pipe)"),
            floor,
        ),
        (
            "(lean launcher prototype / raw fork loop)",
            _rate(report, "fork", "lean launcher (prototype)"),
            raw,
        ),
    ):
        if den is None:
            den = _rate(report, "fork", "raw loop+jobserver")
        if num is not None and den is not None:
            rows.append(
                {
                    "target": what,
                    "value": _ratio(num, den),
                    "goal": 0.8,
                    "met": None,
                    "info": True,
                }
            )
    for method in ("forkserver", "spawn"):
        add(
            f"{method} submit / fork submit",
            _ratio(_rate(report, method, "jobserver.submit"), fork),
            0.5,
        )
    for method in report["throughput"]:
        for name in ("JobserverExecutor", "JobserverExecutor(reuse)"):
            add(
                f"{name} / ProcessPoolExecutor ({method})",
                _ratio(
                    _rate(report, method, name),
                    _rate(report, method, "ProcessPoolExecutor"),
                ),
                1.0,
            )
    for method, row in report["nested"].items():
        add(f"nested speedup vs serial ({method})", row["speedup"], 1.8)
    for method, row in report["nested"].items():
        # Not a target: what two plain forked halves reach in the same runs
        # (the machine's own ceiling), and the nested speedup against it.
        for what, value in (
            (f"(two plain forked halves vs serial, {method} runs)", row["ceiling"]),
            (
                f"(nested speedup / plain halves, {method})",
                _ratio(row["speedup"], row["ceiling"]),
            ),
        ):
            rows.append(
                {"target": what, "value": value, "goal": 1.8, "met": None, "info": True}
            )
    lat = report["latency"]
    top = max(lat, key=int) if lat else None
    if top is not None and "1" in lat:
        for key in ("reclaim_us", "submit_us"):
            add(
                f"{key.split('_')[0]} latency at {top} / at 1 outstanding",
                _ratio(lat[top][key], lat["1"][key]),
                1.5,
                higher=False,
            )
    for method, row in report["bigresult"].items():
        add(f"100 MB result / raw pipe ({method})", row["ratio"], 0.8)
    return rows


def print_targets(rows: list[dict[str, Any]]) -> None:
    print("\ntargets (ratios from this run)")
    for row in rows:
        mark = {True: "met", False: "MISSED", None: "n/a"}[row["met"]]
        if row.get("info"):
            mark = "(for comparison)"
        print(
            f"  {row['target']:<50}{fmt(row['value'], 2):>8}  goal {row['goal']:<5}"
            f"{mark}"
        )


def markdown(report: dict[str, Any]) -> str:
    """The throughput and target tables as Markdown (for docs/performance.md)."""
    methods = list(report["throughput"])
    lines = [
        "| tasks/s | " + " | ".join(methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for name in THROUGHPUT:
        cells = [fmt(_rate(report, m, name), 0) for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | goal | |", "|---|---:|---:|---|"]
    for row in report["targets"]:
        mark = {True: "met", False: "missed", None: "n/a"}[row["met"]]
        if row.get("info"):
            mark = "for comparison"
        sign = ">=" if "latency" not in row["target"] else "<="
        lines.append(
            f"| {row['target']} | {fmt(row['value'], 2)} | {sign} {row['goal']} "
            f"| {mark} |"
        )
    return "\n".join(lines)


def render_chart(report: dict[str, Any], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        return False
    methods = list(report["throughput"])
    if not methods:
        return False
    names = list(THROUGHPUT)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [_rate(report, method, name) or 0 for name in names]
        positions = [x + i * width for x in range(len(names))]
        ax.bar(positions, values, width, label=method)
    ax.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(names))])
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("tiny tasks per second (log)")
    ax.set_title(
        f"Tiny-task throughput, {SLOTS} slots "
        "(jobserver: a fresh process per task; pools reuse workers)"
    )
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return True


if __name__ == "__main__":
    raise SystemExit(main())

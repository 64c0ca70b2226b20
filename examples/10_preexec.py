"""10 - Preparing each worker with ``replace_preexec``.

``replace_preexec(fn, *args, **kwargs)`` returns a sibling handle (same
slots) whose workers call ``fn(*args, **kwargs)`` just before the task, in the
worker process.  What ``fn`` returns decides what happens next:

* ``None``: ``fn`` was a plain setup step.  Here it tightens the umask, so
  the files the task creates are private, while this process keeps its own
  umask.
* anything else: it is used as a context manager around the task.  Here a
  ``contextlib.contextmanager`` moves the worker into a scratch directory and,
  on the way out, records how the task ended, which shows that its exit runs
  after the task, also when the task raises.

A setup function that returns something by accident is a trap:
``os.umask`` returns the previous mask, an ``int``, which is then used as a
context manager and fails the task.  Errors in the preexec step reach
``result()`` just like errors in the task.

With the spawn and forkserver start methods ``fn`` and its arguments are
pickled, so define them at module level, as here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Iterator

from jobserver import Jobserver

log = logging.getLogger("tour.preexec")


def restrict_umask(mask: int) -> None:
    """Plain setup: returns None, so nothing wraps the task."""
    os.umask(mask)


@contextlib.contextmanager
def scratch_directory(root: str) -> Iterator[str]:
    """Run the task inside a fresh directory; note how the task ended."""
    path = tempfile.mkdtemp(prefix=f"worker-{os.getpid()}-", dir=root)
    previous = os.getcwd()
    os.chdir(path)
    outcome = "returned"
    try:
        yield path
    except BaseException as exc:
        outcome = f"raised {type(exc).__name__}"
        raise
    finally:
        os.chdir(previous)
        with open(os.path.join(path, "outcome.txt"), "w") as f:
            f.write(outcome)


def create_file(path: str) -> int:
    """Create ``path`` and return its permission bits."""
    with open(path, "w") as f:
        f.write("data\n")
    return stat.S_IMODE(os.stat(path).st_mode)


def write_here(name: str, fail: bool = False) -> str:
    """Write ``name`` in the current directory; return that directory."""
    with open(name, "w") as f:
        f.write("made inside the scratch directory\n")
    if fail:
        raise ValueError("the task failed after writing")
    return os.getcwd()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def outcome_in(directory: str) -> str:
    with open(os.path.join(directory, "outcome.txt")) as f:
        return f.read()


def main() -> None:
    parent_mask = current_umask()
    with tempfile.TemporaryDirectory() as root, Jobserver(slots=2) as js:
        # 1. A plain callable.
        private = js.replace_preexec(restrict_umask, 0o077)
        mode = private(create_file, os.path.join(root, "private.txt")).result()
        assert mode == 0o600, oct(mode)
        usual = js(create_file, os.path.join(root, "usual.txt")).result()
        assert usual == 0o666 & ~parent_mask, oct(usual)
        assert current_umask() == parent_mask, "the preexec ran in this process"
        log.info("umask preexec: mode %o, without it %o", mode, usual)

        # 2. A context manager around the task.
        sandboxed = js.replace_preexec(scratch_directory, root)
        where = sandboxed(write_here, "report.txt").result()
        assert os.path.dirname(where) == os.path.realpath(root), where
        assert os.path.exists(os.path.join(where, "report.txt"))
        assert outcome_in(where) == "returned", outcome_in(where)
        log.info("context manager preexec: task ran in %s, exit saw it return", where)

        # ... whose exit also runs when the task raises.
        failing = sandboxed(write_here, "partial.txt", fail=True)
        try:
            failing.result()
        except ValueError as exc:
            log.info("the task's error reached result(): %s", exc)
        else:
            raise AssertionError("the failing task returned")
        [scratch] = [
            os.path.join(root, name)
            for name in os.listdir(root)
            if os.path.exists(os.path.join(root, name, "partial.txt"))
        ]
        assert outcome_in(scratch) == "raised ValueError", outcome_in(scratch)
        log.info("its exit ran anyway and recorded: %s", outcome_in(scratch))

        # 3. The trap: os.umask returns an int, which cannot wrap the task.
        trap = js.replace_preexec(os.umask, 0o077)
        try:
            trap(create_file, os.path.join(root, "trap.txt")).result()
        except (TypeError, AttributeError) as exc:
            log.info("preexec returning an int failed the task: %r", exc)
        else:
            raise AssertionError("an int was accepted as a context manager")
    log.info("all preexec checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

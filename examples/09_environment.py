"""09 - Per-handle environment variables with ``revise_env``.

Workers start with this process's environment.  ``revise_env(changes)``
returns a sibling handle (sharing the same slots) whose workers apply
``changes`` to ``os.environ`` before the task runs:

* a string value sets the variable, ``None`` removes it;
* ``changes`` may be a dict or a sequence of ``(key, value)`` pairs;
* revising a revised handle merges: later values win, the rest is kept;
* neither this process's environment nor the original handle change;
* mistakes that ``os.environ[key] = value`` would refuse (an empty name,
  ``=`` or NUL in a name, NUL in a value, a value that is not a string) are
  rejected right away by ``revise_env``, not later inside a worker.
"""

from __future__ import annotations

import logging
import os

from jobserver import Jobserver

log = logging.getLogger("tour.environment")

KEYS = ("TOUR_INHERITED", "TOUR_STAGE", "TOUR_VERBOSE")


def snapshot() -> dict[str, str | None]:
    """The worker's view of the variables this example plays with."""
    return {key: os.environ.get(key) for key in KEYS}


def main() -> None:
    os.environ["TOUR_INHERITED"] = "from the parent"
    for key in KEYS[1:]:
        os.environ.pop(key, None)

    with Jobserver(slots=2) as js:
        plain = js(snapshot).result()
        assert plain == {
            "TOUR_INHERITED": "from the parent",
            "TOUR_STAGE": None,
            "TOUR_VERBOSE": None,
        }, plain
        log.info("plain handle:          %s", plain)

        build = js.revise_env({"TOUR_STAGE": "build"})
        seen = build(snapshot).result()
        assert seen["TOUR_STAGE"] == "build", seen
        assert seen["TOUR_INHERITED"] == "from the parent", seen
        log.info("revise_env(set):       %s", seen)

        # Pairs work too, and a second revision merges onto the first.
        test = build.revise_env([("TOUR_STAGE", "test"), ("TOUR_VERBOSE", "1")])
        seen = test(snapshot).result()
        assert seen == {
            "TOUR_INHERITED": "from the parent",
            "TOUR_STAGE": "test",
            "TOUR_VERBOSE": "1",
        }, seen
        log.info("merged revision:       %s", seen)

        # None unsets, even a variable the worker would otherwise inherit.
        isolated = test.revise_env({"TOUR_INHERITED": None, "TOUR_VERBOSE": None})
        seen = isolated(snapshot).result()
        assert seen == {
            "TOUR_INHERITED": None,
            "TOUR_STAGE": "test",
            "TOUR_VERBOSE": None,
        }, seen
        log.info("revise_env(unset):     %s", seen)

        # Nothing leaked back into this process or into the earlier handles.
        assert os.environ.get("TOUR_STAGE") is None
        assert os.environ["TOUR_INHERITED"] == "from the parent"
        assert js(snapshot).result() == plain
        assert build(snapshot).result()["TOUR_VERBOSE"] is None
        log.info("parent environment and earlier handles are unchanged")

        bad_changes: list[dict[str, object]] = [
            {"TOUR=STAGE": "x"},
            {"": "x"},
            {"TOUR_STAGE": "nul\0byte"},
            {"TOUR_STAGE": 1},
        ]
        for bad in bad_changes:
            try:
                js.revise_env(bad)
            except (TypeError, ValueError) as exc:
                log.info("rejected %r: %s: %s", bad, type(exc).__name__, exc)
            else:
                raise AssertionError(f"revise_env accepted {bad!r}")
    log.info("all environment checks passed")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(message)s"
    )
    logging.captureWarnings(True)
    main()

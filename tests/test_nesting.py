"""A Jobserver passed into work shares the same slots, on every start method."""

from __future__ import annotations

import pytest
import tasks
from conftest import assert_slots_conserved
from jobserver import Jobserver


@pytest.mark.parametrize(("slots", "depth"), [(1, 0), (2, 1), (4, 3)])
def test_nested_depth_is_bounded_by_the_shared_slots(
    method: str, slots: int, depth: int
) -> None:
    # The top-level submission takes one slot; each nested level takes another
    # with timeout=0, so N slots reach depth N-1 and the next level is Blocked.
    with Jobserver(context=method, slots=slots) as js:
        assert js.submit(tasks.nest, args=(js, 10)).result(timeout=120) == depth
        assert_slots_conserved(js, slots)


def test_three_levels_deep(method: str) -> None:
    with Jobserver(context=method, slots=3) as js:
        assert js.submit(tasks.nest, args=(js, 2)).result(timeout=120) == 2
        assert_slots_conserved(js, 3)


def test_submit_or_run_inline_never_deadlocks(method: str) -> None:
    # A binary tree of depth 3 has 15 nodes; every node counts itself once
    # whether it ran in a worker or inline, whatever the slots allowed.
    with Jobserver(context=method, slots=2) as js:
        assert js.submit(tasks.nest_or_inline, args=(js, 3)).result(timeout=300) == 15
        assert_slots_conserved(js, 2)


def test_sibling_handles_nest_too() -> None:
    with Jobserver(context="fork", slots=3) as js:
        sibling = js.revise_env({"NESTED": "yes"})
        assert js.submit(tasks.nest, args=(sibling, 10)).result() == 2
        assert_slots_conserved(js, 3)


def test_nested_work_left_unwaited_is_waited_for_before_the_worker_exits() -> None:
    # The worker returns without waiting for its nested submission; the slot
    # that nested work holds must still come back.
    with Jobserver(context="fork", slots=2) as js:
        assert js.submit(fire_and_forget, args=(js,)).result() == "returned"
        assert_slots_conserved(js, 2)


def fire_and_forget(js: Jobserver) -> str:
    js.submit(tasks.sleep_then, args=(0.05,))
    return "returned"

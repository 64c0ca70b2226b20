"""Composition: several preexecs as the one ``replace_preexec`` takes."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

__all__ = ["PreexecChain", "chain_preexecs"]


class PreexecChain:
    """Preexec that runs several preexecs in order, as one.

    Each element is called with no arguments, first to last (use
    ``functools.partial`` to bind arguments).  An element that returns
    ``None`` was a plain callable; any other return value is entered as a
    context manager at once.  The managers are exited in reverse order when
    the task ends, and if an element fails, the managers already entered are
    exited (seeing the error) before it propagates; a setup error always
    propagates, so the task never runs half set up.  Picklable when its
    elements are; chains nest.
    """

    __slots__ = ("_preexecs",)

    def __init__(self, *preexecs: Callable[[], Any]) -> None:
        for index, fn in enumerate(preexecs):
            if not callable(fn):
                raise TypeError(
                    f"preexecs[{index}] must be callable, not {type(fn).__name__}"
                )
        self._preexecs: tuple[Callable[[], Any], ...] = preexecs

    @property
    def preexecs(self) -> tuple[Callable[[], Any], ...]:
        """The chained preexecs, in the order they run."""
        return self._preexecs

    def __call__(self) -> contextlib.ExitStack:
        """In the worker: run every element; return what undoes them."""
        stack = contextlib.ExitStack()
        try:
            for fn in self._preexecs:
                manager = fn()
                if manager is not None:
                    stack.enter_context(manager)
        except BaseException as exc:
            # Unwind what was entered; a setup error always propagates (the
            # task must not run half set up), even if a manager suppresses it.
            stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return stack

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._preexecs,))

    def __repr__(self) -> str:
        return f"PreexecChain({', '.join(map(repr, self._preexecs))})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PreexecChain):
            return NotImplemented
        return self._preexecs == other._preexecs

    def __hash__(self) -> int:
        return hash((PreexecChain, self._preexecs))


def chain_preexecs(*preexecs: Callable[[], Any]) -> PreexecChain:
    """One preexec running ``preexecs`` in order; managers exit in reverse.

    ``js.replace_preexec(chain_preexecs(ParentDeathSignal(), limits, lock))``
    """
    return PreexecChain(*preexecs)


def _rebuild(preexecs: tuple[Callable[[], Any], ...]) -> PreexecChain:
    obj = object.__new__(PreexecChain)
    obj._preexecs = preexecs
    return obj

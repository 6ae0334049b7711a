"""Per-solve evaluation counts, thread-safe.

Every network (or drift) evaluation calls :func:`count` once. :func:`sdediff.solve` opens a
:func:`counting` block, so :class:`~sdediff.solvers.Stats`, :class:`~sdediff.errors.SolverError` and
:class:`~sdediff.errors.NonFiniteError` report *this* solve's evaluations, not the model's lifetime count.
The active counters live in a :class:`contextvars.ContextVar`: each thread (and each asyncio task) has its
own, so four threads sampling with one model each see their own exact NFE. Nested solves (a likelihood
solve inside user code that counts) add to every enclosing counter.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

__all__ = ["EvalCounter", "count", "counting", "current_nfe"]


class EvalCounter:
    """The evaluations counted while a :func:`counting` block is open."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def __repr__(self) -> str:
        return f"EvalCounter(n={self.n})"


_ACTIVE: contextvars.ContextVar[tuple[EvalCounter, ...]] = contextvars.ContextVar("sdediff_counters", default=())


def count(k: int = 1) -> None:
    """Record ``k`` evaluations in every open :func:`counting` block of this thread."""
    for c in _ACTIVE.get():
        c.n += k


@contextlib.contextmanager
def counting() -> Iterator[EvalCounter]:
    """Count the evaluations made inside the block (in this thread only)."""
    c = EvalCounter()
    token = _ACTIVE.set((*_ACTIVE.get(), c))
    try:
        yield c
    finally:
        _ACTIVE.reset(token)


def current_nfe() -> int | None:
    """The innermost open block's count so far (``None`` outside any block)."""
    active = _ACTIVE.get()
    return active[-1].n if active else None

"""Typed errors raised by solvers, and the non-finite policy.

A non-finite model output or state raises :class:`NonFiniteError` (``on_nonfinite="raise"``, the
default) or warns (``"warn"``); :func:`nonfinite_policy` sets the policy for a block and
:func:`report_nonfinite` applies it. The check costs one reduction (a sum) per tensor; the full
element-wise count only runs when that sum is not finite.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from .counting import current_nfe

__all__ = ["NonFiniteError", "SolverError", "is_finite", "nonfinite_policy", "report_nonfinite"]


class SolverError(RuntimeError):
    """An integration could not finish (step-size underflow, too many steps, ...).

    Attributes give where it stopped: ``t``, ``dt`` and ``nfe`` (the evaluations of *this* solve, when
    raised inside :func:`sdediff.solve`).
    """

    def __init__(self, message: str, *, t: float | None = None, dt: float | None = None,
                 nfe: int | None = None) -> None:
        super().__init__(message)
        self.t = t
        self.dt = dt
        self.nfe = nfe if nfe is not None else current_nfe()


class NonFiniteError(SolverError, FloatingPointError):
    """A model output or a solver state became NaN or inf.

    ``what`` names the tensor ("model output" or "state"), ``fraction`` the share of its
    non-finite entries, ``t`` the time, ``step`` the step index where known and ``nfe`` this
    solve's evaluations so far.
    """

    def __init__(self, what: str, *, t: float | None, fraction: float, step: int | None = None,
                 nfe: int | None = None) -> None:
        self.what = what
        self.fraction = fraction
        self.step = step
        where = f" at step {step}" if step is not None else ""
        super().__init__(
            f"{what} is not finite{where} (t={t!r}): {fraction:.1%} of its entries are NaN or inf. "
            "Check the network at this time, use a smaller step or a lower-order solver, or "
            "pass on_nonfinite='warn' to continue",
            t=t, nfe=nfe,
        )

    def at_step(self, step: int) -> NonFiniteError:
        """The same error with the step index filled in."""
        return NonFiniteError(self.what, t=self.t, fraction=self.fraction, step=step, nfe=self.nfe)


_NONFINITE: contextvars.ContextVar[str] = contextvars.ContextVar("sdediff_nonfinite", default="raise")


@contextlib.contextmanager
def nonfinite_policy(policy: str) -> Iterator[None]:
    """Within the block, a non-finite model output ``"raise"``\\ s :class:`NonFiniteError` or ``"warn"``\\ s."""
    if policy not in ("raise", "warn"):
        raise ValueError(f"unknown on_nonfinite {policy!r}; valid choices are: raise, warn")
    token = _NONFINITE.set(policy)
    try:
        yield
    finally:
        _NONFINITE.reset(token)


def is_finite(value: torch.Tensor) -> bool:
    """Whether every entry is finite, with one reduction in the common case (a finite sum)."""
    if value.numel() == 0:
        return True
    total = value.sum(dtype=torch.float32) if value.dtype in (torch.float16, torch.bfloat16) else value.sum()
    if math.isfinite(total.item()):
        return True
    return bool(torch.isfinite(value).all())  # the sum may overflow with finite entries


def report_nonfinite(what: str, value: torch.Tensor, t: Any) -> None:
    """Apply the current non-finite policy to ``value`` (a model output or a state)."""
    if is_finite(value):
        return
    frac = float((~torch.isfinite(value)).float().mean())
    if isinstance(t, torch.Tensor):
        tt = t.detach().flatten()
        tval = float(tt[0]) if tt.numel() else None
    else:
        tval = None if t is None else float(t)
    err = NonFiniteError(what, t=tval, fraction=frac)
    if _NONFINITE.get() == "warn":
        warnings.warn(str(err), RuntimeWarning, stacklevel=3)
        return
    raise err

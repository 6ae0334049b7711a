"""Typed errors raised by solvers."""

from __future__ import annotations


class SolverError(RuntimeError):
    """An integration could not finish (step-size underflow, too many steps, ...).

    Attributes give where it stopped: ``t``, ``dt`` and ``nfe``.
    """

    def __init__(self, message: str, *, t: float | None = None, dt: float | None = None,
                 nfe: int | None = None) -> None:
        super().__init__(message)
        self.t = t
        self.dt = dt
        self.nfe = nfe


class NonFiniteError(SolverError, FloatingPointError):
    """A model output or a solver state became NaN or inf.

    ``what`` names the tensor ("model output" or "state"), ``fraction`` the share of its
    non-finite entries, ``t`` the time and ``step`` the step index where known.
    """

    def __init__(self, what: str, *, t: float | None, fraction: float, step: int | None = None) -> None:
        self.what = what
        self.fraction = fraction
        self.step = step
        where = f" at step {step}" if step is not None else ""
        super().__init__(
            f"{what} is not finite{where} (t={t!r}): {fraction:.1%} of its entries are NaN or inf. "
            "Check the network at this time, use a smaller step or a lower-order solver, or "
            "pass on_nonfinite='warn' to continue",
            t=t,
        )

    def at_step(self, step: int) -> NonFiniteError:
        """The same error with the step index filled in."""
        return NonFiniteError(self.what, t=self.t, fraction=self.fraction, step=step)

r"""A torchdiffeq solver that differentiates by the adjoint method (Chen et al. 2018, *Neural ODEs*).

:class:`AdjointTorchdiffeqSolver` runs ``torchdiffeq.odeint_adjoint``: the forward solve keeps no
graph, and gradients come from a second, backward solve of the adjoint ODE
:math:`\dot a = -a^\top\partial_y F`, :math:`\dot a_\theta = -a^\top\partial_\theta F`, so memory does
not grow with the number of steps (the price is a second solve, and gradients that are exact for the
continuous ODE only up to the solver tolerance, not for the discrete forward solve).

It needs the parameters :math:`\theta` explicitly (``options["adjoint_params"]``, a tuple of
tensors): the system may hold a network inside objects that are not ``torch.nn.Module``\ s.
Everything else (landing on grid times, first-step guess, error translation) is as in
:class:`~sdediff.solvers.TorchdiffeqSolver`, whose helpers it reuses.
"""

from __future__ import annotations

from typing import Any

import torch

from ._utils import work_dtype
from .errors import SolverError
from .solvers.base import RunResult, SolveContext
from .solvers.external import TorchdiffeqSolver, _first_step, _ODEFunc

__all__ = ["AdjointTorchdiffeqSolver", "first_step"]


def first_step(dynamics: Any, x: torch.Tensor, ts: torch.Tensor, rtol: float, atol: float) -> float:
    """The adapter's first-step guess, evaluated without building a graph (the augmented drift keeps one
    in grad mode, which the guess does not need)."""
    with torch.no_grad():
        func = _ODEFunc(dynamics, x.dtype)
        return _first_step(func, ts, x.to(work_dtype(x)), SolveContext(rtol=rtol, atol=atol))


class AdjointTorchdiffeqSolver(TorchdiffeqSolver):
    """``torchdiffeq.odeint_adjoint`` with ``method``; ``ctx.options["adjoint_params"]`` holds :math:`\\theta`."""

    def __init__(self, method: str) -> None:
        super().__init__(method)
        self.name = f"torchdiffeq-adjoint:{method}"

    def run(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> RunResult:
        from torchdiffeq import odeint_adjoint

        options: dict[str, Any] = dict(ctx.options)
        params = tuple(options.pop("adjoint_params", ()))
        func = _ODEFunc(dynamics, x.dtype)
        wd = work_dtype(x)
        kwargs: dict[str, Any] = {}
        if self.adaptive:
            options.setdefault("max_num_steps", ctx.max_steps)
            options.setdefault("step_t", ts)  # never evaluate outside [ts[0], ts[-1]], backward pass too
            if "first_step" not in options:
                options["first_step"] = first_step(dynamics, x, ts, ctx.rtol, ctx.atol)
            kwargs = {"rtol": ctx.rtol, "atol": ctx.atol}
        elif ctx.steps is not None or ctx.dt is not None:
            span = float(abs(ts[-1] - ts[0]))
            options.setdefault("step_size", ctx.dt if ctx.dt is not None else span / ctx.steps)  # type: ignore[operator]
        try:
            ys = odeint_adjoint(func, x.to(wd), ts, method=self._method, options=options,
                                adjoint_params=params, **kwargs)
        except AssertionError as err:
            raise SolverError(f"{self.name} failed: {err}; loosen rtol/atol or raise max_steps",
                              nfe=dynamics.nfe) from None
        n_steps = func.accepted if self.adaptive else self._fixed_steps(ts, ctx)
        return RunResult(ys.to(x.dtype), n_steps=n_steps, n_rejected=func.rejected)

    def __repr__(self) -> str:
        return f"AdjointTorchdiffeqSolver({self._method!r})"

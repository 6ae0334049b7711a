r"""Explicit Runge–Kutta steps in ``t`` on any drift: ``euler``, ``midpoint``, ``rk4``.

These integrate ``dx/dt = dynamics.drift(t, x)`` (the probability-flow velocity
:math:`u = \dot\alpha\hat x_0 + \dot\sigma\hat\epsilon` for a model, or any ODE / force field)
with the classical tableaux (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.1):

* ``euler``: :math:`x_{i+1} = x_i + h\,u(t_i, x_i)` (order 1, 1 NFE/step);
* ``midpoint``: :math:`k_1 = u(t_i,x_i)`, :math:`x_{i+1} = x_i + h\,u(t_i+h/2, x_i+\tfrac h2 k_1)` (order 2, 2 NFE);
* ``rk4``: the classical four-stage method (order 4, 4 NFE).

``h = t_{i+1} - t_i`` (negative when sampling). A grid ending at ``t = 0`` ends with the denoise
step of :mod:`sdediff.solvers.diffusion` (diffusion models only).
"""

from __future__ import annotations

from typing import Any

import torch

from ..dynamics import ProbabilityFlow
from .base import FixedStepSolver, SolveContext
from .diffusion import STREAM_CHUNK, Schedule, Tail, linear_model, model_of, tail_for, work_dtype
from .exponential import lincomb

__all__ = ["RK_TABLEAUX", "ExplicitRK"]

# name -> (c, A, b, order)
RK_TABLEAUX: dict[str, tuple[tuple[float, ...], tuple[tuple[float, ...], ...], tuple[float, ...], int]] = {
    "euler": ((0.0,), ((),), (1.0,), 1),
    "midpoint": ((0.0, 0.5), ((), (0.5,)), (0.0, 1.0), 2),
    "rk4": ((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), 4),
}


class _Velocity:
    """The probability-flow velocity of a linear model at float times, with the per-solve schedule
    records (:class:`~sdediff.solvers.diffusion.Schedule`): no schedule evaluation at grid times."""

    def __init__(self, model: Any, ts: torch.Tensor, tail: Tail | None = None) -> None:
        self.model = model
        self.coef = Schedule.of(model.process, ts, data_end=False, model=model).coef
        self.tail = tail

    def prediction(self, i: int, t: float, x: torch.Tensor) -> Any:
        """The prediction at grid time ``i`` (``t``; a grid point the schedule moved, such as rectified
        flow's α = 0 end, is evaluated at ``t`` itself)."""
        c = self.coef[i]
        pred = self.model.predict_at(c if c.t == t else self.model.coefficients(t), x)
        if self.tail is not None and i == self.tail.index:
            self.tail.keep(float(c.sigma), float(c.alpha), pred)
        return pred

    def __call__(self, t: float, x: torch.Tensor) -> torch.Tensor:
        """The velocity at a time off the grid."""
        c = self.model.coefficients(t)
        return self.model.predict_at(c, x).velocity


class _Floats:
    """A float64 tensor read as python floats one index at a time (a huge grid, not copied to a list)."""

    def __init__(self, ts: torch.Tensor) -> None:
        self.ts = ts

    def __getitem__(self, i: int) -> float:
        return float(self.ts[i])


class ExplicitRK(FixedStepSolver):
    """An explicit Runge–Kutta method from :data:`RK_TABLEAUX`, stepping exactly on the grid."""

    def __init__(self, method: str) -> None:
        if method not in RK_TABLEAUX:
            raise ValueError(f"unknown Runge-Kutta method {method!r}; valid: {', '.join(RK_TABLEAUX)}")
        self.method = method
        self.name = method
        _, _, b, self.order = RK_TABLEAUX[method]
        self.nfe_per_step = len(b)

    def init(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> Any:
        model = model_of(dynamics)
        tl = ts.tolist() if len(ts) <= STREAM_CHUNK else _Floats(ts)  # a huge grid is read as it goes
        if isinstance(dynamics, ProbabilityFlow) and model is not None:
            fast = _Velocity(linear_model(dynamics, self.name, x.dtype)[0], ts, tail_for(ts, ctx))
            if fast.coef:  # the model has schedule records (the fast path)
                return fast, tl
        return None, tl

    def last_record(self, state: Any) -> Any:
        fast, _ = state
        return None if fast is None else fast.coef[-1]

    def end_point(self, state: Any) -> Any:
        fast, _ = state
        return None if fast is None or fast.tail is None else fast.tail.end_point()

    def step(self, dynamics: Any, i: int, ts: torch.Tensor, x: torch.Tensor, state: Any,
             ctx: SolveContext) -> tuple[torch.Tensor, Any]:
        fast, tl = state
        c, a, b, _ = RK_TABLEAUX[self.method]
        t0 = tl[i]
        h = tl[i + 1] - t0
        wd = work_dtype(x)
        xw = x if wd == x.dtype else x.to(wd)
        if fast is not None and len(b) == 1:  # Euler: fold u = va x + vb raw into x + h u (two fused ops)
            pred = fast.prediction(i, t0, xw)
            form = pred.affine("velocity")
            if form is not None and form[1] is xw:
                va, _, vb, raw = form
                out = lincomb(1.0 + h * va, xw, h * vb, raw)
            else:
                out = lincomb(1.0, xw, h, pred.velocity.to(wd))
            return (out if out.dtype == x.dtype else out.to(x.dtype)), state
        ks: list[torch.Tensor] = []
        for j, cj in enumerate(c):
            xj = xw
            terms: list = []
            for aj, k in zip(a[j], ks, strict=False):
                if aj:
                    terms += [h * aj, k]
            if terms:
                xj = lincomb(1.0, xw, *terms)
            tj = t0 + cj * h if cj else t0
            if fast is not None:
                ks.append((fast.prediction(i, t0, xj).velocity if not cj else fast(tj, xj)).to(wd))
            else:
                ks.append(dynamics.drift(ts[i] + cj * h if cj else ts[i], xj.to(x.dtype)).to(wd))
        terms = []
        for bj, k in zip(b, ks, strict=True):
            if bj:
                terms += [h * bj, k]
        return lincomb(1.0, xw, *terms).to(x.dtype), state

    def __repr__(self) -> str:
        return f"ExplicitRK({self.method!r})"

r"""Explicit Runge–Kutta steps in ``t`` on any drift: ``euler``, ``midpoint``, ``rk4``.

These integrate ``dx/dt = dynamics.drift(t, x)`` (the probability-flow velocity
:math:`u = \dot\alpha\hat x_0 + \dot\sigma\hat\epsilon` for a model, or any ODE / force field)
with the classical tableaux (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.1):

* ``euler``: :math:`x_{i+1} = x_i + h\,u(t_i, x_i)` (order 1, 1 NFE/step);
* ``midpoint``: :math:`k_1 = u(t_i,x_i)`, :math:`x_{i+1} = x_i + h\,u(t_i+h/2, x_i+\tfrac h2 k_1)` (order 2, 2 NFE);
* ``rk4``: the classical four-stage method (order 4, 4 NFE).

``h = t_{i+1} - t_i`` (negative when sampling). A grid ending at ``t = 0`` ends with the denoise
step of :mod:`sdediff.solvers._common` (diffusion models only).
"""

from __future__ import annotations

from typing import Any

import torch

from ._common import is_data_end, linear_model, predict, work_dtype
from .base import FixedStepSolver, SolveContext

__all__ = ["RK_TABLEAUX", "ExplicitRK"]

# name -> (c, A, b, order)
RK_TABLEAUX: dict[str, tuple[tuple[float, ...], tuple[tuple[float, ...], ...], tuple[float, ...], int]] = {
    "euler": ((0.0,), ((),), (1.0,), 1),
    "midpoint": ((0.0, 0.5), ((), (0.5,)), (0.0, 1.0), 2),
    "rk4": ((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), 4),
}


class ExplicitRK(FixedStepSolver):
    """An explicit Runge–Kutta method from :data:`RK_TABLEAUX`, stepping exactly on the grid."""

    data_end_ok = True

    def __init__(self, method: str) -> None:
        if method not in RK_TABLEAUX:
            raise ValueError(f"unknown Runge-Kutta method {method!r}; valid: {', '.join(RK_TABLEAUX)}")
        self.method = method
        self.name = method
        _, _, b, self.order = RK_TABLEAUX[method]
        self.nfe_per_step = len(b)

    def init(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> Any:
        if is_data_end(ts):
            return linear_model(dynamics, self.name)[0]
        return None

    def step(self, dynamics: Any, i: int, ts: torch.Tensor, x: torch.Tensor, state: Any,
             ctx: SolveContext) -> tuple[torch.Tensor, Any]:
        if state is not None and i == len(ts) - 2:  # onto sigma = 0: denoise
            return predict(state, float(ts[i]), x)[0].to(x.dtype), state
        c, a, b, _ = RK_TABLEAUX[self.method]
        t0 = ts[i]
        h = float(ts[i + 1] - ts[i])
        xw = x.to(work_dtype(x))
        ks: list[torch.Tensor] = []
        for j, cj in enumerate(c):
            xj = xw
            for aj, k in zip(a[j], ks, strict=False):
                if aj:
                    xj = xj + (h * aj) * k
            tj = t0 + cj * h if cj else t0
            ks.append(dynamics.drift(tj, xj.to(x.dtype)).to(xw.dtype))
        out = xw
        for bj, k in zip(b, ks, strict=True):
            if bj:
                out = out + (h * bj) * k
        return out.to(x.dtype), state

    def __repr__(self) -> str:
        return f"ExplicitRK({self.method!r})"

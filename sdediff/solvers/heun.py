r"""EDM's Heun sampler (Karras et al. 2022, *Elucidating the Design Space of Diffusion-Based
Generative Models*, NeurIPS, Algorithm 2), for any linear process.

EDM integrates :math:`dy/d\rho = \hat\epsilon` where :math:`y = x/\alpha` and
:math:`\rho = \sigma/\alpha = e^{-\lambda}` (their eq. 4 with :math:`s(t) = \alpha`,
:math:`\sigma(t) = \rho`; for the EDM and VE processes :math:`y = x`, :math:`\rho = \sigma` and this is
Algorithm 2 verbatim: :math:`d_i = (x_i - D(x_i))/\sigma_i`). Code ↔ paper: ``rho`` ↔ :math:`t_i`
(= :math:`\sigma_i`), ``d``/``d2`` ↔ :math:`d_i`/:math:`d'_i`, ``gamma`` ↔ :math:`\gamma_i`.

Step ``i``: optional churn — :math:`\gamma_i = \min(S_{churn}/N, \sqrt2-1)` when
:math:`S_{min} \le \rho_i \le S_{max}`, :math:`\hat\rho = \rho_i(1+\gamma_i)`,
:math:`\hat y = y_i + \sqrt{\hat\rho^2-\rho_i^2}\,S_{noise}\,z` — then an Euler step to
:math:`\rho_{i+1}` and the trapezoidal correction (2 NFE). The step onto :math:`\sigma = 0` is the
Euler step alone (the denoise of :mod:`sdediff.solvers.diffusion`), so N steps onto
:math:`\sigma = 0` cost :math:`2N-1` evaluations. ``heun`` has no churn by default (an ODE solver,
order 2); ``stochastic_heun`` uses EDM's ImageNet churn ``S_churn=40, S_min=0.05, S_max=50`` with
``S_noise=1``: EDM's ``S_noise=1.003`` inflates the injected noise by 0.3% at every step, a bias
that does not vanish as the steps shrink (the error plateaus near 1.4e-2 on a mixture target), so it
is an option (``options={"S_noise": 1.003}`` or ``EDMHeun(..., S_noise=1.003)``), not the default.
Churn is only applied when sampling (decreasing grids); options ``S_churn``, ``S_min``, ``S_max``,
``S_noise`` and ``noise`` override the constructor values per solve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..noise import make_noise
from .base import SolveContext
from .diffusion import DiffusionSolver, DState, point, predict, predict_at, t_at_log_snr
from .exponential import lincomb

__all__ = ["EDMHeun"]


@dataclass(frozen=True)
class Churn:
    """Per-solve constants of EDM's stochastic Heun (Karras et al. 2022, Alg. 2): ``S_churn``, ``S_min``,
    ``S_max``, ``S_noise`` and the largest noise level :math:`\rho_{max}` the churn may reach."""

    churn: float
    s_min: float
    s_max: float
    s_noise: float
    rho_max: float


class EDMHeun(DiffusionSolver):
    """Heun's method in EDM's variables, with optional churn (see module docstring)."""

    nfe_per_step = 2
    options = frozenset({"S_churn", "S_min", "S_max", "S_noise", "noise"})

    def __init__(self, *, S_churn: float = 0.0, S_min: float = 0.0, S_max: float = math.inf,
                 S_noise: float = 1.0, name: str = "heun") -> None:
        for k, v in (("S_churn", S_churn), ("S_min", S_min), ("S_noise", S_noise)):
            if not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{k} must be a number >= 0, got {v!r}")
        self.S_churn, self.S_min, self.S_max, self.S_noise = float(S_churn), float(S_min), float(S_max), float(S_noise)
        self.name = name
        self.stochastic = self.S_churn > 0
        self.order = 1 if self.stochastic else 2
        self.strong_order = 0.5 if self.stochastic else None
        self.weak_order = 1.0 if self.stochastic else None

    def nfe_for(self, steps: int) -> int:
        return 2 * steps

    def _opts(self, ctx: SolveContext) -> tuple[float, float, float, float]:
        o = ctx.options
        return (float(o.get("S_churn", self.S_churn)), float(o.get("S_min", self.S_min)),
                float(o.get("S_max", self.S_max)), float(o.get("S_noise", self.S_noise)))

    def start(self, state: DState, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> DState:
        opts = self._opts(ctx)
        if opts[0] < 0:
            raise ValueError(f"S_churn must be >= 0, got {opts[0]!r}")
        if opts[0] > 0 and bool(ts[-1] < ts[0]):
            noise = make_noise(ctx.options.get("noise", "gaussian"), ctx.generator, x.shape, ts,
                               dtype=x.dtype, device=x.device)
            rho_max = math.exp(-float(state.process.log_snr(state.process.T)))
            return state.with_consts(Churn(*opts, rho_max), noise)
        return state

    def advance(self, state: DState, i: int, x: torch.Tensor, ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        sc, proc = state.sched, state.process
        t, a, rho = sc.t[i], sc.alpha[i], sc.rho(i)
        rho_next = sc.rho(i + 1)
        if state.noise is None:  # y = x / alpha; y_e = y + (rho_next - rho) eps, both in x's units
            eps = predict_at(state, i, x).eps
            a1 = sc.alpha[i + 1]
            x_e = lincomb(a1 / a, x, a1 * (rho_next - rho), eps)
            eps2 = predict_at(state, i + 1, x_e).eps
            c = 0.5 * a1 * (rho_next - rho)
            return lincomb(a1 / a, x, c, eps, c, eps2), state
        y = x / a
        if state.noise is not None:
            c = state.consts  # per-solve constants, from start()
            churn, s_min, s_max, s_noise, rho_max = c.churn, c.s_min, c.s_max, c.s_noise, c.rho_max
            gamma = min(churn / sc.n_steps, math.sqrt(2.0) - 1.0) if s_min <= rho <= s_max else 0.0
            if gamma > 0:
                rho_hat = min(rho * (1.0 + gamma), rho_max)
                if rho_hat > rho:
                    z = state.noise.normal(sc.t[i], sc.t[i + 1]).to(y.dtype)
                    y = y + math.sqrt(rho_hat**2 - rho**2) * s_noise * z
                    t = t_at_log_snr(proc, -math.log(rho_hat))
                    a, s, _ = point(proc, t)
                    rho = s / a
        _, eps = predict(state.model, t, a * y)
        y_e = y + (rho_next - rho) * eps
        eps2 = predict_at(state, i + 1, sc.alpha[i + 1] * y_e).eps
        y_next = y + (rho_next - rho) * 0.5 * (eps + eps2)
        return sc.alpha[i + 1] * y_next, state

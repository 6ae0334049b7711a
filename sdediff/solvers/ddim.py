r"""DDIM (Song, Meng & Ermon 2021, *Denoising Diffusion Implicit Models*, ICLR, eq. 12) = DPM-Solver-1
(Lu et al. 2022, eq. 3.7) = DPM-Solver++1, and its stochastic (η > 0) form.

With :math:`h = \lambda_t - \lambda_s` and :math:`D = \hat x_0(x_s, s)`,
:math:`\hat\epsilon = (x_s - \alpha_s D)/\sigma_s`:

.. math:: x_t = \alpha_t D + \sqrt{\sigma_t^2 - c^2}\,\hat\epsilon + c\,z, \qquad
          c = \eta\,\sigma_t\sqrt{1 - e^{-2h}},

which for the DDPM schedule is DDIM's :math:`\sigma_t(\eta)` (the identity
:math:`\tfrac{1-\bar\alpha_{t}}{1-\bar\alpha_s}(1-\tfrac{\bar\alpha_s}{\bar\alpha_t}) = \sigma_t^2(1-e^{-2h})`
holds for every linear process in λ). η = 0 is computed as
:math:`x_t = \tfrac{\sigma_t}{\sigma_s}x_s - \alpha_t(e^{-h}-1)D` (DPM-Solver++ eq. 5); η = 1 is the
DDPM ancestral step (Ho et al. 2020), which is also the exact-linear-part step of the reverse SDE
(SDE-DPM-Solver-1) and is registered as ``ancestral``. ``eta`` comes from the constructor or
``options={"eta": ...}``; η > 0 is only defined for sampling (decreasing grids).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..noise import make_noise
from .base import SolveContext
from .diffusion import DiffusionSolver, DState, Eta, predict_at
from .exponential import first_order_data, lincomb

__all__ = ["DDIM"]


class DDIM(DiffusionSolver):
    """DDIM with noise level ``eta`` (0: the ODE solver ``ddim``; 1: ``ancestral``)."""

    order = 1
    nfe_per_step = 1
    options = frozenset({"eta", "noise"})

    def __init__(self, eta: float = 0.0, *, name: str | None = None) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
            raise ValueError(f"eta must be a number in [0, 1] (0 = DDIM ODE, 1 = DDPM ancestral), got {eta!r}")
        self.eta = float(eta)
        self.name = name or ("ddim" if self.eta == 0 else f"ddim(eta={self.eta:g})")
        self.stochastic = self.eta > 0
        self.strong_order = 0.5 if self.stochastic else None
        self.weak_order = 1.0 if self.stochastic else None

    def _eta(self, ctx: SolveContext) -> float:
        eta = ctx.options.get("eta", self.eta)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
            raise ValueError(f"options['eta'] must be a number in [0, 1], got {eta!r}")
        return float(eta)

    def start(self, state: DState, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> DState:
        if self._eta(ctx) > 0:
            if bool(ts[-1] > ts[0]):
                raise ValueError(f"eta > 0 ({self.name}) is only defined for sampling (a decreasing grid); "
                                 "use eta=0 ('ddim') for inversion")
            noise = make_noise(ctx.options.get("noise", "gaussian"), ctx.generator, x.shape, ts,
                               dtype=x.dtype, device=x.device)
            return state.with_consts(Eta(self._eta(ctx)), noise)
        return state

    def advance(self, state: DState, i: int, x: torch.Tensor, ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        sc = state.sched
        pred = predict_at(state, i, x)
        h = sc.lam[i + 1] - sc.lam[i]
        if state.noise is None:
            form = pred.affine("x0")
            if form is not None:  # fold x0_hat = a x + b raw into the step: two fused ops in all
                a, xw, b, raw = form
                c_x, c_d = sc.sigma[i + 1] / sc.sigma[i], -sc.alpha[i + 1] * math.expm1(-h)
                if xw is x:
                    return lincomb(c_x + c_d * a, x, c_d * b, raw), state
                return lincomb(c_x, x, c_d * a, xw, c_d * b, raw), state  # a half state's network input
            return first_order_data(x, pred.x0, sc.sigma[i], sc.sigma[i + 1], sc.alpha[i + 1], h), state
        d, eps_hat = pred.x0, pred.eps
        eta = state.consts.eta  # type: ignore[union-attr]
        c2 = -(eta**2) * math.expm1(-2.0 * h)  # (c / sigma_t)^2
        z = state.noise.normal(sc.t[i], sc.t[i + 1]).to(x.dtype)
        s_t = sc.sigma[i + 1]
        return lincomb(sc.alpha[i + 1], d, s_t * math.sqrt(max(1.0 - c2, 0.0)), eps_hat, s_t * math.sqrt(c2), z), state

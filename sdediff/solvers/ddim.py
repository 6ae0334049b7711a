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
from ._common import DiffusionSolver, DState, predict
from .base import SolveContext

__all__ = ["DDIM", "ddim_step"]


def ddim_step(x: torch.Tensor, d: torch.Tensor, sigma_s: float, sigma_t: float, alpha_t: float,
              h: float) -> torch.Tensor:
    r"""The deterministic DDIM / DPM-Solver-1 step in data-prediction form."""
    return (sigma_t / sigma_s) * x - (alpha_t * math.expm1(-h)) * d


class DDIM(DiffusionSolver):
    """DDIM with noise level ``eta`` (0: the ODE solver ``ddim``; 1: ``ancestral``)."""

    order = 1
    nfe_per_step = 1

    def __init__(self, eta: float = 0.0, *, name: str | None = None) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
            raise ValueError(f"eta must be a number in [0, 1] (0 = DDIM ODE, 1 = DDPM ancestral), got {eta!r}")
        self.eta = float(eta)
        self.name = name or ("ddim" if self.eta == 0 else f"ddim(eta={self.eta:g})")
        self.stochastic = self.eta > 0
        self.strong_order = 0.5 if self.stochastic else None

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
            return DState(state.model, state.process, state.sched, noise=noise)
        return state

    def advance(self, state: DState, i: int, x: torch.Tensor, ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        sc = state.sched
        d, _ = predict(state.model, sc.t[i], x)
        h = sc.lam[i + 1] - sc.lam[i]
        eta = self._eta(ctx) if state.noise is not None else 0.0
        if eta == 0.0:
            return ddim_step(x, d, sc.sigma[i], sc.sigma[i + 1], sc.alpha[i + 1], h), state
        eps_hat = (x - sc.alpha[i] * d) / sc.sigma[i]
        c2 = -(eta**2) * math.expm1(-2.0 * h)  # (c / sigma_t)^2
        z = state.noise.normal(sc.t[i], sc.t[i + 1]).to(x.dtype)
        x_next = sc.alpha[i + 1] * d + sc.sigma[i + 1] * (math.sqrt(max(1.0 - c2, 0.0)) * eps_hat + math.sqrt(c2) * z)
        return x_next, state

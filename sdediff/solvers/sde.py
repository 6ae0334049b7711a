r"""Stochastic samplers: ``euler_maruyama``, ``ancestral``, ``sde_dpm++2m`` and ``pc``.

* ``euler_maruyama`` (Kloeden & Platen 1992, §9.1) on any dynamics:
  :math:`x_{i+1} = x_i + b(t_i,x_i)\,\Delta t + g(t_i)\,\Delta W`; strong order 1 and weak order 1
  for additive noise (the reverse SDE of a linear process).
* ``ancestral`` / ``sde_dpm++2m``: SDE-DPM-Solver++ (Lu et al. 2022b, §5 and App. C) for the reverse
  SDE family :math:`dx = [f x - \tfrac12(1+\eta^2)g^2\nabla\log p_t]dt + \eta g\,d\bar w` of
  :func:`sdediff.reverse_sde` (η from the dynamics; 1 by default). In data prediction the linear
  part is integrated exactly:

  .. math:: x_t = \frac{\sigma_t}{\sigma_s}e^{-\eta^2h}x_s + \alpha_t\big(1-e^{-(1+\eta^2)h}\big)
            \Big(D_0 + \tfrac12 D_1\Big) + \sigma_t\sqrt{1-e^{-2\eta^2h}}\,z,

  with :math:`D_1 = (D_0 - D_{-1})/r_0` for ``sde_dpm++2m`` and :math:`D_1 = 0` for ``ancestral``
  (at η = 1 exactly the DDPM ancestral step of Ho et al. 2020; at η = 0 DDIM).
* ``pc``: predictor–corrector (Song et al. 2021, Algorithms 2–3): ``n_corrector`` Langevin steps
  :math:`x \leftarrow x + \epsilon\,s(x) + \sqrt{2\epsilon}\,z`, then the ``ancestral`` predictor.
  Song et al. set :math:`\epsilon = 2(r\,\|z\|/\|s\|)^2` with norms averaged over the batch (``snr`` = r);
  here the expected ratio :math:`\|z\|/\|s\| \approx \sigma_t` is used, :math:`\epsilon = 2(r\sigma_t)^2`,
  so samples do not interact (batch-size invariance) and a tiny score cannot blow the step up.
  NFE per step: ``1 + n_corrector``. The corrector's bias is set by ``snr``, not by the step, so
  ``pc`` does not converge as the step shrinks: it declares ``order = 0`` and the weak-order test
  skips it (it has its own moment test).

Noise: ``options={"noise": "gaussian"}`` (per-step draws from ``generator``, a list gives one stream
per sample) or ``"brownian"`` (a torchsde Brownian interval keyed by the seed: the same path at any
step count; exponential-integrator steps then use the normalised increment
:math:`\Delta W/\sqrt{|\Delta t|}` as their :math:`z`). A grid ending at ``t = 0`` ends with the
denoise step (no noise), as in :mod:`sdediff.solvers.diffusion`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..noise import make_noise
from .base import FixedStepSolver, SolveContext
from .diffusion import DiffusionSolver, DState, Eta, predict_at, work_dtype
from .exponential import lincomb

__all__ = ["EulerMaruyama", "PredictorCorrector", "SDEDPMSolverPP"]


def _noise(ctx: SolveContext, x: torch.Tensor, ts: torch.Tensor) -> Any:
    return make_noise(ctx.options.get("noise", "gaussian"), ctx.generator, x.shape, ts,
                      dtype=work_dtype(x), device=x.device)


class EulerMaruyama(FixedStepSolver):
    """Euler–Maruyama on ``dynamics.drift`` and ``dynamics.diffusion``."""

    name = "euler_maruyama"
    order = 1
    strong_order = 1.0
    weak_order = 1.0
    stochastic = True
    nfe_per_step = 1
    options = frozenset({"noise"})

    def init(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> Any:
        check_finite_diffusion(dynamics, ts, x, self.name)
        return _noise(ctx, x, ts)

    def step(self, dynamics: Any, i: int, ts: torch.Tensor, x: torch.Tensor, state: Any,
             ctx: SolveContext) -> tuple[torch.Tensor, Any]:
        noise = state
        t, dt = ts[i], float(ts[i + 1] - ts[i])
        xw = x.to(work_dtype(x))
        drift = dynamics.drift(t, x).to(xw.dtype)
        g = dynamics.diffusion(t, x).to(xw.dtype)
        dw = math.sqrt(abs(dt)) * noise.normal(float(ts[i]), float(ts[i + 1])) if not hasattr(noise, "increment") \
            else noise.increment(float(ts[i]), float(ts[i + 1]))
        return (xw + dt * drift + g * dw.to(xw.dtype)).to(x.dtype), state


def check_finite_diffusion(dynamics: Any, ts: torch.Tensor, x: torch.Tensor, solver: str) -> None:
    r"""ValueError before any model call when the SDE's diffusion is not finite at an end of the grid
    (rectified flow's reverse SDE has :math:`g^2 = 2t/(1-t) = \infty` at ``t = 1``)."""
    for t in (ts[0], ts[-1]):
        g = dynamics.diffusion(t, x[:1])
        if not bool(torch.isfinite(torch.as_tensor(g)).all()):
            raise ValueError(
                f"the diffusion g(t) of {dynamics!r} is not finite at t={float(t)!r}, so {solver!r} cannot step "
                "there; start the grid inside the process (e.g. sd.RectifiedFlow(T=0.999)) or use an "
                "exponential-integrator SDE solver ('ancestral', 'sde_dpm++2m'), which steps in log-SNR"
            )


def _eta(dynamics: Any) -> float:
    return float(getattr(dynamics, "eta", 1.0))


class SDEDPMSolverPP(DiffusionSolver):
    """SDE-DPM-Solver++ of order 1 (``ancestral``) or 2 (``sde_dpm++2m``) for the reverse SDE."""

    stochastic = True
    nfe_per_step = 1
    order = 1
    strong_order = 0.5
    options = frozenset({"noise"})

    def __init__(self, order: int, *, name: str) -> None:
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order!r}")
        self._k = order
        self.name = name
        # weak order from exact moments on a Gaussian target (tests/convergence/test_weak_order_exact.py):
        # 1 for the ancestral step, 2 with the 2M correction (variance errors 1.5e-3, 4.1e-4, 1.0e-4 at
        # 64/128/256 steps; below 64 steps the error is pre-asymptotic, which is why 16-128 fits 0.83)
        self.weak_order = 1.0 if order == 1 else 2.0

    def start(self, state: DState, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> DState:
        if bool(ts[-1] > ts[0]):
            raise ValueError(f"{self.name} samples the reverse SDE: the grid must decrease (T -> t_min)")
        return state.with_consts(Eta(_eta(dynamics)), _noise(ctx, x, ts))

    def advance(self, state: DState, i: int, x: torch.Tensor, ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        d = predict_at(state, i, x).x0
        return self._linear_step(state, i, x, d, state.consts.eta)  # type: ignore[union-attr]

    def _linear_step(self, state: DState, i: int, x: torch.Tensor, d: torch.Tensor,
                     eta: float) -> tuple[torch.Tensor, DState]:
        sc = state.sched
        hist = (*state.hist, (sc.lam[i], d))[-self._k:]
        k = self.max_order_at(state, i, min(self._k, len(hist)))
        h = sc.lam[i + 1] - sc.lam[i]
        c_x = sc.sigma[i + 1] / sc.sigma[i] * math.exp(-(eta**2) * h)
        c_d = sc.alpha[i + 1] * -math.expm1(-(1.0 + eta**2) * h)
        terms: list = []
        if k == 2:  # dd = d + (1/2) (d - m1) / r0
            l1, m1 = hist[-2]
            c = 0.5 * h / (sc.lam[i] - l1)
            terms = [c_d * (1.0 + c), d, -c_d * c, m1]
        else:
            terms = [c_d, d]
        if eta > 0:
            z = state.noise.normal(sc.t[i], sc.t[i + 1]).to(x.dtype)
            terms += [sc.sigma[i + 1] * math.sqrt(-math.expm1(-2.0 * eta**2 * h)), z]
        return lincomb(c_x, x, *terms), state.evolve(hist)


class PredictorCorrector(DiffusionSolver):
    """Langevin corrector + ancestral predictor (Song et al. 2021)."""

    name = "pc"
    stochastic = True
    order = 0
    options = frozenset({"snr", "n_corrector", "noise"})

    def __init__(self, snr: float = 0.16, n_corrector: int = 1) -> None:
        if not isinstance(snr, (int, float)) or isinstance(snr, bool) or not snr >= 0:
            raise ValueError(f"snr must be a number >= 0, got {snr!r}")
        if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 0:
            raise ValueError(f"n_corrector must be an int >= 0, got {n_corrector!r}")
        self.snr = float(snr)
        self.n_corrector = n_corrector
        self.nfe_per_step = 1 + n_corrector
        self._predictor = SDEDPMSolverPP(1, name="ancestral")

    def start(self, state: DState, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> DState:
        if ctx.options.get("noise", "gaussian") != "gaussian":
            raise ValueError("pc draws Langevin noise at a fixed time: it needs options['noise'] = 'gaussian'")
        return self._predictor.start(state, dynamics, x, ts, ctx)

    def advance(self, state: DState, i: int, x: torch.Tensor, ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        snr = float(ctx.options.get("snr", self.snr))
        n_corr = int(ctx.options.get("n_corrector", self.n_corrector))
        sc = state.sched
        for _ in range(n_corr):
            eps = predict_at(state, i, x).eps
            z = state.noise.normal(sc.t[i], sc.t[i]).to(x.dtype)
            step = 2.0 * (snr * sc.sigma[i]) ** 2
            x = lincomb(1.0, x, -step / sc.sigma[i], eps, math.sqrt(2.0 * step), z)
        return self._predictor.advance(state, i, x, ctx)

    def nfe_for(self, steps: int) -> int:
        return steps * self.nfe_per_step

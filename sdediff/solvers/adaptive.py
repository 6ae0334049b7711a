r"""Adaptive DPM-Solver-12 and -23 (Lu et al. 2022, *DPM-Solver*, §3.3 and Algorithm 4 "adaptive step
size"), in data-prediction form (DPM-Solver++), with a PI step-size controller.

Steps are taken in the half log-SNR λ. Each step computes the order-k solution :math:`x_h` and the
embedded order-(k-1) solution :math:`x_l` from the same evaluations (-12: DPM-Solver-1 inside
DPM-Solver-2 with r₁ = 1/2, 2 NFE; -23: DPM-Solver-2 with r₁ = 1/3 inside DPM-Solver-3, 3 NFE; the
evaluation at the start point is reused after a rejection). The error is the RMS norm
:math:`E = \|(x_h - x_l)/\delta\|_{RMS}`, :math:`\delta = atol + rtol\,\max(|x_l|, |x_s|)`, taken per
sample and maximised over the batch (the batch shares its steps). A step is accepted when
:math:`E \le 1`; the local-extrapolation value :math:`x_h` is propagated. The next step is
:math:`h \leftarrow h\,\min(5, \max(0.2,\ \theta E^{-\beta_1} E_{prev}^{\beta_2}))` with θ = 0.9,
:math:`\beta_1 = 0.7/k`, :math:`\beta_2 = 0.4/k` (Gustafsson's PI controller; Hairer & Wanner,
*Solving ODEs II*, §IV.2); after a rejection :math:`h \leftarrow h\max(0.2, \theta E^{-1/k})`.
A proposal that is not finite, or a model output that is not, counts as a rejected step
(``h`` shrinks by 4). Steps land on every grid time. Failure is a
:class:`~sdediff.errors.SolverError` (with ``t``, ``dt`` = the λ-step, ``nfe``): step underflow
(:math:`|h| < 10^{-10}`) or more than ``max_steps`` accepted + rejected steps.

Options: ``h_init`` (first λ-step, default 0.05 as in the paper), ``theta`` (0.9). A grid ending at
``t = 0`` is integrated to ``t_min`` and then denoised (:mod:`sdediff.solvers._common`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import NonFiniteError, SolverError
from ._common import DState, Schedule, is_data_end, linear_model, predict, work_dtype
from .base import RunResult, SolveContext, Solver
from .dpm_solver import _single

__all__ = ["ERROR_NORMS", "AdaptiveDPMSolver"]

# How per-sample mean squared scaled errors become one number for the batch (which shares its steps):
# "max" bounds every sample's error (Lu et al.'s reference code); "rms" bounds the batch RMS, as
# torchdiffeq does for its whole state.
ERROR_NORMS = {
    "max": lambda e2: float(e2.detach().max().sqrt()),
    "rms": lambda e2: float(e2.detach().mean().sqrt()),
}


class AdaptiveDPMSolver(Solver):
    """DPM-Solver-12 (``order=2``) or -23 (``order=3``) with error control in λ."""

    adaptive = True
    stochastic = False
    data_end_ok = True

    def __init__(self, order: int, *, name: str) -> None:
        if order not in (2, 3):
            raise ValueError(f"order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {order!r}")
        self.order = order
        self.nfe_per_step = order
        self.name = name

    def run(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> RunResult:
        model, process = linear_model(dynamics, self.name, x.dtype)
        end = is_data_end(ts)
        grid = ts[:-1] if end else ts
        if end and float(grid[-1]) > process.t_min:
            grid = torch.cat([grid, grid.new_tensor([process.t_min])])
        sched = Schedule.of(process, grid)
        state = DState(model, process, sched)
        h_init = float(ctx.options.get("h_init", 0.05))
        theta = float(ctx.options.get("theta", 0.9))
        norm = ctx.options.get("norm", "max")
        if norm not in ERROR_NORMS:
            raise ValueError(f"options norm must be one of {', '.join(ERROR_NORMS)}, got {norm!r}")
        if not h_init > 0 or not 0 < theta <= 1:
            raise ValueError(f"options h_init must be > 0 and theta in (0, 1], got {h_init!r}, {theta!r}")
        wd = work_dtype(x)
        xs = [x]
        xc = x.to(wd)
        n_acc = n_rej = 0
        k = self.order
        h = h_init
        err_prev = 1.0
        for j in range(len(grid) - 1):
            l_end = sched.lam[j + 1]
            l_cur = sched.lam[j]
            sign = 1.0 if l_end > l_cur else -1.0
            t_cur, a_cur, s_cur = sched.t[j], sched.alpha[j], sched.sigma[j]
            m0 = None
            while sign * (l_end - l_cur) > 1e-12 * max(1.0, abs(l_end)):
                if n_acc + n_rej >= ctx.max_steps:
                    raise SolverError(f"{self.name}: more than max_steps={ctx.max_steps} steps (accepted + rejected) "
                                      f"at t={t_cur!r}; loosen rtol/atol or raise max_steps",
                                      t=t_cur, dt=h, nfe=dynamics.nfe)
                if h < 1e-10:
                    raise SolverError(f"{self.name}: step size underflow (lambda-step {h:.3g}) at t={t_cur!r}; the "
                                      "model is not smooth or not finite here. Loosen rtol/atol or use a fixed-step "
                                      "solver", t=t_cur, dt=h, nfe=dynamics.nfe)
                hs = min(h, sign * (l_end - l_cur))
                last = hs >= sign * (l_end - l_cur) * (1 - 1e-12)
                l_new = l_end if last else l_cur + sign * hs
                if last:
                    t_new, a_new, s_new = sched.t[j + 1], sched.alpha[j + 1], sched.sigma[j + 1]
                else:
                    t_new = float(process.t_from_log_snr(torch.as_tensor(l_new, dtype=torch.float64)))
                    la, ls = float(process.log_alpha(t_new)), float(process.log_sigma(t_new))
                    a_new, s_new, l_new = math.exp(la), math.exp(ls), la - ls
                try:
                    if m0 is None:
                        m0 = predict(model, t_cur, xc)[0]
                    x_h, x_l, _ = _single(state, xc, t_cur, a_cur, s_cur, l_cur, a_new, s_new, l_new, k, True, m0,
                                          0.5 if k == 2 else None, True)
                    ok = bool(torch.isfinite(x_h).all())
                except NonFiniteError:
                    ok = False
                if not ok:
                    n_rej += 1
                    h = hs / 4.0
                    continue
                delta = ctx.atol + ctx.rtol * torch.maximum(x_l.abs(), xc.abs())
                e2 = ((x_h - x_l) / delta).pow(2).flatten(1).mean(1)
                err = max(ERROR_NORMS[norm](e2), 1e-10) if e2.numel() else 1e-10
                if err <= 1.0:
                    n_acc += 1
                    xc, m0 = x_h, None
                    l_cur, t_cur, a_cur, s_cur = l_new, t_new, a_new, s_new
                    fac = theta * err ** (-0.7 / k) * err_prev ** (0.4 / k)
                    h = hs * min(5.0, max(0.2, fac))
                    err_prev = err
                else:
                    n_rej += 1
                    h = hs * max(0.2, theta * err ** (-1.0 / k))
            xs.append(xc.to(x.dtype))
        if end:
            if float(grid[-1]) != float(ts[-2]):
                xs.pop()  # the t_min stop is not a save time
            xs.append(predict(model, sched.t[-1], xc)[0].to(x.dtype))
        return RunResult(torch.stack(xs), n_steps=n_acc + int(end), n_rejected=n_rej)

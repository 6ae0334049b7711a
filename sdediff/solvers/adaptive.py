r"""Adaptive DPM-Solver-12 and -23 (Lu et al. 2022, *DPM-Solver*, §3.3 and Algorithm 4 "adaptive step
size"), in data-prediction form (DPM-Solver++) by default, with a PI step-size controller.

Steps are taken in the half log-SNR λ. Each step computes the order-k solution :math:`x_h` and the
embedded order-(k-1) solution :math:`x_l` from the same evaluations (-12: DPM-Solver-1 inside
DPM-Solver-2 with r₁ = 1/2, 2 NFE; -23: DPM-Solver-2 with r₁ = 1/3 inside DPM-Solver-3, 3 NFE; the
evaluation at the start point is reused after a rejection).

**What rtol/atol mean.** The error is measured in the scale of the clean data, i.e. in EDM's variables
:math:`y = x/\alpha` (the same for every linear process): with :math:`y_h, y_l, y_s` the two
solutions and the start point divided by their :math:`\alpha`,
:math:`E = \|(y_h - y_l)/\delta\|_{RMS}`, :math:`\delta = atol + rtol\,\max(|y_l|, |y_s|)`, the RMS taken
over the whole batch (``norm="rms"``, as k-diffusion and torchdiffeq; ``norm="max"``: per sample,
maximised over the batch, Lu et al.'s reference code). So ``atol`` is an absolute local error in data
units whatever the process (a VP state at large noise is scaled down by α; measuring the error in
``x`` there, ``scale="state"``, let early steps through that the data end pays for). A step is
accepted when :math:`E \le 1.5` (the embedded estimate of these solvers is conservative; k-diffusion
accepts up to :math:`0.81^{-k}`); the local-extrapolation value :math:`x_h` is propagated.

**Controller.** :math:`h \leftarrow h\,\min(5, \max(0.2,\ \theta E^{-\beta_1/k} E_{prev}^{\beta_2/k}))` with
θ = 0.9, :math:`\beta_1 = 1`, :math:`\beta_2 = 0.5` and :math:`E_{prev} \ge 10^{-4}` (a PI controller,
Gustafsson; Hairer & Wanner, *Solving ODEs II*, §IV.2, with more integral action than the textbook
0.7/0.4: the error here is small over long stretches of λ — the start at high noise, the tail at low
noise — where the textbook gains grow ``h`` by only ~1.2 a step); after a rejection
:math:`h \leftarrow h\max(0.2, \theta E^{-1/k})`. The first step is ``h_init = 0.2`` in λ. These
settings were chosen on seed 1 of ``benchmarks/adaptive.py`` (RMSE 1e-3 at the fewest NFE on the four
targets of :mod:`sdediff.bench_targets`) and reported on seed 0 there.

A proposal that is not finite, or a model output that is not, counts as a rejected step
(``h`` shrinks by 4). Steps land on every grid time. The loop and the controller are the shared ones
of :class:`~sdediff.solvers.base.AdaptiveSolver` and :class:`~sdediff.solvers.base.PIController`;
this module only says how one step and its error are computed. Failure is a
:class:`~sdediff.errors.SolverError` (with ``t``, ``dt`` = the λ-step, ``nfe``): step underflow
(:math:`|h| < 10^{-10}`) or more than ``max_steps`` accepted + rejected steps.

Options: ``h_init`` (first λ-step, default 0.2), ``theta`` (0.9), ``norm`` (``"rms"`` or ``"max"``),
``scale`` (``"data"`` or ``"state"``), ``prediction`` (``"data"``: DPM-Solver++, or ``"noise"``:
DPM-Solver). A grid ending at ``t = 0`` is integrated to ``t_min`` and then denoised
(:mod:`sdediff.solvers.diffusion`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .._utils import TIME_DTYPE
from ..model import Prediction
from .base import AdaptiveSolver, PIController, SolveContext
from .diffusion import DState, Schedule, Tail, extrapolation_weight, linear_model, predict_at, work_dtype
from .dpm_solver import _model_out, _single

__all__ = ["ERROR_NORMS", "AdaptiveDPMSolver"]

# How per-sample mean squared scaled errors become one number for the batch (which shares its steps):
# "max" bounds every sample's error (Lu et al.'s reference code); "rms" bounds the batch RMS, as
# torchdiffeq does for its whole state.
#: The largest weight of the extrapolated final step after an adaptive solve: the data prediction kept is the
#: latest at a noise level ρ >= sqrt(2) ρ(t_min) (:func:`sdediff.solvers.diffusion.denoise`).
END_WEIGHT = 1.0

ERROR_NORMS = {
    "max": lambda e2: float(e2.detach().max().sqrt()),
    "rms": lambda e2: float(e2.detach().mean().sqrt()),
}


@dataclass(frozen=True)
class _AState:
    """Per-solve constants (``d``: the diffusion state, ``norm``) and what evolves: the current point
    ``(t, alpha, sigma)`` and the model output there (``m0``, reused after a rejection)."""

    d: DState
    norm: tuple[str, str, bool]
    t: float
    alpha: float
    sigma: float
    m0: torch.Tensor | None = None
    nxt: tuple[float, float, float, float] | None = None


class AdaptiveDPMSolver(AdaptiveSolver):
    """DPM-Solver-12 (``order=2``) or -23 (``order=3``) with error control in λ."""

    stochastic = False
    options = frozenset({"h_init", "theta", "norm", "scale", "prediction"})

    def __init__(self, order: int, *, name: str) -> None:
        if order not in (2, 3):
            raise ValueError(f"order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {order!r}")
        self.order = order
        self.nfe_per_step = order
        self.name = name

    def init(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> _AState:
        model, process = linear_model(dynamics, self.name, x.dtype)
        norm = ctx.options.get("norm", "rms")
        if norm not in ERROR_NORMS:
            raise ValueError(f"options norm must be one of {', '.join(ERROR_NORMS)}, got {norm!r}")
        scale = ctx.options.get("scale", "data")
        if scale not in ("data", "state"):
            raise ValueError(f"options scale must be 'data' or 'state', got {scale!r}")
        pred = ctx.options.get("prediction", "data")
        if pred not in ("data", "noise"):
            raise ValueError(f"options prediction must be 'data' (DPM-Solver++) or 'noise' (DPM-Solver), got {pred!r}")
        sched = Schedule.of(process, ts, data_end=False, model=model)
        tail = Tail(-1) if ctx.data_end else None  # kept by accepted(), not by predict_at
        return _AState(DState(model, process, sched, tail=tail), (norm, scale, pred == "data"), sched.t[0],
                       sched.alpha[0], sched.sigma[0])

    def span(self, state: _AState) -> list[float]:
        return list(state.d.sched.lam)

    def first_step(self, state: _AState, ctx: SolveContext) -> float:
        h_init = float(ctx.options.get("h_init", 0.2))
        if not h_init > 0:
            raise ValueError(f"options h_init must be > 0, got {h_init!r}")
        return h_init

    def controller(self, state: _AState, ctx: SolveContext) -> PIController:
        theta = float(ctx.options.get("theta", 0.9))
        if not 0 < theta <= 1:
            raise ValueError(f"options theta must be in (0, 1], got {theta!r}")
        return PIController(self.order, theta=theta, beta1=1.0, beta2=0.5, accept_err=1.5)

    def time_of(self, state: _AState, s: float) -> float:
        return state.t

    def reached(self, state: _AState, s_new: float) -> float:
        return state.nxt[3]  # type: ignore[index]

    def attempt(self, state: _AState, j: int, s: float, s_new: float, last: bool, x: torch.Tensor,
                ctx: SolveContext) -> tuple[torch.Tensor, _AState, float]:
        d = state.d
        sc, process = d.sched, d.process
        if last:
            t_new, a_new, s_new_, l_new = sc.t[j + 1], sc.alpha[j + 1], sc.sigma[j + 1], sc.lam[j + 1]
        else:
            t_new = float(process.t_from_log_snr(torch.as_tensor(s_new, dtype=TIME_DTYPE)))
            la, ls = float(process.log_alpha(t_new)), float(process.log_sigma(t_new))
            a_new, s_new_, l_new = math.exp(la), math.exp(ls), la - ls
        xw = x.to(work_dtype(x))
        m0 = state.m0
        if m0 is None:
            data = state.norm[2]
            if s == sc.lam[j]:
                pr = predict_at(d, j, xw)
                m0 = pr.x0 if data else pr.eps
            else:
                m0 = _model_out(d, state.t, xw, data)
            state = _AState(d, state.norm, state.t, state.alpha, state.sigma, m0)
        k = self.order
        x_h, x_l, _ = _single(d, xw, state.t, state.alpha, state.sigma, s, a_new, s_new_, l_new, k, state.norm[2], m0,
                              0.5 if k == 2 else None, True)
        norm, scale, _ = state.norm
        if scale == "data":  # in y = x / alpha (EDM variables): the scale of the clean data
            delta = ctx.atol + ctx.rtol * torch.maximum(x_l.abs() / a_new, xw.abs() / state.alpha)
            e2 = ((x_h - x_l) / (a_new * delta)).pow(2).flatten(1).mean(1)
        else:
            delta = ctx.atol + ctx.rtol * torch.maximum(x_l.abs(), xw.abs())
            e2 = ((x_h - x_l) / delta).pow(2).flatten(1).mean(1)
        err = max(ERROR_NORMS[norm](e2), 1e-10) if e2.numel() else 1e-10
        trial = _AState(d, state.norm, state.t, state.alpha, state.sigma, m0, (t_new, a_new, s_new_, l_new))
        return x_h, trial, err

    def accepted(self, state: _AState) -> _AState:
        tail = state.d.tail
        if tail is not None and state.m0 is not None and state.norm[2] and state.alpha > 0:
            # the data prediction at the start of the step just accepted, for the extrapolated final step: the
            # latest one at least sqrt(1 + 1/END_WEIGHT) times the end's noise level (a last step clipped short
            # by the grid end would give a large weight)
            sc = state.d.sched
            if extrapolation_weight(sc.sigma[-1] / sc.alpha[-1], state.sigma / state.alpha) <= END_WEIGHT:
                tail.keep(state.sigma, state.alpha, Prediction(x0=state.m0))
        t, a, s, _ = state.nxt  # type: ignore[misc]
        return _AState(state.d, state.norm, t, a, s)

    def end_point(self, state: _AState) -> tuple[float, torch.Tensor] | None:
        return None if state.d.tail is None else state.d.tail.end_point()

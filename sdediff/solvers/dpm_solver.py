r"""DPM-Solver (Lu et al. 2022, *DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
Sampling in Around 10 Steps*, NeurIPS) and DPM-Solver++ (Lu et al. 2022b, *DPM-Solver++: Fast Solver
for Guided Sampling of Diffusion Probabilistic Models*, arXiv:2211.01095).

Exponential integrators in the half log-SNR :math:`\lambda`: the probability-flow ODE has the exact
solution (DPM-Solver eq. 3.4, DPM-Solver++ eq. 8)

.. math:: x_t = \frac{\alpha_t}{\alpha_s}x_s - \alpha_t\int_{\lambda_s}^{\lambda_t} e^{-\lambda}\hat\epsilon\,d\lambda
              = \frac{\sigma_t}{\sigma_s}x_s + \sigma_t\int_{\lambda_s}^{\lambda_t} e^{\lambda}\hat x_0\,d\lambda,

and the solvers Taylor-expand :math:`\hat\epsilon` (noise prediction, DPM-Solver) or :math:`D = \hat x_0`
(data prediction, DPM-Solver++) in λ. Code ↔ paper: ``h`` ↔ :math:`h_i = \lambda_{t_i}-\lambda_{t_{i-1}}`,
``r1, r2`` ↔ :math:`r_1, r_2`, ``phi1 = expm1(-h)`` ↔ :math:`e^{-h}-1`, ``phi2 = phi1/h + 1``,
``phi3 = phi2/h - 1/2`` (so that :math:`-h^2\varphi_3` is the exact weight of :math:`D''`).

* ``dpm_solver_2`` / ``dpm_solver_3``: singlestep, noise prediction (Algorithms 1 and 2, r₁ = 1/2;
  r₁ = 1/3, r₂ = 2/3), 2 and 3 NFE per step.
* ``dpm++2s``: singlestep data prediction (DPM-Solver++ Algorithm 1, r = 1/2).
* ``dpm_solver_fast``: DPM-Solver-fast (DPM-Solver §3.4): orders mixed to spend an exact NFE budget
  ``K`` on ``M = K//3 + 1`` steps — ``[3]*(M-2) + [2, 1]`` if ``K % 3 == 0``, ``[3]*(M-1) + [1]`` if 1,
  ``[3]*(M-1) + [2]`` if 2 (the grids of :func:`sdediff.sample` take ``[3]*(M-1) + [1, 1]`` there, so
  that the last step stays first order: see :class:`DPMSolverFast`). On a grid of ``M`` steps,
  ``options={"nfe": K}`` picks the budget; the
  default is ``K = 3M - 1`` (all third order, a second-order last step), which keeps order 3; the
  budgets ending with a first-order step are asymptotically order 2 (fine at the small NFE they are
  meant for).
* ``dpm++2m``: multistep data prediction (DPM-Solver++ Algorithm 2).
* ``dpm++3m``: multistep data prediction, **true third order**: with
  :math:`D_1^{(0)} = (D_0-D_{-1})/r_0` and :math:`D_1^{(1)} = (D_{-1}-D_{-2})/r_1`,
  :math:`hD' \approx D_1 = D_1^{(0)} + \tfrac{r_0}{r_0+r_1}(D_1^{(0)}-D_1^{(1)})` and
  :math:`h^2 D'' \approx D_2 = \tfrac{2}{r_0+r_1}(D_1^{(0)}-D_1^{(1)})`.
  The first step (order 1, local error :math:`O(h^2)`) would cap the global order at 2; once
  :math:`D_1` is known it is redone with the exponential trapezoidal rule (no extra NFE), as UniPC's
  corrector does, so the method is third order from a cold start.
* ``dpm++3m_common``: the 3M update as written in the reference code, diffusers and k-diffusion, with
  :math:`D_2 = (D_1^{(0)}-D_1^{(1)})/(r_0+r_1)` — half the second derivative, so its local error is
  :math:`O(h^3)` and it is **second order** (the order test measures 2); kept under this name for
  comparison and reproduction of those libraries.

Multistep solvers start with lower orders (first step order 1, second order ≤ 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .base import SolveContext
from .diffusion import DiffusionSolver, DState, WarmStart, point, predict, predict_at, t_at_log_snr
from .exponential import lincomb, phi1, phi2, phi3

__all__ = ["DPMSolverFast", "DPMSolverMultistep", "DPMSolverSinglestep", "fast_orders", "singlestep_update"]


def _stage(state: DState, lam: float) -> tuple[float, float, float, float]:
    """Intermediate time at half log-SNR ``lam``: ``(t, alpha, sigma, lambda)`` as actually reached."""
    t = t_at_log_snr(state.process, lam)
    a, s, lam_real = point(state.process, t)
    return t, a, s, lam_real


def singlestep_update(state: DState, x: torch.Tensor, i: int, order: int, data: bool,
                      first: torch.Tensor | None = None, r1: float | None = None,
                      embedded: bool = False) -> Any:
    r"""One singlestep DPM-Solver(++) step of ``order`` 1–3 from grid point ``i`` to ``i+1``.

    ``data`` selects data prediction (DPM-Solver++) or noise prediction (DPM-Solver). ``first`` is
    the model output at ``(t_i, x)`` if already known (saves one NFE). With ``embedded=True``
    (orders 2 and 3) also returns the lower-order solution that shares the evaluations, for the
    adaptive solvers: order 2 with r₁ = 1/2 embeds order 1; order 3 (r₁ = 1/3, r₂ = 2/3) embeds
    the order-2 solution with r₁ = 1/3.
    """
    sc = state.sched
    if first is None:
        pred = predict_at(state, i, x)
        first = pred.x0 if data else pred.eps
    return _single(state, x, sc.t[i], sc.alpha[i], sc.sigma[i], sc.lam[i], sc.alpha[i + 1], sc.sigma[i + 1],
                   sc.lam[i + 1], order, data, first, r1, embedded)


def _model_out(state: DState, t: float, x: torch.Tensor, data: bool) -> torch.Tensor:
    d, e = predict(state.model, t, x)
    return d if data else e


def _single(state: DState, x: torch.Tensor, t_s: float, a_s: float, s_s: float, l_s: float, a_t: float,
            s_t: float, l_t: float, order: int, data: bool, first: torch.Tensor | None, r1: float | None,
            embedded: bool) -> Any:
    m0 = first if first is not None else _model_out(state, t_s, x, data)
    h = l_t - l_s
    # data prediction: x_t = (s_t/s_s) x - a_t phi1(h) D ...; noise prediction: the mirror image in
    # (alpha, sigma) with h -> -h (DPM-Solver eq. 3.7 vs DPM-Solver++ eq. 5), signs through `sg`.
    sg = 1.0 if data else -1.0

    def lin(a: float, s: float) -> float:  # the exact linear part from s
        return s / s_s if data else a / a_s

    def w1(a: float, s: float, hh: float) -> float:  # first-order weight of m0
        return -(a if data else s) * phi1(sg * hh)

    def w2(a: float, s: float, hh: float) -> float:  # weight of the first difference (m_k - m0) / r_k
        return (a if data else s) * phi2(sg * hh)

    x1 = lincomb(lin(a_t, s_t), x, w1(a_t, s_t, h), m0)
    if order == 1:
        return (x1, m0) if not embedded else (x1, x1, m0)
    if order == 2:
        r = 0.5 if r1 is None else r1
        t1, a1, s1, l1 = _stage(state, l_s + r * h)
        r = (l1 - l_s) / h
        u = lincomb(lin(a1, s1), x, w1(a1, s1, r * h), m0)
        m1 = _model_out(state, t1, u, data)
        c = (0.5 / r) * w1(a_t, s_t, h)
        x2 = lincomb(1.0, x1, c, m1, -c, m0)
        return (x2, m0) if not embedded else (x2, x1, m0)
    if order != 3:
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    t1, a1, s1, l1 = _stage(state, l_s + h / 3.0)
    t2, a2, s2, l2 = _stage(state, l_s + 2.0 * h / 3.0)
    r1_, r2_ = (l1 - l_s) / h, (l2 - l_s) / h
    u1 = lincomb(lin(a1, s1), x, w1(a1, s1, r1_ * h), m0)
    m1 = _model_out(state, t1, u1, data)
    hh2 = r2_ * h
    c = (r2_ / r1_) * w2(a2, s2, hh2)
    u2 = lincomb(lin(a2, s2), x, w1(a2, s2, hh2) - c, m0, c, m1)
    m2 = _model_out(state, t2, u2, data)
    c3 = w2(a_t, s_t, h) / r2_
    x3 = lincomb(1.0, x1, c3, m2, -c3, m0)
    if not embedded:
        return x3, m0
    c2 = (0.5 / r1_) * w1(a_t, s_t, h)
    x2_low = lincomb(1.0, x1, c2, m1, -c2, m0)
    return x3, x2_low, m0


class DPMSolverSinglestep(DiffusionSolver):
    """Singlestep DPM-Solver (``data=False``) or DPM-Solver++ (``data=True``) of a fixed order."""

    auto_grid = "process"  # benchmarks/defaults.py select, seed 1: 3.3-5.5 against 4.2-7.6 on logsnr

    def __init__(self, order: int, *, data: bool, name: str) -> None:
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        self.order = order
        self.nfe_per_step = order
        self.data = bool(data)
        self.name = name

    def advance(self, state: DState, i: int, x: torch.Tensor, ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        return singlestep_update(state, x, i, self.order, self.data)[0], state


def fast_orders(nfe: int, last_first_order: bool = False) -> list[int]:
    """Per-step orders of DPM-Solver-fast for an NFE budget (DPM-Solver §3.4); they sum to ``nfe``.

    The paper's split ends with an order-1 step unless ``nfe % 3 == 2`` (``[3]*k + [2]``). With
    ``last_first_order`` that case becomes ``[3]*k + [1, 1]`` (one more step): the last step, onto
    the low-noise end, stays first order. That is the split :func:`sdediff.sample` uses (see
    :class:`DPMSolverFast`).
    """
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"the NFE budget of dpm_solver_fast must be an int >= 1, got {nfe!r}")
    k, rest = divmod(nfe, 3)
    if rest == 0:
        return [3] * (k - 1) + [2, 1]
    if rest == 2 and last_first_order:
        return [3] * k + [1, 1]
    return [3] * k + [rest]


@dataclass(frozen=True)
class FastOrders:
    """Per-solve constant of DPM-Solver-fast: the order of each step for the NFE budget (Lu et al. 2022, §3.4)."""

    orders: tuple[int, ...]


class DPMSolverFast(DiffusionSolver):
    r"""DPM-Solver-fast: singlestep noise-prediction steps of mixed order for an exact NFE budget.

    The orders are the paper's (:func:`fast_orders`) except for budgets ``K % 3 == 2``, where the grids
    of :func:`sdediff.sample` (:meth:`steps_for_nfe`) get one more step and the split
    ``[3]*k + [1, 1]`` instead of ``[3]*k + [2]``: a step of order ≥ 2 in noise prediction on the last
    interval, onto the low-noise end, extrapolates :math:`\hat\epsilon` where it changes fastest and
    is unstable at the large steps of small budgets (benchmarks/adaptive.py, growth scan: with the
    paper's split the RMSE grew 4–100× from 5 to 6 NFE and from 10 to 12, where ``sample`` spends 1 NFE
    on the denoise step and hands the solver a budget ``K % 3 == 2``). A grid of the paper's
    ``K//3 + 1`` steps still gets the paper's split.
    """

    order = 3
    nfe_per_step = 3
    name = "dpm_solver_fast"
    budgeted = True
    options = frozenset({"nfe"})

    @staticmethod
    def steps_for_nfe(nfe: int) -> int:
        """Number of grid steps that a budget of ``nfe`` evaluations needs (the split ending first order)."""
        return len(fast_orders(nfe, last_first_order=True))

    def start(self, state: DState, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> DState:
        m = state.sched.n_steps - int(state.sched.data_end)  # the denoise step costs 1 NFE on top
        if m == 0:
            return state
        nfe = ctx.options.get("nfe", 3 * m - 1)
        orders = fast_orders(nfe, last_first_order=True)
        if len(orders) != m:
            orders = fast_orders(nfe)  # a grid of the paper's M = nfe//3 + 1 steps
        if len(orders) != m:
            raise ValueError(f"options['nfe']={nfe} needs {self.steps_for_nfe(nfe)} steps (or the paper's "
                             f"M = nfe//3 + 1 = {len(orders)}) but the grid has {m} (not counting a final denoise "
                             "step); build the grid with DPMSolverFast.steps_for_nfe(nfe) steps")
        return state.with_consts(FastOrders(tuple(orders)))

    def nfe_for(self, steps: int) -> int:
        return 3 * steps - 1 if steps > 0 else 0

    def advance(self, state: DState, i: int, x: torch.Tensor, ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        return singlestep_update(state, x, i, state.consts.orders[i], data=False)[0], state  # type: ignore[union-attr]


class DPMSolverMultistep(DiffusionSolver):
    """Multistep DPM-Solver++ (data prediction) of order 1–3; ``third="true"`` or ``"common"``."""

    nfe_per_step = 1

    def __init__(self, order: int, *, third: str = "true", name: str) -> None:
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        if third not in ("true", "common"):
            raise ValueError(f"third must be 'true' or 'common', got {third!r}")
        self.order = order if not (order == 3 and third == "common") else 2
        self._k = order
        self.third = third
        self.name = name

    def advance(self, state: DState, i: int, x: torch.Tensor, ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        sc = state.sched
        d = predict_at(state, i, x).x0
        if self._k == 3 and self.third == "true" and len(state.hist) == 1 and i == 1:
            # Warm-up correction: redo the first (order-1) step with the exponential trapezoidal
            # rule now that D_1 is known (no extra NFE), so its O(h^2) local error does not cap
            # the global order at 2. D_1 stays the value at the predicted point (O(h^3) effect).
            (l0, m0), x0 = state.hist[0], state.carry.x0  # type: ignore[union-attr]
            h0 = sc.lam[1] - l0
            a1, p1, p2 = sc.alpha[1], math.expm1(-h0), phi2(h0)
            x = lincomb(sc.sigma[1] / sc.sigma[0], x0, -a1 * (p1 + p2), m0, a1 * p2, d)
        hist = (*state.hist, (sc.lam[i], d))[-self._k:]
        k = self.max_order_at(state, i, min(self._k, len(hist)))
        h = sc.lam[i + 1] - sc.lam[i]
        a_t = sc.alpha[i + 1]
        c_x, c_d = sc.sigma[i + 1] / sc.sigma[i], -a_t * math.expm1(-h)
        if k == 1:
            x_next = lincomb(c_x, x, c_d, d)
        elif k == 2:
            l1, m1 = hist[-2]
            c = 0.5 * c_d * h / (sc.lam[i] - l1)  # (1/2) (-a_t phi1) / r0 on D_1^(0) = (m0 - m1) / r0
            x_next = lincomb(c_x, x, c_d + c, d, -c, m1)
        else:
            (l2, m2), (l1, m1) = hist[-3], hist[-2]
            r0, r1 = (sc.lam[i] - l1) / h, (l1 - l2) / h
            big_a, big_b = a_t * phi2(h), a_t * phi3(h)
            # A D1 - B D2 with D1 = D1^(0) + r0/(r0+r1) diff, D2 = f/(r0+r1) diff, diff = D1^(0) - D1^(1)
            q = big_a * r0 / (r0 + r1) - big_b * (2.0 if self.third == "true" else 1.0) / (r0 + r1)
            x_next = lincomb(c_x, x, c_d + (big_a + q) / r0, d, -(big_a + q) / r0 - q / r1, m1, q / r1, m2)
        return x_next, state.evolve(hist, WarmStart(x) if i == 0 else None)

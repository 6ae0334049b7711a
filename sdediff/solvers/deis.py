r"""DEIS (Zhang & Chen 2023, *Fast Sampling of Diffusion Models with Exponential Integrator*, ICLR)
in its time-Adams–Bashforth form (``deis``, tAB-DEIS, orders 1–3) and iPNDM (``ipndm``, same paper,
§B: PNDM's pseudo-linear-multistep coefficients on the exponential-integrator form).

Exponential integrator in :math:`\rho = \sigma/\alpha`: the probability-flow ODE is
:math:`d(x/\alpha) = \hat\epsilon\,d\rho`, so
:math:`x_t = \tfrac{\alpha_t}{\alpha_s}x_s + \alpha_t\int_{\rho_s}^{\rho_t}\hat\epsilon\,d\rho` (DEIS eq. 12).

* tAB-DEIS: :math:`\hat\epsilon(\tau)` is the Lagrange polynomial in ``t`` through the last ``r + 1``
  evaluations :math:`(t_{i-j}, \hat\epsilon_{i-j})`; the weights
  :math:`C_{ij} = \alpha_t\int_{\rho_s}^{\rho_t}\ell_j(t(\rho))\,d\rho` (DEIS eq. 14) are computed by
  16-point Gauss–Legendre quadrature in :math:`\lambda` (:math:`d\rho = -e^{-\lambda}d\lambda`) in
  float64. Order ``r + 1`` on any grid; for order 3 the first (order-1) step is redone with the
  linear interpolant once :math:`\hat\epsilon_1` is known (no extra NFE), so the cold start does not
  cap the order at 2.
* iPNDM: :math:`x_t/\alpha_t = x_s/\alpha_s + (\rho_t - \rho_s)\,\epsilon'` with the fixed Adams–Bashforth
  combinations :math:`\epsilon' = \hat\epsilon_0`, :math:`(3\hat\epsilon_0 - \hat\epsilon_{-1})/2`,
  :math:`(23\hat\epsilon_0 - 16\hat\epsilon_{-1} + 5\hat\epsilon_{-2})/12`,
  :math:`(55\hat\epsilon_0 - 59\hat\epsilon_{-1} + 37\hat\epsilon_{-2} - 9\hat\epsilon_{-3})/24`
  (lower orders warm up). The coefficients assume equal steps in ρ; on the usual grids (uniform in
  λ, Karras) the ρ-steps vary smoothly and the order test measures the declared order 2 only:
  the O(Δρ) mismatch of the first-difference weight caps it there.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import SolveContext
from .diffusion import DiffusionSolver, DState, WarmStart, predict_at
from .exponential import lincomb

__all__ = ["DEIS", "IPNDM"]

_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)
_AB = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


class DEIS(DiffusionSolver):
    """tAB-DEIS of ``order`` 1–3 (order 1 is DDIM)."""

    nfe_per_step = 1
    auto_grid = "process"  # benchmarks/defaults.py select, seed 1: 1.59 against 2.16 on logsnr

    def __init__(self, order: int = 3, *, name: str = "deis") -> None:
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        self.order = order
        self.name = name

    def _weights(self, state: DState, nodes: list[float], l_s: float, l_t: float) -> list[float]:
        lam = 0.5 * (l_t + l_s) + 0.5 * (l_t - l_s) * torch.as_tensor(_GL_X, dtype=torch.float64)
        tq = state.process.t_from_log_snr(lam).clamp(state.process.t_min, state.process.T)
        dw = -torch.exp(-lam) * torch.as_tensor(_GL_W, dtype=torch.float64) * (0.5 * (l_t - l_s))
        out = []
        for j, tj in enumerate(nodes):
            ell = torch.ones_like(tq)
            for m, tm in enumerate(nodes):
                if m != j:
                    ell = ell * (tq - tm) / (tj - tm)
            out.append(float((ell * dw).sum()))
        return out

    def advance(self, state: DState, i: int, x: torch.Tensor, ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        sc = state.sched
        eps = predict_at(state, i, x).eps
        if self.order == 3 and i == 1 and len(state.hist) == 1:
            # Warm-up correction (no extra NFE): redo the first, order-1 step with the linear
            # interpolant through eps_0 and eps_1, so the cold start keeps order 3.
            (t0, e0), x0 = state.hist[0], state.carry.x0  # type: ignore[union-attr]
            w0, w1 = self._weights(state, [t0, sc.t[1]], sc.lam[0], sc.lam[1])
            x = lincomb(sc.alpha[1] / sc.alpha[0], x0, sc.alpha[1] * w0, e0, sc.alpha[1] * w1, eps)
        hist = (*state.hist, (sc.t[i], eps))[-self.order:]
        k = self.max_order_at(state, i, min(self.order, len(hist)))
        use = hist[-k:]
        a_t = sc.alpha[i + 1]
        if k == 1:
            x_next = lincomb(a_t / sc.alpha[i], x, a_t * (sc.rho(i + 1) - sc.rho(i)), eps)
        else:
            ws = self._weights(state, [tj for tj, _ in use], sc.lam[i], sc.lam[i + 1])
            terms: list = []
            for w, (_, e) in zip(ws, use, strict=True):
                terms += [a_t * w, e]
            x_next = lincomb(a_t / sc.alpha[i], x, *terms)
        return x_next, state.evolve(hist, WarmStart(x) if i == 0 else None)


class IPNDM(DiffusionSolver):
    """iPNDM: fixed Adams–Bashforth weights (up to 4 previous outputs) on the DDIM form."""

    order = 2
    nfe_per_step = 1
    name = "ipndm"
    auto_grid = "process"  # benchmarks/defaults.py select, seed 1: 1.34 against 1.62 on logsnr

    def advance(self, state: DState, i: int, x: torch.Tensor, ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        sc = state.sched
        eps = predict_at(state, i, x).eps
        hist = (eps, *state.hist)[:4]
        k = self.max_order_at(state, i, len(hist))
        a_t = sc.alpha[i + 1]
        c = a_t * (sc.rho(i + 1) - sc.rho(i))
        terms: list = []
        for w, e in zip(_AB[k - 1], hist, strict=False):
            terms += [c * w, e]
        return lincomb(a_t / sc.alpha[i], x, *terms), state.evolve(hist)



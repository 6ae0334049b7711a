"""Convergence orders of every registered solver on exact references.

ODE: the exact probability-flow map of Gaussian data (``Gaussian.flow_map``) under VP, float64,
data std 0.5 and 2 (not 0 or 1), logSNR-uniform grids from t = 0.5 to t_min with 32..256 steps
(errors 1e-2 .. 1e-10, above round-off): the fitted slope of log error against log step must lie
within 0.3 of the declared ``order``. The solvers come from the registry, so a new one is covered.
SDE: the strong order of ``euler_maruyama`` on one Brownian path refined, and weak orders from the
first two moments of the exact Gaussian marginal.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sdediff as sd
from sdediff import timesteps
from sdediff.analytic import Gaussian
from sdediff.solvers import SOLVERS, DPMSolverMultistep

PROC = sd.VPSDE()
DATA = Gaussian([0.3, -0.5], [0.5, 2.0])
MODEL = DATA.model(PROC)
X = 0.6 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
NS = (32, 64, 128, 256)
T0 = 0.5


def _unique(pred) -> list[str]:
    seen, names = set(), []
    for name, s in SOLVERS.items():
        if pred(s) and id(s) not in seen:
            seen.add(id(s))
            names.append(name)
    return names


# torchdiffeq's adaptive methods cannot be forced onto a fixed grid through the adapter: their
# order is torchdiffeq's tableau, not tested here.
ODE_SOLVERS = _unique(lambda s: not s.stochastic and not (s.adaptive and s.name.startswith("torchdiffeq")))


def fitted_order(solver, ns=NS) -> tuple[float, list[float]]:
    errs = []
    for n in ns:
        ts = timesteps.logsnr(PROC, n, t_start=T0)
        exact = DATA.flow_map(X, ts[0], ts[-1], PROC)
        kw = {}
        if getattr(solver, "adaptive", False):
            # no error control (huge tolerances) and a first step of one grid interval: the
            # controller then steps exactly on the grid, so the underlying pair's order shows
            h0 = float(PROC.log_snr(ts[1]) - PROC.log_snr(ts[0]))
            kw = {"rtol": 1e10, "atol": 1e10, "options": {"h_init": h0}}
        sol = sd.solve(MODEL, X, ts=ts, solver=solver, **kw)
        errs.append(float((sol.x - exact).abs().max()))
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    return float(slope), errs


@pytest.mark.parametrize("name", ODE_SOLVERS)
def test_ode_order(name):
    solver = SOLVERS[name]
    slope, errs = fitted_order(solver)
    print(f"ORDER {name}: declared {solver.order}, fitted {slope:.2f}, errors {errs}")
    assert all(1e-12 < e < 1e-1 for e in errs), errs  # asymptotic regime, above round-off
    assert abs(slope - solver.order) <= 0.3, (name, solver.order, slope, errs)


def test_common_3m_is_second_order_and_true_3m_third():
    common = DPMSolverMultistep(3, third="common", name="x")
    true = DPMSolverMultistep(3, third="true", name="y")
    s_common, _ = fitted_order(common)
    s_true, _ = fitted_order(true)
    assert abs(s_common - 2) <= 0.3 and abs(s_true - 3) <= 0.3
    assert abs(s_common - 3) > 0.3  # declaring the common update third order would fail


class _Planted2M(DPMSolverMultistep):
    """dpm++2m with a planted wrong coefficient (0.4 instead of 1/2 on D_1)."""

    def advance(self, state, i, x, ctx):
        out, st = super().advance(state, i, x, ctx)
        if len(st.hist) == 2:
            sc = state.sched
            h = sc.lam[i + 1] - sc.lam[i]
            (l1, m1), (_, m0) = st.hist
            d1 = (m0 - m1) / ((sc.lam[i] - l1) / h)
            out = out + 0.1 * sc.alpha[i + 1] * math.expm1(-h) * d1
        return out, st


def test_order_check_can_fail():
    planted = _Planted2M(2, name="planted")
    slope, _ = fitted_order(planted)
    assert abs(slope - 2) > 0.3, slope


# ------------------------------------------------------------------------------------------ SDEs
SDE_T0, SDE_T1 = 0.5, 0.01
G1 = Gaussian([0.5], [0.5])
M1 = G1.model(PROC)


def _marginal(t):
    a, s = float(PROC.alpha(t)), float(PROC.sigma(t))
    return a * 0.5, a**2 * 0.25 + s**2


def test_strong_order_euler_maruyama_brownian():
    m, v = _marginal(SDE_T0)
    x = m + math.sqrt(v) * torch.randn(64, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sde = sd.reverse_sde(M1)
    opts = {"noise": "brownian"}

    def run(n):
        ts = timesteps.time_uniform(PROC, n, t_start=SDE_T0, t_end=SDE_T1)
        return sd.solve(sde, x, ts=ts, solver="euler_maruyama", generator=3, options=opts).x

    ref = run(1024)
    ns = (8, 16, 32, 64)
    errs = [float((run(n) - ref).abs().mean()) for n in ns]
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    print(f"STRONG euler_maruyama: fitted {slope:.2f}, errors {errs}")
    assert abs(slope - SOLVERS["euler_maruyama"].strong_order) <= 0.3, (slope, errs)
    # the same check on independent noise per step count cannot show convergence
    errs_bad = [float((sd.solve(sde, x, ts=timesteps.time_uniform(PROC, n, t_start=SDE_T0, t_end=SDE_T1),
                                solver="euler_maruyama", generator=100 + n).x - ref).abs().mean()) for n in ns]
    assert -np.polyfit(np.log(ns), np.log(errs_bad), 1)[0] < 0.5


# Weak orders: tests/convergence/test_weak_order_exact.py checks every stochastic solver's declared
# weak_order from exact moments on a Gaussian target (no Monte Carlo: the schemes are affine there).


def test_pc_moments_close_and_no_order():
    """pc declares order 0: its Langevin bias is set by snr (not by the step), so it has no weak order."""
    assert SOLVERS["pc"].order == 0
    m1, v1 = _marginal(SDE_T1)
    m, v = _marginal(SDE_T0)
    z = torch.randn(50_000, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = m + math.sqrt(v) * (z - z.mean()) / z.std()
    ts = timesteps.logsnr(PROC, 64, t_start=SDE_T0, t_end=SDE_T1)
    var_err = {}
    for snr in (0.02, 0.16):
        y = sd.solve(sd.reverse_sde(M1), x, ts=ts, solver="pc", generator=5, options={"snr": snr}).x
        assert abs(float(y.mean()) - m1) < 0.02
        var_err[snr] = abs(float(y.var()) / v1 - 1)
    # at 64 steps the ancestral predictor's own weak error is ~6% of the variance; the corrector
    # (bias set by snr, not by the step) shifts it: it is active, and the moments stay close
    assert max(var_err.values()) < 0.1 and abs(var_err[0.16] - var_err[0.02]) > 0.005, var_err

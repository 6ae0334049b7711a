"""Issue 10: the adaptive DPM-Solver's error measure and controller, DPM-Solver-fast's order split."""

from __future__ import annotations

import pytest
import torch

import sdediff as sd
from sdediff.bench_targets import TARGETS
from sdediff.solvers import SOLVERS
from sdediff.solvers.base import PIController
from sdediff.solvers.dpm_solver import DPMSolverFast, fast_orders


# ------------------------------------------------------------------------------------ PIController
def test_pi_controller_floors_the_previous_error():
    """A first step with a vanishing error (E_prev = 1e-10) must not cut the next step (Hairer's 1e-4 floor)."""
    c = PIController(3, beta1=1.0, beta2=0.5)
    assert c.accept(0.1, 0.01, 1e-10) == pytest.approx(c.accept(0.1, 0.01, 1e-4))
    assert c.accept(0.1, 0.003, 1e-10) > 0.1
    assert PIController(3, beta1=1.0, beta2=0.5, err_floor=0.0).accept(0.1, 0.003, 1e-10) < 0.05


def test_pi_controller_gains_and_acceptance():
    c = PIController(3, theta=0.9, beta1=1.0, beta2=0.5, accept_err=1.5)
    assert c.accepts(1.4) and not c.accepts(1.6)
    assert PIController(3).accepts(1.0) and not PIController(3).accepts(1.01)
    assert c.accept(1.0, 0.5, 0.5) == pytest.approx(0.9 * 0.5 ** (-1 / 3) * 0.5 ** (0.5 / 3))
    assert c.accept(1.0, 1e-12, 1.0) == pytest.approx(5.0)  # clipped at fac_max
    assert c.reject(1.0, 100.0) == pytest.approx(0.2)  # clipped at fac_min


# ------------------------------------------------------------------------------- adaptive options
def _mix_model():
    t = TARGETS["2d-sharp"]()
    return t, t.model


def test_adaptive_options_are_checked():
    _, m = _mix_model()
    for key, bad in (("scale", "x"), ("prediction", "eps"), ("norm", "l1"), ("h_init", -1.0)):
        with pytest.raises(ValueError, match=key):
            sd.sample(m, (4, 2), solver="dpm_solver_23", generator=0, options={key: bad})


def test_adaptive_tolerance_is_in_data_units():
    """With the error measured in y = x/alpha, the same tolerance gives the same accuracy on two
    processes with the same log-SNR range (a VP process and EDM)."""
    t = TARGETS["2d-sharp"]()
    vp = t.process
    rho_T, rho_min = float(vp.sigma(vp.T) / vp.alpha(vp.T)), float(vp.sigma(vp.t_min) / vp.alpha(vp.t_min))
    edm = sd.EDM(sigma_min=rho_min, sigma_max=rho_T)
    x_T = t.prior(64, generator=3)
    a_T = float(vp.alpha(vp.T))
    out = {}
    for name, proc, x0 in (("vp", vp, x_T), ("edm", edm, x_T / a_T)):
        sol = sd.sample(t.dist.model(proc), (64, 2), solver="dpm_solver_23", x_T=x0, rtol=1e-3, atol=1e-3)
        out[name] = (sol.x, sol.stats.nfe)
    assert abs(out["vp"][1] - out["edm"][1]) <= 6  # the same steps in lambda, up to rounding of t(lambda)
    assert float((out["vp"][0] - out["edm"][0]).abs().max()) < 1e-2


def test_adaptive_noise_prediction_agrees():
    t, m = _mix_model()
    x_T = t.prior(32, generator=1)
    # with the plain final step: the noise-prediction form keeps no data prediction for the extrapolated one
    a = sd.sample(m, (32, 2), solver="dpm_solver_23", x_T=x_T, rtol=1e-5, atol=1e-5, denoise="x0").x
    b = sd.sample(m, (32, 2), solver="dpm_solver_23", x_T=x_T, rtol=1e-5, atol=1e-5,
                  options={"prediction": "noise"}, denoise="x0").x
    assert float((a - b).abs().max()) < 2e-3


def test_adaptive_final_step_extrapolates():
    """The data-prediction adaptive solve keeps a prediction at rho >= sqrt(2) rho(t_min) for the final step:
    the default end differs from the plain x0-hat, and is closer to the sigma = 0 limit (benchmark reference)."""
    from sdediff.benchmarking import _Reference

    t, m = _mix_model()
    x_T = t.prior(64, generator=2)
    ref = _Reference(m, x_T, {}).end(True)
    ext = sd.sample(m, x_T.shape, solver="dpm_solver_23", x_T=x_T, rtol=1e-4, atol=1e-4)
    plain = sd.sample(m, x_T.shape, solver="dpm_solver_23", x_T=x_T, rtol=1e-4, atol=1e-4, denoise="x0")
    assert ext.stats.nfe == plain.stats.nfe
    e_ext, e_plain = (float((s.x - ref).pow(2).mean().sqrt()) for s in (ext, plain))
    assert e_ext < 0.5 * e_plain, (e_ext, e_plain)


# ---------------------------------------------------------------------------------- dpm_solver_fast
@pytest.mark.parametrize("nfe", range(1, 16))
def test_fast_orders_sum_and_end(nfe):
    paper = fast_orders(nfe)
    ours = fast_orders(nfe, last_first_order=True)
    assert sum(paper) == sum(ours) == nfe
    assert len(paper) == nfe // 3 + 1
    assert ours[-1] == 1
    if nfe % 3 != 2:
        assert ours == paper
    assert DPMSolverFast.steps_for_nfe(nfe) == len(ours)


def test_fast_paper_grid_still_gets_the_paper_split():
    t, m = _mix_model()
    ts = sd.timesteps.logsnr(t.process, 2)  # M = 5//3 + 1 = 2 steps: [3, 2]
    sol = sd.solve(m, t.prior(4, generator=0), ts=ts, solver="dpm_solver_fast", options={"nfe": 5})
    assert sol.stats.nfe == 5


def test_fast_error_decreases_from_5_to_6_nfe():
    """The growth that issue 10 found: 5 -> 6 NFE made dpm_solver_fast 9x worse on 2d-sharp (the
    order-2 last step before the denoise). Reference: dpm_solver_3 with 200 logSNR steps."""
    t, m = _mix_model()
    x_T = t.prior(200, generator=0)
    ref = sd.sample(m, (200, 2), solver=SOLVERS["dpm_solver_3"], steps=200, x_T=x_T).x
    err = {k: float((sd.sample(m, (200, 2), solver="dpm_solver_fast", steps=k, x_T=x_T).x - ref).pow(2).mean().sqrt())
           for k in (5, 6)}
    assert err[6] < err[5]
    assert sd.sample(m, (2, 2), solver="dpm_solver_fast", steps=6, generator=0).stats.nfe == 6


def test_fast_budget_is_exact_with_the_new_split():
    _, m = _mix_model()
    for k in (5, 6, 8, 11, 12, 14):
        assert sd.sample(m, (2, 2), solver="dpm_solver_fast", steps=k, generator=0).stats.nfe == k
        assert sd.sample(m, (2, 2), solver="dpm_solver_fast", steps=k, generator=0, denoise=False).stats.nfe == k


def test_fast_wrong_grid_length_names_both_counts():
    t, m = _mix_model()
    ts = torch.cat([sd.timesteps.logsnr(t.process, 5), torch.zeros(1, dtype=torch.float64)])
    with pytest.raises(ValueError, match="steps_for_nfe"):
        sd.solve(m, t.prior(2, generator=0), ts=ts, solver="dpm_solver_fast", options={"nfe": 5})

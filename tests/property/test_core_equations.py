"""Property tests: every shipped process satisfies the equations of docs/theory.md numerically.

For random Gaussian mixtures (dimension 1-8, 1-5 components) and random times in [t_min, T],
the exact marginal log-density p_t of sdediff.analytic must satisfy

* Fokker-Planck with the process's drift f and diffusion g;
* continuity with the probability-flow velocity of the exact model;
* the backward-time Fokker-Planck of the reverse SDE for any eta;

and every linear process must satisfy d log(alpha)/dt = f, d sigma^2/dt = 2 f sigma^2 + g^2.
Each check is paired with a planted error that it must detect.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import sdediff as sd
from sdediff.analytic import GaussianMixture
from sdediff.diagnostics import continuity_residual, fokker_planck_residual

TOL = 1e-6  # relative to the size of the equation's terms
PLANTED = 100 * TOL  # a planted error must give a residual at least 100x the tolerance


def _vp_like_linear_sde() -> sd.LinearSDE:
    # A linear SDE with no closed form: beta(t) = 0.1 + 19.9 t + 3 sin(4 t)^2 (quadrature path).
    def beta(t: torch.Tensor) -> torch.Tensor:
        return 0.1 + 19.9 * t + 3.0 * torch.sin(4.0 * t) ** 2

    return sd.LinearSDE(lambda t: -0.5 * beta(t), lambda t: torch.sqrt(beta(t)))


PROCESSES = {
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(sigma_min=0.01, sigma_max=50.0),
    "edm": lambda: sd.EDM(),
    "cosine": lambda: sd.CosineVPSDE(),
    "rectified_flow": lambda: sd.RectifiedFlow(),
    "discrete_linear": lambda: sd.DiscreteVP(),
    "discrete_cosine": lambda: sd.DiscreteVP(beta_schedule="squaredcos_cap_v2"),
    "linear_sde_quadrature": _vp_like_linear_sde,
}
_CACHE: dict[str, sd.LinearProcess] = {}


def process(name: str) -> sd.LinearProcess:
    if name not in _CACHE:
        _CACHE[name] = PROCESSES[name]()
    return _CACHE[name]


@st.composite
def problems(draw: st.DrawFn):
    """A process, a mixture, a time and points near and far from the modes."""
    name = draw(st.sampled_from(sorted(PROCESSES)))
    p = process(name)
    d = draw(st.integers(1, 8))
    k = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    stds = 0.05 + torch.rand(k, d, generator=g, dtype=torch.float64)
    weights = 0.2 + torch.rand(k, generator=g, dtype=torch.float64)
    gmm = GaussianMixture(means, stds, weights)
    # interior times (the end points of rectified flow and cosine are singular for g^2)
    u = draw(st.floats(0.001, 0.999))
    t = p.t_min + u * (p.T - p.t_min)
    # points: near modes (0.1 std), typical (1 std) and far (5 std)
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = p.alpha(tt), p.sigma(tt)
    comp = torch.randint(k, (12,), generator=g)
    spread = torch.sqrt(a**2 * stds[comp] ** 2 + s**2)
    scale = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64).repeat(4)[:, None]
    x = a * means[comp] + scale * spread * torch.randn(12, d, generator=g, dtype=torch.float64)
    return name, p, gmm, t, x


def _log_p(gmm: GaussianMixture, p: sd.LinearProcess):
    return lambda t, x: gmm.log_prob(t, x, p)


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems())
def test_fokker_planck_holds_for_every_process(prob) -> None:
    name, p, gmm, t, x = prob
    r = fokker_planck_residual(_log_p(gmm, p), p.drift, p.diffusion, t, x)
    assert r.max_relative < TOL, (name, r.max_relative)


@SETTINGS
@given(problems())
def test_probability_flow_satisfies_continuity(prob) -> None:
    name, p, gmm, t, x = prob
    model = gmm.model(p)
    r = continuity_residual(_log_p(gmm, p), sd.probability_flow(model).drift, t, x)
    assert r.max_relative < TOL, (name, r.max_relative)


@SETTINGS
@given(problems(), st.floats(0.0, 2.0))
def test_reverse_sde_keeps_the_forward_marginals(prob, eta) -> None:
    name, p, gmm, t, x = prob
    rev = sd.reverse_sde(gmm.model(p), eta=eta)
    r = fokker_planck_residual(_log_p(gmm, p), rev.drift, lambda tt: eta * p.diffusion(tt), t, x, reverse=True)
    assert r.max_relative < TOL, (name, eta, r.max_relative)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(PROCESSES)), st.floats(0.001, 0.999))
def test_schedule_odes(name: str, u: float) -> None:
    """d log(alpha)/dt = f and d sigma^2/dt = 2 f sigma^2 + g^2, by autograd in float64."""
    p = process(name)
    t = torch.tensor(p.t_min + u * (p.T - p.t_min), dtype=torch.float64, requires_grad=True)
    (dlog_alpha,) = torch.autograd.grad(p.log_alpha(t), t)
    (dvar,) = torch.autograd.grad(p.sigma(t) ** 2, t)
    f, g2, var = p.f(t).detach(), p.g2(t).detach(), p.sigma(t).detach() ** 2
    assert abs(dlog_alpha - f) <= 1e-9 * (1 + abs(f)), name
    assert abs(dvar - (2 * f * var + g2)) <= 1e-8 * (abs(dvar) + abs(2 * f * var) + g2), name
    # the closed-form derivatives agree with autograd too
    (dsigma,) = torch.autograd.grad(p.sigma(t), t)
    assert abs(dsigma - p.d_sigma(t).detach()) <= 1e-8 * (1 + abs(dsigma)), name


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(PROCESSES)), st.floats(0.001, 0.999))
def test_log_snr_inverse(name: str, u: float) -> None:
    p = process(name)
    t = torch.tensor(p.t_min + u * (p.T - p.t_min), dtype=torch.float64)
    assert abs(float(p.t_from_log_snr(p.log_snr(t)) - t)) < 1e-9 * max(1.0, p.T)


@SETTINGS
@given(problems(), st.sampled_from(sorted(sd.PREDICTIONS)))
def test_prediction_conversions_round_trip(prob, prediction: str) -> None:
    """A network predicting any parameterization yields the same score, x0, eps and velocity."""
    name, p, gmm, t, x = prob
    # refused combinations (see test_core_bad_inputs): eps at alpha(T) = 0, x0 at sigma(t_min) = 0
    assume(not (prediction == "eps" and float(p.alpha(p.T)) == 0.0))
    assume(not (prediction == "x0" and float(p.sigma(p.t_min)) == 0.0))
    ref = gmm.model(p, prediction="score").predict(t, x)
    got = gmm.model(p, prediction=prediction).predict(t, x)
    for field in ("score", "x0", "eps", "velocity"):
        a, b = getattr(ref, field), getattr(got, field)
        err = float((a - b).abs().max() / (a.abs().max() + 1e-12))
        assert err < 1e-7, (name, prediction, field, err)
    x0 = gmm.denoiser(t, x, p)
    assert torch.allclose(got.x0, x0, rtol=1e-7, atol=1e-9 * float(x0.abs().max() + 1))


# ------------------------------------------------------------------ the checks can fail
@pytest.mark.parametrize("name", ["vp", "ve", "edm", "cosine", "discrete_linear", "linear_sde_quadrature"])
def test_planted_wrong_drift_or_diffusion_breaks_fokker_planck(name: str) -> None:
    p = process(name)
    gmm = GaussianMixture([[1.0, -1.0], [-2.0, 0.5]], [[0.3, 0.5], [0.6, 0.2]])
    t = p.t_min + 0.4 * (p.T - p.t_min)
    x = gmm.sample(16, generator=0) * 1.5
    ok = fokker_planck_residual(_log_p(gmm, p), p.drift, p.diffusion, t, x).max_relative
    bad_g = fokker_planck_residual(_log_p(gmm, p), p.drift, lambda tt: 1.05 * p.diffusion(tt), t, x).max_relative
    assert ok < TOL
    assert bad_g > PLANTED
    if name not in ("ve", "edm"):  # f = 0 there: scaling it changes nothing, shift it instead
        bad_f = fokker_planck_residual(_log_p(gmm, p), lambda tt, xx: 1.05 * p.drift(tt, xx), p.diffusion, t, x)
    else:
        bad_f = fokker_planck_residual(_log_p(gmm, p), lambda tt, xx: p.drift(tt, xx) + 0.1, p.diffusion, t, x)
    assert bad_f.max_relative > PLANTED


def test_planted_wrong_velocity_breaks_continuity() -> None:
    p = process("vp")
    gmm = GaussianMixture([[1.0, -1.0], [-2.0, 0.5]], 0.4)
    model = gmm.model(p)
    x = gmm.sample(16, generator=1)
    t = 0.3

    def wrong(tt, xx):  # the reverse SDE's drift (factor 1 instead of 1/2 on g^2 s) is not a PF velocity
        return p.drift(tt, xx) - sd._utils.expand_like(p.g2(tt), xx) * model.score(tt, xx)

    assert continuity_residual(_log_p(gmm, p), sd.probability_flow(model).drift, t, x).max_relative < TOL
    assert continuity_residual(_log_p(gmm, p), wrong, t, x).max_relative > PLANTED


def test_planted_wrong_eta_noise_breaks_reverse_consistency() -> None:
    p = process("ve")
    gmm = GaussianMixture([[1.0, -1.0], [-2.0, 0.5]], 0.4)
    rev = sd.reverse_sde(gmm.model(p), eta=1.0)
    x, t = gmm.sample(16, generator=2), 0.5
    good = fokker_planck_residual(_log_p(gmm, p), rev.drift, p.diffusion, t, x, reverse=True)
    # the eta=1 drift with noise of eta=0.5 has other marginals
    bad = fokker_planck_residual(_log_p(gmm, p), rev.drift, lambda tt: 0.5 * p.diffusion(tt), t, x, reverse=True)
    assert good.max_relative < TOL
    assert bad.max_relative > PLANTED


def test_planted_wrong_schedule_derivative_is_detected() -> None:
    class OffVP(sd.VPSDE):
        def f(self, t):  # 1% off
            return 1.01 * super().f(t)

    p = OffVP()
    t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    (dlog_alpha,) = torch.autograd.grad(p.log_alpha(t), t)
    assert abs(dlog_alpha - p.f(t).detach()) > 1e-3
    gmm = GaussianMixture([[1.0]], 0.5)
    x = gmm.sample(8, generator=3)
    assert fokker_planck_residual(_log_p(gmm, p), p.drift, p.diffusion, 0.5, x).max_relative > PLANTED


# --------------------------------------------------------------- generic nonlinear SDE
def _double_well():
    """dx = -grad U dt + sqrt(2) dw with U = (x1^2 - 1)^2 + x2^2 / 2: stationary density exp(-U)/Z."""
    def drift(t, x):
        return torch.stack([-4.0 * x[:, 0] * (x[:, 0] ** 2 - 1.0), -x[:, 1]], 1)

    def log_p(t, x):  # unnormalised (FP is linear; the constant drops out), independent of t
        return -((x[:, 0] ** 2 - 1.0) ** 2 + 0.5 * x[:, 1] ** 2) + 0.0 * t

    return sd.SDE(drift, math.sqrt(2.0), T=10.0), log_p


def test_generic_nonlinear_sde_stationary_density_satisfies_fokker_planck() -> None:
    sde, log_p = _double_well()
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    ok = fokker_planck_residual(log_p, sde.drift, sde.diffusion, 1.0, x)
    assert ok.max_relative < 1e-12
    bad = fokker_planck_residual(log_p, lambda t, xx: 0.9 * sde.drift(t, xx), sde.diffusion, 1.0, x)
    assert bad.max_relative > PLANTED

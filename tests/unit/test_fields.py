"""Force-field API: prior density, kernel sampler, generators, guards, solvers, likelihood, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

import sdediff as sd
from sdediff import fields as F


def _data(m: int = 5, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------- kernel / prior
@pytest.mark.parametrize(("N", "D"), [(1, 1.0), (3, 1.0), (2, 7.0), (5, 300.0)])
def test_kernel_log_prob_is_multivariate_t(N, D):
    """p_r(x|y) is the multivariate Student-t with D degrees of freedom and scale r / sqrt(D) (independent scipy)."""
    r = 2.5
    x = torch.randn(7, N, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    y = torch.full((N,), 0.3, dtype=torch.float64)
    ref = scipy.stats.multivariate_t(loc=y.numpy(), shape=np.eye(N) * r**2 / D, df=D).logpdf(x.numpy())
    got = F.kernel_log_prob(x, r, D, center=y).numpy()
    np.testing.assert_allclose(got, np.atleast_1d(ref), rtol=1e-10, atol=1e-10)
    wrong = scipy.stats.multivariate_t(loc=y.numpy(), shape=np.eye(N) * r**2 / D, df=D + 1).logpdf(x.numpy())
    assert np.abs(got - wrong).max() > 1e-3


def test_prior_log_density_integrates_to_one_and_matches_kernel():
    prior = F.KernelPrior(1.0, 3.0)  # PFGM hemisphere law, N = 1
    total = scipy.integrate.quad(lambda v: math.exp(float(prior.log_prob(torch.tensor([[v]], dtype=torch.float64)))),
                                 -np.inf, np.inf, limit=200)[0]
    assert abs(total - 1.0) < 1e-8
    ode = F.EmpiricalField(_data(), 4.0).ode(r_min=0.1, r_max=30.0)
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(ode.prior_logp(x), F.kernel_log_prob(x, 30.0, 4.0))
    assert F.pfgm_prior(3.0).D == 1.0


def test_large_D_prior_approaches_gaussian():
    D, sigma = 1e6, 2.0
    x = torch.randn(5, 3, dtype=torch.float64) * sigma
    gauss = sd.GaussianPrior(sigma).log_prob(x)
    torch.testing.assert_close(F.KernelPrior(D, sigma * math.sqrt(D)).log_prob(x), gauss, rtol=1e-4, atol=1e-4)
    assert (F.KernelPrior(4.0, sigma * 2.0).log_prob(x) - gauss).abs().max() > 1e-2


def test_sample_kernel_law_and_mean():
    """x = y + R u: centred on y, |x - y|^2 / r^2 ~ beta'(N/2, D/2) (KS), per-sample radii."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3000, 3, generator=g, dtype=torch.float64)
    r = torch.full((3000,), 0.5, dtype=torch.float64)
    x = F.sample_kernel(y, r, 6.0, generator=g)
    s = ((x - y).pow(2).sum(1) / 0.25).numpy()
    assert scipy.stats.kstest(s, scipy.stats.betaprime(1.5, 3.0).cdf).pvalue > 1e-3
    assert scipy.stats.kstest(s, scipy.stats.betaprime(1.5, 4.5).cdf).pvalue < 1e-3


def test_no_nan_when_B_to_1_or_r_to_0():
    y = _data(m=64, n=3)
    # D -> 0: B ~ Beta(N/2, D/2) piles up at 1, chi2_D underflows toward 0
    x = F.sample_kernel(y, 1.0, 1e-3, generator=0)
    assert torch.isfinite(x).all()
    x0 = F.sample_kernel(y, 0.0, 2.0, generator=0)
    torch.testing.assert_close(x0, y)
    assert torch.isfinite(F.sample_kernel(y, 1e-300, 1.0, generator=0)).all()
    field = F.EmpiricalField(y, 1.0)
    for r in (1e-12, 1e-200):
        assert torch.isfinite(field.velocity(r, y)).all()  # exactly on the charges
        assert torch.isfinite(field.velocity(r, y + 1e-3)).all()
    assert torch.isfinite(F.EmpiricalField(y, 1e6).velocity(1e-9, y + 0.1)).all()  # exponent (N+D)/2 = 5e5


def test_no_global_rng_and_reproducible():
    y = _data(m=4)
    ode = F.EmpiricalField(y, 3.0).ode(r_min=0.01, r_max=10.0)
    state = torch.get_rng_state()
    a = ode.prior_sample((6, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    k = F.sample_kernel(y, 0.3, 3.0, generator=torch.Generator().manual_seed(7))
    t = F.field_target(k, 0.3, y, 3.0)
    sd.solve(ode, a, t0=ode.T, t1=ode.t_min)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a, ode.prior_sample((6, 2), generator=7, dtype=torch.float64))
    assert torch.isfinite(t).all()
    # one generator per sample: sample k of a batch equals the batch-of-1 draw
    batch = F.sample_kernel(y, 0.3, 3.0, generator=[1, 2, 3, 4])
    torch.testing.assert_close(batch[2:3], F.sample_kernel(y[2:3], 0.3, 3.0, generator=[3]), rtol=0, atol=0)


# ---------------------------------------------------------------------------------- ODE and solvers
def test_time_variables_agree_and_fixed_step_solver():
    data = _data()
    field = F.EmpiricalField(data, 16.0)
    x = F.KernelPrior(16.0, 20.0).sample((8, 2), generator=3, dtype=torch.float64)
    ode_r = field.ode(r_min=0.05, r_max=20.0, time="r")
    ode_l = field.ode(r_min=0.05, r_max=20.0, time="log_r")
    a = sd.solve(ode_r, x, t0=ode_r.T, t1=ode_r.t_min, rtol=1e-8, atol=1e-8)
    b = sd.solve(ode_l, x, t0=ode_l.T, t1=ode_l.t_min, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(a.x, b.x, rtol=1e-5, atol=1e-5)
    assert a.stats.nfe > 0 and a.stats.nfe == ode_r.nfe
    c = sd.solve(ode_l, x, ts=ode_l.ts(60), solver="torchdiffeq:rk4")
    torch.testing.assert_close(c.x, b.x, rtol=1e-3, atol=1e-3)
    assert (sd.solve(ode_l, x, ts=ode_l.ts(3), solver="torchdiffeq:euler").x - b.x).abs().max() > 1e-2


def test_network_field_with_exact_target_follows_the_empirical_field():
    """A 'network' that returns PFGM's normalized target (sqrt(N) E/|E|) drives the same ODE."""
    data = _data()
    net = lambda x, r: F.field_target(x, r, data, 1.0)  # noqa: E731
    target = net(torch.randn(3, 2, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert target.shape == (3, 3)
    torch.testing.assert_close(target.norm(dim=1), torch.full((3,), math.sqrt(2), dtype=torch.float64))
    assert (target[:, -1] > 0).all()
    x = torch.randn(6, 2, dtype=torch.float64) * 3
    r = torch.full((6,), 0.7, dtype=torch.float64)
    exact = F.EmpiricalField(data, 1.0).velocity(r, x)
    torch.testing.assert_close(F.NetworkField(net, 1.0).velocity(r, x), exact)
    tup = F.NetworkField(lambda x, r: F.EmpiricalField(data, 1.0).field(r, x), 1.0)
    torch.testing.assert_close(tup.velocity(r, x), exact)


def test_log_likelihood_of_one_charge_is_the_kernel():
    """One charge at 0: the flow is exact and the prior is exactly p_{r_max}, so log p = log p_{r_min}(x | 0)."""
    likelihood = pytest.importorskip("sdediff.likelihood")
    D, r_min, r_max = 3.0, 0.2, 50.0
    ode = F.EmpiricalField(torch.zeros(1, 2, dtype=torch.float64), D).ode(r_min=r_min, r_max=r_max, time="log_r")
    x = 0.3 * torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = likelihood.log_likelihood(ode, x, rtol=1e-8, atol=1e-8)
    logp = res.logp if hasattr(res, "logp") else res
    torch.testing.assert_close(logp, F.kernel_log_prob(x, r_min, D), rtol=1e-5, atol=1e-5)
    assert (logp - F.kernel_log_prob(x, r_min, D + 1)).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("D", [0, -1.0, math.inf, math.nan])
def test_bad_D(D):
    with pytest.raises(ValueError, match="D"):
        F.EmpiricalField(_data(), D)
    with pytest.raises(ValueError, match="D"):
        F.KernelPrior(D, 1.0)


def test_bad_inputs_name_the_argument():
    data = _data()
    field = F.EmpiricalField(data, 2.0)
    with pytest.raises(TypeError, match="D"):
        F.EmpiricalField(data, "2")
    with pytest.raises(ValueError, match="r_min < r_max"):
        field.ode(r_min=5.0, r_max=5.0)
    with pytest.raises(ValueError, match="r_min"):
        field.ode(r_min=0.0, r_max=5.0)
    with pytest.raises(ValueError, match="r_max"):
        F.KernelPrior(2.0, -1.0)
    with pytest.raises(ValueError, match="time"):
        field.ode(r_min=0.1, r_max=5.0, time="sigma")
    with pytest.raises(TypeError, match="field"):
        F.ForceFieldODE(lambda r, x: x, r_min=0.1, r_max=1.0)
    with pytest.raises(TypeError, match="prior"):
        field.ode(r_min=0.1, r_max=5.0, prior=object())
    with pytest.raises(ValueError, match="x must have shape"):
        field.velocity(1.0, torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="r must be"):
        field.velocity(torch.ones(2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="data"):
        F.EmpiricalField(torch.zeros(0, 2), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        F.EmpiricalField(torch.tensor([[math.nan, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="weights"):
        F.EmpiricalField(data, 1.0, weights=-torch.ones(5))
    with pytest.raises(ValueError, match="generators"):
        F.sample_kernel(data, 0.5, 2.0, generator=[1, 2])
    with pytest.raises(ValueError, match="r must be"):
        F.sample_kernel(data, -0.5, 2.0, generator=1)
    with pytest.raises(ValueError, match="E_x of shape"):
        F.FieldFunction(lambda r, x: (x[:, :1], r), 1.0).velocity(1.0, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="pair"):
        F.FieldFunction(lambda r, x: x, 1.0).velocity(1.0, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="net"):
        F.NetworkField(lambda x, r: x, 1.0).velocity(1.0, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="denoiser"):
        F.DenoiserField(lambda s, x: x[:, :1], 4.0).velocity(1.0, torch.zeros(3, 2))
    with pytest.raises(TypeError, match="denoiser"):
        F.DenoiserField(3, 4.0)
    with pytest.raises(ValueError, match="x must"):
        F.check_poisson_continuity(field, data, 1.0, torch.zeros(3, 2, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="r must be"):
        F.check_poisson_continuity(field, data, 0.0, torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="steps"):
        field.ode(r_min=0.1, r_max=5.0).ts(0)
    ode = field.ode(r_min=0.1, r_max=5.0)
    with pytest.raises(ValueError, match="t_min, T"):
        sd.solve(ode, torch.zeros(2, 2, dtype=torch.float64), t0=6.0, t1=0.1)


def test_exported():
    assert sd.fields is F
    assert "fields" in sd.__all__
    for name in F.__all__:
        assert hasattr(F, name)

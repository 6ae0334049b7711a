"""Force-field ODEs (PFGM / PFGM++): sampling lands on the data, D -> inf recovers EDM, prior law."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

import sdediff as sd
from sdediff import fields as F

RADIUS = 1e-2  # "landed": within this distance of a data point


def _data(m: int = 8, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _landing_rate(field: F.ForceField, data: torch.Tensor, r_min: float, r_max: float, n: int = 200) -> float:
    ode = field.ode(r_min=r_min, r_max=r_max, time="log_r")
    x = ode.prior_sample((n, data.shape[1]), generator=1, dtype=torch.float64)
    sol = sd.solve(ode, x, t0=ode.T, t1=ode.t_min, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(sol.x).all()
    return float((torch.cdist(sol.x, data).min(1).values < RADIUS).double().mean())


# r_min per D: at radius r the kernel's tail is P(|x - y| > rho) ~ (r / rho)^D (beta-prime(N/2, D/2)), so the
# heavy-tailed D = 1 field needs r_min << RADIUS / 100 to put 99% of the mass within RADIUS.
@pytest.mark.parametrize(("D", "r_min", "r_max"), [(1, 1e-5, 40.0), (128, 1e-3, 10.0 * math.sqrt(128))])
def test_empirical_field_lands_on_data(D, r_min, r_max):
    data = _data()
    rate = _landing_rate(F.EmpiricalField(data, D), data, r_min, r_max)
    print(f"landing rate D={D}: {rate:.3f}")
    assert rate >= 0.99


class _HalfSpeed(F.ForceField):
    """Planted error: half the field's velocity; trajectories stop short of the data."""

    def __init__(self, inner: F.ForceField) -> None:
        self.inner, self.D = inner, inner.D

    def velocity(self, r, x):
        return 0.5 * self.inner.velocity(r, x)


def test_landing_check_can_fail():
    data = _data()
    rate = _landing_rate(_HalfSpeed(F.EmpiricalField(data, 128)), data, 1e-3, 10.0 * math.sqrt(128), n=50)
    assert rate < 0.5


def test_landing_distribution_matches_data_weights():
    """From the exact p_{r_max} (kernel around a data point drawn by weight) the flow is exact, so the
    landing frequencies follow the charges' weights (chi-square test)."""
    data = _data(m=4)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    field = F.EmpiricalField(data, 8, weights=w)
    ode = field.ode(r_min=1e-3, r_max=3.0, time="log_r")
    g = torch.Generator().manual_seed(3)
    n = 400
    idx = torch.multinomial(w, n, replacement=True, generator=g)
    x = F.sample_kernel(data[idx], 3.0, 8, generator=g)
    sol = sd.solve(ode, x, t0=ode.T, t1=ode.t_min, rtol=1e-6, atol=1e-6)
    land = torch.cdist(sol.x, data).argmin(1)
    counts = torch.bincount(land, minlength=4).double()
    p_ok = scipy.stats.chisquare(counts.numpy(), (n * w).numpy()).pvalue
    p_uniform = scipy.stats.chisquare(counts.numpy(), torch.full((4,), n / 4.0).numpy()).pvalue
    assert p_ok > 1e-3
    assert p_uniform < 1e-3  # the test can tell a wrong law


def _trajectory_gap(D: float, data: torch.Tensor, x: torch.Tensor, sig: torch.Tensor, ref: torch.Tensor) -> float:
    ode = F.EmpiricalField(data, D).ode(r_min=float(sig[-1]) * math.sqrt(D), r_max=float(sig[0]) * math.sqrt(D),
                                        time="log_r")
    ts = torch.log(sig * math.sqrt(D))
    ts[0], ts[-1] = ode.T, ode.t_min
    sol = sd.solve(ode, x, ts=ts, rtol=1e-8, atol=1e-8)
    return float((sol.xs - ref).norm(dim=-1).max())


def test_pfgmpp_approaches_edm_as_D_grows():
    """Exact PFGM++ field of a point set vs the exact EDM PF-ODE of the same points, same start x at sigma_max,
    compared along the trajectory at matching sigma = r / sqrt(D)."""
    data = _data(m=6)
    edm = sd.EDM(sigma_min=0.1, sigma_max=5.0)
    model = sd.analytic.GaussianMixture(data, stds=1e-8).model(edm, prediction="x0")
    x = 5.0 * torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sig = torch.tensor([5.0, 2.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    ref = sd.solve(model, x, ts=sig, rtol=1e-8, atol=1e-8).xs
    gaps = [_trajectory_gap(D, data, x, sig, ref) for D in (1e2, 1e4, 1e6)]
    print("max |x_PFGM++ - x_EDM| for D = 1e2, 1e4, 1e6:", gaps)
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-3 * gaps[0]  # O(1/D): two orders of D give ~ four orders of gap
    assert gaps[0] > 1e-3  # D = 100 is visibly not EDM: the comparison can fail


def test_denoiser_field_is_the_edm_ode_for_any_D():
    """dx/dr = (x - D(x, r/sqrt D))/r with an EDM denoiser is the EDM ODE reparametrized by r = sigma sqrt(D)."""
    data = _data(m=3)
    edm = sd.EDM(sigma_min=0.1, sigma_max=5.0)
    model = sd.analytic.GaussianMixture(data, stds=0.3).model(edm)
    x = 5.0 * torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = sd.solve(model, x, ts=[5.0, 0.1], rtol=1e-8, atol=1e-8).x
    for D in (1.0, 64.0):
        ode = F.DenoiserField(model, D).ode(r_min=0.1 * math.sqrt(D), r_max=5.0 * math.sqrt(D))
        out = sd.solve(ode, x, t0=ode.T, t1=ode.t_min, rtol=1e-8, atol=1e-8).x
        assert (out - ref).abs().max() < 1e-5
    wrong = F.DenoiserField(lambda s, y: model.x0(s, y) * 0.9, 64.0).ode(r_min=0.8, r_max=40.0)
    assert (sd.solve(wrong, x, t0=wrong.T, t1=wrong.t_min, rtol=1e-6, atol=1e-6).x - ref).abs().max() > 1e-2


@pytest.mark.parametrize(("N", "D"), [(3, 1.0), (2, 5.0), (4, 128.0)])
def test_prior_radius_ks_beta_prime(N, D):
    r_max = 7.0
    x = F.KernelPrior(D, r_max).sample((2000, N), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    s = (x.pow(2).sum(1) / r_max**2).numpy()  # |x|^2 / r^2 ~ beta'(N/2, D/2)
    assert scipy.stats.kstest(s, scipy.stats.betaprime(N / 2, D / 2).cdf).pvalue > 1e-3
    assert scipy.stats.kstest(s, F.radius_law(N, D, 1.0).cdf).pvalue > 1e-3
    assert scipy.stats.kstest(s, scipy.stats.betaprime(N / 2, 0.75 * D).cdf).pvalue < 1e-3  # wrong law rejected

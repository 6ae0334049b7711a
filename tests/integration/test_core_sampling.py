"""Sampling end to end: from the prior, through the PF-ODE or the reverse SDE, back to the data.

Tolerances are statistical: with n samples, a mode's mass has standard error sqrt(w(1-w)/n),
a mode's mean s/sqrt(n_k) and its std about s/sqrt(2 n_k); we allow 4.5 standard errors
(a false alarm rate below 1e-5 per comparison), compared against the exact marginal at t_min
(where the solve ends), so the solver is the only source of bias.
"""

from __future__ import annotations

import math

import pytest
import torch

import sdediff as sd
from sdediff.analytic import Gaussian, GaussianMixture

N = 4000
Z = 4.5
GMM = GaussianMixture(
    means=[[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]],
    stds=[[0.30, 0.20], [0.25, 0.35], [0.30, 0.30]],
    weights=[0.5, 0.3, 0.2],
)


def check_mixture(x: torch.Tensor, process: sd.LinearProcess, t: float) -> None:
    """Per-mode mass, mean and std of samples against the exact marginal p_t."""
    n = x.shape[0]
    assert bool(torch.isfinite(x).all())
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = float(process.alpha(tt)), float(process.sigma(tt))
    means = a * GMM.means
    stds = torch.sqrt(a**2 * GMM.stds**2 + s**2)
    k = torch.cdist(x, means).argmin(1)
    for j in range(GMM.n_components):
        w = float(GMM.weights[j])
        xj = x[k == j]
        nj = xj.shape[0]
        assert abs(nj / n - w) < Z * math.sqrt(w * (1 - w) / n), (j, nj / n, w)
        se_mean = stds[j] / math.sqrt(nj)
        assert bool(((xj.mean(0) - means[j]).abs() < Z * se_mean).all()), (j, xj.mean(0), means[j])
        se_std = stds[j] / math.sqrt(2 * nj)
        assert bool(((xj.std(0) - stds[j]).abs() < Z * se_std).all()), (j, xj.std(0), stds[j])


PROCS = {"vp": sd.VPSDE, "ve": sd.VESDE, "edm": sd.EDM}


@pytest.mark.parametrize("name", sorted(PROCS))
def test_probability_flow_reproduces_the_mixture(name: str) -> None:
    p = PROCS[name]()
    x_T = p.prior_sample((N, 2), generator=11, dtype=torch.float64)
    sol = sd.solve(sd.probability_flow(GMM.model(p)), x_T, ts=[p.T, p.t_min], solver="dopri5", rtol=1e-7, atol=1e-7)
    check_mixture(sol.x, p, p.t_min)


@pytest.mark.parametrize("name,solver,steps", [("vp", "torchsde:euler", 1000), ("ve", "srk", 200),
                                               ("edm", "torchsde:euler", 1000)])
def test_reverse_sde_reproduces_the_mixture(name: str, solver: str, steps: int) -> None:
    p = PROCS[name]()
    x_T = p.prior_sample((N, 2), generator=12, dtype=torch.float64)
    # EDM's g^2 = 2t is largest at sigma_max: step uniformly in log-time there (grid of save times)
    ts = (torch.logspace(math.log10(p.T), math.log10(p.t_min), steps + 1, dtype=torch.float64)
          if name == "edm" else [p.T, p.t_min])
    sol = sd.solve(sd.reverse_sde(GMM.model(p)), x_T, ts=ts, solver=solver,
                   steps=None if name == "edm" else steps, generator=13)
    check_mixture(sol.x, p, p.t_min)


def test_the_mixture_check_can_fail() -> None:
    """A planted wrong score (scaled by 0.8: too little contraction) fails the same check."""
    p = sd.VPSDE()
    good = GMM.model(p)
    bad = sd.DiffusionModel(lambda x, t: 0.8 * GMM.score(t, x, p), p, "score", time_label=lambda t: t)
    x_T = p.prior_sample((N, 2), generator=11, dtype=torch.float64)
    check_mixture(sd.solve(good, x_T, ts=[p.T, p.t_min], rtol=1e-7, atol=1e-7).x, p, p.t_min)
    with pytest.raises(AssertionError):
        check_mixture(sd.solve(bad, x_T, ts=[p.T, p.t_min], rtol=1e-7, atol=1e-7).x, p, p.t_min)


# DiscreteVP is left out: its log(alpha) is piecewise linear, so f jumps at the 1/N knots and a
# tolerance of 1e-10 makes an adaptive solver resolve every kink; its equations are checked
# pointwise in tests/property and its solvers are tested on their own grid (the knots).
@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "edm", "cosine", "rf"])
def test_pf_ode_of_a_gaussian_matches_the_closed_form_map(name: str) -> None:
    p = {"vp": sd.VPSDE, "subvp": sd.SubVPSDE, "ve": sd.VESDE, "edm": sd.EDM, "cosine": sd.CosineVPSDE,
         "rf": sd.RectifiedFlow}[name]()
    g = Gaussian([0.7, -1.3, 0.2], [0.4, 1.7, 0.9])
    x_T = p.prior_sample((64, 3), generator=5, dtype=torch.float64)
    ts = torch.linspace(p.T, p.t_min, 5, dtype=torch.float64)
    sol = sd.solve(g.model(p), x_T, ts=ts, solver="dopri8", rtol=1e-10, atol=1e-10)
    for i, t in enumerate(ts):
        exact = g.flow_map(x_T, p.T, t, p)
        assert float((sol.xs[i] - exact).abs().max()) < 1e-6, (name, float(t))
    # and back: encoding (increasing grid) inverts sampling
    back = sd.solve(g.model(p), sol.x, ts=ts.flip(0), solver="dopri8", rtol=1e-10, atol=1e-10)
    assert float((back.x - x_T).abs().max()) < 1e-6


def test_generic_nonlinear_sde_reaches_its_stationary_density() -> None:
    """dx = -grad U dt + sqrt(2) dw, U = (x1^2 - 1)^2 + x2^2/2: moments of exp(-U)/Z by quadrature."""
    def drift(t, x):
        return torch.stack([-4.0 * x[:, 0] * (x[:, 0] ** 2 - 1.0), -x[:, 1]], 1)

    sde = sd.SDE(drift, math.sqrt(2.0), T=8.0)
    x0 = torch.zeros(N, 2, dtype=torch.float64)
    sol = sd.solve(sde, x0, ts=[0.0, sde.T], solver="torchsde:euler", dt=2e-3, generator=21)
    x = sol.x
    u = torch.linspace(-4, 4, 20001, dtype=torch.float64)
    w = torch.exp(-((u**2 - 1) ** 2))
    m2 = float((u**2 * w).sum() / w.sum())
    m4 = float((u**4 * w).sum() / w.sum())
    for est, exact, var in ((x[:, 0].pow(2).mean(), m2, m4 - m2**2), (x[:, 0].pow(4).mean(), m4, None),
                            (x[:, 1].pow(2).mean(), 1.0, 2.0)):
        var = var if var is not None else float(x[:, 0].pow(4).var())
        assert abs(float(est) - exact) < Z * math.sqrt(var / N), (float(est), exact)
    # symmetric wells: equal mass on both sides
    assert abs(float((x[:, 0] > 0).double().mean()) - 0.5) < Z * 0.5 / math.sqrt(N)

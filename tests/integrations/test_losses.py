"""Denoising score matching: the minimiser is the exact score (closed form, Gaussian data) for every
weighting; importance sampling of t; a 2-D mixture trained with it samples the right mode masses."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

import sdediff as sd
from sdediff import losses

DATA = sd.analytic.Gaussian([0.7, -0.4], [0.5, 0.3])
N_PER_T = 20000


# (weighting, process, prediction, the fixed training times): each weighting in its own
# parameterization, plus weightings that are not the network's own MSE (same minimiser)
CASES = [
    ("eps", sd.VPSDE(), "eps", (0.2, 0.5, 0.9)),
    ("song", sd.VPSDE(), "score", (0.2, 0.5, 0.9)),
    ("likelihood", sd.VPSDE(), "score", (0.2, 0.5, 0.9)),
    ("x0", sd.VPSDE(), "x0", (0.2, 0.5, 0.9)),
    ("edm", sd.EDM(), "x0", (0.3, 1.0, 5.0)),
    ("v", sd.VPSDE(), "v", (0.2, 0.5, 0.9)),
    ("flow", sd.RectifiedFlow(t_min=1e-3), "velocity", (0.2, 0.5, 0.8)),
    ("edm", sd.VPSDE(), "eps", (0.2, 0.5, 0.9)),
    ("flow", sd.VPSDE(), "v", (0.2, 0.5, 0.9)),
]


class PerTimeLinear:
    """raw = a_k * x + b_k at the k-th training time (the exact raw output is of this form), with
    theta = (a, b) flattened, so that the loss is a quadratic function of theta."""

    def __init__(self, times):
        self.times = torch.tensor(times, dtype=torch.float64)
        self.theta = torch.zeros(4 * len(times), dtype=torch.float64)

    def ab(self, theta=None):
        th = (self.theta if theta is None else theta).reshape(2, len(self.times), 2)
        return th[0], th[1]

    def __call__(self, x, t):
        a, b = self.ab()
        k = (t[:, None] - self.times[None, :]).abs().argmin(1)
        return a[k] * x + b[k]


def _fit(weighting, process, prediction, times, data):
    """The exact minimiser of the (quadratic) empirical loss: theta* = -H^-1 grad at 0, by autograd."""
    net = PerTimeLinear(times)
    n = N_PER_T * len(times)
    t_fixed = torch.tensor(times, dtype=torch.float64).repeat_interleave(N_PER_T)
    g = torch.Generator().manual_seed(0)
    x0 = data.sample(n, generator=g)
    seed = int(torch.randint(0, 2**31, (1,), generator=g))

    def loss(theta):
        net.theta = theta  # the same draws at every evaluation: a fixed quadratic in theta
        return losses.dsm_loss(net, x0, process=process, prediction=prediction, weighting=weighting,
                               t_sampler=lambda m, gen: t_fixed, generator=seed)

    zero = torch.zeros_like(net.theta)
    grad = torch.autograd.functional.jacobian(loss, zero)
    hess = torch.autograd.functional.hessian(loss, zero)
    return net.ab(-torch.linalg.solve(hess, grad))


def _exact_coefficients(process, prediction, times, data):
    exact = data.model(process, prediction=prediction)
    a, b = [], []
    for t in times:
        zero, one = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
        r0, r1 = exact.raw(t, zero)[0], exact.raw(t, one)[0]
        a.append(r1 - r0)
        b.append(r0)
    return torch.stack(a), torch.stack(b)


@pytest.mark.parametrize(("weighting", "process", "prediction", "times"), CASES,
                         ids=[f"{c[0]}-{type(c[1]).__name__}-{c[2]}" for c in CASES])
def test_minimiser_is_the_exact_score(weighting, process, prediction, times):
    """Tolerance: 0.03 (1 + |coefficient|), several standard errors of a least-squares fit on
    20000 draws per time; the exact coefficients of a Gaussian with a 20% wider std are outside it."""
    fit_a, fit_b = _fit(weighting, process, prediction, times, DATA)
    a, b = _exact_coefficients(process, prediction, times, DATA)
    tol_a, tol_b = 0.03 * (1 + a.abs()), 0.03 * (1 + b.abs())
    assert bool(((fit_a - a).abs() < tol_a).all()), (fit_a, a)
    assert bool(((fit_b - b).abs() < tol_b).all()), (fit_b, b)
    wider = sd.analytic.Gaussian([0.7, -0.4], [0.6, 0.36])
    a_w, _ = _exact_coefficients(process, prediction, times, wider)
    assert bool(((fit_a - a_w).abs() > tol_a).any())  # the check resolves a wrong data law


@pytest.mark.parametrize("sampler", ["logsnr", "lognormal"])
def test_importance_weights_integrate_to_the_interval_length(sampler):
    """E_p[1{t in A} / p(t)] = |A| when p is the sampler's density: checks the density itself. A is the
    whole range for logsnr; for lognormal (heavy-tailed weights, where ln rho is 5 std away) the times
    where ln rho lies within 2 std of its mean -1.2."""
    for process in (sd.VPSDE(), sd.EDM(), sd.CosineVPSDE()):
        t, dens = losses.sample_t(process, 400_000, sampler, generator=0)
        assert bool(((t >= process.t_min) & (t <= process.T)).all())
        if sampler == "logsnr":
            lo, hi = process.t_min, process.T
        else:
            ends = process.t_from_log_snr(torch.tensor([1.2 + 2.4, 1.2 - 2.4], dtype=torch.float64))
            lo, hi = (float(v) for v in ends.clamp(process.t_min, process.T))
        inside = (t >= lo) & (t <= hi)
        estimate = float((inside / dens).mean())
        assert abs(estimate / (hi - lo) - 1.0) < 0.02, (process, estimate, hi - lo)
        # planted wrong: the density without its Jacobian |dlambda/dt| is another function
        wrong = float((inside / (dens / losses._dlam_dt(process, t))).mean())
        assert abs(wrong / (hi - lo) - 1.0) > 0.1


def test_importance_sampling_estimates_the_uniform_objective():
    process = sd.VPSDE()
    model = DATA.model(process, prediction="eps")
    noisy = sd.DiffusionModel(lambda x, t: model.net(x, t) + 0.3, process, "eps")  # a model with a loss > 0
    x0 = DATA.sample(200_000, generator=torch.Generator().manual_seed(1))
    uniform = float(losses.dsm_loss(noisy, x0, generator=2))
    weighted = float(losses.dsm_loss(noisy, x0, t_sampler="logsnr", importance=True, generator=3))
    plain = float(losses.dsm_loss(noisy, x0, t_sampler="logsnr", generator=3))
    assert abs(weighted - uniform) < 0.03 * uniform
    assert abs(plain - uniform) > 0.1 * uniform  # without the weights: another objective


def test_dsm_loss_conventions_and_bad_inputs():
    proc = sd.DiscreteVP()
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    labels = []

    def net(x, t):
        labels.append(t.clone())
        return torch.zeros_like(x)

    per = losses.dsm_loss(net, x0, process=proc, prediction="epsilon", generator=0, reduction="none")
    assert per.shape == (8,)
    assert torch.equal(labels[0], labels[0].round())  # DiscreteVP trains on diffusers' integer labels
    # eps-loss of a zero network is E|eps|^2 per dimension; same draws for the same seed
    assert torch.equal(per, losses.dsm_loss(net, x0, process=proc, prediction="eps", generator=0, reduction="none"))
    xt, eps = losses.add_noise(proc, x0, torch.full((8,), 0.5, dtype=torch.float64), generator=0)
    assert torch.allclose(xt, proc.alpha(0.5).float() * x0 + proc.sigma(0.5).float() * eps)
    with pytest.raises(ValueError, match="process= and prediction="):
        losses.dsm_loss(net, x0)
    with pytest.raises(ValueError, match="unknown weighting 'l2'"):
        losses.dsm_loss(net, x0, process=proc, prediction="eps", weighting="l2")
    with pytest.raises(ValueError, match="importance=True needs a t_sampler with a density"):
        losses.dsm_loss(net, x0, process=proc, prediction="eps", importance=True)
    with pytest.raises(ValueError, match="unknown t_sampler 'beta'"):
        losses.dsm_loss(net, x0, process=proc, prediction="eps", t_sampler="beta")


def _example():
    path = pathlib.Path(__file__).parents[2] / "examples" / "train_2d.py"
    spec = importlib.util.spec_from_file_location("train_2d", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_trained_mixture_has_falling_loss_and_the_mode_masses():
    """300 Adam steps of examples/train_2d.py; mode masses of 2000 dpm++2m samples within 0.07 of the
    weights (0.2, 0.3, 0.5): model error after a short training plus ±0.011 sampling std."""
    ex = _example()
    model, hist = ex.train(300)
    first, last = sum(hist[:50]) / 50, sum(hist[-50:]) / 50
    assert last < 0.75 * first
    with torch.no_grad():
        x = sd.sample(model, (2000, 2), solver="dpm++2m", steps=12, generator=1).x
    masses = ex.mode_masses(x)
    assert max(abs(m - w) for m, w in zip(masses, ex.WEIGHTS, strict=True)) < 0.07, masses
    untrained, _ = ex.train(1)  # planted wrong: an untrained net misses the masses
    with torch.no_grad():
        y = sd.sample(untrained, (2000, 2), solver="dpm++2m", steps=12, generator=1).x
    assert max(abs(m - w) for m, w in zip(ex.mode_masses(y), ex.WEIGHTS, strict=True)) > 0.07

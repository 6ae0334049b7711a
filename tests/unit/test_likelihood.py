"""Log-likelihood through the probability-flow ODE: exact targets, estimators, bits/dim, gradients, bad input.

References are closed forms in float64 (Gaussian-mixture marginals, linear ODEs); every check has a
companion that must fail (a planted wrong score, a wrong offset).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import sdediff as sd
from sdediff.analytic import Gaussian, GaussianMixture

TOL = dict(rtol=1e-9, atol=1e-9)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny float64 tensors: one thread avoids OpenMP spin-waits on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gmm() -> GaussianMixture:
    return GaussianMixture([[-1.0, 0.5], [1.2, -0.3]], [[0.3, 0.5], [0.4, 0.2]], [0.4, 0.6])


def _exact_prior(gmm: GaussianMixture, process):
    """The exact log p_T of the target (the process's default prior is only approximately p_T)."""
    return lambda z: gmm.log_prob(process.T, z, process)


PROCESSES = {"VP": sd.VPSDE, "VE": sd.VESDE, "EDM": sd.EDM}


# ------------------------------------------------------------------------------------ exact values
@pytest.mark.parametrize("name", list(PROCESSES))
def test_exact_divergence_matches_closed_form(name):
    process = PROCESSES[name]()
    gmm = _gmm()
    x = gmm.sample(4, generator=0)
    res = sd.log_likelihood(gmm.model(process), x, prior_logp=_exact_prior(gmm, process), **TOL)
    ref = gmm.log_prob(process.t_min, x, process)
    assert res.logp.shape == (4,) and res.logp.dtype == torch.float64
    assert (res.logp - ref).abs().max() < 1e-4
    assert res.nfe > 0
    torch.testing.assert_close(res.logp, res.prior_logp + res.delta_logp)


def test_planted_wrong_score_gives_a_large_error():
    process = sd.VPSDE()
    gmm = _gmm()
    wrong = GaussianMixture(gmm.means + 0.2, gmm.stds, gmm.weights)  # the score of another mixture
    x = gmm.sample(4, generator=0)
    res = sd.log_likelihood(wrong.model(process), x, prior_logp=_exact_prior(gmm, process), **TOL)
    assert (res.logp - gmm.log_prob(process.t_min, x, process)).abs().max() > 0.1


def test_default_prior_matches_the_gaussian_pushforward():
    """With the process's own prior N(0, I) the answer is the density of the pushforward of that prior,
    known in closed form for Gaussian data (affine flow map): log pi(z) + sum_i 1/2 log(v_T / v_tmin)."""
    process = sd.VPSDE()
    g = Gaussian([0.8, -0.5], [0.3, 0.6])
    x = g.sample(3, generator=1)
    res = sd.log_likelihood(g.model(process), x, **TOL)

    def var(t):
        return process.alpha(t) ** 2 * g.stds[0] ** 2 + process.sigma(t) ** 2

    z = g.flow_map(x, process.t_min, process.T, process)
    ref = process.prior_logp(z) + 0.5 * torch.log(var(process.T) / var(process.t_min)).sum()
    torch.testing.assert_close(res.z, z, rtol=0, atol=1e-6)
    assert (res.logp - ref).abs().max() < 1e-4
    # ... and differs from the data density by the prior mismatch, which is why the GMM tests use p_T
    assert (res.logp - g.log_prob(process.t_min, x, process)).abs().max() > 1e-3


def test_ode_contract_linear_flow_with_gaussian_prior():
    """Any ODE with a prior works: dx/dt = A x gives log p(x) = log pi(e^{A(T-t0)} x) + tr(A)(T - t0)."""
    a = torch.tensor([[0.3, -0.4], [0.2, -0.1]], dtype=torch.float64)
    ode = sd.ODE(lambda t, x: x @ a.T, t_min=0.0, T=2.0, prior=sd.GaussianPrior(1.5))
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=torch.float64)
    res = sd.log_likelihood(ode, x, **TOL)
    z = x @ torch.linalg.matrix_exp(2.0 * a).T
    torch.testing.assert_close(res.z, z, rtol=0, atol=1e-7)
    torch.testing.assert_close(res.logp, sd.GaussianPrior(1.5).log_prob(z) + 2.0 * torch.trace(a), rtol=0, atol=1e-7)


# -------------------------------------------------------------------------------------- Hutchinson
def _hutchinson(n_probes: int, probe: str, m: int = 96):
    process = sd.VPSDE()
    gmm = _gmm()
    x = torch.tensor([[0.1, 0.2]], dtype=torch.float64).expand(m, 2)  # m independent probes of one point
    kw = dict(prior_logp=_exact_prior(gmm, process), rtol=1e-7, atol=1e-7)
    exact = sd.log_likelihood(gmm.model(process), x[:1], **kw).logp
    est = sd.log_likelihood(gmm.model(process), x, divergence="hutchinson", n_probes=n_probes, probe=probe,
                            generator=7, **kw).logp
    return exact, est


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_unbiased_and_spread_shrinks(probe):
    exact, est1 = _hutchinson(1, probe)
    se = est1.std() / math.sqrt(est1.numel())
    assert se > 1e-4  # the test below is about the estimator, not round-off
    assert abs(est1.mean() - exact) < 3 * se
    _, est4 = _hutchinson(4, probe)
    assert est4.std() < 0.7 * est1.std()  # 1/sqrt(4) = 0.5 expected
    assert abs(est4.mean() - exact) < 3 * est4.std() / math.sqrt(est4.numel())


def test_hutchinson_probe_is_fixed_for_the_whole_solve():
    """dx/dt = A x: with a probe held fixed, delta logp = (T - t0) e^T A e for one e in {+-1}^D exactly."""
    a = torch.tensor([[0.3, -0.4, 0.1], [0.2, -0.1, 0.7], [-0.5, 0.25, 0.05]], dtype=torch.float64)
    ode = sd.ODE(lambda t, x: x @ a.T, t_min=0.0, T=1.0, prior=sd.GaussianPrior())
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sd.log_likelihood(ode, x, divergence="hutchinson", generator=3, **TOL)
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3)), dtype=torch.float64)
    forms = torch.einsum("ki,ij,kj->k", signs, a, signs)
    dist = (res.delta_logp[:, None] - forms[None]).abs().min(1).values
    assert dist.max() < 1e-8
    again = sd.log_likelihood(ode, x, divergence="hutchinson", generator=3, **TOL)
    torch.testing.assert_close(again.logp, res.logp, rtol=0, atol=0)  # generator= makes it reproducible


def test_hutchinson_per_sample_generators_match_batch_of_one():
    a = torch.tensor([[0.3, -0.4], [0.2, -0.1]], dtype=torch.float64)
    ode = sd.ODE(lambda t, x: torch.tanh(x @ a.T), t_min=0.0, T=1.0, prior=sd.GaussianPrior())
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=torch.float64)
    kw = dict(divergence="hutchinson", probe="gaussian", n_probes=2, **TOL)
    both = sd.log_likelihood(ode, x, generator=[11, 12], **kw).logp
    second = sd.log_likelihood(ode, x[1:], generator=[12], **kw).logp
    torch.testing.assert_close(both[1:], second, rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------------------- bits/dim
def test_bits_per_dim_of_a_dequantized_discrete_toy():
    """8-bit data k seen by the model in [-1, 1]: the average bpd over the dequantization noise matches the
    exact discrete code length -log2 P(k) / D of the model's quantized marginal (up to a Jensen gap of
    ~1e-4 bits here), with Song et al.'s offset 8 - log2(2) = 7."""
    process = sd.VPSDE()
    g = Gaussian([0.1, -0.2], [0.4, 0.3])
    k = torch.tensor([[120, 100], [140, 90], [100, 130]], dtype=torch.uint8)
    m = 48
    kk = k.repeat_interleave(m, dim=0)
    res = sd.log_likelihood(g.model(process), kk, dequantize="uniform", data_range=(-1.0, 1.0), generator=5,
                            dtype=torch.float64, prior_logp=_exact_prior(g, process), **TOL)
    width = 2.0 / 256
    # the point that was evaluated lies in the bin of k; bpd = -log2(density * bin volume) / D
    lo = -1.0 + width * kk.double()
    assert res.x.dtype == torch.float64 and bool(((res.x >= lo) & (res.x < lo + width)).all())
    ref = -(g.log_prob(process.t_min, res.x, process) + 2 * math.log(width)) / (2 * math.log(2))
    assert (res.bpd - ref).abs().max() < 1e-4
    # discrete probability of each bin under the marginal at t_min: N(alpha mu, alpha^2 s^2 + sigma^2)
    a, s = process.alpha(process.t_min), process.sigma(process.t_min)
    mean, std = a * g.means[0], torch.sqrt(a**2 * g.stds[0] ** 2 + s**2)
    edges = -1.0 + width * k.double()
    mass = torch.special.ndtr((edges + width - mean) / std) - torch.special.ndtr((edges - mean) / std)
    discrete = -torch.log2(mass).sum(1) / 2
    per_k = res.bpd.detach().reshape(3, m)
    avg, se = per_k.mean(1), per_k.std(1) / math.sqrt(m)
    assert bool(((avg - discrete).abs() < 3 * se + 1e-3).all())
    assert bool(((avg + 1.0 - discrete).abs() > 0.5).all())  # the uncentred offset (8) would be caught


def test_continuous_data_have_no_offset():
    ode = sd.ODE(lambda t, x: -x, t_min=0.0, T=1.0, prior=sd.GaussianPrior())
    x = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    res = sd.log_likelihood(ode, x, **TOL)
    torch.testing.assert_close(res.bpd, -res.logp / (2 * math.log(2)))
    scaled = sd.log_likelihood(ode, x, dequantize="none", data_range=(0.0, 1.0), **TOL)
    torch.testing.assert_close(scaled.bpd, res.bpd + 8.0)


# --------------------------------------------------------------------------------- encode / decode
@pytest.mark.parametrize("name", ["VP", "EDM"])
def test_encode_decode_round_trip(name):
    process = PROCESSES[name]()
    gmm = _gmm()
    model = gmm.model(process)
    x = gmm.sample(4, generator=2)
    z = sd.encode(model, x, **TOL)
    back = sd.decode(model, z, **TOL)
    assert (back - x).abs().max() < 1e-5
    assert (z - x).abs().max() > 0.1  # it did move


# --------------------------------------------------------------------------------------- gradients
def _tiny_model(hidden: int = 8, seed: int = 0) -> tuple[torch.nn.Module, sd.DiffusionModel]:
    with torch.random.fork_rng():  # the network's initial weights, without touching the global stream
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2)).double()

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = net

        def forward(self, x, t):
            return 0.5 * self.body(torch.cat([x, t[:, None].to(x.dtype)], 1))

    wrapped = Net()
    return wrapped, sd.DiffusionModel(wrapped, sd.VPSDE(t_min=0.05), prediction="eps")


def test_adjoint_gradients_match_direct_backprop():
    net, model = _tiny_model()
    x = torch.tensor([[0.3, -0.2], [-0.7, 0.9], [1.1, 0.4]], dtype=torch.float64)
    kw = dict(rtol=1e-8, atol=1e-8)
    direct = torch.autograd.grad(sd.log_likelihood(model, x, **kw).logp.sum(), list(net.parameters()))
    adj = torch.autograd.grad(sd.log_likelihood(model, x, adjoint=True, **kw).logp.sum(), list(net.parameters()))
    for gd, ga in zip(direct, adj, strict=True):
        torch.testing.assert_close(ga, gd, rtol=1e-4, atol=1e-6)
    assert max(float(g.abs().max()) for g in direct) > 1e-3  # the gradients are not trivially zero


def test_adjoint_with_explicit_params_on_a_user_ode():
    """A closure hides its parameters from discovery: adjoint_params= names them."""
    a = torch.tensor([[0.3, -0.4], [0.2, -0.1]], dtype=torch.float64, requires_grad=True)
    ode = sd.ODE(lambda t, x: torch.tanh(x @ a.T), t_min=0.0, T=1.0, prior=sd.GaussianPrior())
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=torch.float64)
    (direct,) = torch.autograd.grad(sd.log_likelihood(ode, x, **TOL).logp.sum(), a)
    res = sd.log_likelihood(ode, x, adjoint=True, adjoint_params=[a], **TOL)
    (adj,) = torch.autograd.grad(res.logp.sum(), a)
    torch.testing.assert_close(adj, direct, rtol=1e-6, atol=1e-8)


@pytest.mark.filterwarnings("ignore:Solver 'rk4' does not support callbacks")
def test_gradcheck_tiny_network():
    net, model = _tiny_model(hidden=3)
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())
    x = torch.tensor([[0.3, -0.2], [-0.7, 0.9]], dtype=torch.float64)

    def logp(*ps):
        state = dict(zip(names, ps, strict=True))
        func = sd.DiffusionModel(lambda xx, t: torch.func.functional_call(net, state, (xx, t)), model.process, "eps")
        return sd.log_likelihood(func, x, solver="torchdiffeq:rk4", steps=4).logp

    assert torch.autograd.gradcheck(logp, params, eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------- bad input
def test_integer_data_need_a_dequantization_choice():
    model = _gmm().model(sd.VPSDE())
    k = torch.tensor([[10, 20]], dtype=torch.uint8)
    with pytest.raises(ValueError, match="dequantize='uniform'"):
        sd.log_likelihood(model, k)
    with pytest.raises(ValueError, match="data_range"):
        sd.log_likelihood(model, k, dequantize="uniform")
    with pytest.raises(ValueError, match="floating-point"):
        sd.log_likelihood(model, k, dequantize="none")
    with pytest.raises(ValueError, match="integer data"):
        sd.log_likelihood(model, k.double(), dequantize="uniform", data_range=(-1, 1))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        sd.log_likelihood(model, k, dequantize="uniform", data_range=(-1, 1), n_bits=4)
    with pytest.raises(ValueError, match="unknown dequantize"):
        sd.log_likelihood(model, k, dequantize="gaussian")


def test_shape_mismatches_are_clear_errors():
    model = _gmm().model(sd.VPSDE())
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        sd.log_likelihood(model, torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least one data dimension"):
        sd.log_likelihood(model, torch.zeros(3, dtype=torch.float64))
    ode = sd.ODE(lambda t, x: -x, t_min=0.0, T=1.0, prior=sd.GaussianPrior())
    with pytest.raises(ValueError, match=r"prior_logp\(z\) must return one value per sample"):
        sd.log_likelihood(ode, torch.zeros(3, 2, dtype=torch.float64), prior_logp=lambda z: z)
    bad = sd.ODE(lambda t, x: x[:, :1], t_min=0.0, T=1.0, prior=sd.GaussianPrior())
    with pytest.raises(ValueError, match="shaped like x"):
        sd.log_likelihood(bad, torch.zeros(3, 2, dtype=torch.float64))


def test_non_ode_systems_are_refused():
    model = _gmm().model(sd.VPSDE())
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="not an ODE"):
        sd.log_likelihood(sd.reverse_sde(model, eta=1.0), x)
    with pytest.raises(ValueError, match="not an ODE"):
        sd.encode(sd.reverse_sde(model, eta=0.5), x)
    with pytest.raises(ValueError, match="stochastic"):
        sd.log_likelihood(model, x, solver="srk")
    with pytest.raises(TypeError, match="process"):
        sd.log_likelihood(sd.VPSDE(), x)
    with pytest.raises(TypeError, match="prior"):
        sd.log_likelihood(sd.ODE(lambda t, x: -x, t_min=0.0, T=1.0), x)


def test_bad_options_are_clear_errors():
    model = _gmm().model(sd.VPSDE())
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown divergence"):
        sd.log_likelihood(model, x, divergence="trace")
    with pytest.raises(ValueError, match="unknown probe"):
        sd.log_likelihood(model, x, divergence="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="n_probes"):
        sd.log_likelihood(model, x, divergence="hutchinson", n_probes=0)
    with pytest.raises(ValueError, match="NaN"):
        sd.log_likelihood(model, torch.full((2, 2), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="rtol"):
        sd.log_likelihood(model, x, rtol=0.0)

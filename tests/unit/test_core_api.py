"""The public contract and the core behaviours: NFE counting, guidance, dtypes, shapes, directions."""

from __future__ import annotations

import math
import threading

import pytest
import torch

import sdediff as sd
from sdediff.analytic import GaussianMixture

GMM = GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], [[0.3, 0.6], [0.5, 0.4]], [0.6, 0.4])


def test_all_is_exact_and_importable():
    for name in sd.__all__:
        assert hasattr(sd, name), name
    public = {n for n in dir(sd) if not n.startswith("_")}
    # every public object that is not a submodule is listed in __all__
    import types

    missing = {n for n in public - set(sd.__all__) if not isinstance(getattr(sd, n), types.ModuleType)}
    assert not missing, missing


def test_design_contract_names():
    for name in ("SDE", "LinearSDE", "VPSDE", "SubVPSDE", "VESDE", "EDM", "CosineVPSDE", "RectifiedFlow",
                 "DiscreteVP", "DiffusionModel", "probability_flow", "reverse_sde", "solve"):
        assert name in sd.__all__, name
    assert isinstance(sd.solvers.SOLVERS, dict) and "dopri5" in sd.solvers.SOLVERS
    assert callable(sd.analytic.GaussianMixture)
    for meth in ("drift", "diffusion", "alpha", "sigma", "log_snr", "t_from_log_snr", "prior_sample", "prior_logp"):
        assert callable(getattr(sd.VPSDE(), meth)), meth
    p = sd.VPSDE()
    assert (p.T, p.t_min) == (1.0, 1e-3)


def test_closed_forms_at_known_points():
    vp = sd.VPSDE(beta_min=0.1, beta_max=20.0)
    t = torch.tensor(0.5, dtype=torch.float64)
    la = -0.25 * 0.25 * 19.9 - 0.5 * 0.5 * 0.1
    assert float(vp.log_alpha(t)) == pytest.approx(la, rel=1e-15)
    assert float(vp.sigma(t)) == pytest.approx(math.sqrt(1 - math.exp(2 * la)), rel=1e-14)
    assert float(vp.diffusion(t)) ** 2 == pytest.approx(0.1 + 0.5 * 19.9, rel=1e-13)
    ve = sd.VESDE(0.01, 50.0)
    assert float(ve.sigma(1.0)) == pytest.approx(50.0, rel=1e-14)
    edm = sd.EDM()
    assert float(edm.sigma(3.0)) == 3.0 and float(edm.diffusion(2.0)) == pytest.approx(2.0)
    rf = sd.RectifiedFlow()
    assert float(rf.alpha(0.25)) == pytest.approx(0.75) and float(rf.sigma(0.25)) == 0.25
    for p in (vp, ve, edm, rf, sd.SubVPSDE(), sd.CosineVPSDE(), sd.DiscreteVP()):
        assert p.alpha(p.t_min).dtype == torch.float64


def test_discrete_vp_labels_and_knots():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    p = sd.DiscreteVP(betas=betas)
    ac = torch.cumprod(1 - betas, 0)
    n = torch.tensor([0, 10, 500, 999])
    t = p.t_from_label(n)
    assert torch.allclose(p.time_label(t), n.double())
    assert torch.allclose(p.alpha(t) ** 2, ac[n], rtol=1e-12)
    assert p.t_min == 1e-3 and p.T == 1.0
    assert p.zero_terminal_snr is False
    same = sd.DiscreteVP(beta_schedule="linear", num_train_timesteps=1000)
    assert torch.allclose(same.alphas_cumprod, ac)


def test_nfe_is_counted_once_at_the_network():
    calls = []

    def net(x, t):
        calls.append(t)
        return -x

    model = sd.DiffusionModel(net, sd.VPSDE(), "eps")
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model.predict(0.5, x)
    model.score(0.5, x)
    assert model.nfe == 2 == len(calls)
    sol = sd.solve(model, x, ts=[1.0, 0.1], solver="torchdiffeq:rk4", steps=7)
    assert sol.stats.nfe == 28 == len(calls) - 2  # 4 evaluations a step
    assert sol.stats.n_steps == 7
    sol = sd.solve(model, x, ts=[1.0, 0.1], solver="dopri5")
    assert sol.stats.nfe == len(calls) - 30 and sol.stats.n_steps > 0
    # the network receives a (B,) label
    assert calls[-1].shape == (3,)


def test_save_times_and_directions():
    p = sd.VPSDE()
    x = p.prior_sample((5, 2), generator=0, dtype=torch.float64)
    ts = torch.tensor([1.0, 0.7, 0.3, 0.05], dtype=torch.float64)
    sol = sd.solve(GMM.model(p), x, ts=ts, rtol=1e-8, atol=1e-8)
    assert sol.xs.shape == (4, 5, 2) and torch.equal(sol.xs[0], x) and torch.equal(sol.x, sol.xs[-1])
    assert sol.ts.dtype == torch.float64 and torch.equal(sol.ts, ts)
    back = sd.solve(GMM.model(p), sol.x, ts=ts.flip(0), rtol=1e-8, atol=1e-8)
    assert torch.allclose(back.xs.flip(0), sol.xs, atol=1e-5)
    # t0/t1 instead of ts
    sol2 = sd.solve(GMM.model(p), x, t0=1.0, t1=0.05, rtol=1e-8, atol=1e-8)
    assert torch.allclose(sol2.x, sol.x, atol=1e-6)


@pytest.mark.parametrize("solver", ["dopri5", "torchdiffeq:rk4", "torchsde:euler"])
def test_image_shaped_states(solver):
    p = sd.VPSDE()
    net_calls = []

    def net(x, t):
        net_calls.append(x.shape)
        return 0.5 * x

    model = sd.DiffusionModel(net, p, "eps")
    x = p.prior_sample((2, 3, 4, 4), generator=0)
    system = sd.reverse_sde(model) if solver.startswith("torchsde") else model
    sol = sd.solve(system, x, ts=[1.0, 0.2], solver=solver, steps=10, generator=1)
    assert sol.x.shape == x.shape and sol.xs.shape == (2, 2, 3, 4, 4)
    assert set(net_calls) == {torch.Size([2, 3, 4, 4])}
    assert bool(torch.isfinite(sol.x).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("solver", ["dopri5", "torchdiffeq:rk4", "torchsde:euler"])
def test_half_precision_states_run_with_float64_time(dtype, solver):
    p = sd.VPSDE()
    seen = []
    inner = GMM.model(p)

    def net(x, t):
        seen.append((x.dtype, t.dtype))
        return inner.score(t, x.double()).to(x.dtype)

    model = sd.DiffusionModel(net, p, "score", time_label=lambda t: t)
    x64 = p.prior_sample((64, 2), generator=3, dtype=torch.float64)
    system = (lambda m: sd.reverse_sde(m)) if solver.startswith("torchsde") else (lambda m: m)
    # half states are integrated in float32: for SDEs the float32 run draws the same Brownian path
    ref_dtype = torch.float32 if solver.startswith("torchsde") else torch.float64
    steps = None if solver == "dopri5" else 50
    ref = sd.solve(system(GMM.model(p)), x64.to(ref_dtype), ts=[1.0, 0.05], solver=solver, steps=steps, generator=4)
    sol = sd.solve(system(model), x64.to(dtype), ts=[1.0, 0.05], solver=solver, steps=steps, generator=4)
    assert sol.x.dtype == dtype and sol.ts.dtype == torch.float64
    assert bool(torch.isfinite(sol.x).all())
    assert {d for d, _ in seen} == {dtype}  # the network sees the state's dtype
    assert {d for _, d in seen} == {torch.float32}  # labels in float32 for half states
    tol = 0.05 if dtype == torch.float16 else 0.15
    assert float((sol.x.double() - ref.x.double()).abs().max()) < tol


def test_float32_state_keeps_float32():
    p = sd.EDM()
    x = p.prior_sample((8, 2), generator=0)
    assert x.dtype == torch.float32
    sol = sd.solve(GMM.model(p), x, ts=[p.T, p.t_min])
    assert sol.x.dtype == torch.float32 and sol.ts.dtype == torch.float64


def test_classifier_free_guidance_is_a_linear_combination():
    p = sd.VPSDE()

    def net(x, t, c):
        return -x + c

    base = sd.DiffusionModel(net, p, "eps")
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c1, c0 = torch.ones(4, 2, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64)
    for w in (0.0, 1.0, 3.5):
        g = sd.ClassifierFreeGuidance(base, cond={"c": c1}, uncond={"c": c0}, scale=w)
        e = g.eps(0.5, x)
        assert torch.allclose(e, -x + w * c1)
        assert torch.allclose(g.score(0.5, x), -e / p.sigma(0.5))
    n0 = base.nfe
    g.predict(0.5, x)
    assert base.nfe - n0 == 2  # conditional and unconditional calls, both counted


def test_classifier_guidance_adds_the_classifier_gradient():
    p = sd.VPSDE()
    model = GMM.model(p)
    target = torch.tensor([[2.0, -1.0]], dtype=torch.float64)

    def log_prob(x, t):  # log p(y|x) = -|x - target|^2 / 2 (up to a constant)
        return -0.5 * ((x - target) ** 2).sum(1)

    guided = sd.ClassifierGuidance(model, log_prob, scale=2.0)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(guided.score(0.4, x), model.score(0.4, x) - 2.0 * (x - target))
    pred = guided.predict(0.4, x)
    assert torch.allclose(pred.eps, -p.sigma(0.4) * pred.score)
    # logits form: classifier returns (B, C) logits, y picks the class
    def logits(x, t):
        return torch.stack([x[:, 0], -x[:, 0]], 1)

    y = torch.zeros(5, dtype=torch.long)
    g2 = sd.ClassifierGuidance(model, logits, scale=1.0, y=y)
    # d/dx0 [x0 - logsumexp(x0, -x0)] = 1 - (p0 - p1) = 2 p1
    p1 = torch.softmax(logits(x, None), 1)[:, 1]
    expected = torch.stack([2 * p1, torch.zeros(5, dtype=torch.float64)], 1)
    assert torch.allclose(g2.score(0.4, x) - model.score(0.4, x), expected)


def test_solver_objects_are_reusable_across_shapes_and_threads():
    p = sd.VPSDE()
    model = GMM.model(p)
    solver = sd.solvers.SOLVERS["dopri5"]
    xa = p.prior_sample((16, 2), generator=1, dtype=torch.float64)
    xb = p.prior_sample((3, 2), generator=2, dtype=torch.float64)
    ra = sd.solve(model, xa, ts=[1.0, 0.01], solver=solver).x
    rb = sd.solve(model, xb, ts=[1.0, 0.01], solver=solver).x
    out = {}

    def work(key, x):
        out[key] = sd.solve(GMM.model(p), x, ts=[1.0, 0.01], solver=solver).x

    threads = [threading.Thread(target=work, args=(k, x)) for k, x in (("a", xa), ("b", xb))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert torch.equal(out["a"], ra) and torch.equal(out["b"], rb)


def test_forward_sde_of_a_process_and_reproducible_noise():
    p = sd.VPSDE()
    x0 = GMM.sample(2000, generator=0)
    a = sd.solve(p, x0, ts=[p.t_min, p.T], solver="torchsde:euler", steps=200, generator=7)
    b = sd.solve(p, x0, ts=[p.t_min, p.T], solver="torchsde:euler", steps=200, generator=7)
    c = sd.solve(p, x0, ts=[p.t_min, p.T], solver="torchsde:euler", steps=200, generator=8)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    # at T the forward process has forgotten the data: close to N(0, I)
    assert abs(float(a.x.mean())) < 0.1 and abs(float(a.x.std()) - 1.0) < 0.05


def test_prior_sampling_uses_only_the_generator():
    p = sd.VESDE()
    state = torch.random.get_rng_state()
    a = p.prior_sample((4, 3), generator=torch.Generator().manual_seed(5))
    b = p.prior_sample((4, 3), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(torch.random.get_rng_state(), state)
    assert float(p.prior_logp(torch.zeros(1, 3))) == pytest.approx(-3 * (0.5 * math.log(2 * math.pi) + math.log(50.0)))
    per_sample = sd.noise.randn((3, 2), generator=[1, 2, 3])
    single = sd.noise.randn((1, 2), generator=2)
    assert torch.equal(per_sample[1:2], single)

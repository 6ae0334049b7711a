"""The exact benchmark targets: UniformBox's closed-form score against autograd of its log-density, the
Tweedie denoiser against a Monte-Carlo-free identity, and each target's model on its own shapes."""

from __future__ import annotations

import pytest
import torch

import sdediff as sd
from sdediff.analytic import UniformBox
from sdediff.bench_targets import ALL_TARGETS, HELDOUT_TARGETS, TARGETS, box_16d, run_diffusers_scheduler
from sdediff.processes import EDM, VPSDE, DiscreteVP


def _autograd_score(box: UniformBox, t: float, x: torch.Tensor, process) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(box.log_prob(t, x, process).sum(), x)
    return g


def test_uniform_box_score_is_grad_log_prob() -> None:
    box = box_16d()
    g = torch.Generator().manual_seed(0)
    for process in (VPSDE(), DiscreteVP(), EDM()):
        for t in (process.t_min, 0.3 * process.T, process.T):
            # points inside, near the faces and far outside the (scaled) box
            x = 3.0 * torch.randn(64, box.dim, generator=g, dtype=torch.float64) * float(process.sigma(t) + 0.3)
            s = box.score(t, x, process)
            ref = _autograd_score(box, t, x, process)
            assert torch.isfinite(s).all()
            torch.testing.assert_close(s, ref, rtol=1e-9, atol=1e-9)


def test_uniform_box_log_prob_normalised_in_1d() -> None:
    # the marginal integrates to 1 (trapezoid over a wide range) and tends to the box at small sigma
    box = UniformBox([-0.5], [1.5])
    vp = VPSDE()
    x = torch.linspace(-6, 6, 20001, dtype=torch.float64)[:, None]
    for t in (vp.t_min, 0.5, 1.0):
        p = box.log_prob(t, x, vp).exp()
        assert abs(float(torch.trapezoid(p, x[:, 0])) - 1.0) < 1e-8


def test_uniform_box_score_detects_a_wrong_sign() -> None:
    # the check above can fail: a planted sign error in one term of the score is far from autograd
    box = box_16d()
    vp = VPSDE()
    x = torch.randn(8, box.dim, dtype=torch.float64)
    _, _, sg, a, b = box._ab(0.2, x, vp)
    wrong = (torch.distributions.Normal(0, 1).log_prob(a).exp() + torch.distributions.Normal(0, 1).log_prob(b).exp())
    wrong = wrong / (sg * (torch.special.ndtr(a) - torch.special.ndtr(b)))
    assert (wrong - _autograd_score(box, 0.2, x, vp)).abs().max() > 1e-2


def test_uniform_box_denoiser_is_tweedie_and_in_box() -> None:
    box = box_16d()
    vp = VPSDE()
    x = torch.randn(32, box.dim, dtype=torch.float64)
    for t in (1e-3, 0.1, 0.9):
        d = box.denoiser(t, x, vp)
        assert bool((d >= box.low).all() and (d <= box.high).all())
        tweedie = (x + vp.sigma(t) ** 2 * _autograd_score(box, t, x, vp)) / vp.alpha(t)
        torch.testing.assert_close(d, tweedie.clamp(box.low, box.high), rtol=1e-9, atol=1e-9)


def test_targets_models_run_on_their_shapes() -> None:
    assert len(TARGETS) >= 4 and len(HELDOUT_TARGETS) == 3 and not set(TARGETS) & set(HELDOUT_TARGETS)
    assert ALL_TARGETS == {**TARGETS, **HELDOUT_TARGETS}
    for name, make in ALL_TARGETS.items():
        tgt = make()
        assert tgt.name == name
        x = tgt.prior(3, 0)
        assert x.shape == tgt.shape(3) and x.dtype == torch.float64
        out = tgt.model.predict(torch.tensor(0.5 * tgt.process.T, dtype=torch.float64), x)
        assert out.x0.shape == x.shape and torch.isfinite(out.x0).all()
        assert tgt.data(5, 1).shape == tgt.shape(5)
        assert make() is not tgt and make().process is not tgt.process  # built afresh on each call


def test_image_target_model_matches_flat_mixture() -> None:
    tgt = TARGETS["image-3x8x8"]()
    x = tgt.prior(4, 0)
    t = torch.tensor(1.0, dtype=torch.float64)
    img = tgt.model.predict(t, x).x0
    flat = tgt.dist.denoiser(t, x.reshape(4, -1), tgt.process).reshape(x.shape)
    torch.testing.assert_close(img, flat)


# --- reference ends (float64 EDM-variable flow) ------------------------------------------------------------
def test_rho_and_its_inverse() -> None:
    tgt = TARGETS["2d-sharp"]()
    ac = tgt.process.alphas_cumprod
    assert abs(tgt.rho(1.0) - float(((1 - ac[-1]) / ac[-1]).sqrt())) < 1e-9 * tgt.rho(1.0)
    assert abs(tgt.rho(tgt.process.t_min) - float(((1 - ac[0]) / ac[0]).sqrt())) < 1e-12
    for name in ("box-16d", "image-3x8x8"):
        t = TARGETS[name]()
        for u in (t.process.t_min, 0.3 * t.process.T, t.process.T):
            assert abs(t.t_of_rho(t.rho(u)) - u) < 1e-9 * max(1.0, u)


def test_reference_at_matches_an_independent_solve_in_process_variables() -> None:
    # VPSDE is smooth in t: sdediff's dopri8 on the model's own PF-ODE in x must land on the same point
    tgt = TARGETS["box-16d"]()
    x_T = tgt.prior(6, generator=3)
    for t in (0.5, tgt.process.t_min):
        ref = tgt.reference_at(x_T, t)
        own = sd.solve(tgt.model, x_T, ts=[tgt.process.T, t], solver="dopri8", rtol=1e-10, atol=1e-10).x
        assert float((ref - own).abs().max()) < 1e-7
    # and a fixed-step sdediff sampler onto sigma = 0 converges to reference_data
    x0 = tgt.reference_data(x_T)
    far = sd.sample(tgt.model, x_T.shape, solver="dpm++3m", steps=5, x_T=x_T).x
    near = sd.sample(tgt.model, x_T.shape, solver="dpm++3m", steps=80, x_T=x_T).x
    assert float((near - x0).pow(2).mean().sqrt()) < 0.05 * float((far - x0).pow(2).mean().sqrt())


def test_reference_passes_its_check_and_the_check_detects_a_loose_solve() -> None:
    tgt = TARGETS["image-3x8x8"]()
    x_T = tgt.prior(3, generator=0)
    assert tgt.reference_check(x_T) < 1e-8
    assert tgt.reference_check(x_T, tgt.process.t_min) < 1e-8
    # a loose solve is measurably off: the check would flag it
    assert tgt.reference_check(x_T, tol=1e-3) > 1e-6
    assert tgt.reference_data(x_T).shape == x_T.shape and tgt.reference_data(x_T).dtype == torch.float64


def test_reference_at_T_is_the_start_and_bad_inputs_raise() -> None:
    tgt = TARGETS["2d-sharp"]()
    x_T = tgt.prior(4, generator=1)
    torch.testing.assert_close(tgt.reference_at(x_T, tgt.process.T), x_T)
    with pytest.raises(ValueError, match="t must be"):
        tgt.reference_at(x_T, 0.0)
    with pytest.raises(ValueError, match="x_T must be"):
        tgt.reference_data(torch.zeros(4, 3, dtype=torch.float64))


def test_diffusers_ddim_converges_to_the_reference() -> None:
    diffusers = pytest.importorskip("diffusers")
    tgt = TARGETS["2d-sharp"]()
    x_T = tgt.prior(8, generator=2)
    ref = tgt.reference_data(x_T)
    errs = []
    for steps in (10, 100):
        x, nfe, end = run_diffusers_scheduler(tgt.denoiser_edm, x_T, diffusers.DDIMScheduler,
                                              {"timestep_spacing": "trailing", "clip_sample": False}, steps)
        assert nfe == steps and end == 0.0
        errs.append(float((x - ref).pow(2).mean().sqrt()))
    assert errs[1] < 0.2 * errs[0]

"""The exact benchmark targets: UniformBox's closed-form score against autograd of its log-density, the
Tweedie denoiser against a Monte-Carlo-free identity, and each target's model on its own shapes."""

from __future__ import annotations

import torch

from sdediff.analytic import UniformBox
from sdediff.bench_targets import TARGETS, box_16d
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
    assert len(TARGETS) >= 4
    for name, make in TARGETS.items():
        tgt = make()
        assert tgt.name == name
        x = tgt.prior(3, 0)
        assert x.shape == tgt.shape(3) and x.dtype == torch.float64
        out = tgt.model.predict(torch.tensor(0.5 * tgt.process.T, dtype=torch.float64), x)
        assert out.x0.shape == x.shape and torch.isfinite(out.x0).all()
        assert tgt.data(5, 1).shape == tgt.shape(5)


def test_image_target_model_matches_flat_mixture() -> None:
    tgt = TARGETS["image-3x8x8"]()
    x = tgt.prior(4, 0)
    t = torch.tensor(1.0, dtype=torch.float64)
    img = tgt.model.predict(t, x).x0
    flat = tgt.dist.denoiser(t, x.reshape(4, -1), tgt.process).reshape(x.shape)
    torch.testing.assert_close(img, flat)

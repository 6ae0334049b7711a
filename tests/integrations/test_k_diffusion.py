"""sdediff.integrations.k_diffusion against k-diffusion's own samplers (recorded outputs, made by the
command in _kd_reference.py; live too when SDEDIFF_K_DIFFUSION_WHEEL names k-diffusion's wheel)."""

from __future__ import annotations

import json
import os

import _kd_reference as ref
import pytest
import torch

import sdediff as sd
from sdediff.integrations import k_diffusion as kd

RECORDED = json.loads(ref.RECORD.read_text())
WHEEL = os.environ.get("SDEDIFF_K_DIFFUSION_WHEEL")
OURS = {"karras": kd.get_sigmas_karras, "exponential": kd.get_sigmas_exponential,
        "polyexponential": kd.get_sigmas_polyexponential, "vp": kd.get_sigmas_vp}


def _run(sampler, sigmas, solver=None):
    model, count = ref.denoiser()
    calls = []
    x = kd.sample(model, ref.x_start(float(sigmas[0])), sigmas, solver=solver or sampler,
                  extra_args={"scale": 1.0}, callback=calls.append, disable=True)
    return x, count["n"], calls


@pytest.mark.parametrize("grid", sorted(ref.GRIDS))
def test_grids_equal_k_diffusions(grid):
    _, args, kw = ref.GRIDS[grid]
    ours = OURS[grid](*args, **kw)
    theirs = torch.tensor(RECORDED["grids"][grid], dtype=torch.float64)  # k-diffusion computes in float32
    assert ours.dtype == torch.float64 and float(ours[-1]) == 0.0
    if grid == "vp":  # k-diffusion's float32 exp(x) - 1 cancels at x ~ 1e-4 (sdediff uses expm1 in float64)
        assert torch.allclose(ours[-2], theirs[-2], rtol=1e-3, atol=0)
        ours, theirs = torch.cat([ours[:-2], ours[-1:]]), torch.cat([theirs[:-2], theirs[-1:]])
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=0)


@pytest.mark.parametrize("grid", sorted(ref.GRIDS))
@pytest.mark.parametrize("sampler", ref.SAMPLERS)
def test_sample_equals_k_diffusion(sampler, grid):
    """Same sigmas (float64): final state to 1e-12 relative, the same NFE and the same callback dicts."""
    rec = RECORDED["runs"][f"{sampler}/{grid}"]
    sigmas = torch.tensor(RECORDED["grids"][grid], dtype=torch.float64)
    x, nfe, calls = _run(sampler, sigmas)
    want = torch.tensor(rec["x"], dtype=torch.float64)
    assert float((x - want).abs().max() / want.abs().max()) < 1e-12
    assert nfe == rec["nfe"]
    assert [c["i"] for c in calls] == [c[0] for c in rec["callback"]]
    assert set(calls[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    for c, r in zip(calls, rec["callback"], strict=True):
        assert float(c["sigma"]) == r[1] and abs(float(c["sigma_hat"]) - r[2]) < 1e-12 * r[2]
        assert torch.allclose(c["denoised"], torch.tensor(r[3], dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_equality_can_fail():
    """Another solver on the same sigmas is far from k-diffusion's Heun."""
    rec = RECORDED["runs"]["sample_heun/karras"]
    sigmas = torch.tensor(RECORDED["grids"]["karras"], dtype=torch.float64)
    x, _, _ = _run("sample_heun", sigmas, solver="euler")
    want = torch.tensor(rec["x"], dtype=torch.float64)
    assert float((x - want).abs().max() / want.abs().max()) > 1e-3


def test_sdediff_model_and_bad_inputs():
    """An sdediff model of another process: sigma is its sigma/alpha; the VP model on the VP sigmas
    gives the EDM result (same ODE in x/alpha up to the data end scaling)."""
    sigmas = kd.get_sigmas_karras(6, 0.01, 50.0)
    edm = ref.GMM.model(sd.EDM(sigma_min=0.005, sigma_max=60.0), prediction="x0")
    x = ref.x_start(50.0)
    a = kd.sample(edm, x, sigmas, solver="sample_dpmpp_2m")
    b = kd.sample(ref.denoiser()[0], x, sigmas, solver="dpm++2m")
    assert torch.allclose(a, b, rtol=1e-10)
    with pytest.raises(ValueError, match="strictly decreasing"):
        kd.sample(ref.denoiser()[0], x, [1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        kd.get_sigmas_karras(5, 1.0, 0.5)
    with pytest.raises(ValueError, match="extra_args are for a k-diffusion denoiser"):
        kd.sample(edm, x, sigmas, extra_args={"scale": 1.0})
    with pytest.raises(TypeError, match="k-diffusion denoiser"):
        kd.sample(3, x, sigmas)


@pytest.mark.skipif(not WHEEL, reason="set SDEDIFF_K_DIFFUSION_WHEEL to k-diffusion's wheel to run it live")
def test_live_against_the_wheel():
    live = ref.run_reference(ref.load_sampling(WHEEL))
    for key, rec in live["runs"].items():
        sampler, grid = key.split("/")
        x, nfe, _ = _run(sampler, torch.tensor(live["grids"][grid], dtype=torch.float64))
        want = torch.tensor(rec["x"], dtype=torch.float64)
        assert float((x - want).abs().max() / want.abs().max()) < 1e-12 and nfe == rec["nfe"]

"""model_from_diffusers: the process, labels and prediction of diffusers scheduler configs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import sdediff as sd

diffusers = pytest.importorskip("diffusers")
sdd = pytest.importorskip("sdediff.integrations.diffusers")

SCHEDULERS = ["DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler"]
CANONICAL = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def _net(x, t):
    return x * 0.5


def _diffusers_sigmas(sched):
    """diffusers' own sigma (= sqrt((1 - abar) / abar)) at each of its timesteps."""
    if isinstance(sched, diffusers.EulerDiscreteScheduler):
        return sched.sigmas[:-1].to(torch.float64)
    ac = sched.alphas_cumprod.to(torch.float64)
    return ((1 - ac) / ac).sqrt()[sched.timesteps.long()]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("prediction", sorted(CANONICAL))
@pytest.mark.parametrize("name", SCHEDULERS)
def test_sigma_at_each_label_equals_diffusers(name, prediction, spacing):
    cls = getattr(diffusers, name)
    sched = cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction,
                timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    sched.set_timesteps(10)
    labels = sched.timesteps.to(torch.float64)
    # Euler's linspace labels are fractional: diffusers interpolates sigma linearly in the label, sdediff
    # log alpha linearly in t; on these tables the two agree to 1e-7, inside the float32 tolerance below
    # the scheduler object gives diffusers' float32 alphas_cumprod itself (Euler stores its sigmas in float32);
    # a config is computed in float64, 2e-5 from diffusers' float32 cumulative product
    exact = 1e-6 if name == "EulerDiscreteScheduler" else 1e-12
    for source, rtol in ((sched, exact), (sched.config, 2e-5), (dict(sched.config), 2e-5)):
        model = sdd.model_from_diffusers(_net, source)
        p = model.process
        assert isinstance(p, sd.DiscreteVP) and model.prediction == CANONICAL[prediction]
        t = p.t_from_label(labels)
        assert torch.allclose(model.time_label(t), labels, rtol=0, atol=1e-9)  # the network sees diffusers' label
        ours = p.sigma(t) / p.alpha(t)
        ref = _diffusers_sigmas(sched)
        assert torch.allclose(ours, ref, rtol=rtol, atol=0)
    # planted wrong: the default linear betas are another table
    wrong = sdd.model_from_diffusers(_net, cls(prediction_type=prediction)).process
    assert not torch.allclose(wrong.sigma(t) / wrong.alpha(t), ref, rtol=1e-3)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_scheduler_grid_follows_the_config_spacing(spacing):
    ddim = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    ddim.set_timesteps(7)
    ours = sdd.Scheduler.from_config(ddim.config, solver="ddim")
    ours.set_timesteps(7)
    assert ours.timesteps.tolist() == ddim.timesteps.tolist()
    if spacing == "leading":  # the offset is honoured: without it every label is one lower
        plain = sdd.Scheduler.from_config(ddim.config, solver="ddim", steps_offset=0)
        plain.set_timesteps(7)
        assert (ddim.timesteps - plain.timesteps).tolist() == [1] * 7


def test_unet_output_and_learned_variance_are_unwrapped():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=6, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    sched = diffusers.DDPMScheduler(variance_type="learned_range")
    model = sdd.model_from_diffusers(unet, sched)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = model.process.t_from_label(torch.tensor(500.0, dtype=torch.float64))
    with torch.no_grad():
        eps = model.eps(t, x)
        ref = unet(x, torch.tensor([500.0, 500.0])).sample[:, :3]
    assert torch.equal(eps, ref)
    # without the learned-variance config the 2C output is refused with the hint
    with torch.no_grad(), pytest.raises(ValueError, match="learned-variance"):
        sdd.model_from_diffusers(unet, diffusers.DDPMScheduler()).eps(t, x)


def test_diffusers_prediction_names_everywhere():
    for alias, name in sd.model.PREDICTION_ALIASES.items():
        proc = sd.RectifiedFlow(t_min=1e-3) if name == "velocity" else sd.VPSDE()
        assert sd.DiffusionModel(_net, proc, alias).prediction == name


def test_output_rule_tensor_then_sample_then_first_of_tuple():
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    class Out:
        def __init__(self, v):
            self.sample = v

    ref = sd.DiffusionModel(_net, sd.VPSDE(), "eps").eps(0.5, x)
    for net in (lambda x, t: Out(0.5 * x), lambda x, t: (0.5 * x, None), lambda x, t: [0.5 * x]):
        assert torch.equal(sd.DiffusionModel(net, sd.VPSDE(), "epsilon").eps(0.5, x), ref)
    with pytest.raises(TypeError, match=r"or an object with a \.sample tensor"):
        sd.DiffusionModel(lambda x, t: Out(None), sd.VPSDE(), "eps").eps(0.5, x)


def test_trained_betas_config():
    betas = torch.linspace(1e-4, 0.03, 50, dtype=torch.float64)
    ddim = diffusers.DDIMScheduler(num_train_timesteps=50, trained_betas=betas.tolist())
    proc = sdd.model_from_diffusers(_net, ddim.config).process
    assert proc.N == 50
    assert torch.allclose(proc.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-12)
    assert torch.allclose(proc.alphas_cumprod, ddim.alphas_cumprod.double(), rtol=1e-5)


def test_zero_terminal_snr_rescale():
    cfg = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    ddim = diffusers.DDIMScheduler(prediction_type="v_prediction", **cfg)
    for source in (ddim, ddim.config):
        model = sdd.model_from_diffusers(_net, source)
        assert model.process.zero_terminal_snr and model.prediction == "v"
        ac = ddim.alphas_cumprod.to(torch.float64)
        assert torch.allclose(model.process.alphas_cumprod[:-1], ac[:-1], rtol=1e-4)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        sdd.model_from_diffusers(_net, diffusers.DDIMScheduler(prediction_type="epsilon", **cfg))


def test_flow_matching_config():
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    model = sdd.model_from_diffusers(_net, flow)
    assert isinstance(model.process, sd.RectifiedFlow) and model.prediction == "velocity"
    ours = sdd.Scheduler.from_config(flow.config, solver="euler")
    for s in (flow, ours):
        s.set_timesteps(6)
    # diffusers' shifted labels N * sigma, computed in float32 there
    assert torch.allclose(ours.timesteps.to(torch.float64), flow.timesteps.to(torch.float64), rtol=1e-6)
    assert torch.allclose(ours.sigmas.to(torch.float64), flow.sigmas.to(torch.float64), rtol=1e-6)
    plain = sdd.Scheduler.from_config(flow.config, solver="euler", shift=1.0)
    plain.set_timesteps(6)
    assert not torch.allclose(plain.timesteps, ours.timesteps, rtol=1e-3)
    # euler on the flow grid is diffusers' flow-matching Euler: x += (sigma_next - sigma) * v
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)
    out = ours.step(v, ours.timesteps[0], x).prev_sample
    assert torch.allclose(out, x + (ours.sigmas[1].double() - ours.sigmas[0].double()) * v, rtol=1e-6)


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="net must be callable"):
        sdd.model_from_diffusers(3, diffusers.DDPMScheduler())
    with pytest.raises(TypeError, match="scheduler, its config dict or a pipeline"):
        sdd.model_from_diffusers(_net, 3)
    with pytest.raises(ValueError, match="unknown beta_schedule 'cubic'"):
        sdd.model_from_diffusers(_net, {"beta_schedule": "cubic"})
    with pytest.raises(ValueError, match="unknown timestep_spacing 'odd'"):
        sdd.Scheduler(timestep_spacing="odd")
    sched = sdd.Scheduler()
    with pytest.raises(ValueError, match="call set_timesteps"):
        sched.step(torch.zeros(1, 1), 999, torch.zeros(1, 1))
    with pytest.raises(ValueError, match="num_inference_steps must be an int >= 1"):
        sched.set_timesteps(0)
    sched.set_timesteps(2)
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        sched.step(torch.zeros(1, 1), 123, torch.zeros(1, 1))


def test_import_guard_and_lazy_import():
    """One fresh interpreter: ``import sdediff`` leaves diffusers unimported, and without diffusers the
    integration's ImportError names the extra."""
    code = ("import sys, sdediff, sdediff.integrations\n"
            "assert 'diffusers' not in sys.modules, 'import sdediff imported diffusers'\n"
            "sys.modules['diffusers'] = None\n"
            "try:\n    import sdediff.integrations.diffusers\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "pip install 'sdediff[diffusers]'" in out.stdout

"""sdediff's diffusers Scheduler inside real diffusers pipelines, against ``sd.sample`` on
``model_from_diffusers`` from the same noise (tiny randomly initialised UNets, CPU, float32).

Equality is bitwise for every solver whose first model request is at the initial state itself; the
Heun variants request it at ``alpha * (x / alpha)`` (one float32 rounding), so the bound is float32
round-off: relative max difference < 1e-5.
"""

from __future__ import annotations

import pytest
import torch

import sdediff as sd

diffusers = pytest.importorskip("diffusers")
sdd = pytest.importorskip("sdediff.integrations.diffusers")
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

FIXED = sorted(k for k, v in sd.solvers.SOLVERS.items()
               if isinstance(v, sd.solvers.FixedStepSolver) and not v.adaptive)
SHAPE = (2, 3, 8, 8)
TOL = 1e-5  # float32 round-off (see the module docstring)


def _unet(out_channels=3, seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=out_channels, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


class _Count:
    def __init__(self, module):
        self.n = 0
        module.register_forward_hook(self)

    def __call__(self, *args):
        self.n += 1


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _run_pipeline(pipe, steps, generator, **kw):
    """The pipeline's output before its [0, 1] clamp (the last prev_sample) and the UNet call count."""
    last = {}
    step = pipe.scheduler.step

    def recording_step(*a, **k):
        out = step(*a, **k)
        last["x"] = out.prev_sample
        return out

    pipe.scheduler.step = recording_step
    count = _Count(pipe.unet)
    images = pipe(batch_size=SHAPE[0], generator=generator, num_inference_steps=steps, output_type="np", **kw).images
    pipe.scheduler.step = step
    return last["x"], count.n, images


def _reference(unet, scheduler, seed, prediction=None):
    g = torch.Generator().manual_seed(seed)
    noise = randn_tensor(SHAPE, generator=g)
    model = sdd.model_from_diffusers(unet, scheduler, prediction=prediction)
    with torch.no_grad():
        return sd.sample(model, SHAPE, x_T=noise, generator=g, **scheduler.sample_kwargs())


@pytest.fixture(scope="module")
def ddpm():
    pipe = diffusers.DDPMPipeline(unet=_unet(), scheduler=diffusers.DDPMScheduler(steps_offset=1))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ddim():
    pipe = diffusers.DDIMPipeline(unet=_unet(seed=1), scheduler=diffusers.DDIMScheduler(timestep_spacing="trailing"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("solver", FIXED)
def test_ddpm_pipeline_equals_sample(ddpm, solver):
    """Config spacing (``leading`` with ``steps_offset=1``), 3 steps. Heun's churn would perturb the
    first request here (refused, see below), so its churn range is capped below the first sigma."""
    opts = {"S_max": 5.0} if solver == "stochastic_heun" else None
    ddpm.scheduler = sdd.Scheduler.from_config(ddpm.scheduler.config, solver=solver, solver_options=opts)
    x, calls, images = _run_pipeline(ddpm, 3, torch.Generator().manual_seed(7))
    ref = _reference(ddpm.unet, ddpm.scheduler, 7)
    assert _rel(x, ref.x) < TOL
    assert calls == ref.stats.nfe == len(ddpm.scheduler.timesteps)
    assert images.shape == (SHAPE[0], 8, 8, 3)


@pytest.mark.parametrize("solver", FIXED)
def test_ddim_pipeline_equals_sample_karras(ddim, solver):
    """A named sdediff grid in DDIMPipeline (which passes eta= to step), 3 steps."""
    ddim.scheduler = sdd.Scheduler.from_config(ddim.scheduler.config, solver=solver, grid="karras")
    x, calls, _ = _run_pipeline(ddim, 3, torch.Generator().manual_seed(3), eta=0.0)
    ref = _reference(ddim.unet, ddim.scheduler, 3)
    assert _rel(x, ref.x) < TOL
    assert calls == ref.stats.nfe == len(ddim.scheduler.timesteps)


def test_pipeline_equality_can_fail(ddpm):
    """A reference read with another prediction, or another solver, is far from the pipeline."""
    ddpm.scheduler = sdd.Scheduler.from_config(ddpm.scheduler.config, solver="dpm++2m")
    x, _, _ = _run_pipeline(ddpm, 3, torch.Generator().manual_seed(7))
    assert _rel(x, _reference(ddpm.unet, ddpm.scheduler, 7, prediction="v_prediction").x) > 1e-2
    other = sdd.Scheduler.from_config(ddpm.scheduler.config, solver="ddim")
    other.set_timesteps(3)
    assert _rel(x, _reference(ddpm.unet, other, 7).x) > 1e-3


def test_per_sample_generators_in_a_stochastic_pipeline(ddpm):
    """A list of generators (one per sample) drives the prior and the solver noise per sample."""
    ddpm.scheduler = sdd.Scheduler.from_config(ddpm.scheduler.config, solver="sde_dpm++2m", grid="logsnr")
    gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
    x, _, _ = _run_pipeline(ddpm, 4, gens)
    ref_gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
    noise = randn_tensor(SHAPE, generator=ref_gens)
    model = sdd.model_from_diffusers(ddpm.unet, ddpm.scheduler)
    with torch.no_grad():
        ref = sd.sample(model, SHAPE, x_T=noise, generator=ref_gens, **ddpm.scheduler.sample_kwargs())
        other = sd.sample(model, SHAPE, x_T=noise, generator=5, **ddpm.scheduler.sample_kwargs())
    assert _rel(x, ref.x) < TOL
    assert _rel(x, other.x) > 1e-3  # other noise, other samples: the noise really is the generators'


def test_adaptive_solver_and_churn_at_the_first_request_are_refused():
    with pytest.raises(ValueError, match=r"fixed-step solvers.*dopri5"):
        sdd.Scheduler(solver="dopri5")
    # leading labels start below T (label 667 + 1 of 999), where Heun's churn raises sigma at once
    sched = sdd.Scheduler(steps_offset=1, solver="stochastic_heun")
    with pytest.raises(ValueError, match="perturbed state"):
        sched.set_timesteps(4)


def test_edited_sample_between_steps_is_refused():
    unet = _unet()
    sched = sdd.Scheduler(solver="dpm++2m")
    sched.set_timesteps(3)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = sched.step(unet(x, sched.timesteps[0]).sample, sched.timesteps[0], x).prev_sample
        with pytest.raises(ValueError, match="changed the sample between steps"):
            sched.step(unet(x, sched.timesteps[1]).sample, sched.timesteps[1], x + 1.0)


# --- classifier-free guidance as diffusers' text-to-image pipelines write it ---------------------
def _cond_unet():
    torch.manual_seed(2)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()


@pytest.mark.parametrize("solver", ["dpm++2m", "unipc", "heun"])
def test_cfg_loop_equals_classifier_free_guidance(solver):
    unet = _cond_unet()
    g = torch.Generator().manual_seed(4)
    text, negative = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    scheduler = sdd.Scheduler.from_config(diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                                  beta_end=0.012, steps_offset=1).config,
                                          solver=solver, grid="karras")
    scale, shape = 5.0, (2, 4, 8, 8)
    with torch.no_grad():  # the loop of StableDiffusionPipeline.__call__
        scheduler.set_timesteps(4)
        latents = randn_tensor(shape, generator=torch.Generator().manual_seed(9)) * scheduler.init_noise_sigma
        x_T = latents.clone()
        prompt_embeds = torch.cat([negative, text])
        for t in scheduler.timesteps:
            latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            noise_pred = unet(latent_model_input, t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + scale * (noise_pred_text - noise_pred_uncond)
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        model = sdd.model_from_diffusers(unet, scheduler)
        cfg = sd.ClassifierFreeGuidance(model, cond={"encoder_hidden_states": text},
                                        uncond={"encoder_hidden_states": negative}, scale=scale)
        ref = sd.sample(cfg, shape, x_T=x_T, **scheduler.sample_kwargs())
        plain = sd.sample(model.with_cond(encoder_hidden_states=text), shape, x_T=x_T, **scheduler.sample_kwargs())
    # one batched call of 2B against two calls of B: float32 round-off of the convolutions
    assert _rel(latents, ref.x) < TOL
    assert ref.stats.nfe == 2 * len(scheduler.timesteps)
    assert _rel(latents, plain.x) > 1e-2  # the guidance matters


# --- config round trip, custom timesteps and sigmas, img2img --------------------------------------
def test_save_config_from_config_round_trip(tmp_path):
    sched = sdd.Scheduler.from_config(diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2",
                                                              prediction_type="v_prediction").config,
                                      solver="unipc", grid=[1.0, 0.5, 0.1, 0.0])
    sched.save_config(tmp_path)
    again = sdd.Scheduler.from_config(sdd.Scheduler.load_config(tmp_path))
    def public(c):
        return {k: v for k, v in dict(c).items() if not k.startswith("_")}

    assert public(again.config) == public(sched.config)
    assert again.prediction == "v" and again.solver is sched.solver
    for s in (sched, again):
        s.set_timesteps(3)
    assert torch.equal(again.timesteps, sched.timesteps)
    assert torch.equal(again.grid_times, torch.tensor([1.0, 0.5, 0.1, 0.0], dtype=torch.float64))
    assert torch.equal(again.process.alphas_cumprod, sched.process.alphas_cumprod)


def test_set_timesteps_with_labels():
    sched = sdd.Scheduler(solver="dpm++2m")
    sched.set_timesteps(timesteps=[999, 750, 400, 100])
    assert sched.timesteps.tolist() == [999, 750, 400, 100]
    assert torch.allclose(sched.process.time_label(sched.grid_times[:-1]), torch.tensor([999.0, 750, 400, 100],
                                                                                          dtype=torch.float64))
    assert float(sched.grid_times[-1]) == 0.0
    with pytest.raises(ValueError, match="exactly one of"):
        sched.set_timesteps(4, timesteps=[999, 500])


def test_set_timesteps_with_euler_sigmas_runs_on_those_sigmas():
    euler = diffusers.EulerDiscreteScheduler(use_karras_sigmas=True)
    euler.set_timesteps(5)
    sigmas = euler.sigmas.to(torch.float64)  # n + 1 values ending at 0
    sched = sdd.Scheduler(solver="euler")
    sched.set_timesteps(sigmas=sigmas)
    p, ts = sched.process, sched.grid_times
    assert torch.allclose(p.sigma(ts[:-1]) / p.alpha(ts[:-1]), sigmas[:-1], rtol=1e-10)
    assert float(ts[-1]) == 0.0 and len(sched.timesteps) == 5
    # the labels the network sees: diffusers interpolates t in log sigma, sdediff in log alpha; same to 0.5
    assert float((sched.timesteps.to(torch.float64) - euler.timesteps.to(torch.float64)).abs().max()) < 0.5


@pytest.mark.parametrize("solver", ["dpm++2m", "heun", "ancestral"])
def test_img2img_start_with_add_noise(solver):
    """The img2img loop of diffusers (strength < 1, set_begin_index, add_noise at the first label)
    equals sd.solve from the noised image over the rest of the grid."""
    unet = _unet()
    sched = sdd.Scheduler(solver=solver, grid="logsnr")
    n, strength = 5, 0.6
    sched.set_timesteps(n)
    init_timestep = min(int(n * strength), n)
    t_start = max(n - init_timestep, 0)
    timesteps = sched.timesteps[t_start * sched.order:]
    sched.set_begin_index(t_start * sched.order)
    g = torch.Generator().manual_seed(1)
    image, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    latents = sched.add_noise(image, noise, timesteps[:1])
    start = latents.clone()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for t in timesteps:
            latents = sched.step(unet(latents, t).sample, t, latents, generator=gen).prev_sample
        ref = sd.solve(sdd.model_from_diffusers(unet, sched), start, ts=sched.grid_times[t_start:], solver=solver,
                       generator=torch.Generator().manual_seed(2))
    assert _rel(latents, ref.x) < TOL
    assert ref.stats.nfe == len(timesteps)
    # add_noise is diffusers' at the same label
    ddpm = diffusers.DDPMScheduler()
    lab = torch.tensor([int(timesteps[0])] * SHAPE[0]) if sched.timesteps.dtype == torch.int64 else None
    if lab is not None:
        assert torch.allclose(sched.add_noise(image, noise, lab), ddpm.add_noise(image, noise, lab), rtol=1e-5,
                              atol=1e-6)


@pytest.mark.parametrize(("solver", "match"), [("heun", "restarted at request 1 makes other requests"),
                                               ("dpm_solver_2", "intermediate stage")])
def test_img2img_start_inside_a_step_is_refused(solver, match):
    sched = sdd.Scheduler(solver=solver, grid="logsnr")
    sched.set_timesteps(3)  # heun: t0, t1 | t1, t2 | t2, denoise; dpm_solver_2: t0, s0 | t1, s1 | t2, denoise
    sched.set_begin_index(1)  # the second stage of the first step
    with pytest.raises(ValueError, match=match):
        sched.step(torch.zeros(SHAPE), sched.timesteps[1], torch.zeros(SHAPE))


def test_add_noise_matches_diffusers_on_integer_labels():
    ddpm = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sched = sdd.Scheduler.from_config(ddpm.config)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    lab = torch.tensor([0, 10, 500, 999])
    # diffusers' float32 table against sdediff's float64 one
    assert torch.allclose(sched.add_noise(x0, eps, lab), ddpm.add_noise(x0, eps, lab), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(sched.add_noise(x0, eps, lab + 1), ddpm.add_noise(x0, eps, lab), rtol=1e-5, atol=1e-6)


def test_worker_thread_ends_on_set_timesteps_and_on_collection():
    """An interrupted pipeline leaves no thread behind: the next set_timesteps, or dropping the
    scheduler, cancels the paused solve. A deep copy (without the worker) still works."""
    import copy
    import gc
    import threading
    import time

    def workers():
        return sum(t.name == "sdediff-scheduler" and t.is_alive() for t in threading.enumerate())

    def wait_for(n):
        for _ in range(200):
            if workers() == n:
                return True
            time.sleep(0.01)
        return False

    base = workers()
    x = torch.randn(1, 2, generator=torch.Generator().manual_seed(0))
    sched = sdd.Scheduler(solver="dpm++2m")
    sched.set_timesteps(4)
    sched.step(torch.zeros(1, 2), sched.timesteps[0], x)
    assert workers() == base + 1
    clone = copy.deepcopy(sched)
    assert clone._runner is None and workers() == base + 1
    sched.set_timesteps(4)
    assert wait_for(base)
    sched.step(torch.zeros(1, 2), sched.timesteps[0], x)
    assert workers() == base + 1
    del sched
    gc.collect()
    assert wait_for(base)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_pred_original_sample_is_the_x0_prediction_at_the_request(prediction):
    unet = _unet()
    sched = sdd.Scheduler(solver="dpm_solver_2", prediction_type=prediction, grid="karras")
    sched.set_timesteps(3)
    model = sdd.model_from_diffusers(unet, sched)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for k, t in enumerate(sched.timesteps[:3]):  # a grid point, an intermediate stage, a grid point
            out = sched.step(unet(x, t).sample, t, x)
            want = model.x0(sched.process.t_from_label(torch.tensor(float(t), dtype=torch.float64))
                            if sched.timesteps.dtype == torch.int64 else sched._times[k], x)
            assert torch.allclose(out.pred_original_sample, want, rtol=1e-5, atol=1e-5)
            x = out.prev_sample


@pytest.mark.parametrize("cls", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
                                 "SASolverScheduler", "DPMSolverSinglestepScheduler", "DDIMScheduler"])
def test_from_config_reads_linspace_as_the_source_scheduler_defines_it(cls, tmp_path):
    """A config's "linspace" (or the singlestep DPM-Solver's fixed spacing) gives the source scheduler's own
    labels, from a bare ``scheduler.config`` (no class name) and from the scheduler, and a save_config /
    from_config round trip keeps them. The multistep family's linspace has no label 0 (linspace_multistep);
    DDIM's ends on label 0, so the two readings differ at every n here."""
    kw = {} if cls == "DPMSolverSinglestepScheduler" else {"timestep_spacing": "linspace"}
    theirs = getattr(diffusers, cls)(num_train_timesteps=1000, **kw)
    for source in (theirs.config, theirs):
        ours = sdd.Scheduler.from_config(source, solver="ddim")
        ours.save_config(tmp_path)
        again = sdd.Scheduler.from_config(sdd.Scheduler.load_config(tmp_path))
        for n in (5, 10, 25):
            theirs.set_timesteps(n)
            for s in (ours, again):
                s.set_timesteps(n)
                assert s.timesteps.tolist() == theirs.timesteps.long().tolist()
    # an override of the spacing wins over the class's reading of the config's
    trailing = sdd.Scheduler.from_config(theirs.config, solver="ddim", timestep_spacing="trailing")
    trailing.set_timesteps(10)
    ddim = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    ddim.set_timesteps(10)
    assert trailing.timesteps.tolist() == ddim.timesteps.long().tolist()

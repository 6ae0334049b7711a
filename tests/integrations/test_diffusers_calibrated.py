"""The diffusers Scheduler takes a CalibratedGrid (its times; num_inference_steps must match)."""

from __future__ import annotations

import pytest
import torch

import sdediff as sd
from sdediff.bench_targets import TARGETS

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def cg():
    target = TARGETS["2d-sharp"]()
    model = target.model

    def fine(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sd.sample(model, tuple(x.shape), solver="unipc3", steps=200, grid="logsnr", x_T=x).x

    return sd.timesteps.calibrate(model, "dpm++2m", 6, n_samples=20, shape=(2,), reference=fine, max_evals=20)


def test_diffusers_scheduler_takes_the_grid(cg):
    from sdediff.integrations.diffusers import Scheduler

    sch = Scheduler(solver="dpm++2m", grid=cg, timestep_spacing="trailing")
    sch.set_timesteps(cg.steps)
    assert torch.allclose(sch.grid_times, cg.times)
    assert sch.config.grid == cg.to_dict()  # the whole record: from_config rebuilds the grid
    assert Scheduler.from_config(sch.config).grid == cg
    with pytest.raises(ValueError, match="CalibratedGrid of 6 steps"):
        sch.set_timesteps(cg.steps + 2)


def _scaled_grid(sched, steps=5):
    """A CalibratedGrid on the scheduler's process with per-step noise-prediction scales (not fitted)."""
    sched.set_timesteps(steps)
    ts = sched.grid_times
    return sd.CalibratedGrid(times=ts, solver="dpm++2m", nfe=steps, steps=steps, denoise=True,
                             calibration_rmse=float("nan"), validation_rmse=float("nan"), init_grid="logsnr",
                             init_validation_rmse=float("nan"), eps_scale=(1.0, 1.05, 0.9, 1.1, 1.3))


_AC = None


def _net(x, label):
    """The exact eps-network of data N(0, 0.25 I) on the DDPM linear schedule (labels 0..999)."""
    global _AC
    if _AC is None:
        from diffusers import DDPMScheduler

        _AC = DDPMScheduler().alphas_cumprod.to(torch.float64)
    lab = label.reshape(-1, 1).to(torch.float64)
    lo = lab.floor().clamp(0, 998).long()
    ac = _AC[lo] + (lab - lo) * (_AC[lo + 1] - _AC[lo])  # the labels the sdediff solve asks at are real
    a, s = ac.sqrt(), (1 - ac).sqrt()
    return s * x / (a * a * 0.25 + s * s)


def test_diffusers_scheduler_applies_the_grids_eps_scale():
    """The scheduler's loop equals sd.sample(grid=cg) with the scales applied, also restarted mid-grid
    (img2img) and after a save_config / from_config round trip; the scales change the result."""
    from sdediff.integrations.diffusers import Scheduler

    base = Scheduler(solver="dpm++2m", grid="logsnr")
    cg = _scaled_grid(base)
    model = sd.DiffusionModel(_net, base.process, "eps", time_label=base.time_label)
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loop(sch, x, start=0):
        sch.set_timesteps(cg.steps)
        if start:
            sch.set_begin_index(start)
        for t in sch.timesteps[start:]:
            x = sch.step(_net(x, torch.full((x.shape[0],), float(t))), t, x).prev_sample
        return x

    sch = Scheduler(solver="dpm++2m", grid=cg)
    ours = sd.sample(model, (4, 2), solver="dpm++2m", grid=cg, x_T=x_T).x
    assert torch.allclose(loop(sch, x_T), ours, rtol=1e-5, atol=1e-8)
    plain = sd.sample(model, (4, 2), solver="dpm++2m", grid=cg.times, x_T=x_T).x
    assert float((ours - plain).abs().max()) > 1e-2 * float(ours.abs().max())
    again = Scheduler.from_config(sch.config)
    assert again.grid == cg and torch.allclose(loop(again, x_T), ours, rtol=1e-5, atol=1e-8)
    restarted = loop(sch, x_T, start=2)  # x_T stands for the noised image at request 2
    ref = sd.solve(cg.model_for(model), x_T, ts=cg.times[2:], solver="dpm++2m").x
    assert torch.allclose(restarted, ref, rtol=1e-5, atol=1e-8)


def test_diffusers_scheduler_pred_original_sample_is_the_scaled_x0():
    """With per-step scales, step()'s pred_original_sample is the x0 the solver uses at that request
    (EpsScaled's s x0 + (1 - s) x / alpha), not the network's unscaled one; without scales it is unchanged."""
    from sdediff.integrations.diffusers import Scheduler

    base = Scheduler(solver="dpm++2m", grid="logsnr")
    cg = _scaled_grid(base)
    model = sd.DiffusionModel(_net, base.process, "eps", time_label=base.time_label)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for grid, wrap in ((cg, cg.model_for(model)), (cg.times, model)):
        sch = Scheduler(solver="dpm++2m", grid=grid)
        sch.set_timesteps(cg.steps)
        xs, shown = x, []
        for k, t in enumerate(sch.timesteps):  # dpm++2m requests the grid points, one each
            out = sch.step(_net(xs, torch.full((3,), float(t))), t, xs)
            shown.append((out.pred_original_sample, wrap.predict(sch.grid_times[k], xs).x0))
            xs = out.prev_sample
        for got, want in shown:
            assert torch.allclose(got, want, rtol=1e-6, atol=1e-9)
    assert any(s != 1.0 for s in cg.eps_scale)

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
    assert sch.config.grid == [float(v) for v in cg.times]
    with pytest.raises(ValueError, match="CalibratedGrid of 6 steps"):
        sch.set_timesteps(cg.steps + 2)

"""Issue 9, item 11: a huge step count streams its per-step schedule records instead of allocating them
all before the first step."""

from __future__ import annotations

import tracemalloc

import pytest
import torch

import sdediff as sd
from sdediff.solvers import diffusion

PROC = sd.VPSDE()
MODEL = sd.analytic.GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], 0.3).model(PROC)


class _Stop(Exception):
    pass


def _stop_after_two(i: int, t: torch.Tensor, x: torch.Tensor) -> None:
    if i == 1:
        raise _Stop


@pytest.mark.parametrize("solver", ["dpm++2m", "ddim", "euler", "unipc", "rk4", "ancestral"])
def test_a_million_steps_start_without_a_record_per_step(solver):
    """Before: ~590 MiB of python records (and 5.6 s) before the first step of 10**6 steps."""
    tracemalloc.start()
    try:
        with pytest.raises(_Stop):
            sd.sample(MODEL, (8, 2), solver=solver, steps=10**6, callback=_stop_after_two, generator=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MiB of python objects before the second step"


@pytest.mark.parametrize("solver", ["dpm++2m", "dpm++3m", "ddim", "euler", "rk4", "unipc", "dpm_solver_3",
                                    "edm_heun", "deis", "ancestral", "sde_dpm++2m"])
@pytest.mark.parametrize("process", [sd.VPSDE(), sd.RectifiedFlow(), sd.DiscreteVP()], ids=repr)
def test_a_streamed_schedule_gives_the_same_samples(monkeypatch, solver, process):
    """Chunks of 5 points (the streamed path on a 30-step grid) against the whole grid at once: bitwise."""
    model = sd.analytic.GaussianMixture([[-1.0, 0.5], [1.5, -0.5]], 0.4).model(process)
    x = process.prior_sample((6, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    whole = sd.sample(model, (6, 2), solver=solver, steps=30, x_T=x, generator=1).x
    monkeypatch.setattr(diffusion, "STREAM_CHUNK", 5)
    streamed = sd.sample(model, (6, 2), solver=solver, steps=30, x_T=x, generator=1).x
    assert torch.equal(whole, streamed)


def test_the_streamed_columns_read_like_the_tuples(monkeypatch):
    ts = sd.timesteps.logsnr(PROC, 23)
    whole = diffusion.Schedule.of(PROC, ts, data_end=True, model=MODEL)
    monkeypatch.setattr(diffusion, "STREAM_CHUNK", 4)
    streamed = diffusion.Schedule.of(PROC, ts, data_end=True, model=MODEL)
    assert isinstance(streamed.t, diffusion._Column)
    for field in ("t", "alpha", "sigma", "lam", "coef"):
        a, b = getattr(whole, field), getattr(streamed, field)
        assert len(a) == len(b) and list(a) == list(b) and a[-1] == b[-1] and list(a[3:9]) == b[3:9]
    with pytest.raises(IndexError):
        streamed.t[len(whole.t)]

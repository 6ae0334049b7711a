"""sdediff's ddim / dpm++2m / unipc against diffusers' schedulers on the same discrete schedule and
timesteps (diffusers from the ``bench`` extra; skipped without it). Relative agreement 1e-5."""

from __future__ import annotations

import pytest
import torch

import sdediff as sd
from sdediff.analytic import GaussianMixture

diffusers = pytest.importorskip("diffusers")

GMM = GaussianMixture([[-1.0, 0.5, 0.0], [1.0, -0.5, 0.3]], [[0.3, 0.5, 0.2], [0.4, 0.2, 0.6]])


def _setup(scheduler_cls, n, **cfg):
    sched = scheduler_cls(num_train_timesteps=1000, beta_schedule="linear", **cfg)
    sched.set_timesteps(n)
    if hasattr(sched, "sigmas"):
        # diffusers stores sigmas in float32; give it the same schedule in float64 so the
        # comparison measures the update rules, not float32 rounding (amplified by 1/alpha at T)
        ac = sched.alphas_cumprod.to(torch.float64)
        sig = ((1 - ac) / ac).sqrt()[sched.timesteps.long()]
        sched.sigmas = torch.cat([sig, sig.new_zeros(1)])
    proc = sd.DiscreteVP.from_diffusers(sched)
    exact = GMM.model(proc, prediction="eps")

    def net(x, label):  # a network on integer labels, as diffusers calls it
        return exact.net(x, proc.t_from_label(label.to(torch.float64)))

    model = sd.DiffusionModel(net, proc, "eps")
    labels = sched.timesteps.to(torch.float64)
    ts = torch.cat([proc.t_from_label(labels), torch.zeros(1, dtype=torch.float64)])  # ends on the data
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return sched, proc, model, net, ts, x


def _run_diffusers(sched, net, x):
    for lab in sched.timesteps:
        eps = net(x, torch.full((x.shape[0],), float(lab), dtype=torch.float64))
        x = sched.step(eps, lab, x).prev_sample
    return x


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# sdediff solver -> (diffusers scheduler, its options). UniPC: bh2 only, since diffusers' bh1 forms
# B(h) = h = -inf on the final step onto sigma = 0 and returns NaN.
PEERS = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
}


@pytest.mark.parametrize("n", [1, 7, 10, 25])
@pytest.mark.parametrize("solver", sorted(PEERS))
def test_matches_diffusers_scheduler(solver, n):
    scheduler, kwargs = PEERS[solver]
    sched, _, model, net, ts, x = _setup(getattr(diffusers, scheduler), n, **kwargs)
    ref = _run_diffusers(sched, net, x)
    # diffusers' last step onto sigma = 0 is the plain data prediction: sdediff's final_step="x0"
    sol = sd.solve(model, x, ts=ts, solver=solver, final_step="x0")
    assert sol.stats.nfe == n
    assert _rel(sol.x, ref) < 1e-5


def test_equivalence_check_can_fail():
    """The same comparison with the corrector off (UniP only) is far from diffusers' UniPC."""
    sched, _, model, net, ts, x = _setup(diffusers.UniPCMultistepScheduler, 10)
    ref = _run_diffusers(sched, net, x)
    sol = sd.solve(model, x, ts=ts, solver=sd.solvers.UniPC(2, corrector=False))
    assert _rel(sol.x, ref) > 1e-3


def test_trailing_grid_matches_diffusers_timesteps():
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    sched.set_timesteps(10)
    proc = sd.DiscreteVP.from_diffusers(sched)
    ts = sd.timesteps.trailing(proc, 10)
    assert torch.equal(proc.time_label(ts[:-1]).round().long(), sched.timesteps.long())
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000)  # leading
    sched.set_timesteps(10)
    assert torch.equal(proc.time_label(sd.timesteps.leading(proc, 10)[:-1]).round().long(), sched.timesteps.long())


@pytest.mark.parametrize("scheduler", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_linspace_multistep_grid_matches_diffusers_multistep_linspace(scheduler):
    """diffusers' multistep schedulers define 'linspace' without label 0; sdediff's linspace_multistep is
    that definition, and DDIM's linspace (which ends on label 0) is not."""
    proc = sd.DiscreteVP()
    for n in (5, 10, 25):
        sched = getattr(diffusers, scheduler)(num_train_timesteps=1000, timestep_spacing="linspace")
        sched.set_timesteps(n)
        ours = sd.timesteps.linspace_multistep(proc, n)
        assert float(ours[-1]) == 0.0 and len(ours) == n + 1
        assert torch.equal(proc.time_label(ours[:-1]).round().long(), sched.timesteps.long())
        ddim = proc.time_label(sd.timesteps.linspace(proc, n)[:-1]).round().long()
        assert not torch.equal(ddim, sched.timesteps.long())

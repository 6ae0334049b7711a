"""The bad-input matrix, continued: the checklist rows not covered in ``test_bad_inputs.py``.

Public API only. Rows that other work in progress must fix (adaptive step underflow, torchdiffeq
leaving ``[t_min, T]``) are ``xfail(strict=True)``: they turn into XPASS failures the moment they
are fixed, then drop the mark.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch
from _checklist import covers

import sdediff as sd
from sdediff.analytic import GaussianMixture

GMM = GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], 0.5)


class Recording:
    """An exact-score network (the mixture ``GMM``) that counts its calls and records their times."""

    def __init__(self, process, out_dtype=None):
        self.process, self.out_dtype, self.calls, self.times = process, out_dtype, 0, []

    def __call__(self, x, t):
        self.calls += 1
        self.times.append(float(t.min()))
        s = GMM.score(t, x.double(), self.process)
        return s.to(self.out_dtype or x.dtype)


def recorded(process=None, out_dtype=None):
    process = process or sd.VPSDE()
    net = Recording(process, out_dtype)
    return sd.DiffusionModel(net, process, "score"), net


FIXED = [n for n, s in sd.solvers.SOLVERS.items() if isinstance(s, sd.solvers.FixedStepSolver)]
FIXED_ODE = [n for n in FIXED if not sd.solvers.SOLVERS[n].stochastic]
DATA_END = [n for n in FIXED if sd.solvers.SOLVERS[n].data_end_ok]


# --- a one-off non-finite model output inside an adaptive solve -----------------------------------------
@covers("nan_model")
@pytest.mark.parametrize("solver", [
    "dpm_solver_23",
    "dopri5",
])
def test_adaptive_solver_rejects_a_one_off_nonfinite_step(solver):
    proc = sd.VPSDE()
    calls = [0]

    def net(x, t):  # exact, except for one NaN output on the 6th call
        calls[0] += 1
        s = GMM.score(t, x, proc)
        return torch.full_like(s, float("nan")) if calls[0] == 6 else s

    x = proc.prior_sample((4, 2), generator=0, dtype=torch.float64)
    sol = sd.solve(sd.DiffusionModel(net, proc, "score"), x, ts=[1.0, 1e-3], solver=solver)
    assert torch.isfinite(sol.x).all() and sol.stats.n_rejected >= 1


# --- model output dtype differs from the state's -------------------------------------------------------
@covers("out_dtype")
@pytest.mark.parametrize("solver", ["dpm++2m", "heun", "unipc", "euler_maruyama", "dopri5", "torchdiffeq:rk4"])
@pytest.mark.parametrize("out_dtype", [torch.float64, torch.float16])
def test_model_output_dtype_is_cast_back_to_the_state_dtype(solver, out_dtype):
    model, net = recorded(out_dtype=out_dtype)
    sol = sd.sample(model, (4, 2), solver=solver, steps=None if solver == "dopri5" else 6, generator=0,
                    dtype=torch.float32)
    assert net.calls > 0
    assert sol.x.dtype == torch.float32 and sol.xs.dtype == torch.float32  # never promoted to float64
    assert sol.ts.dtype == torch.float64 and torch.isfinite(sol.x).all()


# --- adaptive steps must stay inside [t_min, T] (issue 9 item 1; the torchdiffeq adapter is being changed) ------
@covers("t_range")
@pytest.mark.parametrize("direction", ["sample", "encode"])
def test_adaptive_torchdiffeq_steps_stay_in_the_interval_on_a_dense_grid(direction):
    # the default solver of solve(); every adaptive method and grids of 2-200 points: tests/reliability/test_adapters.py
    proc = sd.VPSDE()
    times = []

    def net(x, t):  # the reproducer: two well-separated components
        times.append(float(t.min()))
        times.append(float(t.max()))
        return GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], 0.3).score(t, x, proc)

    ts = sd.timesteps.logsnr(proc, 20)
    ts = ts if direction == "sample" else ts.flip(0)
    x = proc.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sol = sd.solve(sd.DiffusionModel(net, proc, "score"), x, ts=ts)
    assert torch.isfinite(sol.x).all()
    assert proc.t_min <= min(times) and max(times) <= proc.T


# --- too many steps for a discrete process ------------------------------------------------------------------
@covers("too_many_steps")
@pytest.mark.parametrize("grid", ["leading", "trailing", "linspace"])
def test_more_steps_than_training_timesteps(grid):
    model, net = recorded(sd.DiscreteVP())
    with pytest.raises(ValueError, match=r"n=1001 steps exceed the 1000 training timesteps.*n <= 1000"):
        sd.sample(model, (2, 2), solver="ddim", steps=1001, grid=grid, generator=0)
    with pytest.raises(ValueError, match="exceed the 1000 training timesteps"):
        sd.timesteps.get_grid(grid)(model.process, 5000)
    assert net.calls == 0
    ts = sd.timesteps.get_grid(grid)(model.process, 1000)  # exactly N is fine, no duplicates
    assert len(ts) == 1001 and bool((ts.diff() < 0).all())


# --- zero and one step through sample -----------------------------------------------------------------------
@covers("zero_steps")
def test_sample_and_grids_refuse_zero_steps():
    model, net = recorded()
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=r"steps must be an int >= 1"):
            sd.sample(model, (2, 2), steps=steps)
    for name, grid in sd.timesteps.GRIDS.items():
        proc = sd.DiscreteVP() if name in ("leading", "trailing", "linspace") else model.process
        with pytest.raises(ValueError, match=r"n \(the number of steps\) must be an int >= 1"):
            grid(proc, 0)
    assert net.calls == 0


@covers("one_step")
@pytest.mark.parametrize("solver", DATA_END)
def test_one_step_goes_from_T_to_the_data(solver):
    model, net = recorded()
    sol = sd.sample(model, (4, 2), solver=solver, steps=1, generator=0, dtype=torch.float64, save="all")
    assert sol.ts.tolist() == [model.process.T, 0.0] and sol.stats.n_steps == 1
    assert torch.isfinite(sol.x).all() and net.calls >= 1 and min(net.times) > 0.0


# --- inversion: increasing grids are integrated like decreasing ones ----------------------------------------
@functools.cache
def _encoded() -> tuple[torch.Tensor, torch.Tensor]:
    """Data points and their exact-to-1e-10 images at t = 1 under the PF-ODE (the reference)."""
    x = GMM.sample(4, generator=torch.Generator().manual_seed(1)).double()
    return x, sd.solve(GMM.model(sd.VPSDE()), x, ts=[0.05, 1.0], solver="dopri5", rtol=1e-10, atol=1e-10).x


@covers("decreasing")
@pytest.mark.parametrize("solver", FIXED_ODE)
def test_increasing_grid_converges_like_a_decreasing_one(solver):
    model, _ = recorded()
    x, ref = _encoded()
    errs = [float((sd.solve(model, x, ts=torch.linspace(0.05, 1.0, n + 1, dtype=torch.float64), solver=solver).x
                   - ref).abs().max()) for n in (16, 32)]
    assert errs[1] < 0.1 and errs[1] < 0.6 * errs[0], errs  # it converges to the forward flow map


@covers("decreasing")
def test_round_trip_through_an_increasing_grid():
    model, _ = recorded()
    x = GMM.sample(4, generator=torch.Generator().manual_seed(2)).double()
    up = sd.timesteps.time_uniform(model.process, 24).flip(0)
    z = sd.solve(model, x, ts=up, solver="rk4").x
    back = sd.solve(model, z, ts=up.flip(0), solver="rk4").x
    assert float((z - x).abs().max()) > 0.5  # it did move
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5)


@covers("decreasing")
@pytest.mark.parametrize("solver", ["ancestral", "sde_dpm++2m", "pc"])
def test_reverse_sde_solvers_refuse_an_increasing_grid(solver):
    model, net = recorded()
    with pytest.raises(ValueError, match=r"the grid must decrease"):
        sd.solve(model, torch.zeros(2, 2), ts=[0.1, 1.0], solver=solver, generator=0)
    assert net.calls == 0


# --- the data end t = 0 -----------------------------------------------------------------------------------
@covers("data_end")
@pytest.mark.parametrize("solver", DATA_END)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_ending_at_zero_denoises_without_evaluating_at_zero(solver, dtype):
    model, net = recorded()
    sol = sd.solve(model, model.process.prior_sample((4, 2), generator=0, dtype=dtype),
                   ts=[1.0, 0.5, 0.1, 0.0], solver=solver, generator=0)
    assert torch.isfinite(sol.x).all() and sol.x.dtype == dtype and sol.stats.n_steps == 3
    assert min(net.times) >= model.process.t_min  # no model call at t = 0 (no log(0), no 0/0)


@covers("data_end")
@pytest.mark.parametrize("solver", ["euler_maruyama", "dopri5", "torchdiffeq:rk4", "srk"])
def test_every_solver_ends_on_the_data_without_evaluating_t_zero(solver):
    """The end of a solve is solve()'s: the external and SDE solvers stop at the last positive time
    (adaptive ones at t_min) and the loop denoises; the model never sees t = 0."""
    model, net = recorded()
    sol = sd.solve(model, torch.zeros(2, 2, dtype=torch.float64), ts=[1.0, 0.5, 0.0], solver=solver, generator=0)
    assert float(sol.ts[-1]) == 0.0 and bool(torch.isfinite(sol.x).all())
    assert min(net.times) >= model.process.t_min


# --- rounding of dt -------------------------------------------------------------------------------------
@covers("tiny_final")
@pytest.mark.parametrize("solver", ["euler", "euler_maruyama", "torchdiffeq:euler", "torchdiffeq:rk4",
                                    "torchsde:euler"])
@pytest.mark.parametrize("dt", [0.1, 0.3, 0.07, 0.9 / 7])
def test_dt_that_almost_divides_the_span_takes_no_sliver_step(solver, dt):
    # 0.9 / 0.1 = 9.000000000000002 in floating point: a naive ceil adds a 1e-16 tenth step
    model, _ = recorded()
    system = sd.reverse_sde(model) if sd.solvers.SOLVERS[solver].stochastic else model
    sol = sd.solve(system, torch.zeros(2, 2, dtype=torch.float64), t0=1.0, t1=0.1, solver=solver, dt=dt,
                   generator=0)
    assert sol.stats.n_steps == round(0.9 / dt + 0.49)
    assert float(sol.ts[-1]) == 0.1 and torch.isfinite(sol.x).all()


# --- half precision -----------------------------------------------------------------------------------------
@covers("half")
@pytest.mark.parametrize("solver", ["dpm++2m", "heun", "unipc", "ddim", "euler_maruyama", "sde_dpm++2m",
                                    "dpm_solver_3"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_state(solver, dtype):
    model, _ = recorded()
    half = sd.sample(model, (8, 2), solver=solver, steps=10, generator=[*range(8)], dtype=dtype)
    full = sd.sample(model, (8, 2), solver=solver, steps=10, generator=[*range(8)], dtype=torch.float32)
    assert half.x.dtype == dtype and half.ts.dtype == torch.float64 and torch.isfinite(half.x).all()
    # the same noise, so the same samples up to half-precision rounding: about 2 ulp at |x| ~ 3
    # (float16 ulp 2e-3, bfloat16 1.6e-2 there); another seed differs by ~3
    ulp = {torch.float16: 2.0**-9, torch.bfloat16: 2.0**-6}[dtype]
    torch.testing.assert_close(half.x.float(), full.x, rtol=0, atol=2.5 * ulp)


# --- devices -------------------------------------------------------------------------------------------------
@covers("mps")
@pytest.mark.skipif(not torch.backends.mps.is_available(), reason="needs an MPS device")
def test_mps_runs_without_float64():
    sol = sd.sample(GMM.model(sd.VPSDE()), (4, 2), steps=5, generator=0, device="mps")
    assert sol.x.device.type == "mps" and torch.isfinite(sol.x.cpu()).all()


@covers("mps", "device")
def test_missing_mps_or_cuda_is_named_before_allocating(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for dev in ("mps", "cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"device='{dev}' was requested, but torch\..*is_available\(\) is False"):
            sd.sample(GMM.model(sd.VPSDE()), (4, 2), device=dev, generator=0)


@covers("device")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_state_with_cpu_times_and_cpu_generator():
    model = GMM.model(sd.VPSDE())
    x = model.process.prior_sample((4, 2), generator=0, device="cuda")
    sol = sd.solve(model, x, ts=torch.tensor([1.0, 0.5, 0.1]), solver="dpm++2m", generator=0)
    assert sol.x.device.type == "cuda" and torch.isfinite(sol.x).all()
    sol = sd.sample(model, (4, 2), solver="euler_maruyama", generator=torch.Generator().manual_seed(0), device="cuda")
    assert sol.x.device.type == "cuda"


@covers("device")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_on_the_wrong_device_is_a_clear_error():
    g = torch.Generator(device="cuda").manual_seed(0)
    with pytest.raises(ValueError, match=r"generator is on cuda.*torch\.Generator\(device='cpu'\)"):
        sd.sample(GMM.model(sd.VPSDE()), (4, 2), generator=g, device="cpu")


# --- batch of 1 vs N ----------------------------------------------------------------------------------------
@covers("batch_1_vs_n")
@pytest.mark.parametrize("solver", FIXED)
def test_sample_k_is_the_same_whatever_the_batch(solver):
    model = GMM.model(sd.VPSDE())
    seeds = [10, 11, 12, 13, 14]
    batch = sd.sample(model, (5, 2), solver=solver, steps=6, generator=seeds, dtype=torch.float64).x
    for k in (0, 3):
        one = sd.sample(model, (1, 2), solver=solver, steps=6, generator=[seeds[k]], dtype=torch.float64).x
        assert torch.equal(batch[k:k + 1], one), solver
    other = sd.sample(model, (1, 2), solver=solver, steps=6, generator=[99], dtype=torch.float64).x
    assert sd.solvers.SOLVERS[solver].stochastic is False or not torch.equal(batch[:1], other)  # seeds matter


# --- batch of 0 and generator lists through sample --------------------------------------------------------------
@covers("batch_0")
@pytest.mark.parametrize("solver", ["dpm++2m", "euler_maruyama", "dopri5", "srk"])
def test_sample_an_empty_batch(solver):
    model, net = recorded()
    sol = sd.sample(model, (0, 2), solver=solver, generator=0)
    assert sol.x.shape == (0, 2) and sol.stats.nfe == 0 and net.calls == 0


@covers("generators_len")
def test_sample_with_the_wrong_number_of_generators():
    model, net = recorded()
    with pytest.raises(ValueError, match=r"list of 2 generators for a batch of size 4"):
        sd.sample(model, (4, 2), generator=[1, 2])
    assert net.calls == 0


# --- extreme schedules -------------------------------------------------------------------------------------------
EXTREME = {
    "cosine_lambda_T_-10": lambda: sd.CosineVPSDE(T=0.99998),
    "edm_sigma_max_80": lambda: sd.EDM(sigma_max=80.0),
    "ve_sigma_max_378": lambda: sd.VESDE(sigma_max=378.0),
}


@covers("extreme")
@pytest.mark.parametrize("process", list(EXTREME))
@pytest.mark.parametrize("solver", ["dpm++2m", "dpm++3m", "heun", "unipc", "ddim", "dpm_solver_3", "euler_maruyama",
                                    "sde_dpm++2m"])
def test_extreme_schedules_give_finite_samples(process, solver):
    proc = EXTREME[process]()
    if process.startswith("cosine"):
        assert float(proc.log_snr(proc.T)) < -9.5
    sol = sd.sample(GMM.model(proc), (8, 2), solver=solver, steps=12, generator=0, dtype=torch.float32)
    assert torch.isfinite(sol.x).all()


@covers("extreme")
@pytest.mark.parametrize("solver", ["dpm++2m", "heun", "euler_maruyama"])
def test_huge_guidance_scale_stays_finite(solver):
    proc = sd.VPSDE()
    other = GaussianMixture([[3.0, 3.0]], 0.2)

    def net(x, t, y):  # two exact scores: the class-conditional target and the "unconditional" one
        return (other if y else GMM).score(t, x, proc)

    cfg = sd.ClassifierFreeGuidance(sd.DiffusionModel(net, proc, "score"), cond={"y": 1}, uncond={"y": 0}, scale=50.0)
    sol = sd.sample(cfg, (8, 2), solver=solver, steps=20, generator=0, dtype=torch.float64)
    assert torch.isfinite(sol.x).all()


# --- adaptive step underflow / max steps (issue 9 item 2; the solver core is being changed) --------------------
class _Runaway(Exception):
    pass


def _discontinuous(budget):
    calls = [0]

    def drift(t, x):
        calls[0] += 1
        if calls[0] > budget:  # the test's own time bound: the solver should have stopped long before
            raise _Runaway(f"still integrating after {budget} drift calls")
        return torch.where(x > 0, -1e3, 1e3) * torch.ones_like(x)

    return sd.ODE(drift, t_min=0.0, T=1.0)


_UNDER_O = bool(sys.flags.optimize)


@covers("underflow", "python_O")
@pytest.mark.parametrize("solver", ["dopri5", "bosh3"])
def test_max_steps_bounds_a_torchdiffeq_solve_in_every_mode(solver):
    ode = _discontinuous(2000)
    with pytest.raises(sd.SolverError, match="max_steps=100"):
        sd.solve(ode, torch.tensor([[0.5], [-0.3]], dtype=torch.float64), t0=0.0, t1=1.0, solver=solver,
                 rtol=1e-10, atol=1e-10, max_steps=100)


@covers("underflow")
def test_step_size_underflow_ends_the_solve():
    ode = _discontinuous(2000)
    with pytest.raises(sd.SolverError) as info:
        sd.solve(ode, torch.tensor([[0.5], [-0.3]], dtype=torch.float64), t0=0.0, t1=1.0, solver="dopri5",
                 rtol=1e-10, atol=1e-10)
    assert info.value.t is not None and info.value.dt is not None


@covers("underflow")
@pytest.mark.parametrize("solver", ["dopri5", "dpm_solver_23"])
def test_max_steps_error_names_t_dt_and_this_solves_nfe(solver):
    model, net = recorded()
    x = model.process.prior_sample((4, 2), generator=0, dtype=torch.float64)
    sd.solve(model, x, ts=[1.0, 0.5], solver="ddim")  # an earlier solve on the same model
    before = net.calls
    with pytest.raises(sd.SolverError, match=r"t=.*dt=") as info:
        sd.solve(model, x, ts=[1.0, 1e-3], solver=solver, max_steps=3)
    err = info.value
    assert err.t is not None and err.dt is not None and err.nfe == net.calls - before


# --- solver objects hold no per-call state ----------------------------------------------------------------------
def _smooth_net(x, t):
    return -2.0 * x + 0.3 * torch.tanh(x)


@covers("reuse")
@pytest.mark.parametrize("solver", FIXED)
def test_one_solver_object_serves_new_shapes(solver):
    import copy

    obj = sd.solvers.SOLVERS[solver]
    model = sd.DiffusionModel(_smooth_net, sd.VPSDE(), "score")
    small = sd.sample(model, (3, 2), solver=obj, steps=5, generator=[1, 2, 3], dtype=torch.float64).x
    image = sd.sample(model, (2, 3, 4, 4), solver=obj, steps=5, generator=[4, 5], dtype=torch.float64).x
    again = sd.sample(model, (3, 2), solver=obj, steps=5, generator=[1, 2, 3], dtype=torch.float64).x
    fresh = sd.sample(model, (2, 3, 4, 4), solver=copy.deepcopy(obj), steps=5, generator=[4, 5],
                      dtype=torch.float64).x
    assert torch.equal(small, again) and torch.equal(image, fresh)


@covers("reuse")
@pytest.mark.parametrize("solver", ["dpm++2m", "unipc", "sde_dpm++2m", "stochastic_heun", "dpm_solver_23"])
def test_one_solver_object_from_two_threads(solver):
    import threading

    model = sd.DiffusionModel(_smooth_net, sd.VPSDE(), "score")
    jobs = [((4, 2), [1, 2, 3, 4]), ((2, 3, 4, 4), [5, 6])] * 2

    def run(shape, seeds):
        return sd.sample(model, shape, solver=solver, steps=None if solver == "dpm_solver_23" else 8,
                         generator=seeds, dtype=torch.float64, rtol=1e-3, atol=1e-3).x

    expected = [run(*job) for job in jobs]
    got: list = [None] * len(jobs)

    def worker(i):
        got[i] = run(*jobs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(g is not None and torch.equal(g, e) for g, e in zip(got, expected, strict=True))


# --- python -O ------------------------------------------------------------------------------------------------------
@covers("python_O")
def test_the_package_validates_without_assert():
    import ast

    root = Path(sd.__file__).parent
    found = [f"{p.relative_to(root)}:{node.lineno}" for p in sorted(root.rglob("*.py"))
             for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))) if isinstance(node, ast.Assert)]
    assert not found, f"assert statements vanish under python -O; raise ValueError/TypeError instead: {found}"


# --- likelihood on integer data ------------------------------------------------------------------------------------
@covers("likelihood_int")
def test_likelihood_of_integer_data_needs_a_dequantization():
    # the bits/dim convention and the fixed Hutchinson probe: tests/unit/test_likelihood.py
    model, net = recorded()
    k = torch.randint(0, 256, (4, 2), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"integer dtype .*dequantize='uniform'"):
        sd.log_likelihood(model, k)
    assert net.calls == 0
    res = sd.log_likelihood(model, k, dequantize="uniform", data_range=(-1.0, 1.0), generator=0,
                            divergence="hutchinson")
    again = sd.log_likelihood(model, k, dequantize="uniform", data_range=(-1.0, 1.0), generator=0,
                              divergence="hutchinson")
    assert torch.isfinite(res.bpd).all() and torch.equal(res.bpd, again.bpd)


# --- PFGM++ -----------------------------------------------------------------------------------------------------------
@covers("pfgm")
def test_pfgm_kernel_draws_are_finite_at_extreme_D_and_use_no_global_rng():
    # matching EDM as D grows: tests/unit/test_fields_sampling.py::test_pfgmpp_approaches_edm_as_D_grows
    y = GMM.sample(16, generator=torch.Generator().manual_seed(0)).double()
    state = torch.get_rng_state()
    for D in (1e-3, 1.0, 1e7):  # small D: the Beta draw piles up at 1
        x = sd.fields.sample_kernel(y, 1.0, D, generator=0)
        assert torch.isfinite(x).all(), D
    assert torch.equal(torch.get_rng_state(), state)

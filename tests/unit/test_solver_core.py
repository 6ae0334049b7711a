"""Solver core v2: frozen solvers, declared capabilities, options, per-solve NFE, one end of solve, save=."""

from __future__ import annotations

import math
import threading

import pytest
import torch

import sdediff as sd
from sdediff.solvers import SOLVERS, FixedStepSolver, Solver
from sdediff.solvers.diffusion import extrapolation_weight

PROC = sd.VPSDE()
GMM = sd.analytic.GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], 0.3)
MODEL = GMM.model(PROC)
EXTERNAL = tuple(n for n in SOLVERS if n.startswith(("torchdiffeq:", "torchsde:")))
ALIASES = {n for n, s in SOLVERS.items() if s in [SOLVERS[e] for e in EXTERNAL] and n not in EXTERNAL}


def x_T(n: int = 4, seed: int = 0) -> torch.Tensor:
    return PROC.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_registered_solver_is_immutable(name):
    solver = SOLVERS[name]
    before = dict(vars(solver))
    for attr in ("order", "name", "S_churn", "eta", "new_attribute"):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(solver, attr, 10)
    with pytest.raises(AttributeError, match="immutable"):
        del solver.name
    assert dict(vars(solver)) == before


def test_a_changed_solver_is_a_new_object_and_the_registry_is_untouched():
    churned = sd.solvers.EDMHeun(S_churn=10.0, name="my_heun")
    assert churned.S_churn == 10.0 and SOLVERS["heun"].S_churn == 0.0 and SOLVERS["edm_heun"] is SOLVERS["heun"]


@pytest.mark.parametrize("name", sorted(n for n in SOLVERS if n not in EXTERNAL and n not in ALIASES))
def test_capabilities_are_declared(name):
    s = SOLVERS[name]
    assert isinstance(s, Solver)
    assert isinstance(s.data_end_ok, bool) and isinstance(s.budgeted, bool) and isinstance(s.nfe_per_step, int)
    assert s.options is None or isinstance(s.options, frozenset)
    if s.stochastic and s.order > 0:
        assert s.weak_order is not None, name  # weak order declared apart from the ODE order
    if isinstance(s, FixedStepSolver):
        assert s.nfe_for(3) >= 3


@pytest.mark.parametrize("name,bad", [("ddim", {"etaa": 1.0}), ("heun", {"S_churm": 10}),
                                      ("dpm++2m", {"eta": 0.5}), ("dpm_solver_23", {"htol": 1})])
def test_unknown_option_keys_raise_with_the_valid_ones(name, bad):
    calls = []
    model = sd.DiffusionModel(lambda x, t: calls.append(1) or x * 0, PROC, "eps")
    with pytest.raises(ValueError, match="unknown option") as err:
        sd.sample(model, (2, 2), solver=name, steps=4, generator=0, options=bad)
    assert not calls
    valid = SOLVERS[name].options
    for key in valid:
        assert key in str(err.value)


def test_known_options_still_work():
    a = sd.sample(MODEL, (3, 2), solver="ddim", steps=6, generator=1, options={"eta": 1.0}).x
    b = sd.sample(MODEL, (3, 2), solver="ancestral", steps=6, generator=1).x
    assert a.shape == b.shape and bool(torch.isfinite(a).all())


def test_four_threads_sharing_one_model_each_get_their_own_nfe():
    """The NFE of a solve is counted per solve (a context variable per thread), not on the model."""
    slow = sd.DiffusionModel(lambda x, t: torch.sin(x) * 0.1 + 0 * threading.get_ident(), PROC, "eps")
    results: dict[int, list[int]] = {}

    def work(k: int) -> None:
        got = []
        for steps in (10, 20, 40):
            got.append(sd.sample(slow, (8, 2), solver="heun", steps=steps, generator=k).stats.nfe)
        results[k] = got

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = [2 * 9 + 1, 2 * 19 + 1, 2 * 39 + 1]  # heun: 2 per step, the denoise step 1
    assert all(results[k] == expected for k in range(4)), results
    assert slow.nfe == 4 * sum(expected)  # the model's lifetime count still adds up


def test_solver_error_reports_this_solves_nfe():
    model = GMM.model(PROC)
    sd.sample(model, (2, 2), solver="dpm++2m", steps=30, generator=0)  # the model's lifetime count grows
    with pytest.raises(sd.SolverError) as err:
        sd.solve(model, x_T(), ts=[1.0, 1e-3], solver="dpm_solver_23", rtol=1e-12, atol=1e-12, max_steps=5)
    assert err.value.nfe is not None and 0 < err.value.nfe <= 5 * 3 + 1 < model.nfe


def nan_after(k: int):
    calls = []

    def net(x, t):
        calls.append(1)
        return x * 0 + (float("nan") if len(calls) > k else 0.0)
    return net


def test_nonfinite_error_names_step_and_this_solves_nfe():
    model = sd.DiffusionModel(nan_after(3), PROC, "eps")
    with pytest.raises(sd.NonFiniteError) as err:
        sd.sample(model, (2, 2), solver="dpm++2m", steps=10, generator=0)
    assert err.value.step == 3 and err.value.nfe == 4 and err.value.what == "model output"


SAMPLERS = sorted(n for n in SOLVERS if n not in EXTERNAL and n not in ALIASES)


@pytest.mark.parametrize("name", [*SAMPLERS, "dopri5", "srk"])
def test_sample_honours_denoise_for_every_solver(name):
    """denoise=True ends on the clean data with one denoise step after the solver's own steps,
    denoise=False stops at t_min — the same rule for every solver (one place: solve())."""
    solver = SOLVERS[name]
    on = sd.sample(MODEL, (4, 2), solver=name, steps=6, generator=3, save="all")
    off = sd.sample(MODEL, (4, 2), solver=name, steps=6, generator=3, save="all", denoise=False)
    assert float(on.ts[-1]) == 0.0 and float(off.ts[-1]) == pytest.approx(PROC.t_min)
    assert bool(torch.isfinite(on.x).all()) and bool(torch.isfinite(off.x).all())
    if not solver.adaptive:
        # the plain final step is x0-hat at the state before it
        plain = sd.sample(MODEL, (4, 2), solver=name, steps=6, generator=3, save="all", denoise="x0")
        d_s = MODEL.x0(float(on.ts[-2]), on.xs[-2])
        assert torch.allclose(plain.x, d_s, atol=1e-12) and torch.equal(plain.xs[:-1], on.xs[:-1])
        # the default extrapolates x0-hat at the last two grid times to σ = 0 (deterministic solvers; the
        # stochastic ones take the plain step); UniPC evaluates its last-but-one prediction before its corrector
        rho = [math.exp(-float(PROC.log_snr(float(t)))) for t in on.ts[-3:-1]]
        w = extrapolation_weight(rho[1], rho[0])
        expected = d_s if solver.stochastic else d_s + w * (d_s - MODEL.x0(float(on.ts[-3]), on.xs[-3]))
        if solver.stochastic or not name.startswith("unipc"):
            assert torch.allclose(on.x, expected, atol=1e-10), name
        else:
            assert 0 < float((on.x - d_s).abs().max()) and torch.allclose(on.x, expected, atol=1e-2)
        assert solver.stochastic or (w > 0 and float((on.x - d_s).abs().max()) > 1e-6)
    if isinstance(solver, FixedStepSolver) and not solver.budgeted:
        assert on.stats.nfe == solver.nfe_for(5) + 1 and off.stats.nfe == solver.nfe_for(6)


def test_adaptive_data_end_runs_to_t_min_then_denoises():
    full = sd.solve(MODEL, x_T(), ts=[1.0, 0.0], solver="dopri5", rtol=1e-7, atol=1e-7)
    to_tmin = sd.solve(MODEL, x_T(), ts=[1.0, PROC.t_min], solver="dopri5", rtol=1e-7, atol=1e-7)
    assert torch.allclose(full.x, MODEL.x0(PROC.t_min, to_tmin.x), atol=1e-12)
    assert full.stats.nfe == to_tmin.stats.nfe + 1 and full.xs.shape == (2, 4, 2)


@pytest.mark.parametrize("name", ["dpm++2m", "ddim", "heun", "dpm_solver_23", "dopri5", "euler_maruyama"])
def test_save_final_all_and_times(name):
    ts = sd.timesteps.logsnr(PROC, 8)
    ts = torch.cat([ts, ts.new_zeros(1)])
    all_ = sd.solve(MODEL, x_T(), ts=ts, solver=name, generator=2, save="all")
    fin = sd.solve(MODEL, x_T(), ts=ts, solver=name, generator=2, save="final")
    some = sd.solve(MODEL, x_T(), ts=ts, solver=name, generator=2, save=[float(ts[3]), 0.0])
    assert all_.xs.shape == (len(ts), 4, 2) and fin.xs.shape == (1, 4, 2) and some.xs.shape == (2, 4, 2)
    assert torch.equal(fin.x, all_.x) and torch.equal(fin.xs[0], all_.x) and torch.equal(fin.ts, ts[-1:])
    assert torch.equal(some.xs[0], all_.xs[3]) and torch.equal(some.xs[1], all_.x)
    assert fin.stats == all_.stats
    with pytest.raises(ValueError, match="not a time of the grid"):
        sd.solve(MODEL, x_T(), ts=ts, solver=name, generator=2, save=[0.123456])
    with pytest.raises(ValueError, match="save"):
        sd.solve(MODEL, x_T(), ts=ts, solver=name, save="everything")


def test_sample_keeps_only_the_final_state_by_default():
    sol = sd.sample(MODEL, (4, 2), steps=12, generator=0)
    assert sol.xs.shape == (1, 4, 2) and torch.equal(sol.xs[0], sol.x) and float(sol.ts[0]) == 0.0
    full = sd.sample(MODEL, (4, 2), steps=12, generator=0, save="all")
    assert full.xs.shape == (13, 4, 2) and torch.equal(full.x, sol.x)


def test_score_and_velocity_are_computed_only_when_read():
    pred = MODEL.predict(0.5, x_T())
    assert pred._score is None and pred._velocity is None
    assert torch.allclose(pred.score, GMM.score(0.5, x_T(), PROC), atol=1e-10)
    u = pred.velocity
    g2 = PROC.diffusion(torch.tensor(0.5, dtype=torch.float64)) ** 2
    drift = PROC.drift(torch.tensor(0.5, dtype=torch.float64), x_T()) - 0.5 * g2 * pred.score
    assert torch.allclose(u, drift, atol=1e-10)


def test_fast_path_at_grid_points_equals_the_general_conversion():
    """predict_at (per-solve float records) and predict (schedule evaluated at t) agree for every
    parameterization and a process with its own time labels."""
    for proc in (sd.VPSDE(), sd.DiscreteVP(), sd.EDM()):
        for pred in ("eps", "x0", "v", "velocity", "score"):
            if pred == "x0" and float(proc.sigma(proc.t_min)) == 0.0:
                continue
            net = lambda x, t: torch.tanh(x) * 0.3 + 0.01 * t.reshape(-1, 1)  # noqa: E731
            m = sd.DiffusionModel(net, proc, pred)
            x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            t = 0.5 * float(proc.T)
            a, b = m.predict(t, x), m.predict_at(m.coefficients(t), x)
            for field in ("x0", "eps", "score", "velocity"):
                assert torch.allclose(getattr(a, field), getattr(b, field), rtol=1e-12, atol=1e-12), (proc, pred, field)


def test_frozen_check_can_fail():
    """The immutability test above is not vacuous: a plain object would accept the assignment."""
    class Loose:
        order = 1
    obj = Loose()
    obj.order = 10
    assert obj.order == 10


# ----------------------------------------------------------------- the per-solve plan, remembered
def _mixture_model(process):
    return sd.analytic.GaussianMixture([[-1.0, 0.5], [1.5, -0.5]], 0.4).model(process)


@pytest.mark.parametrize("solver", ["ddim", "dpm++2m", "euler", "unipc"])
def test_a_repeated_solve_equals_a_fresh_one(solver):
    """The second solve reuses the remembered grid and schedule records; it must equal a solve on a new
    model and process (nothing remembered)."""
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p = sd.VPSDE()
    m = _mixture_model(p)
    first = sd.sample(m, (5, 2), solver=solver, steps=12, x_T=x).x
    again = sd.sample(m, (5, 2), solver=solver, steps=12, x_T=x).x
    fresh = sd.sample(_mixture_model(sd.VPSDE()), (5, 2), solver=solver, steps=12, x_T=x).x
    assert torch.equal(first, again) and torch.equal(again, fresh)


def test_a_reassigned_process_attribute_is_not_served_from_the_memo():
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    p = sd.VPSDE()
    m = _mixture_model(p)
    sd.sample(m, (5, 2), solver="dpm++2m", steps=10, x_T=x)
    p.beta_max = 15.0  # a user changing the schedule between solves
    after = sd.sample(m, (5, 2), solver="dpm++2m", steps=10, x_T=x)
    expected = sd.sample(_mixture_model(sd.VPSDE(beta_max=15.0)), (5, 2), solver="dpm++2m", steps=10, x_T=x)
    assert torch.equal(after.x, expected.x) and torch.equal(after.ts, expected.ts)


def test_mutating_a_returned_grid_does_not_change_later_solves():
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    m = _mixture_model(sd.VPSDE())
    sol = sd.sample(m, (3, 2), solver="ddim", steps=8, x_T=x)
    ts0, x0 = sol.ts.clone(), sol.x.clone()
    sol.ts[1:-1] += 0.01
    again = sd.sample(m, (3, 2), solver="ddim", steps=8, x_T=x)
    assert torch.equal(again.ts, ts0) and torch.equal(again.x, x0)


def test_the_final_denoise_reuses_the_solvers_last_record():
    """The denoise step at the last positive time gets the solver's record (no schedule evaluation):
    the result equals x0_hat computed from scratch at that time."""
    from sdediff.solvers.diffusion import predict

    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    m = _mixture_model(sd.VPSDE())
    ts = sd.timesteps.logsnr(m.process, 6)
    grid = torch.cat([ts, ts.new_zeros(1)])
    end = sd.solve(m, x, ts=grid, solver="dpm++2m", save="final", final_step="x0").x
    # dpm++2m lowers its last step's order before a data end, so compare with the denoise of a solve that
    # ends at ts[-1] with the same lowered order: one step of the data-end solve is x0_hat at ts[-1]
    inner = sd.solve(m, x, ts=grid, solver="dpm++2m", save="all").xs[-2]
    assert torch.allclose(end, predict(m, float(ts[-1]), inner)[0], rtol=0, atol=1e-14)


@pytest.mark.parametrize(("name", "consts", "carry"), [
    ("ddim(eta=1)", "Eta", None), ("ancestral", "Eta", None), ("sde_dpm++2m", "Eta", None),
    ("dpm_solver_fast", "FastOrders", None), ("stochastic_heun", "Churn", None),
    ("dpm++3m", None, "WarmStart"), ("deis", None, "WarmStart"), ("unipc", None, "UniPCCarry"),
])
def test_each_family_keeps_its_own_typed_state(name, consts, carry):
    """Per-solve constants and the carried value are small frozen records named for the family."""
    import dataclasses

    from sdediff.solvers import DDIM, get_solver
    from sdediff.solvers.base import SolveContext

    solver = DDIM(1.0) if name == "ddim(eta=1)" else get_solver(name)
    ts = sd.timesteps.logsnr(PROC, 8) if name != "dpm_solver_fast" else sd.timesteps.logsnr(PROC, 3)
    ctx = SolveContext(generator=torch.Generator().manual_seed(0), options={})
    x = x_T()
    state = solver.init(sd.probability_flow(MODEL) if not solver.stochastic else sd.reverse_sde(MODEL), x, ts, ctx)
    x, state = solver.step(None, 0, ts, x, state, ctx)
    for value, expected in ((state.consts, consts), (state.carry, carry)):
        if expected is None:
            assert value is None
        else:
            assert type(value).__name__ == expected and dataclasses.is_dataclass(value)
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(value, dataclasses.fields(value)[0].name, 0)


@pytest.mark.parametrize("name", ["srk", "milstein", "reversible_heun"])
def test_torchsde_float32_stage_times_stay_in_the_process_range(name):
    """torchsde steps in the state's dtype; a float32 stage time just below t_min (rounding of s + h on a
    grid dense near the data) is clamped onto the span instead of failing the model's range check."""
    x_T = PROC.prior_sample((4, 2), generator=3, dtype=torch.float32)
    sol = sd.sample(MODEL, (4, 2), solver=name, steps=6, grid="time_quadratic", generator=3, x_T=x_T)
    assert sol.x.dtype == torch.float32 and bool(torch.isfinite(sol.x).all())

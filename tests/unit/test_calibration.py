"""Calibrated time grids: sd.timesteps.calibrate, sd.CalibratedGrid, sample(grid=cg), the JSON file."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

import sdediff as sd
from sdediff.bench_targets import TARGETS
from sdediff.calibration import CalibratedGrid, _LambdaGrid

N = 200


# target and fine: tests/unit/conftest.py


@pytest.fixture(scope="module")
def cg(target, fine):
    return sd.timesteps.calibrate(target.model, "dpm++2m", 6, n_samples=N, shape=(2,), reference=fine,
                                  generator=3, max_evals=120)


def _draws(target, n=N, seed=3):
    g = torch.Generator().manual_seed(seed)
    x_cal = target.process.prior_sample((n, 2), generator=g, dtype=torch.float64)
    x_val = target.process.prior_sample((n, 2), generator=g, dtype=torch.float64)
    return x_cal, x_val


def _rmse(a, b):
    return float((a - b).pow(2).mean().sqrt())


def test_result_fields_and_budget(cg, target):
    assert isinstance(cg, sd.CalibratedGrid)
    assert cg.solver == "dpm++2m" and cg.nfe == 6 and cg.denoise
    ts = cg.times
    assert ts.dtype == torch.float64 and len(ts) == cg.steps + 1
    assert bool((ts[:-1] > ts[1:]).all())
    assert float(ts[0]) == target.process.T and float(ts[-2]) == target.process.t_min and float(ts[-1]) == 0.0
    assert cg.provenance["nfe_used"] <= 6 and cg.provenance["n_samples"] == N
    sol = sd.sample(target.model, (3, 2), solver="dpm++2m", grid=cg, generator=0)
    assert sol.stats.nfe <= 6


def test_calibration_beats_the_warm_start_on_held_out_draws(cg):
    assert cg.init_grid in sd.calibration.INIT_GRIDS
    assert cg.calibration_rmse < cg.provenance["init_calibration_rmse"][cg.init_grid]
    assert cg.validation_rmse < 0.5 * cg.init_validation_rmse


def test_sample_with_the_grid_reproduces_the_validation_error(cg, target, fine):
    _, x_val = _draws(target)
    with torch.no_grad():
        out = sd.sample(target.model, (N, 2), solver="dpm++2m", grid=cg, x_T=x_val).x
    assert _rmse(out, fine(x_val)) == pytest.approx(cg.validation_rmse, rel=1e-12)


def test_sample_refuses_another_step_count(cg, target, tmp_path):
    """steps= other than the grid's own is refused (it used to be ignored); its own count is accepted.
    sample_many takes the grid's count when steps is left out."""
    with pytest.raises(ValueError, match=f"CalibratedGrid of {cg.steps} steps.*steps={cg.steps + 3}"):
        sd.sample(target.model, (2, 2), solver="dpm++2m", grid=cg, steps=cg.steps + 3, generator=0)
    a = sd.sample(target.model, (2, 2), solver="dpm++2m", grid=cg, steps=cg.steps, generator=0).x
    b = sd.sample(target.model, (2, 2), solver="dpm++2m", grid=cg, generator=0).x
    assert torch.equal(a, b)
    many = sd.distributed.sample_many(target.model, 2, (2,), batch_size=2, solver="dpm++2m", grid=cg,
                                      progress=False)
    assert many.x.shape == (2, 2)
    with pytest.raises(ValueError, match="disagrees"):
        sd.distributed.sample_many(target.model, 2, (2,), batch_size=2, solver="dpm++2m", grid=cg,
                                   steps=cg.steps + 1, progress=False)


def test_a_perturbed_grid_is_worse(cg, target, fine):
    x_cal, _ = _draws(target)
    param = _LambdaGrid(target.process, cg.steps - 1, True)
    theta = torch.tensor(param.theta(cg.times))
    worse = param.times(theta + torch.linspace(-0.8, 0.8, len(theta), dtype=torch.float64))
    with torch.no_grad():
        out = sd.sample(target.model, (N, 2), solver="dpm++2m", grid=worse, x_T=x_cal).x
    assert _rmse(out, fine(x_cal)) > 1.5 * cg.calibration_rmse


def test_a_wrong_reference_shows_in_the_validation_error(target, fine):
    bad = sd.timesteps.calibrate(target.model, "dpm++2m", 6, n_samples=50, shape=(2,),
                                 reference=lambda x: fine(x) + 0.5, generator=1, max_evals=20)
    assert bad.validation_rmse > 0.4 and bad.init_validation_rmse > 0.4


def test_parametrisation_round_trip(target):
    param = _LambdaGrid(target.process, 5, True)
    ts = sd.timesteps.sampling_grid(target.process, sd.solvers.get_solver("dpm++2m"), 6, "karras", denoise=True)
    back = param.times(param.theta(ts))
    assert torch.allclose(back, ts, rtol=1e-9, atol=1e-12)
    wild = param.times([40.0, -40.0, 0.0, 30.0])  # any logits give a valid decreasing grid
    assert bool((wild[:-1] > wild[1:]).all()) and float(wild[-1]) == 0.0


def test_json_round_trip(cg, tmp_path):
    path = cg.save(tmp_path / "grid.json")
    back = CalibratedGrid.load(path)
    assert back == cg
    assert torch.equal(back.times, cg.times)
    assert back.provenance["process"] == repr(TARGETS["2d-sharp"]().process)
    assert json.loads(path.read_text())["version"] == sd.calibration.FORMAT_VERSION


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d: d.pop("times"), "lacks the field 'times'"),
    (lambda d: d.update(version=99), "unknown CalibratedGrid format version 99"),
    (lambda d: d.update(format="other"), "not a CalibratedGrid file"),
    (lambda d: d.update(nfe="6"), "field 'nfe' must be int"),
    (lambda d: d.update(denoise=1), "field 'denoise' must be bool"),
    (lambda d: d.update(steps=3), "steps=3 but the times hold"),
    (lambda d: d.update(times=[0.0, 0.5, 0.9]), "must decrease"),
    (lambda d: d.update(times=[0.5, 0.9, 0.0]), "strictly monotone"),
])
def test_load_errors(cg, tmp_path, edit, match):
    d = cg.to_dict()
    edit(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match):
        CalibratedGrid.load(path)


def test_load_rejects_non_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("not json")
    with pytest.raises(ValueError, match="not a CalibratedGrid JSON file"):
        CalibratedGrid.load(path)


def test_other_solver_warns_and_foreign_process_raises(cg, target):
    with pytest.warns(UserWarning, match="fitted for solver 'dpm\\+\\+2m', not 'unipc'"):
        sd.sample(target.model, (2, 2), solver="unipc", grid=cg, generator=0)
    edm = sd.analytic.GaussianMixture(torch.zeros(1, 2), 1.0).model(sd.EDM())
    with pytest.raises(ValueError, match="CalibratedGrid times must lie in"):
        sd.sample(edm, (2, 2), solver="dpm++2m", grid=cg, generator=0)


def test_bad_inputs(target, fine):
    m = target.model
    kw = {"shape": (2,), "reference": fine, "n_samples": 4, "max_evals": 0}
    with pytest.raises(ValueError, match="nfe=1 is below the minimum of solver 'dpm\\+\\+2m'"):
        sd.timesteps.calibrate(m, "dpm++2m", 1, **kw)
    with pytest.raises(ValueError, match="nfe must be >= 1"):
        sd.timesteps.calibrate(m, "dpm++2m", 0, **kw)
    with pytest.raises(TypeError, match="nfe must be an int"):
        sd.timesteps.calibrate(m, "dpm++2m", 6.0, **kw)
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        sd.timesteps.calibrate(m, "dpm++2m", 6, **{**kw, "n_samples": 0})
    with pytest.raises(TypeError, match="n_samples must be an int"):
        sd.timesteps.calibrate(m, "dpm++2m", 6, **{**kw, "n_samples": 10.5})
    with pytest.raises(ValueError, match="is stochastic"):
        sd.timesteps.calibrate(m, "euler_maruyama", 6, **kw)
    with pytest.raises(ValueError, match="is adaptive"):
        sd.timesteps.calibrate(m, "dpm_solver_23", 6, **kw)
    with pytest.raises(TypeError, match="model must be an sdediff model"):
        sd.timesteps.calibrate(object(), "dpm++2m", 6, **kw)
    with pytest.raises(TypeError, match="reference must be None, a dict"):
        sd.timesteps.calibrate(m, "dpm++2m", 6, **{**kw, "reference": 3})
    with pytest.raises(ValueError, match="shape must be the per-sample event shape"):
        sd.timesteps.calibrate(m, "dpm++2m", 6, **{**kw, "shape": (0,)})
    with pytest.raises(ValueError, match="init times must be 7 decreasing times"):
        sd.timesteps.calibrate(m, "dpm++2m", 6, **{**kw, "init": [1.0, 0.5, 0.001, 0.0]})
    with pytest.raises(ValueError, match="unknown grid"):
        sd.timesteps.calibrate(m, "dpm++2m", 6, **{**kw, "init": "nope"})
    with pytest.raises(ValueError, match="unknown optimizer"):
        sd.timesteps.calibrate(m, "dpm++2m", 6, **{**kw, "optimizer": "adam"})


def test_init_by_name_and_max_evals_zero_keeps_the_warm_start(target, fine):
    cg0 = sd.timesteps.calibrate(target.model, "dpm++2m", 5, n_samples=20, shape=(2,), reference=fine,
                                 init="karras", max_evals=0)
    ts = sd.timesteps.sampling_grid(target.process, sd.solvers.get_solver("dpm++2m"), cg0.steps, "karras",
                                    denoise=True)
    assert cg0.init_grid == "karras" and torch.equal(cg0.times, ts)
    assert cg0.provenance["evals"] == 0
    assert math.isclose(cg0.validation_rmse, cg0.init_validation_rmse, rel_tol=1e-12)


def test_validation_draws_given(cg, target, fine):
    """validation= replaces the fresh validation draws: the reported error is the grid's RMSE on them."""
    g = torch.Generator().manual_seed(11)
    x_val = target.process.prior_sample((60, 2), generator=g, dtype=torch.float64)
    cv = sd.timesteps.calibrate(target.model, "dpm++2m", 6, n_samples=N, shape=(2,), reference=fine,
                                generator=3, init=cg, max_evals=0, validation=x_val)
    assert cv.provenance["validation"] == "given" and cv.provenance["n_validation"] == 60
    out = sd.sample(target.model, (60, 2), solver="dpm++2m", grid=cv, x_T=x_val).x
    assert math.isclose(cv.validation_rmse, _rmse(out, fine(x_val)), rel_tol=1e-9)
    assert not math.isclose(cv.validation_rmse, cg.validation_rmse, rel_tol=1e-3)  # other draws, other error
    kw = {"shape": (2,), "reference": fine, "n_samples": 4, "max_evals": 0}
    for bad in (x_val[:, :1], x_val[0], x_val[:0], x_val.numpy()):
        with pytest.raises(ValueError, match="validation must be a tensor of prior draws of shape"):
            sd.timesteps.calibrate(target.model, "dpm++2m", 6, validation=bad, **kw)


def test_continuation_from_a_calibrated_grid(cg, target, fine):
    """init=CalibratedGrid: the same budget gives back the same grid (hence the same loss on the same
    draws); another budget gives a valid grid whose λ-fractions follow the fitted one's."""
    same = sd.timesteps.calibrate(target.model, "dpm++2m", 6, n_samples=N, shape=(2,), reference=fine,
                                  generator=3, init=cg, max_evals=0)
    assert same.init_grid == "calibrated nfe=6"
    assert torch.allclose(same.times, cg.times, rtol=1e-9, atol=1e-12)
    assert math.isclose(same.calibration_rmse, cg.calibration_rmse, rel_tol=1e-6)

    more = sd.timesteps.calibrate(target.model, "dpm++2m", 11, n_samples=20, shape=(2,), reference=fine,
                                  init=cg, max_evals=0)
    assert set(more.provenance["init_calibration_rmse"]) == {"calibrated nfe=6", *sd.calibration.INIT_GRIDS}
    assert more.steps == 11
    param = _LambdaGrid(target.process, 10, True)
    ts = param.resampled(cg.times)
    assert bool((ts[:-1] > ts[1:]).all()) and float(ts[-1]) == 0.0
    assert float(ts[0]) == target.process.T and float(ts[-2]) == target.process.t_min
    f_old, f_new = param.fractions(cg.times), param.fractions(ts)
    assert torch.allclose(f_new[::2], f_old, atol=1e-9)  # 5 steps to t_min -> 10: every other point kept
    assert torch.allclose(f_new[1::2], (f_old[:-1] + f_old[1:]) / 2, atol=1e-9)  # linear in between


def test_solver_sequence_keeps_the_best_on_the_calibration_draws(target, fine):
    """solver=(a, b): both fitted on the same draws with half the budget each; the smaller calibration RMSE
    wins, and each candidate is exactly what a single call with that share gives."""
    kw = {"n_samples": 100, "shape": (2,), "reference": fine}
    both = sd.timesteps.calibrate(target.model, ("dpm++2m", "unipc"), 6, generator=3, max_evals=60, **kw)
    cands = both.provenance["candidates"]
    assert set(cands) == {"dpm++2m", "unipc"}
    assert both.solver == min(cands, key=lambda k: cands[k]["calibration_rmse"])
    assert both.calibration_rmse == cands[both.solver]["calibration_rmse"]
    assert both.provenance["max_evals"] == 60 and all(c["evals"] <= 30 for c in cands.values())
    for name in cands:
        one = sd.timesteps.calibrate(target.model, name, 6, generator=3, max_evals=30, **kw)
        assert math.isclose(one.calibration_rmse, cands[name]["calibration_rmse"], rel_tol=1e-12)
        assert math.isclose(one.validation_rmse, cands[name]["validation_rmse"], rel_tol=1e-12)
    g = torch.Generator().manual_seed(3)
    again = sd.timesteps.calibrate(target.model, ["dpm++2m", "unipc"], 6, generator=g, max_evals=60, **kw)
    assert torch.equal(again.times, both.times) and again.solver == both.solver
    with pytest.raises(ValueError, match="empty sequence"):
        sd.timesteps.calibrate(target.model, [], 6, **kw)
    with pytest.raises(ValueError, match="with repeats"):
        sd.timesteps.calibrate(target.model, ["unipc", "unipc"], 6, **kw)


def test_max_seconds_covers_the_warm_start_and_the_validation(target, fine):
    """max_seconds is CPU time for the whole call apart from the reference solve: a warm start (or the
    validation still to come) that already takes the budget leaves the optimiser no evaluation."""
    m = target.model
    with pytest.warns(RuntimeWarning, match="spent before the optimiser started"):
        g = sd.timesteps.calibrate(m, "dpm++2m", 6, n_samples=4000, shape=(2,), reference=fine, max_seconds=1e-3)
    assert g.provenance["evals"] == 0 and g.init_grid in sd.calibration.INIT_GRIDS
    with pytest.warns(RuntimeWarning, match="spent before the optimiser started"):  # 2 x 2000 x one evaluation
        g = sd.timesteps.calibrate(m, "dpm++2m", 6, n_samples=10, n_validation=20_000, shape=(2,), reference=fine,
                                   max_seconds=0.5)
    assert g.provenance["evals"] == 0


def test_max_seconds_leaves_out_the_reference_solve(target, fine):
    def slow_reference(x: torch.Tensor) -> torch.Tensor:
        t0 = time.process_time()
        while time.process_time() - t0 < 0.4:  # a costly reference: CPU time outside the budget
            pass
        return fine(x)

    g = sd.timesteps.calibrate(target.model, "dpm++2m", 6, n_samples=10, shape=(2,), reference=slow_reference,
                               max_evals=5, max_seconds=0.6)
    assert g.provenance["reference_cpu_seconds"] >= 0.8
    assert g.provenance["evals"] == 5


def test_cached_reference_is_solved_once_for_several_budgets(target, fine):
    calls = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return fine(x)

    ref = sd.timesteps.cached_reference(target.model, counted)
    kw = {"n_samples": 30, "n_validation": 20, "shape": (2,), "generator": 5, "max_evals": 3}
    a = sd.timesteps.calibrate(target.model, "dpm++2m", 5, reference=ref, **kw)
    b = sd.timesteps.calibrate(target.model, "dpm++2m", 8, reference=ref, **kw)
    assert calls == [30, 20]  # the calibration and validation draws, once for both budgets
    assert a.provenance["reference"] == b.provenance["reference"] == "cached callable counted"
    plain = sd.timesteps.calibrate(target.model, "dpm++2m", 8, reference=fine, **kw)
    assert plain.validation_rmse == b.validation_rmse and torch.equal(plain.times, b.times)
    with pytest.raises(TypeError, match="denoise must be a bool"):
        sd.timesteps.cached_reference(target.model, denoise="yes")
    with pytest.raises(TypeError, match="reference must be None, a dict"):
        sd.timesteps.cached_reference(target.model, 3)

"""Per-step correction coefficients: sd.model.EpsScaled and calibrate(..., eps_scale=True)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import sdediff as sd
from sdediff.bench_targets import TARGETS
from sdediff.calibration import CalibratedGrid
from sdediff.model import EpsScaled

N = 200


# target and fine: tests/unit/conftest.py


@pytest.fixture(scope="module")
def cg(target, fine):
    return sd.timesteps.calibrate(target.model, "dpm++2m", 5, n_samples=N, shape=(2,), reference=fine,
                                  generator=3, max_evals=300, eps_scale=True)


def _val_draws(n=N, seed=3):
    """calibrate's validation draws: the second draw of the generator after the calibration draws."""
    g = torch.Generator().manual_seed(seed)
    proc = TARGETS["2d-sharp"]().process
    proc.prior_sample((n, 2), generator=g, dtype=torch.float64)
    return proc.prior_sample((n, 2), generator=g, dtype=torch.float64)


def _rmse(a, b):
    return float((a.to(torch.float64) - b).pow(2).mean().sqrt())


# ---------------------------------------------------------------------- the wrapper
def test_scale_is_piecewise_constant_on_the_grid(target):
    ts = torch.tensor([1.0, 0.5, 0.2, 1e-3], dtype=torch.float64)
    m = EpsScaled(target.model, ts, [1.5, 0.5, 2.0])
    got = m.scale_at(torch.tensor([1.0, 0.7, 0.5, 0.3, 0.2, 0.05, 1e-3, 1e-4], dtype=torch.float64))
    assert got.tolist() == [1.5, 1.5, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0]  # a grid time takes the step it starts


@pytest.mark.parametrize("t", [0.9, 0.5, 0.05])
def test_fields_follow_the_scaled_noise_prediction(target, t):
    """ε̃ = s ε̂ and x̃0 = (x − σ ε̃)/α on both paths (predict and the solvers' predict_at), score and
    drift from them; the same wrapper with all scales 1 is the model itself."""
    base = target.model
    ts = torch.tensor([1.0, 0.5, 0.2, 1e-3], dtype=torch.float64)
    m = EpsScaled(base, ts, [1.3, 0.7, 1.9])
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = float(m.scale_at(t))
    p = base.process
    tt = torch.tensor(t, dtype=torch.float64)
    a, sg = float(p.alpha(tt)), float(p.sigma(tt))
    b = base.predict(t, x)
    for pred in (m.predict(t, x), m.predict_at(base.coefficients(t), x)):
        assert torch.allclose(pred.eps, s * b.eps, rtol=1e-12, atol=1e-12)
        assert torch.allclose(pred.x0, (x - sg * s * b.eps) / a, rtol=1e-10, atol=1e-10)
        assert torch.allclose(pred.score, -s * b.eps / sg, rtol=1e-10, atol=1e-10)
        da, ds = float(p.d_alpha(tt)), float(p.d_sigma(tt))
        assert torch.allclose(pred.velocity, da * pred.x0 + ds * pred.eps, rtol=1e-10, atol=1e-10)
    ones = EpsScaled(base, ts, [1.0, 1.0, 1.0])
    assert torch.allclose(ones.predict(t, x).x0, b.x0, rtol=1e-12, atol=1e-12)
    # a per-sample time batch: each sample its own scale
    tb = torch.tensor([0.9, 0.3, 0.05, 0.9, 0.3], dtype=torch.float64)
    pb = m.predict(tb, x)
    sb = m.scale_at(tb)
    assert torch.allclose(pb.eps, sb[:, None] * base.predict(tb, x).eps, rtol=1e-12, atol=1e-12)


def test_sample_with_unit_scales_is_the_plain_sample_and_counts_once(target):
    model = target.model
    ts = sd.timesteps.sampling_grid(target.process, sd.solvers.get_solver("dpm++2m"), 6, "logsnr", denoise=True)
    x = target.prior(50, generator=1)
    plain = sd.sample(model, (50, 2), solver="dpm++2m", grid=ts, x_T=x)
    same = sd.sample(EpsScaled(model, ts, [1.0] * 6), (50, 2), solver="dpm++2m", grid=ts, x_T=x)
    assert torch.allclose(same.x, plain.x, rtol=1e-12, atol=1e-12)
    assert same.stats.nfe == plain.stats.nfe
    other = sd.sample(EpsScaled(model, ts, [1.0, 1.0, 1.0, 1.0, 0.8, 1.0]), (50, 2), solver="dpm++2m", grid=ts,
                      x_T=x)
    assert _rmse(other.x, plain.x) > 1e-3  # a scale acts


def test_wrapper_bad_inputs(target):
    ts = [1.0, 0.5, 1e-3]
    with pytest.raises(ValueError, match="one value per step of the grid \\(2\\), got 3"):
        EpsScaled(target.model, ts, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="finite and > 0"):
        EpsScaled(target.model, ts, [1.0, 0.0])
    with pytest.raises(ValueError, match="finite and > 0"):
        EpsScaled(target.model, ts, [1.0, float("nan")])
    with pytest.raises(ValueError, match="strictly decreasing"):
        EpsScaled(target.model, [0.5, 1.0, 1e-3], [1.0, 1.0])
    with pytest.raises(TypeError, match="model must be an sdediff model"):
        EpsScaled(object(), ts, [1.0, 1.0])


# ---------------------------------------------------------------------- calibrate(eps_scale=True)
def test_fitted_scales_generalise_and_sample_applies_them(cg, target, fine):
    """The scales lower the error on the separate validation draws below that of the same times alone, and
    sd.sample(grid=cg) reproduces both figures: with the scales, and (eps_scale stripped) without."""
    assert cg.eps_scale is not None and len(cg.eps_scale) == cg.steps
    grid_only = cg.provenance["grid_validation_rmse"]
    assert cg.validation_rmse < 0.85 * grid_only < cg.init_validation_rmse
    x_val = _val_draws()
    ref = fine(x_val)
    out = sd.sample(target.model, (N, 2), solver=cg.solver, grid=cg, x_T=x_val)
    assert math.isclose(_rmse(out.x, ref), cg.validation_rmse, rel_tol=1e-9)
    assert out.stats.nfe <= cg.nfe
    bare = dataclasses.replace(cg, eps_scale=None)
    out0 = sd.sample(target.model, (N, 2), solver=cg.solver, grid=bare, x_T=x_val).x
    assert math.isclose(_rmse(out0, ref), grid_only, rel_tol=1e-9)


def test_scales_do_not_change_the_times_or_the_budget(target, fine):
    """The times are those of the grid-only fit with the same evaluations for the times (the scales stage
    holds them fixed), and the evaluations stay within max_evals."""
    kw = {"n_samples": 60, "shape": (2,), "reference": fine, "generator": 4}
    scaled = sd.timesteps.calibrate(target.model, "dpm++2m", 5, max_evals=80, eps_scale=True, **kw)
    times_only = sd.timesteps.calibrate(target.model, "dpm++2m", 5, max_evals=40, **kw)
    assert torch.equal(scaled.times, times_only.times)
    assert scaled.provenance["evals"] <= 80
    assert scaled.calibration_rmse <= times_only.calibration_rmse
    assert times_only.eps_scale is None and "grid_validation_rmse" not in times_only.provenance


def test_solver_sequence_fits_the_winners_scales(target, fine):
    kw = {"n_samples": 60, "shape": (2,), "reference": fine, "generator": 4}
    both = sd.timesteps.calibrate(target.model, ["dpm++2m", "unipc"], 5, max_evals=120, eps_scale=True, **kw)
    cands = both.provenance["candidates"]
    assert set(cands) == {"dpm++2m", "unipc"} and all(c["evals"] <= 30 for c in cands.values())
    winner = min(cands, key=lambda k: cands[k]["calibration_rmse"])
    assert both.solver == winner
    assert both.calibration_rmse <= cands[winner]["calibration_rmse"]
    assert both.provenance["evals"] <= 120 and both.init_grid in sd.calibration.INIT_GRIDS
    assert math.isclose(both.provenance["grid_validation_rmse"], cands[winner]["validation_rmse"], rel_tol=1e-12)


def test_json_keeps_the_scales_and_reads_version_1(cg, tmp_path):
    back = CalibratedGrid.load(cg.save(tmp_path / "g.json"))
    assert back == cg and back.eps_scale == cg.eps_scale
    d = cg.to_dict()
    d.pop("eps_scale")
    d["version"] = 1
    (tmp_path / "v1.json").write_text(json.dumps(d))
    assert CalibratedGrid.load(tmp_path / "v1.json").eps_scale is None
    for bad, match in (([1.0, "x"], "must be null or a list of numbers"), ([1.0] * 2, "must hold 5 finite values"),
                       ([1.0, 1.0, -1.0, 1.0, 1.0], "must hold 5 finite values > 0")):
        d = cg.to_dict()
        d["eps_scale"] = bad
        (tmp_path / "bad.json").write_text(json.dumps(d))
        with pytest.raises(ValueError, match=match):
            CalibratedGrid.load(tmp_path / "bad.json")


def test_eps_scale_must_be_a_bool(target, fine):
    with pytest.raises(TypeError, match="eps_scale must be a bool"):
        sd.timesteps.calibrate(target.model, "dpm++2m", 5, n_samples=4, shape=(2,), reference=fine, max_evals=0,
                               eps_scale=1)

"""sd.benchmark: rows against an independently computed reference, measured NFE, the reference check,
the result's outputs, bad inputs, and ``sdediff bench --model``."""

from __future__ import annotations

import csv
import functools
import math
import textwrap
import warnings

import pytest
import torch

import sdediff as sd
from sdediff.analytic import GaussianMixture
from sdediff.benchmarking import BenchmarkResult, BenchmarkRow, ReferenceInfo, ReferenceWarning
from sdediff.cli import main

PROC = sd.VPSDE()
GMM = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64), 0.3)
MODEL = GMM.model(PROC)
REF = {"rtol": 1e-8, "atol": 1e-8}


def x_T(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def result() -> BenchmarkResult:
    return sd.benchmark(MODEL, x_T(), solvers=["ddim", "dpm++2m", "heun"], grids=["logsnr", "karras"],
                        nfe=[4, 8], reference=REF)


@functools.cache
def _independent_reference() -> tuple[torch.Tensor, torch.Tensor]:
    """dopri8 at 1e-10 from x_T() to t_min; and the true σ = 0 end: the flow in EDM's variables
    dy/du = y - D(e^u, y), u = log ρ, with the mixture's exact denoiser down to ρ = 1e-7 (not the
    benchmark's extrapolation)."""
    end = sd.solve(MODEL, x_T(), ts=[PROC.T, PROC.t_min], solver="dopri8", rtol=1e-10, atol=1e-10).x
    a_T, s_T = float(PROC.alpha(PROC.T)), float(PROC.sigma(PROC.T))
    edm = sd.EDM(sigma_min=1e-7, sigma_max=s_T / a_T)
    ode = sd.ODE(lambda u, y: y - GMM.denoiser(torch.exp(u), y, edm), t_min=math.log(1e-7), T=math.log(s_T / a_T))
    zero = sd.solve(ode, x_T() / a_T, ts=[ode.T, ode.t_min], solver="dopri8", rtol=1e-11, atol=1e-11).x
    return end, zero


def independent_reference(denoise: bool) -> torch.Tensor:
    """The t_min end, or the true σ = 0 end for the denoising configurations."""
    return _independent_reference()[int(denoise)]


def test_the_data_end_reference_is_the_sigma_zero_limit():
    """The benchmark's σ = 0 reference is the limit of the flow (extrapolated from levels >= ρ(t_min)),
    not the plain data prediction at t_min, which is off by O(ρ(t_min)^2)."""
    from sdediff.benchmarking import _Reference

    ref = _Reference(MODEL, x_T(), {"rtol": 1e-10, "atol": 1e-10})
    truth = independent_reference(True)
    err = float((ref.end(True) - truth).pow(2).mean().sqrt())
    plain = float((MODEL.x0(PROC.t_min, ref.end(False)) - truth).pow(2).mean().sqrt())
    assert err < 1e-6 < plain and ref.check(True) >= err


@pytest.mark.parametrize("denoise", [True, False])
def test_rows_match_a_direct_computation(result, denoise):
    x = x_T()
    ref, other = independent_reference(denoise), independent_reference(not denoise)
    rows = [r for r in result.rows if r.denoise == denoise]
    assert {(r.solver, r.grid) for r in rows} == {(s, g) for s in ("ddim", "dpm++2m", "heun")
                                                  for g in ("logsnr", "karras")}
    for r in rows:
        sol = sd.sample(MODEL, x.shape, solver=r.solver, grid=r.grid, steps=r.steps, denoise=denoise, x_T=x)
        assert r.nfe == sol.stats.nfe  # measured, the same count as the solve's own
        assert (float(sol.ts[-1]) == 0.0) == denoise
        e = (sol.x - ref).pow(2).mean(1).sqrt()
        # the σ = 0 reference is a limit extrapolated from the trajectory (about 1e-7 from the true end here)
        rel = 1e-4 if denoise else 1e-6
        assert r.rmse == pytest.approx(float(e.pow(2).mean().sqrt()), rel=rel)
        assert r.median_error == pytest.approx(float(e.median()), rel=rel)
        assert r.max_error == pytest.approx(float(e.max()), rel=rel)
        # the check can fail: scored against the other end the error is not the same
        wrong = float((sol.x - other).pow(2).mean().sqrt())
        assert wrong != pytest.approx(r.rmse, rel=1e-6)


def test_budget_gets_the_most_steps_that_fit(result):
    for r in result.rows:
        assert r.nfe <= r.budget
        more = sd.sample(MODEL, (1, 2), solver=r.solver, grid=r.grid, steps=r.steps + 1, denoise=r.denoise,
                         x_T=x_T(1))
        assert more.stats.nfe > r.budget, r
    heun = [r for r in result.rows if r.solver == "heun" and r.budget == 8]
    assert heun and all(r.steps < 8 for r in heun)  # two NFE a step: the steps are not assumed to be the NFE


def test_reference_check_passes_and_fails():
    good = sd.benchmark(MODEL, x_T(), solvers=["ddim"], grids=["logsnr"], nfe=[5], reference=REF)
    assert good.reference.ok and good.reference.check_rmse < good.reference.threshold
    assert good.reference.dtype == "float64"
    with pytest.warns(ReferenceWarning, match="not below a tenth"):
        bad = sd.benchmark(MODEL, x_T(), solvers=["dpm++2m"], grids=["logsnr"], nfe=[20],
                           reference={"solver": "dopri5", "rtol": 1e-2, "atol": 1e-2})
    assert not bad.reference.ok
    assert bad.reference.check_rmse >= bad.reference.threshold
    assert "NOT OK" in bad.to_markdown()


def test_adaptive_solvers_run_the_tolerance_ladder_and_report_the_end_they_ran():
    res = sd.benchmark(MODEL, x_T(), solvers=["dpm_solver_23", "dopri5"], nfe=[5], tols=[1e-2, 1e-3],
                       reference={"rtol": 1e-6, "atol": 1e-6})
    ours = [r for r in res.rows if r.solver == "dpm_solver_23"]
    assert {(r.denoise, r.tol) for r in ours} == {(d, t) for d in (True, False) for t in (1e-2, 1e-3)}
    assert all(r.grid == "adaptive" and r.budget is None for r in ours)
    tight, loose = (min((r for r in ours if r.denoise), key=lambda r: r.tol),
                    max((r for r in ours if r.denoise), key=lambda r: r.tol))
    assert tight.nfe > loose.nfe and tight.rmse < loose.rmse
    # a row's final-step policy is the one its solve ran (a solver that cannot end on the data runs its
    # denoise request to t_min: reported once, as such)
    dop = [(r.denoise, r.tol) for r in res.rows if r.solver == "dopri5"]
    assert len(dop) == len(set(dop))
    for d in (True, False):
        sol = sd.sample(MODEL, (1, 2), solver="dopri5", denoise=d, x_T=x_T(1), rtol=1e-2, atol=1e-2)
        assert {t for dd, t in dop if dd == (float(sol.ts[-1]) == 0.0)} == {1e-2, 1e-3}


def test_float32_network_gets_a_float32_reference():
    net64 = MODEL.net
    lin = torch.nn.Linear(2, 2)  # a float32 layer: refuses float64 inputs

    def net(x, t):
        return net64(x, t) + 0.0 * lin(x)

    model = sd.DiffusionModel(net, PROC, prediction="score")
    x = x_T().float()
    res = sd.benchmark(model, x, solvers=["ddim"], grids=["logsnr"], nfe=[5])
    assert res.reference.dtype == "float32" and "refused" in res.reference.note
    assert res.dtype == "float32"


@pytest.mark.filterwarnings("ignore::sdediff.benchmarking.ReferenceWarning")
def test_shape_and_generator_draw_the_start():
    kw = {"solvers": ["ddim"], "grids": ["logsnr"], "nfe": [3], "reference": {"solver": "dopri5", "rtol": 1e-3,
                                                                               "atol": 1e-3}}
    a, b, c = (sd.benchmark(MODEL, (8, 2), generator=seed, **kw) for seed in (1, 1, 2))
    assert a.shape == (8, 2)
    assert [r.rmse for r in a.rows] == [r.rmse for r in b.rows]
    assert [r.rmse for r in a.rows] != [r.rmse for r in c.rows]


def _row(solver, nfe, rmse, budget=None, denoise=True):
    return BenchmarkRow(solver, "g", denoise, nfe if budget is None else budget, None, nfe, nfe, rmse, rmse, rmse, 0.0)


def _result(rows):
    ref = ReferenceInfo("dopri8", 1e-10, 1e-10, "float64", 100, 0.0, 1.0, True)
    return BenchmarkResult(tuple(rows), ref, "m", (2, 2), "float64")


def test_best_and_growth():
    res = _result([_row("a", 5, 0.5), _row("a", 10, 0.1), _row("a", 20, 0.2), _row("b", 5, 0.3), _row("b", 10, 0.4),
                   _row("c", 20, math.nan)])
    assert res.best(5).solver == "b"
    assert res.best(12).rmse == 0.1
    assert res.best(4) is None
    with pytest.raises(ValueError, match="nfe must be an int"):
        res.best(0)
    grows = res.growth(1.5)
    assert [(a.solver, a.nfe, b.nfe) for a, b in grows] == [("a", 10, 20)]  # 2x; b's 1.33x is within 1.5
    assert res.growth(2.5) == []
    assert "Error grows" in res.to_markdown()
    with pytest.raises(AttributeError):
        res.rows = ()  # frozen


def test_markdown_csv_and_plot(result, tmp_path):
    md = result.to_markdown()
    for s in ("ddim", "dpm++2m", "heun", "logsnr", "karras", "denoise", "stop at t_min", "Reference: dopri8"):
        assert s in md
    path = result.to_csv(tmp_path / "r.csv")
    with path.open() as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == len(result.rows)
    assert [float(r["rmse"]) for r in back] == pytest.approx([r.rmse for r in result.rows])
    assert [int(r["nfe"]) for r in back] == [r.nfe for r in result.rows]
    pytest.importorskip("matplotlib")
    png = result.plot(tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("kw, match", [
    ({"solvers": ["euler_maruyama"]}, "stochastic"),
    ({"solvers": ["nope"]}, "unknown solver 'nope'"),
    ({"solvers": []}, "solvers must not be empty"),
    ({"grids": ["trailing"]}, "grid 'trailing' does not apply"),
    ({"grids": ["nope"]}, "unknown grid 'nope'"),
    ({"nfe": [0]}, "nfe budgets must be ints >= 1"),
    ({"tols": [0.0]}, "tols must be finite numbers > 0"),
    ({"reference": {"solver": "dopri8", "rtoll": 1e-9}}, "unknown keys"),
    ({"reference": "ddim"}, "adaptive ODE solver"),
])
def test_bad_inputs(kw, match):
    with pytest.raises(ValueError, match=match):
        sd.benchmark(MODEL, x_T(4), **{"solvers": ["ddim"], "grids": ["logsnr"], "nfe": [3], **kw})


def test_bad_start_and_model():
    with pytest.raises(ValueError, match="x_T must be a tensor or a shape"):
        sd.benchmark(MODEL, (0, 2))
    with pytest.raises(ValueError, match="generator= and dtype= are for drawing"):
        sd.benchmark(MODEL, x_T(4), generator=0)
    with pytest.raises(TypeError, match="model must be an sdediff model"):
        sd.benchmark(lambda x, t: x, x_T(4))


FACTORY = textwrap.dedent("""
    import torch
    import sdediff as sd
    from sdediff.analytic import GaussianMixture

    def factory():
        gmm = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64), 0.3)
        x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return gmm.model(sd.VPSDE()), x

    def not_a_pair():
        return 3
""")


@pytest.mark.parametrize("form", ["file", "module"])
def test_cli_model_writes_md_csv_png(tmp_path, monkeypatch, capsys, form):
    (tmp_path / "my_bench_factory.py").write_text(FACTORY)
    if form == "file":
        spec = f"{tmp_path / 'my_bench_factory.py'}:factory"
    else:
        monkeypatch.syspath_prepend(str(tmp_path))
        spec = "my_bench_factory:factory"
    out = tmp_path / "out"
    assert main(["bench", "--model", spec, "--solvers", "ddim,dpm++2m", "--grids", "logsnr", "--nfe", "3,6",
                 "--out", str(out), "--ref-tol", "1e-7", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| ddim | logsnr |" in printed
    with (out / "bench.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["solver"], r["budget"]) for r in rows} == {(s, b) for s in ("ddim", "dpm++2m") for b in ("3", "6")}
    md = (out / "bench.md").read_text()
    assert md.startswith("Benchmark of") and "rtol=1e-08" in md  # --ref-tol, ten times tighter
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_model_bad_specs(tmp_path):
    (tmp_path / "fac.py").write_text(FACTORY)
    for spec, match in [("no_colon", "must be 'pkg.module:factory'"), (f"{tmp_path}/missing.py:f", "does not exist"),
                        ("surely_not_a_module_xyz:f", "cannot import"), (f"{tmp_path / 'fac.py'}:nope", "no callable"),
                        (f"{tmp_path / 'fac.py'}:not_a_pair", "must return \\(model, shape\\)")]:
        with pytest.raises(SystemExit, match=match), warnings.catch_warnings():
            main(["bench", "--model", spec, "--no-progress"])
    with pytest.raises(SystemExit, match="--targets apply to the built-in targets"):
        main(["bench", "--model", f"{tmp_path / 'fac.py'}:factory", "--targets", "2d-sharp"])
    with pytest.raises(SystemExit, match="--ref-tol applies to --model"):
        main(["bench", "--ref-tol", "1e-6"])


def _two_modes() -> GaussianMixture:
    return GaussianMixture(torch.tensor([[0.0, 1.0], [0.0, -1.0]], dtype=torch.float64), 0.5)


def test_builtin_bench_takes_any_number_of_targets(monkeypatch):
    from sdediff import bench

    monkeypatch.setitem(bench.TARGETS, "two-modes", _two_modes)
    assert len(bench.TARGETS) == 3
    rows = bench.run(nfes=(5, 8), samples=8, solvers=["ddim"], grids=["logsnr"], peers=False, tols=(),
                     progress=False, targets=["two-modes"])
    assert {(r["target"], r["method"], r["grid"], r["nfe"]) for r in rows} == {
        ("two-modes", "ddim", "logsnr", 5), ("two-modes", "ddim", "logsnr", 8)}
    with pytest.raises(ValueError, match="unknown target 'nope'"):
        bench.run(targets=["nope"], progress=False)
    with pytest.raises(ValueError, match="unknown grid 'nope'"):
        bench.run(grids=["nope"], progress=False)
    with pytest.raises(ValueError, match="not sdediff solvers that end on the data"):
        bench.run(solvers=["dopri5"], progress=False)  # torchdiffeq's: a peer, not one of ours


def test_builtin_cli_filters(tmp_path, monkeypatch):
    from sdediff import bench

    monkeypatch.setitem(bench.TARGETS, "two-modes", _two_modes)
    out = tmp_path / "o"
    assert main(["bench", "--targets", "two-modes", "--solvers", "ddim", "--grids", "logsnr", "--nfe", "5",
                 "--samples", "8", "--no-progress", "--no-peers", "--out", str(out), "--name", "x"]) == 0
    with (out / "x.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    ours = [r for r in rows if r["family"] == "sdediff"]
    assert {(r["target"], r["method"], r["grid"], r["budget"]) for r in ours} == {("two-modes", "ddim", "logsnr", "5")}
    assert {r["target"] for r in rows} == {"two-modes"} and {r["family"] for r in rows} == {"sdediff"}
    with pytest.raises(SystemExit, match="unknown target"):
        main(["bench", "--targets", "nope", "--no-progress"])


def test_a_diverging_configuration_is_a_failed_row_not_a_crash():
    def net(x, t):  # the exact score, NaN far from the data (where a too-large Heun step lands)
        return torch.where(x.abs().amax(1, keepdim=True) > 5, math.nan, MODEL.net(x, t))

    model = sd.DiffusionModel(net, PROC, prediction="score")
    res = sd.benchmark(model, x_T(), solvers=["heun"], grids=["time_uniform"], nfe=[4, 6], denoise=False,
                       reference={"rtol": 1e-6, "atol": 1e-6})
    failed, ok = sorted(res.rows, key=lambda r: r.budget)
    assert failed.budget == 4 and failed.nfe == -1 and math.isnan(failed.rmse) and "NonFiniteError" in failed.note
    assert ok.budget == 6 and math.isfinite(ok.rmse) and ok.nfe == 6
    assert res.best(6) == ok and res.growth() == [] and res.reference.ok


def test_final_step_policies_are_rows():
    """denoise=("x0", True): the plain and the extrapolated final step are separate series, each row the same
    as sample() with that policy, and the extrapolated one is closer to the sigma = 0 limit at many steps."""
    x = x_T()
    res = sd.benchmark(MODEL, x, solvers=["dpm++2m"], grids=["logsnr"], nfe=[8, 40], denoise=("x0", True),
                       reference=REF)
    by = {(r.final_step, r.budget): r for r in res.rows}
    assert set(by) == {("x0", 8), ("x0", 40), ("extrapolate", 8), ("extrapolate", 40)}
    for (policy, _), r in by.items():
        assert r.denoise
        sol = sd.sample(MODEL, x.shape, solver="dpm++2m", grid="logsnr", steps=r.steps, denoise=policy, x_T=x)
        e = (sol.x - independent_reference(True)).pow(2).mean(1).sqrt()
        assert r.rmse == pytest.approx(float(e.pow(2).mean().sqrt()), rel=1e-4)
    assert by[("extrapolate", 40)].rmse != by[("x0", 40)].rmse
    assert "denoise (plain x0)" in res.to_markdown() and "denoise (extrapolated)" in res.to_markdown()
    with pytest.raises(ValueError, match="denoise policies"):
        sd.benchmark(MODEL, x, solvers=["ddim"], grids=["logsnr"], nfe=[4], denoise="jump")


def test_extrapolated_final_step_removes_the_floor():
    """On a sharp mixture under the DDPM schedule (rho(t_min) = 0.01) the plain final step keeps an error of
    order rho^2 at 200 steps; the extrapolated one is far below it (the check fails with the plain step)."""
    from sdediff.bench_targets import TARGETS

    tgt = TARGETS["2d-sharp"]()
    x = tgt.prior(64, generator=0)
    truth = tgt.reference_data(x)
    err = {}
    for policy in ("x0", True):
        sol = sd.sample(tgt.model, x.shape, solver="unipc", steps=200, denoise=policy, x_T=x)
        err[policy] = float((sol.x - truth).pow(2).mean().sqrt())
    assert err["x0"] > 5e-4 and err[True] < 0.2 * err["x0"], err

"""Adaptive solvers to RMSE 1e-3 (issue 10) and the budget-growth scan of the fixed-step solvers.

Part 1 (``ladder``): every adaptive method over a tolerance ladder of quarter decades
(rtol = atol = tol, 1e-1 ... 1e-6, stopped at the first tolerance reaching RMSE <= 1e-3 or past
2000 NFE) on the four targets of :data:`sdediff.bench_targets.TARGETS`, reporting the NFE of the first
*measured* ladder point with RMSE <= 1e-3 (no interpolation between ladder points).

* sdediff: ``sd.sample(model, shape, solver=name, x_T=x_T, rtol=tol, atol=tol)`` (the default end:
  integrate to ``t_min``, denoise onto σ = 0) for ``dpm_solver_12``, ``dpm_solver_23`` and sdediff's
  torchdiffeq-tableau solvers (``dopri5``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``, ``tsit5``).
* torchdiffeq ``dopri5`` on the flow in EDM variables (below), down to ρ = 1e-7 (σ = 0 reference).
* k-diffusion ``sample_dpm_adaptive`` (orders 2 and 3, its defaults otherwise) from ρ(T) to
  ρ(t_min) of the target's process: compared with the ODE end at ρ(t_min).
* the official DPM-Solver ``method='adaptive'`` (orders 2 and 3, ``dpmsolver++``) on a linear VP
  schedule (β from 0.1 to 25, float64; the flow in λ is the same for every linear process), from
  λ(T) to λ(t_min) of the target and ``denoise_to_zero=True`` (σ = 0 reference).

Reference: the true σ = 0 end of the probability-flow ODE from the same x_T, in EDM variables
y = x/α, ρ = σ/α with the distribution's exact denoiser D: dy/du = y − D(e^u, y), u = log ρ, from
log ρ(T) to log 1e-7 (torchdiffeq dopri8, rtol = atol = 1e-10, float64), keeping the state at
ρ(t_min) for the peers that stop there. RMSE per coordinate in the target's x variables.

Part 2 (``growth``): every registered deterministic fixed-step solver × grids (logsnr, karras,
time_uniform, time_quadratic) at NFE 5, 6, 8, 10, 12, 15, 20, 25, 50 (``sd.sample`` default end;
the most steps that fit a budget), listing every step where the RMSE grows by more than 1.5×.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/adaptive.py ladder --seed 0 --n 500
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/adaptive.py growth --seed 0 --n 500
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import sys
import types
from pathlib import Path
from typing import Any

import torch

import sdediff as sd
from sdediff.bench_targets import TARGETS, Target
from sdediff.processes import EDM
from sdediff.solvers import SOLVERS

PEERS_DIR = Path("/work/peers")
KD_DIR = Path("/tmp/kd/k_diffusion")
TOLS = tuple(10 ** (-k / 4) for k in range(4, 25))  # 1e-1 ... 1e-6, quarter decades
LEVEL = 1e-3
NFE_CAP = 2000
OURS = ("dpm_solver_12", "dpm_solver_23", "dopri5", "bosh3", "fehlberg2", "adaptive_heun", "tsit5")
RHO_END = 1e-7


# ---------------------------------------------------------------------------------------------- problem
class Problem:
    """One target, ``n`` prior draws (seed ``seed``), the reference ends at ρ(t_min) and at σ = 0."""

    def __init__(self, name: str, n: int, seed: int) -> None:
        self.name = name
        self.t: Target = TARGETS[name]()
        p = self.t.process
        self.x_T = self.t.prior(n, generator=seed)
        T, t_min = p.T, p.t_min
        self.a_T = float(p.alpha(T))
        self.rho_T = float(p.sigma(T) / p.alpha(T))
        self.a_min = float(p.alpha(t_min))
        self.rho_min = float(p.sigma(t_min) / p.alpha(t_min))
        self.lam_T, self.lam_min = -math.log(self.rho_T), -math.log(self.rho_min)
        self.edm = EDM(sigma_min=RHO_END, sigma_max=self.rho_T)
        self.y_T = self.x_T / self.a_T
        self.model = self.t.model
        self.nfe = 0
        y_min, y_0 = self.flow(self.y_T, [self.rho_T, self.rho_min, RHO_END], "dopri8", 1e-10)
        self.ref_min, self.ref_0 = self.a_min * y_min, y_0  # x at t_min; at σ = 0, x = y

    def denoiser(self, rho: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
        """The exact D(ρ, y) on states shaped like ``y`` (EDM variables)."""
        self.nfe += 1
        rho = torch.as_tensor(rho, dtype=torch.float64).reshape(-1)[:1].reshape(())
        flat = y.reshape(y.shape[0], -1).to(torch.float64)
        return self.t.dist.denoiser(rho, flat, self.edm).reshape(y.shape)

    def flow(self, y: torch.Tensor, rhos: list[float], method: str, tol: float) -> list[torch.Tensor]:
        from torchdiffeq import odeint

        def f(u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return y - self.denoiser(torch.exp(u), y)

        us = torch.tensor([math.log(r) for r in rhos], dtype=torch.float64)
        out = odeint(f, y, us, method=method, rtol=tol, atol=tol)
        return list(out[1:])

    def rmse(self, x: torch.Tensor, at_min: bool = False) -> float:
        ref = self.ref_min if at_min else self.ref_0
        if not bool(torch.isfinite(x).all()):
            return math.nan
        return float((x.to(torch.float64) - ref).pow(2).mean().sqrt())


# ---------------------------------------------------------------------------------------------- peers
def _load(name: str, path: Path, package: str | None = None) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    if package is not None:
        mod.__package__ = package
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def k_diffusion() -> Any:
    """k-diffusion's sampling.py as ``_kdpeer.sampling`` (its ``from . import utils`` gets the wheel's utils)."""
    if "_kdpeer.sampling" in sys.modules:
        return sys.modules["_kdpeer.sampling"]
    pkg = types.ModuleType("_kdpeer")
    pkg.__path__ = []  # type: ignore[attr-defined]
    sys.modules["_kdpeer"] = pkg
    # the wheel's utils.py imports torchvision (not installed): take the one function sampling.py uses
    # (append_dims) from its source
    import ast

    src = (KD_DIR / "utils.py").read_text()
    fns = [n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "append_dims"]
    utils = types.ModuleType("_kdpeer.utils")
    exec(compile(ast.Module(body=fns, type_ignores=[]), str(KD_DIR / "utils.py"), "exec"), utils.__dict__)
    sys.modules["_kdpeer.utils"] = utils
    pkg.utils = utils  # type: ignore[attr-defined]
    return _load("_kdpeer.sampling", PEERS_DIR / "k_diffusion_sampling.py", "_kdpeer")


def official() -> Any:
    if "_dpm_official" in sys.modules:
        return sys.modules["_dpm_official"]
    return _load("_dpm_official", PEERS_DIR / "dpm_solver_pytorch.py")


def run_kd(p: Problem, order: int, tol: float) -> tuple[torch.Tensor, int, bool]:
    kd = k_diffusion()
    p.nfe = 0

    def model(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return p.denoiser(sigma, y)

    y = kd.sample_dpm_adaptive(model, p.y_T.clone(), p.rho_min, p.rho_T, order=order, rtol=tol, atol=tol,
                               disable=True)
    return p.a_min * y, p.nfe, True


def run_official(p: Problem, order: int, tol: float) -> tuple[torch.Tensor, int, bool]:
    import contextlib
    import io

    dpm = official()
    ns = dpm.NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=25.0, dtype=torch.float64)
    t_start = float(ns.inverse_lambda(torch.tensor(p.lam_T, dtype=torch.float64)))
    t_end = float(ns.inverse_lambda(torch.tensor(p.lam_min, dtype=torch.float64)))
    p.nfe = 0

    def noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = ns.marginal_alpha(t[:1]).reshape(()), ns.marginal_std(t[:1]).reshape(())
        rho, y = s / a, x / a
        return (y - p.denoiser(rho, y)) / rho

    solver = dpm.DPM_Solver(noise, ns, algorithm_type="dpmsolver++")
    x0 = float(ns.marginal_alpha(torch.tensor([t_start], dtype=torch.float64))) * p.y_T
    with contextlib.redirect_stdout(io.StringIO()):
        x = solver.sample(x0.clone(), t_start=t_start, t_end=t_end, order=order, method="adaptive",
                          denoise_to_zero=True, atol=tol, rtol=tol)
    return x, p.nfe, False


def run_dopri5(p: Problem, tol: float) -> tuple[torch.Tensor, int, bool]:
    p.nfe = 0
    y = p.flow(p.y_T, [p.rho_T, RHO_END], "dopri5", tol)[0]
    return y, p.nfe, False


def run_ours(p: Problem, name: str, tol: float,
             options: dict[str, Any] | None = None) -> tuple[torch.Tensor, int, bool]:
    sol = sd.sample(p.model, tuple(p.x_T.shape), solver=name, x_T=p.x_T, rtol=tol, atol=tol, options=options)
    return sol.x, sol.stats.nfe, False


def methods(options: dict[str, Any] | None = None) -> dict[str, Any]:
    from functools import partial

    out: dict[str, Any] = {}
    for name in OURS:
        if name in SOLVERS:
            out[f"sdediff:{name}"] = partial(_ours_at, name=name, options=options if name.startswith("dpm") else None)
    out["torchdiffeq:dopri5"] = run_dopri5
    for k in (2, 3):
        out[f"k-diffusion:dpm_adaptive{k}"] = partial(_order_at, fn=run_kd, order=k)
        out[f"official:adaptive{k}"] = partial(_order_at, fn=run_official, order=k)
    return out


def _ours_at(p: Problem, tol: float, *, name: str, options: dict[str, Any] | None) -> Any:
    return run_ours(p, name, tol, options)


def _order_at(p: Problem, tol: float, *, fn: Any, order: int) -> Any:
    return fn(p, order, tol)


def ladder(p: Problem, fn: Any, log: Any = None) -> list[tuple[float, int, float]]:
    """(tol, NFE, RMSE) down the ladder until RMSE <= LEVEL or NFE > NFE_CAP."""
    pts = []
    for tol in TOLS:
        try:
            x, nfe, at_min = fn(p, tol)
            err = p.rmse(x, at_min)
        except Exception as exc:  # a failing solve is a row, not a crash of the benchmark
            if log:
                log(f"    tol={tol:.3g}: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        pts.append((tol, nfe, err))
        if log:
            log(f"    tol={tol:.3g} nfe={nfe} rmse={err:.3e}")
        if err <= LEVEL or nfe > NFE_CAP:
            break
    return pts


def first_hit(pts: list[tuple[float, int, float]]) -> int | None:
    hits = [nfe for _, nfe, e in pts if e <= LEVEL]
    return min(hits) if hits else None


def cmd_ladder(args: argparse.Namespace) -> None:
    targets = args.targets or list(TARGETS)
    ms = methods()
    if args.methods:
        ms = {k: v for k, v in ms.items() if any(s in k for s in args.methods)}
    table: dict[str, dict[str, Any]] = {}
    for tname in targets:
        p = Problem(tname, args.n, args.seed)
        print(f"== {tname}: rho_T={p.rho_T:.4g} rho(t_min)={p.rho_min:.4g}", flush=True)
        for m, fn in ms.items():
            pts = ladder(p, fn, log=print if args.verbose else None)
            hit = first_hit(pts)
            best = min((e for _, _, e in pts if math.isfinite(e)), default=math.nan)
            table.setdefault(m, {})[tname] = hit if hit is not None else f">{pts[-1][1] if pts else '?'} ({best:.1e})"
            print(f"  {m:32s} first NFE with RMSE<=1e-3: {table[m][tname]}", flush=True)
    print(f"\n| method | {' | '.join(targets)} |\n|---|{'---:|' * len(targets)}")
    for m, row in table.items():
        print(f"| {m} | {' | '.join(str(row.get(t, '—')) for t in targets)} |")


# ---------------------------------------------------------------------------------------------- growth
GROWTH_GRIDS = ("logsnr", "karras", "time_uniform", "time_quadratic")
GROWTH_NFES = (5, 6, 8, 10, 12, 15, 20, 25, 50)


def steps_for_budget(solver: Any, budget: int) -> int:
    """Steps of ``sd.sample`` that spend at most ``budget`` NFE (0 if none)."""
    if solver.budgeted:
        return budget
    best = 0
    for steps in range(1, budget + 1):
        nfe = solver.nfe_for(steps - 1) + 1  # steps - 1 solver steps + the denoise step
        if nfe <= budget:
            best = steps
    return best


def cmd_growth(args: argparse.Namespace) -> None:
    targets = args.targets or list(TARGETS)
    names = []
    seen: set[int] = set()
    for name, s in SOLVERS.items():
        if s.adaptive or s.stochastic or not s.data_end_ok or id(s) in seen or ":" in name:
            continue
        if args.methods and not any(m == name for m in args.methods):
            continue
        seen.add(id(s))
        names.append(name)
    flagged = []
    for tname in targets:
        p = Problem(tname, args.n, args.seed)
        for name in names:
            s = SOLVERS[name]
            for grid in GROWTH_GRIDS:
                errs: list[tuple[int, int, float]] = []
                for b in GROWTH_NFES:
                    steps = steps_for_budget(s, b)
                    if steps < 1:
                        continue
                    try:
                        sol = sd.sample(p.model, tuple(p.x_T.shape), solver=name, steps=steps, grid=grid, x_T=p.x_T)
                    except Exception as exc:
                        print(f"  {tname} {name} {grid} NFE {b}: {type(exc).__name__}: {str(exc)[:100]}")
                        continue
                    errs.append((b, sol.stats.nfe, p.rmse(sol.x)))
                line = " ".join(f"{b}:{e:.2e}" for b, _, e in errs)
                if args.verbose:
                    print(f"  {tname} {name:16s} {grid:15s} {line}", flush=True)
                for (b0, n0, e0), (b1, n1, e1) in itertools.pairwise(errs):
                    if n1 > n0 and (not math.isfinite(e1) or e1 > 1.5 * e0):
                        flagged.append((tname, name, grid, b0, b1, n0, n1, e0, e1))
                        print(f"  GROWTH {tname} {name} {grid}: NFE {n0}->{n1} RMSE {e0:.2e}->{e1:.2e} "
                              f"(x{e1 / e0:.2f})", flush=True)
    print(f"\n{len(flagged)} steps of > 1.5x growth")
    print("| target | solver | grid | NFE | RMSE | ratio |\n|---|---|---|---|---|---:|")
    for tname, name, grid, _, _, n0, n1, e0, e1 in flagged:
        print(f"| {tname} | {name} | {grid} | {n0} → {n1} | {e0:.2e} → {e1:.2e} | {e1 / e0:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("ladder", "growth"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--targets", nargs="*")
    ap.add_argument("--methods", nargs="*")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    (cmd_ladder if args.part == "ladder" else cmd_growth)(args)


if __name__ == "__main__":
    main()

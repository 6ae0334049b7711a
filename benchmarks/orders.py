"""Declared vs fitted orders of every registered solver (issue 9's closing table).

Strong (ODE) orders: issue 9's target, a 3-component anisotropic 2-D mixture, float64, under VP, EDM
and DiscreteVP; logSNR-uniform grids over each process's whole range with N = 32, 64, 128, 256 steps;
error = max |x_N - x_ref| over 8 prior samples against a scipy DOP853 solve (rtol = atol = 1e-12) of
the probability-flow ODE in λ (the reference of tests/convergence/test_order_mixture.py). Reported:
the least-squares slope over the four N and the last local slope (128 -> 256).
Weak orders: exact moments on a Gaussian target (tests/convergence/test_weak_order_exact.py: the
schemes are affine in state and noise there, so mean and variance come from one solve + autograd).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/orders.py      # writes benchmarks/orders.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "convergence"))

import test_order_mixture as mix  # noqa: E402
import test_weak_order_exact as weak  # noqa: E402

import sdediff as sd  # noqa: E402
from sdediff import timesteps  # noqa: E402
from sdediff.solvers import SOLVERS  # noqa: E402

NS = (32, 64, 128, 256)
PROCS = {"VP": sd.VPSDE(), "EDM": sd.EDM(), "DiscreteVP": sd.DiscreteVP()}
SKIP = {"dpm_solver_fast": "fixes its grid from an NFE budget (options['nfe'])", "pc": "declares order 0"}


def unique(pred) -> list[str]:
    seen, out = set(), []
    for name, s in SOLVERS.items():
        if pred(s) and id(s) not in seen and name not in SKIP:
            seen.add(id(s))
            out.append(name)
    return out


def strong(name: str, proc) -> tuple[float, float]:
    solver = SOLVERS[name]
    model = mix.MIX.model(proc)
    x = proc.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts0 = timesteps.logsnr(proc, 1)
    ref = mix.reference(proc, x, float(ts0[0]), float(ts0[-1]))
    errs = []
    for n in NS:
        ts = timesteps.logsnr(proc, n)
        kw = {}
        if solver.adaptive:  # no error control, first step one grid interval: it steps on the grid
            h0 = float(proc.log_snr(ts[1]) - proc.log_snr(ts[0]))
            kw = {"rtol": 1e10, "atol": 1e10, "options": {"h_init": h0}}
        errs.append(float((sd.solve(model, x, ts=ts, solver=solver, **kw).x - ref).abs().max()))
    le = np.log(errs)
    return float(-np.polyfit(np.log(NS), le, 1)[0]), float(-(le[-1] - le[-2]) / np.log(NS[-1] / NS[-2]))


class _Patch:
    def setattr(self, obj, name, value):
        setattr(obj, name, value)


def main() -> None:
    rows = ["| solver | declared order | " + " | ".join(f"{p} fit (local)" for p in PROCS) + " |",
            "|---|---:|" + "---:|" * len(PROCS)]
    for name in unique(lambda s: not s.stochastic and not (s.adaptive and s.name.startswith("torchdiffeq"))):
        cells = []
        for proc in PROCS.values():
            try:
                fit, loc = strong(name, proc)
                cells.append(f"{fit:.2f} ({loc:.2f})")
            except Exception as e:  # recorded, not hidden
                cells.append(f"error: {type(e).__name__}")
        rows.append(f"| {name} | {SOLVERS[name].order} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    rows += ["", "| stochastic solver | declared weak order | steps | fitted weak order (exact moments, VP) |",
             "|---|---:|---|---:|"]
    patch = _Patch()
    orig = weak.GaussianNoise.normal
    for name in weak.OURS:
        steps = weak.STEPS_FOR.get(name, weak.STEPS)
        try:
            fit = weak.slope(weak.weak_errors(name, patch, steps=steps), steps)
        finally:
            weak.GaussianNoise.normal = orig
        rows.append(f"| {name} | {SOLVERS[name].weak_order} | {', '.join(map(str, steps))} | {fit:.2f} |")
        print(rows[-1], flush=True)
    skipped = ", ".join(f"`{k}` ({v})" for k, v in SKIP.items())
    text = ("# Declared vs fitted orders\n\nCommand: `OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/orders.py`"
            f" (setup in the script's docstring). Not fitted: {skipped}; torchdiffeq's adaptive methods and the"
            " torchsde solvers (their tableaux are theirs).\n\n" + "\n".join(rows) + "\n")
    (ROOT / "benchmarks" / "orders.md").write_text(text)


if __name__ == "__main__":
    main()

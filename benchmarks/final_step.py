r"""The last step onto σ = 0: the plain data prediction against the extrapolated one (issue 10).

``OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/final_step.py [--samples 300] [--steps 20 50 200 400]``

For each exact target of :data:`sdediff.bench_targets.TARGETS`, ``sd.sample`` from the same
:math:`x_T` with ``denoise="x0"`` (x̂0 at the last positive time) and ``denoise=True`` (the default: the
data predictions at the last two grid times extrapolated linearly in ρ² to 0), against the true σ = 0
end of the flow (:meth:`~sdediff.bench_targets.Target.reference_data`). RMSE per coordinate and the
median per-sample error. A final step that sets a floor shows as an error that stops falling with the
steps.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

import sdediff as sd
from sdediff.bench_targets import TARGETS

CONFIGS = (("unipc", "logsnr"), ("dpm++2m", "logsnr"), ("dpm++2m", "karras"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 50, 200, 400])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print("command: python benchmarks/final_step.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    print()
    print("| target | solver, grid | steps | plain x̂0: RMSE (median) | extrapolated: RMSE (median) |")
    print("|---|---|---:|---:|---:|")
    for name, make in TARGETS.items():
        tgt = make()
        x_T = tgt.prior(args.samples, generator=args.seed)
        ref = tgt.reference_data(x_T)
        for solver, grid in CONFIGS:
            for steps in args.steps:
                cells = []
                for policy in ("x0", True):
                    with torch.no_grad():
                        x = sd.sample(tgt.model, x_T.shape, solver=solver, steps=steps, grid=grid, x_T=x_T,
                                      denoise=policy).x
                    e = (x - ref).reshape(len(x), -1).pow(2).mean(1).sqrt()
                    cells.append(f"{float(e.pow(2).mean().sqrt()):.2e} ({float(e.median()):.1e})")
                print(f"| {name} | {solver}, {grid} | {steps} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()

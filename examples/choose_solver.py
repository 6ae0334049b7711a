"""Choosing a solver and an NFE budget: error against a reference solve, per solver and step count.

The model is the exact score of a sharp 2-D Gaussian mixture (8 modes on a circle) under the VP SDE,
so the only error is the solver's. Every solver starts from the same prior draw x_T and integrates
the probability-flow ODE on the same grid family (``logsnr``) from T to t_min; the error is the RMSE
per coordinate against a float64 dopri5 solve of the same ODE at tolerance 1e-10. The script prints
the table (NFE = network evaluations, from ``Solution.stats.nfe``) and, with matplotlib, writes the
log-log plot of error against NFE.

It checks what the plot is for: every solver's error falls as its NFE grows, and the best
higher-order multistep solver at half the largest budget beats first-order DDIM at the largest
one (SystemExit(1) if not).

Run: python examples/choose_solver.py [--out choose_solver.png] [--n 128]
(10 s of CPU time with OMP_NUM_THREADS=1 on a 2-core AMD EPYC machine, `user` of `time`)
The plot in the docs (docs/assets/choose_solver.png) is made by
    python examples/choose_solver.py --out docs/assets/choose_solver.png
"""

from __future__ import annotations

import argparse
import math

import torch

import sdediff as sd

SOLVERS = ["ddim", "heun", "deis", "ipndm", "dpm++2m", "dpm++3m", "unipc"]
STEPS = [4, 6, 8, 12, 16, 24]


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


def main(out: str | None = "choose_solver.png", n: int = 128) -> int:
    process = sd.VPSDE()
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    gmm = sd.analytic.GaussianMixture(torch.stack([2 * angles.cos(), 2 * angles.sin()], 1), stds=0.1)
    model = gmm.model(process)
    x_T = process.prior_sample((n, 2), generator=0, dtype=torch.float64)
    ref = sd.solve(sd.probability_flow(model), x_T, ts=[process.T, process.t_min], solver="dopri5",
                   rtol=1e-10, atol=1e-10).x

    rows: dict[str, list[tuple[int, float]]] = {}
    for name in SOLVERS:
        for steps in STEPS:
            sol = sd.sample(model, (n, 2), solver=name, steps=steps, grid="logsnr", denoise=False, x_T=x_T)
            rows.setdefault(name, []).append((sol.stats.nfe, rmse(sol.x, ref)))

    print(f"RMSE against dopri5 (rtol 1e-10), {n} samples, logsnr grid, VP SDE to t_min = {process.t_min:g}")
    print(f"{'solver':10s}" + "".join(f"{'steps ' + str(s):>16s}" for s in STEPS))
    for name, pts in rows.items():
        print(f"{name:10s}" + "".join(f"{f'{e:.1e} ({nfe})':>16s}" for nfe, e in pts))
    print("(in brackets: NFE)")

    failures = [f"{name}: error did not fall from {pts[0][1]:.1e} to below it at NFE {pts[-1][0]}"
                for name, pts in rows.items() if not pts[-1][1] < pts[0][1]]
    half = STEPS.index(STEPS[-1] // 2)
    best = min(rows[name][half][1] for name in ("dpm++2m", "dpm++3m", "unipc", "deis", "ipndm"))
    if not best < rows["ddim"][-1][1]:
        failures.append(f"the best multistep solver at {STEPS[half]} steps ({best:.1e}) does not beat DDIM at "
                        f"{STEPS[-1]} steps ({rows['ddim'][-1][1]:.1e})")

    if out:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("note: matplotlib is not installed: no plot (pip install 'sdediff[bench]')")
        else:
            fig, ax = plt.subplots(figsize=(6, 4))
            for name, pts in rows.items():
                ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            ax.set_xlabel("NFE (network evaluations)")
            ax.set_ylabel("RMSE vs reference solve")
            ax.set_title("PF-ODE of a sharp 2-D mixture, VP SDE, logsnr grid")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out, dpi=110)
            print(f"wrote {out}")

    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="choose_solver.png", help="plot file ('' for none)")
    parser.add_argument("--n", type=int, default=128, help="samples")
    args = parser.parse_args()
    raise SystemExit(main(args.out or None, args.n))

"""Calibrate a time grid for dpm++2m at 6 NFE on the sharp 2-D mixture, save it, load it, sample with it.

    OMP_NUM_THREADS=1 python examples/calibrate_grid.py            # writes calibrate_grid.json and .png
    OMP_NUM_THREADS=1 python examples/calibrate_grid.py --eps-scale   # also one noise-prediction scale per step

The reference here is a fine fixed-step solve (unipc3, 300 logsnr steps) so the example runs in seconds;
``reference=None`` uses the float64 adaptive reference of ``sd.benchmark`` instead. Exit status 1 if
the calibrated grid does not beat its warm start on the held-out draws.
"""

from __future__ import annotations

import argparse
import sys

import torch

import sdediff as sd
from sdediff.bench_targets import TARGETS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--solver", default="dpm++2m")
    ap.add_argument("--nfe", type=int, default=6)
    ap.add_argument("--n", type=int, default=500, help="calibration (and validation) draws")
    ap.add_argument("--out", default="calibrate_grid")
    ap.add_argument("--eps-scale", action="store_true", help="also fit per-step noise-prediction scales")
    a = ap.parse_args()
    target = TARGETS["2d-sharp"]()
    model = target.model

    def fine(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sd.sample(model, tuple(x.shape), solver="unipc3", steps=300, grid="logsnr", x_T=x).x

    cg = sd.timesteps.calibrate(model, a.solver, a.nfe, n_samples=a.n, shape=target.event_shape, reference=fine,
                                generator=0, max_evals=600 if a.eps_scale else 300, eps_scale=a.eps_scale)
    path = cg.save(f"{a.out}.json")
    cg = sd.CalibratedGrid.load(path)
    print(cg)
    print(f"warm start {cg.init_grid}: validation RMSE {cg.init_validation_rmse:.3e}; calibrated: "
          f"{cg.validation_rmse:.3e} ({cg.init_validation_rmse / cg.validation_rmse:.1f}x smaller), "
          f"{cg.provenance['evals']} evaluations, {cg.provenance['cpu_seconds']:.1f} CPU s")
    print("times:", [f"{t:.4g}" for t in cg.times.tolist()])
    if a.eps_scale:
        print("eps_scale:", None if cg.eps_scale is None else [f"{v:.3f}" for v in cg.eps_scale],
              f"(the times alone: validation RMSE {cg.provenance['grid_validation_rmse']:.3e})")
    sol = sd.sample(model, (1000, 2), solver=cg.solver, grid=cg, generator=1)
    print(f"sample(grid=cg): {sol.stats.nfe} NFE for {tuple(sol.x.shape)} samples")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        p = target.process
        start = sd.timesteps.sampling_grid(p, sd.solvers.get_solver(cg.solver), cg.steps, cg.init_grid, denoise=True)
        fig, ax = plt.subplots(figsize=(6, 2.2))
        for k, (name, ts) in enumerate([(f"{cg.init_grid} (warm start)", start), ("calibrated", cg.times)]):
            lam = p.log_snr(ts[:-1]).tolist()
            ax.plot(lam, [k] * len(lam), "o", label=name)
        ax.set_yticks([0, 1], [f"{cg.init_grid}", "calibrated"])
        ax.set_xlabel("half log-SNR λ of the grid points (before the final denoise step)")
        fig.tight_layout()
        fig.savefig(f"{a.out}.png", dpi=120)
    except ImportError:
        pass
    ok = cg.validation_rmse < cg.init_validation_rmse and sol.stats.nfe <= a.nfe
    print("check:", "ok" if ok else "FAILED (the calibrated grid does not beat its warm start)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

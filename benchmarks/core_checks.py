"""Print the core issue's measured figures: Fokker-Planck / continuity / reverse-SDE residuals per
process over random mixtures, and the mixture statistics of PF-ODE and reverse-SDE sampling.

    python benchmarks/core_checks.py
"""

from __future__ import annotations

import math

import torch

import sdediff as sd
from sdediff.analytic import GaussianMixture
from sdediff.diagnostics import continuity_residual, fokker_planck_residual
from sdediff.metrics import mode_masses, sliced_wasserstein

PROCESSES = {
    "VPSDE": sd.VPSDE(), "SubVPSDE": sd.SubVPSDE(), "VESDE": sd.VESDE(), "EDM": sd.EDM(),
    "CosineVPSDE": sd.CosineVPSDE(), "RectifiedFlow": sd.RectifiedFlow(), "DiscreteVP": sd.DiscreteVP(),
    "LinearSDE (quadrature)": sd.LinearSDE(lambda t: -0.5 * (0.1 + 19.9 * t + 3 * torch.sin(4 * t) ** 2),
                                           lambda t: torch.sqrt(0.1 + 19.9 * t + 3 * torch.sin(4 * t) ** 2)),
}


def residual_table(n_mixtures: int = 20, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    print("| process | max rel. Fokker-Planck | max rel. continuity (PF-ODE) | max rel. reverse SDE (eta=1) |"
          " planted 5% wrong g |")
    print("|---|---:|---:|---:|---:|")
    for name, p in PROCESSES.items():
        worst = [0.0, 0.0, 0.0, math.inf]
        for _ in range(n_mixtures):
            d, k = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
            gmm = GaussianMixture(3 * torch.randn(k, d, generator=g, dtype=torch.float64),
                                  0.05 + torch.rand(k, d, generator=g, dtype=torch.float64))
            t = p.t_min + (0.001 + 0.998 * float(torch.rand(1, generator=g))) * (p.T - p.t_min)
            x = gmm.sample(16, generator=g) * float(p.alpha(t)) + float(p.sigma(t)) * torch.randn(
                16, d, generator=g, dtype=torch.float64) * 2

            def log_p(tt, xx, gmm=gmm, p=p):
                return gmm.log_prob(tt, xx, p)

            model = gmm.model(p)
            worst[0] = max(worst[0], fokker_planck_residual(log_p, p.drift, p.diffusion, t, x).max_relative)
            worst[1] = max(worst[1], continuity_residual(log_p, sd.probability_flow(model).drift, t, x).max_relative)
            worst[2] = max(worst[2], fokker_planck_residual(log_p, sd.reverse_sde(model).drift, p.diffusion, t, x,
                                                            reverse=True).max_relative)
            worst[3] = min(worst[3], fokker_planck_residual(log_p, p.drift, lambda tt, p=p: 1.05 * p.diffusion(tt), t,
                                                            x).max_relative)
        print(f"| {name} | {worst[0]:.1e} | {worst[1]:.1e} | {worst[2]:.1e} | {worst[3]:.1e} (min) |")


def sampling_table(n: int = 4000) -> None:
    gmm = GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], [[0.30, 0.20], [0.25, 0.35], [0.30, 0.30]],
                          [0.5, 0.3, 0.2])
    truth = gmm.sample(n, generator=99)
    print(f"\nmixture weights 0.5/0.3/0.2, n = {n}; binomial SE of a mass ~ {math.sqrt(0.25 / n):.4f}")
    print("| process | system | solver | NFE | mode masses | max |mass - w| / SE | sliced W2 vs true (true vs true) |")
    print("|---|---|---|---:|---|---:|---|")
    sw_floor = sliced_wasserstein(gmm.sample(n, generator=98), truth)
    for name, p in (("VPSDE", sd.VPSDE()), ("VESDE", sd.VESDE()), ("EDM", sd.EDM())):
        x_T = p.prior_sample((n, 2), generator=11, dtype=torch.float64)
        runs = [("PF-ODE", "dopri5 1e-7", lambda m, x=x_T, p=p: sd.solve(
            sd.probability_flow(m), x, ts=[p.T, p.t_min], solver="dopri5", rtol=1e-7, atol=1e-7))]
        ts = (torch.logspace(math.log10(p.T), math.log10(p.t_min), 1001, dtype=torch.float64)
              if name == "EDM" else [p.T, p.t_min])
        steps = None if name == "EDM" else 1000
        runs.append(("reverse SDE", "torchsde:euler 1000", lambda m, x=x_T, ts=ts, steps=steps: sd.solve(
            sd.reverse_sde(m), x, ts=ts, solver="torchsde:euler", steps=steps,
            generator=13)))
        for system, solver, run in runs:
            sol = run(gmm.model(p))
            masses = mode_masses(sol.x, gmm.means)
            z = ((masses - gmm.weights).abs() / torch.sqrt(gmm.weights * (1 - gmm.weights) / n)).max()
            print(f"| {name} | {system} | {solver} | {sol.stats.nfe} | {[round(float(m), 3) for m in masses]} | "
                  f"{float(z):.2f} | {sliced_wasserstein(sol.x, truth):.4f} ({sw_floor:.4f}) |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    residual_table()
    sampling_table()

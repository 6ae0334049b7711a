"""A user's own force field: define it, check that it transports its density family, then sample.

The field is the Poisson field of a small 2-D point cloud (a ring of charges) in N + D dimensions,
written by hand through the low-level API (``FieldFunction``), once with the Green's-function
power law (N + D) and once with a wrong one. The continuity check accepts the first and rejects
the second; the first is then sampled from the PFGM++ prior at r_max down to r_min, and, with
matplotlib, the samples and some of their paths are plotted.

Run: python examples/custom_force_field.py [--out custom_force_field.png]
(8 s of CPU time with OMP_NUM_THREADS=1 on a 2-core AMD EPYC machine, `user` of `time`)
The plot in the docs (docs/assets/custom_force_field.png) is made by
    python examples/custom_force_field.py --out docs/assets/custom_force_field.png
"""

from __future__ import annotations

import argparse
import math

import torch

import sdediff as sd
from sdediff import fields

torch.set_default_dtype(torch.float64)
N, D = 2, 8.0
angles = torch.arange(12) * (2 * math.pi / 12)
charges = torch.stack([angles.cos(), angles.sin()], dim=1)  # 12 points on the unit circle


def make_field(exponent: float) -> fields.FieldFunction:
    """E(x~) = sum_i (x~ - y~_i) / |x~ - y~_i|^(2 * exponent): returns (E_x, E_r) up to a common positive factor."""

    def field(r: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sq = (x[:, None, :] - charges[None]).pow(2).sum(-1)  # (B, M)
        w = torch.softmax(-exponent * torch.log(sq + r[:, None] ** 2), dim=1)  # stable in log-space
        return x - w @ charges, r  # E_x ∝ sum_i w_i (x - y_i), E_r ∝ sum_i w_i r

    return fields.FieldFunction(field, D)


def main(out: str | None = "custom_force_field.png") -> int:
    g = torch.Generator().manual_seed(0)
    verdicts = []
    points = 1.5 * torch.randn(64, N, generator=g)
    radii = 0.2 + 2.0 * torch.rand(64, generator=g)
    for name, exponent in [("Green's function (N+D)/2", (N + D) / 2), ("wrong power (N+D-1)/2", (N + D - 1) / 2)]:
        res = fields.check_poisson_continuity(make_field(exponent), charges, radii, points)
        verdict = "PASS" if res.max_relative < 1e-6 else "FAIL"
        print(f"continuity, {name:26s}: max relative residual {res.max_relative:.2e}  {verdict}")
        verdicts.append(verdict)

    ode = make_field((N + D) / 2).ode(r_min=1e-3, r_max=20.0 * math.sqrt(D), time="log_r")
    x = ode.prior_sample((500, N), generator=1)
    ts = torch.linspace(ode.T, ode.t_min, 40, dtype=torch.float64)  # save points along log r for the plot
    sol = sd.solve(ode, x, ts=ts, rtol=1e-6, atol=1e-6)
    dist = torch.cdist(sol.x, charges).min(1).values
    counts = torch.bincount(torch.cdist(sol.x, charges).argmin(1), minlength=len(charges))
    print(f"sampled 500 points with {sol.stats.nfe} field evaluations; "
          f"{(dist < 1e-2).double().mean():.1%} within 0.01 of a charge; per-charge counts {counts.tolist()}")
    if out:
        plot(sol.xs, out)
    if verdicts != ["PASS", "FAIL"]:  # the check must accept the right power law and reject the wrong one
        print(f"FAIL: expected the continuity verdicts PASS, FAIL; got {verdicts}")
        return 1
    return 0


def plot(xs: torch.Tensor, out: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed: no plot (pip install 'sdediff[bench]')")
        return
    fig, ax = plt.subplots(figsize=(5, 5))
    for k in range(40):  # the paths of 40 samples, from the heavy-tailed prior (far outside) to the charges
        ax.plot(xs[:, k, 0], xs[:, k, 1], color="0.6", lw=0.6)
    ax.scatter(charges[:, 0], charges[:, 1], s=120, facecolors="none", edgecolors="k", label="charges")
    ax.scatter(xs[-1, :, 0], xs[-1, :, 1], s=6, color="C3", zorder=3, label="samples at r_min")
    ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", title="Poisson field of 12 charges, N = 2, D = 8")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="custom_force_field.png", help="plot file ('' for none)")
    raise SystemExit(main(parser.parse_args().out or None))

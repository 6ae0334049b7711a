"""Train a small MLP on a 2-D Gaussian mixture with ``sdediff.losses.dsm_loss`` and sample it with
five solvers. Runs in seconds on a CPU:

    python examples/train_2d.py --steps 600 --out train_2d.png

Prints the loss, each solver's NFE and the mass it puts on each mode (nearest mean) against the true
weights; writes a plot when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import math

import torch

import sdediff as sd
from sdediff.losses import dsm_loss

MEANS = [[-1.5, -0.8], [1.5, -0.8], [0.0, 1.4]]
WEIGHTS = [0.2, 0.3, 0.5]
STD = 0.2
SOLVERS = ("euler", "heun", "ddim", "dpm++2m", "unipc")


def data() -> sd.analytic.GaussianMixture:
    return sd.analytic.GaussianMixture(MEANS, STD, WEIGHTS)


class MLP(torch.nn.Module):
    """``net(x, t)``: an MLP on the state and a sinusoidal embedding of the time label."""

    def __init__(self, dim: int = 2, width: int = 128, n_freq: int = 8) -> None:
        super().__init__()
        self.register_buffer("freq", torch.exp(torch.linspace(0.0, math.log(200.0), n_freq)))
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(dim + 2 * n_freq, width), torch.nn.SiLU(),
            torch.nn.Linear(width, width), torch.nn.SiLU(),
            torch.nn.Linear(width, width), torch.nn.SiLU(),
            torch.nn.Linear(width, dim),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        arg = t.to(x.dtype)[:, None] * self.freq[None, :]
        return self.layers(torch.cat([x, arg.sin(), arg.cos()], dim=1))


def train(steps: int = 600, *, batch: int = 512, lr: float = 2e-3, seed: int = 0,
          weighting: str = "eps") -> tuple[sd.DiffusionModel, list[float]]:
    """Train an eps-prediction MLP on the VP SDE; returns the model and the loss per step."""
    torch.manual_seed(seed)  # the network's initial weights
    g = torch.Generator().manual_seed(seed)
    net = MLP()
    model = sd.DiffusionModel(net, sd.VPSDE(), prediction="eps")
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    target = data()
    losses = []
    for _ in range(steps):
        x0 = target.sample(batch, generator=g, dtype=torch.float32)
        loss = dsm_loss(model, x0, weighting=weighting, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach().item())
    net.eval()
    return model, losses


def mode_masses(x: torch.Tensor) -> list[float]:
    """Fraction of samples nearest to each mean."""
    means = torch.tensor(MEANS, dtype=x.dtype)
    nearest = torch.cdist(x, means).argmin(1)
    return [float((nearest == k).float().mean()) for k in range(len(MEANS))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--out", default="train_2d.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, losses = train(args.steps)
    k = max(1, len(losses) // 10)
    print(f"loss: first {k} steps {sum(losses[:k]) / k:.4f}, last {k} steps {sum(losses[-k:]) / k:.4f}")
    print(f"true mode weights {WEIGHTS}")
    results = {}
    with torch.no_grad():
        for name in SOLVERS:
            sol = sd.sample(model, (args.samples, 2), solver=name, steps=12, generator=1)
            results[name] = sol.x
            masses = mode_masses(sol.x)
            err = max(abs(a - b) for a, b in zip(masses, WEIGHTS, strict=True))
            print(f"{name:8s} nfe={sol.stats.nfe:3d}  masses={[round(m, 3) for m in masses]}  max error {err:.3f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, len(SOLVERS) + 1, figsize=(3 * (len(SOLVERS) + 1), 3), sharex=True, sharey=True)
    ref = data().sample(args.samples, generator=torch.Generator().manual_seed(2))
    for ax, (title, pts) in zip(axes, [("data", ref), *results.items()], strict=True):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.3)
        ax.set_title(title)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

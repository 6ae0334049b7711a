"""Benchmark your own network: train a tiny ε-network in seconds, then ask which solver and grid win.

The network is a small MLP trained by denoising score matching on a 2-D ring of 4 Gaussian modes
under the VP SDE. ``factory()`` returns ``(model, x_T)`` — the form ``sdediff bench --model``
expects (``(model, shape)`` works too) — so from the repository root::

    python -m sdediff bench --model examples.bench_own_model:factory --solvers ddim,dpm++2m,unipc \\
        --grids logsnr,karras --nfe 5,10,20 --out bench_out        # writes bench_out/bench.{md,csv,png}
    sdediff bench --model examples/bench_own_model.py:factory      # a file path works as well

or ``python examples/bench_own_model.py`` for the same through the Python API (``sd.benchmark``).

The network is trained in float32 and benchmarked as a float64 copy, so the reference solve (an
adaptive ``dopri8`` at tight tolerance) resolves errors far below the solvers'. A float32 network
works as it is: the reference then runs in float32 at a looser tolerance, and the benchmark's
reference check says whether that still resolves the errors reported.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

import sdediff as sd

PROCESS = sd.VPSDE()
N_SAMPLES = 512


class EpsMLP(nn.Module):
    """ε̂(x, t): an MLP on x and Fourier features of t."""

    def __init__(self, dim: int = 2, width: int = 64, n_freq: int = 4) -> None:
        super().__init__()
        self.register_buffer("freq", 2.0 ** torch.arange(n_freq) * math.pi)
        self.net = nn.Sequential(nn.Linear(dim + 2 * n_freq, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ft = t.to(x.dtype)[:, None] * self.freq.to(x.dtype)
        return self.net(torch.cat([x, ft.sin(), ft.cos()], dim=1))


N_MODES = 4


def data(n: int, generator: torch.Generator) -> torch.Tensor:
    """A ring of ``N_MODES`` modes of std 0.15 at radius 1.5."""
    k = torch.randint(0, N_MODES, (n,), generator=generator)
    ang = k.to(torch.float32) * (2 * math.pi / N_MODES)
    return 1.5 * torch.stack([ang.cos(), ang.sin()], 1) + 0.15 * torch.randn(n, 2, generator=generator)


@functools.lru_cache(maxsize=1)
def train(steps: int = 600, batch: int = 256, lr: float = 1e-2, seed: int = 0) -> EpsMLP:
    """Denoising score matching, ``E ||ε̂(α_t x_0 + σ_t ε, t) − ε||²`` with t uniform on [t_min, T]."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the weights' initialisation
    net = EpsMLP()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        x0 = data(batch, g)
        t = PROCESS.t_min + (PROCESS.T - PROCESS.t_min) * torch.rand(batch, generator=g, dtype=torch.float64)
        a, s = PROCESS.alpha(t).float()[:, None], PROCESS.sigma(t).float()[:, None]
        eps = torch.randn(batch, 2, generator=g)
        loss = (net(a * x0 + s * eps, t.float()) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval().requires_grad_(False)


def factory() -> tuple[sd.DiffusionModel, torch.Tensor]:
    """The trained network as a float64 :class:`~sdediff.DiffusionModel` and 512 prior draws (seed 0)."""
    net = train().double()
    model = sd.DiffusionModel(net, PROCESS, prediction="eps")
    x_T = PROCESS.prior_sample((N_SAMPLES, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return model, x_T


if __name__ == "__main__":
    model, x_T = factory()
    res = sd.benchmark(model, x_T, solvers=["ddim", "dpm++2m", "unipc"], grids=["logsnr", "karras"], nfe=[5, 10, 20])
    print(res.to_markdown())
    print("best at 10 NFE:", res.best(10))
    try:
        print("wrote", res.plot("bench_own_model.png"))
    except ImportError as err:
        print(err)

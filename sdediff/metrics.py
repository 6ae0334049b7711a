"""Distances between sample sets, for tests and benchmarks (float64, explicit generators)."""

from __future__ import annotations

import torch

from .noise import GeneratorSpec, randn

__all__ = ["energy_distance", "mode_masses", "sliced_wasserstein"]


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, *, n_projections: int = 256,
                       generator: GeneratorSpec = 0) -> float:
    """Sliced 2-Wasserstein distance between equal-size sample sets ``(N, D)`` (random directions)."""
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must both have shape (N, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.double()
    dirs = randn((x.shape[1], n_projections), generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ dirs, dim=0)
    py, _ = torch.sort(y @ dirs, dim=0)
    return float(((px - py) ** 2).mean().sqrt())


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    r"""Energy distance :math:`2E|X-Y| - E|X-X'| - E|Y-Y'|` (V-statistic), in float64."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def mode_masses(x: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Share of samples whose nearest mode is each of ``means`` ``(K, D)``."""
    k = torch.cdist(x.double(), means.double()).argmin(1)
    return torch.bincount(k, minlength=means.shape[0]).double() / max(x.shape[0], 1)

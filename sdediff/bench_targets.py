r"""Exact-score benchmark targets: the data, the process users sample it with, and the model.

Four diverse targets with exact scores (so a solver's error is the only error), each under a process
users run (the DDPM linear schedule, EDM, the continuous VP SDE):

==================  ==================================================================  ===========
name                data                                                                process
==================  ==================================================================  ===========
``2d-sharp``        8 equal modes of std 0.05 on a circle of radius 2 (2-D)             DiscreteVP
``64d-aniso``       8 modes in 64-D, per-dimension stds log-spaced in [0.05, 1]         DiscreteVP
``image-3x8x8``     6 modes of 3×8×8 images with structured means (gradients, stripes,  EDM
                    checkerboard, a blob), pixel std 0.1; states shaped ``(B, 3, 8, 8)``
``box-16d``         uniform on a 16-D box (widths 0.5 to 2): not a Gaussian mixture     VPSDE
==================  ==================================================================  ===========

``TARGETS[name]()`` returns a :class:`Target`; the names are stable (benchmarks and the grid
calibration read them). ``benchmarks/accuracy.py`` runs every solver and peer on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .analytic import GaussianMixture, UniformBox
from .model import DiffusionModel
from .noise import GeneratorSpec
from .processes import EDM, VPSDE, DiscreteVP, LinearProcess


@dataclass(frozen=True)
class Target:
    """One exact target: ``dist`` (a :class:`~sdediff.analytic.GaussianMixture` or
    :class:`~sdediff.analytic.UniformBox`), the ``process`` it is sampled with, the per-sample
    ``event_shape`` of the states, and a one-line ``description``."""

    name: str
    dist: GaussianMixture | UniformBox
    process: LinearProcess
    event_shape: tuple[int, ...]
    description: str

    @property
    def model(self) -> DiffusionModel:
        """The exact model (score prediction) on states of shape ``(B, *event_shape)``."""
        return self.dist.model(self.process, event_shape=self.event_shape)

    def shape(self, n: int) -> tuple[int, ...]:
        """The batch shape of ``n`` samples."""
        return (n, *self.event_shape)

    def prior(self, n: int, generator: GeneratorSpec) -> torch.Tensor:
        """``n`` float64 draws of the process's prior at ``T`` (the start :math:`x_T`)."""
        return self.process.prior_sample(self.shape(n), generator=generator, dtype=torch.float64)

    def data(self, n: int, generator: GeneratorSpec) -> torch.Tensor:
        """``n`` float64 samples of the data, shaped ``(n, *event_shape)``."""
        return self.dist.sample(n, generator=generator).reshape(self.shape(n))


def sharp_mixture_2d(n_modes: int = 8, radius: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """``n_modes`` equal-weight modes of std ``std`` on a circle of ``radius``."""
    ang = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([ang.cos(), ang.sin()], 1)
    return GaussianMixture(means, std)


def anisotropic_mixture_64d(n_modes: int = 8, dim: int = 64, seed: int = 0) -> GaussianMixture:
    """``n_modes`` modes in ``dim`` dimensions, per-dimension stds log-spaced in [0.05, 1], shuffled."""
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(n_modes, dim, generator=g, dtype=torch.float64)
    base = torch.logspace(math.log10(0.05), 0.0, dim, dtype=torch.float64)
    stds = torch.stack([base[torch.randperm(dim, generator=g)] for _ in range(n_modes)])
    return GaussianMixture(means, stds)


def image_mixture(channels: int = 3, size: int = 8, std: float = 0.1) -> GaussianMixture:
    """Six ``channels × size × size`` image modes in [-1, 1] (flattened): a horizontal and a vertical
    gradient, stripes, a checkerboard, a centred blob and its negative, with channel-dependent tints;
    per-pixel std ``std``."""
    u = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    blob = torch.exp(-(xx**2 + yy**2) / 0.3) * 1.6 - 0.8
    pats = [xx, yy, torch.sign(torch.sin(3 * math.pi * (xx + 1) / 2)) * 0.7,
            ((torch.arange(size)[:, None] + torch.arange(size)[None]) % 2).to(torch.float64) * 1.4 - 0.7,
            blob, -blob]
    tint = torch.linspace(1.0, 0.5, channels, dtype=torch.float64)
    means = torch.stack([(tint[:, None, None] * p[None] * (-1) ** k) for k, p in enumerate(pats)])
    return GaussianMixture(means.reshape(len(pats), -1), std)


def box_16d(dim: int = 16) -> UniformBox:
    """A ``dim``-D box with widths 0.5 to 2 (log-spaced) centred at alternating ±0.3."""
    width = torch.logspace(math.log10(0.5), math.log10(2.0), dim, dtype=torch.float64)
    centre = 0.3 * (-1.0) ** torch.arange(dim, dtype=torch.float64)
    return UniformBox(centre - width / 2, centre + width / 2)


def _target_2d() -> Target:
    return Target("2d-sharp", sharp_mixture_2d(), DiscreteVP(), (2,),
                  "8 modes of std 0.05 on a circle (2-D), DDPM linear schedule")


def _target_64d() -> Target:
    return Target("64d-aniso", anisotropic_mixture_64d(), DiscreteVP(), (64,),
                  "8 modes, per-dimension stds 0.05 to 1 (64-D), DDPM linear schedule")


def _target_image() -> Target:
    return Target("image-3x8x8", image_mixture(), EDM(), (3, 8, 8),
                  "6 structured 3x8x8 image modes, pixel std 0.1, EDM (sigma 0.002 to 80)")


def _target_box() -> Target:
    return Target("box-16d", box_16d(), VPSDE(), (16,),
                  "uniform on a 16-D box (widths 0.5 to 2), continuous VP SDE")


TARGETS: dict[str, Callable[[], Target]] = {
    "2d-sharp": _target_2d,
    "64d-aniso": _target_64d,
    "image-3x8x8": _target_image,
    "box-16d": _target_box,
}
"""The exact benchmark targets: name -> a function returning the :class:`Target` (names are stable)."""

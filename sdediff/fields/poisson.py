r"""The PFGM / PFGM++ perturbation kernel, its prior at :math:`r_{max}` and its sampler.

Notation of Xu et al. 2023 (*PFGM++: Unlocking the Potential of Physics-Inspired Generative
Models*, ICML 2023): data :math:`y \in \mathbb R^N`, augmented variables :math:`z \in \mathbb R^D`,
:math:`r = \|z\|`. The electric field of a unit charge at :math:`\tilde y = (y, 0)` in
:math:`N + D` dimensions is :math:`\propto (\tilde x - \tilde y)/\|\tilde x - \tilde y\|^{N+D}`, and
the distribution of :math:`x` on the surface :math:`\|z\| = r` is the perturbation kernel (eq. 4)

.. math::  p_r(x \mid y) = C_{N,D}\, \frac{r^D}{(\|x - y\|^2 + r^2)^{(N+D)/2}}, \qquad
           C_{N,D} = \frac{\Gamma\big(\tfrac{N+D}{2}\big)}{\pi^{N/2}\,\Gamma\big(\tfrac D2\big)},

a multivariate Student-t with :math:`D` degrees of freedom and scale :math:`r/\sqrt D`. Its radius
:math:`R = \|x - y\|` satisfies :math:`R^2/r^2 \sim \beta'(N/2, D/2)` (beta-prime), i.e.
:math:`R = r\sqrt{B/(1-B)}` with :math:`B \sim \mathrm{Beta}(N/2, D/2)` (PFGM++ eq. 5). The sampler
uses the equivalent :math:`x = y + r\,g/\sqrt{Y}`, :math:`g \sim \mathcal N(0, I_N)`,
:math:`Y \sim \chi^2_D` (so :math:`\|g\|^2/Y = B/(1-B)` without forming :math:`1 - B`).

For ``D = 1`` this is PFGM (Xu et al. 2022, *Poisson Flow Generative Models*, NeurIPS 2022): the
field lines of a point charge leave radially, and the uniform law on a large hemisphere, carried
along them to the plane :math:`z = z_{max}`, has exactly the density :math:`p_{z_{max}}(x \mid 0)`
above (the flux :math:`E\cdot n \propto z/\|\tilde x\|^{N+1}`). When :math:`r_{max}` is large
against the data, :math:`p_{r_{max}}(x) \approx p_{r_{max}}(x \mid 0)`, which is the prior here.

Alignment with EDM (PFGM++ §4): :math:`r = \sigma\sqrt D`; as :math:`D \to \infty` at fixed
:math:`\sigma` the kernel tends to :math:`\mathcal N(y, \sigma^2 I)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .._utils import TIME_DTYPE, as_time, expand_like
from ..noise import GeneratorSpec, as_generator, randn, split_generators
from ._random import chi2

__all__ = [
    "KernelPrior",
    "check_D",
    "kernel_log_prob",
    "log_normalizer",
    "pfgm_prior",
    "r_from_sigma",
    "radius_law",
    "sample_kernel",
    "sigma_from_r",
]


def check_D(D: float) -> float:
    """Validate the number of augmented dimensions ``D`` (a finite real > 0; PFGM is ``D = 1``)."""
    if isinstance(D, bool) or not isinstance(D, (int, float)):
        raise TypeError(f"D (augmented dimensions) must be a number > 0, got {type(D).__name__}")
    if not (D > 0) or not math.isfinite(D):
        raise ValueError(f"D (augmented dimensions) must be finite and > 0 (D = 1 is PFGM), got {D!r}")
    return float(D)


def _check_r(name: str, r: float | torch.Tensor) -> None:
    if isinstance(r, torch.Tensor):
        if not bool(torch.isfinite(r).all()) or not bool((r > 0).all()):
            raise ValueError(f"{name} must be finite and > 0, got {r}")
        return
    if isinstance(r, bool) or not isinstance(r, (int, float)):
        raise TypeError(f"{name} must be a number > 0, got {type(r).__name__}")
    if not (r > 0) or not math.isfinite(r):
        raise ValueError(f"{name} must be finite and > 0, got {r!r}")


def log_normalizer(N: int, D: float) -> float:
    r""":math:`\log C_{N,D} = \log\Gamma(\tfrac{N+D}2) - \log\Gamma(\tfrac D2) - \tfrac N2\log\pi`."""
    return math.lgamma(0.5 * (N + D)) - math.lgamma(0.5 * D) - 0.5 * N * math.log(math.pi)


def r_from_sigma(sigma: float | torch.Tensor, D: float) -> float | torch.Tensor:
    r"""PFGM++ ↔ EDM alignment :math:`r = \sigma\sqrt D`."""
    return sigma * math.sqrt(check_D(D))


def sigma_from_r(r: float | torch.Tensor, D: float) -> float | torch.Tensor:
    r"""Inverse alignment :math:`\sigma = r/\sqrt D`."""
    return r / math.sqrt(check_D(D))


def kernel_log_prob(x: torch.Tensor, r: float | torch.Tensor, D: float,
                    center: torch.Tensor | None = None) -> torch.Tensor:
    r""":math:`\log p_r(x \mid y)` per sample (float64; differentiable in ``x`` and ``r``).

    Args:
        x: points ``(B, ...)``; :math:`N` is the number of entries per sample.
        r: radius, a scalar or one per sample ``(B,)``.
        D: augmented dimensions.
        center: :math:`y`, broadcastable to ``x`` (default 0).
    """
    D = check_D(D)
    x = x.to(TIME_DTYPE)
    if center is not None:
        x = x - center.to(TIME_DTYPE)
    n = x[0].numel() if x.ndim > 1 else 1
    r = as_time(r, x.device)
    sq = x.flatten(1).pow(2).sum(1)
    return log_normalizer(n, D) + D * torch.log(r) - 0.5 * (n + D) * torch.log(sq + r * r)


def radius_law(N: int, D: float, r: float) -> Any:
    r"""The law of :math:`R^2 = \|x - y\|^2` under :math:`p_r(x \mid y)`: :math:`r^2\,\beta'(N/2, D/2)` (a frozen
    ``scipy.stats.rv_continuous``; scipy.stats is imported here, not with sdediff, as it takes seconds)."""
    import scipy.stats

    return scipy.stats.betaprime(0.5 * N, 0.5 * check_D(D), scale=float(r) ** 2)


def sample_kernel(y: torch.Tensor, r: float | torch.Tensor, D: float, *,
                  generator: GeneratorSpec = None) -> torch.Tensor:
    r"""Draw :math:`x \sim p_r(\cdot \mid y)`: :math:`x = y + R u` with :math:`R = r\sqrt{B/(1-B)}`,
    :math:`B \sim \mathrm{Beta}(N/2, D/2)`, :math:`u` uniform on the unit sphere (PFGM++ eq. 5,
    the training perturbation), computed as :math:`y + r\,g/\sqrt{\chi^2_D}`.

    ``r`` is a scalar or one radius per sample; ``r = 0`` returns ``y``. All randomness comes from
    ``generator`` (a generator, a seed, or one per sample); the global RNG is untouched. Finite
    for every draw: the chi-square variate is > 0 by construction (no :math:`1 - B` is formed).
    """
    D = check_D(D)
    if not isinstance(y, torch.Tensor) or not y.is_floating_point() or y.ndim < 2:
        raise TypeError(f"y must be a floating tensor of shape (B, ...), got "
                        f"{type(y).__name__ if not isinstance(y, torch.Tensor) else tuple(y.shape)}")
    r_t = as_time(r, y.device)
    if not bool(torch.isfinite(r_t).all()) or bool((r_t < 0).any()):
        raise ValueError(f"r must be finite and >= 0, got {r}")
    gens = split_generators(generator, y.shape[0])
    if gens is not None:
        g = torch.cat([randn((1, *y.shape[1:]), generator=gi, dtype=TIME_DTYPE, device=y.device) for gi in gens])
        chi = torch.cat([chi2((1,), D, generator=gi, device=y.device) for gi in gens])
    else:
        gen = as_generator(generator)  # one generator drives both draws (an int seed becomes one)
        g = randn(y.shape, generator=gen, dtype=TIME_DTYPE, device=y.device)
        chi = chi2((y.shape[0],), D, generator=gen, device=y.device)
    scale = r_t / torch.sqrt(chi)
    return (y.to(TIME_DTYPE) + expand_like(scale, g) * g).to(y.dtype)


class KernelPrior:
    r"""The prior on :math:`x` at :math:`r = r_{max}`: :math:`p_{r_{max}}(x \mid 0)` (see module doc).

    Heavy-tailed: :math:`\|x\|^2/r_{max}^2 \sim \beta'(N/2, D/2)`. ``D = 1`` is PFGM's hemisphere law
    projected onto :math:`z = z_{max}`; large ``D`` approaches :math:`\mathcal N(0, (r_{max}^2/D) I)`.
    """

    def __init__(self, D: float, r_max: float) -> None:
        self.D = check_D(D)
        _check_r("r_max", r_max)
        self.r_max = float(r_max)

    def sample(self, shape: Sequence[int], *, generator: GeneratorSpec = None, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2:
            raise ValueError(f"shape must be (B, ...) with a batch axis and at least one data axis, got {shape}")
        zero = torch.zeros(shape, dtype=TIME_DTYPE, device=device)
        return sample_kernel(zero, self.r_max, self.D, generator=generator).to(dtype or torch.get_default_dtype())

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return kernel_log_prob(x, self.r_max, self.D).to(x.dtype)

    def __repr__(self) -> str:
        return f"KernelPrior(D={self.D:g}, r_max={self.r_max:g})"


def pfgm_prior(z_max: float) -> KernelPrior:
    """PFGM's prior (Xu et al. 2022): the hemisphere law on :math:`z = z_{max}`, i.e. ``KernelPrior(1, z_max)``."""
    return KernelPrior(1.0, z_max)

r"""Forward processes: the SDE :math:`dx = f(t, x)\,dt + g(t)\,dw` on :math:`[t_{min}, T]`.

Two levels:

* :class:`SDE` — generic coefficient objects: any drift ``f(t, x)`` (nonlinear allowed) and a
  scalar diffusion ``g(t)``. Enough for the reverse SDE, the probability-flow ODE and the
  Fokker–Planck check.
* :class:`LinearProcess` — the linear family :math:`f(t, x) = f(t)\,x`. Its marginal given
  :math:`x_0` is :math:`\mathcal N(\alpha(t) x_0, \sigma(t)^2 I)` with

  .. math::  \frac{d\log\alpha}{dt} = f(t), \qquad \frac{d\sigma^2}{dt} = 2 f(t)\sigma^2 + g(t)^2

  (Song et al., *Score-Based Generative Modeling through SDEs*, ICLR 2021, eq. 5.50–5.51;
  Kingma et al., *Variational Diffusion Models*, 2021). Each subclass gives :math:`\log\alpha`,
  :math:`\sigma` and their time derivatives in closed form; :class:`LinearSDE` computes them by
  cached float64 quadrature from user ``f`` and ``g``. The coefficients
  :math:`f = \dot\alpha/\alpha` and :math:`g^2 = 2\sigma(\dot\sigma - f\sigma)` are derived from
  those, so each formula has one home.

All times and coefficients are float64 tensors (float32 on devices without float64), whatever
the dtype of the state; they stay differentiable in ``t`` so the diagnostics can take
:math:`\partial_t` by autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from ._utils import TIME_DTYPE, Time, as_time, check_device, check_float_dtype, check_positive, expand_like

__all__ = [
    "EDM",
    "SDE",
    "VESDE",
    "VPSDE",
    "CosineVPSDE",
    "DiscreteVP",
    "GaussianPrior",
    "LinearProcess",
    "LinearSDE",
    "Prior",
    "Process",
    "RectifiedFlow",
    "SubVPSDE",
]

LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------- priors
class Prior(Protocol):
    """What a process needs of its prior at ``T``: sampling with a generator and a log-density."""

    def sample(self, shape: Sequence[int], *, generator: torch.Generator | None = None,
               dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor: ...

    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...


class GaussianPrior:
    """Isotropic :math:`\\mathcal N(\\mu, s^2 I)`; ``log_prob`` sums over all but the batch axis."""

    def __init__(self, std: float = 1.0, mean: float = 0.0) -> None:
        check_positive("std", float(std))
        self.std = float(std)
        self.mean = float(mean)

    def sample(self, shape: Sequence[int], *, generator: torch.Generator | None = None,
               dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
        from .noise import randn

        return self.mean + self.std * randn(shape, generator=generator, dtype=dtype, device=device)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        d = math.prod(x.shape[1:])  # per-sample size; an empty batch gives an empty result
        return -0.5 * z.flatten(1).pow(2).sum(1) - d * (0.5 * LOG_2PI + math.log(self.std))


# -------------------------------------------------------------------------------------- processes
class Process:
    """Base of every forward process: time range, drift, diffusion, prior, label map."""

    T: float
    t_min: float
    prior: Prior | None

    def drift(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def diffusion(self, t: Time) -> torch.Tensor:
        r"""The scalar diffusion coefficient :math:`g(t)` (float64)."""
        raise NotImplementedError

    @property
    def is_linear(self) -> bool:
        return isinstance(self, LinearProcess)

    def time_label(self, t: torch.Tensor) -> torch.Tensor:
        """The time value a network trained on this process receives (identity by default)."""
        return t

    def prior_sample(self, shape: Sequence[int], generator: torch.Generator | None = None,
                     dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
        """Draw ``x_T`` from the prior with the given generator (no global RNG).

        Raises:
            TypeError: a non-floating ``dtype`` (noise would be truncated to integers).
            ValueError: a ``device`` this machine does not have (checked before allocating).
        """
        if self.prior is None:
            raise ValueError(f"{type(self).__name__} has no prior; pass prior=GaussianPrior(...) "
                             "or a custom object with sample() and log_prob()")
        check_float_dtype("dtype", dtype)
        check_device("device", device)
        return self.prior.sample(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior, one value per sample."""
        if self.prior is None:
            raise ValueError(f"{type(self).__name__} has no prior; pass prior=GaussianPrior(...)")
        return self.prior.log_prob(x)

    def _check_range(self) -> None:
        if not (math.isfinite(self.t_min) and math.isfinite(self.T)) or not self.T > self.t_min:
            raise ValueError(f"need t_min < T (both finite), got t_min={self.t_min!r}, T={self.T!r}")


class SDE(Process):
    r"""A generic forward SDE :math:`dx = f(t, x)\,dt + g(t)\,dw`.

    Args:
        drift: ``f(t, x) -> tensor`` shaped like ``x``; any (nonlinear) function.
        diffusion: ``g(t) -> scalar tensor``; a float is taken as a constant.
        T, t_min: the time range.
        prior: the distribution at ``T`` (e.g. :class:`GaussianPrior`), needed to sample.
    """

    def __init__(self, drift: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 diffusion: Callable[[torch.Tensor], torch.Tensor] | float,
                 *, T: float = 1.0, t_min: float = 0.0, prior: Prior | None = None) -> None:
        if not callable(drift):
            raise TypeError(f"drift must be a callable f(t, x), got {type(drift).__name__}")
        if not callable(diffusion) and not isinstance(diffusion, (int, float)):
            raise TypeError(f"diffusion must be a callable g(t) or a number, got {type(diffusion).__name__}")
        self._f = drift
        self._g = diffusion
        self.T = float(T)
        self.t_min = float(t_min)
        self.prior = prior
        self._check_range()

    def drift(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        return self._f(as_time(t, x.device), x)

    def diffusion(self, t: Time) -> torch.Tensor:
        t = as_time(t)
        if callable(self._g):
            return as_time(self._g(t))
        return torch.full_like(t, float(self._g))


class LinearProcess(Process):
    r"""A process with drift :math:`f(t)\,x` and closed-form Gaussian transition.

    Subclasses implement :meth:`log_alpha`, :meth:`sigma`, :meth:`f` (:math:`= d\log\alpha/dt`)
    and :meth:`d_sigma`; everything else is derived here.
    """

    zero_terminal_snr: bool = False
    #: The grid ``sample(..., grid="auto")`` (the default) runs on this process: ``"logsnr"`` unless a
    #: subclass has benchmark evidence for another (``benchmarks/RESULTS.md``, "Defaults by evidence").
    default_grid: str = "logsnr"

    def __init__(self, *, T: float, t_min: float, prior: Prior | None = None) -> None:
        self.T = float(T)
        self.t_min = float(t_min)
        self._check_range()
        self.prior = prior if prior is not None else GaussianPrior(self._prior_std())

    def _prior_std(self) -> float:
        """Std of the prior: :math:`\\sigma(T)` (the data term :math:`\\alpha_T x_0` is neglected)."""
        return float(self.sigma(self.T))

    # --- to implement
    def log_alpha(self, t: Time) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: Time) -> torch.Tensor:
        raise NotImplementedError

    def f(self, t: Time) -> torch.Tensor:
        r""":math:`f(t) = d\log\alpha/dt`."""
        raise NotImplementedError

    def d_sigma(self, t: Time) -> torch.Tensor:
        r""":math:`\dot\sigma(t)`."""
        raise NotImplementedError

    # --- derived (one home each)
    def alpha(self, t: Time) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def log_sigma(self, t: Time) -> torch.Tensor:
        return torch.log(self.sigma(t))

    def d_alpha(self, t: Time) -> torch.Tensor:
        r""":math:`\dot\alpha = f\alpha`."""
        return self.f(t) * self.alpha(t)

    def coefficient_tensors(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        r""":math:`(\log\alpha, \log\sigma, \dot\alpha, \dot\sigma)` at the times ``t`` in one vectorised pass
        (the per-solve schedule records of :meth:`sdediff.DiffusionModel.coefficients_grid`)."""
        return self.log_alpha(t), self.log_sigma(t), self.d_alpha(t), self.d_sigma(t)

    def g2(self, t: Time) -> torch.Tensor:
        r""":math:`g^2 = d\sigma^2/dt - 2f\sigma^2 = 2\sigma(\dot\sigma - f\sigma)`."""
        s = self.sigma(t)
        return (2.0 * s * (self.d_sigma(t) - self.f(t) * s)).clamp_min(0.0)

    def diffusion(self, t: Time) -> torch.Tensor:
        return torch.sqrt(self.g2(t))

    def drift(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        return expand_like(self.f(as_time(t, x.device)), x) * x

    def log_snr(self, t: Time) -> torch.Tensor:
        r""":math:`\lambda(t) = \log\alpha(t) - \log\sigma(t)` (half the log signal-to-noise ratio)."""
        return self.log_alpha(t) - self.log_sigma(t)

    def t_from_log_snr(self, lam: Time) -> torch.Tensor:
        r"""Inverse of :meth:`log_snr` by bisection in float64 (λ decreases in t).

        Values outside :math:`[\lambda(T), \lambda(t_{min})]` are clamped to the end points.
        """
        lam = as_time(lam).detach()
        lo = torch.full_like(lam, self.t_min)
        hi = torch.full_like(lam, self.T)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # still too early
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def marginal(self, t: Time, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        r"""Sample of :math:`x_t = \alpha(t) x_0 + \sigma(t)\epsilon` for given ``noise`` ε."""
        t = as_time(t, x0.device)
        return expand_like(self.alpha(t), x0) * x0 + expand_like(self.sigma(t), x0) * noise


def _vp_sigma_from_log_alpha(log_alpha: torch.Tensor) -> torch.Tensor:
    r""":math:`\sigma = \sqrt{1-\alpha^2}` without cancellation (variance-preserving)."""
    return torch.sqrt(-torch.expm1(2.0 * log_alpha))


def _vp_log_alpha_from_log_snr(lam: torch.Tensor) -> torch.Tensor:
    r"""For :math:`\alpha^2+\sigma^2=1`: :math:`\log\alpha = -\tfrac12\log(1+e^{-2\lambda})`."""
    return -0.5 * torch.nn.functional.softplus(-2.0 * lam)


class _VarPreserving(LinearProcess):
    r"""Shared pieces of processes with :math:`\alpha^2 + \sigma^2 = 1`."""

    def sigma(self, t: Time) -> torch.Tensor:
        return _vp_sigma_from_log_alpha(self.log_alpha(t))

    def log_sigma(self, t: Time) -> torch.Tensor:
        return 0.5 * torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    @staticmethod
    def _d_sigma(la: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        # sigma sigma' = -alpha alpha' = -f alpha^2
        return -f * torch.exp(2.0 * la) / _vp_sigma_from_log_alpha(la)

    def d_sigma(self, t: Time) -> torch.Tensor:
        return self._d_sigma(self.log_alpha(t), self.f(t))

    def coefficient_tensors(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cls = type(self)
        if cls.log_sigma is not _VarPreserving.log_sigma or cls.d_sigma is not _VarPreserving.d_sigma \
                or cls.d_alpha is not LinearProcess.d_alpha:  # a subclass with its own formulas (sub-VP)
            return super().coefficient_tensors(t)
        la, f = self.log_alpha(t), self.f(t)  # one schedule evaluation for all four
        return la, 0.5 * torch.log(-torch.expm1(2.0 * la)), f * torch.exp(la), self._d_sigma(la, f)

    def _prior_std(self) -> float:
        return 1.0


class VPSDE(_VarPreserving):
    r"""Variance-preserving SDE with linear :math:`\beta(t) = \beta_{min} + t(\beta_{max}-\beta_{min})`.

    :math:`dx = -\tfrac12\beta(t)x\,dt + \sqrt{\beta(t)}\,dw`,
    :math:`\log\alpha(t) = -\tfrac14 t^2(\beta_{max}-\beta_{min}) - \tfrac12 t\beta_{min}`
    (Song et al. 2021, eq. 11; Ho et al. 2020 in the continuous limit). Prior :math:`\mathcal N(0, I)`.
    """

    default_grid = "time_quadratic"  # chosen on seed 1 of the benchmark targets (box-16d)

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, T: float = 1.0,
                 t_min: float = 1e-3) -> None:
        check_positive("beta_min", beta_min)
        check_positive("beta_max", beta_max)
        if beta_max < beta_min:
            raise ValueError(f"beta_max must be >= beta_min, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        super().__init__(T=T, t_min=t_min)

    def beta(self, t: Time) -> torch.Tensor:
        return self.beta_min + as_time(t) * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Time) -> torch.Tensor:
        t = as_time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def f(self, t: Time) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def t_from_log_snr(self, lam: Time) -> torch.Tensor:
        # Solve -1/4 t^2 (b1-b0) - 1/2 t b0 = log alpha for t >= 0 (Lu et al. 2022, DPM-Solver App.).
        tmp = 2.0 * (self.beta_max - self.beta_min) * torch.nn.functional.softplus(-2.0 * as_time(lam))
        if self.beta_max == self.beta_min:
            return torch.nn.functional.softplus(-2.0 * as_time(lam)) / self.beta_min
        delta = self.beta_min**2 + tmp
        return tmp / (torch.sqrt(delta) + self.beta_min) / (self.beta_max - self.beta_min)

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}, t_min={self.t_min})"


class SubVPSDE(VPSDE):
    r"""Sub-VP SDE (Song et al. 2021, eq. 12): VP drift, :math:`g^2 = \beta(t)(1-\alpha^4)`,
    :math:`\sigma = 1-\alpha^2`."""

    default_grid = "logsnr"  # no benchmark evidence for another

    def sigma(self, t: Time) -> torch.Tensor:
        return -torch.expm1(2.0 * self.log_alpha(t))

    def log_sigma(self, t: Time) -> torch.Tensor:
        return torch.log(self.sigma(t))

    def d_sigma(self, t: Time) -> torch.Tensor:
        return -2.0 * self.f(t) * torch.exp(2.0 * self.log_alpha(t))

    def t_from_log_snr(self, lam: Time) -> torch.Tensor:
        return LinearProcess.t_from_log_snr(self, lam)

    def __repr__(self) -> str:
        return f"SubVPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}, t_min={self.t_min})"


class VESDE(LinearProcess):
    r"""Variance-exploding SDE: :math:`\alpha = 1`,
    :math:`\sigma(t) = \sigma_{min}(\sigma_{max}/\sigma_{min})^t`, :math:`g^2 = d\sigma^2/dt`
    (Song et al. 2021, eq. 9). The marginal std at ``t`` is :math:`\sigma(t)`: at ``t = 0`` the data
    is smoothed by :math:`\sigma_{min}`. Prior :math:`\mathcal N(0, \sigma_{max}^2 I)`.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, *, T: float = 1.0,
                 t_min: float = 1e-5) -> None:
        check_positive("sigma_min", sigma_min)
        check_positive("sigma_max", sigma_max)
        if sigma_max <= sigma_min:
            raise ValueError(f"sigma_max must be > sigma_min, got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        super().__init__(T=T, t_min=t_min)

    def log_alpha(self, t: Time) -> torch.Tensor:
        return 0.0 * as_time(t)  # keeps t in the autograd graph

    def log_sigma(self, t: Time) -> torch.Tensor:
        return math.log(self.sigma_min) + as_time(t) * self._log_ratio

    def sigma(self, t: Time) -> torch.Tensor:
        return torch.exp(self.log_sigma(t))

    def f(self, t: Time) -> torch.Tensor:
        return 0.0 * as_time(t)  # keeps t in the autograd graph

    def d_sigma(self, t: Time) -> torch.Tensor:
        return self.sigma(t) * self._log_ratio

    def t_from_log_snr(self, lam: Time) -> torch.Tensor:
        return (-as_time(lam) - math.log(self.sigma_min)) / self._log_ratio

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, T={self.T}, t_min={self.t_min})"


class EDM(LinearProcess):
    r"""The EDM process (Karras et al. 2022): :math:`\alpha = 1`, :math:`\sigma(t) = t`,
    :math:`g^2 = 2t`, on :math:`[\sigma_{min}, \sigma_{max}]`. Prior :math:`\mathcal N(0, \sigma_{max}^2 I)`.
    """

    default_grid = "karras"  # chosen on seed 1 of the benchmark targets (image-3x8x8)

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5) -> None:
        check_positive("sigma_min", sigma_min)
        check_positive("sigma_max", sigma_max)
        check_positive("sigma_data", sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)
        super().__init__(T=self.sigma_max, t_min=self.sigma_min)

    def log_alpha(self, t: Time) -> torch.Tensor:
        return 0.0 * as_time(t)  # keeps t in the autograd graph

    def sigma(self, t: Time) -> torch.Tensor:
        return as_time(t)

    def f(self, t: Time) -> torch.Tensor:
        return 0.0 * as_time(t)  # keeps t in the autograd graph

    def d_sigma(self, t: Time) -> torch.Tensor:
        return 1.0 + 0.0 * as_time(t)

    def t_from_log_snr(self, lam: Time) -> torch.Tensor:
        return torch.exp(-as_time(lam))

    def __repr__(self) -> str:
        return f"EDM(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class CosineVPSDE(_VarPreserving):
    r"""The cosine schedule of improved DDPM (Nichol & Dhariwal 2021) in continuous time:

    :math:`\alpha(t)^2 = \cos^2(\tfrac{\pi}{2}\tfrac{t+s}{1+s}) / \cos^2(\tfrac{\pi}{2}\tfrac{s}{1+s})`.

    :math:`\alpha` reaches 0 at ``t = 1``; the log-SNR is clipped there by ending at ``T`` below 1
    (default 0.9946, :math:`\lambda(T) \approx -5.0`, as in the DPM-Solver reference code).
    """

    def __init__(self, s: float = 0.008, *, T: float = 0.9946, t_min: float = 1e-3) -> None:
        check_positive("s", s)
        if T >= 1.0:
            raise ValueError(f"T must be < 1 for the cosine schedule (alpha(1) = 0), got {T}; use 0.9946")
        self.s = float(s)
        self._log_a0 = math.log(math.cos(math.pi / 2 * self.s / (1 + self.s)))
        super().__init__(T=T, t_min=t_min)

    def _phase(self, t: Time) -> torch.Tensor:
        return (as_time(t) + self.s) / (1.0 + self.s) * (math.pi / 2)

    def log_alpha(self, t: Time) -> torch.Tensor:
        return torch.log(torch.cos(self._phase(t))) - self._log_a0

    def f(self, t: Time) -> torch.Tensor:
        return -torch.tan(self._phase(t)) * (math.pi / 2) / (1.0 + self.s)

    def t_from_log_snr(self, lam: Time) -> torch.Tensor:
        log_a = _vp_log_alpha_from_log_snr(as_time(lam))
        return 2.0 * (1.0 + self.s) / math.pi * torch.arccos(torch.exp(log_a + self._log_a0)) - self.s

    def __repr__(self) -> str:
        return f"CosineVPSDE(s={self.s}, T={self.T}, t_min={self.t_min})"


class RectifiedFlow(LinearProcess):
    r"""Rectified flow / conditional flow matching path: :math:`\alpha = 1-t`, :math:`\sigma = t`
    (Liu et al. 2022; Lipman et al. 2022), so :math:`f = -1/(1-t)`, :math:`g^2 = 2t/(1-t)`.

    The probability-flow ODE (the velocity :math:`\epsilon - x_0`) is regular on ``[0, 1]``; the
    reverse SDE's :math:`g^2` blows up at ``t = 1``, so start SDE samplers below ``T``.
    """

    def __init__(self, *, T: float = 1.0, t_min: float = 0.0) -> None:
        if T > 1.0:
            raise ValueError(f"T must be <= 1 for rectified flow, got {T}")
        super().__init__(T=T, t_min=t_min)

    def _prior_std(self) -> float:
        return 1.0

    def log_alpha(self, t: Time) -> torch.Tensor:
        return torch.log1p(-as_time(t))

    def sigma(self, t: Time) -> torch.Tensor:
        return as_time(t)

    def f(self, t: Time) -> torch.Tensor:
        return -1.0 / (1.0 - as_time(t))

    def d_alpha(self, t: Time) -> torch.Tensor:
        return -1.0 + 0.0 * as_time(t)  # finite at t = 1, where f * alpha is inf * 0

    def d_sigma(self, t: Time) -> torch.Tensor:
        return 1.0 + 0.0 * as_time(t)

    def t_from_log_snr(self, lam: Time) -> torch.Tensor:
        return torch.sigmoid(-as_time(lam))  # (1-t)/t = e^lam

    def __repr__(self) -> str:
        return f"RectifiedFlow(T={self.T}, t_min={self.t_min})"


# ------------------------------------------------------------------------------ quadrature process
_GL_NODES, _GL_WEIGHTS = (torch.as_tensor(a, dtype=TIME_DTYPE) for a in np.polynomial.legendre.leggauss(24))


def _gauss_legendre(fn: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """∫_a^b fn(s) ds by 24-point Gauss–Legendre, vectorised over the shapes of ``a`` and ``b``."""
    a, b = torch.broadcast_tensors(a, b)
    half = 0.5 * (b - a)
    nodes = _GL_NODES.to(a.device)
    s = (0.5 * (a + b)).unsqueeze(-1) + half.unsqueeze(-1) * nodes
    return half * (fn(s) * _GL_WEIGHTS.to(a.device)).sum(-1)


class LinearSDE(LinearProcess):
    r"""A linear SDE :math:`dx = f(t)x\,dt + g(t)\,dw` from user coefficient functions.

    :math:`\log\alpha(t) = \int_0^t f`, :math:`\sigma(t)^2 = \alpha(t)^2 \int_0^t g(s)^2/\alpha(s)^2\,ds`
    (Särkkä & Solin, *Applied SDEs*, §6.1), evaluated by Gauss–Legendre quadrature on a cached
    float64 table of ``n_intervals`` pieces plus one piece from the nearest knot; the result is
    differentiable in ``t``. ``f`` and ``g`` take and return float64 tensors of any shape.
    """

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], g: Callable[[torch.Tensor], torch.Tensor],
                 *, T: float = 1.0, t_min: float = 1e-3, n_intervals: int = 256, prior: Prior | None = None) -> None:
        if not callable(f) or not callable(g):
            raise TypeError("f and g must be callables of a float64 tensor t")
        self._fn_f = f
        self._fn_g = g
        self.T = float(T)
        self.t_min = float(t_min)
        self._check_range()
        if self.t_min < 0:
            raise ValueError(f"t_min must be >= 0 (the integrals start at 0), got {t_min}")
        self._knots = torch.linspace(0.0, self.T, n_intervals + 1, dtype=TIME_DTYPE)
        with torch.no_grad():
            la = _gauss_legendre(self._f_vals, self._knots[:-1], self._knots[1:])
            self._cum_log_alpha = torch.cat([la.new_zeros(1), la.cumsum(0)])
            var = _gauss_legendre(self._g2_over_alpha2, self._knots[:-1], self._knots[1:])
            self._cum_var = torch.cat([var.new_zeros(1), var.cumsum(0)])
        LinearProcess.__init__(self, T=T, t_min=t_min, prior=prior)

    def _f_vals(self, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self._fn_f(t), dtype=TIME_DTYPE).expand_as(t)

    def _g2_over_alpha2(self, s: torch.Tensor) -> torch.Tensor:
        g = torch.as_tensor(self._fn_g(s), dtype=TIME_DTYPE).expand_as(s)
        return g**2 * torch.exp(-2.0 * self._log_alpha_unchecked(s))

    def _knot(self, t: torch.Tensor) -> torch.Tensor:
        idx = torch.searchsorted(self._knots.to(t.device), t.detach().contiguous(), right=True) - 1
        return idx.clamp(0, len(self._knots) - 2)

    def _log_alpha_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        k = self._knot(t)
        return self._cum_log_alpha.to(t.device)[k] + _gauss_legendre(self._f_vals, self._knots.to(t.device)[k], t)

    def log_alpha(self, t: Time) -> torch.Tensor:
        return self._log_alpha_unchecked(as_time(t))

    def sigma(self, t: Time) -> torch.Tensor:
        t = as_time(t)
        k = self._knot(t)
        var = self._cum_var.to(t.device)[k] + _gauss_legendre(self._g2_over_alpha2, self._knots.to(t.device)[k], t)
        return torch.exp(self.log_alpha(t)) * torch.sqrt(var)

    def f(self, t: Time) -> torch.Tensor:
        t = as_time(t)
        return self._f_vals(t)

    def g2(self, t: Time) -> torch.Tensor:
        t = as_time(t)
        return torch.as_tensor(self._fn_g(t), dtype=TIME_DTYPE).expand_as(t) ** 2

    def d_sigma(self, t: Time) -> torch.Tensor:
        # d sigma^2/dt = 2 f sigma^2 + g^2
        s = self.sigma(t)
        return (2.0 * self.f(t) * s**2 + self.g2(t)) / (2.0 * s)


# ---------------------------------------------------------------------------------- discrete DDPM
def _squaredcos_cap_v2(n: int) -> torch.Tensor:
    """diffusers' ``squaredcos_cap_v2``: β_i = min(1 - ᾱ((i+1)/n)/ᾱ(i/n), 0.999) (Nichol & Dhariwal 2021)."""
    def abar(u: torch.Tensor) -> torch.Tensor:
        return torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    i = torch.arange(n, dtype=TIME_DTYPE)
    return (1.0 - abar((i + 1) / n) / abar(i / n)).clamp(max=0.999)


_BETA_SCHEDULES: dict[str, Callable[[int], torch.Tensor]] = {
    "linear": lambda n: torch.linspace(1e-4, 0.02, n, dtype=TIME_DTYPE),
    "scaled_linear": lambda n: torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=TIME_DTYPE) ** 2,
    "squaredcos_cap_v2": _squaredcos_cap_v2,
}

ZERO_SNR_CLAMP = 2.0**-24


class DiscreteVP(_VarPreserving):
    r"""A discrete DDPM schedule (:math:`\bar\alpha_n`, ``n = 0..N-1``) as a continuous VP process.

    Label ``n`` sits at :math:`t_n = (n+1)/N`; :math:`\log\alpha(t)` is piecewise linear in ``t``
    between those knots (Lu et al. 2022, DPM-Solver §A, ``NoiseScheduleVP('discrete')``), so
    ``T = 1`` and ``t_min = 1/N``. :meth:`time_label` maps ``t`` to the network's label
    :math:`N t - 1 \in [0, N-1]`; :meth:`t_from_label` is its inverse.

    Give ``betas`` or ``alphas_cumprod`` (float64 internally), or a diffusers ``beta_schedule``
    name with ``num_train_timesteps``. A zero terminal SNR (:math:`\bar\alpha_{N-1} = 0`) is
    clamped to :math:`2^{-24}` as in diffusers, and :attr:`zero_terminal_snr` is set so that
    ε-prediction models refuse it.

    **Order of solvers on this process.** Because :math:`\log\alpha` has a kink at every knot, the
    probability-flow drift jumps in ``t`` at each of the N knots: solvers that step in ``t``
    (``euler``, ``midpoint``, ``rk4``, the torchdiffeq methods) lose their order (the issue-9 fit:
    midpoint 0.95, rk4 0.66–1.20) and the adaptive ones stall at tight tolerances (they warn). The
    diffusion solvers (DDIM, DPM-Solver(++), UniPC, DEIS, ``dpm_solver_12/23``) step in the log-SNR
    λ, where the solution is smooth, and keep their order here
    (``tests/convergence/test_order_mixture.py``).
    """

    default_grid = "time_quadratic"  # chosen on seed 1 of the benchmark targets (2d-sharp, 64d-aniso)

    def __init__(self, *, betas: Sequence[float] | torch.Tensor | None = None,
                 alphas_cumprod: Sequence[float] | torch.Tensor | None = None,
                 beta_schedule: str | None = None, num_train_timesteps: int = 1000) -> None:
        given = sum(v is not None for v in (betas, alphas_cumprod, beta_schedule))
        if given > 1:
            raise ValueError("give only one of betas=, alphas_cumprod= or beta_schedule=")
        if given == 0:
            beta_schedule = "linear"
        if beta_schedule is not None:
            if beta_schedule not in _BETA_SCHEDULES:
                raise ValueError(f"unknown beta_schedule {beta_schedule!r}; valid: {', '.join(_BETA_SCHEDULES)}")
            if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
                raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
            betas = _BETA_SCHEDULES[beta_schedule](num_train_timesteps)
        if betas is not None:
            b = torch.as_tensor(betas, dtype=TIME_DTYPE).flatten()
            if b.numel() < 2 or not bool(((b > 0) & (b <= 1)).all()):
                raise ValueError("betas must hold at least 2 values in (0, 1]")
            ac = torch.cumprod(1.0 - b, 0)
        else:
            ac = torch.as_tensor(alphas_cumprod, dtype=TIME_DTYPE).flatten()
        if ac.numel() < 2 or not bool(((ac >= 0) & (ac < 1)).all()) or not bool((ac.diff() < 0).all()):
            raise ValueError("alphas_cumprod must hold at least 2 strictly decreasing values in [0, 1)")
        self.zero_terminal_snr = bool(ac[-1] <= 0)
        if self.zero_terminal_snr:
            ac = ac.clone()
            ac[-1] = ZERO_SNR_CLAMP
        self.alphas_cumprod = ac
        self.N = ac.numel()
        self._knots = torch.arange(1, self.N + 1, dtype=TIME_DTYPE) / self.N
        self._log_alpha_knots = 0.5 * torch.log(ac)
        self._slopes = self._log_alpha_knots.diff() / self._knots.diff()
        super().__init__(T=1.0, t_min=1.0 / self.N)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(knots, log-alpha at the knots, slopes) on ``device``."""
        if device == self._knots.device:
            return self._knots, self._log_alpha_knots, self._slopes
        return self._knots.to(device), self._log_alpha_knots.to(device), self._slopes.to(device)

    def _interval(self, t: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(knots, t.detach().contiguous(), right=True).sub_(1).clamp_(0, self.N - 2)

    def log_alpha(self, t: Time) -> torch.Tensor:
        t = as_time(t)
        knots, la, slopes = self._tables(t.device)
        k = self._interval(t, knots)
        return la[k] + slopes[k] * (t - knots[k])

    def f(self, t: Time) -> torch.Tensor:
        t = as_time(t)
        knots, _, slopes = self._tables(t.device)
        return slopes[self._interval(t, knots)] + 0.0 * t

    def t_from_log_snr(self, lam: Time) -> torch.Tensor:
        lam = as_time(lam)
        log_a = _vp_log_alpha_from_log_snr(lam)
        # log alpha is decreasing in t: interpolate on the reversed table.
        xs = self._log_alpha_knots.flip(0).to(lam.device)
        ts = self._knots.flip(0).to(lam.device)
        k = (torch.searchsorted(xs, log_a.detach().reshape(-1), right=True) - 1).clamp(0, self.N - 2).reshape(lam.shape)
        w = (log_a - xs[k]) / (xs[k + 1] - xs[k])
        return (ts[k] + w * (ts[k + 1] - ts[k])).clamp(self.t_min, self.T)

    def time_label(self, t: torch.Tensor) -> torch.Tensor:
        return self.N * t - 1.0

    def t_from_label(self, n: Time) -> torch.Tensor:
        return (as_time(n) + 1.0) / self.N

    @classmethod
    def from_diffusers(cls, scheduler_or_config: object) -> DiscreteVP:
        r"""The DDPM-family schedule of a diffusers scheduler, or of its config (a dict).

        A scheduler object with an ``alphas_cumprod`` table gives exactly that table (float32 values
        read in float64). A config (``scheduler.config``, a dict, or a scheduler without the table)
        is computed in float64 from ``trained_betas``, or ``beta_schedule`` (``linear``,
        ``scaled_linear``, ``squaredcos_cap_v2``) with ``beta_start``, ``beta_end`` and
        ``num_train_timesteps``. ``rescale_betas_zero_snr`` applies Lin et al. 2024 (*Common Diffusion
        Noise Schedules and Sample Steps are Flawed*, Alg. 1): :math:`\sqrt{arlpha}` shifted to 0
        at the last label and scaled back to its first value; the terminal value is then clamped
        (:data:`ZERO_SNR_CLAMP`) and :attr:`zero_terminal_snr` set. ``prediction_type``,
        ``timestep_spacing`` and ``steps_offset`` describe the network and the sampling grid, not
        the process: :mod:`sdediff.integrations.diffusers` reads them.
        """
        from collections.abc import Mapping

        ac = getattr(scheduler_or_config, "alphas_cumprod", None)
        config = scheduler_or_config if isinstance(scheduler_or_config, Mapping) else \
            getattr(scheduler_or_config, "config", None)
        if ac is None and not isinstance(config, Mapping):
            raise TypeError(f"from_diffusers needs a diffusers scheduler or its config dict, got "
                            f"{type(scheduler_or_config).__name__} (no alphas_cumprod and no config)")
        cfg = dict(config) if isinstance(config, Mapping) else {}
        rescale = bool(cfg.get("rescale_betas_zero_snr", False))
        if ac is not None:
            table = torch.as_tensor(ac).detach().cpu().to(TIME_DTYPE).clone()
            if rescale:
                table[-1] = 0.0  # diffusers stores its own clamp there; mark the zero terminal SNR
            return cls(alphas_cumprod=table)
        n = cfg.get("num_train_timesteps", 1000)
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {n!r}")
        if cfg.get("trained_betas") is not None:
            betas = torch.as_tensor(cfg["trained_betas"], dtype=TIME_DTYPE)
        else:
            name = cfg.get("beta_schedule", "linear")
            start, end = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
            makers: dict[str, Callable[[], torch.Tensor]] = {
                "linear": lambda: torch.linspace(start, end, n, dtype=TIME_DTYPE),
                "scaled_linear": lambda: torch.linspace(start**0.5, end**0.5, n, dtype=TIME_DTYPE) ** 2,
                "squaredcos_cap_v2": lambda: _squaredcos_cap_v2(n),
            }
            if name not in makers:
                raise ValueError(f"unknown beta_schedule {name!r} in the diffusers config; valid: "
                                 f"{', '.join(makers)} (or pass trained_betas)")
            betas = makers[name]()
        table = torch.cumprod(1.0 - betas, 0)
        if rescale:
            root = table.sqrt()
            r0, r_end = float(root[0]), float(root[-1])
            table = ((root - r_end) * (r0 / (r0 - r_end))) ** 2
            table[-1] = 0.0
        return cls(alphas_cumprod=table)

    def __repr__(self) -> str:
        return f"DiscreteVP(N={self.N}, zero_terminal_snr={self.zero_terminal_snr})"

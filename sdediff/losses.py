r"""Training: denoising score matching for any linear process and any prediction type.

Denoising (conditional) score matching (Vincent 2011) regresses the network on the noise that made
:math:`x_t = \alpha_t x_0 + \sigma_t\epsilon` from a data point :math:`x_0`:

.. math::  \mathcal L = \mathbb E_{t\sim p(t)}\, \mathbb E_{x_0,\epsilon}\;
           w(t)\,\lVert \hat\epsilon_\theta(x_t, t) - \epsilon\rVert^2 \quad(\text{in its own space, below})

Its minimiser at each ``t`` is :math:`\hat\epsilon = E[\epsilon \mid x_t]`, i.e. the exact score
:math:`\nabla\log p_t = -E[\epsilon\mid x_t]/\sigma_t`, whatever the positive weighting; the
weighting only trades accuracy between noise levels. Every parameterization is affine in the
network output at fixed :math:`(t, x_t)`, so each named loss is :math:`w(t)` times the ε-loss:

==============  ================================================================  ===========================
weighting       per-sample loss                                                   reference
==============  ================================================================  ===========================
``eps``         :math:`\lVert\hat\epsilon-\epsilon\rVert^2`                         Ho et al. 2020 ("simple")
``song``        :math:`\sigma^2\lVert\hat s + \epsilon/\sigma\rVert^2`              Song et al. 2021, λ = σ²
``likelihood``  :math:`g^2\lVert\hat s + \epsilon/\sigma\rVert^2`                   Song et al. 2021, λ = g²
``x0``          :math:`\lVert\hat x_0 - x_0\rVert^2`                                plain denoiser loss
``edm``         :math:`\frac{\rho^2+\sigma_d^2}{(\rho\sigma_d)^2}\lVert\hat x_0 - x_0\rVert^2`  Karras et al. 2022 (8)
``v``           :math:`\lVert\hat v - v\rVert^2,\ v = \alpha\epsilon - \sigma x_0`       Salimans & Ho 2022
``flow``        :math:`\lVert\hat u - u\rVert^2,\ u = \dot\alpha x_0 + \dot\sigma\epsilon`  Lipman; Liu et al. 2022
==============  ================================================================  ===========================

(ρ = σ/α is EDM's noise level of :math:`x/\alpha`; :math:`\sigma_d` the process's ``sigma_data``, 0.5 by default.)

Times are drawn by ``t_sampler``: ``"uniform"`` (continuous on :math:`[t_{min}, T]`; diffusers'
integer labels for a :class:`~sdediff.DiscreteVP`), ``"logsnr"`` (uniform in λ), ``"lognormal"``
(EDM's :math:`\ln\rho \sim \mathcal N(-1.2, 1.2^2)`, truncated to the range), or a callable
``t_sampler(n, generator) -> t``. With ``importance=True`` each sample is reweighted by
:math:`p_{uniform}(t)/p(t)`, so the loss estimates the uniform-``t`` objective with the variance of
the chosen sampler (importance sampling of ``t``, Song et al. 2021 §C / Kingma et al. 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ._utils import TIME_DTYPE, check_choice, expand_like
from .model import DiffusionModel, Prediction, ScoreModel
from .noise import GeneratorSpec, as_generator, randn
from .processes import DiscreteVP, LinearProcess

__all__ = ["T_SAMPLERS", "WEIGHTINGS", "add_noise", "dsm_loss", "sample_t"]


def add_noise(process: LinearProcess, x0: torch.Tensor, t: torch.Tensor | float, *, noise: torch.Tensor | None = None,
              generator: GeneratorSpec = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(x_t, eps)`` with :math:`x_t = \alpha_t x_0 + \sigma_t\epsilon` (diffusers' ``add_noise``, in sdediff time).

    ``t`` is a scalar or one time per sample (float64); ``noise`` is drawn with ``generator`` when not given.
    """
    if not isinstance(process, LinearProcess):
        raise TypeError(f"add_noise needs a linear process (alpha, sigma), got {type(process).__name__}")
    if noise is None:
        noise = randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(x0.shape)} (the shape of x0)")
    return process.marginal(t, x0, noise).to(x0.dtype), noise


# ------------------------------------------------------------------------------------ t sampling
def _uniform01(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=TIME_DTYPE, device=generator.device if generator else "cpu"
                      ).to(device)


def _dlam_dt(process: LinearProcess, t: torch.Tensor) -> torch.Tensor:
    r""":math:`|d\lambda/dt| = |f - \dot\sigma/\sigma|`."""
    return (process.f(t) - process.d_sigma(t) / process.sigma(t)).abs()


def _sample_uniform(process: LinearProcess, n: int, g: torch.Generator | None, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(process, DiscreteVP):
        k = torch.randint(0, process.N, (n,), generator=g, device=g.device if g else "cpu").to(device)
        return process.t_from_label(k.to(TIME_DTYPE)), None
    u = _uniform01(n, g, device)
    t = process.t_min + u * (process.T - process.t_min)
    return t, torch.full_like(t, 1.0 / (process.T - process.t_min))


def _sample_logsnr(process: LinearProcess, n: int, g: torch.Generator | None, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    lo, hi = float(process.log_snr(process.T)), float(process.log_snr(process.t_min))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"the logsnr sampler needs a finite log-SNR range, got [{lo}, {hi}] for {process!r}; "
                         "build the process with t_min > 0 and T below the zero-SNR end")
    lam = lo + _uniform01(n, g, device) * (hi - lo)
    t = process.t_from_log_snr(lam).clamp(process.t_min, process.T)
    return t, _dlam_dt(process, t) / (hi - lo)


def _sample_lognormal(process: LinearProcess, n: int, g: torch.Generator | None, device: torch.device,
                      p_mean: float = -1.2, p_std: float = 1.2) -> tuple[torch.Tensor, torch.Tensor | None]:
    # ln rho = -lambda ~ N(p_mean, p_std^2), truncated to the process range by the inverse CDF
    lo, hi = -float(process.log_snr(process.t_min)), -float(process.log_snr(process.T))
    normal = torch.distributions.Normal(torch.tensor(p_mean, dtype=TIME_DTYPE), torch.tensor(p_std, dtype=TIME_DTYPE))
    c_lo, c_hi = (float(normal.cdf(torch.tensor(v, dtype=TIME_DTYPE))) for v in (lo, hi))
    u = c_lo + _uniform01(n, g, device) * (c_hi - c_lo)
    log_rho = p_mean + p_std * torch.special.ndtri(u)
    t = process.t_from_log_snr(-log_rho).clamp(process.t_min, process.T)
    dens = torch.exp(normal.log_prob(log_rho.cpu())).to(device) / (c_hi - c_lo)
    return t, dens * _dlam_dt(process, t)


T_SAMPLERS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor | None]]] = {
    "uniform": _sample_uniform,
    "logsnr": _sample_logsnr,
    "lognormal": _sample_lognormal,
}
"""Samplers of the training time t by name (``t_sampler=``): each returns the times and, with
importance sampling, their density."""


def sample_t(process: LinearProcess, n: int, t_sampler: str | Callable[..., Any] = "uniform", *,
             generator: torch.Generator | int | None = None, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` training times (float64) and their density on ``t`` (``None`` where it is discrete or unknown)."""
    g = as_generator(generator)
    if callable(t_sampler):
        out = t_sampler(n, g)
        t, dens = out if isinstance(out, tuple) else (out, None)
        t = torch.as_tensor(t, dtype=TIME_DTYPE, device=device)
        if t.shape != (n,):
            raise ValueError(f"t_sampler must return {n} times (shape ({n},)), got shape {tuple(t.shape)}")
        return t, None if dens is None else torch.as_tensor(dens, dtype=TIME_DTYPE, device=device)
    check_choice("t_sampler", t_sampler, tuple(T_SAMPLERS))
    return T_SAMPLERS[t_sampler](process, n, g, torch.device(device))


# ------------------------------------------------------------------------------------- weightings
class _Terms:
    """Schedule coefficients at the training times, broadcast against the data."""

    def __init__(self, process: LinearProcess, t: torch.Tensor, x0: torch.Tensor) -> None:
        def c(v: torch.Tensor) -> torch.Tensor:
            return expand_like(v, x0)

        self.alpha, self.sigma = c(process.alpha(t)), c(process.sigma(t))
        self.d_alpha, self.d_sigma = c(process.d_alpha(t)), c(process.d_sigma(t))
        self.g2 = c(process.g2(t))
        self.sigma_data = float(getattr(process, "sigma_data", 0.5))


def _sq(a: torch.Tensor) -> torch.Tensor:
    return a.pow(2).flatten(1).mean(1)


def _eps(p: Prediction, x0: torch.Tensor, eps: torch.Tensor, c: _Terms) -> torch.Tensor:
    return _sq(p.eps - eps)


def _song(p: Prediction, x0: torch.Tensor, eps: torch.Tensor, c: _Terms) -> torch.Tensor:
    return _sq(c.sigma * p.score + eps)  # sigma^2 |s + eps / sigma|^2


def _likelihood(p: Prediction, x0: torch.Tensor, eps: torch.Tensor, c: _Terms) -> torch.Tensor:
    return _sq(c.g2.sqrt() * (p.score + eps / c.sigma))


def _x0(p: Prediction, x0: torch.Tensor, eps: torch.Tensor, c: _Terms) -> torch.Tensor:
    return _sq(p.x0 - x0)


def _edm(p: Prediction, x0: torch.Tensor, eps: torch.Tensor, c: _Terms) -> torch.Tensor:
    rho2, sd2 = (c.sigma / c.alpha) ** 2, c.sigma_data**2
    return _sq(((rho2 + sd2) / (rho2 * sd2)).sqrt() * (p.x0 - x0))


def _v(p: Prediction, x0: torch.Tensor, eps: torch.Tensor, c: _Terms) -> torch.Tensor:
    return _sq((c.alpha * p.eps - c.sigma * p.x0) - (c.alpha * eps - c.sigma * x0))


def _flow(p: Prediction, x0: torch.Tensor, eps: torch.Tensor, c: _Terms) -> torch.Tensor:
    return _sq(p.velocity - (c.d_alpha * x0 + c.d_sigma * eps))


WEIGHTINGS: dict[str, Callable[[Prediction, torch.Tensor, torch.Tensor, _Terms], torch.Tensor]] = {
    "eps": _eps,
    "song": _song,
    "likelihood": _likelihood,
    "x0": _x0,
    "edm": _edm,
    "v": _v,
    "flow": _flow,
}
"""Loss weightings by name (``weighting=``): the per-sample squared error each one puts on the
prediction."""

#: the weighting that is the plain MSE on the network's own output, per prediction type
NATURAL_WEIGHTING = {"eps": "eps", "score": "song", "x0": "x0", "v": "v", "velocity": "flow"}


def dsm_loss(model_or_net: ScoreModel | Callable[..., Any], x0: torch.Tensor, *, process: LinearProcess | None = None,
             prediction: str | None = None, t_sampler: str | Callable[..., Any] = "uniform",
             weighting: str | None = None, importance: bool = False, generator: GeneratorSpec = None,
             cond: Mapping[str, Any] | None = None, reduction: str = "mean") -> torch.Tensor:
    r"""Denoising score-matching loss of a model on a batch of data ``x0`` (module docstring).

    Args:
        model_or_net: a :class:`~sdediff.DiffusionModel`, or a network ``net(x, t_label, **cond)``
            with ``process=`` and ``prediction=`` (sdediff or diffusers names).
        x0: a batch of data ``(B, ...)``.
        t_sampler: ``"uniform"``, ``"logsnr"``, ``"lognormal"`` or ``t_sampler(n, generator) -> t``.
        weighting: a name in :data:`WEIGHTINGS`; default: the plain MSE on the network's own output
            (``eps`` for ε-models, ``v`` for v-models, ``flow`` for velocity models, ...).
        importance: reweight by :math:`p_{uniform}(t)/p(t)` (needs a sampler with a density).
        generator: drives ``t`` and ε (an int seed, a generator; a per-sample list drives ε per sample
            and ``t`` from its first entry).
        reduction: ``"mean"`` (a scalar) or ``"none"`` (one value per sample).

    Returns:
        the loss, differentiable in the network's parameters.
    """
    if isinstance(model_or_net, DiffusionModel):
        if process is not None or prediction is not None:
            raise ValueError("pass process=/prediction= only with a bare network; the DiffusionModel has its own")
        model = model_or_net if cond is None else model_or_net.with_cond(**cond)
    elif isinstance(model_or_net, ScoreModel):
        model = model_or_net
    else:
        if process is None or prediction is None:
            raise ValueError("a bare network needs process= and prediction= (e.g. process=sd.VPSDE(), "
                             "prediction='eps'); or pass a DiffusionModel")
        model = DiffusionModel(model_or_net, process, prediction, cond=cond)
    proc = model.process
    if not isinstance(proc, LinearProcess):
        raise TypeError(f"dsm_loss needs a linear process (alpha, sigma), got {type(proc).__name__}")
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.ndim < 1 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty floating-point batch (B, ...), got "
                         f"{getattr(x0, 'shape', type(x0).__name__)}")
    weighting = weighting or NATURAL_WEIGHTING[getattr(model, "prediction", "eps")]
    check_choice("weighting", weighting, tuple(WEIGHTINGS))
    check_choice("reduction", reduction, ("mean", "none"))
    gens = generator if isinstance(generator, (list, tuple)) else None
    g_t = as_generator(gens[0] if gens else generator)
    t, dens = sample_t(proc, x0.shape[0], t_sampler, generator=g_t, device=x0.device)
    xt, eps = add_noise(proc, x0, t, generator=gens if gens is not None else g_t)
    pred = model.predict(t, xt)
    per_sample = WEIGHTINGS[weighting](pred, x0, eps, _Terms(proc, t, x0))
    if importance:
        if dens is None:
            raise ValueError(f"importance=True needs a t_sampler with a density on t; {t_sampler!r} has none "
                             "(the discrete labels of a DiscreteVP, or a callable returning only t)")
        per_sample = per_sample * (1.0 / (proc.T - proc.t_min) / dens).to(per_sample.dtype)
    return per_sample.mean() if reduction == "mean" else per_sample

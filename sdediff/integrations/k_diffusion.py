r"""k-diffusion's calling convention on sdediff's solvers: a k-diffusion user changes one import.

``sample(model, x, sigmas, solver="dpm++2m", extra_args=..., callback=..., disable=...)`` takes a
k-diffusion denoiser ``model(x, sigma, **extra_args) -> x0`` (Karras et al. 2022: the data
prediction :math:`D(x;\sigma)` of the process :math:`x = x_0 + \sigma\epsilon`), a state ``x`` at
``sigmas[0]`` (already scaled by it, as k-diffusion's samplers expect) and a decreasing ``sigmas``
grid (``get_sigmas_*`` below, usually ending at 0), and returns the final state. Inside, the denoiser
is ``DiffusionModel(model, EDM(sigma_min, sigma_max), prediction="x0")`` with the time equal to σ,
and the grid is integrated by :func:`sdediff.solve` with the named solver; the last step onto
σ = 0 is the denoise step, the plain data prediction as in k-diffusion's own samplers
(``final_step="x0"``, so a k-diffusion user gets k-diffusion's result; ``final_step="extrapolate"``, the
default of :func:`sdediff.sample`, removes the error floor of the last noise level, see
:func:`sdediff.solvers.diffusion.denoise`). ``model`` may also be an sdediff model
of any process; σ is then its :math:`\sigma/\alpha`.

``callback`` receives k-diffusion's dict once per step, at the step's first model evaluation:
``{"x", "i", "sigma", "sigma_hat", "denoised"}``. Solver names may be k-diffusion's
(``sample_euler``, ``sample_heun``, ``sample_dpmpp_2m``, ``sample_euler_ancestral``, ...) or sdediff's.

This module needs nothing beyond sdediff: k-diffusion itself is never imported.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .. import solve as _solve
from ..model import DiffusionModel, ScoreModel
from ..processes import EDM, LinearProcess
from ..solvers import get_solver

__all__ = [
    "K_DIFFUSION_NAMES",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "get_sigmas_polyexponential",
    "get_sigmas_vp",
    "sample",
]

#: k-diffusion sampler names -> the sdediff solver with the same update (deterministic ones equal to
#: round-off; Euler ancestral is first-order DPM-Solver++ SDE, the same map, with sdediff's noise stream)
K_DIFFUSION_NAMES: dict[str, str] = {
    "sample_euler": "euler",
    "sample_heun": "heun",
    "sample_dpmpp_2m": "dpm++2m",
    "sample_euler_ancestral": "ancestral",
    "sample_dpmpp_2m_sde": "sde_dpm++2m",
}


def _zero_end(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s, s.new_zeros(1)])


def _check(n: int, sigma_min: float, sigma_max: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                      device: str | torch.device = "cpu") -> torch.Tensor:
    r"""Karras et al. 2022, eq. 5: :math:`\sigma_i^{1/\rho}` uniform from :math:`\sigma_{max}` to
    :math:`\sigma_{min}` (``n`` values), then 0. Float64."""
    _check(n, sigma_min, sigma_max)
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return _zero_end((hi + ramp * (lo - hi)) ** rho).to(device)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float,
                           device: str | torch.device = "cpu") -> torch.Tensor:
    r""":math:`\log\sigma` uniform from :math:`\sigma_{max}` to :math:`\sigma_{min}` (``n`` values), then 0."""
    _check(n, sigma_min, sigma_max)
    return _zero_end(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()).to(device)


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0,
                               device: str | torch.device = "cpu") -> torch.Tensor:
    r""":math:`\log\sigma = \log\sigma_{min} + u^\rho(\log\sigma_{max} - \log\sigma_{min})`, u from 1 to 0, then 0
    (``rho = 1`` is the exponential schedule)."""
    _check(n, sigma_min, sigma_max)
    u = torch.linspace(1.0, 0.0, n, dtype=torch.float64) ** rho
    return _zero_end(torch.exp(u * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))).to(device)


def get_sigmas_vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    r"""The VP SDE's :math:`\sigma/\alpha = \sqrt{e^{\beta_d t^2/2 + \beta_{min} t} - 1}` at ``t`` uniform
    from 1 to ``eps_s`` (Song et al. 2021; Karras et al. 2022, Table 1), then 0."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    t = torch.linspace(1.0, eps_s, n, dtype=torch.float64)
    return _zero_end(torch.sqrt(torch.expm1(beta_d * t**2 / 2 + beta_min * t))).to(device)


def _grid(sigmas: Any) -> torch.Tensor:
    s = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float64).flatten()
    if s.numel() < 2:
        raise ValueError(f"sigmas must hold at least 2 values (a start and an end), got {s.tolist()}")
    if not bool(torch.isfinite(s).all()) or not bool((s[:-1] > 0).all()) or float(s[-1]) < 0 \
            or not bool((s.diff() < 0).all()):
        raise ValueError(f"sigmas must be finite, strictly decreasing, positive but a last one >= 0 (e.g. "
                         f"get_sigmas_karras(...)); got {s.tolist()}")
    return s


class _Callback:
    """k-diffusion's callback: once per step, at that step's first model evaluation."""

    def __init__(self, user: Callable[[dict[str, Any]], Any], sigmas: torch.Tensor, sigma_of: Callable[[Any], Any]):
        self.user, self.sigmas, self.sigma_of = user, sigmas, sigma_of
        self.i = 0
        self.reported = -1

    def on_eval(self, x: torch.Tensor, t: Any, denoised: torch.Tensor) -> None:
        if self.reported < self.i:
            self.reported = self.i
            self.user({"x": x, "i": self.i, "sigma": self.sigmas[self.i], "sigma_hat": self.sigma_of(t),
                       "denoised": denoised})

    def on_step(self, i: int, t: torch.Tensor, x: torch.Tensor) -> None:
        self.i = i + 1


class _Observed(ScoreModel):
    """A view of a model that reports each evaluation (state, time, x0) to the callback."""

    def __init__(self, model: ScoreModel, cb: _Callback) -> None:
        self.model, self.cb = model, cb
        self.process = model.process
        self._counter = model._counter

    def predict(self, t: Any, x: torch.Tensor) -> Any:
        pred = self.model.predict(t, x)
        self.cb.on_eval(x, t, pred.x0.to(x.dtype))
        return pred


def sample(model: Callable[..., torch.Tensor] | ScoreModel, x: torch.Tensor, sigmas: Any, *,
           solver: str = "dpm++2m", extra_args: Mapping[str, Any] | None = None,
           callback: Callable[[dict[str, Any]], Any] | None = None, disable: bool | None = None,
           generator: Any = None, options: dict[str, Any] | None = None, final_step: str = "x0") -> torch.Tensor:
    """k-diffusion's ``sample_*(model, x, sigmas, extra_args=None, callback=None, disable=None)`` on an
    sdediff solver (module docstring). ``generator`` drives stochastic solvers (k-diffusion draws from
    the global RNG); ``options`` are the solver's options; ``final_step`` the last step onto σ = 0
    (``"x0"``, k-diffusion's, or ``"extrapolate"``)."""
    name = K_DIFFUSION_NAMES.get(solver, solver)
    solver_obj = get_solver(name)
    grid = _grid(sigmas)
    if isinstance(model, ScoreModel):
        if extra_args:
            raise ValueError("extra_args are for a k-diffusion denoiser; give an sdediff model its cond "
                             "(DiffusionModel(..., cond=...) or model.with_cond(...))")
        base, process = model, model.process
        if not isinstance(process, LinearProcess):
            raise TypeError(f"an sdediff model needs a linear process here, got {type(process).__name__}")
        pos = grid[grid > 0]
        ts = process.t_from_log_snr(-torch.log(pos))
        ts = torch.cat([ts, ts.new_zeros(grid.numel() - pos.numel())])

        def sigma_of(t: Any) -> Any:
            tt = torch.as_tensor(t, dtype=torch.float64)
            return (process.sigma(tt) / process.alpha(tt)).to(grid.dtype)
    elif callable(model):
        pos = grid[grid > 0]
        process = EDM(sigma_min=float(pos[-1]), sigma_max=float(grid[0]))
        base = DiffusionModel(model, process, "x0", time_label=lambda t: t, cond=extra_args)
        ts = grid

        def sigma_of(t: Any) -> Any:
            return torch.as_tensor(t, dtype=torch.float64)
    else:
        raise TypeError(f"model must be a k-diffusion denoiser model(x, sigma, **extra_args) or an sdediff model, "
                        f"got {type(model).__name__}")
    sig_out = torch.as_tensor(sigmas).flatten()
    cb = _Callback(callback, sig_out, lambda t: sigma_of(t).to(sig_out.dtype)) if callback is not None else None
    system = _Observed(base, cb) if cb is not None else base
    progress = (not disable) if disable is not None else sys.stderr.isatty()
    sol = _solve(system, x, ts=ts.to(x.device), solver=solver_obj, generator=generator, progress=progress,
                 callback=cb.on_step if cb is not None else None, options=options, final_step=final_step)
    return sol.x

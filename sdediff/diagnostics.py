r"""Numerical checks of the equations a process, an SDE or an ODE must satisfy.

Both checks work with the log-density :math:`\ell = \log p` and autograd (float64 advised):

* Fokker–Planck, :math:`\partial_t p = -\nabla\cdot(f p) + \tfrac12 g^2\Delta p`, divided by :math:`p`:

  .. math:: \partial_t\ell = -\nabla\cdot f - f\cdot\nabla\ell + \tfrac12 g^2\big(\Delta\ell + \|\nabla\ell\|^2\big)

  (``reverse=True``: the density of an SDE run backwards in time, where the diffusion term
  changes sign: :math:`\partial_t\ell = \dots - \tfrac12 g^2(\Delta\ell + \|\nabla\ell\|^2)`).
* Continuity, :math:`\partial_t p + \nabla\cdot(v p) = 0`, divided by :math:`p`:

  .. math:: \partial_t\ell + \nabla\cdot v + v\cdot\nabla\ell = 0.

Each returns a :class:`Residual`: the residual per point, the sum of the absolute values of the
terms (its natural scale), and their ratio. See ``docs/theory.md`` for the derivations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._utils import TIME_DTYPE, as_time

__all__ = ["Residual", "continuity_residual", "divergence", "fokker_planck_residual", "laplacian"]

LogDensity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Residual:
    """``residual`` per point, ``scale`` = sum of |terms| per point, ``relative`` = residual / scale."""

    residual: torch.Tensor
    scale: torch.Tensor
    relative: torch.Tensor

    @property
    def max_relative(self) -> float:
        return float(self.relative.abs().max())


def divergence(v: torch.Tensor, x: torch.Tensor, *, create_graph: bool = True) -> torch.Tensor:
    r""":math:`\nabla\cdot v` per sample for ``v = F(x)`` of shape ``(B, D)`` (exact, D backward passes)."""
    div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(x.shape[1]):
        (gi,) = torch.autograd.grad(v[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
        div = div + gi[:, i]
    return div


def laplacian(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r""":math:`\Delta\ell = \nabla\cdot\nabla\ell` from ``grad`` :math:`=\nabla\ell`."""
    return divergence(grad, x)


def _prepare(t: float | torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim != 2:
        raise ValueError(f"x must have shape (B, D), got {tuple(x.shape)}")
    t = as_time(t, x.device).detach().clone()
    if t.ndim == 0:
        t = t.expand(x.shape[0]).clone()
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t.requires_grad_(True), x.detach().to(TIME_DTYPE).clone().requires_grad_(True)


def _log_density_terms(log_p: LogDensity, t: torch.Tensor, x: torch.Tensor):
    ell = log_p(t, x)
    if ell.shape != (x.shape[0],):
        raise ValueError(f"log_p(t, x) must return shape ({x.shape[0]},), got {tuple(ell.shape)}")
    dt, grad = torch.autograd.grad(ell.sum(), (t, x), create_graph=True)
    return dt, grad


def fokker_planck_residual(log_p: LogDensity, drift: VectorField, diffusion: Callable[[torch.Tensor], torch.Tensor],
                           t: float | torch.Tensor, x: torch.Tensor, *, reverse: bool = False) -> Residual:
    r"""Residual of the Fokker–Planck equation for :math:`dx = f(t,x)dt + g(t)dw` at points ``(t, x)``.

    Args:
        log_p: ``log_p(t, x) -> (B,)``, differentiable in ``t`` (shape ``(B,)``) and ``x``.
        drift: ``f(t, x) -> (B, D)``.
        diffusion: ``g(t) -> ()`` or ``(B,)``.
        t: a time or one per point; x: points ``(B, D)``.
        reverse: the SDE runs backwards in time (sign of the diffusion term flips).
    """
    t, x = _prepare(t, x)
    dt, grad = _log_density_terms(log_p, t, x)
    f = drift(t, x)
    if f.shape != x.shape:
        raise ValueError(f"drift(t, x) must return shape {tuple(x.shape)}, got {tuple(f.shape)}")
    div_f = divergence(f, x)
    lap = laplacian(grad, x)
    g2 = torch.as_tensor(diffusion(t), dtype=x.dtype) ** 2
    sign = -1.0 if reverse else 1.0
    transport = -(f * grad).sum(1)
    diff_term = sign * 0.5 * g2 * (lap + (grad**2).sum(1))
    res = dt + div_f - transport - diff_term
    scale = dt.abs() + div_f.abs() + transport.abs() + (0.5 * g2 * lap).abs() + (0.5 * g2 * (grad**2).sum(1)).abs()
    res, scale = res.detach(), scale.detach()
    return Residual(res, scale, res / scale.clamp_min(torch.finfo(scale.dtype).tiny))


def continuity_residual(log_p: LogDensity, velocity: VectorField, t: float | torch.Tensor, x: torch.Tensor) -> Residual:
    r"""Residual of :math:`\partial_t p + \nabla\cdot(v p) = 0` at points ``(t, x)``.

    ``log_p(t, x) -> (B,)`` and ``velocity(t, x) -> (B, D)``; ``t`` may be any scalar path
    parameter (time, or the radius ``r`` of a force field).
    """
    t, x = _prepare(t, x)
    dt, grad = _log_density_terms(log_p, t, x)
    v = velocity(t, x)
    if v.shape != x.shape:
        raise ValueError(f"velocity(t, x) must return shape {tuple(x.shape)}, got {tuple(v.shape)}")
    div_v = divergence(v, x)
    transport = (v * grad).sum(1)
    res = (dt + div_v + transport).detach()
    scale = (dt.abs() + div_v.abs() + transport.abs()).detach()
    return Residual(res, scale, res / scale.clamp_min(torch.finfo(scale.dtype).tiny))

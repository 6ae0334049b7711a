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


def _transport_terms(log_p: LogDensity, field: VectorField, name: str, t: float | torch.Tensor, x: torch.Tensor):
    """The pieces both equations share: ∂_t ℓ, ∇ℓ, the field v and ∇·v at the points."""
    t, x = _prepare(t, x)
    dt, grad = _log_density_terms(log_p, t, x)
    v = field(t, x)
    if v.shape != x.shape:
        raise ValueError(f"{name}(t, x) must return shape {tuple(x.shape)}, got {tuple(v.shape)}")
    return t, x, dt, grad, v, divergence(v, x)


def _residual(terms: list[torch.Tensor]) -> Residual:
    """Residual = sum of the equation's terms (all on one side); scale = sum of their magnitudes."""
    res = sum(terms).detach()
    scale = sum(term.abs() for term in terms).detach()
    return Residual(res, scale, res / scale.clamp_min(torch.finfo(scale.dtype).tiny))


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
    t, x, dt, grad, f, div_f = _transport_terms(log_p, drift, "drift", t, x)
    lap = laplacian(grad, x)
    half_g2 = 0.5 * torch.as_tensor(diffusion(t), dtype=x.dtype) ** 2
    sign = -1.0 if reverse else 1.0
    return _residual([dt, div_f, (f * grad).sum(1), -sign * half_g2 * lap, -sign * half_g2 * (grad**2).sum(1)])


def continuity_residual(log_p: LogDensity, velocity: VectorField, t: float | torch.Tensor, x: torch.Tensor) -> Residual:
    r"""Residual of :math:`\partial_t p + \nabla\cdot(v p) = 0` at points ``(t, x)``.

    ``log_p(t, x) -> (B,)`` and ``velocity(t, x) -> (B, D)``; ``t`` may be any scalar path
    parameter (time, or the radius ``r`` of a force field).
    """
    t, x, dt, grad, v, div_v = _transport_terms(log_p, velocity, "velocity", t, x)
    return _residual([dt, div_v, (v * grad).sum(1)])

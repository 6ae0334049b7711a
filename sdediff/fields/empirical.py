r"""The exact Poisson field of a finite dataset (the empirical PFGM / PFGM++ field).

For data :math:`\{y_i\}_{i=1}^M \subset \mathbb R^N` with weights :math:`\pi_i` placed as charges
at :math:`(y_i, 0)` in :math:`N + D` dimensions (Xu et al. 2023, PFGM++ eq. 2),

.. math::  E(\tilde x) \propto \sum_i \pi_i \frac{\tilde x - \tilde y_i}{\|\tilde x - \tilde y_i\|^{N+D}},
           \qquad \frac{dx}{dr} = \frac{E_x}{E_r} = \frac{x - \bar y(x, r)}{r},

with the posterior mean :math:`\bar y = \sum_i w_i y_i`, :math:`w = \mathrm{softmax}_i\big(\log\pi_i
- \tfrac{N+D}{2}\log(\|x - y_i\|^2 + r^2)\big)` — computed in log-space in float64, so exponents
:math:`(N+D)/2` in the millions stay finite. :math:`\bar y` is the PFGM++ optimal denoiser
(eq. 7), and the field transports the mixture
:math:`p_r(x) = \sum_i \pi_i\,p_r(x \mid y_i)` of perturbation kernels (see
:mod:`sdediff.fields.poisson` and :mod:`sdediff.fields.continuity`).

:func:`field_target` is PFGM's training target (Xu et al. 2022, §3.3): the field of a reference
batch at :math:`\tilde x`, normalized to length :math:`\sqrt N`.
"""

from __future__ import annotations

import math

import torch

from .._utils import TIME_DTYPE, Time, expand_like
from .base import ForceField, per_sample_r
from .poisson import check_D, log_normalizer

__all__ = ["EmpiricalField", "field_target"]

_CHUNK_ELEMENTS = 1 << 24  # (batch chunk) x M x N differences held at once


def _as_data(data: torch.Tensor) -> torch.Tensor:
    if not isinstance(data, torch.Tensor) or not data.is_floating_point():
        raise TypeError(f"data must be a floating tensor of shape (M, ...), got {type(data).__name__}")
    if data.ndim < 2 or data.shape[0] == 0:
        raise ValueError(f"data must have shape (M, ...) with M >= 1 points, got {tuple(data.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError("data contains NaN or inf; pass finite data points")
    return data.detach().flatten(1).to(TIME_DTYPE)


class EmpiricalField(ForceField):
    r"""The exact field of the charges ``data`` ``(M, ...)`` in ``N + D`` dimensions.

    Args:
        data: the data points :math:`y_i`, shape ``(M, ...)`` (each sample's shape is the state's).
        D: augmented dimensions (``D = 1``: PFGM).
        weights: optional charges :math:`\pi_i \ge 0` (normalized here); uniform by default.
    """

    def __init__(self, data: torch.Tensor, D: float, *, weights: torch.Tensor | None = None) -> None:
        self.D = check_D(D)
        self.sample_shape = tuple(data.shape[1:]) if isinstance(data, torch.Tensor) else ()
        self.data = _as_data(data)
        self.N = self.data.shape[1]
        m = self.data.shape[0]
        if weights is None:
            self.log_weights = torch.full((m,), -math.log(m), dtype=TIME_DTYPE, device=self.data.device)
        else:
            w = torch.as_tensor(weights, dtype=TIME_DTYPE, device=self.data.device)
            if w.shape != (m,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not bool(w.sum() > 0):
                raise ValueError(f"weights must be {m} finite non-negative numbers with a positive sum, got "
                                 f"shape {tuple(w.shape)}")
            self.log_weights = torch.log(w / w.sum())

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.sample_shape or x.ndim < 2:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.sample_shape))}) like the data, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        return x.flatten(1).to(TIME_DTYPE)

    def _sq_dist(self, xf: torch.Tensor) -> torch.Tensor:
        """:math:`\\|x_b - y_i\\|^2`, ``(B, M)``, from exact differences (no cancellation near the data)."""
        m, n = self.data.shape
        step = max(1, _CHUNK_ELEMENTS // max(1, m * n))
        y = self.data.to(xf.device)
        return torch.cat([(xf[i:i + step, None, :] - y[None]).pow(2).sum(-1) for i in range(0, xf.shape[0], step)]) \
            if xf.shape[0] else xf.new_zeros((0, m))

    def log_kernel_terms(self, r: Time, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log\pi_i + \log p_r(x \mid y_i)` per sample and data point, ``(B, M)`` float64."""
        xf = self._flat(x)
        r = per_sample_r(r, xf)[:, None]
        sq = self._sq_dist(xf)
        d = self.D
        # log(|x - y|^2 + r^2) as a logaddexp: finite as r -> 0 even on a data point (r^2 may underflow)
        log_q = torch.logaddexp(torch.log(sq), 2.0 * torch.log(r))
        log_c = log_normalizer(self.N, d)
        return self.log_weights.to(xf.device) + log_c + d * torch.log(r) - 0.5 * (self.N + d) * log_q

    def posterior(self, r: Time, x: torch.Tensor) -> torch.Tensor:
        """Weights :math:`w_i(x, r)` of the data points, ``(B, M)`` float64 (rows sum to 1)."""
        return torch.softmax(self.log_kernel_terms(r, x), dim=1)

    def denoiser(self, r: Time, x: torch.Tensor) -> torch.Tensor:
        r"""The posterior mean :math:`\bar y(x, r) = \sum_i w_i y_i` (PFGM++'s optimal denoiser), float64."""
        w = self.posterior(r, x)
        return (w @ self.data.to(w.device)).reshape(x.shape)

    def log_prob(self, r: Time, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p_r(x) = \log\sum_i \pi_i p_r(x \mid y_i)`, ``(B,)`` float64, differentiable in r and x."""
        return torch.logsumexp(self.log_kernel_terms(r, x), dim=1)

    def field(self, r: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`(E_x, E_r) = (x - \bar y, r)`, up to the common positive factor
        :math:`\sum_i \pi_i\|\tilde x - \tilde y_i\|^{-(N+D)}`."""
        r = per_sample_r(r, x)
        return x.to(TIME_DTYPE) - self.denoiser(r, x), r

    def velocity(self, r: Time, x: torch.Tensor) -> torch.Tensor:
        r""":math:`dx/dr = (x - \bar y)/r` (float64 inside, returned in ``x.dtype``)."""
        r = per_sample_r(r, x)
        v = (x.to(TIME_DTYPE) - self.denoiser(r, x)) / expand_like(r, x.to(TIME_DTYPE))
        return v.to(x.dtype)

    def __repr__(self) -> str:
        return f"EmpiricalField(M={self.data.shape[0]}, N={self.N}, D={self.D:g})"


def field_target(x: torch.Tensor, r: Time, data: torch.Tensor, D: float, *, gamma: float = 0.0) -> torch.Tensor:
    r"""PFGM's training target: the empirical field of the reference batch ``data`` at :math:`(x, r)`,
    normalized as :math:`\sqrt N\,E/(\|E\| + \gamma)` (Xu et al. 2022, eq. 8).

    Returns ``(B, N + 1)`` float64: the flattened :math:`E_x` then the radial :math:`E_r` (> 0). A
    network trained on it is sampled with :class:`~sdediff.fields.NetworkField`. Computed from the
    posterior weights, so it is finite for any exponent :math:`(N+D)/2`.
    """
    field = EmpiricalField(data, D)
    rr = per_sample_r(r, x)
    ex, er = field.field(rr, x)
    e = torch.cat([ex.flatten(1), er[:, None]], dim=1)
    norm = e.norm(dim=1, keepdim=True)
    return math.sqrt(field.N) * e / (norm + gamma)

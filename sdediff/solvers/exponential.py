r"""The exponential-integrator algebra that DDIM, DPM-Solver(++), UniPC, DEIS and the SDE variants share.

For a linear process :math:`x_t = \alpha_t x_0 + \sigma_t\epsilon` with half log-SNR
:math:`\lambda = \log(\alpha/\sigma)` and a step :math:`h = \lambda_t - \lambda_s`, the probability-flow
ODE is solved exactly in its linear part (Lu et al. 2022, *DPM-Solver*, eq. 3.4; Lu et al. 2022b,
*DPM-Solver++*, eq. 8):

.. math:: x_t = \frac{\sigma_t}{\sigma_s}x_s + \sigma_t\int_{\lambda_s}^{\lambda_t} e^{\lambda}\hat x_0\,d\lambda
              = \frac{\alpha_t}{\alpha_s}x_s - \alpha_t\int_{\lambda_s}^{\lambda_t} e^{-\lambda}\hat\epsilon\,d\lambda.

The φ-functions of the data-prediction form, in the sign convention the solvers use
(``phi1`` = :math:`e^{-h}-1`, so the first-order weight of :math:`D` is :math:`-\alpha_t\,\mathrm{phi1}`):
``phi2 = phi1/h + 1`` and ``phi3 = phi2/h - 1/2`` (:math:`-h^2\varphi_3` is the exact weight of
:math:`D''`). :func:`first_order_data` is DDIM / DPM-Solver++-1 and :func:`first_order_noise`
DPM-Solver-1. :func:`lincomb` is the one way solvers combine tensors with per-step scalars: fused
``mul`` + ``add_`` with python-float coefficients (the fast path), plain tensor arithmetic when the
coefficients are tensors (a grid that requires grad, e.g. during calibration).
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["first_order_data", "first_order_noise", "lincomb", "phi1", "phi2", "phi3"]


def phi1(h: float) -> float:
    r""":math:`e^{-h} - 1` (data prediction) — :math:`-h\varphi_1(-h)` in the usual notation."""
    return math.expm1(-h)


def phi2(h: float) -> float:
    r""":math:`(e^{-h}-1)/h + 1`: the weight of :math:`hD'` is :math:`\alpha_t\,\mathrm{phi2}`."""
    return math.expm1(-h) / h + 1.0


def phi3(h: float) -> float:
    r""":math:`\mathrm{phi2}/h - 1/2`: the weight of :math:`h^2 D''/2` pieces (DPM-Solver++(3M))."""
    return phi2(h) / h - 0.5


def lincomb(c0: Any, x0: torch.Tensor, *terms: Any) -> torch.Tensor:
    """``c0 * x0 + c1 * x1 + ...`` for ``terms = (c1, x1, c2, x2, ...)``; a new tensor.

    With python-float coefficients this is one ``mul`` and one in-place ``add_`` per further term.
    """
    if len(terms) == 2 and type(c0) is float and type(terms[0]) is float:  # the common a x + b y
        if c0 == 1.0:
            return torch.add(x0, terms[1], alpha=terms[0])
        return torch.mul(x0, c0).add_(terms[1], alpha=terms[0])
    if isinstance(c0, float) and all(isinstance(c, float) for c in terms[0::2]):
        if c0 == 1.0 and terms:  # x0 + c1 x1 + ...: no scaling pass
            out = torch.add(x0, terms[1], alpha=terms[0])
            rest = terms[2:]
        else:
            out, rest = torch.mul(x0, c0), terms
        for c, t in zip(rest[0::2], rest[1::2], strict=True):
            out.add_(t, alpha=c)
        return out
    out = c0 * x0
    for c, t in zip(terms[0::2], terms[1::2], strict=True):
        out = out + c * t
    return out


def first_order_data(x: torch.Tensor, d: torch.Tensor, sigma_s: float, sigma_t: float, alpha_t: float,
                     h: float) -> torch.Tensor:
    r"""DDIM / DPM-Solver++-1: :math:`x_t = \tfrac{\sigma_t}{\sigma_s}x_s - \alpha_t(e^{-h}-1)D`."""
    return lincomb(sigma_t / sigma_s, x, -alpha_t * math.expm1(-h), d)


def first_order_noise(x: torch.Tensor, eps: torch.Tensor, alpha_s: float, alpha_t: float, sigma_t: float,
                      h: float) -> torch.Tensor:
    r"""DPM-Solver-1: :math:`x_t = \tfrac{\alpha_t}{\alpha_s}x_s - \sigma_t(e^{h}-1)\hat\epsilon`."""
    return lincomb(alpha_t / alpha_s, x, -sigma_t * math.expm1(h), eps)

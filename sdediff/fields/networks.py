r"""Fields given by networks: PFGM's normalized-field network and PFGM++'s denoiser.

* :class:`NetworkField` — a network trained on :func:`~sdediff.fields.field_target` (PFGM,
  Xu et al. 2022, §3.3) predicts the normalized field :math:`\sqrt N E/\|E\|`; the ODE uses the
  ratio :math:`E_x/E_r`, in which the normalization cancels.
* :class:`DenoiserField` — PFGM++ (Xu et al. 2023, eq. 7–8) with a denoiser :math:`D_\theta(x, \sigma)`
  and the alignment :math:`r = \sigma\sqrt D`:

  .. math:: \frac{dx}{dr} = \frac{x - D_\theta(x, r/\sqrt D)}{r}.

  With :math:`\sigma = r/\sqrt D` this is :math:`dx/d\sigma = (x - D_\theta(x,\sigma))/\sigma`,
  the EDM probability-flow ODE (Karras et al. 2022, eq. 1 with :math:`s = 1`) for *any* ``D``:
  an EDM denoiser run as PFGM++ follows the EDM trajectory in the time variable ``r``. The ``D``
  of a PFGM++ model lives in what its denoiser was trained on (the posterior mean under the
  ``D``-kernel, which tends to the Gaussian posterior mean as :math:`D \to \infty`) and in its
  heavy-tailed prior :class:`~sdediff.fields.KernelPrior`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._utils import expand_like
from ..model import ScoreModel
from .base import ForceField, per_sample_r
from .poisson import check_D

__all__ = ["DenoiserField", "NetworkField"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DenoiserField(ForceField):
    r"""PFGM++ driven by a denoiser: :math:`dx/dr = (x - D_\theta(x, r/\sqrt D))/r`.

    Args:
        denoiser: a :class:`~sdediff.model.ScoreModel` on the EDM process (its ``x0(sigma, x)`` is
            used, and its network evaluations are counted in ``model.nfe``), or any callable
            ``denoiser(sigma, x) -> x0`` in sdediff's ``(t, x)`` order with ``sigma`` float64.
        D: augmented dimensions; the sampling radii are ``r = sigma * sqrt(D)``.
    """

    def __init__(self, denoiser: ScoreModel | Denoiser, D: float) -> None:
        self.D = check_D(D)
        if isinstance(denoiser, ScoreModel):
            self.model: ScoreModel | None = denoiser
            self._x0: Denoiser = denoiser.x0
        elif callable(denoiser):
            self.model = None
            self._x0 = denoiser
        else:
            raise TypeError(f"denoiser must be an sdediff model or a callable denoiser(sigma, x), "
                            f"got {type(denoiser).__name__}")
        self._sqrt_d = math.sqrt(self.D)

    def sigma(self, r: torch.Tensor) -> torch.Tensor:
        r""":math:`\sigma = r/\sqrt D`."""
        return r / self._sqrt_d

    def velocity(self, r, x: torch.Tensor) -> torch.Tensor:
        r = per_sample_r(r, x)
        sigma = self.sigma(r)
        if not sigma.requires_grad and bool((sigma == sigma[0]).all()):
            sigma = sigma[0]  # one time for the whole batch, as solvers pass it
        x0 = self._x0(sigma, x)
        if not isinstance(x0, torch.Tensor) or x0.shape != x.shape:
            raise ValueError(f"denoiser(sigma, x) must return a tensor of shape {tuple(x.shape)}, got "
                             f"{tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__}")
        return ((x - x0.to(x.dtype)) / expand_like(r, x)).to(x.dtype)

    def __repr__(self) -> str:
        return f"DenoiserField({self.model if self.model is not None else self._x0!r}, D={self.D:g})"


class NetworkField(ForceField):
    r"""A network ``net(x, r)`` predicting the (normalized) field, as PFGM trains it.

    ``net`` receives the state and ``r`` as a ``(B,)`` tensor in ``x.dtype`` (the network's own
    order) and returns either the pair ``(E_x, E_r)`` or one tensor ``(B, N + 1)``: the flattened
    :math:`E_x` followed by :math:`E_r`, the layout of :func:`~sdediff.fields.field_target`.
    :math:`E_r` must be positive (it is for the target); a zero :math:`E_r` gives a non-finite
    drift, which ``solve`` reports as a :class:`~sdediff.errors.NonFiniteError`.
    """

    def __init__(self, net: Callable[..., object], D: float) -> None:
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, r), got {type(net).__name__}")
        self.net = net
        self.D = check_D(D)

    def field(self, r: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x, r.to(x.dtype))
        if isinstance(out, (tuple, list)) and len(out) == 2:
            return out[0], out[1]
        n = x[0].numel()
        if not isinstance(out, torch.Tensor) or out.shape != (x.shape[0], n + 1):
            raise ValueError(f"net(x, r) must return (E_x, E_r) or a tensor of shape ({x.shape[0]}, {n + 1}) "
                             f"(flattened E_x then E_r), got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        return out[:, :n].reshape(x.shape), out[:, n]

    def __repr__(self) -> str:
        return f"NetworkField({type(self.net).__name__}, D={self.D:g})"

r"""Systems that solvers integrate: drift, diffusion, time range, prior.

* :func:`probability_flow` — :math:`dx/dt = f(t,x) - \tfrac12 g(t)^2\nabla\log p_t(x)`.
* :func:`reverse_sde` — :math:`dx = [f - \tfrac12(1+\eta^2) g^2\nabla\log p_t]\,dt + \eta g\,d\bar w`,
  integrated from ``T`` down to ``t_min``; :math:`\eta = 1` is Anderson's reverse SDE (Song et al.
  2021, eq. 6), :math:`\eta = 0` the probability-flow ODE (eq. 13), and every :math:`\eta` has the
  same marginals :math:`p_t` (Zhang & Chen 2022, DEIS eq. 5; Karras et al. 2022 eq. 6).
* :class:`ForwardSDE` — the forward process itself, for simulating it.

The drift of both model systems is written as
:math:`u(t,x) - \tfrac12\eta^2 g^2 s(t,x)` with the probability-flow velocity
:math:`u = \dot\alpha\hat x_0 + \dot\sigma\hat\epsilon` from :mod:`sdediff.model`, which is the
same quantity as :math:`f x - \tfrac12 g^2 s` without the cancellation near ``t = T``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from ._utils import Time, as_time, expand_like
from .model import ScoreModel
from .processes import Prior, Process

__all__ = ["ODE", "Dynamics", "ForwardSDE", "ProbabilityFlow", "ReverseSDE", "probability_flow", "reverse_sde"]


@runtime_checkable
class Dynamics(Protocol):
    """What ``solve`` integrates. ``diffusion`` returns a scalar or per-sample value (diagonal, additive)."""

    is_ode: bool
    t_min: float
    T: float

    @property
    def nfe(self) -> int: ...

    def drift(self, t: Time, x: torch.Tensor) -> torch.Tensor: ...

    def diffusion(self, t: Time, x: torch.Tensor) -> torch.Tensor: ...


class _ModelSystem:
    """Shared parts of the systems built from a score model."""

    def __init__(self, model: ScoreModel) -> None:
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be an sdediff model (DiffusionModel, ...), got {type(model).__name__}")
        self.model = model
        self.process = model.process
        self.t_min = self.process.t_min
        self.T = self.process.T

    @property
    def nfe(self) -> int:
        return self.model.nfe

    @property
    def prior(self) -> Prior | None:
        return self.process.prior

    def prior_sample(self, shape, generator=None, dtype=None, device=None) -> torch.Tensor:
        return self.process.prior_sample(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, x: torch.Tensor) -> torch.Tensor:
        return self.process.prior_logp(x)


class ProbabilityFlow(_ModelSystem):
    r"""The probability-flow ODE :math:`dx/dt = f - \tfrac12 g^2\nabla\log p_t`."""

    is_ode = True
    eta = 0.0

    def drift(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        return self.model.velocity(t, x)

    def diffusion(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=x.dtype, device=x.device)

    def __repr__(self) -> str:
        return f"probability_flow({self.model!r})"


class ReverseSDE(_ModelSystem):
    r"""The reverse-time SDE family with noise level :math:`\eta \ge 0` (see module docstring)."""

    def __init__(self, model: ScoreModel, eta: float = 1.0) -> None:
        super().__init__(model)
        if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not eta >= 0:
            raise ValueError(f"eta must be a number >= 0 (0 = probability-flow ODE, 1 = reverse SDE), got {eta!r}")
        self.eta = float(eta)
        self.is_ode = self.eta == 0.0

    def drift(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        pred = self.model.predict(t, x)
        if self.eta == 0.0:
            return pred.velocity.to(x.dtype)
        g2 = expand_like(self.process.diffusion(as_time(t, x.device)) ** 2, pred.score)
        return (pred.velocity - 0.5 * self.eta**2 * g2 * pred.score).to(x.dtype)

    def diffusion(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        return self.eta * expand_like(self.process.diffusion(as_time(t, x.device)), x)

    def __repr__(self) -> str:
        return f"reverse_sde({self.model!r}, eta={self.eta})"


class _Counted:
    """Counts drift evaluations for systems without a network."""

    _n = 0

    @property
    def nfe(self) -> int:
        return self._n


class ForwardSDE(_Counted):
    r"""The forward SDE :math:`dx = f(t,x)\,dt + g(t)\,dw` of a process, to simulate it."""

    is_ode = False

    def __init__(self, process: Process) -> None:
        if not isinstance(process, Process):
            raise TypeError(f"process must be an sdediff process, got {type(process).__name__}")
        self.process = process
        self.t_min = process.t_min
        self.T = process.T

    def drift(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        self._n += 1
        return self.process.drift(as_time(t, x.device), x)

    def diffusion(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        return expand_like(self.process.diffusion(as_time(t, x.device)), x)


class ODE(_Counted):
    """A user's ODE ``dx/dt = func(t, x)`` on ``[t_min, T]``, optionally with a prior at ``T``."""

    is_ode = True

    def __init__(self, func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, t_min: float, T: float,
                 prior: Prior | None = None) -> None:
        if not callable(func):
            raise TypeError("func must be callable as func(t, x)")
        self.func = func
        self.t_min = float(t_min)
        self.T = float(T)
        self.prior = prior

    def drift(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        self._n += 1
        return self.func(as_time(t, x.device), x)

    def diffusion(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=x.dtype, device=x.device)

    def prior_logp(self, x: torch.Tensor) -> torch.Tensor:
        if self.prior is None:
            raise ValueError("this ODE has no prior; pass prior= to ODE(...)")
        return self.prior.log_prob(x)


def probability_flow(model: ScoreModel) -> ProbabilityFlow:
    """The probability-flow ODE of ``model`` (Song et al. 2021, eq. 13)."""
    return ProbabilityFlow(model)


def reverse_sde(model: ScoreModel, eta: float = 1.0) -> ReverseSDE:
    """The reverse SDE of ``model`` with noise level ``eta`` (``eta=0``: the probability-flow ODE)."""
    return ReverseSDE(model, eta)

r"""Low-level API: a force field on the augmented space and the ODE it defines.

A force field :math:`E` lives on :math:`\tilde x = (x, z)`, :math:`x \in \mathbb R^N`,
:math:`z \in \mathbb R^D`, and depends on :math:`z` only through :math:`r = \|z\|` (symmetric in
the augmented directions; ``D = 1`` is PFGM, Xu et al. 2022; any ``D`` is PFGM++, Xu et al. 2023).
Its field lines, parametrized by :math:`r`, are the ODE (PFGM++ eq. 3)

.. math::  \frac{dx}{dr} = v(r, x) = \frac{E_x(\tilde x)}{E_r(\tilde x)},

or in :math:`t = \log r` (PFGM eq. 6): :math:`dx/dt = r\,E_x/E_r`. Sampling runs from the prior
at :math:`r_{max}` down to :math:`r_{min}` (a decreasing grid).

* :class:`ForceField` — the base: implement ``field(r, x) -> (E_x, E_r)`` (or ``velocity``
  directly). ``r`` arrives as a float64 tensor of shape ``(B,)``.
* :class:`FieldFunction` — wraps a user's ``fn(r, x) -> (E_x, E_r)``.
* :class:`ForceFieldODE` — the :class:`~sdediff.dynamics.Dynamics` object that ``sdediff.solve`` and
  ``log_likelihood`` integrate (``drift``, ``diffusion = 0``, ``is_ode``, ``t_min``, ``T``, ``nfe``,
  ``prior_sample``, ``prior_logp``), in the time variable ``"r"`` or ``"log_r"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .._utils import TIME_DTYPE, Time, as_time, batch_time, check_choice, expand_like
from ..noise import GeneratorSpec
from ..processes import Prior
from .poisson import KernelPrior, check_D

__all__ = ["TIMES", "FieldFunction", "ForceField", "ForceFieldODE", "force_field_ode"]


def per_sample_r(r: Time, x: torch.Tensor) -> torch.Tensor:
    """``r`` as a float64 ``(B,)`` tensor for the batch ``x`` (keeps an autograd graph)."""
    r = batch_time(as_time(r, x.device), x)
    if r.shape != (x.shape[0],):
        raise ValueError(f"r must be a scalar or have shape ({x.shape[0]},), got {tuple(r.shape)}")
    return r


class ForceField:
    r"""A field :math:`E(x, r)` on the augmented space; subclasses give ``field`` or ``velocity``.

    Attributes:
        D: the number of augmented dimensions (a real > 0).
    """

    D: float

    def field(self, r: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`(E_x, E_r)`: ``E_x`` shaped like ``x``, ``E_r`` the radial component, shape ``(B,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement field(r, x) or velocity(r, x)")

    def velocity(self, r: Time, x: torch.Tensor) -> torch.Tensor:
        r""":math:`dx/dr = E_x / E_r` (PFGM++ eq. 3), in ``x.dtype``."""
        r = per_sample_r(r, x)
        ex, er = self.field(r, x)
        if not isinstance(ex, torch.Tensor) or ex.shape != x.shape:
            raise ValueError(f"field(r, x) must return E_x of shape {tuple(x.shape)} first, got "
                             f"{tuple(ex.shape) if isinstance(ex, torch.Tensor) else type(ex).__name__}")
        er = torch.as_tensor(er, device=x.device)
        if er.shape not in ((), (x.shape[0],)):
            raise ValueError(f"field(r, x) must return E_r as a scalar or of shape ({x.shape[0]},), "
                             f"got {tuple(er.shape)}")
        return (ex / expand_like(er, ex)).to(x.dtype)

    def ode(self, *, r_min: float, r_max: float, prior: Prior | None = None, time: str = "r") -> ForceFieldODE:
        """The sampling ODE of this field on ``[r_min, r_max]`` (see :class:`ForceFieldODE`)."""
        return ForceFieldODE(self, r_min=r_min, r_max=r_max, prior=prior, time=time)


class FieldFunction(ForceField):
    r"""A user's field ``fn(r, x) -> (E_x, E_r)`` with ``r`` a float64 ``(B,)`` tensor.

    Example — the Poisson field of one charge at the origin, ``E = x̃/‖x̃‖^{N+D}``::

        def fn(r, x):
            n = x[0].numel()
            inv = (x.flatten(1).pow(2).sum(1) + r**2) ** (-(n + D) / 2)
            return x * inv[:, None], r * inv
        field = FieldFunction(fn, D=D)
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 D: float) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(r, x) -> (E_x, E_r), got {type(fn).__name__}")
        self.fn = fn
        self.D = check_D(D)

    def field(self, r: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fn(r, x)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ValueError(f"fn(r, x) must return the pair (E_x, E_r), got {type(out).__name__}")
        return out[0], out[1]

    def __repr__(self) -> str:
        return f"FieldFunction({getattr(self.fn, '__name__', self.fn)!r}, D={self.D:g})"


@dataclass(frozen=True)
class TimeVariable:
    r"""A time variable :math:`t(r)`: ``to_r`` maps t → r, ``from_r`` r → t, ``dr_dt`` is :math:`dr/dt`."""

    to_r: Callable[[torch.Tensor], torch.Tensor]
    from_r: Callable[[float], float]
    dr_dt: Callable[[torch.Tensor], torch.Tensor]


TIMES: dict[str, TimeVariable] = {
    "r": TimeVariable(to_r=lambda t: t, from_r=float, dr_dt=lambda r: torch.ones_like(r)),
    "log_r": TimeVariable(to_r=torch.exp, from_r=math.log, dr_dt=lambda r: r),
}
"""The time variables ``ForceField.ode(time=...)`` accepts: the radius ``r`` itself or ``log r``."""


class ForceFieldODE:
    r"""The ODE :math:`dx/dt = \tfrac{dr}{dt}\,E_x/E_r` of a force field, with its prior at :math:`r_{max}`.

    Args:
        field: a :class:`ForceField`.
        r_min, r_max: the radius range, ``0 < r_min < r_max``; sampling integrates ``r_max → r_min``.
        prior: the law of ``x`` at ``r_max`` (``sample``/``log_prob``); default
            :class:`~sdediff.fields.KernelPrior` ``(field.D, r_max)``, the PFGM/PFGM++ prior.
        time: ``"r"`` (``t = r``, ``t_min = r_min``, ``T = r_max``) or ``"log_r"`` (``t = log r``).

    ``nfe`` counts drift evaluations. ``r_of(t)`` and ``t_of(r)`` convert between the variables.
    """

    is_ode = True
    eta = 0.0

    def __init__(self, field: ForceField, *, r_min: float, r_max: float, prior: Prior | None = None,
                 time: str = "r") -> None:
        if not isinstance(field, ForceField):
            raise TypeError(f"field must be a sdediff.fields.ForceField (wrap a function with FieldFunction), "
                            f"got {type(field).__name__}")
        for name, v in (("r_min", r_min), ("r_max", r_max)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{name} must be a number > 0, got {type(v).__name__}")
            if not (v > 0) or not math.isfinite(v):
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")
        if not r_max > r_min:
            raise ValueError(f"need r_min < r_max, got r_min={r_min!r}, r_max={r_max!r}; the prior sits at r_max "
                             "and sampling integrates down to r_min")
        check_choice("time", time, TIMES)
        if prior is not None and not (callable(getattr(prior, "sample", None))
                                      and callable(getattr(prior, "log_prob", None))):
            raise TypeError(f"prior must have sample(shape, generator=, dtype=, device=) and log_prob(x), "
                            f"got {type(prior).__name__}")
        self.field = field
        self.r_min = float(r_min)
        self.r_max = float(r_max)
        self.time = time
        self._tv = TIMES[time]
        self.t_min = self._tv.from_r(self.r_min)
        self.T = self._tv.from_r(self.r_max)
        self.prior = prior if prior is not None else KernelPrior(field.D, self.r_max)
        self._n = 0

    @property
    def nfe(self) -> int:
        return self._n

    def r_of(self, t: Time) -> torch.Tensor:
        """The radius at time ``t`` (float64)."""
        return self._tv.to_r(as_time(t))

    def t_of(self, r: float) -> float:
        """The time of radius ``r``."""
        return self._tv.from_r(float(r))

    def drift(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        self._n += 1
        r = self._tv.to_r(as_time(t, x.device))
        v = self.field.velocity(r, x)
        return expand_like(self._tv.dr_dt(r), v) * v

    def diffusion(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=x.dtype, device=x.device)

    def prior_sample(self, shape: Sequence[int], generator: GeneratorSpec = None, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """Draw ``x`` at ``r_max`` from the prior (all randomness from ``generator``)."""
        return self.prior.sample(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior at ``r_max``, one value per sample."""
        return self.prior.log_prob(x)

    def ts(self, steps: int, *, spacing: str = "log") -> torch.Tensor:
        """A decreasing sampling grid in this ODE's time: ``steps`` steps from ``r_max`` to ``r_min``,
        uniform in ``log r`` (``spacing="log"``) or in ``r`` (``"linear"``)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        check_choice("spacing", spacing, ("log", "linear"))
        if spacing == "log":
            r = torch.logspace(math.log10(self.r_max), math.log10(self.r_min), steps + 1, dtype=TIME_DTYPE)
        else:
            r = torch.linspace(self.r_max, self.r_min, steps + 1, dtype=TIME_DTYPE)
        r[0], r[-1] = self.r_max, self.r_min
        return torch.tensor([self.t_of(float(v)) for v in r], dtype=TIME_DTYPE)

    def __repr__(self) -> str:
        return (f"ForceFieldODE({self.field!r}, r_min={self.r_min:g}, r_max={self.r_max:g}, "
                f"time={self.time!r}, prior={self.prior!r})")


def force_field_ode(field: ForceField, *, r_min: float, r_max: float, prior: Prior | None = None,
                    time: str = "r") -> ForceFieldODE:
    """The sampling ODE of ``field`` (see :class:`ForceFieldODE`)."""
    return ForceFieldODE(field, r_min=r_min, r_max=r_max, prior=prior, time=time)

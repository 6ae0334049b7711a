r"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, §4.3 and App. D.2).

For an ODE :math:`\dot x = \tilde f(t, x)` on :math:`[t_{min}, T]` whose end point has the prior density
:math:`\pi = p_T`, the instantaneous change of variables (Chen et al. 2018, thm. 1) gives

.. math::  \log p_{t_{min}}(x) = \log \pi\big(x(T)\big) + \int_{t_{min}}^{T} \nabla\cdot\tilde f(t, x(t))\,dt,
           \qquad x(t_{min}) = x

(Song et al. 2021, eq. 39, with their :math:`\epsilon = t_{min}`). :func:`log_likelihood` integrates
the augmented state :math:`(x, \Delta)` with :math:`\dot\Delta = \nabla\cdot\tilde f` from ``t_min`` up
to ``T`` with :func:`sdediff.solve` (any ODE solver, torchdiffeq's adaptive ones included; the state is
packed as one ``(B, D + 1)`` tensor), then adds :math:`\log\pi(z)`, :math:`z = x(T)`.

The result is the density of the model's marginal **at** ``t_min`` (the data convolved with the small
noise of ``t_min``), as in Song et al.; it is exact up to the solver tolerance and to the prior: the
default prior (e.g. :math:`\mathcal N(0, I)` for VP) is not exactly the process's :math:`p_T`. Pass
``prior_logp=`` to use another one, e.g. the exact :math:`\log p_T` of an analytic target.

Divergence :math:`\nabla\cdot\tilde f` (registry :data:`DIVERGENCES`):

* ``"exact"`` — the trace of the Jacobian, one forward pass and **one batched backward pass**
  (``torch.autograd.grad(..., is_grads_batched=True)``: the :math:`D` vector–Jacobian products with the
  basis vectors :math:`e_i` run vectorized by vmap). Measured for one drift + divergence evaluation
  (exact GMM score, batch 8, float64, one CPU thread, median ms; ``python benchmarks/likelihood.py
  --divergence-timing``): batched backward / torch.func ``vjp`` + ``vmap`` / per-dimension autograd loop =
  1.4 / 2.0 / 6.0 at :math:`D=32`, 5.1 / 7.1 / 19 at :math:`D=128`, 20 / 38 / 56 at :math:`D=256`. We keep
  the batched backward, fastest at every :math:`D` measured. Its basis tensor holds :math:`B D^2` numbers:
  for images use ``"hutchinson"``.
* ``"hutchinson"`` — :math:`\nabla\cdot\tilde f \approx \frac1P\sum_p \epsilon_p^\top (\partial\tilde f/\partial x)\,
  \epsilon_p` (Hutchinson 1989; Grathwohl et al. 2019, *FFJORD*, §3.1), unbiased for
  :math:`E[\epsilon\epsilon^\top] = I`. The probes (registry :data:`PROBES`: ``"rademacher"`` or
  ``"gaussian"``) are drawn **once** per solve with ``generator=`` and held fixed along the trajectory,
  so the solver integrates one smooth ODE and the estimate of :math:`\log p` is unbiased.

Bits per dimension (score_sde convention, ``likelihood.py`` / ``run_lib.py`` of Song et al.): integer
data :math:`k \in \{0..2^n-1\}^D` are dequantized as :math:`u = (k + U)/2^n`, :math:`U\sim\mathcal U[0,1)^D`,
and scaled to the model's range :math:`y = lo + (hi - lo)\,u`; then

.. math::  \mathrm{bpd} = -\frac{\log p(y)}{D\ln 2} + n - \log_2(hi - lo),

i.e. :math:`-\log_2` of (density :math:`\times` bin volume :math:`((hi-lo)/2^n)^D`) per dimension, an upper
bound (in expectation over :math:`U`) on the discrete code length. With ``data_range=(-1, 1)`` and 8 bits
the offset is 7, Song et al.'s ``7 - inverse_scaler(-1)`` for centered data; ``(0, 1)`` gives 8.

Gradients: everything is differentiable: whenever grad mode is on, the divergence is taken with
``create_graph=True`` and the solve keeps its graph, so evaluate under ``torch.no_grad()`` when no gradient
is wanted (faster, and memory does not hold every step). With
``adjoint=True`` the solve uses the adjoint method (Chen et al. 2018; :mod:`sdediff.solvers._adjoint`), whose
memory does not grow with the number of steps; the parameters are found in the system (see :func:`find_parameters`)
or passed as ``adjoint_params=``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ._utils import Time, check_choice, check_finite, check_positive
from .dynamics import ProbabilityFlow
from .model import ScoreModel
from .noise import GeneratorSpec, live_generators, randn
from .processes import Process
from .solve import solve
from .solvers import TorchdiffeqSolver, get_solver
from .solvers.base import Solver

__all__ = [
    "DEQUANTIZERS",
    "DIVERGENCES",
    "PROBES",
    "LikelihoodDynamics",
    "LikelihoodResult",
    "decode",
    "encode",
    "find_parameters",
    "log_likelihood",
]

LN2 = math.log(2.0)


@runtime_checkable
class LikelihoodDynamics(Protocol):
    r"""What :func:`log_likelihood` needs of a system (every ODE dynamics in sdediff has it).

    * ``is_ode = True`` — a deterministic flow (a reverse SDE with :math:`\eta > 0` has no tractable density);
    * ``t_min < T`` — the data end and the prior end of the flow; time runs from data to prior;
    * ``drift(t, x)`` — the velocity :math:`\tilde f(t, x)`, shaped like ``x`` and differentiable in ``x``;
    * ``prior_logp(z)`` — :math:`\log\pi(z)` at ``T``, one value per sample (or pass ``prior_logp=``);
    * ``nfe`` (optional) — a network-evaluation counter; drift calls are counted otherwise.

    :func:`sdediff.probability_flow`, :class:`sdediff.ODE` (with ``prior=``) and the force-field ODEs of
    :mod:`sdediff.fields` satisfy it.
    """

    is_ode: bool
    t_min: float
    T: float

    def drift(self, t: Time, x: torch.Tensor) -> torch.Tensor: ...

    def prior_logp(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class LikelihoodResult:
    """Per-sample results of :func:`log_likelihood`.

    Attributes:
        logp: :math:`\\log p_{t_{min}}(x)` in nats, shape ``(B,)`` (of the dequantized, scaled ``x``).
        bpd: bits per dimension, ``(B,)`` (see the module docstring for the offset).
        z: the latent :math:`x(T)`, shaped like ``x``.
        nfe: network (drift) evaluations of the solve.
        prior_logp: :math:`\\log\\pi(z)`, ``(B,)``.
        delta_logp: :math:`\\int_{t_{min}}^T\\nabla\\cdot\\tilde f\\,dt`, ``(B,)``.
        x: the point whose density was computed (after dequantization and scaling).
    """

    logp: torch.Tensor
    bpd: torch.Tensor
    z: torch.Tensor
    nfe: int
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    x: torch.Tensor


# ------------------------------------------------------------------------------------- divergences
VelocityFn = Callable[[torch.Tensor], torch.Tensor]
DivergenceFn = Callable[[VelocityFn, torch.Tensor, "torch.Tensor | None", bool], "tuple[torch.Tensor, torch.Tensor]"]


def _vjps(v: torch.Tensor, x: torch.Tensor, cotangents: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``cotangents`` (``(P, *x.shape)``) times :math:`\\partial v/\\partial x`, one batched backward pass."""
    if not v.requires_grad:  # the velocity does not depend on x (nor on anything differentiable)
        return torch.zeros_like(cotangents)
    (g,) = torch.autograd.grad(v, x, cotangents, create_graph=create_graph, is_grads_batched=True, allow_unused=True)
    return torch.zeros_like(cotangents) if g is None else g


def exact_divergence(func: VelocityFn, x: torch.Tensor, probes: torch.Tensor | None,
                     create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(v, tr ∂v/∂x)`` per sample: :math:`\sum_i e_i^\top J e_i` with the :math:`D` products batched."""
    v = func(x)
    b, d = x.shape[0], x[0].numel()
    basis = torch.eye(d, dtype=x.dtype, device=x.device)[:, None, :].expand(d, b, d).reshape(d, *x.shape)
    g = _vjps(v, x, basis, create_graph).reshape(d, b, d)
    return v, torch.diagonal(g, dim1=0, dim2=2).sum(-1)


def hutchinson_divergence(func: VelocityFn, x: torch.Tensor, probes: torch.Tensor | None,
                          create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(v, mean_p ε_pᵀ (∂v/∂x) ε_p)`` for the fixed probes ``(P, *x.shape)`` (FFJORD's estimator)."""
    if probes is None:
        raise ValueError("the Hutchinson divergence needs probes")
    v = func(x)
    g = _vjps(v, x, probes, create_graph)
    return v, (g * probes).flatten(2).sum(-1).mean(0)


DIVERGENCES: dict[str, DivergenceFn] = {
    "exact": exact_divergence,
    "hutchinson": hutchinson_divergence,
}
"""The divergence estimators ``log_likelihood(divergence=...)`` accepts: the exact trace or Hutchinson's estimate."""


# ------------------------------------------------------------------------------------------ probes
def _gaussian_probe(shape: Sequence[int], generator: GeneratorSpec, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
    return randn(shape, generator=generator, dtype=dtype, device=device)


def _rademacher_probe(shape: Sequence[int], generator: GeneratorSpec, dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
    # the sign of a standard normal is ±1 with probability 1/2 each (one home for drawing noise)
    return torch.where(randn(shape, generator=generator, dtype=dtype, device=device) >= 0, 1.0, -1.0).to(dtype)


PROBES: dict[str, Callable[[Sequence[int], GeneratorSpec, torch.dtype, torch.device], torch.Tensor]] = {
    "rademacher": _rademacher_probe,
    "gaussian": _gaussian_probe,
}
"""The laws of Hutchinson probes ``log_likelihood(probe=...)`` accepts: Rademacher (±1) or standard normal."""


# ----------------------------------------------------------------------------------- dequantization
@dataclass(frozen=True)
class _Data:
    y: torch.Tensor  # the point in the model's space
    offset: float  # added to -logp / (D ln 2)


def _range(data_range: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (lo, hi) such as (-1, 1), got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range must be finite with lo < hi, got {data_range!r}")
    return lo, hi


def _no_dequantization(x: torch.Tensor, data_range: Any, n_bits: int, generator: GeneratorSpec,
                       dtype: torch.dtype | None) -> _Data:
    if not x.is_floating_point():
        raise ValueError(f"dequantize='none' needs floating-point x, got dtype {x.dtype}; integer data need "
                         "dequantize='uniform' (with data_range=...)")
    if data_range is None:
        return _Data(x, 0.0)  # continuous data: bpd is -log2 p / D
    lo, hi = _range(data_range)
    return _Data(x, n_bits - math.log2(hi - lo))  # x already dequantized and scaled by the caller


def _uniform_dequantization(x: torch.Tensor, data_range: Any, n_bits: int, generator: GeneratorSpec,
                            dtype: torch.dtype | None) -> _Data:
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"dequantize='uniform' takes integer data (e.g. uint8 pixels), got dtype {x.dtype}; "
                         "for data that are already continuous pass dequantize='none'")
    if data_range is None:
        raise ValueError("dequantize='uniform' needs data_range=(lo, hi): the model's range for the dequantized "
                         "data, e.g. (-1, 1) for data scaled to [-1, 1] (score_sde 'centered') or (0, 1)")
    lo, hi = _range(data_range)
    levels = 2**n_bits
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= levels):
        raise ValueError(f"{n_bits}-bit data must lie in [0, {levels - 1}], got the range "
                         f"[{int(x.min())}, {int(x.max())}]; pass n_bits= to match the data")
    dtype = dtype or torch.get_default_dtype()
    uniform = torch.special.ndtr(randn(x.shape, generator=generator, dtype=torch.float64, device=x.device))
    u = (x.to(torch.float64) + uniform) / levels
    return _Data((lo + (hi - lo) * u).to(dtype), n_bits - math.log2(hi - lo))


DEQUANTIZERS: dict[str, Callable[[torch.Tensor, Any, int, GeneratorSpec, torch.dtype | None], _Data]] = {
    "none": _no_dequantization,
    "uniform": _uniform_dequantization,
}
"""The dequantizations ``log_likelihood(dequantize=...)`` accepts: none (continuous data) or uniform noise."""


# ------------------------------------------------------------------------------- augmented dynamics
def find_parameters(system: Any, _depth: int = 3, _seen: set[int] | None = None) -> list[torch.nn.Module]:
    """The ``torch.nn.Module``\\ s reachable from ``system`` through attributes (a few levels deep): the
    network of a model (``probability_flow(model).model.net``), a guidance classifier, an ODE's ``func``
    or the system itself. Their parameters are what ``adjoint=True`` differentiates."""
    seen = set() if _seen is None else _seen
    if id(system) in seen or _depth < 0:
        return []
    seen.add(id(system))
    if isinstance(system, torch.nn.Module):
        return [system]
    found: list[torch.nn.Module] = []
    for value in getattr(system, "__dict__", {}).values():
        if hasattr(value, "__dict__") and not isinstance(value, (type, torch.Tensor)):
            found += find_parameters(value, _depth - 1, seen)
    return found


class AugmentedODE(torch.nn.Module):
    r"""The flow :math:`\dot x = \tilde f(t,x)` with :math:`\dot\Delta = \nabla\cdot\tilde f` on one flat
    ``(B, D + 1)`` state (the last column is :math:`\Delta`). An ``nn.Module`` holding the system's
    networks, so torchdiffeq's adjoint can find their parameters."""

    is_ode = True

    def __init__(self, system: Any, shape: torch.Size, divergence: DivergenceFn,
                 probes: torch.Tensor | None = None) -> None:
        super().__init__()
        self.system = system
        self.held = torch.nn.ModuleList(find_parameters(system))
        self.shape = torch.Size(shape)
        self.dim = int(math.prod(shape[1:]))
        self.divergence = divergence
        self.probes = probes
        self.t_min = float(system.t_min)
        self.T = float(system.T)
        self._calls = 0

    @property
    def nfe(self) -> int:
        n = getattr(self.system, "nfe", None)
        return int(n) if n is not None else self._calls

    def drift(self, t: Time, y: torch.Tensor) -> torch.Tensor:
        self._calls += 1
        t = t.detach() if isinstance(t, torch.Tensor) else t  # no gradient in time is ever asked for
        graph = torch.is_grad_enabled()  # create_graph only when someone differentiates the solve
        with torch.enable_grad():
            xf = y[:, : self.dim]
            keep = graph and xf.requires_grad  # differentiate through the state (adjoint pass, backprop)
            x = xf.reshape(self.shape) if keep else xf.detach().reshape(self.shape).requires_grad_(True)
            v, div = self.divergence(lambda s: self._velocity(t, s), x, self.probes, graph)
        out = torch.cat([v.reshape(y.shape[0], self.dim), div.reshape(-1, 1).to(v.dtype)], dim=1)
        return out if graph else out.detach()

    def _velocity(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        v = self.system.drift(t, x)
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            raise ValueError(f"drift(t, x) must return a tensor shaped like x {tuple(x.shape)}, got "
                             f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
        return v

    def diffusion(self, t: Time, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=y.dtype, device=y.device)


# ------------------------------------------------------------------------------------ front doors
def as_ode(system: Any) -> Any:
    """A model becomes its probability-flow ODE; an ODE dynamics passes; anything else is refused."""
    if isinstance(system, ScoreModel):
        return ProbabilityFlow(system)
    if isinstance(system, Process):
        raise TypeError(f"a process ({type(system).__name__}) has no learned flow; pass the model "
                        "(sd.DiffusionModel(net, process)) or its sd.probability_flow(model)")
    if not callable(getattr(system, "drift", None)) or not hasattr(system, "t_min") or not hasattr(system, "T"):
        raise TypeError(f"expected a model or an ODE dynamics with drift(t, x), t_min and T (see "
                        f"sdediff.likelihood.LikelihoodDynamics), got {type(system).__name__}")
    if not getattr(system, "is_ode", False):
        raise ValueError(f"{system!r} is not an ODE (is_ode is False; a reverse SDE with eta="
                         f"{getattr(system, 'eta', '?')}): the likelihood needs a deterministic flow. Pass the model, "
                         "sd.probability_flow(model) or sd.reverse_sde(model, eta=0)")
    return system


def _ode_solver(solver: str | Solver, adjoint: bool) -> Solver:
    obj = get_solver(solver)
    if obj.stochastic:
        raise ValueError(f"solver {obj.name!r} is stochastic; the likelihood integrates an ODE: use e.g. 'dopri5'")
    if adjoint:
        if not isinstance(obj, TorchdiffeqSolver):
            raise ValueError(f"adjoint=True runs the torchdiffeq adapter's adjoint; pass a torchdiffeq solver "
                             f"(e.g. 'dopri5', 'torchdiffeq:rk4'), got {obj.name or solver!r}")
    return obj


def log_likelihood(system: Any, x: torch.Tensor, *, solver: str | Solver = "dopri5", rtol: float = 1e-5,
                   atol: float = 1e-5, divergence: str = "exact", n_probes: int = 1, probe: str = "rademacher",
                   generator: GeneratorSpec = None, dequantize: str | None = None,
                   data_range: tuple[float, float] | None = None, n_bits: int = 8, dtype: torch.dtype | None = None,
                   prior_logp: Callable[[torch.Tensor], torch.Tensor] | None = None, adjoint: bool = False,
                   adjoint_params: Sequence[torch.Tensor] | None = None, steps: int | None = None,
                   max_steps: int = 100_000, options: dict[str, Any] | None = None) -> LikelihoodResult:
    r"""Per-sample :math:`\log p_{t_{min}}(x)` through the ODE of ``system`` (see the module docstring).

    Args:
        system: a model (its probability-flow ODE is used) or an ODE dynamics with a prior
            (:class:`LikelihoodDynamics`: ``probability_flow(model)``, ``sd.ODE(..., prior=)``, force fields).
        x: data ``(B, ...)``: floats in the model's space, or integers with ``dequantize="uniform"``.
        solver, rtol, atol, steps, max_steps, options: as in :func:`sdediff.solve` (an ODE solver).
        divergence: ``"exact"`` or ``"hutchinson"`` (:data:`DIVERGENCES`).
        n_probes, probe: Hutchinson probes per sample (averaged) and their law (:data:`PROBES`).
        generator: randomness for the dequantization noise and the probes (drawn in that order).
        dequantize: ``"uniform"`` (integer ``n_bits`` data: :math:`u = (k + U)/2^n`) or ``"none"``.
            Required for integer data; floats default to ``"none"``.
        data_range: ``(lo, hi)``: where :math:`u \in [0, 1]` lands in the model's space (required with
            ``"uniform"``). With ``"none"`` it declares ``x`` as already dequantized ``n_bits`` data in
            that range (bpd gets the offset :math:`n - \log_2(hi - lo)`); ``None``: continuous data, no offset.
        n_bits: bits per value of the quantized data (8).
        dtype: floating dtype of dequantized integer data (default: torch's default dtype).
        prior_logp: ``z -> (B,)`` replacing the system's own prior log-density at ``T``.
        adjoint: differentiate by the adjoint method (torchdiffeq solvers only); memory independent of
            the number of steps.
        adjoint_params: the tensors the adjoint differentiates (default: parameters of the networks found
            by :func:`find_parameters`).

    Returns:
        :class:`LikelihoodResult` (``logp``, ``bpd``, ``z``, ``nfe``, ...).

    Raises:
        ValueError: integer data without ``dequantize``, a non-ODE system, a stochastic solver, bad shapes.
    """
    dyn = as_ode(system)
    check_choice("divergence", divergence, tuple(DIVERGENCES))
    check_choice("probe", probe, tuple(PROBES))
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be an int >= 1, got {n_probes!r}")
    if isinstance(n_bits, bool) or not isinstance(n_bits, int) or not 1 <= n_bits <= 32:
        raise ValueError(f"n_bits must be an int in [1, 32], got {n_bits!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"x must have shape (B, ...) with at least one data dimension, got {tuple(x.shape)}; "
                         "for scalar data use shape (B, 1)")
    if dequantize is None:
        if not x.is_floating_point():
            raise ValueError(f"x has integer dtype {x.dtype}: choose a dequantization explicitly, e.g. "
                             "dequantize='uniform', data_range=(-1, 1) for 8-bit data the model sees in [-1, 1] "
                             "(Song et al.'s bits/dim convention), or convert x to float and pass dequantize='none'")
        dequantize = "none"
    check_choice("dequantize", dequantize, tuple(DEQUANTIZERS))
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    solver_obj = _ode_solver(solver, adjoint)
    gen = live_generators(generator)

    data = DEQUANTIZERS[dequantize](x, data_range, n_bits, gen, dtype)
    y = data.y
    check_finite("x", y)
    prior = prior_logp if prior_logp is not None else getattr(dyn, "prior_logp", None)
    if not callable(prior) or (prior_logp is None and hasattr(dyn, "prior") and dyn.prior is None):
        raise TypeError(f"{type(dyn).__name__} has no prior_logp(z); give it a prior (e.g. sd.ODE(..., "
                        "prior=sd.GaussianPrior(1.0))) or pass prior_logp=")
    b, d = y.shape[0], int(math.prod(y.shape[1:]))
    probes = None
    if divergence == "hutchinson":
        # drawn (B, P, ...) so per-sample generators work, then laid out (P, B, ...) for the batched vjp
        probes = PROBES[probe]((b, n_probes, *y.shape[1:]), gen, y.dtype, y.device).transpose(0, 1).contiguous()
    aug = AugmentedODE(dyn, y.shape, DIVERGENCES[divergence], probes)
    opts = dict(options or {})
    if adjoint:
        params = adjoint_params if adjoint_params is not None else [p for m in aug.held for p in m.parameters()]
        opts["adjoint_params"] = tuple(p for p in params if p.requires_grad)
    y0 = torch.cat([y.reshape(b, d), torch.zeros(b, 1, dtype=y.dtype, device=y.device)], dim=1)
    nfe0 = aug.nfe
    sol = solve(aug, y0, t0=aug.t_min, t1=aug.T, solver=solver_obj, rtol=rtol, atol=atol, steps=steps,
                max_steps=max_steps, options=opts, adjoint=adjoint)
    z = sol.x[:, :d].reshape(y.shape)
    delta = sol.x[:, d]
    lp_prior = prior(z)
    if not isinstance(lp_prior, torch.Tensor) or lp_prior.shape != (b,):
        raise ValueError(f"prior_logp(z) must return one value per sample, shape ({b},), got "
                         f"{tuple(lp_prior.shape) if isinstance(lp_prior, torch.Tensor) else type(lp_prior).__name__}")
    logp = lp_prior.to(delta.dtype) + delta
    bpd = -logp / (d * LN2) + data.offset
    return LikelihoodResult(logp=logp, bpd=bpd, z=z, nfe=aug.nfe - nfe0, prior_logp=lp_prior, delta_logp=delta, x=y)


def _flow(system: Any, x: torch.Tensor, forward: bool, solver: str | Solver, rtol: float, atol: float,
          steps: int | None, options: dict[str, Any] | None) -> torch.Tensor:
    dyn = as_ode(system)
    t0, t1 = (dyn.t_min, dyn.T) if forward else (dyn.T, dyn.t_min)
    return solve(dyn, x, t0=t0, t1=t1, solver=_ode_solver(solver, False), rtol=rtol, atol=atol, steps=steps,
                 options=options).x


def encode(system: Any, x: torch.Tensor, *, solver: str | Solver = "dopri5", rtol: float = 1e-5,
           atol: float = 1e-5, steps: int | None = None, options: dict[str, Any] | None = None) -> torch.Tensor:
    """The latent :math:`z = x(T)` of data ``x = x(t_min)`` along the ODE (Song et al. 2021, §4.3)."""
    return _flow(system, x, True, solver, rtol, atol, steps, options)


def decode(system: Any, z: torch.Tensor, *, solver: str | Solver = "dopri5", rtol: float = 1e-5,
           atol: float = 1e-5, steps: int | None = None, options: dict[str, Any] | None = None) -> torch.Tensor:
    """The data point :math:`x(t_{min})` of the latent ``z = x(T)``; ``decode(encode(x)) = x`` up to the
    solver tolerance (measured in ``benchmarks/likelihood.py``)."""
    return _flow(system, z, False, solver, rtol, atol, steps, options)

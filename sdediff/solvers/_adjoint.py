r"""The adjoint method for the torchdiffeq adapter's loop (Chen et al. 2018, *Neural ODEs*, §2 and Alg. 1).

The forward solve keeps no graph. Gradients come from a second solve, backward in time from
:math:`t_N` to :math:`t_0`, of the augmented system on one flat state :math:`(y, a, a_\theta)`:

.. math::
    \dot y = F(t, y), \qquad \dot a = -a^\top \partial_y F, \qquad \dot a_\theta = -a^\top \partial_\theta F,

with :math:`a(t_N) = \partial L/\partial y(t_N)`, the save-time gradients added to :math:`a` as the
backward solve passes them and :math:`y` reset to the saved forward state there (as torchdiffeq does).
:math:`a(t_0)` is the gradient of ``x`` and :math:`a_\theta(t_0)` that of the parameters. Memory is
one state per save time, whatever the number of steps; the price is the second solve, and gradients
exact for the continuous ODE up to the tolerance (for the discrete solve only as the tolerance goes
to 0). The backward solve uses the same loop (:func:`~sdediff.solvers.external.integrate`): it lands
on the save times, stays in the time range, is bounded by ``max_steps`` and measures its error in
torchdiffeq's mixed norm (the largest RMS over the parts :math:`y, a, a_\theta`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._utils import work_dtype
from .base import FixedStepSolver, RunResult, SolveContext, Solver
from .external import _FIXED, Drift, Plan, TorchdiffeqSolver, integrate

__all__ = ["ADJOINT_OPTIONS", "Backward", "adjoint_solve", "augmented", "check_adjoint", "default_params",
           "run_adjoint", "solver_options"]


def default_params(system: Any) -> tuple[torch.Tensor, ...]:
    """The parameters of every ``torch.nn.Module`` reachable from ``system`` (its network, a guidance
    classifier, an ODE's module ``func``): what ``adjoint=True`` differentiates by default."""
    from ..likelihood import find_parameters

    seen: set[int] = set()
    out = []
    for m in find_parameters(system):
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return tuple(out)


def augmented(f: Drift, params: tuple[torch.Tensor, ...], shape: torch.Size, wd: torch.dtype) -> Any:
    r"""The augmented dynamics on the flat state :math:`(y, a, a_\theta)` (torchdiffeq's ``aug_dynamics``):
    :math:`(F,\ -a^\top\partial_y F,\ -a^\top\partial_\theta F)`; one home for both adjoint paths."""
    n = shape.numel()
    sizes = [n, *(p.numel() for p in params)]

    def aug(t: float, z: torch.Tensor) -> torch.Tensor:
        y, a = z[:n].view(shape), z[n:2 * n].view(shape)
        with torch.enable_grad():
            yv = y.detach().requires_grad_(True)
            fy = f(t, yv)
            grads = torch.autograd.grad(fy, (yv, *params), a, allow_unused=True)
        parts = [fy.detach().reshape(-1)]
        for g, size in zip(grads, sizes, strict=True):
            parts.append(torch.zeros(size, dtype=wd, device=z.device) if g is None else -g.reshape(-1).to(wd))
        return torch.cat(parts)

    return aug


@dataclass
class Backward:
    """How the backward solve runs: the drift ``f``, the grid it retraces (``grid``, the forward times),
    the grid indices whose forward states the forward output holds (``saved``, increasing, last index
    included) and the plan of each backward interval."""

    f: Drift
    grid: list[float]
    saved: list[int]
    plan: Plan


class _Adjoint(torch.autograd.Function):
    @staticmethod
    def forward(actx: Any, run: Callable[[torch.Tensor], torch.Tensor], back: Backward, y0: torch.Tensor,
                *params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ys = run(y0)
        actx.back = back
        actx.save_for_backward(ys, *params)
        return ys

    @staticmethod
    def backward(actx: Any, grad_ys: torch.Tensor) -> tuple[Any, ...]:
        ys, *params = actx.saved_tensors
        back: Backward = actx.back
        f, ts = back.f, back.grid
        plan = copy.copy(back.plan)  # its own step counts: the forward solve's stay as reported
        plan.n_accepted = plan.n_rejected = 0
        plan.first_step = None
        shape, n, wd = ys.shape[1:], ys[0].numel(), ys.dtype
        sizes = [n, n, *(p.numel() for p in params)]
        aug = _Counted(augmented(f, tuple(params), shape, wd), f)
        row = {k: j for j, k in enumerate(back.saved)}
        y = ys[-1].reshape(-1)
        a = grad_ys[-1].to(wd).reshape(-1)
        a_theta = torch.zeros(sum(sizes[2:]), dtype=wd, device=ys.device)
        for i in range(len(ts) - 1, 0, -1):
            if i in row:  # restart y from the saved forward state (as torchdiffeq does)
                y = ys[row[i]].reshape(-1)
            z = torch.cat([y, a, a_theta])
            z = integrate(aug, z, [ts[i], ts[i - 1]], plan, segments=sizes)[-1]
            y, a, a_theta = z[:n], z[n:2 * n], z[2 * n:]
            if i - 1 in row:
                a = a + grad_ys[row[i - 1]].to(wd).reshape(-1)
        grads_p = []
        for p, g in zip(params, torch.split(a_theta, sizes[2:]), strict=True):
            grads_p.append(g.view(p.shape).to(p.dtype))
        return (None, None, a.view(shape), *grads_p)


class _Counted:
    """The augmented drift, with the evaluation count kept on the forward drift (one count per solve)."""

    def __init__(self, fn: Any, f: Drift) -> None:
        self.fn, self.f = fn, f

    @property
    def n(self) -> int:
        return self.f.n

    def __call__(self, t: float, z: torch.Tensor) -> torch.Tensor:
        return self.fn(t, z)


def adjoint_solve(f: Drift, y0: torch.Tensor, ts: Sequence[float], plan: Plan,
                  params: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """States at ``ts`` (``(len(ts), *y0.shape)``), differentiable by the adjoint method in ``y0`` and
    ``params``; ``plan`` records the forward solve's steps (the backward solve uses the same method)."""
    tl = list(ts)
    back = Backward(f, tl, list(range(len(tl))), plan)
    return _Adjoint.apply(lambda y: torch.stack(integrate(f, y, tl, plan)), back, y0, *params)


ADJOINT_OPTIONS = frozenset({"adjoint_params", "adjoint_method"})


def check_adjoint(solver: Solver, name: Any) -> None:
    """ValueError unless ``solver`` supports ``adjoint=True`` (torchdiffeq, or a deterministic fixed-step one)."""
    if isinstance(solver, TorchdiffeqSolver) or (isinstance(solver, FixedStepSolver) and not solver.stochastic):
        return
    what = "a stochastic solver" if solver.stochastic else "an adaptive sdediff solver"
    raise ValueError(f"adjoint=True needs a torchdiffeq solver (e.g. 'dopri5', 'torchdiffeq:rk4') or a deterministic "
                     f"fixed-step one ('rk4', 'ddim', 'dpm++2m', ...); {solver.name or name!r} is {what}. "
                     "Differentiate through the solve instead (adjoint=False)")


def solver_options(solver: Solver, options: dict[str, Any]) -> dict[str, Any]:
    """The options ``solver`` itself checks: a fixed-step solver's adjoint keys are this module's."""
    if isinstance(solver, FixedStepSolver):
        return {k: v for k, v in options.items() if k not in ADJOINT_OPTIONS}
    return options


def run_adjoint(solver: Solver, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> RunResult:
    r"""``solver.run`` differentiable by the adjoint method.

    torchdiffeq solvers: the adapter's own adjoint (:func:`adjoint_solve`, the same method backward).
    sdediff's deterministic fixed-step solvers (``rk4``, ``ddim``, ``dpm++2m``, ``edm_heun``, ...): the
    forward solve is the solver's own, unchanged, run without a graph; the gradient is the
    **continuous adjoint** (optimise-then-discretise): the augmented system is solved backward on the
    reversed grid, one step per interval of ``options["adjoint_method"]`` (default ``"rk4"``, Kutta's
    3/8 rule; ``"midpoint"``, ``"euler"``) on the drift :math:`\dot x = F(t, x)` of the system (the
    probability-flow velocity of a model). :math:`x` is reconstructed backward from the last state and
    restarted from each kept state (``save=``). It is *not* the exact gradient of the discrete solve:
    it differs from backpropagation through it by :math:`O(h^{\min(p, q)})` (``p`` the solver's
    order, ``q`` that of ``adjoint_method``) and converges to it as the steps grow
    (benchmarks/RESULTS.md has the measured table). Memory: the kept states only (``save="final"``:
    one state), flat in the number of steps; the price is the backward solve (4 drift evaluations and
    4 vector-Jacobian products per step with rk4).
    """
    if isinstance(solver, TorchdiffeqSolver):
        return solver.run(dynamics, x, ts, ctx)
    params = ctx.options.get("adjoint_params")
    params = tuple(p for p in (default_params(dynamics) if params is None else params) if p.requires_grad)
    method = ctx.options.get("adjoint_method", "rk4")
    if method not in _FIXED:
        raise ValueError(f"options adjoint_method must be one of {', '.join(map(repr, _FIXED))}, got {method!r}")
    n = len(ts) - 1
    keep = list(range(n + 1)) if ctx.save is None else sorted(ctx.save)
    rows = keep if n in keep else [*keep, n]
    wd = work_dtype(x)

    def run(y0: torch.Tensor) -> torch.Tensor:
        res = solver.run(dynamics, y0.to(x.dtype), ts, ctx)
        kept = list(res.xs)
        return torch.stack([*kept, res.final] if n not in keep else kept).to(wd)

    f = Drift(dynamics, x.dtype, x.device)
    back = Backward(f, [float(t) for t in ts], rows, Plan(method, _FIXED[method], None, ctx.max_steps))
    ys = _Adjoint.apply(run, back, x.to(wd), *params).to(x.dtype)
    return RunResult(list(ys[:len(keep)]), n_steps=n, x=ys[-1])

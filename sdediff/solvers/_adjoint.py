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
from collections.abc import Sequence
from typing import Any

import torch

from .external import Drift, Plan, integrate

__all__ = ["adjoint_solve", "default_params"]


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


class _Adjoint(torch.autograd.Function):
    @staticmethod
    def forward(actx: Any, f: Drift, ts: list[float], plan: Plan, y0: torch.Tensor,
                *params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ys = torch.stack(integrate(f, y0, ts, plan))
        actx.f, actx.ts, actx.plan = f, ts, plan
        actx.save_for_backward(ys, *params)
        return ys

    @staticmethod
    def backward(actx: Any, grad_ys: torch.Tensor) -> tuple[Any, ...]:
        ys, *params = actx.saved_tensors
        f, ts = actx.f, actx.ts
        plan = copy.copy(actx.plan)  # its own step counts: the forward solve's stay as reported
        plan.n_accepted = plan.n_rejected = 0
        plan.first_step = None
        shape, n, wd = ys.shape[1:], ys[0].numel(), ys.dtype
        sizes = [n, n, *(p.numel() for p in params)]

        def aug(t: float, z: torch.Tensor) -> torch.Tensor:
            y, a = z[:n].view(shape), z[n:2 * n].view(shape)
            with torch.enable_grad():
                yv = y.detach().requires_grad_(True)
                fy = f(t, yv)
                grads = torch.autograd.grad(fy, (yv, *params), a, allow_unused=True)
            parts = [fy.detach().reshape(-1)]
            for g, size in zip(grads, sizes[1:], strict=True):
                parts.append(torch.zeros(size, dtype=wd, device=z.device) if g is None else -g.reshape(-1).to(wd))
            return torch.cat(parts)

        a = grad_ys[-1].to(wd)
        a_theta = torch.zeros(sum(sizes[2:]), dtype=wd, device=ys.device)
        for i in range(len(ts) - 1, 0, -1):
            z = torch.cat([ys[i].reshape(-1), a.reshape(-1), a_theta])
            z = integrate(_Counted(aug, f), z, [ts[i], ts[i - 1]], plan, segments=sizes)[-1]
            a = z[n:2 * n].view(shape) + grad_ys[i - 1].to(wd)
            a_theta = z[2 * n:]
        grads_p = []
        for p, g in zip(params, torch.split(a_theta, sizes[2:]), strict=True):
            grads_p.append(g.view(p.shape).to(p.dtype))
        return (None, None, None, a, *grads_p)


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
    ``params``; ``plan`` records the forward solve's steps."""
    return _Adjoint.apply(f, list(ts), plan, y0, *params)

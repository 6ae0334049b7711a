"""``solve(..., adjoint=True)`` for sdediff's own fixed-step ODE solvers (issue 8.7): the continuous adjoint
converges to backprop through the same solve at the solver's order; a planted sign flip breaks it."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

import sdediff as sd
from sdediff.solvers import _adjoint

P = sd.VPSDE()


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(0.5 * torch.randn(3, 8, generator=g, dtype=torch.float64))
        self.w2 = torch.nn.Parameter(0.5 * torch.randn(8, 2, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.cat([x, t[:, None].to(x.dtype)], 1) @ self.w1) @ self.w2


def grads(solver: str, n: int, adjoint: bool, save: str = "final") -> tuple[torch.Tensor, ...]:
    net = Net()
    model = sd.DiffusionModel(net, P)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    sol = sd.solve(model, x, ts=sd.timesteps.logsnr(P, n), solver=solver, adjoint=adjoint, save=save)
    return torch.autograd.grad(sol.x.sin().sum() + sol.xs.pow(2).sum(), (x, net.w1, net.w2))


def rel_diffs(solver: str, steps: tuple[int, ...] = (8, 16, 32, 64)) -> list[float]:
    out = []
    for n in steps:
        b, a = grads(solver, n, False), grads(solver, n, True)
        out.append(max(float((ga - gb).norm() / gb.norm()) for ga, gb in zip(a, b, strict=True)))
    return out


def converges(solver: str, order: int) -> bool:
    """Differences fall at every doubling and over 8 -> 64 steps by at least 4 * 2^(-3p)."""
    d = rel_diffs(solver)
    return all(b < a for a, b in pairwise(d)) and d[-1] / d[0] <= 4 * 2.0 ** (-3 * order)


@pytest.mark.parametrize(("solver", "order"), [("rk4", 4), ("ddim", 1), ("dpm++2m", 2), ("edm_heun", 2)])
def test_adjoint_converges_to_backprop_at_the_solver_order(solver, order):
    assert converges(solver, order)


def test_planted_sign_flip_in_the_adjoint_dynamics_fails(monkeypatch):
    real = _adjoint.augmented

    def flipped(f, params, shape, wd):
        aug, n = real(f, params, shape, wd), shape.numel()
        return lambda t, z: torch.cat([aug(t, z)[:n], -aug(t, z)[n:]])

    monkeypatch.setattr(_adjoint, "augmented", flipped)
    assert not converges("rk4", 4)


def test_forward_is_the_solvers_own_and_save_all_is_differentiable():
    net = Net()
    model = sd.DiffusionModel(net, P)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = sd.timesteps.logsnr(P, 10)
    a = sd.solve(model, x, ts=ts, solver="dpm++2m", adjoint=True, save="all")
    b = sd.solve(model, x, ts=ts, solver="dpm++2m", save="all")
    assert torch.equal(a.xs, b.xs) and a.stats == b.stats
    # save="all": every kept state enters the loss and the backward solve restarts from each
    d = []
    for n in (16, 64):
        ga, gb = grads("rk4", n, True, save="all"), grads("rk4", n, False, save="all")
        d.append(max(float((u - v).norm() / v.norm()) for u, v in zip(ga, gb, strict=True)))
    assert d[1] <= 4 * 2.0 ** (-2 * 4) * d[0]  # order 4 over two doublings


@pytest.mark.parametrize("solver", ["euler_maruyama", "ancestral", "stochastic_heun", "dpm_solver_23"])
def test_stochastic_or_adaptive_solver_with_adjoint_is_a_clear_error(solver):
    x = P.prior_sample((2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"adjoint=True needs .*adjoint=False"):
        sd.solve(sd.DiffusionModel(Net(), P), x, ts=[1.0, 0.5], solver=solver, adjoint=True)

"""Memory of ``solve(..., adjoint=True)`` against backpropagation through the solve (issue 8.7).

What grows with the number of steps is the autograd graph: every tensor a backward pass will need is
*saved* during the forward solve. This counts the bytes of those saved tensors (``torch.autograd.graph.
saved_tensors_hooks``, the same on every platform; no allocator statistics needed) for a ~5k-parameter MLP
vector field on a 256 x 16 state, with ``torchdiffeq:rk4`` at 25..400 steps and ``dopri5`` at tolerances
1e-3..1e-8, and checks the two gradients agree. Backprop's saved bytes grow linearly in the steps; the
adjoint's are one state per save time plus the parameters, whatever the steps.

    PYTHONPATH=. python benchmarks/adjoint_memory.py            # writes benchmarks/adjoint_memory.md
    PYTHONPATH=. python benchmarks/adjoint_memory.py --own      # sdediff's own fixed-step solvers only

``--own``: sdediff's own ``rk4`` (continuous adjoint, rk4 backward) on the same field with ``save="final"``,
and the convergence of
the continuous-adjoint gradient to backprop through the same solve (``rk4``, ``ddim``, ``dpm++2m``,
``edm_heun`` on a VP diffusion model with a small network, logSNR grid, float64).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

import sdediff as sd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
from test_adjoint_fixed_step import Net


class MLP(torch.nn.Module):
    def __init__(self, d: int = 16, hidden: int = 128) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(d + 1, hidden, generator=g) / (d + 1) ** 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(hidden, d, generator=g) / hidden ** 0.5)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.to(x.dtype).expand(x.shape[0], 1)
        return torch.tanh(torch.cat([x, tt], 1) @ self.w1) @ self.w2


def measure(adjoint: bool, **kw) -> tuple[int, float, list[torch.Tensor], object]:
    """(saved bytes, seconds forward + backward, gradients, stats)."""
    net = MLP()
    ode = sd.ODE(net, t_min=0.0, T=1.0)
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sol = sd.solve(ode, x, t0=0.0, t1=1.0, adjoint=adjoint, **kw)
    loss = sol.x.pow(2).sum()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    return saved[0], time.perf_counter() - t0, list(grads), sol.stats


def diffusion_grads(solver: str, n: int, adjoint: bool) -> tuple[torch.Tensor, ...]:
    net, p = Net(), sd.VPSDE()  # the adjoint test's small eps-network (one home)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    sol = sd.solve(sd.DiffusionModel(net, p), x, ts=sd.timesteps.logsnr(p, n), solver=solver, adjoint=adjoint,
                   save="final")
    return torch.autograd.grad(sol.x.sin().sum(), (x, net.w1, net.w2))


def own() -> None:
    torch.set_num_threads(1)
    rows = ["| solver | steps | backprop saved MiB | adjoint saved MiB | ratio | grad rel. diff |",
            "|---|---|---|---|---|---|"]
    for n in (25, 100, 400):
        b_bytes, _, b_grads, _ = measure(False, solver="rk4", steps=n, save="final")
        a_bytes, _, a_grads, st = measure(True, solver="rk4", steps=n, save="final")
        diff = max(float((ga - gb).norm() / gb.norm()) for ga, gb in zip(a_grads, b_grads, strict=True))
        rows.append(f"| rk4 (sdediff) | {st.n_steps} | {b_bytes / 2**20:.2f} | {a_bytes / 2**20:.3f} | "
                    f"{b_bytes / max(a_bytes, 1):.0f}x | {diff:.1e} |")
        print(rows[-1], flush=True)
    steps = (8, 16, 32, 64)
    rows += ["", "| solver | " + " | ".join(f"{n} steps" for n in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for solver in ("rk4", "ddim", "dpm++2m", "edm_heun"):
        cells = []
        for n in steps:
            b, a = diffusion_grads(solver, n, False), diffusion_grads(solver, n, True)
            cells.append(f"{max(float((ga - gb).norm() / gb.norm()) for ga, gb in zip(a, b, strict=True)):.1e}")
        rows.append(f"| {solver} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    print("\n".join(rows))


def main() -> None:
    if "--own" in sys.argv:
        own()
        return
    torch.set_num_threads(1)
    rows = ["| solver | setting | steps | backprop saved MiB | adjoint saved MiB | ratio | grad rel. diff | "
            "time adjoint / backprop |", "|---|---|---|---|---|---|---|---|"]
    cases = [("torchdiffeq:rk4", f"steps={n}", {"solver": "torchdiffeq:rk4", "steps": n})
             for n in (25, 50, 100, 200, 400)]
    cases += [("dopri5", f"tol={tol:g}", {"solver": "dopri5", "rtol": tol, "atol": tol})
              for tol in (1e-3, 1e-5, 1e-7, 1e-9)]
    for name, setting, kw in cases:
        b_times, a_times = [], []
        for _ in range(3):  # interleaved rounds; the time ratio is the ratio of medians
            b_bytes, b_time, b_grads, _ = measure(False, **kw)
            a_bytes, a_time, a_grads, a_stats = measure(True, **kw)
            b_times.append(b_time)
            a_times.append(a_time)
        b_time, a_time = statistics.median(b_times), statistics.median(a_times)
        diff = max(float((ga - gb).norm() / gb.norm()) for ga, gb in zip(a_grads, b_grads, strict=True))
        rows.append(f"| {name} | {setting} | {a_stats.n_steps} | {b_bytes / 2**20:.2f} | {a_bytes / 2**20:.3f} | "
                    f"{b_bytes / max(a_bytes, 1):.0f}x | {diff:.1e} | {a_time / b_time:.2f} |")
        print(rows[-1], flush=True)
    text = ("# Adjoint memory (`benchmarks/adjoint_memory.py`)\n\nBytes saved for backward during the forward "
            "solve (the autograd graph), 256 x 16 float32 state, MLP 17-128-16, loss |x(1)|^2, one thread. "
            "`grad rel. diff`: the largest relative difference between the adjoint and backprop parameter "
            "gradients; time: forward + backward, median of 3 interleaved rounds.\n\n" + "\n".join(rows)
            + "\n\nCommand: `PYTHONPATH=. python benchmarks/adjoint_memory.py`\n")
    if "--no-write" not in sys.argv:
        Path(__file__).with_name("adjoint_memory.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Adapters to torchdiffeq (ODE) and torchsde (SDE) integrators.

Everything these libraries need that sdediff does not use elsewhere lives here and only here:

* state shape: torchsde wants ``(B, D)``; the state is flattened on the way in and restored on the
  way out (any shape works, B×C×H×W included);
* time direction: torchsde integrates forward in time only; a decreasing grid is run in
  :math:`s = -t` with drift :math:`-f(-s, y)` (the diffusion's sign does not matter);
* precision: half-precision states are integrated in float32 and cast back (the network still
  sees the state's dtype); times stay float64;
* range: adaptive steps are made to land on every grid time (``step_t``), so the model is never
  evaluated beyond the end points (a VP score at ``t < 0`` is NaN);
* errors: torchdiffeq's assertion failures (step underflow, too many steps) become
  :class:`~sdediff.errors.SolverError` with remedies.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._utils import work_dtype
from ..errors import NonFiniteError, SolverError
from ..noise import seed_from
from .base import RunResult, SolveContext, Solver

__all__ = ["TORCHDIFFEQ_METHODS", "TORCHSDE_METHODS", "TorchdiffeqSolver", "TorchsdeSolver"]

# name -> (order, adaptive)
TORCHDIFFEQ_METHODS: dict[str, tuple[int, bool]] = {
    "dopri5": (5, True),
    "dopri8": (8, True),
    "tsit5": (5, True),
    "bosh3": (3, True),
    "adaptive_heun": (2, True),
    "fehlberg2": (2, True),
    "euler": (1, False),
    "midpoint": (2, False),
    "rk4": (4, False),
}

# name -> (strong order for additive noise, sde_type)
TORCHSDE_METHODS: dict[str, tuple[float, str]] = {
    "euler": (1.0, "ito"),
    "milstein": (1.0, "ito"),
    "srk": (1.5, "ito"),
    "reversible_heun": (1.0, "stratonovich"),
}


class _ODEFunc(torch.nn.Module):
    def __init__(self, dynamics: Any, state_dtype: torch.dtype) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.state_dtype = state_dtype
        self.accepted = 0
        self.rejected = 0
        self.attempted = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        try:
            return self.dynamics.drift(t, y.to(self.state_dtype)).to(y.dtype)
        except NonFiniteError as err:
            raise err.at_step(max(self.attempted - 1, 0)) from None

    def callback_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.attempted += 1


class _AdaptiveODEFunc(_ODEFunc):
    """Also counts accepted and rejected steps (callbacks only adaptive torchdiffeq solvers make)."""

    def callback_accept_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.accepted += 1

    def callback_reject_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.rejected += 1


def _first_step(func: _ODEFunc, ts: torch.Tensor, y0: torch.Tensor, ctx: SolveContext) -> float:
    """Hairer–Nørsett–Wanner's first-step guess :math:`h_0 = 0.01\\,\\|y_0\\|/\\|f(t_0, y_0)\\|` (scaled
    norms), capped at the first interval. torchdiffeq's own guess probes ``f`` at ``t0 + h0``, which
    can lie outside the process's time range."""
    scale = ctx.atol + ctx.rtol * y0.abs()
    d0 = float((y0 / scale).pow(2).mean().sqrt())
    d1 = float((func(ts[0], y0) / scale).pow(2).mean().sqrt())
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    return min(h0, float(abs(ts[1] - ts[0])))


class TorchdiffeqSolver(Solver):
    """``torchdiffeq.odeint`` with ``method``; adaptive ones use ``rtol``/``atol``."""

    stochastic = False
    options = None  # torchdiffeq's own options, checked by torchdiffeq

    def __init__(self, method: str) -> None:
        if method not in TORCHDIFFEQ_METHODS:
            raise ValueError(f"unknown torchdiffeq method {method!r}; valid: {', '.join(TORCHDIFFEQ_METHODS)}")
        self._method = method
        self.name = f"torchdiffeq:{method}"
        self.order, self.adaptive = TORCHDIFFEQ_METHODS[method]
        self.nfe_per_step = {"euler": 1, "midpoint": 2, "rk4": 4}.get(method, 0)

    def run(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> RunResult:
        from torchdiffeq import odeint

        func = (_AdaptiveODEFunc if self.adaptive else _ODEFunc)(dynamics, x.dtype)
        options: dict[str, Any] = dict(ctx.options)
        if self.adaptive:
            options.setdefault("max_num_steps", ctx.max_steps)
            # torchdiffeq steps past the last time and interpolates back; step_t makes it land on
            # every grid time, so the model is never evaluated outside [ts[0], ts[-1]].
            options.setdefault("step_t", ts)
            if "first_step" not in options:
                options["first_step"] = _first_step(func, ts, x.to(work_dtype(x)), ctx)
            kwargs: dict[str, Any] = {"rtol": ctx.rtol, "atol": ctx.atol}
        else:
            kwargs = {}
            span = float(abs(ts[-1] - ts[0]))
            if ctx.dt is not None:
                options.setdefault("step_size", ctx.dt)
            elif ctx.steps is not None:
                options.setdefault("step_size", span / ctx.steps)
        try:
            ys = odeint(func, x.to(work_dtype(x)), ts, method=self._method, options=options, **kwargs)
        except AssertionError as err:  # torchdiffeq reports failures by assert
            msg = str(err)
            if "underflow" in msg:
                raise SolverError(
                    f"{self._method}: step size underflow ({msg}); the system is stiff or not finite "
                    "here. Loosen rtol/atol, use a fixed-step solver, or start later (t_min)",
                    nfe=dynamics.nfe) from None
            if "max_num_steps" in msg:
                raise SolverError(
                    f"{self._method}: more than max_steps={ctx.max_steps} steps; loosen rtol/atol "
                    "or raise max_steps", nfe=dynamics.nfe) from None
            raise SolverError(f"{self._method} failed: {msg}", nfe=dynamics.nfe) from None
        n_steps = func.accepted if self.adaptive else self._fixed_steps(ts, ctx)
        return RunResult(ys.to(x.dtype), n_steps=n_steps, n_rejected=func.rejected)

    @staticmethod
    def _fixed_steps(ts: torch.Tensor, ctx: SolveContext) -> int:
        if ctx.dt is None and ctx.steps is None:
            return len(ts) - 1
        dt = ctx.dt if ctx.dt is not None else float(abs(ts[-1] - ts[0])) / ctx.steps  # type: ignore[operator]
        return math.ceil(float(abs(ts[-1] - ts[0])) / dt - 1e-9)

    def __repr__(self) -> str:
        return f"TorchdiffeqSolver({self._method!r})"


class _SDEFunc(torch.nn.Module):
    """torchsde's view of a system: flat ``(B, D)`` state, increasing time ``s = sign * t``."""

    noise_type = "diagonal"

    def __init__(self, dynamics: Any, shape: torch.Size, state_dtype: torch.dtype, sign: float, sde_type: str,
                 s0: float, dt: float) -> None:
        super().__init__()
        self.s0 = s0
        self.dt = dt
        self.dynamics = dynamics
        self.shape = shape
        self.state_dtype = state_dtype
        self.sign = sign
        self.sde_type = sde_type

    def _x(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(self.shape).to(self.state_dtype)

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = self.sign * s.to(torch.float64)
        try:
            return self.sign * self.dynamics.drift(t, self._x(y)).reshape(y.shape).to(y.dtype)
        except NonFiniteError as err:
            raise err.at_step(math.floor((float(s) - self.s0) / self.dt + 1e-9)) from None

    def g(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = self.sign * s.to(torch.float64)
        x = self._x(y)
        g = torch.broadcast_to(self.dynamics.diffusion(t, x), x.shape).reshape(y.shape).to(y.dtype)
        return g + 0.0 * y  # keeps y in the graph: Milstein differentiates g (here dg/dy = 0)


class TorchsdeSolver(Solver):
    """``torchsde.sdeint`` with ``method`` on Brownian-interval noise keyed by the generator."""

    stochastic = True
    options = None  # handed to torchsde

    def __init__(self, method: str) -> None:
        if method not in TORCHSDE_METHODS:
            raise ValueError(f"unknown torchsde method {method!r}; valid: {', '.join(TORCHSDE_METHODS)}")
        self._method = method
        self.name = f"torchsde:{method}"
        self.strong_order = TORCHSDE_METHODS[method][0]
        self.order = 2.0 if method == "srk" else 1.0  # weak order for additive noise

    def run(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> RunResult:
        import torchsde

        sign = 1.0 if bool(ts[-1] > ts[0]) else -1.0
        ss = sign * ts
        span = float(ss[-1] - ss[0])
        on_grid = ctx.dt is None and ctx.steps is None
        if ctx.dt is not None:
            dt = float(ctx.dt)
        elif ctx.steps is not None:
            dt = span / ctx.steps
        elif not ctx.adaptive:
            dt = float(ss.diff().min())  # only a hint for the Brownian tree: we step on the grid
        else:
            raise ValueError(f"adaptive {self.name} needs a first step: pass dt=")
        if isinstance(ctx.generator, (list, tuple)):
            raise ValueError(f"{self.name} draws one Brownian path for the whole batch, so a list of per-sample "
                             "generators cannot be honoured; pass one generator, or use sdediff's own SDE "
                             "solvers ('euler_maruyama', 'ancestral', ...) for per-sample noise")
        wd = work_dtype(x)
        b = x.shape[0]
        y0 = x.reshape(b, -1).to(wd)
        sde_type = TORCHSDE_METHODS[self._method][1]
        func = _SDEFunc(dynamics, x.shape, x.dtype, sign, sde_type, float(ss[0]), dt)
        bm = torchsde.BrownianInterval(
            t0=float(ss[0]), t1=float(ss[-1]), size=y0.shape, dtype=wd, device=x.device, dt=dt,
            entropy=seed_from(ctx.generator),
            levy_area_approximation="space-time" if self._method == "srk" else "none",
        )
        adaptive = bool(ctx.adaptive)
        sss = ss.to(wd) if wd != torch.float64 else ss

        sde_options = ctx.options.get("torchsde_options")
        try:
            if on_grid:
                out = self._on_grid(func, y0, sss, bm, sde_options)
            else:
                out = torchsde.sdeint(func, y0, sss, bm=bm, method=self._method, dt=dt, adaptive=adaptive,
                                      rtol=ctx.rtol, atol=ctx.atol, dt_min=ctx.options.get("dt_min", 1e-5),
                                      options=sde_options)
        except NonFiniteError:
            raise
        except (AssertionError, RuntimeError) as err:
            raise SolverError(f"{self.name} failed: {err}", nfe=dynamics.nfe) from err
        if on_grid:
            n_steps = len(ts) - 1
        else:
            n_steps = math.ceil(span / dt - 1e-9) if not adaptive else -1
        return RunResult(out.reshape(len(ts), *x.shape).to(x.dtype), n_steps=n_steps)

    def _on_grid(self, func: _SDEFunc, y0: torch.Tensor, ss: torch.Tensor, bm: Any, options: Any) -> torch.Tensor:
        """One step of the torchsde method per grid interval, on one Brownian path.

        ``sdeint`` only takes uniform steps, and calling it once per interval would repeat its
        contract check (one drift evaluation each time), so its solver object is driven directly
        (torchsde 0.2.x internals: ``check_contract``, ``methods.select``, ``solver.step``).
        """
        from torchsde._core import methods
        from torchsde._core.sdeint import check_contract

        sde, y, ts, bm, method, options = check_contract(func, y0, ss, bm, self._method, False, options, None, False)
        solver = methods.select(method=method, sde_type=sde.sde_type)(
            sde=sde, bm=bm, dt=float(ts[1] - ts[0]), adaptive=False, rtol=1e-5, atol=1e-5, dt_min=1e-5,
            options=options)
        extra = solver.init_extra_solver_state(ts[0], y)
        ys = [y]
        for i in range(len(ts) - 1):
            try:
                y, extra = solver.step(ts[i], ts[i + 1], y, extra)
            except NonFiniteError as err:
                raise err.at_step(i) from None
            ys.append(y)
        return torch.stack(ys)

    def __repr__(self) -> str:
        return f"TorchsdeSolver({self._method!r})"

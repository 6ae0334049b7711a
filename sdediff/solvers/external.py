r"""Adapters to torchdiffeq (ODE) and torchsde (SDE) integrators.

Everything these libraries need that sdediff does not use elsewhere lives here and only here.

**torchdiffeq.** The methods are torchdiffeq's: the registry lists what the installed torchdiffeq's
method table (``torchdiffeq._impl.odeint.SOLVERS``) has, and the adaptive ones take their Butcher
tableau and controller order from it. The *loop* is sdediff's (:func:`integrate`), because
torchdiffeq's own loop cannot give the guarantees a diffusion solve needs:

* **range**: torchdiffeq steps past save times and interpolates back, and its ``step_t`` landing
  loses track when a step ends exactly on a grid time (``t0 < next < t0 + dt`` is strict), after
  which it steps past the end: the model is then evaluated outside ``[t_min, T]`` (a VP score at
  ``t < 0`` is NaN). Here every step is clamped to land on the next save time, every stage time lies
  between the step's end points, and the controller's proposal is carried over a clamped step so a
  save time does not cost step size. Saved states are the method's own error-controlled solutions
  (no interpolant error); the price is at least one step per save interval (``len(ts) - 1``).
  The alternative, integrating each save interval with a separate ``odeint`` call, restarts the
  controller and repeats the first-step probe per interval, and still relies on the same landing.
* **bounded work**: ``max_steps`` counts accepted + rejected steps of the whole solve (torchdiffeq
  counts per save interval, with an ``assert`` that ``python -O`` removes). A step below
  :math:`16\,\mathrm{ulp}(t)` is a step-size underflow, and a *stall* (50 consecutive steps so short
  that the remaining ``max_steps`` could not reach the end at that size: a discontinuous or stiff
  drift the controller can only chatter across) ends the solve early. Both raise
  :class:`~sdediff.errors.SolverError` with ``t``, ``dt``, this solve's evaluation count and the fix.
* **non-finite outputs**: a stage whose model output (or whose step) is not finite is a rejected
  step (``dt`` shrinks by ``dfactor``), as in sdediff's adaptive DPM-Solver; the 8th in one solve
  (a region where the model is not finite, not a one-off) re-raises the error, naming the step and t.
* **adjoint**: ``adjoint=True`` (Chen et al. 2018) runs the same loop forward without a graph and
  the adjoint system backward (:mod:`sdediff.solvers._adjoint`): memory flat in the number of steps.

Tableaux whose last stage is not :math:`f(t_1, y_1)` (``fehlberg2``, ``adaptive_heun``) evaluate
:math:`f(t_1, y_1)` as the next step's first stage; torchdiffeq reuses the last stage's value,
which is :math:`f` at the *embedded* solution, so these cost one evaluation more per step here
than there. Fixed-step methods (``euler``, ``midpoint``, ``rk4`` = torchdiffeq's 3/8-rule RK4) take one
step per save interval, or with ``steps``/``dt`` uniform sub-steps of size at most ``span/steps``
(``dt``) inside every save interval.

**torchsde.** State flattened to ``(B, D)`` and restored; decreasing grids run in :math:`s = -t`
with drift :math:`-f(-s, y)`; half-precision states integrate in float32. The Brownian path is a
function of the seed and the span: the Brownian interval's tree is built from a fixed resolution hint
(``span / 1024``, as :class:`sdediff.noise.BrownianNoise`), not from the step size, so 50 and 100
steps with one seed integrate the same path.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._utils import work_dtype
from ..errors import NonFiniteError, SolverError
from ..noise import seed_from
from .base import RunResult, SolveContext, Solver

__all__ = ["TORCHDIFFEQ_METHODS", "TORCHSDE_METHODS", "TorchdiffeqSolver", "TorchsdeSolver", "integrate"]


# ------------------------------------------------------------------------------------ method tables
@dataclass(frozen=True)
class Tableau:
    r"""An explicit Runge–Kutta method: stage times :math:`c_i` (``alpha``), stage weights :math:`a_{ij}`
    (``beta``), solution weights :math:`b_i` (``c_sol``) and error weights :math:`b_i - \hat b_i`
    (``c_error``, ``None`` for fixed-step methods); ``order`` drives the controller exponent."""

    alpha: tuple[float, ...]
    beta: tuple[tuple[float, ...], ...]
    c_sol: tuple[float, ...]
    c_error: tuple[float, ...] | None
    order: int

    @property
    def fsal(self) -> bool:
        """First same as last: the last stage is :math:`f(t_1, y_1)` and starts the next step."""
        return (len(self.alpha) > 0 and self.alpha[-1] == 1.0 and self.c_sol[-1] == 0.0
                and tuple(self.c_sol[:-1]) == tuple(self.beta[-1]))

    @property
    def nfe_per_step(self) -> int:
        return len(self.alpha) + (0 if self.fsal else 1)


# torchdiffeq's fixed-grid methods are step functions, not tableaux; these are the same methods.
_FIXED = {
    "euler": Tableau((), (), (1.0,), None, 1),
    "midpoint": Tableau((0.5,), ((0.5,),), (0.0, 1.0), None, 2),
    # torchdiffeq's RK4 is rk4_alt_step_func: Kutta's 3/8 rule
    "rk4": Tableau((1 / 3, 2 / 3, 1.0), ((1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), (0.125, 0.375, 0.375, 0.125),
                   None, 4),
}
_ADAPTIVE_WANTED = ("dopri5", "dopri8", "tsit5", "bosh3", "adaptive_heun", "fehlberg2")


def _torchdiffeq_tableaux() -> dict[str, Tableau]:
    """The methods the installed torchdiffeq has (its own method table), as tableaux."""
    try:
        from torchdiffeq._impl.odeint import SOLVERS as table
        from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver
    except ImportError:  # torchdiffeq missing or reorganised: register nothing rather than fail at import
        return {}
    out: dict[str, Tableau] = {}
    for name in _ADAPTIVE_WANTED:
        cls = table.get(name)
        if isinstance(cls, type) and issubclass(cls, RKAdaptiveStepsizeODESolver):
            t = cls.tableau
            out[name] = Tableau(tuple(float(a) for a in t.alpha), tuple(tuple(float(b) for b in row) for row in t.beta),
                                tuple(float(c) for c in t.c_sol), tuple(float(c) for c in t.c_error), int(cls.order))
    for name, tab in _FIXED.items():
        if name in table:
            out[name] = tab
    return out


TABLEAUX: dict[str, Tableau] = _torchdiffeq_tableaux()

# name -> (order, adaptive)
TORCHDIFFEQ_METHODS: dict[str, tuple[int, bool]] = {n: (t.order, t.c_error is not None) for n, t in TABLEAUX.items()}


def _torchsde_methods() -> dict[str, tuple[float, float, str]]:
    # name -> (strong order, weak order, sde_type) for additive (state-independent) noise, the case of
    # diffusion models: Euler–Maruyama and Milstein coincide there (strong 1, weak 1); torchsde's srk
    # is Rößler's SRA1 (strong 1.5, weak 2); reversible Heun (Kidger et al. 2021) strong 1, weak 1.
    wanted = {"euler": (1.0, 1.0, "ito"), "milstein": (1.0, 1.0, "ito"), "srk": (1.5, 2.0, "ito"),
              "reversible_heun": (1.0, 1.0, "stratonovich")}
    try:
        from torchsde.settings import METHODS
    except ImportError:
        return {}
    return {n: v for n, v in wanted.items() if hasattr(METHODS, n)}


TORCHSDE_METHODS: dict[str, tuple[float, float, str]] = _torchsde_methods()


# ------------------------------------------------------------------------------------ the ODE loop
class Drift:
    """The system's drift as the loop sees it: ``f(t, y)`` with ``t`` a Python float (float64), the
    state cast to the caller's dtype on the way in (the network sees the state's dtype) and back to the
    work dtype on the way out; ``n`` counts this solve's evaluations (the model's counter is shared)."""

    def __init__(self, dynamics: Any, state_dtype: torch.dtype, device: torch.device) -> None:
        self.dynamics = dynamics
        self.state_dtype = state_dtype
        self.device = device
        self.n = 0

    def __call__(self, t: float, y: torch.Tensor) -> torch.Tensor:
        self.n += 1
        tt = torch.tensor(t, dtype=torch.float64, device=self.device)
        return self.dynamics.drift(tt, y.to(self.state_dtype)).to(y.dtype)


@dataclass(frozen=True)
class Controller:
    """Step-size control, torchdiffeq's rule: :math:`h \\leftarrow h\\,\\min(\\text{ifactor},
    \\max(\\text{safety}\\,E^{-1/p}, \\text{dfactor}))` (no shrink after an accepted step)."""

    rtol: float
    atol: float
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    max_step: float = math.inf

    def factor(self, err: float, order: int) -> float:
        if err == 0.0:
            return self.ifactor
        low = 1.0 if err < 1.0 else self.dfactor
        return min(self.ifactor, max(self.safety / err ** (1.0 / order), low))


STALL_STEPS = 50  # consecutive too-short steps that end a solve
NONFINITE_RETRIES = 8  # non-finite rejections in one solve before re-raising (one-offs are retried)


@dataclass
class Plan:
    """One solve's integration settings (``steps_per``: sub-steps of each save interval for fixed
    methods; ``first_step``: the first adaptive step, ``None`` = Hairer–Nørsett–Wanner's guess)."""

    name: str
    tableau: Tableau
    control: Controller | None
    max_steps: int
    first_step: float | None = None
    nominal_dt: float | None = None
    n_accepted: int = 0
    n_rejected: int = 0


def _combine(y0: torch.Tensor | None, dt: float, coeffs: Sequence[float], ks: Sequence[torch.Tensor]) -> torch.Tensor:
    acc = y0
    for c, k in zip(coeffs, ks, strict=True):
        if c != 0.0:
            term = k * (dt * c)
            acc = term if acc is None else acc + term
    return acc if acc is not None else torch.zeros_like(ks[0])


def rk_step(f: Callable[[float, torch.Tensor], torch.Tensor], tab: Tableau, t0: float, t1: float, y0: torch.Tensor,
            k0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One explicit RK step from ``t0`` to ``t1``: ``(y1, f(t1, y1) if FSAL else None, error estimate)``.
    Every stage time :math:`t_0 + c_i (t_1 - t_0)` is clamped to the step's end points (round-off only)."""
    dt = t1 - t0
    lo, hi = min(t0, t1), max(t0, t1)
    ks = [k0]
    yi = y0
    for a, row in zip(tab.alpha, tab.beta, strict=True):
        ti = t1 if a == 1.0 else min(max(t0 + a * dt, lo), hi)
        yi = _combine(y0, dt, row, ks)
        ks.append(f(ti, yi))
    if tab.fsal:
        y1, f1 = yi, ks[-1]
    else:
        y1, f1 = _combine(y0, dt, tab.c_sol, ks), None
    err = None if tab.c_error is None else _combine(None, dt, tab.c_error, ks)
    return y1, f1, err


def _error_ratio(err: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, c: Controller,
                 segments: Sequence[int] | None) -> float:
    """torchdiffeq's RMS norm of ``err / (atol + rtol max(|y0|, |y1|))`` (max over ``segments`` of a flat
    state: its mixed norm for the adjoint system); ``inf`` when not finite."""
    with torch.no_grad():
        scaled = (err / (c.atol + c.rtol * torch.maximum(y0.abs(), y1.abs()))).pow(2)
        if segments is None:
            r = float(scaled.mean().sqrt())
        else:
            parts = torch.split(scaled.reshape(-1), list(segments))
            r = max(float(p.mean().sqrt()) for p in parts if p.numel())
    return r if math.isfinite(r) else math.inf


def first_step_guess(k0: torch.Tensor, y0: torch.Tensor, span: float, c: Controller) -> float:
    """Hairer–Nørsett–Wanner's first step :math:`h_0 = 0.01\\,\\|y_0\\|/\\|f(t_0, y_0)\\|` (scaled
    RMS norms), at most the first interval. torchdiffeq's guess also probes ``f`` at ``t0 + h0``,
    which can lie outside the process's time range."""
    with torch.no_grad():
        scale = c.atol + c.rtol * y0.abs()
        d0 = float((y0 / scale).pow(2).mean().sqrt())
        d1 = float((k0 / scale).pow(2).mean().sqrt())
    h0 = 1e-6 if not (d0 >= 1e-5 and d1 >= 1e-5 and math.isfinite(d1)) else 0.01 * d0 / d1
    return min(h0, span)


def _fail(plan: Plan, f: Any, what: str, t: float, h: float, fix: str) -> SolverError:
    return SolverError(f"{plan.name}: {what} at t={t!r}, dt={h:.3g}, after {f.n} evaluations in this solve "
                       f"({plan.n_accepted} accepted, {plan.n_rejected} rejected steps). {fix}",
                       t=t, dt=h, nfe=f.n)


def integrate(f: Any, y0: torch.Tensor, ts: Sequence[float], plan: Plan,
              segments: Sequence[int] | None = None) -> list[torch.Tensor]:
    """States at every time of ``ts`` (a strictly monotone list of floats), starting from ``y0``.

    ``f`` is a :class:`Drift` (its ``n`` counts evaluations). Adaptive methods land on every time of
    ``ts``; fixed ones take ``plan.nominal_dt``-sized uniform sub-steps (one per interval if ``None``).
    Step counts accumulate in ``plan``.
    """
    tab, c = plan.tableau, plan.control
    ys = [y0]
    y, t = y0, float(ts[0])
    if c is None:  # fixed steps
        for j in range(1, len(ts)):
            a, b = t, float(ts[j])
            m = 1 if plan.nominal_dt is None else max(1, math.ceil(abs(b - a) / plan.nominal_dt - 1e-9))
            for i in range(m):
                t1 = b if i == m - 1 else a + (b - a) * (i + 1) / m
                try:
                    y, _, _ = rk_step(f, tab, t, t1, y, f(t, y))
                except NonFiniteError as err:
                    raise err.at_step(plan.n_accepted) from None
                plan.n_accepted += 1
                t = t1
            ys.append(y)
        return ys

    t_end = float(ts[-1])
    k0: torch.Tensor | None = f(t, y)
    h = plan.first_step if plan.first_step is not None else first_step_guess(k0, y, abs(float(ts[1]) - t), c)
    h = min(h, c.max_step)
    stall = bad = 0  # bad: non-finite rejections in this solve
    last_bad: NonFiniteError | None = None
    for j in range(1, len(ts)):
        target = float(ts[j])
        sign = 1.0 if target > t else -1.0
        while t != target:
            attempted = plan.n_accepted + plan.n_rejected
            if attempted >= plan.max_steps:
                raise _fail(plan, f, f"more than max_steps={plan.max_steps} steps (accepted + rejected)", t, h,
                            "Loosen rtol/atol, use a fixed-step solver, or raise max_steps")
            remaining = abs(target - t)
            clamped = h >= remaining * (1 - 1e-9)
            hs = remaining if clamped else h
            t1 = target if clamped else t + sign * hs
            if hs <= 16 * math.ulp(max(abs(t), abs(t1))):
                raise _fail(plan, f, "step size underflow", t, hs,
                            "The drift is not smooth (or not finite) here: loosen rtol/atol, use a fixed-step "
                            "solver, or start later (t_min)")
            try:
                if k0 is None:
                    k0 = f(t, y)
                y1, f1, err = rk_step(f, tab, t, t1, y, k0)
                ratio = _error_ratio(err, y, y1, c, segments)  # type: ignore[arg-type]
            except NonFiniteError as e:
                ratio, last_bad = math.inf, e
            if ratio == math.inf:  # a non-finite stage or state: a rejected step, re-evaluate f(t, y)
                plan.n_rejected += 1
                bad += 1
                if bad >= NONFINITE_RETRIES or hs * c.dfactor <= 16 * math.ulp(max(abs(t), abs(t1))):
                    if last_bad is not None:
                        raise last_bad.at_step(plan.n_accepted)
                    raise NonFiniteError("state", t=t1, fraction=1.0, step=plan.n_accepted)
                h, k0 = hs * c.dfactor, None
                continue
            h_new = min(hs * c.factor(ratio, tab.order), c.max_step)
            if ratio <= 1.0:
                plan.n_accepted += 1
                t, y, k0 = t1, y1, f1
                if clamped:  # the save time shortened this step: keep the proposal it interrupted
                    h_new = max(h_new, h)
            else:
                plan.n_rejected += 1
            h = h_new
            budget = plan.max_steps - plan.n_accepted - plan.n_rejected
            stall = stall + 1 if h * max(budget, 1) < abs(t_end - t) else 0
            if stall >= STALL_STEPS:
                raise _fail(plan, f, f"stalled: {STALL_STEPS} consecutive steps too short to reach t={t_end!r} "
                            f"within the remaining {budget} of max_steps={plan.max_steps}", t, h,
                            "The drift is likely discontinuous or stiff here: loosen rtol/atol, use a fixed-step "
                            "solver (e.g. 'torchdiffeq:rk4' with steps=), or raise max_steps")
        ys.append(y)
    return ys


# ------------------------------------------------------------------------------------ torchdiffeq
_TD_OPTIONS = ("first_step", "safety", "ifactor", "dfactor", "max_step", "adjoint_params")


def _check_options(solver: Solver, options: dict[str, Any]) -> None:
    """ValueError naming the unknown keys of ``options`` and the valid ones (``solver.options``)."""
    unknown = sorted(set(options) - set(solver.options))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for solver {solver.name!r}; "
                         f"valid options are: {', '.join(sorted(solver.options))}")


def _warn_kinked_schedule(solver: Solver, dynamics: Any) -> None:
    """Warn when an adaptive t-stepping method meets DiscreteVP, whose drift jumps at every knot of its
    piecewise-linear log α (the step controller then rejects steps at each of the N knots)."""
    from ..processes import DiscreteVP

    if solver.adaptive and isinstance(getattr(dynamics, "process", None), DiscreteVP):
        warnings.warn(f"{solver.name} steps in t, but DiscreteVP's drift jumps at each of its knots "
                      "(log alpha is piecewise linear in t): the step control stalls at tight tolerances "
                      "(dopri5 at 1e-8: ~9k NFE). Use a solver that steps in log-SNR instead, e.g. "
                      "solver='dpm_solver_23' (adaptive) or 'unipc' / 'dpm++3m' (fixed grid).",
                      UserWarning, stacklevel=4)


class TorchdiffeqSolver(Solver):
    """A torchdiffeq method (tableau from torchdiffeq) on sdediff's loop; adaptive ones use ``rtol``/``atol``.

    Options: ``first_step``, ``safety`` (0.9), ``ifactor`` (10), ``dfactor`` (0.2), ``max_step``
    (adaptive), ``adjoint_params`` (the tensors ``adjoint=True`` differentiates; default: the parameters
    of the ``torch.nn.Module``\\ s reachable from the system).
    """

    stochastic: ClassVar[bool] = False
    data_end_ok: ClassVar[bool] = True  # solve() integrates to t_min and takes the denoise step itself
    options: ClassVar[frozenset[str]] = frozenset(_TD_OPTIONS)
    weak_order: ClassVar[None] = None
    strong_order: ClassVar[None] = None

    def __init__(self, method: str) -> None:
        if method not in TABLEAUX:
            raise ValueError(f"unknown torchdiffeq method {method!r}; the installed torchdiffeq has: "
                             f"{', '.join(TABLEAUX)}")
        self._method = method
        self.method = method
        self.name = f"torchdiffeq:{method}"
        self.tableau = TABLEAUX[method]
        self.order = self.tableau.order
        self.adaptive = self.tableau.c_error is not None
        self.nfe_per_step = self.tableau.nfe_per_step

    def plan(self, ctx: SolveContext, span: float) -> Plan:
        opts = dict(ctx.options)
        _check_options(self, opts)
        if not self.adaptive:
            if ctx.dt is not None:
                nominal = float(ctx.dt)
            elif ctx.steps is not None:
                nominal = span / ctx.steps
            else:
                nominal = None
            return Plan(self._method, self.tableau, None, ctx.max_steps, nominal_dt=nominal)
        kw = {k: float(opts[k]) for k in ("safety", "ifactor", "dfactor", "max_step") if k in opts}
        for k, v in kw.items():
            if not v > 0 or (k == "dfactor" and not v < 1) or (k == "ifactor" and not v > 1):
                want = {"dfactor": "in (0, 1)", "ifactor": "> 1"}.get(k, "> 0")
                raise ValueError(f"options {k} must be {want}, got {v!r}")
        first = opts.get("first_step")
        if first is not None and not float(first) > 0:
            raise ValueError(f"options first_step must be > 0, got {first!r}")
        return Plan(self._method, self.tableau, Controller(ctx.rtol, ctx.atol, **kw), ctx.max_steps,
                    first_step=None if first is None else float(first))

    def run(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> RunResult:
        tl = [float(t) for t in ts]
        _warn_kinked_schedule(self, dynamics)
        plan = self.plan(ctx, abs(tl[-1] - tl[0]))
        f = Drift(dynamics, x.dtype, x.device)
        y0 = x.to(work_dtype(x))
        if ctx.adjoint:
            from ._adjoint import adjoint_solve, default_params

            params = ctx.options.get("adjoint_params")
            params = default_params(dynamics) if params is None else tuple(params)
            ys = adjoint_solve(f, y0, tl, plan, tuple(p for p in params if p.requires_grad))
        else:
            ys = torch.stack(integrate(f, y0, tl, plan))
        return RunResult(ys.to(x.dtype), n_steps=plan.n_accepted, n_rejected=plan.n_rejected)

    def __repr__(self) -> str:
        return f"TorchdiffeqSolver({self._method!r})"


# ------------------------------------------------------------------------------------ torchsde
BROWNIAN_DIVISIONS = 1024  # the Brownian interval's resolution hint: span / 1024 whatever the step


class _SDEFunc(torch.nn.Module):
    """torchsde's view of a system: flat ``(B, D)`` state, increasing time ``s = sign * t``."""

    noise_type = "diagonal"

    def __init__(self, dynamics: Any, shape: torch.Size, state_dtype: torch.dtype, sign: float, sde_type: str,
                 s0: float, dt: float, s_end: float) -> None:
        super().__init__()
        self.s0 = s0
        self.dt = dt
        # torchsde steps in the state's dtype: in float32 its stage times (s + h) miss the span's ends by
        # rounding (2e-9 below t_min = 1e-3 from s = 0.05); the float64 time is clamped back onto the span
        self.span = (min(s0, s_end), max(s0, s_end))
        self.dynamics = dynamics
        self.shape = shape
        self.state_dtype = state_dtype
        self.sign = sign
        self.sde_type = sde_type

    def _x(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(self.shape).to(self.state_dtype)

    def _t(self, s: torch.Tensor) -> torch.Tensor:
        return self.sign * s.to(torch.float64).clamp(*self.span)

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = self._t(s)
        try:
            return self.sign * self.dynamics.drift(t, self._x(y)).reshape(y.shape).to(y.dtype)
        except NonFiniteError as err:
            raise err.at_step(math.floor((float(s) - self.s0) / self.dt + 1e-9)) from None

    def g(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = self._t(s)
        x = self._x(y)
        g = torch.broadcast_to(self.dynamics.diffusion(t, x), x.shape).reshape(y.shape).to(y.dtype)
        return g + 0.0 * y  # keeps y in the graph: Milstein differentiates g (here dg/dy = 0)


class TorchsdeSolver(Solver):
    """``torchsde.sdeint`` with ``method`` on Brownian-interval noise keyed by the generator.

    ``order`` is the weak order (what a sampler's distribution error scales with), ``strong_order`` and
    ``weak_order`` both declared, for additive noise.
    """

    stochastic: ClassVar[bool] = True
    data_end_ok: ClassVar[bool] = True  # solve() stops the SDE at the last positive time and denoises
    options: ClassVar[frozenset[str]] = frozenset({"torchsde_options", "dt_min"})

    def __init__(self, method: str) -> None:
        if method not in TORCHSDE_METHODS:
            raise ValueError(f"unknown torchsde method {method!r}; the installed torchsde has: "
                             f"{', '.join(TORCHSDE_METHODS)}")
        self._method = method
        self.method = method
        self.name = f"torchsde:{method}"
        self.strong_order, self.weak_order, self.sde_type = TORCHSDE_METHODS[method]
        self.order = self.weak_order
        self.nfe_per_step = 1

    def run(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> RunResult:
        import torchsde

        from .sde import check_finite_diffusion

        check_finite_diffusion(dynamics, ts, x, self.name)
        sign = 1.0 if bool(ts[-1] > ts[0]) else -1.0
        ss = sign * ts
        span = float(ss[-1] - ss[0])
        on_grid = ctx.dt is None and ctx.steps is None
        if ctx.dt is not None:
            dt = float(ctx.dt)
        elif ctx.steps is not None:
            dt = span / ctx.steps
        elif not ctx.adaptive:
            dt = float(ss.diff().min())  # only for step indices in errors: we step on the grid
        else:
            raise ValueError(f"adaptive {self.name} needs a first step: pass dt=")
        if isinstance(ctx.generator, (list, tuple)):
            raise ValueError(f"{self.name} draws one Brownian path for the whole batch, so a list of per-sample "
                             "generators cannot be honoured; pass one generator, or use sdediff's own SDE "
                             "solvers ('euler_maruyama', 'ancestral', ...) for per-sample noise")
        wd = work_dtype(x)
        b = x.shape[0]
        y0 = x.reshape(b, -1).to(wd)
        func = _SDEFunc(dynamics, x.shape, x.dtype, sign, self.sde_type, float(ss[0]), dt, float(ss[-1]))
        # The path must not depend on the steps: the interval's tree is built from a resolution hint
        # fixed by the span (as sdediff.noise.BrownianNoise does), never from the step size.
        bm = torchsde.BrownianInterval(
            t0=float(ss[0]), t1=float(ss[-1]), size=y0.shape, dtype=wd, device=x.device,
            entropy=seed_from(ctx.generator), dt=span / BROWNIAN_DIVISIONS,
            levy_area_approximation="space-time" if self._method == "srk" else "none",
        )
        adaptive = bool(ctx.adaptive)
        sss = ss.to(wd) if wd != torch.float64 else ss

        _check_options(self, ctx.options)
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

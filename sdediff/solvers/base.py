"""The solver interface, the fixed-step loop and the adaptive loop (a step-size controller over steps).

A solver is a small immutable object: class attributes declare what it is and can do (``order``,
``weak_order``, ``strong_order``, ``stochastic``, ``adaptive``, ``nfe_per_step``, ``data_end_ok``,
``budgeted``, the option keys it reads), and after construction nothing on it can change (assigning
an attribute raises), so one object serves many solves and threads: the registry's solvers cannot be
changed by one caller for the others. Per-solve data (multistep history, noise generators) lives in the
``state`` that :meth:`FixedStepSolver.init` returns and :meth:`FixedStepSolver.step` passes along.

The end of a solve (the step onto the clean data ``t = 0``) is not the solvers' business: the front
door :func:`sdediff.solve` hands them the grid up to the last positive time, tells them (``ctx.data_end``)
that a denoise step follows, and takes that step itself (see :mod:`sdediff.solvers.diffusion`).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import NonFiniteError, SolverError, is_finite, report_nonfinite
from ..noise import GeneratorSpec

__all__ = ["AdaptiveSolver", "FixedStepSolver", "PIController", "RunResult", "Solution", "SolveContext", "Solver",
           "Stats"]


@dataclass(frozen=True)
class Stats:
    """Cost of a solve: network (or drift) evaluations of *this* solve, accepted and rejected steps
    (``n_steps = -1`` where the integrator does not report it: torchsde's adaptive mode)."""

    nfe: int
    n_steps: int
    n_rejected: int = 0


@dataclass(frozen=True)
class Solution:
    """Result of :func:`sdediff.solve`: the final state, the states at the save times, the save times.

    ``xs[k]`` is the state at ``ts[k]``; with ``save="final"`` (the default of :func:`sdediff.sample`)
    both hold the last entry only, so the trajectory costs no memory.
    """

    x: torch.Tensor
    xs: torch.Tensor
    ts: torch.Tensor
    stats: Stats


@dataclass(frozen=True)
class SolveContext:
    """Per-solve options handed to a solver (the solver object itself holds none).

    ``data_end``: the grid handed to the solver stops before the clean-data end and the loop takes a
    denoise step after it (multistep solvers lower their order towards it). ``save``: the indices of
    the solver's grid whose states are kept (``None``: all).
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    steps: int | None = None
    dt: float | None = None
    adaptive: bool | None = None
    max_steps: int = 100_000
    generator: GeneratorSpec = None
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None
    progress: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    data_end: bool = False
    save: frozenset[int] | None = None
    check_state: bool = True
    adjoint: bool = False


@dataclass(frozen=True)
class RunResult:
    """What a solver's :meth:`Solver.run` returns: the states kept (a list for the indices in
    ``ctx.save``, or a tensor ``(len(ts), *x.shape)`` of all of them), step counts, the final state."""

    xs: list[torch.Tensor] | torch.Tensor
    n_steps: int
    n_rejected: int = 0
    x: torch.Tensor | None = None
    #: the model's conversion record at the last time (:class:`~sdediff.model.Coefficients`), where the
    #: solver has one: the final denoise step reuses it instead of evaluating the schedule again
    record: Any = None
    #: ``(ρ_prev, x̂0_prev)``: the model's data prediction at the start of the last step and its noise level
    #: :math:`\rho = \sigma/\alpha`, where the solver kept one, for the extrapolated final step
    #: (:func:`sdediff.solvers.diffusion.denoise`)
    prev: Any = None

    @property
    def final(self) -> torch.Tensor:
        return self.x if self.x is not None else self.xs[-1]


class _Frozen(ABCMeta):
    """Solvers are immutable once constructed (their ``__init__`` may set attributes, nobody after it)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__call__(*args, **kwargs)
        object.__setattr__(obj, "_frozen", True)
        return obj


class Solver(metaclass=_Frozen):
    """Base class. ``run`` integrates ``dynamics`` from ``x`` at ``ts[0]`` through ``ts``.

    Declared capabilities (class or constructor attributes, never looked up with ``getattr``):

    * ``order`` — the deterministic (ODE) convergence order; ``strong_order`` / ``weak_order`` for
      stochastic solvers;
    * ``nfe_per_step`` — evaluations per step (:meth:`nfe_for` gives the count of a whole grid);
    * ``data_end_ok`` — may be used on grids that end at the clean data ``t = 0`` (the loop denoises);
    * ``budgeted`` — spends an exact NFE budget (``options["nfe"]``, :meth:`steps_for_nfe`);
    * ``options`` — the keys of ``solve(options=...)`` it reads (others are refused; ``None``: handed to
      the wrapped library, which checks them);
    * ``auto_grid`` — the grid ``sample(..., grid="auto")`` (the default) runs with it: a grid name, or
      ``"process"`` for the process's own ``default_grid`` (set where benchmarks show it helps this solver).
    """

    name: str = ""
    order: float = 1
    strong_order: float | None = None
    weak_order: float | None = None
    stochastic: bool = False
    adaptive: bool = False
    nfe_per_step: int = 1
    data_end_ok: bool = True
    budgeted: bool = False
    options: frozenset[str] | None = frozenset()
    auto_grid: str = "logsnr"

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(
                f"solvers are immutable: cannot set {name!r} on {self!r}. Build a new one with the setting you "
                f"want (e.g. sd.solvers.EDMHeun(S_churn=10)) and pass it as solver=, or use solve(options=...)"
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"solvers are immutable: cannot delete {name!r} from {self!r}")

    def check_options(self, options: dict[str, Any]) -> None:
        """ValueError naming the unknown keys of ``options`` and the valid ones."""
        if self.options is None:  # passed through to the integrator library, which checks them
            return
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for solver {self.name!r}; "
                             f"valid options are: {valid}")

    def steps_for_nfe(self, nfe: int) -> int:
        """Grid steps that spend ``nfe`` evaluations (budgeted solvers only)."""
        raise ValueError(f"{self.name!r} has no NFE budget rule; give it a number of steps")

    @abstractmethod
    def run(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> RunResult:
        """The state at ``ts[-1]`` and the states at the saved indices of ``ts``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _progress(n: int, name: str, on: bool) -> Any:
    if not on:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=name, leave=False)


class FixedStepSolver(Solver):
    """A solver stepping exactly on the grid ``ts``: the one fixed-step loop lives here."""

    def init(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> Any:
        """Per-solve state (multistep history, noise, ...). ``None`` by default."""
        return None

    @abstractmethod
    def step(self, dynamics: Any, i: int, ts: torch.Tensor, x: torch.Tensor, state: Any,
             ctx: SolveContext) -> tuple[torch.Tensor, Any]:
        """Advance ``x`` from ``ts[i]`` to ``ts[i + 1]``; return the new state and solver state."""

    def nfe_for(self, steps: int) -> int:
        """Evaluations of ``steps`` steps (before a final denoise step, which costs one more)."""
        return steps * self.nfe_per_step

    def last_record(self, state: Any) -> Any:
        """The model's conversion record at the grid's last time, where the per-solve state holds one."""
        return None

    def end_point(self, state: Any) -> Any:
        """``(ρ_prev, x̂0_prev)`` at the start of the last step for the extrapolated final step, where the
        per-solve state kept it (see :attr:`RunResult.prev`); ``None`` by default."""
        return None

    def run(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> RunResult:
        n = len(ts) - 1
        state = self.init(dynamics, x, ts, ctx)
        save, cb, check = ctx.save, ctx.callback, ctx.check_state
        kept = [x] if save is None or 0 in save else []
        for i in _progress(n, self.name or type(self).__name__, ctx.progress):
            try:
                x, state = self.step(dynamics, i, ts, x, state, ctx)
                if check:
                    report_nonfinite("state", x, ts[i + 1])
            except NonFiniteError as err:
                raise err.at_step(i) from None
            if save is None or i + 1 in save:
                kept.append(x)
            if cb is not None:
                cb(i, ts[i + 1], x)
        return RunResult(kept, n_steps=n, x=x, record=self.last_record(state), prev=self.end_point(state))


@dataclass(frozen=True)
class PIController:
    r"""Gustafsson's PI step-size controller (Hairer & Wanner, *Solving ODEs II*, §IV.2).

    After an accepted step with scaled error :math:`E`:
    :math:`h \leftarrow h\,\min(f_{max}, \max(f_{min},\ \theta E^{-\beta_1/k} E_{prev}^{\beta_2/k}))` with
    :math:`\beta_1 = 0.7`, :math:`\beta_2 = 0.4` by default and :math:`E_{prev}` floored at ``err_floor``
    (10⁻⁴, as Hairer's DOPRI5 code: a first step with a vanishing error must not shrink the next one);
    after a rejection :math:`h \leftarrow h\max(f_{min}, \theta E^{-1/k})`; a non-finite proposal shrinks
    ``h`` by 4. A step is accepted when :math:`E \le` ``accept_err`` (1 by default).
    """

    order: int
    theta: float = 0.9
    fac_min: float = 0.2
    fac_max: float = 5.0
    beta1: float = 0.7
    beta2: float = 0.4
    err_floor: float = 1e-4
    accept_err: float = 1.0

    def accepts(self, err: float) -> bool:
        """Whether a step of scaled error ``err`` is accepted."""
        return err <= self.accept_err

    def accept(self, h: float, err: float, err_prev: float) -> float:
        k = self.order
        err_prev = max(err_prev, self.err_floor)
        return h * min(self.fac_max, max(self.fac_min, self.theta * err ** (-self.beta1 / k)
                                          * err_prev ** (self.beta2 / k)))

    def reject(self, h: float, err: float) -> float:
        return h * max(self.fac_min, self.theta * err ** (-1.0 / self.order))


class AdaptiveSolver(Solver):
    """An adaptive solver: a step with an error estimate, driven by :class:`PIController`.

    Subclasses provide :meth:`init` (per-solve state: the model, the variable steps are taken in),
    :meth:`span` (the step variable at each grid time), :meth:`attempt` (one step from ``s`` to ``s + h``
    returning ``(x_new, state, error)``, the error scaled so that ``<= 1`` accepts) and :meth:`accepted`.
    The loop lands on every grid time, retries a non-finite proposal as a rejected step, and raises
    :class:`~sdediff.errors.SolverError` on step-size underflow or past ``max_steps``.
    """

    adaptive = True
    h_min: float = 1e-10

    def init(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> Any:
        return None

    @abstractmethod
    def span(self, state: Any) -> list[float]:
        """The step variable (e.g. λ) at every grid time."""

    @abstractmethod
    def first_step(self, state: Any, ctx: SolveContext) -> float:
        """The first step size (in the step variable, > 0)."""

    @abstractmethod
    def controller(self, state: Any, ctx: SolveContext) -> PIController:
        """The controller of this solve."""

    @abstractmethod
    def attempt(self, state: Any, j: int, s: float, s_new: float, last: bool, x: torch.Tensor,
                ctx: SolveContext) -> tuple[torch.Tensor, Any, float]:
        """One step from ``s`` to ``s_new`` (``last``: ``s_new`` is grid time ``j + 1``):
        ``(x_new, state, scaled error)``. A non-finite model output raises NonFiniteError."""

    @abstractmethod
    def accepted(self, state: Any) -> Any:
        """The state after an accepted step (clear what belonged to the old point)."""

    def time_of(self, state: Any, s: float) -> float:
        """The time at step variable ``s`` (for messages)."""
        return s

    def reached(self, state: Any, s_new: float) -> float:
        """The step variable actually reached by an accepted step aimed at ``s_new``."""
        return s_new

    def end_point(self, state: Any) -> Any:
        """``(ρ_prev, x̂0_prev)`` for the extrapolated final step (:attr:`RunResult.prev`); ``None`` by default."""
        return None

    def run(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> RunResult:
        out_dtype = x.dtype
        save = ctx.save
        kept = [x] if save is None or 0 in save else []
        state = self.init(dynamics, x, ts, ctx)  # sees the state dtype (a half network gets half input)
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # the work dtype: steps and error norms of half states run in float32
        grid = self.span(state)
        ctrl = self.controller(state, ctx)
        n_acc = n_rej = 0
        h = self.first_step(state, ctx)
        err_prev = 1.0
        for j in range(len(grid) - 1):
            s, s_end = grid[j], grid[j + 1]
            sign = 1.0 if s_end > s else -1.0
            while sign * (s_end - s) > 1e-12 * max(1.0, abs(s_end)):
                if n_acc + n_rej >= ctx.max_steps:
                    raise SolverError(f"{self.name}: more than max_steps={ctx.max_steps} steps (accepted + rejected) "
                                      f"at t={self.time_of(state, s)!r} (dt={h:.3g}); loosen rtol/atol or raise "
                                      "max_steps",
                                      t=self.time_of(state, s), dt=h)
                if h < self.h_min:
                    raise SolverError(f"{self.name}: step size underflow (step {h:.3g}) at "
                                      f"t={self.time_of(state, s)!r}; the model is not smooth or not finite here. "
                                      "Loosen rtol/atol or use a fixed-step solver", t=self.time_of(state, s), dt=h)
                hs = min(h, sign * (s_end - s))
                last = hs >= sign * (s_end - s) * (1 - 1e-12)
                s_new = s_end if last else s + sign * hs
                try:
                    x_new, trial, err = self.attempt(state, j, s, s_new, last, x, ctx)
                    ok = is_finite(x_new)
                except NonFiniteError:
                    ok, trial = False, state
                if not ok:
                    n_rej += 1
                    state = trial
                    h = hs / 4.0
                    continue
                if ctrl.accepts(err):
                    n_acc += 1
                    x, s = x_new, (s_end if last else self.reached(trial, s_new))
                    state = self.accepted(trial)
                    h = ctrl.accept(hs, err, err_prev)
                    err_prev = err
                else:
                    n_rej += 1
                    state = trial
                    h = ctrl.reject(hs, err)
            if save is None or j + 1 in save:
                kept.append(x.to(out_dtype))
        return RunResult(kept, n_steps=n_acc, n_rejected=n_rej, x=x.to(out_dtype), prev=self.end_point(state))

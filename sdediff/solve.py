"""The front door: ``solve`` integrates a system over a time grid and returns a :class:`Solution`.

``solve`` accepts a dynamics object (:func:`~sdediff.probability_flow`, :func:`~sdediff.reverse_sde`,
a force field, an :class:`~sdediff.dynamics.ODE`), a model (integrated along its probability-flow
ODE, or its reverse SDE when the solver is stochastic) or a process (its forward SDE).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from ._utils import (
    as_grid,
    check_choice,
    check_device,
    check_finite,
    check_float_dtype,
    check_positive,
    check_time_range,
)
from .counting import counting
from .dynamics import ForwardSDE, ProbabilityFlow, ReverseSDE
from .errors import NonFiniteError, nonfinite_policy, report_nonfinite
from .model import ScoreModel
from .noise import GeneratorSpec, live_generators
from .processes import Process
from .solvers import get_solver
from .solvers._adjoint import check_adjoint, run_adjoint, solver_options
from .solvers.base import FixedStepSolver, RunResult, Solution, SolveContext, Solver, Stats
from .solvers.diffusion import FINAL_STEPS, denoise, is_data_end, model_of
from .solvers.external import TorchsdeSolver

Save = str | Sequence[float] | torch.Tensor

__all__ = ["DEFAULT_GRID", "DEFAULT_SOLVER", "DEFAULT_STEPS", "Solution", "Stats", "as_dynamics", "sample", "solve"]

DEFAULT_SOLVER = "ipndm"
""":func:`sample`'s default solver (also of :func:`sdediff.distributed.sample_many` and the diffusers
:class:`~sdediff.integrations.diffusers.Scheduler`). Chosen by evidence (``benchmarks/RESULTS.md``, "Defaults
by evidence"): over the four exact targets of :mod:`sdediff.bench_targets` at NFE 5–25, iPNDM had the smallest
geometric-mean and worst-case error ratio to the best peer configuration, on a seed apart from the one
reported."""
DEFAULT_GRID = "auto"
""":func:`sample`'s default grid: the solver's ``auto_grid`` (``logsnr`` for most), or, for the solvers whose
``auto_grid`` is ``"process"`` (:data:`DEFAULT_SOLVER` among them), the process's own ``default_grid``
(:func:`sdediff.timesteps.auto`: ``time_quadratic`` on DiscreteVP and VPSDE, ``karras`` on EDM, ``logsnr``
elsewhere). With
:data:`DEFAULT_SOLVER` this rule had a geometric-mean ratio to the best peer of 1.34 on the selection seed,
against 1.62 for the λ-uniform grid everywhere (``benchmarks/defaults.py select``)."""
DEFAULT_STEPS = 20
""":func:`sample`'s default number of steps (the final step onto the data included)."""


def as_dynamics(system: Any, solver: Solver | None = None) -> Any:
    """A model becomes its PF-ODE (or reverse SDE for stochastic solvers); a process its forward SDE."""
    if isinstance(system, ScoreModel):
        return ReverseSDE(system, 1.0) if solver is not None and solver.stochastic else ProbabilityFlow(system)
    if isinstance(system, Process):
        return ForwardSDE(system)
    for attr in ("drift", "diffusion"):
        if not callable(getattr(system, attr, None)):
            raise TypeError(
                f"expected a model, a process or a dynamics object with drift(t, x) and diffusion(t, x); "
                f"{type(system).__name__} has no {attr}()"
            )
    missing = [a for a in ("is_ode", "t_min", "T", "nfe") if not hasattr(system, a)]
    if missing:
        raise TypeError(f"{type(system).__name__} lacks {', '.join(missing)} of the Dynamics protocol; wrap a "
                        "drift function in sdediff.ODE(func, t_min=..., T=...) or add these attributes")
    return system


def _time_grid(ts: Any, t0: float | None, t1: float | None, solver: Solver, steps: int | None,
               dt: float | None, device: torch.device) -> torch.Tensor:
    """The grid: ``ts`` as given, or ``t0 -> t1``. sdediff's fixed-step solvers step on the grid, so for
    them ``steps``/``dt`` with ``t0``/``t1`` build a uniform one (``dt`` rounded to fit the span), and
    combining them with ``ts`` is an error rather than silently ignored."""
    own_fixed = isinstance(solver, FixedStepSolver)
    if steps is not None and dt is not None:
        raise ValueError(f"pass steps= or dt=, not both (got steps={steps!r}, dt={dt!r})")
    if ts is not None:
        if t0 is not None or t1 is not None:
            raise ValueError("pass either ts= or t0= and t1=, not both")
        if own_fixed and (steps is not None or dt is not None):
            raise ValueError(f"{solver.name!r} steps exactly on the grid ts, so steps=/dt= would be ignored; "
                             "pass t0=, t1= with steps=/dt=, or a grid ts with the steps you want")
        return as_grid(ts, device=device)
    if t0 is None or t1 is None:
        raise ValueError("pass the times: ts=[...] (save/step grid) or t0= and t1=")
    if own_fixed and dt is not None:
        steps = max(1, math.ceil(abs(float(t1) - float(t0)) / dt - 1e-9))
    if own_fixed and steps is not None:
        return as_grid(torch.linspace(float(t0), float(t1), steps + 1, dtype=torch.float64), device=device)
    return as_grid([float(t0), float(t1)], device=device)


def _save_indices(save: Save, grid: torch.Tensor) -> frozenset[int] | None:
    """The grid indices whose states a solve keeps: ``"all"`` (``None``), ``"final"``, or given times."""
    n = len(grid)
    if isinstance(save, str):
        check_choice("save", save, ("all", "final"))
        return None if save == "all" else frozenset({n - 1})
    times = as_grid(save, name="save").tolist() if not isinstance(save, (float, int)) else [float(save)]
    gl = grid.tolist()
    out = set()
    for t in times:
        hits = [k for k, g in enumerate(gl) if abs(g - t) <= 1e-12 * max(1.0, abs(g))]
        if not hits:
            raise ValueError(f"save time {t!r} is not a time of the grid ts; save= picks states at grid times "
                             "(add the time to ts, or pass save='all' / 'final')")
        out.add(hits[0])
    return frozenset(out)


def solve(system: Any, x: torch.Tensor, *, ts: Sequence[float] | torch.Tensor | None = None,
          t0: float | None = None, t1: float | None = None, solver: str | Solver = "dopri5",
          rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None, dt: float | None = None,
          adaptive: bool | None = None, max_steps: int = 100_000, generator: GeneratorSpec = None,
          on_nonfinite: str = "raise", callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
          progress: bool = False, options: dict[str, Any] | None = None, save: Save = "all",
          adjoint: bool = False, final_step: str = "extrapolate") -> Solution:
    """Integrate ``system`` from ``x`` at ``ts[0]`` (or ``t0``) through ``ts`` (or to ``t1``).

    Args:
        system: dynamics, model or process (see the module docstring).
        x: the initial state, any shape ``(B, ...)``, any floating dtype.
        ts: strictly monotone times (float64); the solution is saved at each. Decreasing grids
            integrate backwards (sampling); increasing ones forwards (encoding). A decreasing grid
            of a diffusion model may end at ``t = 0``: the last step is then a denoise onto the clean
            data (see :mod:`sdediff.solvers.diffusion`), for every solver.
        t0, t1: instead of ``ts``: the end points (a fixed-step sdediff solver then takes ``steps``
            uniform steps).
        solver: a name in :data:`sdediff.solvers.SOLVERS` or a :class:`~sdediff.solvers.Solver`.
        rtol, atol: tolerances of adaptive solvers (> 0).
        steps, dt: step count or size for fixed-step external solvers (ignored, with a warning,
            by adaptive ODE solvers).
        adaptive: torchsde solvers only: adaptive steps with ``rtol``/``atol``.
        max_steps: bound on adaptive steps (a :class:`~sdediff.errors.SolverError` past it).
        generator: randomness for stochastic solvers (a generator, an int seed, or one per sample).
        on_nonfinite: ``"raise"`` a :class:`~sdediff.errors.NonFiniteError` naming the step and t
            when a model output or the state becomes NaN/inf, or ``"warn"`` and go on.
        callback: ``callback(i, t, x)`` after each step of a fixed-step sdediff solver.
        progress: show a progress bar (fixed-step sdediff solvers).
        options: solver-specific options (the keys each solver declares in ``solver.options``;
            unknown keys raise).
        final_step: the last step onto a data end ``t = 0``: ``"extrapolate"`` (default) extrapolates the
            model's data predictions at the last two grid times to σ = 0 (no extra NFE; no error floor
            from the last noise level), ``"x0"`` takes the plain :math:`\\hat x_0` at the last positive time
            (see :func:`sdediff.solvers.diffusion.denoise`). With ``adjoint=True`` the final step is the plain one.
        save: which states to keep: ``"all"`` grid times (default), ``"final"`` only (no trajectory
            memory), or a sequence of grid times.
        adjoint: differentiate by the adjoint method, memory flat in the steps (torchdiffeq solvers and
            sdediff's deterministic fixed-step ones; for the latter the gradient is the continuous adjoint,
            approximate to the solver's order: see :func:`sdediff.solvers._adjoint.run_adjoint`);
            ``options={"adjoint_params": ...}`` names the tensors, default the system's module parameters.

    Returns:
        :class:`Solution` with ``x`` (state at the last time), ``xs`` (the saved states, stacked),
        ``ts`` (their times, float64) and ``stats`` (``nfe`` of this solve, ``n_steps``, ``n_rejected``).
    """
    check_choice("on_nonfinite", on_nonfinite, ("raise", "warn"))
    solver_obj = get_solver(solver)
    dyn = as_dynamics(system, solver_obj)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}"
                        f"{'' if not isinstance(x, torch.Tensor) else ' of dtype ' + str(x.dtype)}")
    if x.ndim == 0:
        raise ValueError("x must have a batch dimension: shape (B, ...), got a 0-d tensor")
    check_finite("x", x)
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if dt is not None:
        check_positive("dt", dt)
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
    if adaptive and not isinstance(solver_obj, TorchsdeSolver):
        raise ValueError(f"adaptive=True is for torchsde solvers (e.g. 'srk'); {solver_obj.name or solver!r} "
                         "is not one: pick an adaptive solver such as 'dopri5' or 'dpm_solver_23' instead")
    if adjoint:
        check_adjoint(solver_obj, solver)
    if (steps is not None or dt is not None) and solver_obj.adaptive and not solver_obj.stochastic:
        warnings.warn(f"steps/dt are ignored by the adaptive solver {solver_obj.name!r}; it picks its own "
                      "steps from rtol/atol (see Solution.stats.nfe)", UserWarning, stacklevel=2)
    if not solver_obj.stochastic and not dyn.is_ode:
        raise ValueError(f"the ODE solver {solver_obj.name or solver!r} cannot integrate a stochastic system "
                         f"({type(dyn).__name__}); use an SDE solver such as 'srk' or 'torchsde:euler'")
    if final_step not in FINAL_STEPS:
        raise ValueError(f"final_step must be one of {', '.join(map(repr, FINAL_STEPS))}, got {final_step!r}")
    opts = dict(options or {})
    solver_obj.check_options(solver_options(solver_obj, opts) if adjoint else opts)

    grid = _time_grid(ts, t0, t1, solver_obj, steps, dt, x.device)
    # The end of the solve (one place for every solver): a last time 0 of a diffusion model's
    # decreasing grid is the clean-data end; the solver integrates to the last positive time
    # (adaptive solvers on to t_min) and the loop denoises onto it (sdediff.solvers.diffusion).
    data_end = solver_obj.data_end_ok and is_data_end(grid) and model_of(dyn) is not None
    check_time_range("ts", grid[:-1] if data_end else grid, dyn.t_min, dyn.T)
    keep = _save_indices(save, grid)
    if len(grid) == 1 or x.shape[0] == 0:
        n_keep = len(grid) if keep is None else len(keep)
        xs = x.unsqueeze(0).expand(n_keep, *x.shape).clone()
        return Solution(x=x.clone(), xs=xs, ts=grid if keep is None else grid[sorted(keep)],
                        stats=Stats(nfe=0, n_steps=0))

    inner = grid[:-1] if data_end else grid
    inner_keep = keep if keep is None else frozenset(k for k in keep if k < len(inner))  # the denoised end apart
    if data_end and solver_obj.adaptive and float(inner[-1]) > dyn.t_min:
        inner = torch.cat([inner, inner.new_tensor([dyn.t_min])])  # adaptive solvers run on to t_min
        inner_keep = frozenset(range(len(inner) - 1)) if keep is None else inner_keep
    ctx = SolveContext(rtol=float(rtol), atol=float(atol), steps=steps, dt=dt, adaptive=adaptive,
                       max_steps=max_steps, generator=generator, callback=callback, progress=progress,
                       options=opts, data_end=data_end, save=inner_keep,
                       check_state=model_of(dyn) is None, adjoint=bool(adjoint))
    nfe0 = dyn.nfe
    with nonfinite_policy(on_nonfinite), counting() as counter:
        # one grid point before the data end: nothing to integrate, only the denoise step
        run = partial(run_adjoint, solver_obj) if adjoint else solver_obj.run
        res = run(dyn, x, inner, ctx) if len(inner) > 1 else RunResult([x], n_steps=0, x=x)
        final = res.final
        xs = res.xs if not isinstance(res.xs, torch.Tensor) else _pick(res.xs, inner_keep)
        if data_end:
            try:
                final = denoise(dyn, float(inner[-1]), final, res.record, res.prev, final_step)
            except NonFiniteError as err:
                raise err.at_step(res.n_steps) from None
            if keep is None or len(grid) - 1 in keep:
                xs = [*xs, final]
            if callback is not None:
                callback(len(inner) - 1, grid[-1], final)
        report_nonfinite("state", final, grid[-1])
    nfe = counter.n if counter.n else dyn.nfe - nfe0
    stats = Stats(nfe=nfe, n_steps=res.n_steps + int(data_end), n_rejected=res.n_rejected)
    return Solution(x=final, xs=torch.stack(list(xs)), ts=grid if keep is None else grid[sorted(keep)], stats=stats)


def _pick(xs: torch.Tensor, keep: frozenset[int] | None) -> list[torch.Tensor]:
    """The kept rows of an integrator's full trajectory tensor."""
    return list(xs) if keep is None else [xs[k] for k in sorted(keep)]


def _check_sampling_direction(grid: torch.Tensor) -> None:
    """``sample`` goes from noise down to data: an increasing grid would silently encode instead."""
    if len(grid) > 1 and float(grid[-1]) > float(grid[0]):
        raise ValueError(f"sample() runs from noise (t = T) down to data, so grid must decrease; got increasing "
                         f"times from {float(grid[0])!r} to {float(grid[-1])!r}. To go up from data to noise use "
                         "sd.encode(model, x) (or sd.solve(model, x, ts=<increasing times>)); to sample, "
                         "reverse the grid")


def sampling_steps(steps: int | None, grid: Any) -> int:
    """The step count :func:`sample` runs: ``steps``, or a :class:`~sdediff.CalibratedGrid`'s own count (another
    one given is refused), or :data:`DEFAULT_STEPS` when not given."""
    from .calibration import CalibratedGrid

    if isinstance(grid, CalibratedGrid):
        steps = grid.steps_for(steps)
    steps = DEFAULT_STEPS if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    return steps


def sample(model: ScoreModel, shape: Sequence[int], *, solver: str | Solver = DEFAULT_SOLVER, steps: int | None = None,
           grid: str | Sequence[float] | torch.Tensor | Callable[..., torch.Tensor] = DEFAULT_GRID,
           denoise: bool | str = True, generator: GeneratorSpec = None, x_T: torch.Tensor | None = None,
           dtype: torch.dtype | None = None, device: torch.device | str | None = None,
           rtol: float = 1e-4, atol: float = 1e-4, on_nonfinite: str = "raise",
           callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None, progress: bool = False,
           options: dict[str, Any] | None = None, save: Save = "final") -> Solution:
    """Draw samples of ``model``: prior noise at ``T``, then ``steps`` solver steps to the data.

    ``x0 = sd.sample(model, (16, 3, 32, 32), solver="dpm++2m", steps=10, generator=g).x``

    Args:
        model: a :class:`~sdediff.DiffusionModel` (or guidance wrapper) of a linear process.
        shape: the batch shape ``(B, ...)``.
        solver: a name in :data:`sdediff.solvers.SOLVERS` or a solver object (default
            :data:`DEFAULT_SOLVER`, ``"ipndm"``). Stochastic solvers sample the reverse SDE (η = 1), the others
            the probability-flow ODE.
        steps: solver steps (grid intervals; default 20); for ``dpm_solver_fast`` the NFE budget.
            Ignored, with a warning, by adaptive solvers (they use ``rtol``/``atol``).
        grid: a name in :data:`sdediff.timesteps.GRIDS` (default ``"auto"``: the solver's ``auto_grid``,
            or the process's ``default_grid`` for ``ipndm`` and the others that defer to it;
            :data:`DEFAULT_GRID`), a callable ``grid(process, n)``,
            or the times themselves (validated, decreasing; ``steps`` is then ignored), or a
            :class:`~sdediff.CalibratedGrid` (its times and per-step scales; ``steps``, if given, must be its
            ``steps``). Going up from data
            to noise is :func:`sdediff.encode` (or :func:`solve` with an increasing ``ts``).
        denoise: end on the clean data (``t = 0``, σ = 0): a named continuous grid gets ``steps - 1``
            steps to ``t_min`` and a final denoise step (see :mod:`sdediff.solvers.diffusion`), for
            every solver; ``False`` stops at ``t_min``. The final step extrapolates the data predictions at
            the last two grid times to σ = 0 (``True`` or ``"extrapolate"``: no extra NFE, no error floor
            from the last noise level) or is the plain :math:`\\hat x_0` there (``"x0"``); see
            :func:`sdediff.solvers.diffusion.denoise`.
        generator: a generator, an int seed, or one per sample (sample ``k`` is then the same
            whatever the batch size); drives the prior draw and the solver's noise.
        x_T: start from this state instead of a prior draw.
        progress: a tqdm progress bar over the steps (fixed-step solvers).
        callback: ``callback(i, t, x)`` after each step.
        save: ``"final"`` (default: no trajectory kept; ``xs`` holds the samples only), ``"all"``, or
            grid times (see :func:`solve`).

    Returns:
        :class:`Solution`: ``x`` the samples, ``xs``/``ts`` the saved states, ``stats.nfe`` the
        network evaluations of this call.
    """
    from . import timesteps

    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be an sdediff model (DiffusionModel, ...), got {type(model).__name__}")
    solver_obj = get_solver(solver)
    if steps is not None and solver_obj.adaptive:
        warnings.warn(f"steps={steps!r} is ignored by the adaptive solver {solver_obj.name!r}; it picks its own "
                      "steps from rtol/atol (see Solution.stats.nfe)", UserWarning, stacklevel=2)
    from .calibration import CalibratedGrid

    steps = sampling_steps(steps, grid)
    check_float_dtype("dtype", dtype)
    check_device("device", device)
    if isinstance(grid, (torch.Tensor, list, tuple)):
        _check_sampling_direction(as_grid(grid, name="grid"))
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) == 0 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
        raise ValueError(f"shape must be a non-empty sequence of ints >= 0 (batch first), got {shape!r}")
    process = model.process
    gen = live_generators(generator)
    if not (isinstance(denoise, bool) or denoise in FINAL_STEPS):
        raise ValueError(f"denoise must be True, False or one of {', '.join(map(repr, FINAL_STEPS))}, got {denoise!r}")
    final_step = denoise if isinstance(denoise, str) else "extrapolate"
    denoise = bool(denoise) and solver_obj.data_end_ok
    ts_grid = timesteps.sampling_grid(process, solver_obj, steps, grid, denoise=denoise)
    _check_sampling_direction(ts_grid)
    if isinstance(grid, CalibratedGrid):  # with per-step scales it runs the model through EpsScaled
        model = grid.model_for(model)
    opts = dict(options or {})
    if solver_obj.budgeted and (isinstance(grid, str) or callable(grid)) and not solver_obj.adaptive:
        opts.setdefault("nfe", steps - 1 if denoise else steps)
    if x_T is None:
        x_T = process.prior_sample(tuple(shape), generator=gen, dtype=dtype, device=device)
    elif tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)}; pass matching ones")
    return solve(model, x_T, ts=ts_grid.to(x_T.device), solver=solver_obj, generator=gen, rtol=rtol, atol=atol,
                 on_nonfinite=on_nonfinite, callback=callback, progress=progress, options=opts, save=save,
                 final_step=final_step)

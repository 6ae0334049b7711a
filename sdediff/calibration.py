r"""Calibrated time grids: fit the times of a fixed-step solver's grid to a model, for one NFE budget.

``cg = sd.timesteps.calibrate(model, "dpm++2m", nfe=8)`` then ``sd.sample(model, shape, solver="dpm++2m", grid=cg)``.

**What is fitted.** For a solver and an NFE budget the number of grid steps is fixed (the most whose
measured ``Solution.stats.nfe`` fits the budget, the final denoise step included). The grid between the
fixed ends :math:`t_0 = T` and :math:`t_n = t_{min}` (then ``t = 0`` when ``denoise``: the data end that
:func:`sdediff.sample` appends to a named grid) is parametrised in the half log-SNR
:math:`\lambda = \log(\alpha/\sigma)`:

.. math::

    \lambda_k = \lambda(T) + (\lambda(t_{min}) - \lambda(T)) \sum_{j<k} w_j, \qquad
    w = \epsilon + (1 - n\epsilon)\,\mathrm{softmax}(0, \theta_1, \dots, \theta_{n-1}),

so every parameter vector :math:`\theta \in \mathbb R^{n-1}` is a valid strictly monotone grid
(:math:`\epsilon = 10^{-6}` keeps the steps apart); :math:`t_k = t(\lambda_k)` by
:meth:`~sdediff.LinearProcess.t_from_log_snr` (the λ ends clipped to
:data:`sdediff.timesteps.LAMBDA_CLIP` where α or σ reaches 0).

**Loss.** The RMSE per coordinate between ``sd.sample(model, ..., grid=times, x_T=x_T).x`` and a
reference end from the same :math:`x_T` (default: the float64 adaptive solve of the same model's
PF-ODE that :func:`sdediff.benchmark` uses), over ``n_samples`` prior draws. It is minimised by a
derivative-free method over :math:`\theta` (Powell's by default; ``max_evals`` and ``max_seconds``, CPU
seconds for the whole call apart from the reference solve, stop it; the best point seen is kept),
warm-started from the best standard grid (``logsnr``, ``karras``,
``time_uniform``, ``time_quadratic``) on the same draws, or from ``init=``.

**Validation.** The result is scored on ``n_validation`` *separate* prior draws (the next draws of the
same generator, or the draws given as ``validation=``, e.g. those a peer benchmark ran on), as is the
warm start: :attr:`CalibratedGrid.validation_rmse` against :attr:`CalibratedGrid.init_validation_rmse`
says whether the calibration generalises.

**Choosing the solver.** ``solver=`` may be a sequence (e.g. ``("ipndm", "dpm++2m", "unipc")``): each is
calibrated on the same draws and reference, ``max_evals`` and ``max_seconds`` are split evenly among them
(the call's budget is that of one), and the grid with the smallest *calibration* RMSE is returned (the
validation draws play no part in the choice); ``provenance["candidates"]`` records every solver's errors.
Which solver calibrates best changes with the model and the budget (``benchmarks/calibration.md``).

**Per-step correction coefficients.** With ``eps_scale=True`` the fit goes on, the times held fixed, to one
scale :math:`s_k` of the noise prediction per step, :math:`\tilde\epsilon = s_k\hat\epsilon` for the
evaluations in step :math:`k` (:class:`~sdediff.model.EpsScaled`; equivalently
:math:`\tilde x_0 = s_k \hat x_0 + (1 - s_k)x/\alpha`), parametrised as :math:`s_k = e^{\gamma_k}` from
:math:`\gamma = 0` (the fitted times alone). It absorbs part of each step's discretisation error, as the learned
solver coefficients of S4S (Frankel et al., ICML 2025) do with a full set per step, and the ε-scaling of Ning et
al. (ICLR 2024) does with one hand-set schedule. The times get half of the budget and the scales the rest (with
several solvers: the times of each, then the scales of the winner). The result's ``eps_scale`` holds the scales
(``None`` when none lowered the calibration loss); :func:`sdediff.sample` and the diffusers Scheduler apply them
with the grid; ``provenance["grid_validation_rmse"]`` is the validation RMSE of the times alone, to set against
:attr:`CalibratedGrid.validation_rmse`.

**Continuation.** ``init=`` also takes a :class:`CalibratedGrid` fitted for another budget: its
cumulative λ-fractions are interpolated (monotone, piecewise linear) to the new number of steps, and the
warm start is the best of that grid and :data:`INIT_GRIDS` on the calibration draws
(``benchmarks/calibration.py --chain`` fits a ladder of budgets this way).

A :class:`CalibratedGrid` is passed as ``grid=`` to :func:`sdediff.sample` (its times are used; a
different solver than the fitted one warns) and to the diffusers
:class:`~sdediff.integrations.diffusers.Scheduler`; :meth:`CalibratedGrid.save` / :meth:`CalibratedGrid.load`
keep it as a small JSON file.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._utils import TIME_DTYPE, as_grid, check_time_range
from .processes import LinearProcess, Process

__all__ = ["FORMAT_VERSION", "INIT_GRIDS", "CalibratedGrid", "calibrate"]

FORMAT_VERSION = 2
"""Version of the JSON format of :meth:`CalibratedGrid.save` (:meth:`CalibratedGrid.load` reads it and version 1,
which has no ``eps_scale``, and refuses others)."""
_READABLE_VERSIONS = (1, 2)
#: With ``eps_scale=True``: the share of the budget the times get (the scales get the rest).
_GRID_SHARE = 0.5
_FORMAT = "sdediff.CalibratedGrid"
INIT_GRIDS = ("logsnr", "karras", "time_uniform", "time_quadratic")
"""The standard grids the warm start is chosen from (the best on the calibration draws)."""
#: The smallest λ-step, as a fraction of the whole λ range (keeps the fitted grid strictly monotone).
MIN_FRACTION = 1e-6
OPTIMIZERS = ("powell", "nelder-mead")


@dataclass(frozen=True, eq=False)
class CalibratedGrid:
    """A time grid fitted to a model for one solver and NFE budget (see :mod:`sdediff.calibration`).

    Attributes:
        times: float64, strictly decreasing, from ``T`` to ``t_min`` (then ``0`` when ``denoise``):
            the ``ts`` that :func:`sdediff.sample` runs.
        solver: the registry name of the solver it was fitted for.
        nfe: the NFE budget; ``steps`` = ``len(times) - 1`` the grid's steps (the denoise step included).
        denoise: whether the grid ends on the clean data ``t = 0``.
        calibration_rmse, validation_rmse: RMSE per coordinate vs the reference on the calibration
            draws and on the separate validation draws.
        init_grid: the warm start (a grid name, or ``"times"`` for a given grid);
            init_validation_rmse: its validation RMSE (the figure to beat).
        provenance: how it was made (sdediff version, process, model class, sample counts, seeds,
            optimiser, evaluations, wall and CPU seconds, reference, date).
        eps_scale: ``None``, or one noise-prediction scale per step (``calibrate(..., eps_scale=True)``):
            :func:`sdediff.sample` then runs the model through :class:`~sdediff.model.EpsScaled` on these
            times; ``provenance["grid_validation_rmse"]`` is the validation RMSE of the times alone.
    """

    times: torch.Tensor
    solver: str
    nfe: int
    steps: int
    denoise: bool
    calibration_rmse: float
    validation_rmse: float
    init_grid: str
    init_validation_rmse: float
    provenance: dict[str, Any] = field(default_factory=dict)
    eps_scale: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        ts = as_grid(self.times, name="times")
        if len(ts) < 2 or not float(ts[0]) > float(ts[-1]):
            raise ValueError(f"CalibratedGrid times must decrease from T to the data end (at least 2 times), got "
                             f"{ts.tolist()}")
        object.__setattr__(self, "times", ts.clone())
        if self.steps != len(ts) - 1:
            raise ValueError(f"CalibratedGrid steps={self.steps!r} but the times hold {len(ts) - 1} steps")
        if self.denoise != (float(ts[-1]) == 0.0):
            raise ValueError(f"CalibratedGrid denoise={self.denoise!r} but the times end at {float(ts[-1])!r} "
                             "(a denoising grid ends at t = 0, the others at t_min)")
        if self.eps_scale is not None:
            sc = tuple(float(v) for v in self.eps_scale)
            if len(sc) != self.steps or not all(math.isfinite(v) and v > 0 for v in sc):
                raise ValueError(f"CalibratedGrid eps_scale must hold {self.steps} finite values > 0 (one per step), "
                                 f"got {list(sc)}")
            object.__setattr__(self, "eps_scale", sc)

    # ------------------------------------------------------------------ use
    def times_for(self, process: Process, solver: Any = None, *, denoise: bool | None = None) -> torch.Tensor:
        """The times for a solve of ``process`` (checked to lie in its range), warning when ``solver``
        or ``denoise`` differ from the fitted ones (the times are then used as they are)."""
        name = getattr(solver, "name", solver)
        if solver is not None and name != self.solver:
            warnings.warn(f"this CalibratedGrid was fitted for solver {self.solver!r}, not {name!r}: its times are "
                          f"used as they are, but their accuracy ({self.validation_rmse:.3g}) was measured with "
                          f"{self.solver!r}; pass solver={self.solver!r} or calibrate for {name!r}",
                          UserWarning, stacklevel=4)
        if denoise is not None and bool(denoise) != self.denoise:
            warnings.warn(f"this CalibratedGrid was fitted with denoise={self.denoise}; its times "
                          f"({'ending at t = 0' if self.denoise else 'ending at t_min'}) are used as they are",
                          UserWarning, stacklevel=4)
        ts = self.times
        inner = ts[:-1] if self.denoise else ts
        try:
            check_time_range("CalibratedGrid times", inner, process.t_min, process.T)
        except ValueError as e:
            raise ValueError(f"{e}. This grid was fitted on {self.provenance.get('process', 'another process')}; "
                             f"the model's process is {process!r}") from None
        return ts.clone()

    def steps_for(self, steps: int | None, name: str = "steps") -> int:
        """This grid's step count, for a call that gave ``name=steps`` (``None``: not given); another count is
        a mismatch, refused rather than ignored."""
        if steps is not None and steps != self.steps:
            raise ValueError(f"the grid is a CalibratedGrid of {self.steps} steps (fitted for {self.solver!r} at NFE "
                             f"{self.nfe}); {name}={steps!r} disagrees. Pass {name}={self.steps} (or leave it out "
                             "where it may be), or calibrate a grid for the budget you want")
        return self.steps

    def model_for(self, model: Any) -> Any:
        """``model`` as :func:`sdediff.sample` runs it on this grid: wrapped in
        :class:`~sdediff.model.EpsScaled` when the grid carries per-step scales, else unchanged."""
        if self.eps_scale is None:
            return model
        from .model import EpsScaled

        return EpsScaled(model, self.times, self.eps_scale)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready record (times as exact float64 values)."""
        return {"format": _FORMAT, "version": FORMAT_VERSION, "times": [float(v) for v in self.times],
                "solver": self.solver, "nfe": self.nfe, "steps": self.steps, "denoise": self.denoise,
                "calibration_rmse": self.calibration_rmse, "validation_rmse": self.validation_rmse,
                "init_grid": self.init_grid, "init_validation_rmse": self.init_validation_rmse,
                "provenance": dict(self.provenance),
                "eps_scale": None if self.eps_scale is None else list(self.eps_scale)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CalibratedGrid:
        """Rebuild from :meth:`to_dict`'s record (ValueError naming a missing or bad field)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a CalibratedGrid record must be a JSON object, got {type(d).__name__}")
        if d.get("format") != _FORMAT:
            raise ValueError(f"not a CalibratedGrid file: field 'format' is {d.get('format')!r}, expected {_FORMAT!r}")
        if d.get("version") not in _READABLE_VERSIONS:
            raise ValueError(f"unknown CalibratedGrid format version {d.get('version')!r}; this sdediff reads "
                             f"versions {', '.join(map(str, _READABLE_VERSIONS))} (save the grid again with a "
                             "matching sdediff)")
        kinds: dict[str, tuple[type, ...]] = {
            "times": (list,), "solver": (str,), "nfe": (int,), "steps": (int,), "denoise": (bool,),
            "calibration_rmse": (int, float), "validation_rmse": (int, float), "init_grid": (str,),
            "init_validation_rmse": (int, float), "provenance": (dict,)}
        for key, kind in kinds.items():
            if key not in d:
                raise ValueError(f"CalibratedGrid record lacks the field {key!r}")
            v = d[key]
            if not isinstance(v, kind) or (bool not in kind and isinstance(v, bool)):
                raise ValueError(f"CalibratedGrid field {key!r} must be {' or '.join(k.__name__ for k in kind)}, got "
                                 f"{v!r}")
        if not d["times"] or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in d["times"]):
            raise ValueError(f"CalibratedGrid field 'times' must be a non-empty list of numbers, got {d['times']!r}")
        if d["nfe"] < 1:
            raise ValueError(f"CalibratedGrid field 'nfe' must be >= 1, got {d['nfe']!r}")
        scale = d.get("eps_scale")
        if scale is not None and (not isinstance(scale, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)):
            raise ValueError(f"CalibratedGrid field 'eps_scale' must be null or a list of numbers, got {scale!r}")
        return cls(times=torch.tensor(d["times"], dtype=TIME_DTYPE), solver=d["solver"], nfe=d["nfe"],
                   steps=d["steps"], denoise=d["denoise"], calibration_rmse=float(d["calibration_rmse"]),
                   validation_rmse=float(d["validation_rmse"]), init_grid=d["init_grid"],
                   init_validation_rmse=float(d["init_validation_rmse"]), provenance=dict(d["provenance"]),
                   eps_scale=None if scale is None else tuple(float(v) for v in scale))

    def save(self, path: str | Path) -> Path:
        """Write a small JSON file (format version :data:`FORMAT_VERSION`)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> CalibratedGrid:
        """Read a file written by :meth:`save` (ValueError on a bad file, field or version)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a CalibratedGrid JSON file: {e}") from None
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CalibratedGrid):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return (f"CalibratedGrid(solver={self.solver!r}, nfe={self.nfe}, steps={self.steps}, denoise={self.denoise}, "
                f"validation_rmse={self.validation_rmse:.3g}, init={self.init_grid!r} "
                f"{self.init_validation_rmse:.3g}{', eps_scale' if self.eps_scale is not None else ''})")


# ---------------------------------------------------------------------- the parametrisation
class _LambdaGrid:
    """Logits θ ∈ R^{n-1} <-> grids of ``n`` steps from ``T`` to ``t_min`` (then 0 with ``denoise``): the
    λ-increments are ``ε + (1 - nε) softmax(0, θ)`` of the λ range (module docstring)."""

    def __init__(self, process: LinearProcess, n: int, denoise: bool) -> None:
        from .timesteps import _clip_lam

        self.process, self.n, self.denoise = process, n, denoise
        ends = process.log_snr(torch.tensor([process.T, process.t_min], dtype=TIME_DTYPE)).tolist()
        self.lam_T, self.lam_min = (_clip_lam(float(v)) for v in ends)

    def times(self, theta: Any) -> torch.Tensor:
        th = torch.as_tensor(theta, dtype=TIME_DTYPE).reshape(-1)
        logits = torch.cat([th.new_zeros(1), th])
        w = MIN_FRACTION + (1 - self.n * MIN_FRACTION) * torch.softmax(logits, 0)
        frac = torch.cat([w.new_zeros(1), torch.cumsum(w, 0)])
        frac = frac / frac[-1]
        lams = self.lam_T + frac * (self.lam_min - self.lam_T)
        ts = self.process.t_from_log_snr(lams).to(TIME_DTYPE)
        ts[0], ts[-1] = self.process.T, self.process.t_min
        if self.denoise:
            ts = torch.cat([ts, ts.new_zeros(1)])
        return ts

    def fractions(self, times: torch.Tensor) -> torch.Tensor:
        """The cumulative λ-fractions (0 at ``T`` to 1 at ``t_min``) of a grid of this process."""
        head = times[:-1] if float(times[-1]) == 0.0 else times
        lams = self.process.log_snr(head.to(TIME_DTYPE)).clamp(min(self.lam_T, self.lam_min),
                                                                max(self.lam_T, self.lam_min))
        frac = (lams - self.lam_T) / (self.lam_min - self.lam_T)
        frac[0], frac[-1] = 0.0, 1.0
        return frac

    def resampled(self, times: torch.Tensor) -> torch.Tensor:
        """A grid of ``n`` steps whose cumulative λ-fractions follow those of ``times`` (any number of
        steps): the piecewise-linear interpolant of fraction against step position, evaluated at ``n + 1``
        equally spaced positions (strictly monotone, so the result is a valid grid)."""
        frac = self.fractions(times)
        m = len(frac) - 1
        pos = torch.linspace(0, m, self.n + 1, dtype=TIME_DTYPE)
        lo = pos.floor().clamp(max=m - 1).long()
        new = frac[lo] + (pos - lo) * (frac[lo + 1] - frac[lo])
        lams = self.lam_T + new * (self.lam_min - self.lam_T)
        ts = self.process.t_from_log_snr(lams).to(TIME_DTYPE)
        ts[0], ts[-1] = self.process.T, self.process.t_min
        return torch.cat([ts, ts.new_zeros(1)]) if self.denoise else ts

    def theta(self, times: torch.Tensor) -> list[float]:
        head = times[:-1] if self.denoise else times
        if len(head) != self.n + 1:
            raise ValueError(f"init grid has {len(head) - 1} steps to t_min, the budget needs {self.n}")
        w = self.fractions(times).diff()
        w = ((w - MIN_FRACTION) / (1 - self.n * MIN_FRACTION)).clamp_min(1e-12)  # undo the floor of times()
        logits = torch.log(w) - math.log(float(w[0]))
        return [float(v) for v in logits[1:]]


# ---------------------------------------------------------------------- helpers
def _check_int(name: str, value: Any, lo: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}; {fix}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value!r}; {fix}")
    return value


def _check_budget(max_evals: Any, max_seconds: Any) -> tuple[int, float | None]:
    max_evals = _check_int("max_evals", max_evals, 0, "use e.g. max_evals=600")
    if max_seconds is not None and (isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float))
                                    or not max_seconds > 0):
        raise ValueError(f"max_seconds must be a number > 0 or None, got {max_seconds!r}")
    return max_evals, max_seconds


class _ReferenceCache:
    """``x_T -> reference end``, solved once per distinct set of draws (looked up by value); with no
    ``solve``, only the ends given to :meth:`put` are known and other draws raise ``KeyError``."""

    def __init__(self, solve: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.solve = solve
        self.description = "precomputed ends"
        self.items: list[tuple[torch.Tensor, torch.Tensor]] = []

    def put(self, x: torch.Tensor, end: torch.Tensor) -> None:
        self.items.append((x.clone(), end))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for xr, end in self.items:
            if xr.shape == x.shape and torch.equal(xr, x):
                return end
        if self.solve is None:
            raise KeyError("no precomputed reference for these draws")
        end = self.solve(x)
        self.put(x, end)
        return end


def cached_reference(model: Any, reference: Any = None, *, denoise: bool = True) -> Callable[[torch.Tensor],
                                                                                           torch.Tensor]:
    r"""A ``reference=`` for :func:`calibrate` that solves each distinct set of draws once.

    Pass the same object to several calls on the same draws (the same ``generator``, ``n_samples`` and
    ``n_validation``): other budgets, other solvers, a ladder with ``init=``. The reference, the costly part
    of a calibration on a large model, is then solved once, and each call's ``max_seconds`` goes to the
    fit. ``reference`` is as in :func:`calibrate` (``None``: the float64 adaptive reference); ``denoise``
    says which end that default solves (the σ = 0 limit, as ``calibrate(..., denoise=True)`` needs).
    """
    if not isinstance(denoise, bool):
        raise TypeError(f"denoise must be a bool, got {type(denoise).__name__}")
    fn, desc = _reference_fn(model, reference, denoise)
    cache = _ReferenceCache(fn)
    cache.description = f"cached {desc}"
    return cache


def _event_shape(model: Any, shape: Any) -> tuple[int, ...]:
    if shape is None:
        shape = getattr(model, "event_shape", None) or getattr(getattr(model, "net", None), "event_shape", None)
        if shape is None:
            raise ValueError("shape= (the per-sample event shape, e.g. (2,) or (3, 32, 32)) is required: the model "
                             "does not declare one")
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) == 0 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape must be the per-sample event shape, a non-empty sequence of ints >= 1 (no batch "
                         f"dimension), got {shape!r}")
    return tuple(int(s) for s in shape)


def _generator(generator: Any) -> tuple[torch.Generator, Any]:
    if generator is None:
        return torch.Generator().manual_seed(0), 0
    if isinstance(generator, bool):
        raise TypeError("generator must be an int seed or a torch.Generator, got a bool")
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator), generator
    if isinstance(generator, torch.Generator):
        return generator, f"torch.Generator(initial_seed={generator.initial_seed()})"
    raise TypeError(f"generator must be an int seed or a torch.Generator, got {type(generator).__name__}")


def _reference_fn(model: Any, reference: Any, denoise: bool) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    if callable(reference):  # a cache (or any callable) may describe itself
        name = getattr(reference, "__name__", type(reference).__name__)
        desc = getattr(reference, "description", None) or f"callable {name}"
        return (lambda x: torch.as_tensor(reference(x)).to(torch.float64)), desc
    from .benchmarking import _ref_options, _Reference

    if reference is not None and not isinstance(reference, Mapping):
        raise TypeError(f"reference must be None, a dict of solver/rtol/atol (e.g. {{'solver': 'dopri8', 'rtol': "
                        f"1e-9}}) or a callable x_T -> end points, got {type(reference).__name__}")
    opts = _ref_options(reference)

    def ref(x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the reference solver's advice on DiscreteVP knots
            return _Reference(model, x, dict(opts)).end(denoise)

    return ref, "benchmarking._Reference(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")"


def _rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    if tuple(ref.shape) != tuple(x.shape):
        raise ValueError(f"the reference returned shape {tuple(ref.shape)} for states of shape {tuple(x.shape)}")
    return float((x.to(torch.float64) - ref).pow(2).mean().sqrt())


class _Stop(Exception):
    pass


def steps_for_budget(model: Any, solver: Any, nfe: int, event: tuple[int, ...], denoise: bool,
                     options: dict[str, Any]) -> int:
    """The most ``sample`` steps whose measured NFE fits ``nfe`` (a one-sample probe on ``logsnr``),
    starting from the solver's :meth:`~sdediff.solvers.FixedStepSolver.nfe_for` rule."""
    from .benchmarking import fit_steps
    from .solve import sample

    head = 1
    while solver.nfe_for(head + 1) + int(denoise) <= nfe and head < 4 * nfe:
        head += 1
    probe = model.process.prior_sample((1, *event), generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def measured(steps: int) -> int:
        with torch.no_grad():
            return int(sample(model, (1, *event), solver=solver, steps=steps, grid="logsnr", denoise=denoise,
                              x_T=probe, options=options).stats.nfe)

    least = 1 + int(denoise)  # one step to fit before the data end
    steps = fit_steps(measured, nfe, head + int(denoise), min_steps=least)
    if steps is None:
        raise ValueError(f"nfe={nfe} is below the minimum of solver {solver.name!r}: its smallest grid "
                         f"({least} steps{', the denoise step included' if denoise else ''}) costs "
                         f"{measured(least)} evaluations; raise nfe")
    return steps


# ---------------------------------------------------------------------- calibrate
def calibrate(model: Any, solver: Any, nfe: int, *, n_samples: int = 2000, n_validation: int | None = None,
              shape: Sequence[int] | None = None, reference: Any = None, generator: Any = None,
              init: str | Sequence[float] | torch.Tensor | CalibratedGrid | None = None, denoise: bool = True,
              options: dict[str, Any] | None = None, max_evals: int = 600, max_seconds: float | None = 60.0,
              optimizer: str = "powell", validation: torch.Tensor | None = None,
              progress: bool = False, eps_scale: bool = False, _grid_share: float = _GRID_SHARE) -> CalibratedGrid:
    r"""Fit the times of ``solver``'s grid for ``nfe`` evaluations to ``model`` (module docstring).

    Args:
        model: a :class:`~sdediff.DiffusionModel` of a linear process (with ``t_from_log_snr``).
        solver: a deterministic fixed-step solver (name or object), e.g. ``"dpm++2m"``, ``"unipc"``, or a
            list or tuple of them (the best on the calibration draws is returned; module docstring).
        nfe: the NFE budget: the grid gets the most steps whose measured ``Solution.stats.nfe`` fits it
            (the final denoise step included when ``denoise``).
        n_samples: prior draws the loss is computed on.
        n_validation: separate prior draws (the next ones of the same generator) the result and the
            warm start are scored on (default ``n_samples``; ignored with ``validation=``).
        shape: the per-sample event shape (default the model's ``event_shape``, if it declares one).
        reference: ``None`` (the float64 adaptive ``dopri8`` reference of :func:`sdediff.benchmark`), a
            dict of ``solver``/``rtol``/``atol``/``dtype`` for that reference, or a callable
            ``x_T -> end points`` (e.g. exact ends of a known map).
        generator: an int seed or a ``torch.Generator`` for the draws (``None``: seed 0, so a
            calibration is reproducible by default).
        init: the warm start: a grid name, times of the right length, or a :class:`CalibratedGrid` of any
            budget (resampled to this one and tried next to :data:`INIT_GRIDS`: continuation) (default:
            the best of :data:`INIT_GRIDS` on the calibration draws).
        denoise: end on the clean data (the last step denoises onto ``t = 0``), as in :func:`sdediff.sample`.
        options: ``options=`` of the solver.
        max_evals: the most loss evaluations of the optimiser (the warm start's not counted).
        max_seconds: CPU seconds (``time.process_time``) for the whole call apart from the reference solve
            (``provenance["reference_cpu_seconds"]``; a callable ``reference=`` or one cache serves several
            calls): the optimiser stops when one more evaluation and the two validation solves still to come
            would exceed it (priced from the evaluations so far); ``None``: no limit.
        optimizer: ``"powell"`` (default) or ``"nelder-mead"`` (scipy), over the logits θ.
        validation: prior draws ``x_T`` of shape ``(B, *shape)`` to validate on instead of fresh ones (the
            reference is solved for them as for the calibration draws).
        progress: a tqdm progress bar over the evaluations, with the best loss so far.
        eps_scale: also fit one noise-prediction scale per step (:class:`~sdediff.model.EpsScaled`; module
            docstring): the times get half of ``max_evals`` and ``max_seconds``, then the scales the rest,
            the times held fixed. The result's validation RMSE is that of times and scales together;
            ``provenance["grid_validation_rmse"]`` that of the times alone.

    Returns:
        :class:`CalibratedGrid`.
    """
    from . import __version__
    from .model import EpsScaled, ScoreModel
    from .solve import sample
    from .solvers import FixedStepSolver, get_solver
    from .timesteps import sampling_grid, user_grid

    if isinstance(solver, (list, tuple)):
        return _calibrate_among(list(solver), model, nfe, n_samples=n_samples, n_validation=n_validation,
                                shape=shape, reference=reference, generator=generator, init=init, denoise=denoise,
                                options=options, max_evals=max_evals, max_seconds=max_seconds, optimizer=optimizer,
                                validation=validation, progress=progress, eps_scale=eps_scale)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be an sdediff model (DiffusionModel, ...), got {type(model).__name__}")
    process = model.process
    if not isinstance(process, LinearProcess):
        raise TypeError(f"calibrate needs a linear process (alpha, sigma, log-SNR); {type(process).__name__} "
                        "is not one")
    s = get_solver(solver)
    if not isinstance(s, FixedStepSolver) or s.adaptive or s.stochastic or s.budgeted:
        why = ("adaptive" if s.adaptive else "stochastic" if s.stochastic
               else "budgeted (it places its own steps)" if s.budgeted else "not one")
        raise ValueError(f"calibrate fits the grid of a deterministic fixed-step solver (e.g. 'dpm++2m', 'unipc', "
                         f"'ddim'); {getattr(s, 'name', solver)!r} is {why}")
    nfe = _check_int("nfe", nfe, 1, "give the NFE budget as an int, e.g. nfe=10")
    n_samples = _check_int("n_samples", n_samples, 1, "use e.g. n_samples=2000")
    n_validation = n_samples if n_validation is None else _check_int("n_validation", n_validation, 1,
                                                                     "use e.g. n_validation=2000")
    max_evals, max_seconds = _check_budget(max_evals, max_seconds)
    if not isinstance(denoise, bool):
        raise TypeError(f"denoise must be a bool, got {type(denoise).__name__}")
    if not isinstance(eps_scale, bool):
        raise TypeError(f"eps_scale must be a bool (fit per-step noise-prediction scales too), got "
                        f"{type(eps_scale).__name__}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    opts = dict(options or {})
    s.check_options(opts)
    event = _event_shape(model, shape)
    if validation is not None and (not isinstance(validation, torch.Tensor) or validation.ndim != len(event) + 1
                                   or tuple(validation.shape[1:]) != event or validation.shape[0] < 1):
        raise ValueError(f"validation must be a tensor of prior draws of shape (B, *{event}), got "
                         f"{getattr(validation, 'shape', type(validation).__name__)}")
    denoise = denoise and s.data_end_ok
    gen, seed = _generator(generator)
    ref_fn, ref_desc = _reference_fn(model, reference, denoise)

    steps = steps_for_budget(model, s, nfe, event, denoise, opts)
    n_head = steps - int(denoise)
    param = _LambdaGrid(process, n_head, denoise)

    x_cal = process.prior_sample((n_samples, *event), generator=gen, dtype=torch.float64)
    if validation is None:
        x_val = process.prior_sample((n_validation, *event), generator=gen, dtype=torch.float64)
    else:
        x_val, n_validation = validation.detach().to(torch.float64), int(validation.shape[0])
    ref_cpu0 = time.process_time()
    with torch.no_grad():
        r_cal, r_val = ref_fn(x_cal), ref_fn(x_val)
    ref_cpu = time.process_time() - ref_cpu0

    def run(ts: torch.Tensor, x: torch.Tensor, scales: Any = None) -> tuple[torch.Tensor, int]:
        m = model if scales is None else EpsScaled(model, ts, scales)
        with torch.no_grad():
            sol = sample(m, tuple(x.shape), solver=s, grid=ts, x_T=x, options=opts)
        return sol.x, int(sol.stats.nfe)

    def loss_of(ts: torch.Tensor, x: torch.Tensor, r: torch.Tensor, scales: Any = None) -> float:
        from .errors import NonFiniteError, SolverError

        try:
            out, _ = run(ts, x, scales)
        except (NonFiniteError, SolverError):
            return math.inf
        v = _rmse(out, r)
        return v if math.isfinite(v) else math.inf

    # the warm start
    if init is None:
        cands = {name: sampling_grid(process, s, steps, name, denoise=denoise) for name in INIT_GRIDS}
    elif isinstance(init, str):
        cands = {init: sampling_grid(process, s, steps, init, denoise=denoise)}
    elif isinstance(init, CalibratedGrid):  # continuation: the resampled grid next to the standard ones
        cands = {f"calibrated nfe={init.nfe}": param.resampled(init.times_for(process)),
                 **{name: sampling_grid(process, s, steps, name, denoise=denoise) for name in INIT_GRIDS}}
    else:
        g = user_grid(init, process, allow_data_end=True)
        if len(g) != steps + 1 or (float(g[-1]) == 0.0) != denoise or abs(float(g[0]) - process.T) > 1e-9:
            raise ValueError(f"init times must be {steps + 1} decreasing times from T={process.T} to "
                             f"{'t_min then 0' if denoise else 't_min'} ({steps} steps for nfe={nfe}); got {len(g)} "
                             "times")
        cands = {"times": g}
    init_losses = {}
    warm_cpu0 = time.process_time()
    for name, ts in cands.items():
        if len(ts) != steps + 1:
            raise ValueError(f"init grid {name!r} gives {len(ts) - 1} steps, the budget needs {steps}")
        init_losses[name] = loss_of(ts, x_cal, r_cal)
    eval_cpu = {"sum": time.process_time() - warm_cpu0, "n": len(cands)}
    # the validation solves still to come (the result, the warm start, and with eps_scale the times alone),
    # priced from these evaluations
    reserve = (2 + int(eps_scale)) * eval_cpu["sum"] / eval_cpu["n"] * n_validation / n_samples

    def over_budget(share: float = 1.0) -> bool:
        """Whether one more evaluation would take the call (its reference solve apart) past ``share`` of
        max_seconds (the validation reserve counted in full)."""
        if max_seconds is None:
            return False
        spent = time.process_time() - cpu0 - ref_cpu
        return spent + eval_cpu["sum"] / eval_cpu["n"] + reserve > share * max_seconds
    init_name = min(init_losses, key=lambda k: init_losses[k])
    init_times = cands[init_name]
    theta0 = param.theta(init_times)

    best: dict[str, Any] = {"loss": init_losses[init_name], "times": init_times, "theta": theta0, "scales": None}
    count = {"evals": 0}
    share = _grid_share if eps_scale else 1.0  # of the budget for the times; the scales get the rest
    grid_evals = int(max_evals * share)
    opt_cpu0 = time.process_time()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_evals, desc=f"calibrate {s.name} nfe={nfe}", leave=False)

    def evaluate(ts: torch.Tensor, scales: Any, limit: int, part: float, point: dict[str, Any]) -> float:
        if count["evals"] >= limit or over_budget(part):
            raise _Stop
        count["evals"] += 1
        c0 = time.process_time()
        v = loss_of(ts, x_cal, r_cal, scales)
        eval_cpu["sum"] += time.process_time() - c0
        eval_cpu["n"] += 1
        if v < best["loss"]:
            best.update(loss=v, times=ts, scales=scales, **point)
            if bar is not None:
                bar.set_postfix(best=f"{v:.4e}")
        if bar is not None:
            bar.update(1)
        return v if math.isfinite(v) else 1e300

    def objective(theta: Any) -> float:  # the times
        return evaluate(param.times(theta), None, grid_evals, share, {"theta": list(map(float, theta))})

    def scale_objective(gamma: Any) -> float:  # the scales s_k = exp(gamma_k), the times fixed
        return evaluate(fixed, [math.exp(float(g)) for g in gamma],
                        max_evals, 1.0, {})

    def minimize(fn: Callable[[Any], float], x0: list[float], step: float) -> None:
        import numpy as np
        import scipy.optimize

        method = {"powell": "Powell", "nelder-mead": "Nelder-Mead"}[optimizer]
        mopts: dict[str, Any] = {"maxfev": max_evals, "xtol": 1e-4, "ftol": 1e-6}
        if method == "Powell" and step != 1.0:
            mopts["direc"] = step * np.eye(len(x0))
        if method == "Nelder-Mead":
            mopts = {"maxfev": max_evals, "xatol": 1e-4, "fatol": 1e-9, "adaptive": True,
                     "initial_simplex": np.vstack([x0, np.asarray(x0) + step * np.eye(len(x0))])}
        try:
            scipy.optimize.minimize(fn, x0, method=method, options=mopts)
        except _Stop:
            pass

    fixed = None
    if (theta0 or eps_scale) and max_evals > 0 and over_budget(share if share > 0 else 1.0):
        warnings.warn(f"calibrate: max_seconds={max_seconds} was spent before the optimiser started (the warm start "
                      f"took {time.process_time() - warm_cpu0:.1f} CPU s); the result is the warm-start grid "
                      f"{init_name!r}. Raise max_seconds or lower n_samples", RuntimeWarning, stacklevel=2)
    elif max_evals > 0:
        if theta0 and grid_evals > 0:
            minimize(objective, theta0, 1.0)
        if eps_scale:
            fixed = best["times"]
            minimize(scale_objective, [0.0] * steps, 0.05)
    if bar is not None:
        bar.close()

    times = best["times"].clone()
    scales = None if best["scales"] is None else tuple(float(v) for v in best["scales"])
    out_val, used = run(times, x_val, scales)
    val = _rmse(out_val, r_val)
    init_val = loss_of(init_times, x_val, r_val)
    grid_val = (val if scales is None else loss_of(times, x_val, r_val)) if eps_scale else None
    if used > nfe:  # cannot happen with the probe above; a guard for solvers whose count depends on the grid
        raise RuntimeError(f"the calibrated grid used {used} evaluations, above the budget nfe={nfe}")
    prov = {
        "sdediff": __version__, "process": repr(process), "model": type(model).__name__,
        "net": getattr(getattr(model, "net", None), "__name__", None) or type(getattr(model, "net", model)).__name__,
        "event_shape": list(event), "n_samples": n_samples, "n_validation": n_validation,
        "seed": seed, "streams": "calibration: first draw of the generator; validation: the next draw",
        "reference": ref_desc, "reference_cpu_seconds": round(ref_cpu, 3), "optimizer": optimizer,
        "max_evals": max_evals, "max_seconds": max_seconds, "evals": count["evals"],
        "validation": "given" if validation is not None else "drawn",
        "init_calibration_rmse": {k: v for k, v in init_losses.items()}, "nfe_used": used,
        "wall_seconds": round(time.perf_counter() - wall0, 3), "cpu_seconds": round(time.process_time() - cpu0, 3),
        "optimizer_cpu_seconds": round(time.process_time() - opt_cpu0, 3),
        **({"eps_scale_fitted": True, "grid_validation_rmse": grid_val} if eps_scale else {}),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return CalibratedGrid(times=times, solver=s.name, nfe=nfe, steps=steps, denoise=denoise,
                          calibration_rmse=float(best["loss"]), validation_rmse=val, init_grid=init_name,
                          init_validation_rmse=init_val, provenance=prov, eps_scale=scales)


def _calibrate_among(solvers: list[Any], model: Any, nfe: int, *, reference: Any, generator: Any,
                     max_evals: int, max_seconds: float | None, **kw: Any) -> CalibratedGrid:
    """:func:`calibrate` for each of ``solvers`` on the same draws, one reference solve and an even share of
    the budget; the grid with the smallest calibration RMSE, with every candidate in its provenance."""
    from .solvers import get_solver

    if not solvers:
        raise ValueError("solver is an empty sequence; give one solver or several, e.g. ('ipndm', 'unipc')")
    scaled = bool(kw.pop("eps_scale", False))
    share = _GRID_SHARE if scaled else 1.0  # with eps_scale: the grids' share; the winner's scales get the rest
    objs = [get_solver(v) for v in solvers]
    names = [o.name for o in objs]
    if len(set(names)) != len(names):
        raise ValueError(f"solver lists {names} with repeats; give each solver once")
    max_evals, max_seconds = _check_budget(max_evals, max_seconds)
    if isinstance(generator, torch.Generator):  # each candidate starts from the same generator state
        state = generator.get_state()

        def gen() -> Any:
            generator.set_state(state)
            return generator
    else:
        def gen() -> Any:
            return generator
    solves = {d: _reference_fn(model, reference, d) for d in (True, False)}
    refs = {d: _ReferenceCache(fn) for d, (fn, _) in solves.items()}
    fits = [calibrate(model, o, nfe, reference=refs[bool(kw.get("denoise", True)) and o.data_end_ok],
                      generator=gen(), max_evals=int(max_evals * share) // len(objs),
                      max_seconds=None if max_seconds is None else share * max_seconds / len(objs), **kw)
            for o in objs]
    best = min(fits, key=lambda g: g.calibration_rmse)
    if scaled:  # the scales of the winner, its times held, with the rest of the budget
        spent = sum(g.provenance["cpu_seconds"] - g.provenance["reference_cpu_seconds"] for g in fits)
        rest = {k: v for k, v in kw.items() if k != "init"}
        fit = calibrate(model, best.solver, nfe, reference=refs[best.denoise], generator=gen(),
                        max_evals=max(1, max_evals - sum(g.provenance["evals"] for g in fits)),
                        max_seconds=None if max_seconds is None else max(max_seconds - spent, 1e-3),
                        init=best.times, eps_scale=True, _grid_share=0.0, **rest)
        fits.append(fit)
        best = dataclasses.replace(fit, init_grid=best.init_grid, init_validation_rmse=best.init_validation_rmse,
                                   provenance={**fit.provenance, "init_calibration_rmse":
                                               best.provenance["init_calibration_rmse"]})
    prov = dict(best.provenance)
    prov["reference"] = solves[best.denoise][1]
    prov["reference_cpu_seconds"] = round(sum(g.provenance["reference_cpu_seconds"] for g in fits), 3)
    prov["max_evals"], prov["max_seconds"] = max_evals, max_seconds
    prov["cpu_seconds"] = round(sum(g.provenance["cpu_seconds"] for g in fits), 3)
    prov["wall_seconds"] = round(sum(g.provenance["wall_seconds"] for g in fits), 3)
    prov["optimizer_cpu_seconds"] = round(sum(g.provenance["optimizer_cpu_seconds"] for g in fits), 3)
    prov["candidates"] = {g.solver: {"calibration_rmse": g.calibration_rmse, "validation_rmse": g.validation_rmse,
                                     "init_grid": g.init_grid, "evals": g.provenance["evals"]}
                          for g in (fits[:-1] if scaled else fits)}
    if scaled:
        prov["evals"] = sum(g.provenance["evals"] for g in fits)
    return dataclasses.replace(best, provenance=prov)

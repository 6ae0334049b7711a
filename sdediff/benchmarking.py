r"""Accuracy per NFE of any model: :func:`benchmark` and its typed result.

``res = sd.benchmark(model, (512, 2), solvers=["ddim", "dpm++2m"], grids=["logsnr", "karras"], nfe=[5, 10, 20])``

Every configuration (solver, grid, final-step policy, NFE budget) runs :func:`sdediff.sample` from
the same start :math:`x_T` and is scored against a **reference**: a high-accuracy adaptive solve of
the *same model's* probability-flow ODE :math:`dx/dt = f(t)x - \tfrac12 g(t)^2 \nabla\log p_t(x)`
from :math:`x_T` at ``T``, in float64 where the model accepts it, ending where the configuration ends:

* at ``t_min`` for configurations that stop there (``denoise=False``);
* at the clean data ``t = 0`` for configurations that denoise, by the data-end rule every sdediff
  solver applies (:mod:`sdediff.solvers._common`): :math:`x_0 = \hat x_0(t_{min}, x_{ref}(t_{min}))`.

The final-step policy of a row is read from the solve itself (its last time is 0 or not), so a
solver that cannot denoise reports what it did. The NFE of a row is the solve's own count
(``Solution.stats.nfe``); fixed-step solvers get, for each budget, the most steps whose measured NFE
fits it (measured on a one-sample probe), adaptive ones run a tolerance ladder (``tols``) and report
what they used.

Errors (float64, per sample :math:`e_i = \lVert x_i - x^{ref}_i\rVert_2/\sqrt{d}`): RMSE
:math:`\sqrt{\mathrm{mean}_i e_i^2}`, median and max of :math:`e_i`.

**Reference check.** The reference is solved twice, at ``rtol``/``atol`` and ten times tighter; the
tighter one is the reference, and the RMS difference of the two must be below a tenth of the
smallest reported RMSE with the same end, else a :class:`ReferenceWarning` is issued and
``result.reference.ok`` is ``False`` (the affected errors are then bounded below by the reference's
own error).
"""

from __future__ import annotations

import csv
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .dynamics import ODE
from .errors import SolverError
from .model import ScoreModel
from .solve import sample, solve
from .solvers import get_solver
from .solvers.adaptive import AdaptiveDPMSolver
from .solvers.diffusion import FINAL_STEPS
from .timesteps import get_grid

__all__ = ["BenchmarkResult", "BenchmarkRow", "ReferenceInfo", "ReferenceWarning", "benchmark", "edm_variable_flow",
           "fit_steps"]

#: sample()'s default solver (ipndm) and the grids of its default rule (time_quadratic on VP, karras on EDM) are
#: among them, so a benchmark of a user's model always has the configuration a plain sd.sample runs
DEFAULT_SOLVERS = ("ddim", "euler", "heun", "dpm++2m", "dpm++3m", "unipc", "deis", "ipndm")
DEFAULT_GRIDS = ("logsnr", "karras", "time_uniform", "time_quadratic")
DEFAULT_NFE = (5, 10, 20)
DEFAULT_TOLS = (1e-2, 1e-3, 1e-4)
# reference tolerances by the dtype the reference runs in; the check solve is CHECK_FACTOR tighter
REFERENCE_TOL = {torch.float64: 1e-9, torch.float32: 1e-5}
CHECK_FACTOR = 10.0
ADAPTIVE_GRID = "adaptive"


class ReferenceWarning(UserWarning):
    """The reference is not accurate enough to resolve the smallest reported error."""


@dataclass(frozen=True)
class BenchmarkRow:
    """One configuration's result.

    ``grid`` is the grid's name (``"adaptive"`` for adaptive solvers, which then have ``tol``);
    ``denoise`` whether the run ended on the data (last step onto σ = 0) or stopped at ``t_min``, and
    ``final_step`` how it stepped onto σ = 0 (``"extrapolate"``, the default, or ``"x0"``; ``""`` when it
    stopped at ``t_min``): together the final-step policy;
    ``budget`` the NFE budget asked for (``None`` for adaptive solvers) and ``nfe`` the measured
    count; ``steps`` the ``steps`` given to :func:`sdediff.sample`; errors against the reference
    (NaN, with ``nfe = -1`` and a ``note``, when the solve raised a :class:`~sdediff.SolverError`)."""

    solver: str
    grid: str
    denoise: bool
    budget: int | None
    tol: float | None
    steps: int | None
    nfe: int
    rmse: float
    median_error: float
    max_error: float
    seconds: float
    note: str = ""
    final_step: str = ""

    @property
    def series(self) -> tuple[str, str, bool, str]:
        """The configuration without its budget: (solver, grid, denoise, final_step)."""
        return self.solver, self.grid, self.denoise, self.final_step


@dataclass(frozen=True)
class ReferenceInfo:
    """How the reference was computed and whether it passed its check.

    ``check_rmse`` is the RMS difference between the reference and the looser solve (the largest
    over the ends used), ``threshold`` a tenth of the smallest reported RMSE, ``ok`` whether
    ``check_rmse < threshold``."""

    solver: str
    rtol: float
    atol: float
    dtype: str
    nfe: int
    check_rmse: float
    threshold: float
    ok: bool
    note: str = ""


@dataclass(frozen=True)
class BenchmarkResult:
    """The rows of :func:`benchmark`, the reference's record, and what was benchmarked."""

    rows: tuple[BenchmarkRow, ...]
    reference: ReferenceInfo
    model: str
    shape: tuple[int, ...]
    dtype: str

    def best(self, nfe: int) -> BenchmarkRow | None:
        """The row with the lowest RMSE among those whose measured NFE is at most ``nfe`` (``None``
        if no finite row fits)."""
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
            raise ValueError(f"nfe must be an int >= 1, got {nfe!r}")
        fit = [r for r in self.rows if r.nfe <= nfe and math.isfinite(r.rmse)]
        return min(fit, key=lambda r: r.rmse) if fit else None

    def growth(self, factor: float = 1.5) -> list[tuple[BenchmarkRow, BenchmarkRow]]:
        """Pairs (smaller budget, next larger budget) of one fixed-step configuration whose RMSE
        grows by more than ``factor`` (error should not grow with NFE beyond noise)."""
        by: dict[tuple[str, str, bool, str], list[BenchmarkRow]] = {}
        for r in self.rows:
            if r.budget is not None and math.isfinite(r.rmse):
                by.setdefault(r.series, []).append(r)
        out = []
        for rows in by.values():
            rows = sorted(rows, key=lambda r: r.nfe)
            out += [(a, b) for a, b in itertools.pairwise(rows) if b.nfe > a.nfe and b.rmse > factor * a.rmse]
        return out

    def to_markdown(self) -> str:
        """A markdown report: the reference, the best row per budget, every row, growth flags."""
        ref = self.reference
        lines = [f"Benchmark of {self.model}, x_T of shape {self.shape} ({self.dtype}).", "",
                 f"Reference: {ref.solver} rtol={ref.rtol:g} atol={ref.atol:g} in {ref.dtype} ({ref.nfe} NFE); "
                 f"check against a {CHECK_FACTOR:g}x looser solve: RMS difference {ref.check_rmse:.2e} vs "
                 f"threshold {ref.threshold:.2e} ({'ok' if ref.ok else '**NOT OK**: errors near it are unresolved'})"
                 + (f"; {ref.note}" if ref.note else ""), ""]
        budgets = sorted({r.budget for r in self.rows if r.budget is not None})
        if budgets:
            lines += ["| NFE ≤ | best (solver, grid, final step) | NFE | RMSE |", "|---:|---|---:|---:|"]
            for b in budgets:
                r = self.best(b)
                lines.append(f"| {b} | — | — | — |" if r is None else
                             f"| {b} | {r.solver}, {r.grid}, {_policy(r)} | {r.nfe} | {r.rmse:.2e} |")
            lines.append("")
        lines += ["| solver | grid | final step | NFE budget | tol | steps | NFE | RMSE | median err | max err | s |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            lines.append(f"| {r.solver} | {r.grid} | {_policy(r)} | {_opt(r.budget)} | "
                         f"{_opt(r.tol, '{:g}')} | {_opt(r.steps)} | {r.nfe} | {r.rmse:.2e} | {r.median_error:.2e} | "
                         f"{r.max_error:.2e} | {r.seconds:.2f} |" + (f" {r.note}" if r.note else ""))
        grows = self.growth()
        if grows:
            lines += ["", "Error grows by more than 1.5x with more NFE:"]
            lines += [f"- {a.solver}, {a.grid}, {_policy(a)}: NFE {a.nfe} -> {b.nfe}, RMSE {a.rmse:.2e} -> "
                      f"{b.rmse:.2e} ({b.rmse / a.rmse:.1f}x)" for a, b in grows]
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | Path) -> Path:
        """Write the rows as CSV (one header line, the fields of :class:`BenchmarkRow`)."""
        path = Path(path)
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=[f.name for f in fields(BenchmarkRow)])
            w.writeheader()
            for r in self.rows:
                w.writerow(asdict(r))
        return path

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Log-log RMSE against measured NFE, one panel per final-step policy; colour = solver,
        marker and line style = grid. Needs matplotlib (``pip install 'sdediff[bench]'``)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from matplotlib.lines import Line2D
            from matplotlib.ticker import NullFormatter, ScalarFormatter
        except ImportError:
            raise ImportError("BenchmarkResult.plot needs matplotlib: pip install 'sdediff[bench]'") from None
        path = Path(path)
        rows = [r for r in self.rows if math.isfinite(r.rmse) and r.rmse > 0]
        policies = sorted({(r.denoise, r.final_step) for r in rows}, reverse=True) or [(True, "extrapolate")]
        solvers = list(dict.fromkeys(r.solver for r in self.rows))
        grids = list(dict.fromkeys(r.grid for r in self.rows))
        cmap = plt.get_cmap("tab10" if len(solvers) <= 10 else "tab20")
        color = {s: cmap(i % cmap.N) for i, s in enumerate(solvers)}
        markers, styles = "osD^v<>pPX*h", ["-", "--", ":", "-."]
        mark = {g: markers[i % len(markers)] for i, g in enumerate(grids)}
        style = {g: styles[i % len(styles)] for i, g in enumerate(grids)}
        fig, axes = plt.subplots(1, len(policies), figsize=(6.5 * len(policies) + 2.5, 5.5), squeeze=False,
                                 sharey=True)
        for ax, pol in zip(axes[0], policies, strict=True):
            series: dict[tuple[str, str], list[BenchmarkRow]] = {}
            for r in rows:
                if (r.denoise, r.final_step) == pol:
                    series.setdefault((r.solver, r.grid), []).append(r)
            for (s, g), pts in series.items():
                pts = sorted(pts, key=lambda r: r.nfe)
                ax.loglog([r.nfe for r in pts], [r.rmse for r in pts], linestyle=style[g], marker=mark[g],
                          color=color[s], markersize=5, linewidth=1.4, markerfacecolor="none")
            budgets = sorted({r.budget for r in rows if r.budget is not None})
            if 0 < len(budgets) <= 12:  # plain numbers at the budgets rather than 6x10^0
                ax.set_xticks(budgets)
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"final step: {_POLICY_NAMES.get(pol[1] if pol[0] else '', pol[1])}")
            ax.set_xlabel("NFE (measured)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("RMSE vs reference")
        handles = [Line2D([], [], color=color[s], linewidth=2, label=s) for s in solvers]
        handles += [Line2D([], [], color="black", linestyle=style[g], marker=mark[g], markerfacecolor="none",
                           label=f"grid: {g}") for g in grids]
        axes[0][-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
                           frameon=False)
        fig.suptitle(title or f"{self.model}: accuracy per NFE")
        fig.tight_layout()
        fig.savefig(path, dpi=130)
        plt.close(fig)
        return path


_POLICY_NAMES = {"extrapolate": "denoise (extrapolated)", "x0": "denoise (plain x0)", "": "stop at t_min"}


def _policy(row: BenchmarkRow) -> str:
    return _POLICY_NAMES.get(row.final_step if row.denoise else "", row.final_step)


def _opt(v: Any, fmt: str = "{}") -> str:
    return "—" if v is None else fmt.format(v)


def _names(what: str, value: Any, default: Sequence[Any]) -> list[Any]:
    if value is None:
        return list(default)
    if isinstance(value, str) or callable(value):
        value = [value]
    out = list(value)
    if not out:
        raise ValueError(f"{what} must not be empty; pass at least one (e.g. {what}={list(default)[:2]!r})")
    return out


def _per_sample_error(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    d = (x.to(torch.float64) - ref).reshape(x.shape[0], -1)
    return d.pow(2).mean(1).sqrt()


def _ref_options(reference: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if reference is None:
        return {"solver": "dopri8"}
    if isinstance(reference, str):
        return {"solver": reference}
    if isinstance(reference, Mapping):
        unknown = set(reference) - {"solver", "rtol", "atol", "dtype"}
        if unknown:
            raise ValueError(f"reference has unknown keys {sorted(unknown)}; valid keys are solver, rtol, atol, "
                             "dtype (e.g. reference={'solver': 'dopri8', 'rtol': 1e-9, 'atol': 1e-9})")
        return dict(reference)
    raise TypeError(f"reference must be a solver name or a dict of solver/rtol/atol/dtype, got "
                    f"{type(reference).__name__}")


#: Noise levels :math:`\rho/\rho(t_{min})` on the reference trajectory whose data predictions are extrapolated
#: to σ = 0 (a polynomial in :math:`\rho^2` through all of them; the line through the first two estimates
#: its error).
LIMIT_LEVELS = (1.0, 1.5, 2.0)


def _limit_weights(r: Sequence[float]) -> list[float]:
    """Lagrange weights at 0 of the polynomial in ``r`` through the points ``r`` (``r = ρ²``)."""
    return [math.prod(rj / (rj - rk) for j, rj in enumerate(r) if j != k) for k, rk in enumerate(r)]


class _Reference:
    r"""The reference ends from ``x_T``: at ``t_min``, and the clean-data end at σ = 0, each solved twice.

    The σ = 0 end is the limit of the probability-flow trajectory, which a model defined on
    ``[t_min, T]`` does not reach: along the trajectory of smooth data the data prediction is
    :math:`D(
ho) = x(0) + c_1
ho^2 + c_2
ho^4 + \dots` (see :func:`sdediff.solvers.diffusion.denoise`),
    so the reference evaluates :math:`D` on the accurate trajectory at the noise levels
    :data:`LIMIT_LEVELS` :math:`	imes
ho(t_{min})` and extrapolates the polynomial in :math:`
ho^2`
    through them to 0 (error :math:`O(
ho_{min}^6)`); the difference to the line through the first two
    levels is added to the reference check."""

    def __init__(self, model: ScoreModel, x_T: torch.Tensor, options: dict[str, Any]) -> None:
        self.solver = options.get("solver", "dopri8")
        s = get_solver(self.solver)
        if not s.adaptive or s.stochastic:
            raise ValueError(f"reference solver must be an adaptive ODE solver (e.g. 'dopri8', 'dopri5'), "
                             f"got {self.solver!r}")
        self.note = ""
        dtype = options.get("dtype", torch.float64)
        try:
            ends = self._solve(model, x_T, dtype, options)
        except (RuntimeError, TypeError) as e:
            if dtype == x_T.dtype or isinstance(e, SolverError):
                raise
            self.note = f"the model refused {dtype} ({type(e).__name__}: {str(e).splitlines()[0][:80]}); " \
                        f"reference in {x_T.dtype}"
            dtype = x_T.dtype
            ends = self._solve(model, x_T, dtype, options)
        self.dtype = dtype
        (tight, self.nfe), loose = ends
        self.at_tmin, self.loose_tmin = tight[-1], loose[-1]
        with torch.no_grad():
            self.at_zero, lower = self._limit(model, tight, dtype)
            self.loose_zero, _ = self._limit(model, loose, dtype)
        self.limit_error = float(_per_sample_error(lower, self.at_zero).pow(2).mean().sqrt())

    def _levels(self, model: ScoreModel) -> list[float]:
        r"""The half log-SNRs the reference saves at: :math:`\lambda(T)`, the levels :data:`LIMIT_LEVELS` above
        :math:`\rho(t_{min})` (those below ``T``; largest ρ first), and :math:`\lambda(t_{min})` last."""
        p = model.process
        lam_T, lam_min = (float(p.log_snr(torch.tensor(t, dtype=torch.float64))) for t in (p.T, p.t_min))
        mids = [lam_min - math.log(c) for c in reversed(LIMIT_LEVELS[1:])]
        mids = [v for v in mids if lam_T < v < lam_min]
        self.levels = [math.exp(lam_min - v) for v in mids]
        return [lam_T, *mids, lam_min]

    def _limit(self, model: ScoreModel, xs: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The σ = 0 limit from the states at the saved levels after ``T`` (and the two-level estimate)."""
        d = [model.x0(t, x.to(dtype)).to(torch.float64) for t, x in zip(self.ts[1:], xs, strict=True)]
        if len(d) == 1:  # no room above t_min (a tiny process range): the plain data prediction
            return d[0], d[0]
        r = [c * c for c in [*self.levels, 1.0]]
        full = sum(w * dk for w, dk in zip(_limit_weights(r), d, strict=True))
        two = sum(w * dk for w, dk in zip(_limit_weights(r[-2:]), d[-2:], strict=True))
        return full, two

    def _solve(self, model: ScoreModel, x_T: torch.Tensor, dtype: torch.dtype, options: dict[str, Any]
               ) -> tuple[tuple[torch.Tensor, int], torch.Tensor]:
        r"""Two solves (loose and tight) of the probability-flow ODE in EDM's variables
        :math:`y = x/\alpha`, :math:`u = \log\rho = -\lambda`: :math:`dy/du = y - D(t(u), \alpha y)`, smooth in
        ``u`` for every linear process (in ``t`` a :class:`~sdediff.DiscreteVP`'s drift jumps at its knots and
        stalls the step control). A process with :math:`\alpha(T) = 0` (rectified flow), or the adaptive
        DPM-Solver as the reference solver (it steps in λ), solves the model itself."""
        tol = REFERENCE_TOL.get(dtype, 1e-5)
        self.rtol = float(options.get("rtol", tol)) / CHECK_FACTOR
        self.atol = float(options.get("atol", tol)) / CHECK_FACTOR
        p = model.process
        lams = self._levels(model)
        mid = [float(p.t_from_log_snr(torch.tensor(v, dtype=torch.float64))) for v in lams[1:-1]]
        self.ts = [p.T, *mid, p.t_min]
        x = x_T.to(dtype)
        alpha = [float(p.alpha(torch.tensor(t, dtype=torch.float64))) for t in self.ts]
        with torch.no_grad():
            if not (alpha[0] > 0 and math.isfinite(lams[0])) or isinstance(get_solver(self.solver), AdaptiveDPMSolver):
                # (the adaptive DPM-Solver steps in λ itself: smooth on DiscreteVP too)
                runs = [solve(model, x, ts=self.ts, solver=self.solver, rtol=self.rtol * f, atol=self.atol * f)
                        for f in (CHECK_FACTOR, 1.0)]
                outs = [(r.xs[1:].to(torch.float64), r.stats.nfe) for r in runs]
            else:
                def denoiser(u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                    t = p.t_from_log_snr(-u.to(torch.float64)).clamp(p.t_min, p.T)
                    return model.x0(float(t), (p.alpha(t) * y).to(dtype)).to(y.dtype)

                us = [-v for v in lams]
                y = x / alpha[0]
                outs = []
                for f in (CHECK_FACTOR, 1.0):
                    r = edm_variable_flow(denoiser, y, us, solver=self.solver, rtol=self.rtol * f,
                                          atol=self.atol * f)
                    xs = torch.stack([r.xs[k + 1] * alpha[k + 1] for k in range(len(us) - 1)])
                    outs.append((xs.to(torch.float64), r.stats.nfe))
        (loose, _), (tight, nfe) = outs
        return (tight, nfe), loose

    def end(self, denoise: bool) -> torch.Tensor:
        return self.at_zero if denoise else self.at_tmin

    def check(self, denoise: bool) -> float:
        """The reference's error estimate: the looser solve's difference (and, at σ = 0, the limit's)."""
        loose = self.loose_zero if denoise else self.loose_tmin
        c = float(_per_sample_error(loose, self.end(denoise)).pow(2).mean().sqrt())
        return max(c, self.limit_error) if denoise else c


def fit_steps(nfe_of: Callable[[int], int], budget: int, guess: int, min_steps: int = 1) -> int | None:
    """The most steps (at least ``min_steps``) whose measured NFE ``nfe_of(steps)`` fits ``budget``, from a
    guess: down while over, then up while the next still fits; ``None`` if not even ``min_steps`` fit.
    The one rule of :func:`benchmark`, :func:`sdediff.timesteps.calibrate` and ``benchmarks/accuracy.py``."""
    steps = max(min_steps, guess)
    while steps > min_steps and nfe_of(steps) > budget:
        steps -= 1
    if nfe_of(steps) > budget:
        return None
    while steps <= 4 * budget and nfe_of(steps + 1) <= budget:
        steps += 1
    return steps


def edm_variable_flow(denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y: torch.Tensor,
                      us: Sequence[float], *, solver: str, rtol: float, atol: float, save: Any = "all") -> Any:
    r"""The probability-flow ODE in EDM's variables, :math:`dy/du = y - D(u, y)` with :math:`y = x/\alpha`,
    :math:`u = \log\rho` (:math:`\rho = \sigma/\alpha`): smooth in ``u`` for every linear process.
    ``denoiser(u, y)`` is the data prediction at noise level :math:`e^u`; ``us`` are the (monotone) levels
    to pass through. Returns the :class:`~sdediff.solvers.Solution` of :func:`sdediff.solve`."""
    ode = ODE(lambda u, v: v - denoiser(u, v), t_min=min(us), T=max(us))
    return solve(ode, y, ts=list(us), solver=solver, rtol=rtol, atol=atol, save=save)


def _failed(solver: str, grid: str, denoise: bool | str, budget: int | None, tol: float | None, steps: int | None,
            seconds: float, err: Exception) -> BenchmarkRow:
    """The row of a configuration whose solve raised (diverged, too many steps): NaN errors, NFE -1."""
    nan = math.nan
    return BenchmarkRow(solver, grid, bool(denoise), budget, tol, steps, -1, nan, nan, nan, seconds,
                        f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}",
                        denoise if isinstance(denoise, str) else "")


def _check_grid(grid: Any, process: Any) -> str:
    fn = get_grid(grid) if isinstance(grid, str) else grid
    if not callable(fn):
        raise TypeError(f"grids must be names in sdediff.timesteps.GRIDS or callables grid(process, n), got {grid!r}")
    try:
        fn(process, 2)
    except (TypeError, ValueError) as e:
        raise ValueError(f"grid {grid!r} does not apply to {process!r}: {e}") from None
    return grid if isinstance(grid, str) else getattr(grid, "__name__", repr(grid))


def benchmark(model: ScoreModel, x_T: torch.Tensor | Sequence[int], *, solvers: Iterable[str] | None = None,
              grids: Iterable[Any] | None = None, nfe: Iterable[int] | None = None,
              denoise: Iterable[bool | str] | bool | str = (True, False), tols: Iterable[float] = DEFAULT_TOLS,
              reference: str | Mapping[str, Any] | None = None, generator: Any = None,
              dtype: torch.dtype | None = None, progress: bool = False) -> BenchmarkResult:
    """Error per NFE of ``solvers`` × ``grids`` × final-step policies on ``model`` (module docstring).

    Args:
        model: any :class:`~sdediff.DiffusionModel` (or guidance wrapper) of a linear process.
        x_T: the start states ``(B, ...)``, or a shape to draw them from the model's prior.
        solvers: names in :data:`sdediff.solvers.SOLVERS` (deterministic ones; default
            ``DEFAULT_SOLVERS``). Adaptive solvers run the ``tols`` ladder.
        grids: names in :data:`sdediff.timesteps.GRIDS` or callables ``grid(process, n)`` starting
            at ``process.T`` (default ``DEFAULT_GRIDS``).
        nfe: NFE budgets of the fixed-step solvers (default ``(5, 10, 20)``).
        denoise: the final-step policies to run (``True`` or ``"extrapolate"``: the default last step onto
            σ = 0; ``"x0"``: the plain data prediction at the last positive time; ``False``: stop at
            ``t_min``), or one of them.
        tols: rtol = atol values of adaptive solvers.
        reference: the reference solver's name (default ``"dopri8"``) or a dict with ``solver``,
            ``rtol``, ``atol`` (of the looser of its two solves; default 1e-9 in float64, 1e-5 in
            float32) and ``dtype`` (default float64, falling back to ``x_T``'s dtype if the model
            refuses it).
        generator: generator or int seed of the prior draw when ``x_T`` is a shape.
        dtype: dtype of that prior draw (default the process's, float32).
        progress: a tqdm progress bar over the configurations.

    Returns:
        :class:`BenchmarkResult`; a :class:`ReferenceWarning` is issued when the reference fails
        its check.
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be an sdediff model (DiffusionModel, ...), got {type(model).__name__}")
    process = model.process
    if isinstance(x_T, torch.Tensor):
        if not x_T.is_floating_point() or x_T.ndim == 0 or x_T.shape[0] == 0:
            raise ValueError(f"x_T must be a floating tensor (B, ...) with B >= 1, got {x_T.dtype} of shape "
                             f"{tuple(x_T.shape)}")
        if generator is not None or dtype is not None:
            raise ValueError("generator= and dtype= are for drawing x_T from a shape; x_T was given as a tensor")
    else:
        if not isinstance(x_T, (tuple, list, torch.Size)) or len(x_T) == 0 or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in x_T):
            raise ValueError(f"x_T must be a tensor or a shape (a non-empty sequence of ints >= 1), got {x_T!r}")
        gen = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
        x_T = process.prior_sample(tuple(x_T), generator=gen, dtype=dtype)
    solver_names = _names("solvers", solvers, DEFAULT_SOLVERS)
    for name in solver_names:
        if not isinstance(name, str):
            raise TypeError(f"solvers must be names in sdediff.solvers.SOLVERS, got {name!r}")
        if get_solver(name).stochastic:
            raise ValueError(f"solver {name!r} is stochastic: its samples are not the PF-ODE map of x_T that the "
                             "reference computes; benchmark deterministic solvers (e.g. 'dpm++2m', 'ddim')")
    grid_list = _names("grids", grids, DEFAULT_GRIDS)
    grid_names = [_check_grid(g, process) for g in grid_list]
    budgets = sorted(set(_names("nfe", nfe, DEFAULT_NFE)))
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"nfe budgets must be ints >= 1, got {b!r}")
    raw = _names("denoise", [denoise] if isinstance(denoise, (bool, str)) else denoise, (True, False))
    for d in raw:
        if not (isinstance(d, bool) or d in FINAL_STEPS):
            raise ValueError(f"denoise policies must be True, False or one of {FINAL_STEPS}, got {d!r}")
    policies = list(dict.fromkeys("extrapolate" if d is True else d for d in raw))
    tol_list = [float(t) for t in tols]
    if any(not (math.isfinite(t) and t > 0) for t in tol_list):
        raise ValueError(f"tols must be finite numbers > 0, got {tol_list!r}")
    ref = _Reference(model, x_T, _ref_options(reference))

    jobs: list[tuple[str, Any, str, bool]] = []
    for name in solver_names:
        if get_solver(name).adaptive:
            jobs += [(name, None, ADAPTIVE_GRID, d) for d in policies]
        else:
            jobs += [(name, g, gname, d) for g, gname in zip(grid_list, grid_names, strict=True) for d in policies]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="sdediff benchmark")
    rows: list[BenchmarkRow] = []
    seen: set[tuple[Any, ...]] = set()

    def run(name: str, grid: Any, d: bool | str, x: torch.Tensor, steps: int | None, tol: float | None) -> Any:
        kw: dict[str, Any] = {"rtol": tol, "atol": tol} if tol is not None else {"steps": steps, "grid": grid}
        with torch.no_grad():
            return sample(model, tuple(x.shape), solver=name, denoise=d, x_T=x, **kw)

    def add(name: str, gname: str, d: bool | str, budget: int | None, tol: float | None, steps: int | None,
            thunk: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            sol = thunk()
        except SolverError as e:
            rows.append(_failed(name, gname, d, budget, tol, steps, time.perf_counter() - t0, e))
            return
        secs = time.perf_counter() - t0
        ran_denoise = float(sol.ts[-1]) == 0.0
        final = d if ran_denoise and isinstance(d, str) else ""
        key = (name, gname, ran_denoise, final, budget, tol, steps)
        if key in seen:  # the solver cannot denoise: the same run as its stop-at-t_min row
            return
        seen.add(key)
        e = _per_sample_error(sol.x, ref.end(ran_denoise))
        rows.append(BenchmarkRow(name, gname, ran_denoise, budget, tol, steps, int(sol.stats.nfe),
                                 float(e.pow(2).mean().sqrt()), float(e.median()), float(e.max()), secs,
                                 final_step=final))

    probe = x_T[:1]
    for name, grid, gname, d in jobs:
        s = get_solver(name)
        if grid is None:
            for tol in tol_list:
                add(name, gname, d, None, tol, None, lambda n=name, d=d, tol=tol: run(n, None, d, x_T, None, tol))
        else:
            nfe_of: dict[int, int] = {}

            def measured(steps: int, name: str = name, grid: Any = grid, d: bool = d, cache: dict = nfe_of) -> int:
                if steps not in cache:
                    cache[steps] = int(run(name, grid, d, probe, steps, None).stats.nfe)
                return cache[steps]

            for b in budgets:
                guess = max(1, b // max(1, int(getattr(s, "nfe_per_step", 1))))  # nfe_per_step is only a hint
                try:
                    steps = fit_steps(measured, b, guess)
                except SolverError as e:  # the one-sample probe failed: so does the configuration
                    rows.append(_failed(name, gname, d, b, None, guess, 0.0, e))
                    continue
                if steps is None:
                    continue  # not even one step fits this budget
                add(name, gname, d, b, None, steps, lambda n=name, g=grid, d=d, st=steps: run(n, g, d, x_T, st, None))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    finite = [r for r in rows if math.isfinite(r.rmse)]
    check, threshold, ok = 0.0, math.inf, True
    for pol in sorted({r.denoise for r in finite}):
        c = ref.check(pol)
        th = 0.1 * min(r.rmse for r in finite if r.denoise == pol)
        check, threshold = max(check, c), min(threshold, th)
        ok = ok and c < th
    info = ReferenceInfo(ref.solver, ref.rtol, ref.atol, str(ref.dtype).replace("torch.", ""), ref.nfe, check,
                         threshold, ok, ref.note)
    if not ok:
        warnings.warn(f"benchmark reference ({ref.solver}, rtol={ref.rtol:g}) differs from a {CHECK_FACTOR:g}x looser "
                      f"solve by {check:.2e}, not below a tenth of the smallest reported error ({threshold:.2e}): "
                      "errors near the smallest are not resolved; pass a tighter reference={'rtol': ..., "
                      "'atol': ...} or float64 x_T/model", ReferenceWarning, stacklevel=2)
    name = getattr(getattr(model, "net", None), "__name__", None) or type(getattr(model, "net", model)).__name__
    return BenchmarkResult(tuple(rows), info, f"{type(model).__name__}({name}, {process!r})", tuple(x_T.shape),
                           str(x_T.dtype).replace("torch.", ""))

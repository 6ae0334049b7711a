r"""Time grids for sampling: float64, strictly monotone (decreasing, ``T`` → data), exact end points.

Each grid function takes a process and a number of steps ``n`` and returns ``n + 1`` times. The
continuous grids run from ``t_start`` (default ``process.T``) to ``t_end`` (default
``process.t_min``); ``edm`` and the :class:`~sdediff.DiscreteVP` spacings end at ``t = 0``, the
clean-data end onto which sdediff's solvers denoise (see :mod:`sdediff.solvers.diffusion`).

=====================  =============================================================================
name                   times
=====================  =============================================================================
``time_uniform``       :math:`t_i` uniform in ``t`` (Song et al. 2021)
``time_quadratic``     :math:`\sqrt{t_i}` uniform (DPM-Solver's ``time_quadratic``, Lu et al. 2022)
``logsnr``             :math:`\lambda_i` uniform (DPM-Solver's ``logSNR``)
``karras``             :math:`\rho_i^{1/r}` uniform in :math:`\rho = \sigma/\alpha`, ``rho`` = r = 7
                       (Karras et al. 2022, eq. 5), from :math:`\rho(t_{start})` to :math:`\rho(t_{end})`
``edm``                ``karras`` on ``n - 1`` steps plus a final ``t = 0`` (EDM's :math:`t_N = 0`)
``leading``            DiscreteVP labels :math:`\lfloor N/n\rfloor\cdot(n-1, \dots, 0)` then 0 (diffusers)
``trailing``           labels :math:`\mathrm{round}(N - kN/n) - 1`, k = 0..n-1, then 0 (diffusers)
``linspace``           labels :math:`\mathrm{round}(\mathrm{linspace}(N-1, 0, n))` then 0 (DDIM "linspace")
``linspace_multistep`` labels :math:`\mathrm{round}(\mathrm{linspace}(0, N-1, n+1))` reversed, without the
                       last (0), then 0: the "linspace" of diffusers' multistep schedulers (DPM-Solver++, UniPC, DEIS)
=====================  =============================================================================

Discrete label ``m`` is time :math:`(m+1)/N` (:meth:`DiscreteVP.t_from_label`). :func:`user_grid`
validates a grid given by the user.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ._utils import TIME_DTYPE, as_grid, attribute_ids, check_time_range, did_you_mean, memo
from .processes import DiscreteVP, LinearProcess, Process

__all__ = [
    "GRIDS",
    "auto",
    "cached_reference",
    "calibrate",
    "edm",
    "get_grid",
    "karras",
    "leading",
    "linspace",
    "linspace_multistep",
    "logsnr",
    "sampling_grid",
    "time_quadratic",
    "time_uniform",
    "trailing",
    "user_grid",
]


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of steps) must be an int >= 1, got {n!r}")
    return n


def _ends(process: Process, t_start: float | None, t_end: float | None) -> tuple[float, float]:
    if not isinstance(process, Process):
        raise TypeError(f"process must be an sdediff process, got {type(process).__name__}")
    a = float(process.T if t_start is None else t_start)
    b = float(process.t_min if t_end is None else t_end)
    check_time_range("t_start/t_end", torch.tensor([a, b], dtype=TIME_DTYPE), process.t_min, process.T)
    if not a > b:
        raise ValueError(f"t_start must be > t_end (sampling runs from noise to data), got {a!r} and {b!r}")
    return a, b


def _finish(ts: torch.Tensor, a: float, b: float) -> torch.Tensor:
    ts = ts.to(TIME_DTYPE).clone()
    ts[0], ts[-1] = a, b
    return as_grid(ts)


#: Half log-SNR range the λ- and ρ-based grids are spread over where the process reaches α = 0 or σ = 0
#: (rectified flow at t = 1 and t = 0): the zero-SNR clamp α² = 2^-24 (diffusers), and its mirror image.
LAMBDA_CLIP = 12.0 * math.log(2.0)


def _clip_lam(lam: float) -> float:
    return min(max(lam, -LAMBDA_CLIP), LAMBDA_CLIP)


def _linear(process: Process, what: str) -> LinearProcess:
    if not isinstance(process, LinearProcess):
        raise TypeError(f"the {what} grid needs a linear process (alpha, sigma); {type(process).__name__} is not one")
    return process


def time_uniform(process: Process, n: int, *, t_start: float | None = None, t_end: float | None = None) -> torch.Tensor:
    """``n`` steps uniform in ``t``."""
    n = _check_n(n)
    a, b = _ends(process, t_start, t_end)
    return _finish(torch.linspace(a, b, n + 1, dtype=TIME_DTYPE), a, b)


def time_quadratic(process: Process, n: int, *, t_start: float | None = None,
                   t_end: float | None = None) -> torch.Tensor:
    r"""``n`` steps uniform in :math:`\sqrt t` (denser near the data)."""
    n = _check_n(n)
    a, b = _ends(process, t_start, t_end)
    if b < 0:
        raise ValueError(f"time_quadratic needs t_end >= 0, got {b!r}")
    return _finish(torch.linspace(math.sqrt(a), math.sqrt(b), n + 1, dtype=TIME_DTYPE) ** 2, a, b)


def logsnr(process: Process, n: int, *, t_start: float | None = None, t_end: float | None = None) -> torch.Tensor:
    r"""``n`` steps uniform in the half log-SNR :math:`\lambda`."""
    n = _check_n(n)
    p = _linear(process, "logsnr")
    a, b = _ends(p, t_start, t_end)
    la, lb = (_clip_lam(v) for v in p.log_snr(torch.tensor([a, b], dtype=TIME_DTYPE)).tolist())
    lams = torch.linspace(la, lb, n + 1, dtype=TIME_DTYPE)
    return _finish(p.t_from_log_snr(lams), a, b)


def karras(process: Process, n: int, *, rho: float = 7.0, t_start: float | None = None,
           t_end: float | None = None) -> torch.Tensor:
    r"""``n`` steps uniform in :math:`\rho^{1/r}` with :math:`\rho = \sigma/\alpha` (Karras et al. 2022, eq. 5)."""
    n = _check_n(n)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0:
        raise ValueError(f"rho must be a number > 0, got {rho!r}")
    p = _linear(process, "karras")
    a, b = _ends(p, t_start, t_end)
    r_hi, r_lo = math.exp(-_clip_lam(float(p.log_snr(a)))), math.exp(-_clip_lam(float(p.log_snr(b))))
    u = torch.linspace(0.0, 1.0, n + 1, dtype=TIME_DTYPE)
    rhos = (r_hi ** (1 / rho) + u * (r_lo ** (1 / rho) - r_hi ** (1 / rho))) ** rho
    return _finish(p.t_from_log_snr(-torch.log(rhos)), a, b)


def edm(process: Process, n: int, *, rho: float = 7.0, t_start: float | None = None,
        t_end: float | None = None) -> torch.Tensor:
    """EDM's schedule: ``karras`` on ``n - 1`` steps, then a last step onto ``t = 0`` (σ = 0)."""
    n = _check_n(n)
    a, b = _ends(process, t_start, t_end)
    if b == 0.0:  # the process itself reaches sigma = 0 (rectified flow): karras already ends there
        return karras(process, n, rho=rho, t_start=a, t_end=b)
    head = karras(process, n - 1, rho=rho, t_start=a, t_end=b) if n > 1 else torch.tensor([a], dtype=TIME_DTYPE)
    return as_grid(torch.cat([head, head.new_zeros(1)]))


def _discrete(process: Process, n: int, labels: Callable[[int, int], torch.Tensor], name: str) -> torch.Tensor:
    n = _check_n(n)
    if not isinstance(process, DiscreteVP):
        raise TypeError(f"the {name!r} spacing is for DiscreteVP processes; got {type(process).__name__} "
                        "(use 'logsnr', 'karras' or 'time_uniform')")
    if n > process.N:
        raise ValueError(f"n={n} steps exceed the {process.N} training timesteps of the DiscreteVP; "
                         f"use n <= {process.N}")
    lab = labels(process.N, n)
    if len(torch.unique(lab)) != n:
        raise ValueError(f"the {name!r} spacing gives duplicated labels for n={n} of N={process.N}; use fewer steps "
                         "or another spacing")
    return as_grid(torch.cat([process.t_from_label(lab.to(TIME_DTYPE)), torch.zeros(1, dtype=TIME_DTYPE)]))


def leading(process: Process, n: int) -> torch.Tensor:
    """diffusers' ``leading`` spacing (DDIM): labels ``(N // n) * k``, k = n-1..0, then ``t = 0``."""
    return _discrete(process, n, lambda big, n: torch.arange(n - 1, -1, -1, dtype=torch.int64) * (big // n), "leading")


def trailing(process: Process, n: int) -> torch.Tensor:
    """diffusers' ``trailing`` spacing: labels ``round(N - k N / n) - 1``, k = 0..n-1, then ``t = 0``."""
    return _discrete(process, n, lambda big, n: torch.round(big - torch.arange(n, dtype=TIME_DTYPE) * (big / n))
                     .to(torch.int64) - 1, "trailing")


def linspace(process: Process, n: int) -> torch.Tensor:
    """DDIM's ``linspace`` spacing: labels ``round(linspace(N-1, 0, n))``, then ``t = 0``."""
    return _discrete(process, n, lambda big, n: torch.linspace(big - 1, 0, n, dtype=TIME_DTYPE).round()
                     .to(torch.int64), "linspace")


def linspace_multistep(process: Process, n: int) -> torch.Tensor:
    """diffusers' multistep ``linspace`` spacing (``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler``,
    ``DEISMultistepScheduler``): labels ``round(linspace(0, N-1, n+1))[::-1][:-1]``, then ``t = 0``. Unlike
    DDIM's :func:`linspace` it never evaluates label 0: its last step goes from label ``round((N-1)/n)`` to
    the data."""
    return _discrete(process, n, lambda big, n: torch.linspace(0, big - 1, n + 1, dtype=TIME_DTYPE).round()
                     .flip(0)[:-1].to(torch.int64), "linspace_multistep")


def auto(process: Process, n: int, **kwargs: Any) -> torch.Tensor:
    """The process's own default grid, ``process.default_grid``: ``time_quadratic`` on
    :class:`~sdediff.DiscreteVP` and :class:`~sdediff.VPSDE`, ``karras`` on :class:`~sdediff.EDM`,
    ``logsnr`` on the other linear processes (chosen on benchmark evidence: ``benchmarks/RESULTS.md``,
    "Defaults by evidence"); ``time_uniform`` on a process that is not linear.

    ``sample``'s default grid is ``"auto"``. Through :func:`sampling_grid` it first asks the solver: a
    solver whose ``auto_grid`` names a grid runs that grid. This is ``logsnr`` for the exponential
    integrators ``dpm++2m``/``3m`` and ``unipc``, which did better on it. Solvers with ``auto_grid =
    "process"`` (``ipndm``, ``deis``, the singlestep DPM-Solvers) run this process default."""
    name = getattr(process, "default_grid", "time_uniform")
    if name == "auto" or not isinstance(name, str) or name not in GRIDS:
        raise ValueError(f"{type(process).__name__}.default_grid must name a grid other than 'auto', got {name!r}; "
                         f"valid: {', '.join(g for g in GRIDS if g != 'auto')}")
    return GRIDS[name](process, n, **kwargs)


GRIDS: dict[str, Callable[..., torch.Tensor]] = {
    "auto": auto,
    "time_uniform": time_uniform,
    "time_quadratic": time_quadratic,
    "logsnr": logsnr,
    "karras": karras,
    "edm": edm,
    "leading": leading,
    "trailing": trailing,
    "linspace": linspace,
    "linspace_multistep": linspace_multistep,
}
"""The grid registry: name -> ``grid(process, n)``; ``sample(..., grid=name)`` looks names up here."""


#: The registered grids that end at ``t = 0`` themselves (their last step is the denoise step).
_DATA_END_GRIDS = frozenset({edm, leading, trailing, linspace, linspace_multistep})
_REGISTERED = frozenset(GRIDS.values())


def get_grid(name: str) -> Callable[..., torch.Tensor]:
    """The grid function called ``name`` (ValueError listing the valid names)."""
    if not isinstance(name, str) or name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; {did_you_mean(name, list(GRIDS))}valid grids are: "
                         f"{', '.join(GRIDS)} (or pass the times)")
    return GRIDS[name]


def sampling_grid(process: Process, solver: Any, steps: int, grid: str | Callable[..., torch.Tensor] | Any, *,
                  denoise: bool) -> torch.Tensor:
    """The grid :func:`sdediff.sample` runs: ``steps`` steps of ``grid`` from ``T`` to the data.

    A :class:`~sdediff.CalibratedGrid` gives its times (``steps`` is then ignored, as for any grid given
    as times; they must lie in the process's range, and a solver or ``denoise`` other than the fitted
    ones warns). Continuous grids stop at ``t_min``; ``edm`` and the discrete spacings end at ``t = 0`` with the
    denoise step built in. With ``denoise`` the grid ends at 0 (the last step denoises onto σ = 0),
    without it at ``t_min``. A ``budgeted`` solver (DPM-Solver-fast) reads ``steps`` as its
    NFE budget, the denoise step costing 1 of it. Adaptive solvers get the end points only; a grid
    given as times is validated and used as it is.
    """
    from .calibration import CalibratedGrid

    if isinstance(grid, CalibratedGrid):  # its times, checked against the process; another solver warns
        return grid.times_for(process, solver, denoise=denoise)
    if solver.adaptive:
        return torch.tensor([process.T, 0.0 if denoise else process.t_min], dtype=TIME_DTYPE)
    if not (isinstance(grid, str) or callable(grid)):
        return user_grid(grid, process, allow_data_end=solver.data_end_ok)
    if isinstance(grid, str) and grid == "auto" and solver.auto_grid != "process":
        grid = solver.auto_grid  # the solver's own preference before the process's default
    fn = get_grid(grid) if isinstance(grid, str) else grid
    budget = solver.steps_for_nfe if solver.budgeted else None
    n_head = steps - int(denoise)  # steps before the data end
    if budget is not None:
        n_head = budget(n_head) if n_head > 0 else 0
    if fn in _REGISTERED and n_head < 4096:  # a registered grid is a function of the process: remembered
        key = ("sampling_grid", fn, n_head, denoise, attribute_ids(process))
        return memo(process, key, lambda: _grid_of(process, fn, n_head, denoise)).clone()
    return _grid_of(process, fn, n_head, denoise)


def _grid_of(process: Process, fn: Callable[..., torch.Tensor], n_head: int, denoise: bool) -> torch.Tensor:
    if denoise and n_head > 0 and fn not in _DATA_END_GRIDS:  # the common case: one grid evaluation
        head = torch.as_tensor(fn(process, n_head), dtype=TIME_DTYPE)
        if float(head[-1]) != 0.0:
            return torch.cat([head, head.new_zeros(1)])
    ts = torch.as_tensor(fn(process, n_head + int(denoise)), dtype=TIME_DTYPE)
    if float(ts[-1]) == 0.0:  # the grid's own last step denoises
        if denoise:
            return ts
        # stop at t_min instead: the final 0 becomes t_min, or, where the grid already reaches t_min
        # before its 0 (edm), one more step of the grid without the 0
        if float(ts[-2]) > process.t_min + 1e-12:
            return torch.cat([ts[:-1], ts.new_tensor([process.t_min])])
        return torch.as_tensor(fn(process, n_head + 1), dtype=TIME_DTYPE)[:-1]
    if not denoise:
        return ts
    head = torch.as_tensor(fn(process, n_head), dtype=TIME_DTYPE) if n_head > 0 else ts[:1]
    return torch.cat([head, head.new_zeros(1)])


def user_grid(ts: Any, process: Process, *, allow_data_end: bool = True) -> torch.Tensor:
    """Validate a user's grid: 1-D, finite, strictly monotone, float64, inside ``[t_min, T]`` (a last
    ``t = 0`` is allowed on a decreasing grid when ``allow_data_end``)."""
    g = as_grid(ts, name="grid")
    inner = g[:-1] if allow_data_end and len(g) > 1 and float(g[-1]) == 0.0 and float(g[0]) > 0 else g
    check_time_range("grid", inner, process.t_min, process.T)
    return g


def cached_reference(model: Any, reference: Any = None, *, denoise: bool = True) -> Any:
    """A ``reference=`` for :func:`calibrate` that several calls share, solved once per set of draws:
    :func:`sdediff.calibration.cached_reference`."""
    from .calibration import cached_reference as _cached

    return _cached(model, reference, denoise=denoise)


def calibrate(model: Any, solver: Any, nfe: int, **kwargs: Any) -> Any:
    """Fit a grid's times to ``model`` for ``solver`` and an NFE budget: :func:`sdediff.calibration.calibrate`
    (same arguments; returns a :class:`~sdediff.CalibratedGrid` to pass as ``sample(..., grid=cg)``)."""
    from .calibration import calibrate as _calibrate

    return _calibrate(model, solver, nfe, **kwargs)

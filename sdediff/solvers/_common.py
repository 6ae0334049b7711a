r"""Shared pieces of the diffusion solvers: the schedule on a grid, one model call, the final step.

Notation (Lu et al. 2022, *DPM-Solver*, NeurIPS; Lu et al. 2022b, *DPM-Solver++*): a linear process
:math:`x_t = \alpha_t x_0 + \sigma_t\epsilon`, half log-SNR :math:`\lambda_t = \log(\alpha_t/\sigma_t)`,
step :math:`h = \lambda_t - \lambda_s` from ``s = ts[i]`` to ``t = ts[i+1]``; the data prediction
:math:`D = \hat x_0` and the noise prediction :math:`\hat\epsilon` come from one call of
``model.predict`` (one NFE).

**Final-step policy** (every sdediff fixed-step solver). A grid may end at ``t = 0``, read as the
clean-data end :math:`\sigma = 0,\ \alpha = 1,\ \lambda = +\infty` whatever the process formula
gives there. The last step onto it is a *denoise*: :math:`x = \hat x_0(t_{N-1}, x_{N-1})`, which
is the Euler step in EDM's variables :math:`(x/\alpha,\ \sigma/\alpha)` and the first-order
DPM-Solver++ step with :math:`\sigma_t = 0`; the model is never evaluated at ``t = 0``, and no
:math:`\log 0` or :math:`0\cdot\infty` is formed. Multistep solvers then also cap the order of
each step at the number of steps left (``lower_order_final`` in diffusers). A grid ending at
``t > 0`` gets full-order steps throughout (after the multistep warm-up) and stops there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .._utils import work_dtype
from ..model import ScoreModel
from ..processes import LinearProcess
from .base import FixedStepSolver, SolveContext

__all__ = ["DiffusionSolver", "Schedule", "is_data_end", "linear_model", "work_dtype"]


def is_data_end(ts: torch.Tensor) -> bool:
    """A decreasing grid whose last time is exactly 0: the last step denoises onto :math:`\\sigma = 0`."""
    return len(ts) > 1 and float(ts[-1]) == 0.0 and float(ts[0]) > 0.0


class _InStateDtype(ScoreModel):
    """A view of a model that calls the network on the state's own dtype.

    Solver arithmetic for half-precision states runs in float32; the network (whose weights may be
    half) must still receive the state's dtype. The NFE counter is the model's."""

    def __init__(self, model: ScoreModel, dtype: torch.dtype) -> None:
        self.model, self.dtype = model, dtype
        self.process = model.process
        self._counter = model._counter

    def predict(self, t: Any, x: torch.Tensor):
        return self.model.predict(t, x.to(self.dtype))


def linear_model(dynamics: Any, solver: str, state_dtype: torch.dtype | None = None
                 ) -> tuple[ScoreModel, LinearProcess]:
    """The model and linear process behind ``dynamics`` (a probability flow or reverse SDE);
    with ``state_dtype`` a half type, a view of the model that feeds the network that dtype."""
    model = getattr(dynamics, "model", None)
    if not isinstance(model, ScoreModel) or not isinstance(getattr(model, "process", None), LinearProcess):
        raise TypeError(
            f"the solver {solver!r} integrates diffusion models of a linear process (alpha, sigma, log-SNR); "
            f"got {type(dynamics).__name__}. Pass a DiffusionModel (or probability_flow(model)), or use a "
            "generic solver such as 'rk4' or 'dopri5'"
        )
    if state_dtype in (torch.float16, torch.bfloat16):
        return _InStateDtype(model, state_dtype), model.process
    return model, model.process


@dataclass(frozen=True)
class Schedule:
    r"""Float64 :math:`t, \alpha, \sigma, \lambda` at every grid time (python floats, exact at the data end)."""

    t: tuple[float, ...]
    alpha: tuple[float, ...]
    sigma: tuple[float, ...]
    lam: tuple[float, ...]
    data_end: bool

    @classmethod
    def of(cls, process: LinearProcess, ts: torch.Tensor) -> Schedule:
        end = is_data_end(ts)
        inner = ts[:-1] if end else ts
        tt = inner.detach().to(torch.float64).cpu()
        la = process.log_alpha(tt)
        ls = process.log_sigma(tt)
        t = [float(v) for v in tt]
        alpha = [math.exp(float(v)) for v in la]
        sigma = [math.exp(float(v)) for v in ls]
        lam = [float(a - s) for a, s in zip(la, ls, strict=True)]
        if end:
            t.append(0.0)
            alpha.append(1.0)
            sigma.append(0.0)
            lam.append(math.inf)
        return cls(tuple(t), tuple(alpha), tuple(sigma), tuple(lam), end)

    @property
    def n_steps(self) -> int:
        return len(self.t) - 1

    def rho(self, i: int) -> float:
        r""":math:`\rho = \sigma/\alpha = e^{-\lambda}` (EDM's noise level of :math:`x/\alpha`)."""
        return self.sigma[i] / self.alpha[i]


def point(process: LinearProcess, t: float) -> tuple[float, float, float]:
    r""":math:`(\alpha, \sigma, \lambda)` at one time off the grid, as float64 python floats."""
    tt = torch.as_tensor(t, dtype=torch.float64)
    la, ls = float(process.log_alpha(tt)), float(process.log_sigma(tt))
    return math.exp(la), math.exp(ls), la - ls


def t_at_log_snr(process: LinearProcess, lam: float) -> float:
    """The time where the half log-SNR is ``lam`` (clamped to the process range)."""
    t = float(process.t_from_log_snr(torch.as_tensor(lam, dtype=torch.float64)))
    return min(max(t, process.t_min), process.T)


def predict(model: ScoreModel, t: float, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One network call: :math:`(\hat x_0, \hat\epsilon)` at ``(t, x)`` in the work dtype."""
    pred = model.predict(t, x)
    wd = work_dtype(x)
    return pred.x0.to(wd), pred.eps.to(wd)  # type: ignore[union-attr]


@dataclass(frozen=True)
class DState:
    """Per-solve state of a diffusion solver: the model, the schedule, history, noise, extras."""

    model: ScoreModel
    process: LinearProcess
    sched: Schedule
    hist: tuple[Any, ...] = ()
    noise: Any = None
    extra: Any = None


class DiffusionSolver(FixedStepSolver):
    """A fixed-step solver for diffusion models of a linear process, with the final-step policy
    of the module docstring. Subclasses implement :meth:`advance` (one step away from the data end)."""

    order: float = 1
    data_end_ok = True

    def init(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> DState:
        model, process = linear_model(dynamics, self.name, x.dtype)
        sched = Schedule.of(process, ts)
        return self.start(DState(model, process, sched), dynamics, x, ts, ctx)

    def start(self, state: DState, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> DState:
        """Hook to add noise sources or options to the state."""
        return state

    def step(self, dynamics: Any, i: int, ts: torch.Tensor, x: torch.Tensor, state: DState,
             ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        if state.sched.data_end and i == state.sched.n_steps - 1:
            x0, _ = predict(state.model, state.sched.t[i], x)
            return x0.to(x.dtype), state
        x_next, state = self.advance(state, i, x.to(work_dtype(x)), ctx)
        return x_next.to(x.dtype), state

    def advance(self, state: DState, i: int, x: torch.Tensor, ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        raise NotImplementedError

    def max_order_at(self, state: DState, i: int, order: int) -> int:
        """Order cap at step ``i``: steps left when the grid ends at the data (module docstring)."""
        if state.sched.data_end:
            return max(1, min(order, state.sched.n_steps - i))
        return order
